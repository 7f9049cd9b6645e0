"""Every command that opens the store opens the one ``[store] url`` / ``$MCP_GATEKEEPER_STORE`` names (one factory:
``serve.store_location``), never the data home's SQLite file behind its back. Run as real CLI processes against
PostgreSQL: the read-only commands on the gatekeeper role (which cannot decide), the deciding and account
commands on the approver role; and the data home never gets a ``gatekeeper.db``."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ROOT, gk_env

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.models import NewCall, State
from mcp_gatekeeper.store import Store

pytestmark = pytest.mark.anyio


def _cli(home: Path, *args: str, store: str | None = None, stdin: str | None = None) -> tuple[int, str, str]:
    extra = {"MCP_GATEKEEPER_STORE": store} if store else {}
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gatekeeper", *args], input=stdin, capture_output=True, text=True,
        env=gk_env(home, **extra), cwd=str(ROOT), timeout=120, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


async def test_every_store_command_honours_the_store_url_on_postgres(
    pg_admin_dsn: str, home: Path, tmp_path: Path
) -> None:
    from mcp_gatekeeper.store.pg_schema import Roles
    from mcp_gatekeeper.store.postgres import init_database

    tag = secrets.token_hex(4)
    roles = Roles(gatekeeper=f"gk_{tag}", approver=f"ap_{tag}", owner=f"own_{tag}")
    report = await init_database(pg_admin_dsn, SystemClock(), roles=roles)
    gk_url, ap_url = report.new_role_urls[roles.gatekeeper], report.new_role_urls[roles.approver]
    refund = {"order_id": "A-1", "amount": 40}
    async with Store.open(gk_url, SystemClock()) as store:  # what a gatekeeper records, on its own role
        held = []
        for n in range(3):
            new = NewCall(upstream="shop", tool="issue_refund", arguments={**refund, "n": n}, gate="hard", risk="high")
            held.append(await store.insert_call(new, state=State.PENDING, deadline_at=SystemClock().now() + 3600))
    # the gatekeeper's config names the store; the approver's side is given it by the environment
    gk_cfg = tmp_path / "gatekeeper.toml"
    gk_cfg.write_text(
        f'[ui]\nautostart = false\n[store]\nurl = "{gk_url}"\n'
        '[[rules]]\nname = "refunds"\ntool = "issue_refund"\ngate = "hard"\n'
    )
    ap_cfg = tmp_path / "approver.toml"
    ap_cfg.write_text("[ui]\nautostart = false\n")

    def as_gatekeeper(*args: str) -> tuple[int, str, str]:
        return _cli(home, *args, "--config", str(gk_cfg))

    def as_approver(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        return _cli(home, *args, "--config", str(ap_cfg), store=ap_url, stdin=stdin)

    # deciding: the approver role decides; the gatekeeper role cannot
    rc, out, err = as_gatekeeper("approve", held[2].id)
    assert rc != 0, out + err
    assert as_approver("approve", held[0].id)[0] == 0
    assert as_approver("reject", held[1].id, "--reason", "not this one")[0] == 0

    # read-only commands, on the gatekeeper role, see what the approver decided in PostgreSQL
    rc, out, err = as_gatekeeper("pending", "--json")
    assert rc == 0, err
    assert [c["id"] for c in json.loads(out)] == [held[2].id]
    rc, out, err = as_gatekeeper("show", held[0].id, "--json")
    assert rc == 0 and json.loads(out)["state"] == "approved", out + err
    rc, out, err = as_gatekeeper("audit", "--json", "--call", held[1].id)
    assert rc == 0 and "rejected" in [e["event"] for e in json.loads(out)], out + err
    rc, out, err = as_gatekeeper("audit", "--verify")
    assert rc == 0, out + err
    rc, out, err = as_gatekeeper("report", "--since", "1d")
    assert rc == 0 and out.strip(), err
    rc, out, err = as_gatekeeper("export", "--since", "1d")
    assert rc == 0, err
    assert {json.loads(line)["decision"] for line in out.splitlines()} >= {"approved", "rejected"}, out
    rc, out, err = as_gatekeeper("replay", "--since", "1d", "--json")
    assert rc in (0, 1) and json.loads(out)["replayed"] + json.loads(out)["skipped"] == 3, out + err
    rc, out, err = as_gatekeeper("suggest", "--since", "1d", "--json")
    assert rc == 0 and "suggestions" in json.loads(out), out + err
    rc, out, err = as_gatekeeper("leases", "--json")
    assert rc == 0 and json.loads(out) == [], out + err
    rc, out, err = as_gatekeeper("pins", "--json")
    assert rc == 0 and json.loads(out) == [], out + err
    rc, out, err = as_gatekeeper("doctor", "--timeout", "5")
    database = next(line for line in out.splitlines() if line.lstrip().startswith("database"))
    assert "postgresql://" in database and "[store] url" in database and "integrity" in database, out
    assert gk_url.split(":")[2].split("@")[0] not in out  # the password is not printed

    # the approver's commands: accounts and sessions
    rc, out, err = as_approver("users", "add", "alice", "--password-stdin", stdin="a-long-enough-password\n")
    assert rc == 0, err
    rc, out, err = as_approver("users", "list", "--json")
    assert rc == 0 and [u["name"] for u in json.loads(out)] == ["alice"], out + err
    rc, out, err = as_approver("sessions", "--json")
    assert rc == 0 and json.loads(out) == [], out + err

    # nothing above opened the data home's file
    assert not (home / "gatekeeper.db").exists(), sorted(p.name for p in home.iterdir())
