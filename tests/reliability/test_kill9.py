"""A1/A2: ``kill -9`` of a gatekeeper process: nothing held is lost or run, a forwarded call is never re-sent.

Several gatekeeper processes share one database. A process that starts recovers only the calls of processes
that are gone; a live neighbour's held calls stay pending and decidable.

Every test runs on both backends (``backing``): the home's SQLite file, and a PostgreSQL database where the
``wrap`` processes use the gatekeeper role and the CLI deciding is on the approver role.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import MCPError
from relkit import (
    CLIENT_GONE,
    GK,
    Backing,
    call_row,
    cli,
    events_of,
    integrity,
    query,
    raw_wrap,
    received,
    sigkill,
    text,
    wrap,
    write_config,
)

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

HELD_BY_A = 50
HELD_BY_B = 5

NOTES_HELD = """
[ui]
autostart = false
[[waiting.clients]]
name = "*"  # the test client waits as long as it takes (no pending-and-retry answer on a slow machine)
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
"""

SLOW_HELD = """
[ui]
autostart = false
[[waiting.clients]]
name = "*"  # the test client waits as long as it takes (no pending-and-retry answer on a slow machine)
[[rules]]
name = "slow-is-held"
tool = "slow"
gate = "hard"
"""

SLOW_ALLOWED = """
[ui]
autostart = false
[[rules]]
name = "slow-passes"
tool = "slow"
gate = "allow"
"""

LONG_SLOW = {"steps": 400, "delay": 0.05}  # ~20 s inside the upstream: long enough to be killed mid-call


async def _call_expecting_death(gk: GK, tool: str, args: dict[str, Any], out: list[BaseException], **kw: Any) -> None:
    """A call whose gatekeeper will be killed: it must end with a connection error, never with a result."""
    try:
        await gk.client.call_tool(tool, args, **kw)
    except (MCPError, *CLIENT_GONE) as e:
        out.append(e)
    else:
        out.append(AssertionError(f"{tool} returned a result although its gatekeeper was killed"))


async def test_a1_kill9_with_50_held_loses_nothing_runs_nothing_and_spares_a_live_neighbour(
    home: Path, tmp_path: Path, backing: Backing
) -> None:
    cfg = write_config(tmp_path / "gk.toml", NOTES_HELD)
    db = backing.view
    deciders = backing.approver_env(home)
    log_a, log_b, log_c = (tmp_path / f"calls-{x}.jsonl" for x in "abc")
    b_results: dict[str, types.CallToolResult] = {}
    a_errors: list[BaseException] = []
    with anyio.fail_after(300):
        async with wrap(home, cfg, "feat-b", log_b, store=backing) as b, anyio.create_task_group() as b_calls:

            async def call_b(i: int) -> None:
                b_results[f"/b/{i}"] = await b.client.call_tool("write_note", {"path": f"/b/{i}", "content": str(i)})

            for i in range(HELD_BY_B):
                b_calls.start_soon(call_b, i)
            b_ids = [await b.watcher.held() for _ in range(HELD_BY_B)]

            # process A holds 50 calls, then dies with kill -9
            async with wrap(home, cfg, "feat-a", log_a, store=backing) as a, anyio.create_task_group() as tg:
                for i in range(HELD_BY_A):
                    tg.start_soon(
                        _call_expecting_death, a, "write_note", {"path": f"/a/{i}", "content": str(i)}, a_errors
                    )
                a_ids = [await a.watcher.held() for _ in range(HELD_BY_A)]
                assert received(log_a, "write_note") == []
                leftovers = a.kill9()
            sigkill(leftovers)
            assert len(a_errors) == HELD_BY_A
            assert not [e for e in a_errors if isinstance(e, AssertionError)]  # no result from a dead gatekeeper

            a_rows = query(db, "SELECT id, state, arguments FROM calls WHERE upstream = 'feat-a'")
            assert len(a_rows) == HELD_BY_A  # nothing lost: every held call is in the store
            assert {r["state"] for r in a_rows} == {"pending"}  # nobody has recovered them yet

            # process C starts: it recovers the dead A's calls, and only those
            async with wrap(home, cfg, "feat-c", log_c, store=backing) as c:
                await c.client.list_tools()
                states = {r["id"][:8]: r["state"] for r in query(db, "SELECT id, state FROM calls")}
                assert {states[i] for i in a_ids} == {"orphaned"}
                assert {states[i] for i in b_ids} == {"pending"}  # the live neighbour's calls are untouched

                # the client re-issues one of A's calls through C: a new held call, not the orphan
                again: list[types.CallToolResult] = []
                async with anyio.create_task_group() as tg:

                    async def reissue() -> None:
                        again.append(await c.client.call_tool("write_note", {"path": "/a/0", "content": "0"}))

                    tg.start_soon(reissue)
                    new_id = await c.watcher.held()
                    assert new_id not in a_ids
                    rc, _, err = await cli(home, "reject", new_id, "--reason", "not again", config=cfg, env=deciders)
                    assert rc == 0, err
                assert again[0].is_error and "not again" in text(again[0])

                # an orphan can never be approved into running
                rc, _, err = await cli(home, "approve", a_ids[0], config=cfg, env=deciders)
                assert rc == 1 and "orphaned" in err

                # the survivor's calls are still decidable, and each runs once
                async with anyio.create_task_group() as tg:
                    for bid in b_ids:
                        tg.start_soon(_approve_ok, home, cfg, bid, deciders)
            # (the B calls complete as the holder sees the approvals)

    assert received(log_a, "write_note") == [] and received(log_c, "write_note") == []
    got_b = sorted(a["path"] for a in received(log_b, "write_note"))
    assert got_b == sorted(f"/b/{i}" for i in range(HELD_BY_B))  # each exactly once
    assert all(not r.is_error for r in b_results.values()) and len(b_results) == HELD_BY_B
    for aid in a_ids:
        assert events_of(db, call_row(db, aid)["id"]) == ["held", "orphaned"]
    for bid in b_ids:
        assert events_of(db, call_row(db, bid)["id"]) == ["held", "approved", "forwarding", "forwarded"]
    assert integrity(db) == "ok"
    rc, out, _ = await cli(home, "audit", "--verify", config=cfg, env=deciders)
    assert rc == 0, out


async def _approve_ok(home: Path, cfg: Path, cid: str, env: dict[str, str]) -> None:
    rc, _, err = await cli(home, "approve", cid, config=cfg, env=env)
    assert rc == 0, err


async def test_a2_kill9_while_forwarding_is_outcome_unknown_and_never_resent(
    home: Path, tmp_path: Path, backing: Backing
) -> None:
    cfg = write_config(tmp_path / "gk.toml", SLOW_HELD)
    db = backing.view
    deciders = backing.approver_env(home)
    log = tmp_path / "calls.jsonl"
    errors: list[BaseException] = []
    with anyio.fail_after(180):
        async with wrap(home, cfg, "feat", log, store=backing) as gk:
            inside = anyio.Event()

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                if (message or "").startswith("step "):  # the upstream's own progress: it is running the call
                    inside.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: _call_expecting_death(gk, "slow", LONG_SLOW, errors, progress_callback=on_progress)
                )
                cid = await gk.watcher.held()
                assert received(log, "slow") == []
                rc, _, err = await cli(home, "approve", cid, config=cfg, env=deciders)
                assert rc == 0, err
                await inside.wait()
                assert received(log, "slow") == [LONG_SLOW]  # the upstream started it
                assert call_row(db, cid)["state"] == "forwarding"  # written before the call was sent
                leftovers = gk.kill9()
        sigkill(leftovers)
        assert len(errors) == 1 and not isinstance(errors[0], AssertionError)

        # a new gatekeeper process starts on the same database
        async with wrap(home, cfg, "feat", log, store=backing) as gk2:
            await gk2.client.list_tools()
            row = call_row(db, cid)
            assert row["state"] == "outcome_unknown"  # said, not guessed: it may or may not have taken effect
            assert "died" in (row["error"] or "")

            # the agent retries the identical call: a new held call; the unknown one is never re-sent
            retried: list[types.CallToolResult] = []
            async with anyio.create_task_group() as tg:

                async def retry() -> None:
                    retried.append(await gk2.client.call_tool("slow", LONG_SLOW))

                tg.start_soon(retry)
                new_id = await gk2.watcher.held()
                assert new_id != cid
                rc, _, err = await cli(home, "reject", new_id, "--reason", "ran already", config=cfg, env=deciders)
                assert rc == 0, err
            assert retried[0].is_error and "ran already" in text(retried[0])
            rc, _, err = await cli(home, "approve", cid, config=cfg, env=deciders)
            assert rc == 1 and "outcome_unknown" in err

    assert received(log, "slow") == [LONG_SLOW]  # sent once, never again
    assert events_of(db, row["id"]) == ["held", "approved", "forwarding", "outcome_unknown"]
    rc, out, _ = await cli(home, "audit", "--verify", config=cfg, env=deciders)
    assert rc == 0, out


async def test_a2_kill9_during_an_allowed_call_marks_it_outcome_unknown(
    home: Path, tmp_path: Path, backing: Backing
) -> None:
    cfg = write_config(tmp_path / "gk.toml", SLOW_ALLOWED)
    db = backing.view
    log = tmp_path / "calls.jsonl"
    errors: list[BaseException] = []
    with anyio.fail_after(180):
        async with wrap(home, cfg, "feat", log, store=backing) as gk:
            inside = anyio.Event()

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                if (message or "").startswith("step "):
                    inside.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: _call_expecting_death(gk, "slow", LONG_SLOW, errors, progress_callback=on_progress)
                )
                await inside.wait()
                leftovers = gk.kill9()
        sigkill(leftovers)
        (row,) = query(db, "SELECT id, state FROM calls WHERE tool = 'slow'")
        async with wrap(home, cfg, "feat", log, store=backing) as gk2:
            await gk2.client.list_tools()
    assert received(log, "slow") == [LONG_SLOW]
    assert call_row(db, row["id"])["state"] == "outcome_unknown"


async def test_i5_an_allowed_call_is_recorded_before_its_result_is_replied(
    home: Path, tmp_path: Path, backing: Backing
) -> None:
    """README, how a call flows: allow → record "allowed" → upstream → record result → reply. Seen from the wire
    (a raw client, so no client-side follow-up such as a tools/list can delay what we observe)."""
    cfg = write_config(tmp_path / "gk.toml", SLOW_ALLOWED)
    db = backing.view
    with anyio.fail_after(90):
        async with raw_wrap(home, cfg, tmp_path / "calls.jsonl", env=backing.holder_env(home)) as gk:
            done = gk.expect(7)
            await gk.send(
                {
                    "jsonrpc": "2.0",
                    "id": 7,
                    "method": "tools/call",
                    "params": {"name": "slow", "arguments": {"steps": 3, "delay": 0.2}, "_meta": {"progressToken": 1}},
                }
            )
            await gk.progress.wait()  # the 'allowed' record is committed and the upstream is running
            with db.writes_held():  # the store cannot take the outcome for a while
                with anyio.move_on_after(2.0):  # the behaviour under test: does the reply wait for the record?
                    await done.wait()
                answered_while_unrecorded = done.is_set()
                (row,) = query(db, "SELECT state FROM calls WHERE tool = 'slow'")
            await done.wait()
    assert not gk.replies[7]["result"]["isError"]
    assert not answered_while_unrecorded, f"the client had the result while the store said {row['state']!r}"
