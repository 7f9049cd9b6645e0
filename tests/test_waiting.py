"""Waits that survive client timeouts: pending-and-retry, heartbeats, in-client asks, sealed requestState.

The upstream counts what it receives; every approved call must run exactly once, whatever the client
does (time out, retry, retry again), and nothing runs without a human decision.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from harness import (
    FEATURE_SERVER,
    ROOT,
    StderrWatcher,
    agent_token,
    call_log,
    cli,
    gatekeeper,
    gk_env,
    http_client,
    peers_dir,
    wrap_params,
)
from test_proxy import make_stack

from mcp_gatekeeper.models import Decision, State

pytestmark = pytest.mark.anyio

BUDGET_CONFIG = """
[ui]
autostart = false
[waiting]
margin = "1s"
[[waiting.clients]]
name = "ts-agent"
budget = "3s"
[[waiting.clients]]
name = "py-agent"
budget = "3s"
[[rules]]
tool = "write_note"
gate = "hard"
"""


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def ts_sdk_dir() -> Path | None:
    p = peers_dir()
    if p is None or shutil.which("node") is None:
        return None
    npm = p / "npm"
    return npm if (npm / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir() else None


@pytest.mark.npm
@pytest.mark.skipif(ts_sdk_dir() is None, reason="node or @modelcontextprotocol/sdk missing (run .ci/setup)")
async def test_typescript_sdk_client_gets_the_approved_result_on_retry_once(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(BUDGET_CONFIG)
    log = tmp_path / "calls.jsonl"
    gk = [sys.executable, "-m", "mcp_gatekeeper", "wrap", "--config", str(cfg), "--name", "feat", "--"]
    upstream = [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)]
    argv = ["node", str(ROOT / "tests" / "clients" / "ts_agent.mjs"), "ts-agent", "--", *gk, *upstream]
    watcher = StderrWatcher()
    env = gk_env(home, MCP_SDK_DIR=str(ts_sdk_dir()))
    call = {"tool": "write_note", "args": {"path": "/tmp/ts", "content": "from ts"}, "timeout": 3000}
    try:
        with anyio.fail_after(60):
            async with await anyio.open_process(argv, env=env, stderr=watcher.file, cwd=str(ROOT)) as proc:
                assert proc.stdin is not None and proc.stdout is not None
                lines = _lines(proc.stdout)

                async def send(cmd: dict[str, Any]) -> dict[str, Any]:
                    assert proc.stdin is not None
                    await proc.stdin.send((json.dumps(cmd) + "\n").encode())
                    return json.loads(await lines.__anext__())

                assert json.loads(await lines.__anext__())["ready"]
                first = await send(call)  # the SDK's timeout is 3 s; the gatekeeper answers before it
                assert first["ok"], first  # no client timeout
                assert first["result"]["isError"] and "waiting for a human" in first["result"]["content"][0]["text"]
                held = await watcher.held()
                assert call_log(log) == []
                await cli(home, "approve", held)
                second = await send(call)  # the identical retry attaches, runs once, returns the real result
                assert second["ok"] and not second["result"].get("isError"), second
                assert "wrote" in second["result"]["content"][0]["text"]
                third = await send(call)  # a further retry gets the stored result, not a second run
                assert third["ok"] and third["result"]["content"] == second["result"]["content"]
                await proc.stdin.aclose()
    finally:
        watcher.close()
    assert [c["arguments"] for c in call_log(log) if c["tool"] == "write_note"] == [call["args"]]


async def _lines(stream: Any) -> Any:
    buf = b""
    async for chunk in stream:
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_python_client_both_eras_pending_then_retry_runs_once(home: Path, tmp_path: Path, mode: str) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(BUDGET_CONFIG)
    log = tmp_path / "calls.jsonl"
    params = wrap_params(home, cfg, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)])
    args = {"path": "/tmp/py", "content": mode}
    info = types.Implementation(name="py-agent", version="1")
    with anyio.fail_after(60):
        async with gatekeeper(params, mode=mode, client_info=info) as (client, watcher):
            first = await client.call_tool("write_note", args)
            assert first.is_error and "retry the identical call" in text(first)
            held = await watcher.held()
            status = await client.call_tool("gatekeeper_status", {"id": held})
            assert status.structured_content is not None and status.structured_content["state"] == "pending"
            await cli(home, "approve", held)
            second = await client.call_tool("write_note", args)
            assert not second.is_error and "wrote" in text(second)
            third = await client.call_tool("write_note", args)
            assert not third.is_error and text(third) == text(second)
            different = await client.call_tool("write_note", {**args, "content": "other"})
            assert different.is_error  # a different call needs its own approval
    assert [c["arguments"] for c in call_log(log) if c["tool"] == "write_note"] == [args]


async def test_rejected_then_retry_gets_the_reason_and_nothing_runs(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(BUDGET_CONFIG)
    log = tmp_path / "calls.jsonl"
    params = wrap_params(home, cfg, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)])
    info = types.Implementation(name="py-agent", version="1")
    with anyio.fail_after(60):
        async with gatekeeper(params, client_info=info) as (client, watcher):
            first = await client.call_tool("write_note", {"path": "/tmp/r", "content": "r"})
            assert first.is_error
            await cli(home, "reject", await watcher.held(), "--reason", "wrong folder")
            retry = await client.call_tool("write_note", {"path": "/tmp/r", "content": "r"})
    assert retry.is_error and "wrong folder" in text(retry)
    assert call_log(log) == []


CLAUDE_CODE = """
[ui]
autostart = false
[[rules]]
tool = "write_note"
gate = "hard"
"""


async def test_claude_code_style_progress_keeps_one_request_open(tmp_path: Path) -> None:
    async with make_stack(tmp_path, CLAUDE_CODE) as stack:
        progress: list[str] = []
        three = anyio.Event()

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append(message or "")
            if len(progress) == 3:
                three.set()

        info = types.Implementation(name="claude-code", version="2.1")
        with anyio.fail_after(20):
            async with stack.client(client_info=info) as c, anyio.create_task_group() as tg:
                out: list[types.CallToolResult] = []

                async def call() -> None:
                    out.append(
                        await c.call_tool("write_note", {"path": "/p", "content": "c"}, progress_callback=on_progress)
                    )

                tg.start_soon(call)
                rec = await stack.held.next()
                await three.wait()  # held across several heartbeat intervals, one request
                await stack.gate.decide(rec.id, Decision(approve=True, decided_by="t", channel="test"))
        assert not out[0].is_error and "wrote" in text(out[0])
        assert all("waiting for human approval" in m for m in progress[:3])
        assert (await stack.store.get(rec.id)).wait_strategy == "hold"


IN_CLIENT = """
[ui]
autostart = false
port = 8765
[[rules]]
name = "decide-in-client"
tool = "write_note"
when = { path = { glob = "/client/*" } }
gate = "hard"
in_client = "decide"
[[rules]]
name = "notify-only"
tool = "write_note"
gate = "hard"
"""


async def test_legacy_elicitation_decides_when_the_rule_says_so(tmp_path: Path) -> None:
    seen: list[types.ElicitRequestParams] = []

    async def approve_with_edit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        seen.append(params)
        return types.ElicitResult(action="accept", content={"decision": "approve", "content": "edited in client"})

    async with make_stack(tmp_path, IN_CLIENT) as stack:
        with anyio.fail_after(20):
            async with stack.client(elicitation_callback=approve_with_edit) as c:
                result = await c.call_tool("write_note", {"path": "/client/a", "content": "draft"})
        assert not result.is_error
        assert [x["arguments"] for x in stack.received] == [{"path": "/client/a", "content": "edited in client"}]
        assert isinstance(seen[0], types.ElicitRequestFormParams)
        rec = (await stack.store.list_calls())[0]
        assert (rec.channel, rec.decided_by) == ("in-client", "client:mcp")


async def test_legacy_elicitation_decline_rejects(tmp_path: Path) -> None:
    async def decline(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    async with make_stack(tmp_path, IN_CLIENT) as stack:
        with anyio.fail_after(20):
            async with stack.client(elicitation_callback=decline) as c:
                result = await c.call_tool("write_note", {"path": "/client/b", "content": "x"})
    assert result.is_error and "decline" in text(result)
    assert stack.received == []


async def test_notify_mode_points_at_the_card_and_does_not_decide(tmp_path: Path) -> None:
    urls: list[str] = []
    asked = anyio.Event()

    async def open_url(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams)
        urls.append(params.url)
        asked.set()
        return types.ElicitResult(action="accept")  # an auto-accepting client: must not count as approval

    async with make_stack(tmp_path, IN_CLIENT) as stack:
        with anyio.fail_after(20):
            async with stack.client(elicitation_callback=open_url) as c, anyio.create_task_group() as tg:
                out: list[types.CallToolResult] = []

                async def call() -> None:
                    out.append(await c.call_tool("write_note", {"path": "/elsewhere", "content": "n"}))

                tg.start_soon(call)
                rec = await stack.held.next()
                await asked.wait()
                assert (await stack.store.get(rec.id)).state == State.PENDING  # the client's accept decided nothing
                assert stack.received == []
                await stack.gate.decide(rec.id, Decision(approve=False, decided_by="web:x", channel="web", reason="no"))
        assert urls == [f"http://127.0.0.1:8765/#/call/{rec.id}"]
        assert "token" not in urls[0]  # never a credential in the URL
        assert out[0].is_error and stack.received == []


MODERN = """
[ui]
autostart = false
[[rules]]
tool = "write_note"
gate = "hard"
in_client = "decide"
"""


async def test_modern_input_required_round_trip_and_state_abuse(tmp_path: Path) -> None:
    async def approve(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"decision": "approve"})

    async with make_stack(tmp_path, MODERN) as stack:
        with anyio.fail_after(20):
            async with stack.client(mode="auto", elicitation_callback=approve) as c:
                assert c.protocol_version == "2026-07-28"
                session = c.session
                a = {"path": "/m/a", "content": "a"}
                b = {"path": "/m/b", "content": "b"}
                first = await session.call_tool("write_note", a, allow_input_required=True)
                assert isinstance(first, types.InputRequiredResult) and first.request_state
                state = first.request_state
                answer = {"approval": types.ElicitResult(action="accept", content={"decision": "approve"})}
                tampered = state[:-3] + ("AAA" if not state.endswith("AAA") else "BBB")
                r = await session.call_tool("write_note", a, input_responses=answer, request_state=tampered)
                assert isinstance(r, types.CallToolResult) and r.is_error and "integrity" in text(r)
                r = await session.call_tool("write_note", b, input_responses=answer, request_state=state)
                assert isinstance(r, types.CallToolResult) and r.is_error and "different call" in text(r)
                assert stack.received == []  # nothing ran on a bad state
                # another client (principal) replaying the state is refused, and does not spend it
                other_info = types.Implementation(name="other-agent", version="1")
                async with stack.client(mode="auto", client_info=other_info) as other:
                    r = await other.session.call_tool("write_note", a, input_responses=answer, request_state=state)
                    assert isinstance(r, types.CallToolResult) and r.is_error and "another client" in text(r)
                assert stack.received == []
                r = await session.call_tool("write_note", a, input_responses=answer, request_state=state)
                assert isinstance(r, types.CallToolResult) and not r.is_error, text(r)
                replay = await session.call_tool("write_note", a, input_responses=answer, request_state=state)
                assert isinstance(replay, types.CallToolResult) and replay.is_error and "already used" in text(replay)
                # the SDK's own driver does the rounds by itself
                auto = await c.call_tool("write_note", {"path": "/m/c", "content": "c"})
                assert not auto.is_error
    assert [x["arguments"] for x in stack.received] == [a, {"path": "/m/c", "content": "c"}]


UPSTREAM_FAULTS = """
[ui]
autostart = false
[upstreams.feat]
command = "{python}"
args = ["{server}", "--call-log", "{log}"]
timeout = "2s"
[[rules]]
tool = ["crash", "hang", "echo"]
gate = "allow"
"""


async def test_upstream_crash_hang_and_restart(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    cfg = tmp_path / "gk.toml"
    cfg.write_text(UPSTREAM_FAULTS.format(python=sys.executable, server=FEATURE_SERVER, log=log))
    params = wrap_params(home, cfg, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)])
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, _watcher):
            hung = await client.call_tool("hang", {})  # per-call timeout (2 s), then an honest "unknown"
            assert hung.is_error and "did not answer within 2 s" in text(hung)
            crashed = await client.call_tool("crash", {})  # the upstream process dies mid-call
            assert crashed.is_error and "unknown" in text(crashed)
            again = await client.call_tool("echo", {"text": "back"})  # restarted on the next call
            assert not again.is_error and text(again) == "back"
    _, out, _ = await cli(home, "audit", "--json", "--limit", "100")
    states = [e["event"] for e in json.loads(out)]
    assert states.count("outcome_unknown") == 2
    assert [c["tool"] for c in call_log(log)] == ["hang", "crash", "echo"]
    assert os.environ.get("MCP_GATEKEEPER_HOME") == str(home)


async def test_modern_http_disconnect_ends_the_wait_not_the_call(home: Path, tmp_path: Path) -> None:
    import re

    log = tmp_path / "calls.jsonl"
    cfg = tmp_path / "gk.toml"
    cfg.write_text(
        f'{BUDGET_CONFIG}\n[upstreams.feat]\ncommand = "{sys.executable}"\nargs = ["{FEATURE_SERVER}", "--call-log", "{log}"]\n'
    )
    watcher = StderrWatcher()
    argv = [sys.executable, "-m", "mcp_gatekeeper", "run", "--config", str(cfg), "--http", "127.0.0.1:0"]
    args = {"path": "/tmp/http", "content": "h"}
    try:
        with anyio.fail_after(60):
            async with await anyio.open_process(argv, env=gk_env(home), stderr=watcher.file) as proc:
                url = (await watcher.wait_for(re.compile(r"serving MCP at (http://\S+)"))).group(1)
                async with http_client(url, agent_token(home)) as c:
                    assert c.protocol_version == "2026-07-28"
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(c.call_tool, "write_note", args)
                        held = await watcher.held()
                        tg.cancel_scope.cancel()  # the client closes its stream: on 2026 HTTP that is cancellation
                    _, out, _ = await cli(home, "show", held, "--json")
                    assert json.loads(out)["state"] == "pending"  # the wait ended; the call did not
                    await cli(home, "approve", held)
                    retry = await c.call_tool("write_note", args)  # the identical retry gets the approved result
                    assert not retry.is_error and "wrote" in text(retry)
                proc.terminate()
    finally:
        watcher.close()
    assert [c["arguments"] for c in call_log(log) if c["tool"] == "write_note"] == [args]
