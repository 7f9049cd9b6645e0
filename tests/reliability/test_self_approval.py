"""F7: the agent approves its own call from its shell (the CLI, the bearer API, the database).

What the product promises (README, "What a local gate cannot promise"): an agent with an unrestricted shell
running as the same user can get around any local gate. So these paths must be *visible* (the decision says how
it was made, with the facts we know as evidence, never as a guarantee), and a decision that was not made
through the gatekeeper (a row written straight into the database) must never be executed.

There is no setting that keeps an agent's shell from deciding: ``cli_requires_tty`` was removed because
``script -qec "mcp-gatekeeper approve ID" /dev/null`` gives any program a terminal (tested below).
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from harness import ROOT
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
NOTE = {"path": "/n/1", "content": "self-approved?"}


def user() -> str:
    return getpass.getuser()


async def _hold(gk: GK, out: list[types.CallToolResult], args: dict[str, Any] = NOTE) -> None:
    out.append(await gk.client.call_tool("write_note", args))


# ---------------------------------------------------------------------------------------------- (a) the CLI


async def test_f7a_cli_without_a_terminal_decides_and_records_the_facts(home: Path, tmp_path: Path) -> None:
    """A decision from a shell with no terminal works; it is recorded as channel ``cli`` with the facts we know."""
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
    assert (shown["channel"], shown["decided_by"]) == ("cli", f"cli:{user()}")
    (approval,) = [e for e in shown["audit"] if e["event"] == "approved"]
    assert (approval["channel"], approval["actor"]) == ("cli", f"cli:{user()}")
    evidence = approval["detail"]["evidence"]
    assert evidence["os_user"] == user() and evidence["uid"] == os.getuid()
    assert evidence["stdin_tty"] is False and isinstance(evidence["pid"], int)
    assert not results[0].is_error and received(log, "write_note") == [NOTE]


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script`")
async def test_f7a_a_terminal_proves_nothing_script_gives_the_agent_one(home: Path, tmp_path: Path) -> None:
    """``script -qec CMD /dev/null`` runs CMD on a fresh pseudo-terminal: an agent's shell (no terminal) decides,
    and the evidence says ``stdin_tty: true``. So the record says "cli" and reports the tty as a fact, never as
    proof of a person, and the README promises no protection from a terminal check."""
    cfg = write_config(tmp_path / "gk.toml", NOTES_HELD)
    db, log = db_of(home), tmp_path / "calls.jsonl"
    results: list[types.CallToolResult] = []
    with anyio.fail_after(30):
        async with wrap(home, cfg, "feat", log) as gk, anyio.create_task_group() as tg:
            tg.start_soon(_hold, gk, results)
            cid = await gk.watcher.held()
            inner = shlex.join([sys.executable, "-m", "mcp_gatekeeper", "approve", cid, "--config", str(cfg)])
            proc = await anyio.run_process(
                ["script", "-qec", inner, "/dev/null"],
                stdin=subprocess.DEVNULL,  # the agent's own shell has no terminal
                env=env_for(home),
                check=False,
                cwd=str(ROOT),
            )
            assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    row = call_row(db, cid)
    assert (row["state"], row["channel"], row["decided_by"]) == ("forwarded", "cli", f"cli:{user()}")
    (approval,) = [e for e in audit_of(db, row["id"]) if e["event"] == "approved"]
    assert approval["channel"] == "cli"
    assert json.loads(approval["detail"])["evidence"]["stdin_tty"] is True  # a terminal, and no person at it
    assert not results[0].is_error and received(log, "write_note") == [NOTE]

    readme = (ROOT / "README.md").read_text()
    limits = readme[readme.index("## What a local gate cannot promise") :]
    limits = limits[: limits.index("\n## ", 1)]
    assert "cli_requires_tty" in limits and "removed" in limits  # says plainly that the setting is gone, and why
    assert "another OS user" in limits  # and what does protect
    fails_closed = readme[readme.index("## Fails closed") : readme.index("## What a local gate cannot promise")]
    (row_text,) = [line for line in fails_closed.splitlines() if "approve its own call" in line]
    assert "refused" not in row_text.split("|")[2]  # the table no longer claims the CLI path is refused


async def test_f7a_a_config_that_still_sets_cli_requires_tty_refuses_to_start(home: Path, tmp_path: Path) -> None:
    """A security setting is never silently ignored: the removed key stops every command, naming key and line."""
    cfg = write_config(tmp_path / "gk.toml", NOTES_HELD + "[security]\ncli_requires_tty = true\n")
    line = cfg.read_text().splitlines().index("cli_requires_tty = true") + 1
    for argv in (
        ["wrap", "--config", str(cfg), "--name", "feat", "--", "true"],
        ["approve", "0123abcd", "--config", str(cfg)],
        ["check-config", "--config", str(cfg)],
    ):
        rc, _, err = await cli(home, *argv)
        assert rc == 2, (argv, rc, err)
        assert f"line {line}: security.cli_requires_tty: removed" in err, err
        assert "script" in err and "another OS user" in err
    assert not db_of(home).exists()  # nothing started


# ---------------------------------------------------------------------------------------------- (b) the bearer API


async def test_f7b_bearer_api_with_the_token_file_decides_and_is_attributed(home: Path, tmp_path: Path) -> None:
    """An agent that reads ``ui-token`` can approve through the API: the product promises attribution, not
    prevention. The decision is recorded as ``api:<user>`` (a browser session is ``web:<user>``, channel ``web``; the token's channel is ``api``), so it is visible
    in the record and the audit."""
    cfg = write_config(tmp_path / "gk.toml", NOTES_HELD)
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
    assert (row["state"], row["decided_by"], row["channel"]) == ("forwarded", f"api:{user()}", "api")
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


async def test_f7c_a_forged_approval_event_with_a_valid_hash_is_never_executed(home: Path, tmp_path: Path) -> None:
    """F7c keyed decision seal: the chain is an unkeyed SHA-256, so a database writer can append an 'approved'
    event with a correct hash; the decision's Ed25519 signature is what it cannot make (team mode: the key is on
    the approval service's host; local mode: in the home, out of reach of a database-only attacker)."""
    row, result = await _tamper_and_wait(home, tmp_path, "chain-valid")
    assert row["state"] == "denied"
    assert events_of(db_of(home), row["id"]) == ["held", "approved", "unverified_approval"]
    assert result.is_error and "could not be verified" in text(result) and "not signed" in text(result)
    rc, out, _ = await cli(home, "audit", "--verify")
    assert rc == 1 and "audit chain intact" in out and "not signed" in out  # the chain holds; the seal does not
