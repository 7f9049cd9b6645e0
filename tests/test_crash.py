"""``kill -9`` of the gatekeeper while it holds calls: none executed, none lost, all visible after restart."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness import FEATURE_SERVER, call_log, cli, gatekeeper, wrap_params
from mcp import MCPError

pytestmark = pytest.mark.anyio

HELD_CALLS = 50


def gatekeeper_pids(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT pid FROM instances WHERE stopped_at IS NULL")]


async def test_kill_9_with_held_calls_loses_nothing_and_runs_nothing(
    home: Path, tmp_path: Path, no_ui_config: Path
) -> None:
    log = tmp_path / "upstream-calls.jsonl"
    params = wrap_params(home, no_ui_config, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)])
    errors: list[BaseException] = []
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, watcher):

            async def call(i: int) -> None:
                try:
                    await client.call_tool("write_note", {"path": f"/tmp/n{i}", "content": str(i)})
                except (MCPError, anyio.BrokenResourceError, anyio.ClosedResourceError) as e:
                    errors.append(e)

            async with anyio.create_task_group() as tg:
                for i in range(HELD_CALLS):
                    tg.start_soon(call, i)
                for _ in range(HELD_CALLS):
                    await watcher.held()
                (pid,) = gatekeeper_pids(home / "gatekeeper.db")
                os.kill(pid, signal.SIGKILL)
            # every in-flight call ended with an error at the client (the connection died), none with a result
            assert len(errors) == HELD_CALLS

    assert [c for c in call_log(log) if c["tool"] == "write_note"] == []  # nothing ran
    with sqlite3.connect(home / "gatekeeper.db") as conn:
        rows = conn.execute("SELECT state, arguments FROM calls WHERE tool = 'write_note'").fetchall()
    assert len(rows) == HELD_CALLS  # nothing lost
    assert {r[0] for r in rows} == {"pending"}  # still pending: nobody has looked yet
    assert sorted(json.loads(r[1])["content"] for r in rows) == sorted(str(i) for i in range(HELD_CALLS))

    # a new gatekeeper process starts: the dead process's calls become 'orphaned' (never executed) and visible
    async with gatekeeper(params) as (client, _watcher):
        await client.list_tools()
        _, out, _ = await cli(home, "pending", "--json")
        assert json.loads(out) == []
        with sqlite3.connect(home / "gatekeeper.db") as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM calls WHERE tool = 'write_note'")]
            states = {r[0] for r in conn.execute("SELECT state FROM calls WHERE tool = 'write_note'")}
        assert states == {"orphaned"}
        _, out, _ = await cli(home, "show", ids[0], "--json")
        shown: dict[str, Any] = json.loads(out)
        assert shown["state"] == "orphaned" and "died" in (shown["error"] or "")
        rc, _, err = await cli(home, "approve", ids[0], check=False)
        assert rc == 1 and "orphaned" in err  # an orphan can never be approved into running
    assert [c for c in call_log(log) if c["tool"] == "write_note"] == []
    rc, out, _ = await cli(home, "audit", "--verify")
    assert rc == 0, out
