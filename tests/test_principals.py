"""Calls belong to a client (a principal), not to a process: real ``wrap`` / ``run --http`` processes.

Attacks first: another client asks ``gatekeeper_status`` about a call, or sends the identical call to ride
on an approval (holder alive, then ``kill -9``ed); an HTTP request without the agent's token. Then the fix
for agents that open a new ``wrap`` process per tool call (langchain-mcp-adapters does): the call they were
told to retry outlives that process, and a retry from a new process is approved once and runs once.
The upstream (feature_server) logs every call it receives, across processes, to one file.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from harness import (
    FEATURE_SERVER,
    StderrWatcher,
    call_log,
    cli,
    gatekeeper,
    gk_env,
    http_client,
    wrap_params,
)

pytestmark = pytest.mark.anyio

CONFIG = """
[ui]
autostart = false
[waiting]
margin = "1s"
[[waiting.clients]]
name = "py-agent"
budget = "3s"
[[waiting.clients]]
name = "other-agent"
budget = "3s"
[[rules]]
tool = "write_note"
gate = "hard"
"""
PY_AGENT = types.Implementation(name="py-agent", version="1")
SERVING = re.compile(r"serving MCP at (http://\S+)")


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def writes(log: Path) -> list[dict[str, Any]]:
    return [c["arguments"] for c in call_log(log) if c["tool"] == "write_note"]


async def show(home: Path, call_id: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((await cli(home, "show", call_id, "--json"))[1])
    return out


def stdio_setup(home: Path, tmp_path: Path, name: str = "feat") -> tuple[Any, Path]:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(CONFIG)
    log = tmp_path / "calls.jsonl"
    return wrap_params(home, cfg, name, [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)]), log


# ---------------------------------------------------------------------------------------------- stdio


async def test_status_never_answers_for_another_clients_call(home: Path, tmp_path: Path) -> None:
    params, log = stdio_setup(home, tmp_path)
    args = {"path": "/tmp/refund", "content": "secret result"}
    with anyio.fail_after(90):
        async with gatekeeper(params, client_info=PY_AGENT) as (client, watcher):
            first = await client.call_tool("write_note", args)
            assert first.is_error and "retry the identical call" in text(first)
            held = await watcher.held()
        await cli(home, "approve", held)
        async with gatekeeper(params, client_info=PY_AGENT) as (client, _):
            ran = await client.call_tool("write_note", args)  # the owner collects it: the call has a result now
            assert not ran.is_error and "wrote" in text(ran)
            mine = await client.call_tool("gatekeeper_status", {"id": held})
            assert mine.structured_content is not None and mine.structured_content["state"] == "forwarded"
            assert "wrote" in json.dumps(mine.structured_content["result"])  # its owner may read its result

        other = types.Implementation(name="other-agent", version="1")
        async with gatekeeper(params, client_info=other) as (client, _):
            theirs = await client.call_tool("gatekeeper_status", {"id": held})
            nothing = await client.call_tool("gatekeeper_status", {"id": "ab" * 13})
            one_char = await client.call_tool("gatekeeper_status", {"id": held[:1]})
        # the same client name, but through a gatekeeper serving another upstream
        params_other_upstream, _ = stdio_setup(home, tmp_path, name="bank")
        async with gatekeeper(params_other_upstream, client_info=PY_AGENT) as (client, _):
            elsewhere = await client.call_tool("gatekeeper_status", {"id": held})
    for refused, asked in ((theirs, held), (one_char, held[:1]), (elsewhere, held)):
        assert refused.is_error and refused.structured_content is None
        # word for word the answer for a call that does not exist: the id's existence is not confirmed
        assert text(refused).replace(repr(asked), "ID") == text(nothing).replace(repr("ab" * 13), "ID")
        assert "ID" in text(nothing).replace(repr("ab" * 13), "ID")
        assert "secret result" not in text(refused) and "wrote" not in text(refused)
    assert writes(log) == [args]


async def test_a_pending_call_outlives_its_wrap_process_and_a_retry_from_a_new_one_runs_once(
    home: Path, tmp_path: Path
) -> None:
    """Case 7: one ``wrap`` process per tool call (the SDK's stdio client, one session per call)."""
    params, log = stdio_setup(home, tmp_path)
    args = {"path": "/tmp/case7", "content": "exactly once"}
    with anyio.fail_after(120):
        async with gatekeeper(params, client_info=PY_AGENT) as (client, watcher):
            first = await client.call_tool("write_note", args)
            assert first.is_error and "retry the identical call" in text(first)
            held = await watcher.held()
        # that process has exited; the call it was holding has not
        shown = await show(home, held)
        assert shown["state"] == "pending"
        assert shown["client"]["principal"] == f"stdio:{getpass.getuser()}/py-agent"
        _, out, _ = await cli(home, "show", held)
        assert f"principal    stdio:{getpass.getuser()}/py-agent" in out
        _, out, _ = await cli(home, "pending")
        assert held in out and "py-agent" in out
        assert writes(log) == []

        _, out, _ = await cli(home, "approve", held)  # a reviewer decides while no gatekeeper process runs at all
        assert "approved" in out

        async with gatekeeper(params, client_info=PY_AGENT) as (client, watcher):
            second = await client.call_tool("write_note", args)  # a new process: attaches, runs it, returns it
            assert not second.is_error and "wrote" in text(second)
        async with gatekeeper(params, client_info=PY_AGENT) as (client, watcher):
            third = await client.call_tool("write_note", args)  # yet another: the stored result, no second run
            assert not third.is_error and text(third) == text(second)
    assert writes(log) == [args]
    final = await show(home, held)
    assert final["state"] == "forwarded"
    events = [e["event"] for e in final["audit"]]
    assert events.count("forwarding") == 1 and "released" in events
    assert events.index("released") < events.index("approved") < events.index("forwarding")


async def test_a_rejection_reaches_a_retry_from_a_new_process_and_nothing_runs(home: Path, tmp_path: Path) -> None:
    params, log = stdio_setup(home, tmp_path)
    args = {"path": "/tmp/case7-rejected", "content": "never"}
    with anyio.fail_after(90):
        async with gatekeeper(params, client_info=PY_AGENT) as (client, watcher):
            assert (await client.call_tool("write_note", args)).is_error
            held = await watcher.held()
        await cli(home, "reject", held, "--reason", "not that folder")
        async with gatekeeper(params, client_info=PY_AGENT) as (client, watcher):
            retry = await client.call_tool("write_note", args)
    assert retry.is_error and "not that folder" in text(retry)
    assert writes(log) == []


async def test_two_processes_racing_the_retry_of_an_approved_call_run_it_once(home: Path, tmp_path: Path) -> None:
    params, log = stdio_setup(home, tmp_path)
    args = {"path": "/tmp/race", "content": "once"}
    with anyio.fail_after(120):
        async with gatekeeper(params, client_info=PY_AGENT) as (client, watcher):
            assert (await client.call_tool("write_note", args)).is_error
            held = await watcher.held()
        await cli(home, "approve", held)
        results: list[types.CallToolResult] = []
        async with (
            gatekeeper(params, client_info=PY_AGENT) as (one, _),
            gatekeeper(params, client_info=PY_AGENT) as (two, _),
        ):
            ready = [anyio.Event(), anyio.Event()]
            go = anyio.Event()

            async def retry(client: Any, mine: anyio.Event) -> None:
                await client.list_tools()  # both sessions warmed up before the race starts
                mine.set()
                await go.wait()
                results.append(await client.call_tool("write_note", args))

            async with anyio.create_task_group() as tg:
                tg.start_soon(retry, one, ready[0])
                tg.start_soon(retry, two, ready[1])
                for ev in ready:
                    await ev.wait()
                go.set()
    assert writes(log) == [args]  # one execution, whoever won
    ran = [r for r in results if not r.is_error]
    assert len(ran) >= 1 and all("wrote" in text(r) for r in ran)
    for lost in (r for r in results if r.is_error):  # the loser is told it ran (or is running), never runs it
        assert "not run again" in text(lost) or "will not run twice" in text(lost)
    shown = await show(home, held)
    assert [e["event"] for e in shown["audit"]].count("forwarding") == 1


# ---------------------------------------------------------------------------------------------- HTTP


def _agents_config(tmp_path: Path, log: Path) -> tuple[Path, str, str]:
    alice = "alice-" + "a" * 40
    mallory = "mallory-" + "m" * 40
    token_file = tmp_path / "alice.token"
    token_file.write_text(alice + "\n")
    token_file.chmod(0o600)
    cfg = tmp_path / "gk.toml"
    cfg.write_text(
        CONFIG
        + f"""
[[agents]]
name = "alice"
token_file = "{token_file}"
[[agents]]
name = "mallory"
token_sha256 = "{hashlib.sha256(mallory.encode()).hexdigest()}"
[upstreams.feat]
command = "{sys.executable}"
args = ["{FEATURE_SERVER}", "--call-log", "{log}"]
"""
    )
    return cfg, alice, mallory


async def test_http_needs_an_agent_token(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    cfg, alice, mallory = _agents_config(tmp_path, log)
    argv = [sys.executable, "-m", "mcp_gatekeeper", "run", "--config", str(cfg), "--http", "127.0.0.1:0"]
    init = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
    }  # fmt: skip
    accept = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    watcher = StderrWatcher()
    try:
        with anyio.fail_after(60):
            async with await anyio.open_process(argv, env=gk_env(home), stderr=watcher.file) as proc:
                url = (await watcher.wait_for(SERVING)).group(1)
                async with httpx2.AsyncClient(timeout=30) as http:
                    statuses = {}
                    for label, auth in [
                        ("none", None),
                        ("wrong", "Bearer " + "x" * 48),
                        ("other scheme", f"Basic {alice}"),
                        ("prefix of a token", f"Bearer {alice[:-1]}"),
                        ("empty", "Bearer"),
                        ("alice", f"Bearer {alice}"),
                        ("mallory", f"bearer {mallory}"),
                    ]:
                        headers = {**accept, **({"authorization": auth} if auth else {})}
                        r = await http.post(url, headers=headers, json=init)
                        statuses[label] = r.status_code
                        if r.status_code == 401:
                            assert r.headers["www-authenticate"].startswith("Bearer")
                    # the scope key the check sets cannot be sent as a header
                    spoof = {**accept, "mcp_gatekeeper.agent": "alice", "x-mcp-gatekeeper-agent": "alice"}
                    statuses["spoofed"] = (await http.post(url, headers=spoof, json=init)).status_code
                    # a handshake-era session belongs to the agent that opened it
                    opened = await http.post(url, headers={**accept, "authorization": f"Bearer {alice}"}, json=init)
                    sid = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
                    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
                    for label, token in (("mallory in alice's session", mallory), ("alice in hers", alice)):
                        headers = {**accept, **sid, "authorization": f"Bearer {token}"}
                        statuses[label] = (await http.post(url, headers=headers, json=initialized)).status_code
                proc.kill()  # two raw sessions stay open: a graceful stop would wait for them to idle out
    finally:
        watcher.close()
    assert statuses == {
        "none": 401, "wrong": 401, "other scheme": 401, "prefix of a token": 401, "empty": 401,
        "alice": 200, "mallory": 200, "spoofed": 401, "mallory in alice's session": 404, "alice in hers": 202,
    }  # fmt: skip
    assert call_log(log) == []


async def test_http_the_generated_token_and_the_loopback_opt_out(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    upstream = f'[upstreams.feat]\ncommand = "{sys.executable}"\nargs = ["{FEATURE_SERVER}", "--call-log", "{log}"]\n'
    cfg = tmp_path / "gk.toml"
    cfg.write_text(CONFIG + upstream)
    open_cfg = tmp_path / "open.toml"
    open_cfg.write_text(CONFIG + "[http]\nallow_unauthenticated_loopback = true\n" + upstream)
    for config, needs_token in ((cfg, True), (open_cfg, False)):
        argv = [sys.executable, "-m", "mcp_gatekeeper", "run", "--config", str(config), "--http", "127.0.0.1:0"]
        watcher = StderrWatcher()
        try:
            with anyio.fail_after(60):
                async with await anyio.open_process(argv, env=gk_env(home), stderr=watcher.file) as proc:
                    url = (await watcher.wait_for(SERVING)).group(1)
                    token_file = home / "agent-token"
                    if needs_token:
                        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
                        assert any(str(token_file) in line for line in watcher.lines)
                        token: str | None = token_file.read_text().strip()
                        assert token is not None and token not in "".join(watcher.lines)  # the path, never the token
                    else:
                        assert any("WARNING" in line and "without a token" in line for line in watcher.lines)
                        token = None
                    async with http_client(url, token, client_info=PY_AGENT) as c:
                        echoed = await c.call_tool("echo", {"text": "hi"})
                        assert not echoed.is_error
                    proc.terminate()
        finally:
            watcher.close()
    with sqlite3.connect(home / "gatekeeper.db") as db:
        principals = [r[0] for r in db.execute("SELECT principal FROM calls WHERE tool = 'echo' ORDER BY created_at")]
    assert principals == ["agent:local", "unauthenticated/py-agent"]


async def test_http_an_identical_call_from_another_agent_never_attaches_holder_alive_or_killed(
    home: Path, tmp_path: Path
) -> None:
    """Issue 6: over 2026-07-28 HTTP (no session) mallory repeats alice's call to ride on her approval."""
    log = tmp_path / "calls.jsonl"
    cfg, alice, mallory = _agents_config(tmp_path, log)
    argv = [sys.executable, "-m", "mcp_gatekeeper", "run", "--config", str(cfg), "--http", "127.0.0.1:0"]
    args = {"path": "/tmp/refund", "content": "alice's"}
    watcher = StderrWatcher()
    try:
        with anyio.fail_after(120):
            async with await anyio.open_process(argv, env=gk_env(home), stderr=watcher.file) as proc:
                url = (await watcher.wait_for(SERVING)).group(1)
                async with http_client(url, alice, mode="auto", client_info=PY_AGENT) as c:
                    assert c.protocol_version == "2026-07-28"
                    first = await c.call_tool("write_note", args)
                    assert first.is_error and "retry the identical call" in text(first)
                held_alice = await watcher.held()
                await cli(home, "approve", held_alice)
                async with http_client(url, mallory, mode="auto", client_info=PY_AGENT) as c:
                    ride = await c.call_tool("write_note", args)  # holder alive, call approved: no attaching
                    assert ride.is_error and "retry the identical call" in text(ride)
                    status = await c.call_tool("gatekeeper_status", {"id": held_alice})
                    assert status.is_error and status.structured_content is None
                held_mallory = await watcher.held()  # a hold of its own
                assert held_mallory != held_alice
                assert writes(log) == []
                proc.kill()  # kill -9 the holder of both
                await proc.wait()
            async with await anyio.open_process(argv, env=gk_env(home), stderr=watcher.file) as proc:
                url = (await watcher.wait_for(SERVING)).group(1)
                async with http_client(url, mallory, mode="auto", client_info=PY_AGENT) as c:
                    ride = await c.call_tool("write_note", args)  # holder dead: still never alice's call
                    assert ride.is_error and "retry the identical call" in text(ride)
                    assert held_mallory[:8] in text(ride)  # mallory's own released call, still pending
                assert writes(log) == []
                async with http_client(url, alice, mode="auto", client_info=PY_AGENT) as c:
                    mine = await c.call_tool("write_note", args)  # alice's retry collects her approved call
                    assert not mine.is_error and "wrote" in text(mine)
                proc.terminate()
    finally:
        watcher.close()
    assert writes(log) == [args]
    shown_alice, shown_mallory = await show(home, held_alice), await show(home, held_mallory)
    assert (shown_alice["state"], shown_alice["client"]["principal"]) == ("forwarded", "agent:alice")
    assert (shown_mallory["state"], shown_mallory["client"]["principal"]) == ("pending", "agent:mallory")
    _, out, _ = await cli(home, "show", held_alice)
    assert "principal    agent:alice" in out


def test_a_token_file_readable_by_others_is_refused(home: Path, tmp_path: Path) -> None:
    from mcp_gatekeeper.config import AgentConfig
    from mcp_gatekeeper.errors import ConfigError
    from mcp_gatekeeper.principals import AgentTokens

    loose = tmp_path / "loose.token"
    loose.write_text("t" * 40)
    os.chmod(loose, 0o644)
    with pytest.raises(ConfigError) as info:
        AgentTokens.load([AgentConfig(name="ci-bot", token_file=str(loose))], home)
    assert "agents[0].token_file" in str(info.value)
    tokens = AgentTokens.load([AgentConfig(name="ci-bot", token_sha256=hashlib.sha256(b"t" * 40).hexdigest())], home)
    assert tokens.match("t" * 40) == "ci-bot" and tokens.match("t" * 39) is None


def test_an_agents_token_file_is_one_of_the_gatekeepers_own_files(home: Path, tmp_path: Path) -> None:
    """An agent that could read another agent's token file through a tool could act as that agent."""
    from mcp_gatekeeper.config import GatekeeperConfig
    from mcp_gatekeeper.serve import build_policy

    elsewhere = tmp_path / "secrets" / "ci-bot.token"
    config = GatekeeperConfig.model_validate(
        {
            "rules": [{"name": "everything", "tool": "*", "gate": "allow"}],
            "agents": [{"name": "ci-bot", "token_file": str(elsewhere)}],
        }
    )
    policy = build_policy(config, home, None)
    for spelled in (elsewhere, tmp_path / "secrets" / ".." / "secrets" / "ci-bot.token", home / "agent-token"):
        verdict = policy.evaluate("fs", "read_file", {"path": str(spelled)})
        assert verdict.rule == "protect-own-files", spelled
    assert policy.evaluate("fs", "read_file", {"path": str(tmp_path / "notes.txt")}).rule == "everything"
