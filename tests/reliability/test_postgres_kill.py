"""Killing the PostgreSQL server under real ``mcp-gatekeeper wrap`` processes (team mode).

Two gatekeepers on the gatekeeper role share a throwaway server; decisions come from the CLI on the approver
role. The server is stopped the hard way (``pg_ctl stop -m immediate``) while calls are held and a decision is
being made, then started again: nothing runs without a decision, nothing runs twice, nothing is lost, and a
gatekeeper holding the gatekeeper role's credentials cannot approve its own call. A gatekeeper that loses its
server holds and allows nothing that needs a record, stays up and reconnects by itself; a call that finishes
upstream meanwhile is replied only once its outcome is recorded.

The tests that stop the server share one throwaway server of this module (a fresh database each); the others use
the session's (``pg_admin_dsn``). The race, ``kill -9`` and crash-loop tests run on PostgreSQL too (``backing``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pgcluster
import psycopg
import pytest
from harness import FEATURE_SERVER, ROOT, gatekeeper, gk_env, wrap_params
from relkit import PY, PostgresView, call_log, instance_pid, pid_alive, received, text, write_config

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.store.pg_schema import SCHEMA, Roles
from mcp_gatekeeper.store.postgres import init_database

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

HELD = """
[ui]
autostart = false
[[waiting.clients]]
name = "*"  # the test client waits as long as it takes (no pending-and-retry answer on a slow machine)
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
"""


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[pgcluster.Cluster]:
    """One throwaway server for the tests of this module that stop and start it (never $GATEKEEPER_TEST_PG's)."""
    if why := pgcluster.why_unavailable():
        pytest.skip(why)
    if os.environ.get(pgcluster.ENV_DSN):
        pytest.skip(f"stops and restarts a server of its own (not the one ${pgcluster.ENV_DSN} names)")
    cluster = pgcluster.start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def killable(own_cluster: pgcluster.Cluster) -> Iterator[tuple[pgcluster.Cluster, str]]:
    """The module's server (running) and the admin URL of a fresh database of it, for this test only."""
    try:
        psycopg.connect(own_cluster.dsn, connect_timeout=5).close()
    except psycopg.OperationalError:  # an earlier test failed while the server was down
        own_cluster.start()
    name = f"kill_{secrets.token_hex(4)}"
    with psycopg.connect(own_cluster.dsn, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    yield own_cluster, pgcluster.with_database(own_cluster.dsn, name)
    with contextlib.suppress(psycopg.OperationalError), psycopg.connect(own_cluster.dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _cli(home: Path, store_url: str, *args: str, config: Path) -> tuple[int, str, str]:
    """The CLI as a reviewer runs it, with the given role's URL as the store."""
    argv = [PY, "-m", "mcp_gatekeeper", *args, "--config", str(config)]
    env = gk_env(home, MCP_GATEKEEPER_STORE=store_url)
    proc = await anyio.run_process(argv, env=env, check=False, cwd=str(ROOT))
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def _rows(admin: str) -> dict[str, tuple[str, str | None]]:
    with psycopg.connect(admin, options=f"-c search_path={SCHEMA}") as c:
        rows = c.execute("SELECT arguments, state, decided_by FROM calls").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _events(admin: str, path: str) -> list[str]:
    with psycopg.connect(admin, options=f"-c search_path={SCHEMA}") as c:
        rows = c.execute(
            "SELECT a.event FROM audit a JOIN calls c ON c.id = a.call_id WHERE c.arguments LIKE %s ORDER BY a.seq",
            (f'%"{path}"%',),
        ).fetchall()
    return [r[0] for r in rows]


async def test_killing_the_database_mid_flight_runs_nothing_undecided_nothing_twice_and_loses_nothing(
    home: Path, tmp_path: Path, killable: tuple[pgcluster.Cluster, str]
) -> None:
    cluster, admin = killable
    tag = secrets.token_hex(3)
    roles = Roles(gatekeeper=f"gk_{tag}", approver=f"ap_{tag}", owner=f"own_{tag}")
    report = await init_database(admin, SystemClock(), roles=roles)
    gk_url, ap_url = report.new_role_urls[roles.gatekeeper], report.new_role_urls[roles.approver]
    cfg = write_config(tmp_path / "gk.toml", HELD)
    log_a, log_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    results: dict[str, types.CallToolResult] = {}
    answered: dict[str, anyio.Event] = {p: anyio.Event() for p in ("/a/0", "/a/1", "/a/2", "/b/0")}

    def params(name: str, log: Path) -> Any:
        upstream = [PY, str(FEATURE_SERVER), "--call-log", str(log)]
        return wrap_params(home, cfg, name, upstream, MCP_GATEKEEPER_STORE=gk_url)

    with anyio.fail_after(300):
        async with (
            gatekeeper(params("team-a", log_a)) as (a, a_err),
            gatekeeper(params("team-b", log_b)) as (b, b_err),
            anyio.create_task_group() as tg,
        ):

            async def call(client: Any, path: str) -> None:
                results[path] = await client.call_tool("write_note", {"path": path, "content": path})
                answered[path].set()

            a_ids = []
            for i in range(3):  # one at a time: a_ids[i] is the call of /a/i
                tg.start_soon(call, a, f"/a/{i}")
                a_ids.append(await a_err.held())
            tg.start_soon(call, b, "/b/0")
            b_id = await b_err.held()

            # the agent's side holds the gatekeeper role's credentials: it cannot approve its own call
            rc, _, err = await _cli(home, gk_url, "approve", a_ids[0], config=cfg)
            assert rc != 0 and "permission denied" in err
            rc, _, err = await _cli(home, ap_url, "approve", a_ids[0], config=cfg)
            assert rc == 0, err
            with anyio.fail_after(30):
                await answered["/a/0"].wait()
            assert not results["/a/0"].is_error

            # the server dies while calls are held and while a reviewer decides
            deciding = anyio.Event()

            async def approve_during_the_crash() -> None:
                deciding.set()
                rc, _, err = await _cli(home, ap_url, "approve", a_ids[1], config=cfg)
                crash_outcomes.append((rc, err))

            crash_outcomes: list[tuple[int, str]] = []
            async with anyio.create_task_group() as racing:
                racing.start_soon(approve_during_the_crash)
                await deciding.wait()
                await anyio.to_thread.run_sync(cluster.kill)
            # a new call while the database is down: it is neither held nor run (no record, no call)
            down = await b.call_tool("write_note", {"path": "/b/down", "content": "x"})
            assert down.is_error
            rc, _, err = await _cli(home, ap_url, "approve", b_id, config=cfg)
            assert rc != 0  # nobody decides while the server is gone
            assert received(log_b, "write_note") == []

            await anyio.to_thread.run_sync(cluster.start)
            # whatever the racing approval's fate, it happened at most once; decide what is still pending
            state_a1 = _rows(admin)['{"content":"/a/1","path":"/a/1"}'][0]
            if state_a1 == "pending":
                rc, _, err = await _cli(home, ap_url, "approve", a_ids[1], config=cfg)
                assert rc == 0, err
            rc, _, err = await _cli(home, ap_url, "reject", a_ids[2], "--reason", "no", config=cfg)
            assert rc == 0, err
            rc, _, err = await _cli(home, ap_url, "approve", b_id, config=cfg)
            assert rc == 0, err
        # every held call's client got its answer (the task group waited for them)

    assert not results["/a/1"].is_error and not results["/b/0"].is_error
    assert results["/a/2"].is_error and "no" in text(results["/a/2"])
    got_a = sorted(x["path"] for x in received(log_a, "write_note"))
    assert got_a == ["/a/0", "/a/1"]  # each approved call exactly once; the rejected one never
    assert [x["path"] for x in received(log_b, "write_note")] == ["/b/0"]  # never the one made while down
    rows = _rows(admin)
    assert len(rows) == 4  # nothing lost (the call made while down was never recorded, and never ran)
    assert {args: st for args, (st, _) in rows.items()} == {
        '{"content":"/a/0","path":"/a/0"}': "forwarded",
        '{"content":"/a/1","path":"/a/1"}': "forwarded",
        '{"content":"/a/2","path":"/a/2"}': "rejected",
        '{"content":"/b/0","path":"/b/0"}': "forwarded",
    }
    for path in ("/a/0", "/a/1", "/b/0"):
        assert _events(admin, path) == ["held", "approved", "forwarding", "forwarded"]
    rc, out, err = await _cli(home, ap_url, "audit", "--verify", config=cfg)
    assert rc == 0, out + err


IN_CLIENT = """
[ui]
autostart = false
[[waiting.clients]]
name = "*"
[[rules]]
name = "decide-in-client"
tool = "write_note"
gate = "hard"
in_client = "decide"
"""


async def test_an_approval_from_inside_the_agents_client_is_refused_in_team_mode(
    home: Path, tmp_path: Path, pg_admin_dsn: str
) -> None:
    """The client's elicitation answer would be recorded with the gatekeeper's role: refused, the call stays held
    until the approval side decides, and then runs once."""
    admin = pg_admin_dsn
    tag = secrets.token_hex(3)
    roles = Roles(gatekeeper=f"gk_{tag}", approver=f"ap_{tag}", owner=f"own_{tag}")
    report = await init_database(admin, SystemClock(), roles=roles)
    gk_url, ap_url = report.new_role_urls[roles.gatekeeper], report.new_role_urls[roles.approver]
    cfg = write_config(tmp_path / "gk.toml", IN_CLIENT)
    log = tmp_path / "calls.jsonl"
    asked = anyio.Event()

    async def approve_in_client(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.set()
        return types.ElicitResult(action="accept", content={"decision": "approve"})

    upstream = [PY, str(FEATURE_SERVER), "--call-log", str(log)]
    params = wrap_params(home, cfg, "team", upstream, MCP_GATEKEEPER_STORE=gk_url)
    result: list[types.CallToolResult] = []
    with anyio.fail_after(180):
        async with (
            gatekeeper(params, elicitation_callback=approve_in_client) as (client, err),
            anyio.create_task_group() as tg,
        ):

            async def call() -> None:
                result.append(await client.call_tool("write_note", {"path": "/x", "content": "1"}))

            tg.start_soon(call)
            held = await err.held()
            await asked.wait()
            await err.wait_for(re.compile(r"in-client answer for \w+ not recorded"))
            assert received(log, "write_note") == []  # the client's own "approve" ran nothing
            assert _rows(admin)['{"content":"1","path":"/x"}'] == ("pending", None)
            rc, _, e = await _cli(home, ap_url, "approve", held, config=cfg)
            assert rc == 0, e
    assert not result[0].is_error
    assert [x["path"] for x in received(log, "write_note")] == ["/x"]
    assert _rows(admin)['{"content":"1","path":"/x"}'][0] == "forwarded"


ECHO_AND_NOTES = """
[ui]
autostart = false
[[waiting.clients]]
name = "*"
[[rules]]
name = "echo-passes"
tool = "echo"
gate = "allow"
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
"""

NOT_RUN = "could not record this call, so it was not run"


async def test_a_gatekeeper_that_loses_the_database_holds_and_allows_nothing_then_reconnects_by_itself(
    home: Path, tmp_path: Path, killable: tuple[pgcluster.Cluster, str]
) -> None:
    """One real ``wrap`` process on the gatekeeper role while the server is killed and started again: while it is
    gone, a call that needs a record (allowed, or to be held) is neither recorded, nor held, nor forwarded, and the
    client is told so; the process stays up, and once the server is back the same process records, holds and
    forwards again without a restart (a decision by the approver's role reaches it)."""
    cluster, admin = killable
    tag = secrets.token_hex(3)
    roles = Roles(gatekeeper=f"gk_{tag}", approver=f"ap_{tag}", owner=f"own_{tag}")
    report = await init_database(admin, SystemClock(), roles=roles)
    gk_url, ap_url = report.new_role_urls[roles.gatekeeper], report.new_role_urls[roles.approver]
    view = PostgresView(admin)
    cfg = write_config(tmp_path / "gk.toml", ECHO_AND_NOTES)
    log = tmp_path / "calls.jsonl"
    upstream = [PY, str(FEATURE_SERVER), "--call-log", str(log)]
    params = wrap_params(home, cfg, "lost", upstream, MCP_GATEKEEPER_STORE=gk_url)
    after: list[types.CallToolResult] = []
    with anyio.fail_after(300):
        async with gatekeeper(params) as (client, err):
            before = await client.call_tool("echo", {"text": "before"})
            assert not before.is_error, text(before)
            pid = instance_pid(view, "wrap lost")

            await anyio.to_thread.run_sync(cluster.kill)
            allowed = await client.call_tool("echo", {"text": "while-down"})
            held = await client.call_tool("write_note", {"path": "/down", "content": "x"})
            for result in (allowed, held):  # the client is told, in words, that nothing ran
                assert result.is_error and NOT_RUN in text(result), text(result)
            assert [c["arguments"] for c in call_log(log)] == [{"text": "before"}]  # nothing forwarded
            assert not [line for line in err.lines if "HELD" in line]  # nothing held (not even in memory)
            assert pid_alive(pid)  # the gatekeeper did not die with its database

            await anyio.to_thread.run_sync(cluster.start)  # the same process, never restarted
            again = await client.call_tool("echo", {"text": "after"})
            assert not again.is_error, text(again)
            async with anyio.create_task_group() as tg:

                async def note() -> None:
                    after.append(await client.call_tool("write_note", {"path": "/up", "content": "y"}))

                tg.start_soon(note)
                cid = await err.held()
                assert received(log, "write_note") == []  # held, not run, until decided
                rc, _, e = await _cli(home, ap_url, "approve", cid, config=cfg)
                assert rc == 0, e
            assert pid_alive(pid) and instance_pid(view, "wrap lost") == pid

    assert not after[0].is_error, text(after[0])
    assert [c["arguments"] for c in call_log(log)] == [
        {"text": "before"},
        {"text": "after"},
        {"path": "/up", "content": "y"},
    ]  # each once; never what came while the server was gone
    rows = view.query("SELECT tool, state, arguments FROM calls ORDER BY created_at")
    assert [(r["tool"], r["state"]) for r in rows] == [
        ("echo", "forwarded"),
        ("echo", "forwarded"),
        ("write_note", "forwarded"),
    ], rows  # the calls made while it was gone left no record: there was nowhere to write one
    assert "while-down" not in str(rows) and "/down" not in str(rows)
    rc, out, e = await _cli(home, ap_url, "audit", "--verify", config=cfg)
    assert rc == 0, out + e


SLOW_ALLOWED = """
[ui]
autostart = false
[[waiting.clients]]
name = "*"
[[rules]]
name = "slow-passes"
tool = "slow"
gate = "allow"
"""


async def test_a_call_that_finishes_while_the_database_is_gone_is_replied_only_once_its_outcome_is_recorded(
    home: Path, tmp_path: Path, killable: tuple[pgcluster.Cluster, str]
) -> None:
    """README, how a call flows: record, upstream, record the result, reply. The server dies while an allowed call
    runs upstream: the reply waits until the outcome is in the store (once the server is back), so what the client
    was told and what the store says never disagree."""
    cluster, admin = killable
    tag = secrets.token_hex(3)
    roles = Roles(gatekeeper=f"gk_{tag}", approver=f"ap_{tag}", owner=f"own_{tag}")
    report = await init_database(admin, SystemClock(), roles=roles)
    view = PostgresView(admin)
    cfg = write_config(tmp_path / "gk.toml", SLOW_ALLOWED)
    log = tmp_path / "calls.jsonl"
    upstream = [PY, str(FEATURE_SERVER), "--call-log", str(log)]
    params = wrap_params(home, cfg, "outcome", upstream, MCP_GATEKEEPER_STORE=report.new_role_urls[roles.gatekeeper])
    args = {"steps": 3, "delay": 0.2}
    result: list[types.CallToolResult] = []
    answered, inside = anyio.Event(), anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if (message or "").startswith("step "):  # the upstream is running it: 'allowed' is recorded
            inside.set()

    with anyio.fail_after(300):
        async with gatekeeper(params) as (client, _), anyio.create_task_group() as tg:

            async def call() -> None:
                result.append(await client.call_tool("slow", args, progress_callback=on_progress))
                answered.set()

            tg.start_soon(call)
            await inside.wait()
            await anyio.to_thread.run_sync(cluster.kill)
            # the upstream finishes in well under a second; the store cannot take its outcome while the server is gone
            with anyio.move_on_after(8.0):  # the behaviour under test: does the reply wait for the record?
                await answered.wait()
            answered_while_down = answered.is_set()
            await anyio.to_thread.run_sync(cluster.start)
            await answered.wait()

    assert received(log, "slow") == [args]  # run once
    assert not result[0].is_error, text(result[0])
    assert not answered_while_down, "the client had the result while the store could not record it"
    (row,) = view.query("SELECT state FROM calls WHERE tool = 'slow'")
    assert row["state"] == "forwarded"  # what the client was told is what the store says
