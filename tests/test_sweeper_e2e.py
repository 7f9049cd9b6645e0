"""Several real ``mcp-gatekeeper wrap`` processes sharing one store share its sweeper work, on both backends.

Three gatekeepers wrap the same feature server (one call log for all of them). Through each, held calls with
short deadlines wait for nobody and expire; an escalation step notifies a local webhook stand-in; audit-gated
calls run, nobody reviews them, and their review window closes with a rollback whose compensation lands in the
upstream's log. Each call is expired once, each notice delivered once, each compensation run once, nothing held
is forwarded. Then a gatekeeper is killed (SIGKILL) in the middle of compensations it claimed (its compensation
hangs): another process finishes them. Waits are on outcomes (the store's change signal, the stand-in's
requests) under ``anyio.fail_after``; the short deadlines are real time.
"""

from __future__ import annotations

import json
import secrets
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from harness import FEATURE_SERVER, ROOT, StderrWatcher, call_log, gatekeeper, wrap_params
from standin import StandIn, serving

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.models import State
from mcp_gatekeeper.store import Store

pytestmark = pytest.mark.anyio

CONFIG = """
[ui]
autostart = false
[[waiting.clients]]
name = "*"  # the test client waits as long as it takes (no pending-and-retry answer)
[notify]
stderr = true
on_hold = ["stderr"]
[[notify.webhooks]]
name = "oncall"
url = "{hook}"
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
timeout = "6s"
escalate = [{{ after = "1s", notify = ["oncall"] }}]
[[rules]]
name = "echoes"
tool = "echo"
gate = "audit"
review_window = "2s"
on_review_timeout = "rollback"
compensate = {{ tool = "{undo}", arguments = {undo_args} }}
"""

UNDO = '{ message = "undo {args.text}", level = "info" }'


def _config(path: Path, hook: str, *, undo: str = "log", undo_args: str = UNDO) -> Path:
    path.write_text(CONFIG.format(hook=hook, undo=undo, undo_args=undo_args))
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, home: Path) -> str:
    """Where the gatekeepers' store is: the data home's SQLite file, or a fresh team database (gatekeeper role)."""
    if request.param == "sqlite":
        return str(home / "gatekeeper.db")
    from mcp_gatekeeper.store.pg_schema import Roles
    from mcp_gatekeeper.store.postgres import init_database

    tag = secrets.token_hex(3)
    roles = Roles(gatekeeper=f"gk_{tag}", approver=f"ap_{tag}", owner=f"own_{tag}")
    report = anyio.run(lambda: init_database(request.getfixturevalue("pg_admin_dsn"), SystemClock(), roles=roles))
    return report.new_role_urls[roles.gatekeeper]


async def _until(store: Store, ready: Callable[[], Awaitable[bool]]) -> None:
    """Until ``ready()`` holds, re-checked whenever the store may have changed (bounded by the caller)."""
    while not await ready():
        await store.wait_changed(0.05)


def _wrap(home: Path, config: Path, log: Path, store_url: str) -> Any:
    env = {"MCP_GATEKEEPER_STORE": store_url} if store_url.startswith("postgresql") else {}
    return wrap_params(home, config, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)], **env)


@asynccontextmanager
async def _fleet(params: list[Any]) -> AsyncIterator[list[Any]]:
    async with AsyncExitStack() as stack:
        yield [(await stack.enter_async_context(gatekeeper(p)))[0] for p in params]


async def test_a_fleet_of_gatekeepers_does_each_piece_of_sweeper_work_once(
    home: Path, tmp_path: Path, store_url: str
) -> None:
    log = tmp_path / "calls.jsonl"
    hook = StandIn()
    async with serving(hook):
        cfg = _config(tmp_path / "gk.toml", f"{hook.url}/hook")
        with anyio.fail_after(240):
            async with _fleet([_wrap(home, cfg, log, store_url) for _ in range(3)]) as clients:
                refused: list[types.CallToolResult] = []

                async def held(client: Any, n: int) -> None:
                    refused.append(await client.call_tool("write_note", {"path": f"/held/{n}", "content": "x"}))

                async with anyio.create_task_group() as tg:
                    for n in range(9):
                        tg.start_soon(held, clients[n % 3], n)
                    for n in range(6):  # audit-gated: they run at once; nobody reviews them
                        result = await clients[n % 3].call_tool("echo", {"text": f"audited-{n}"})
                        assert not result.is_error
                assert len(refused) == 9 and all(r.is_error for r in refused)
                async with Store.open(store_url, SystemClock()) as store:

                    async def rolled_back() -> bool:
                        calls = await store.list_calls(tool="echo", limit=100)
                        return len(calls) == 6 and {c.state for c in calls} == {State.ROLLED_BACK}

                    await _until(store, rolled_back)
                    calls = await store.list_calls(limit=100)
                    events = await store.audit_events(limit=5000)
                    ok, _, message = await store.verify_audit()
                    assert ok, message
        held_ids = {c.id for c in calls if c.tool == "write_note"}
        assert len(held_ids) == 9 and {c.state for c in calls if c.id in held_ids} == {State.EXPIRED}
        per_call = Counter((e.call_id, e.event) for e in events)
        for cid in held_ids:
            assert per_call[(cid, "expired")] == 1  # expired exactly once, whoever did it
            assert per_call[(cid, "escalated")] == 1
        notices = Counter(r.json()["call"]["id"] for r in hook.requests if r.json().get("event") == "escalated")
        assert notices == Counter(dict.fromkeys(held_ids, 1))  # each escalation notice delivered once, fleet-wide
        for c in calls:
            if c.tool == "echo":
                assert per_call[(c.id, "review_failed")] == 1 and per_call[(c.id, "rolling_back")] == 1
        upstream = call_log(log)
        assert not [c for c in upstream if c["tool"] == "write_note"]  # nothing held was forwarded
        undone = Counter(c["arguments"]["message"] for c in upstream if c["tool"] == "log")
        assert undone == Counter({f"undo audited-{n}": 1 for n in range(6)})  # each compensation ran once


async def test_a_gatekeeper_killed_holding_compensation_claims_loses_none_of_them(
    home: Path, tmp_path: Path, store_url: str
) -> None:
    log = tmp_path / "calls.jsonl"
    hook = StandIn()
    async with serving(hook):
        # the doomed gatekeeper's compensation hangs: it is killed while its claims are open
        doomed_cfg = _config(tmp_path / "doomed.toml", f"{hook.url}/hook", undo="hang", undo_args="{}")
        cfg = _config(tmp_path / "gk.toml", f"{hook.url}/hook")
        doomed = _wrap(home, doomed_cfg, log, store_url)
        watcher = StderrWatcher()
        with anyio.fail_after(240):
            async with await anyio.open_process(
                [doomed.command, *doomed.args], env=doomed.env, cwd=str(ROOT), stderr=watcher.file
            ) as proc:
                try:
                    hello = {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {},
                        "clientInfo": {"name": "raw", "version": "1"},
                    }
                    await _send(proc, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
                    buffer = await _receive(proc, b"")
                    await _send(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
                    for n in range(3):
                        await _send(proc, {"jsonrpc": "2.0", "id": 10 + n, "method": "tools/call",
                                           "params": {"name": "echo", "arguments": {"text": f"doomed-{n}"}}})  # fmt: skip
                        buffer = await _receive(proc, buffer)
                    async with Store.open(store_url, SystemClock()) as store:

                        async def claimed() -> bool:
                            calls = await store.list_calls(tool="echo", limit=100)
                            return State.ROLLING_BACK in {c.state for c in calls}

                        await _until(store, claimed)  # it claimed a compensation (alone, it closed every window)
                        proc.send_signal(signal.SIGKILL)
                        await proc.wait()
                        held = {c.id for c in await store.list_calls(tool="echo") if c.state == State.ROLLING_BACK}
                        assert len(held) == 1  # one attempt at a time: the one that hangs
                        # a survivor starts: it finds the dead one's claims and finishes them
                        async with gatekeeper(_wrap(home, cfg, log, store_url)):

                            async def rolled_back() -> bool:
                                calls = await store.list_calls(tool="echo", limit=100)
                                return {c.state for c in calls} == {State.ROLLED_BACK}

                            await _until(store, rolled_back)
                        calls = await store.list_calls(tool="echo", limit=100)
                        events = await store.audit_events(limit=5000)
                        ok, _, message = await store.verify_audit()
                        assert ok, message
                finally:
                    watcher.close()
                    if proc.returncode is None:
                        proc.kill()
    per_call = Counter((e.call_id, e.event) for e in events)
    assert len(calls) == 3
    for c in calls:
        # the dead one's attempt (handed back at recovery) and the survivor's; the others the survivor's only
        assert per_call[(c.id, "rolling_back")] == (2 if c.id in held else 1)
        assert per_call[(c.id, "rollback_retry")] == (1 if c.id in held else 0)
        assert per_call[(c.id, "review_failed")] == 1 and per_call[(c.id, "rolled_back")] == 1
    upstream = call_log(log)
    assert len([c for c in upstream if c["tool"] == "hang"]) == 1  # what the doomed one had started
    undone = Counter(c["arguments"]["message"] for c in upstream if c["tool"] == "log")
    assert undone == Counter({f"undo doomed-{n}": 1 for n in range(3)})  # the survivor ran each once


async def _send(proc: Any, msg: dict[str, Any]) -> None:
    await proc.stdin.send((json.dumps(msg) + "\n").encode())


async def _receive(proc: Any, buffer: bytes) -> bytes:
    """Read one JSON-RPC answer (a line); returns what is left after it."""
    while True:
        while b"\n" not in buffer:
            buffer += await proc.stdout.receive()
        line, _, buffer = buffer.partition(b"\n")
        msg = json.loads(line)
        if "id" in msg:
            assert "result" in msg, msg
            return buffer
