"""Both protocol eras through the real ``wrap`` subprocess, and a real npm server (server-filesystem)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import mcp.types as types
import pytest
from harness import FEATURE_SERVER, call_log, cli, gatekeeper, npm_bin, wrap_params

pytestmark = pytest.mark.anyio


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.parametrize(("mode", "version"), [("legacy", "2025-11-25"), ("auto", "2026-07-28")])
async def test_both_eras_get_correct_results(
    home: Path, tmp_path: Path, no_ui_config: Path, mode: str, version: str
) -> None:
    log = tmp_path / "calls.jsonl"
    params = wrap_params(home, no_ui_config, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)])
    with anyio.fail_after(60):
        async with gatekeeper(params, mode=mode) as (client, watcher):
            assert client.protocol_version == version
            echoed = await client.call_tool("echo", {"text": "héllo"})
            assert echoed.structured_content == {"text": "héllo"} and not echoed.is_error
            async with anyio.create_task_group() as tg:
                out: list[types.CallToolResult] = []

                async def call() -> None:
                    out.append(await client.call_tool("write_note", {"path": "/tmp/era", "content": mode}))

                tg.start_soon(call)
                held = await watcher.held()
                await cli(home, "approve", held)
            assert not out[0].is_error and "wrote" in text(out[0])
    assert [c["arguments"] for c in call_log(log) if c["tool"] == "write_note"] == [
        {"path": "/tmp/era", "content": mode}
    ]


FILESYSTEM = npm_bin("mcp-server-filesystem")


@pytest.mark.npm
@pytest.mark.skipif(
    FILESYSTEM is None, reason="node or @modelcontextprotocol/server-filesystem missing (run .ci/setup)"
)
async def test_npm_filesystem_server_write_is_held_read_passes(home: Path, tmp_path: Path, no_ui_config: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "hello.txt").write_text("hello from disk\n")
    assert FILESYSTEM is not None
    params = wrap_params(home, no_ui_config, "fs", [FILESYSTEM, str(work)])
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, watcher):
            read = await client.call_tool("read_text_file", {"path": str(work / "hello.txt")})
            assert "hello from disk" in text(read)  # a read passes straight through
            async with anyio.create_task_group() as tg:
                out: list[types.CallToolResult] = []

                async def write(name: str, content: str) -> None:
                    out.append(await client.call_tool("write_file", {"path": str(work / name), "content": content}))

                tg.start_soon(write, "new.txt", "agent wrote this")
                held = await watcher.held()
                assert not (work / "new.txt").exists()  # held: nothing written yet
                edited = {"path": str(work / "new.txt"), "content": "the reviewer wrote this"}
                await cli(home, "approve", held, "--args", json.dumps(edited))
            tg2_out = out[0]
            assert not tg2_out.is_error, text(tg2_out)
            async with anyio.create_task_group() as tg:
                tg.start_soon(write, "nope.txt", "x")
                held = await watcher.held()
                await cli(home, "reject", held, "--reason", "no new files")
            assert out[1].is_error and "no new files" in text(out[1])
    assert (work / "new.txt").read_text() == "the reviewer wrote this"
    assert not (work / "nope.txt").exists()
