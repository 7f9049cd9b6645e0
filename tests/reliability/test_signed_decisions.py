"""F7c in team mode, with real processes: the agent's machine cannot sign an approval its gatekeeper trusts.

The gatekeeper (``wrap``) trusts only ``[team] decision_keys`` (the approval service's public key). The agent's
shell has the home, the database and the CLI, and approves its own call: its decision is signed with the home's
key, which is not trusted, so the call never runs. The service's decision (its own key file) runs. A key file
that others can read decides nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from relkit import GK, call_row, cli, db_of, events_of, received, text, wrap, write_config

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

HELD = """
[ui]
autostart = false
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
"""


async def _hold(gk: GK, out: list[types.CallToolResult], args: dict[str, Any]) -> None:
    out.append(await gk.client.call_tool("write_note", args))


async def _service_key(home: Path, tmp_path: Path) -> tuple[Path, str]:
    """The approval service's key file (its own home) and its public key, as ``keys show`` prints it."""
    service_home = tmp_path / "service-home"
    service_home.mkdir()
    rc, out, err = await cli(service_home, "keys", "show", "--json")
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["trusted"] == [shown["public_key"]]  # local mode: its own key
    return Path(shown["path"]), shown["public_key"]


async def test_team_mode_the_agent_cannot_sign_an_approval_its_gatekeeper_trusts(home: Path, tmp_path: Path) -> None:
    key_path, public = await _service_key(home, tmp_path)
    team = f'[team]\ndecision_keys = ["{public}"]\n'
    cfg = write_config(tmp_path / "gk.toml", HELD + team)
    service_cfg = write_config(tmp_path / "service.toml", HELD + team + f'signing_key = "{key_path}"\n')
    db, log = db_of(home), tmp_path / "calls.jsonl"
    results: list[types.CallToolResult] = []
    mine, theirs = {"path": "/n/1", "content": "self-approved"}, {"path": "/n/2", "content": "reviewed"}
    with anyio.fail_after(60):
        async with wrap(home, cfg, "feat", log) as gk:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_hold, gk, results, mine)
                cid = await gk.watcher.held()
                rc, _, err = await cli(home, "approve", cid, config=cfg)  # the agent's shell, the holder's config
                assert rc == 0, err  # the decision is recorded (and attributed) ...
            assert received(log, "write_note") == []  # ... and never runs
            row = call_row(db, cid)
            assert row["state"] == "denied" and "not trusted" in row["reason"]
            assert events_of(db, row["id"]) == ["held", "approved", "unverified_approval"]
            assert results[0].is_error and "could not be verified" in text(results[0])

            async with anyio.create_task_group() as tg:
                tg.start_soon(_hold, gk, results, theirs)
                cid2 = await gk.watcher.held()
                rc, _, err = await cli(home, "approve", cid2, config=service_cfg)  # the service, with its key
                assert rc == 0, err
    assert not results[1].is_error and received(log, "write_note") == [theirs]
    assert call_row(db, cid2)["state"] == "forwarded"
    # audit --verify on the gatekeeper's side names the agent's decision; the service's is valid
    rc, out, _ = await cli(home, "audit", "--verify", config=cfg)
    assert rc == 1 and "audit chain intact" in out and f"call {row['id'][:12]}" in out and "not trusted" in out
    assert cid2 not in out
    assert not (home / "decision-key").exists() or (home / "decision-key").stat().st_mode & 0o077 == 0


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
async def test_a_world_readable_key_decides_nothing(home: Path, tmp_path: Path) -> None:
    """Local mode, ``chmod 644 decision-key``: the CLI refuses to sign (naming the fix); the call stays held."""
    cfg = write_config(tmp_path / "gk.toml", HELD)
    db, log = db_of(home), tmp_path / "calls.jsonl"
    rc, out, _ = await cli(home, "keys", "show", config=cfg)
    assert rc == 0 and out.startswith("ed25519:")
    (home / "decision-key").chmod(0o644)
    results: list[types.CallToolResult] = []
    with anyio.fail_after(60):
        async with wrap(home, cfg, "feat", log) as gk, anyio.create_task_group() as tg:
            tg.start_soon(_hold, gk, results, {"path": "/n/3", "content": "x"})
            cid = await gk.watcher.held()
            rc, _, err = await cli(home, "approve", cid, config=cfg)
            assert rc != 0 and "chmod 600" in err, err
            assert call_row(db, cid)["state"] == "pending"
            (home / "decision-key").chmod(0o600)
            rc, _, err = await cli(home, "approve", cid, config=cfg)
            assert rc == 0, err
    assert not results[0].is_error and received(log, "write_note") == [{"path": "/n/3", "content": "x"}]
