"""The stdio transport to an upstream: the raw lane for tools/call beside the SDK's own traffic.

A real server process (the in-repo feature server) on real pipes, through ``Upstream`` as the proxy uses
it. Each test checks what the server received (its call log, its stderr) and what came back.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import mcp.types as types
import pytest
from harness import FEATURE_SERVER, StderrWatcher, call_log
from mcp import MCPError

from mcp_gatekeeper.config import UpstreamConfig
from mcp_gatekeeper.errors import UpstreamError
from mcp_gatekeeper.upstream import Upstream, UpstreamHooks

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def feature_upstream(tmp_path: Path, **config: object) -> AsyncIterator[tuple[Upstream, StderrWatcher, Path]]:
    log = tmp_path / "calls.jsonl"
    watcher = StderrWatcher()
    cfg = UpstreamConfig(command=sys.executable, args=[str(FEATURE_SERVER), "--call-log", str(log)], **config)  # type: ignore[arg-type]  # test-chosen fields
    up = Upstream("feat", cfg, UpstreamHooks(), errlog=watcher.file)
    try:
        with anyio.fail_after(30):
            async with up.running():
                await up.connect()
                yield up, watcher, log
    finally:
        watcher.close()


async def test_raw_calls_and_sdk_requests_share_one_connection(tmp_path: Path) -> None:
    async with feature_upstream(tmp_path) as (up, _watcher, log):
        assert up._stdio is not None  # the raw lane is there
        results: dict[int, dict[str, object]] = {}
        listed: list[int] = []

        async def call(i: int) -> None:
            results[i] = await up.request("tools/call", {"name": "echo", "arguments": {"text": f"n{i}"}})

        async def list_tools() -> None:
            listed.append(len(await up.list_all("tools/list", "tools")))  # through the SDK, meanwhile

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(call, i)
                if i % 10 == 0:
                    tg.start_soon(list_tools)
    assert {i: r["structuredContent"] for i, r in results.items()} == {i: {"text": f"n{i}"} for i in range(50)}
    assert results[0] == {
        "content": [{"type": "text", "text": "n0"}],
        "structuredContent": {"text": "n0"},
        "isError": False,
    }
    assert len(listed) == 5 and len(set(listed)) == 1 and listed[0] > 5
    assert sorted(e["arguments"]["text"] for e in call_log(log)) == sorted(f"n{i}" for i in range(50))


async def test_the_servers_json_rpc_error_is_raised_as_mcp_error(tmp_path: Path) -> None:
    async with feature_upstream(tmp_path) as (up, _watcher, _log):
        with pytest.raises(MCPError) as raised:
            await up.request("tools/call", {"name": "no_such_tool", "arguments": {}})
        ok = await up.request("tools/call", {"name": "echo", "arguments": {"text": "still fine"}})
    assert raised.value.code == types.INVALID_PARAMS and "no_such_tool" in raised.value.message
    assert ok["structuredContent"] == {"text": "still fine"}


async def test_a_timeout_cancels_the_call_on_the_server(tmp_path: Path) -> None:
    async with feature_upstream(tmp_path) as (up, watcher, _log):
        with pytest.raises(MCPError) as raised:
            await up.request("tools/call", {"name": "slow", "arguments": {"steps": 1000, "delay": 0.05}}, timeout=0.5)
        with anyio.fail_after(10):
            await watcher.wait_for(re.compile(r"UPSTREAM: slow\(\) cancelled"))
    assert raised.value.code == types.REQUEST_TIMEOUT


async def test_a_cancelled_caller_cancels_the_call_on_the_server(tmp_path: Path) -> None:
    async with feature_upstream(tmp_path) as (up, watcher, _log):
        async with anyio.create_task_group() as tg:
            tg.start_soon(up.request, "tools/call", {"name": "slow", "arguments": {"steps": 1000, "delay": 0.05}})
            with anyio.fail_after(10):
                await watcher.wait_for(re.compile(r"UPSTREAM: slow\(\) started"))
            tg.cancel_scope.cancel()
        with anyio.fail_after(10):
            await watcher.wait_for(re.compile(r"UPSTREAM: slow\(\) cancelled"))
        after = await up.request("tools/call", {"name": "echo", "arguments": {"text": "after"}})
    assert after["structuredContent"] == {"text": "after"}


async def test_a_server_that_dies_mid_call_fails_the_call_and_is_restarted(tmp_path: Path) -> None:
    async with feature_upstream(tmp_path) as (up, _watcher, log):
        generation = up.generation
        with pytest.raises(UpstreamError):
            await up.request("tools/call", {"name": "crash", "arguments": {}})
        again = await up.request("tools/call", {"name": "echo", "arguments": {"text": "back"}})
        assert up.generation == generation + 1  # a new process
    assert again["structuredContent"] == {"text": "back"}
    assert [e["tool"] for e in call_log(log)] == ["crash", "echo"]


STUBBORN = """
import json, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg or "method" not in msg:
        continue
    if msg["method"] == "initialize":
        result = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "stubborn", "version": "1"}}
    else:
        result = {"tools": []} if msg["method"] == "tools/list" else {}
    print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), flush=True)
while True:  # stdin is closed: stay anyway (and SIGTERM is ignored)
    time.sleep(1)
"""


@pytest.mark.parametrize(("script", "signalled"), [("well-behaved", False), ("stubborn", True)])
async def test_the_server_process_ends_with_the_connection(tmp_path: Path, script: str, signalled: bool) -> None:
    path = tmp_path / "stubborn.py"
    path.write_text(STUBBORN)
    args = [str(FEATURE_SERVER)] if script == "well-behaved" else [str(path)]
    up = Upstream("feat", UpstreamConfig(command=sys.executable, args=args), UpstreamHooks())
    with anyio.fail_after(30):
        async with up.running():
            await up.connect()
            stdio = up._stdio
            assert stdio is not None and stdio._process is not None
            process = stdio._process
    # a server that exits on EOF ends by itself; one that ignores EOF and SIGTERM gets SIGKILL
    assert process.returncode == (-9 if signalled else 0)
