"""F7: the agent approves its own call from its shell (CLI without a terminal, the bearer API, the database).

What the product promises (README, "What a local gate cannot promise"): an agent with an unrestricted shell
running as the same user can get around any local gate. So these paths must be *visible* (the decision says how
it was made) or *refused* where a setting asks for it (``cli_requires_tty``), and a decision that was not made
through the gatekeeper (a row written straight into the database) must never be executed.
"""

from __future__ import annotations

import getpass
import json
import os
import pty
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from relkit import (
    GK,
    UI_READY,
    audit_of,
    call_row,
    cli,
    db_of,
    env_for,
    events_of,
    received,
    served,
    text,
    wrap,
    write_config,
)

from mcp_gatekeeper.models import audit_hash, canonical_json

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

NOTES_HELD = """
[ui]
autostart = false
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
"""
TTY_REQUIRED = NOTES_HELD + "[security]\ncli_requires_tty = true\n"
NOTE = {"path": "/n/1", "content": "self-approved?"}


def user() -> str:
    return getpass.getuser()


async def _hold(gk: GK, out: list[types.CallToolResult], args: dict[str, Any] = NOTE) -> None:
    out.append(await gk.client.call_tool("write_note", args))


# ---------------------------------------------------------------------------------------------- (a) the CLI


async def test_f7a_cli_without_a_terminal_decides_but_says_so(home: Path, tmp_path: Path) -> None:
    """Default settings: a decision from a shell with no terminal works, and is recorded as cli-noninteractive."""
    cfg = write_config(tmp_path / "gk.toml", NOTES_HELD)
    log = tmp_path / "calls.jsonl"
    results: list[types.CallToolResult] = []
    with anyio.fail_after(30):
        async with wrap(home, cfg, "feat", log) as gk, anyio.create_task_group() as tg:
            tg.start_soon(_hold, gk, results)
            cid = await gk.watcher.held()
            rc, _, err = await cli(home, "approve", cid, config=cfg)  # stdin is /dev/null, as in an agent's shell
            assert rc == 0, err
        rc, out, _ = await cli(home, "show", cid, "--json", config=cfg)
    assert rc == 0
    shown = json.loads(out)
    assert (shown["channel"], shown["decided_by"]) == ("cli-noninteractive", f"cli:{user()}")
    (approval,) = [e for e in shown["audit"] if e["event"] == "approved"]
    assert (approval["channel"], approval["actor"]) == ("cli-noninteractive", f"cli:{user()}")
    assert not results[0].is_error and received(log, "write_note") == [NOTE]


async def test_f7a_cli_requires_tty_refuses_a_shell_and_accepts_a_terminal(home: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gk.toml", TTY_REQUIRED)
    db, log = db_of(home), tmp_path / "calls.jsonl"
    results: list[types.CallToolResult] = []
    with anyio.fail_after(30):
        async with wrap(home, cfg, "feat", log) as gk, anyio.create_task_group() as tg:
            tg.start_soon(_hold, gk, results)
            cid = await gk.watcher.held()
            for verb in ("approve", "reject"):
                rc, _, err = await cli(home, verb, cid, config=cfg)
                assert rc == 1 and "non-interactive" in err, (verb, rc, err)
            assert call_row(db, cid)["state"] == "pending" and received(log, "write_note") == []
            assert events_of(db, call_row(db, cid)["id"]) == ["held"]  # the refusals changed nothing

            leader, follower = pty.openpty()  # a terminal: what a human at a keyboard has
            try:
                rc, _, err = await cli(home, "approve", cid, config=cfg, stdin=follower)
            finally:
                os.close(follower)
                os.close(leader)
            assert rc == 0, err
    row = call_row(db, cid)
    assert (row["state"], row["channel"], row["decided_by"]) == ("forwarded", "cli", f"cli:{user()}")
    assert not results[0].is_error and received(log, "write_note") == [NOTE]


async def test_f7a_cli_requires_tty_of_the_holder_applies_to_a_bare_approve(home: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gk.toml", TTY_REQUIRED)
    db, log = db_of(home), tmp_path / "calls.jsonl"
    bare_home = tmp_path / "user-home"  # no ~/.config/mcp-gatekeeper/config.toml, no $MCP_GATEKEEPER_CONFIG
    bare_home.mkdir()
    results: list[types.CallToolResult] = []
    with anyio.fail_after(30):
        async with wrap(home, cfg, "feat", log) as gk, anyio.create_task_group() as tg:
            tg.start_soon(_hold, gk, results)
            cid = await gk.watcher.held()
            rc, _, err = await cli(home, "approve", cid, env=env_for(home, HOME=str(bare_home)))
            state = call_row(db, cid)["state"]
            if rc != 0:  # what should happen: refused, still pending; a human at a terminal ends the hold
                leader, follower = pty.openpty()
                try:
                    await cli(home, "reject", cid, "--reason", "cleanup", config=cfg, stdin=follower)
                finally:
                    os.close(follower)
                    os.close(leader)
    assert rc == 1 and "non-interactive" in err, (rc, err)
    assert state == "pending"
    assert received(log, "write_note") == []


# ---------------------------------------------------------------------------------------------- (b) the bearer API


async def test_f7b_bearer_api_with_the_token_file_decides_and_is_attributed(home: Path, tmp_path: Path) -> None:
    """An agent that reads ``ui-token`` can approve through the API: the product promises attribution, not
    prevention. The decision is recorded as ``api:<user>`` (a browser session is ``web:<sid>``), so it is visible
    in the record and the audit. ``cli_requires_tty`` covers the CLI only: it does not stop the bearer API."""
    cfg = write_config(tmp_path / "gk.toml", TTY_REQUIRED)
    db, log = db_of(home), tmp_path / "calls.jsonl"
    results: list[types.CallToolResult] = []
    with anyio.fail_after(40):
        async with (
            served(home, ["ui", "--port", "0", "--config", str(cfg)], UI_READY) as ui,
            wrap(home, cfg, "feat", log) as gk,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(_hold, gk, results)
            cid = await gk.watcher.held()
            base = f"http://127.0.0.1:{ui.match.group(2)}"
            token = (home / "ui-token").read_text().strip()  # what `cat ~/.local/state/mcp-gatekeeper/ui-token` gives
            async with httpx2.AsyncClient(base_url=base) as http:
                r = await http.get("/api/calls", params={"state": "pending"})
                assert r.status_code == 401  # no token, no list
                r = await http.get("/api/calls", params={"state": "pending"}, headers={"Authorization": "Bearer nope"})
                assert r.status_code == 401
                bearer = {"Authorization": f"Bearer {token}"}
                r = await http.get("/api/calls", params={"state": "pending"}, headers=bearer)
                assert r.status_code == 200
                (listed,) = r.json()["calls"]
                assert listed["id"].startswith(cid)
                r = await http.post(f"/api/calls/{listed['id']}/approve", json={"args_digest": listed["args_digest"]})
                assert r.status_code in (401, 403) and call_row(db, cid)["state"] == "pending"
                r = await http.post(
                    f"/api/calls/{listed['id']}/approve", json={"args_digest": listed["args_digest"]}, headers=bearer
                )
                assert r.status_code == 200, r.text
    row = call_row(db, cid)
    assert (row["state"], row["decided_by"], row["channel"]) == ("forwarded", f"api:{user()}", "web")
    (approval,) = [e for e in audit_of(db, row["id"]) if e["event"] == "approved"]
    assert approval["actor"] == f"api:{user()}"
    assert not results[0].is_error and received(log, "write_note") == [NOTE]


# ---------------------------------------------------------------------------------------------- (c) the database


def _write(db: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """What ``sqlite3 gatekeeper.db "..."`` in the agent's shell does: one transaction, outside the gatekeeper."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for sql, params in statements:
            conn.execute(sql, params)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _approve_row(call_id: str) -> tuple[str, tuple[Any, ...]]:
    return (
        "UPDATE calls SET state = 'approved', decided_at = ?, decided_by = ?, channel = 'cli' WHERE id = ?",
        (time.time(), f"cli:{user()}", call_id),
    )


def _forged_approval(db: Path, call_id: str, *, valid_hash: bool) -> tuple[str, tuple[Any, ...]]:
    """An 'approved' audit event as ``Store.decide`` would write it; its hash computed right, or not."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        prev = conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()[0]
        args_digest = conn.execute("SELECT args_digest FROM calls WHERE id = ?", (call_id,)).fetchone()[0]
    finally:
        conn.close()
    body = {
        "at": time.time(),
        "call_id": call_id,
        "event": "approved",
        "actor": f"cli:{user()}",
        "channel": "cli",
        "args_digest": args_digest,
        "detail": {},
    }
    h = audit_hash(prev, body) if valid_hash else "f" * 64
    return (
        "INSERT INTO audit (at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (body["at"], call_id, "approved", body["actor"], "cli", args_digest, canonical_json({}), prev, h),
    )


async def _tamper_and_wait(home: Path, tmp_path: Path, tamper: str) -> tuple[dict[str, Any], types.CallToolResult]:
    cfg = write_config(tmp_path / "gk.toml", NOTES_HELD)
    db, log = db_of(home), tmp_path / "calls.jsonl"
    results: list[types.CallToolResult] = []
    with anyio.fail_after(30):
        async with wrap(home, cfg, "feat", log) as gk, anyio.create_task_group() as tg:
            tg.start_soon(_hold, gk, results)
            full = call_row(db, await gk.watcher.held())["id"]
            statements = [_approve_row(full)]
            if tamper != "row":
                statements.append(_forged_approval(db, full, valid_hash=tamper == "chain-valid"))
            _write(db, *statements)  # the holder notices the change (data_version) and wakes
    assert len(results) == 1
    if tamper != "chain-valid":
        assert received(log, "write_note") == []  # I1: never executed
    return call_row(db, full), results[0]


async def test_f7c_a_row_set_to_approved_in_the_database_is_never_executed(home: Path, tmp_path: Path) -> None:
    row, result = await _tamper_and_wait(home, tmp_path, "row")
    assert row["state"] == "denied"  # visible: the holder refused it and says why
    assert events_of(db_of(home), row["id"]) == ["held", "unverified_approval"]
    assert result.is_error and "could not be verified" in text(result)
    rc, out, _ = await cli(home, "audit", "--verify")
    assert rc == 0, out  # the chain itself was not touched


async def test_f7c_a_forged_approval_event_with_a_wrong_hash_is_never_executed(home: Path, tmp_path: Path) -> None:
    row, result = await _tamper_and_wait(home, tmp_path, "chain-broken")
    assert row["state"] == "denied"
    assert events_of(db_of(home), row["id"]) == ["held", "approved", "unverified_approval"]
    assert result.is_error and "could not be verified" in text(result)
    rc, out, _ = await cli(home, "audit", "--verify")
    assert rc == 1 and "altered" in out  # and the forgery shows in the chain check


@pytest.mark.xfail(
    strict=True,
    reason=(
        "not built yet (documented residual risk, README 'What a local gate cannot promise'): the audit chain is an "
        "unkeyed SHA-256, so whoever can write the database can append an 'approved' event with a correct hash; "
        "Store.verify_decision accepts it and the call runs (threat model F7c: keyed decision seal)"
    ),
)
async def test_f7c_a_forged_approval_event_with_a_valid_hash_is_never_executed(home: Path, tmp_path: Path) -> None:
    row, result = await _tamper_and_wait(home, tmp_path, "chain-valid")
    assert row["state"] != "forwarded"
    assert result.is_error
