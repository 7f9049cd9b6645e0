"""An attacker's pass over team mode (issue 12): real processes, a real PostgreSQL server, real HTTP on 127.0.0.1.

Every test builds the deployment an attacker faces: ``db init`` roles on a throwaway PostgreSQL database, reviewer
accounts made with ``users add``, the approval service (``mcp-gatekeeper serve``, approver role) and a ``wrap``
process holding an agent's calls to a real upstream (gatekeeper role). Each attack is made as its author would
make it (a reviewer's browser session, the agent with its gatekeeper's database credentials) and must fail:
nothing reaches the upstream that no human quorum allowed, the store holds no decision, and the refusal is audited.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import psycopg
import pytest
from harness import FEATURE_SERVER, ROOT, StderrWatcher, gatekeeper, gk_env, wrap_params
from mcp import Client
from pgcluster import free_port
from relkit import PY, received, text, write_config
from softauthn import SoftAuthenticator, as_response

from mcp_gatekeeper import accounts
from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.hostos import os_user
from mcp_gatekeeper.models import digest
from mcp_gatekeeper.passkeys import RelyingParty, challenge_for
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.store.pg_schema import SCHEMA, Roles
from mcp_gatekeeper.store.postgres import init_database
from mcp_gatekeeper.webauth import open_account_session

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

SERVING = re.compile(r"approval service: (http://127\.0\.0\.1:\d+)/login")
PASSWORD = "a-long-enough-password"
AGENT = f"os:{os_user()}"
"""Links a reviewer to the agent: every stdio principal of the OS user the test's wrap process runs as."""

ACCOUNTS: dict[str, tuple[list[str], list[str]]] = {
    "alice": (["ops"], []),
    "bob": (["ops"], []),
    "carol": (["support"], []),
    "mallory": (["ops"], [AGENT]),  # the agent's own person: in the group, but it is her agent's call
}
"""name -> (groups, linked principals)."""

RULES = """
[ui]
autostart = false
[[waiting.clients]]
name = "*"  # the test client waits as long as it takes
[[rules]]
name = "etc-notes"
tool = "write_note"
when = { path = { under = "/etc" } }
gate = "hard"
reviewers = ["ops"]
approvals = 2
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
reviewers = ["ops", "support"]
"""


@dataclass
class Answer:
    """A call the agent made: its id once held, and the answer the agent got."""

    id: str = ""
    result: Any = None
    done: anyio.Event = field(default_factory=anyio.Event)

    async def wait(self) -> Any:
        with anyio.fail_after(60):
            await self.done.wait()
        return self.result


@dataclass
class Deployment:
    """What the attacker faces (and what the test looks at afterwards)."""

    base: str
    http: httpx2.AsyncClient
    agent: Client
    held: StderrWatcher
    log: Path
    gk_url: str
    admin: str
    tg: anyio.abc.TaskGroup
    home: Path
    config: Path
    ap_url: str

    async def session(self, name: str, *, as_typed: str | None = None) -> dict[str, str]:
        """Log ``name`` in as a browser does: the headers its page then sends."""
        r = await self.http.post(
            "/login", data={"username": as_typed or name, "password": PASSWORD}, headers={"Origin": self.base}
        )
        assert r.status_code == 303, r.text
        return {"Cookie": r.headers["set-cookie"].split(";")[0], "Origin": self.base,
                "X-Gatekeeper-Key": r.headers["location"].partition("#key=")[2]}  # fmt: skip

    async def call(self, arguments: dict[str, Any]) -> Answer:
        """The agent makes a held call (in a task); returns once it is held."""
        answer = Answer()

        async def run() -> None:
            answer.result = await self.agent.call_tool("write_note", arguments)
            answer.done.set()

        self.tg.start_soon(run)
        answer.id = str(self.row(await self.held.held())["id"])
        return answer

    def row(self, prefix: str) -> dict[str, Any]:
        with _admin(self.admin) as c, c.cursor(row_factory=psycopg.rows.dict_row) as cur:
            rows = cur.execute("SELECT * FROM calls WHERE id LIKE %s", (prefix + "%",)).fetchall()
        assert len(rows) == 1, rows
        return dict(rows[0])

    def events(self, call_id: str) -> list[tuple[str, str | None, dict[str, Any]]]:
        with _admin(self.admin) as c:
            rows = c.execute("SELECT event, actor, detail FROM audit WHERE call_id = %s ORDER BY seq", (call_id,))
            return [(e, a, json.loads(d)) for e, a, d in rows.fetchall()]

    def refusals(self, call_id: str) -> list[tuple[str | None, str]]:
        """Who was refused a decision of this call, and why (``decision_refused`` events)."""
        return [(actor, d.get("why")) for e, actor, d in self.events(call_id) if e == "decision_refused"]

    def forwarded(self) -> list[dict[str, Any]]:
        return received(self.log, "write_note")


def _admin(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, options=f"-c search_path={SCHEMA}")


async def _users_add(home: Path, cfg: Path, ap_url: str, name: str, groups: list[str], principals: list[str]) -> None:
    argv = [PY, "-m", "mcp_gatekeeper", "users", "add", name, "--password-stdin", "--config", str(cfg)]
    argv += [x for g in groups for x in ("--group", g)] + [x for p in principals for x in ("--principal", p)]
    done = await anyio.run_process(
        argv, input=(PASSWORD + "\n").encode(), env=gk_env(home, MCP_GATEKEEPER_STORE=ap_url), cwd=str(ROOT),
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()


@asynccontextmanager
async def deployment(
    pg_admin_dsn: str, home: Path, tmp_path: Path, rules: str = RULES, *, port: int = 0
) -> AsyncIterator[Deployment]:
    """Roles and schema, the accounts, the approval service and one gatekeeper holding an agent's calls."""
    tag = secrets.token_hex(3)
    roles = Roles(gatekeeper=f"gk_{tag}", approver=f"ap_{tag}", owner=f"own_{tag}")
    report = await init_database(pg_admin_dsn, SystemClock(), roles=roles)
    gk_url, ap_url = report.new_role_urls[roles.gatekeeper], report.new_role_urls[roles.approver]
    cfg = write_config(tmp_path / "gk.toml", rules)
    for name, (groups, principals) in ACCOUNTS.items():
        await _users_add(home, cfg, ap_url, name, groups, principals)
    log = tmp_path / "calls.jsonl"
    service_err = StderrWatcher()
    params = wrap_params(
        home, cfg, "feat", [PY, str(FEATURE_SERVER), "--call-log", str(log)], MCP_GATEKEEPER_STORE=gk_url
    )
    try:
        async with (
            await anyio.open_process(
                [PY, "-m", "mcp_gatekeeper", "serve", "--port", str(port), "--config", str(cfg)],
                env=gk_env(home, MCP_GATEKEEPER_STORE=ap_url), cwd=str(ROOT), stderr=service_err.file,
            ) as service,
            gatekeeper(params) as (agent, held),
            anyio.create_task_group() as tg,
        ):  # fmt: skip
            try:
                with anyio.fail_after(60):
                    base = (await service_err.wait_for(SERVING)).group(1)
                async with httpx2.AsyncClient(base_url=base, timeout=60) as http:
                    yield Deployment(base, http, agent, held, log, gk_url, pg_admin_dsn, tg, home, cfg, ap_url)
            finally:
                tg.cancel_scope.cancel()
                service.terminate()
    finally:
        service_err.close()


# ---------------------------------------------------------------------------------------------- the quorum


async def test_one_reviewer_cannot_meet_a_quorum_by_editing_then_approving_again(
    pg_admin_dsn: str, home: Path, tmp_path: Path
) -> None:
    """A note under /tmp needs one approval; alice edits it to /etc (two approvals, ops only) and approves. Her
    approving again (another session, her name typed otherwise), or carol's (support: may decide /tmp notes, not
    /etc ones), must not complete the /etc quorum: only a second member of ops does."""
    with anyio.fail_after(240):
        async with deployment(pg_admin_dsn, home, tmp_path) as d:
            made = await d.call({"path": "/tmp/motd", "content": "hello"})
            cid = made.id
            held = d.row(cid)
            alice, carol = await d.session("alice"), await d.session("carol")
            edit = {"path": "/etc/motd", "content": "hello"}
            r = await d.http.post(
                f"/api/calls/{cid}/approve", json={"args_digest": held["args_digest"], "arguments": edit}, headers=alice
            )
            assert r.status_code == 200 and r.json()["decided"] is False, r.text
            again = [alice, await d.session("alice"), await d.session("alice", as_typed=" ALICE ")]
            for headers in again:  # the same reviewer, however she signs in
                r = await d.http.post(f"/api/calls/{cid}/approve", json={"args_digest": digest(edit)}, headers=headers)
                assert r.status_code == 403 and r.json()["error"] == "already_approved", r.text
            r = await d.http.post(f"/api/calls/{cid}/approve", json={"args_digest": digest(edit)}, headers=carol)
            assert r.status_code == 403 and r.json()["error"] == "not_in_group", r.text
            row = d.row(cid)
            assert (row["state"], row["decided_by"], row["modified_arguments"], row["decision_sig"]) == (
                "pending", None, None, None,
            )  # fmt: skip
            assert d.forwarded() == []
            assert d.refusals(cid) == [("alice", "already_approved")] * 3 + [("carol", "not_in_group")]
            # a second member of ops completes it: the edit runs, once
            bob = await d.session("bob")
            r = await d.http.post(f"/api/calls/{cid}/approve", json={"args_digest": digest(edit)}, headers=bob)
            assert r.status_code == 200 and r.json()["decided"] is True, r.text
            result = await made.wait()
    assert not result.is_error, text(result)
    assert d.forwarded() == [edit]
    row = d.row(cid)
    assert (row["state"], row["decided_by"]) == ("forwarded", "bob")


async def test_undoing_a_colleagues_edit_is_not_counted_as_approving_it(
    pg_admin_dsn: str, home: Path, tmp_path: Path
) -> None:
    """bob edits a /tmp note into an /etc one (two approvals) and approves it. alice, shown his edit, puts the
    arguments back as the agent made them and approves: that is her approval of the agent's arguments, not a
    second approval of bob's edit (the page sends the round's digest as what she reviewed, with her arguments)."""
    with anyio.fail_after(240):
        async with deployment(pg_admin_dsn, home, tmp_path) as d:
            original = {"path": "/tmp/motd", "content": "hello"}
            made = await d.call(original)
            bob, alice = await d.session("bob"), await d.session("alice")
            evil = {"path": "/etc/motd", "content": "owned"}
            r = await d.http.post(
                f"/api/calls/{made.id}/approve", json={"args_digest": digest(original), "arguments": evil}, headers=bob
            )
            assert r.status_code == 200 and r.json()["decided"] is False, r.text
            r = await d.http.post(
                f"/api/calls/{made.id}/approve",
                json={"args_digest": digest(evil), "arguments": original},
                headers=alice,
            )
            assert r.status_code == 200, r.text
            result = await made.wait()
    assert not result.is_error, text(result)
    assert d.forwarded() == [original]
    row = d.row(made.id)
    assert (row["state"], row["decided_by"], row["modified_arguments"]) == ("forwarded", "alice", None)


# ---------------------------------------------------------------------------------------------- the local page's routes

AUDITED = (
    RULES.split("[[rules]]", 1)[0]
    + """[[rules]]
name = "var-notes"
tool = "write_note"
when = { path = { under = "/var" } }
gate = "audit"
irreversible_ok = true
reviewers = ["ops"]
[[rules]]"""
    + RULES.split("[[rules]]", 1)[1]
)


async def test_reviewing_a_call_that_already_ran_is_a_decision_of_the_desk(
    pg_admin_dsn: str, home: Path, tmp_path: Path
) -> None:
    """The local page's review route is mounted on the service too: confirming (or failing) an audit-gated call
    is a decision, so the agent's own person (mallory) and a reviewer outside the rule's groups (carol) are
    refused and audited, as for a held call; a member of ops confirms it."""
    with anyio.fail_after(240):
        async with deployment(pg_admin_dsn, home, tmp_path, AUDITED) as d:
            done = await d.agent.call_tool("write_note", {"path": "/var/log/x", "content": "ran"})
            assert not done.is_error, text(done)
            with _admin(d.admin) as c:
                (cid,) = c.execute("SELECT id FROM calls WHERE state = 'under_review'").fetchone()
            mallory, carol, alice = await d.session("mallory"), await d.session("carol"), await d.session("alice")
            for who, outcome, why in ((mallory, "confirm", "self_review"), (mallory, "fail", "self_review"),
                                      (carol, "confirm", "not_in_group")):  # fmt: skip
                r = await d.http.post(f"/api/calls/{cid}/review", json={"outcome": outcome}, headers=who)
                assert r.status_code == 403 and r.json()["error"] == why, r.text
            row = d.row(cid)
            assert (row["state"], row["decided_by"]) == ("under_review", None)
            assert d.refusals(cid) == [
                ("mallory", "self_review"),
                ("mallory", "self_review"),
                ("carol", "not_in_group"),
            ]
            r = await d.http.post(f"/api/calls/{cid}/review", json={"outcome": "confirm"}, headers=alice)
            assert r.status_code == 200, r.text
            row = d.row(cid)
            assert (row["state"], row["decided_by"]) == ("confirmed", "alice")
    assert d.forwarded() == [{"path": "/var/log/x", "content": "ran"}]


# ---------------------------------------------------------------------------------------------- the agent, with its gatekeeper's credentials


def _try(c: psycopg.Connection[Any], statement: str) -> str:
    """The SQLSTATE the server refused ``statement`` with, or "ran"."""
    try:
        c.execute(statement)
    except psycopg.Error as e:
        return e.sqlstate or "?"
    return "ran"


async def test_the_agent_with_its_gatekeepers_database_role_cannot_get_a_call_run(
    pg_admin_dsn: str, home: Path, tmp_path: Path
) -> None:
    """The agent read its gatekeeper's database URL. Beside what tests/test_postgres.py tries (writing the
    decision, calling decide, the guards, roles), it tries the less direct ways: waking the holder with forged
    NOTIFY payloads, audit events at a chosen position or under look-alike names, the sequences, temporary
    objects shadowing what the guards call, switching the triggers off for its session, keeping its call alive
    past its deadline and offering it for a retry, and a forged twin row a retry would attach to. Nothing runs;
    the held call stays undecided until a reviewer rejects it."""
    s = SCHEMA
    with anyio.fail_after(240):
        async with deployment(pg_admin_dsn, home, tmp_path) as d:
            made = await d.call({"path": "/tmp/a", "content": "x"})
            cid, principal = made.id, d.row(made.id)["principal"]
            twin_args = {"path": "/tmp/b", "content": "y"}
            twin = (
                "INSERT INTO calls (id, state, upstream, tool, arguments, args_digest, gate, risk, created_at,"
                " deadline_at, principal, retry_offered, result, finished_at) VALUES ('@ID', '@STATE', 'feat',"
                f" 'write_note', '{json.dumps(twin_args)}', '{digest(twin_args)}', 'hard', 'high', 1e10, 1e12,"
                f" '{principal}', 1, '{{\"content\": []}}', NULL)"
            )
            row = "(seq, at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)"
            attempts = {
                "notify the call's id": (f"NOTIFY mcp_gatekeeper_calls, '{cid}'", "ran"),
                "notify a decision": ("SELECT pg_notify('mcp_gatekeeper_calls', 'approved')", "ran"),
                "an approval at a chosen seq": (
                    f"INSERT INTO audit {row} OVERRIDING SYSTEM VALUE VALUES (1000000000, 1e10, '{cid}', 'approved',"
                    f" 'alice', 'web', 'x', '{{}}', 'x', 'y')",
                    "42501",
                ),
                "an approval under another case": (
                    f"INSERT INTO audit ({row[6:]} VALUES (1e10, '{cid}', 'Approved', 'alice', 'web', 'x', '{{}}', 'x',"
                    " 'y')",
                    "ran",  # an event of no meaning: only 'approved' is an approval (and only decide writes one)
                ),
                "move the audit sequence": (f"SELECT setval('{s}.audit_seq_seq', 1)", "42501"),
                "draw an approval's number": (f"SELECT nextval('{s}.call_approvals_seq_seq')", "42501"),
                "a temp table": ("CREATE TEMP TABLE calls (id text)", "42501"),
                "a temp owner_is_current": (
                    "CREATE FUNCTION pg_temp.owner_is_current() RETURNS boolean LANGUAGE sql AS $$SELECT true$$",
                    "42501",
                ),
                "triggers off for the session": ("SET session_replication_role = replica", "42501"),
                "its own search_path, then approve": (
                    f"SET search_path = pg_temp, public, {s}; UPDATE {s}.calls SET state = 'approved'"
                    f" WHERE id = '{cid}'",
                    "42501",
                ),
                "a plpgsql block that approves": (
                    f"DO $$BEGIN UPDATE {s}.calls SET state = 'approved' WHERE id = '{cid}'; END$$",
                    "42501",
                ),
                "read a password hash": (f"SELECT password_hash FROM {s}.reviewers", "42501"),
                "count an approval": (
                    f"INSERT INTO {s}.call_approvals (call_id, reviewer, proposal_digest, at)"
                    f" VALUES ('{cid}', 'alice', 'x', 1)",
                    "42501",
                ),
                "read a server file": ("SELECT pg_read_file('/etc/passwd')", "42501"),
                "run a program": (f"COPY {s}.calls (id) TO PROGRAM 'true'", "42501"),
                "keep it alive and offer it for a retry": (
                    f"UPDATE {s}.calls SET deadline_at = 1e12, retry_offered = 1, instance_id = NULL"
                    f" WHERE id = '{cid}'",
                    "ran",
                ),
                "another call's signature on mine": (
                    f"UPDATE {s}.calls SET decision_sig = (SELECT max(decision_sig) FROM {s}.calls) WHERE id = '{cid}'",
                    "42501",
                ),
                "a decision at a past time": (f"UPDATE {s}.calls SET decided_at = 1 WHERE id = '{cid}'", "42501"),
                "a forged twin, allowed": (twin.replace("@ID", "f" * 26).replace("@STATE", "allowed"), "ran"),
                "a forged twin, approved": (twin.replace("@ID", "e" * 26).replace("@STATE", "approved"), "42501"),
            }
            with psycopg.connect(d.gk_url, autocommit=True, options=f"-c search_path={s}") as c:
                outcomes = {name: _try(c, sql) for name, (sql, _) in attempts.items()}
            assert outcomes == {name: want for name, (_, want) in attempts.items()}
            # the forged twin: the agent makes the call it stands for; the retry attaches to it, and it never runs
            retried = await d.agent.call_tool("write_note", twin_args)
            assert retried.is_error and "f" * 12 in text(retried), text(retried)  # attached to the twin: refused
            row_now = d.row(cid)
            assert (row_now["state"], row_now["decided_by"], row_now["decision_sig"]) == ("pending", None, None)
            assert d.forwarded() == []
            with _admin(d.admin) as c:
                assert c.execute(
                    "SELECT count(*) FROM audit WHERE event IN ('approved', 'rejected', 'confirmed')"
                ).fetchone() == (0,)
            # a reviewer's rejection is what decides it
            bob = await d.session("bob")
            r = await d.http.post(f"/api/calls/{cid}/reject", json={"reason": "no"}, headers=bob)
            assert r.status_code == 200, r.text
            result = await made.wait()
    assert result.is_error and "no" in text(result)
    assert d.forwarded() == []


# ---------------------------------------------------------------------------------------------- sessions and the guard


def _forged_session(admin: str, sid: str, *, account: str | None, host: str) -> dict[str, str]:
    """A live session row written straight into the store (as the local page's login link, or a session opened on
    another page, would leave one): the headers that would present it."""
    secret, key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    sha = lambda v: hashlib.sha256(v.encode()).hexdigest()  # noqa: E731 - a one-line helper of this function
    with _admin(admin) as c:
        c.execute(
            "INSERT INTO web_sessions (id, secret_hash, key_hash, label, host, created_at, last_seen_at, expires_at,"
            " ends_at, account) VALUES (%s, %s, %s, %s, %s, 1, extract(epoch from now()), 9e9, 9e9, %s)",
            (sid, sha(secret), sha(key), account or "root", host, account),
        )
    return {"Cookie": f"gk_session_{host.rpartition(':')[2]}={sid}.{secret}", "X-Gatekeeper-Key": key}


async def test_sessions_end_for_good_and_never_cross_pages_or_origins(
    pg_admin_dsn: str, home: Path, tmp_path: Path
) -> None:
    """A session ends with its logout, its password's change and its account's removal (in every process); a
    session of the local page (no account), one opened under another Host, a cookie without its page key, a
    cookie the attacker made up, the ui-token and a login link open nothing on the service; a state change from
    another origin, or under another Host, is refused; the login throttle counts the peer, whatever
    X-Forwarded-For says, and a right password does not pass it. Nothing is decided meanwhile."""
    with anyio.fail_after(300):
        async with deployment(pg_admin_dsn, home, tmp_path) as d:
            made = await d.call({"path": "/tmp/a", "content": "x"})
            cid, args_digest = made.id, d.row(made.id)["args_digest"]
            approve = f"/api/calls/{cid}/approve"
            host = d.base.removeprefix("http://")

            async def refused(headers: dict[str, str], status: int, error: str, path: str = approve) -> None:
                r = await d.http.post(path, json={"args_digest": args_digest}, headers=headers)
                assert (r.status_code, r.json()["error"]) == (status, error), r.text

            # ended sessions: logout, passwd, remove (the CLI is another process)
            alice = await d.session("alice")
            assert (await d.http.post("/api/logout", headers=alice)).status_code == 200
            await refused(alice, 401, "unauthorized")
            bob, carol = await d.session("bob"), await d.session("carol")
            env = gk_env(d.home, MCP_GATEKEEPER_STORE=d.ap_url)
            for argv, stdin in ((["passwd", "bob", "--password-stdin"], b"another-long-password\n"),
                                (["remove", "carol"], None)):  # fmt: skip
                done = await anyio.run_process(
                    [PY, "-m", "mcp_gatekeeper", "users", *argv, "--config", str(d.config)], input=stdin, env=env,
                    cwd=str(ROOT), check=False,
                )  # fmt: skip
                assert done.returncode == 0, done.stderr.decode()
            await refused(bob, 401, "unauthorized")
            await refused(carol, 401, "unauthorized")
            r = await d.http.post("/login", data={"username": "bob", "password": PASSWORD}, headers={"Origin": d.base})
            assert r.status_code == 401  # the old password is gone

            # sessions that are not this service's accounts', or not opened here
            origin = {"Origin": d.base}
            await refused(
                {**_forged_session(d.admin, "aaaa01", account=None, host=host), **origin}, 401, "unauthorized"
            )
            other = _forged_session(d.admin, "aaaa02", account="alice", host="127.0.0.1:1")
            other["Cookie"] = other["Cookie"].replace("gk_session_1=", f"gk_session_{host.rpartition(':')[2]}=")
            await refused({**other, **origin}, 401, "unauthorized")
            live = await d.session("mallory")  # a live session, to replay in pieces
            listed = (await d.http.get("/api/sessions", headers=live)).json()["sessions"]
            assert [x["account"] for x in listed] == ["mallory"]  # not the other reviewers' sessions
            await refused({"Cookie": live["Cookie"], **origin}, 401, "unauthorized")  # the cookie alone
            made_up = f"{live['Cookie'].partition('=')[0]}=ffffffffffff.{'A' * 43}"
            await refused(
                {"Cookie": made_up, "X-Gatekeeper-Key": live["X-Gatekeeper-Key"], **origin}, 401, "unauthorized"
            )
            token = (d.home / "ui-token").read_text().strip() if (d.home / "ui-token").exists() else "t" * 43
            await refused({"Authorization": f"Bearer {token}"}, 401, "unauthorized")
            r = await d.http.get(f"/login?token={'A' * 32}")
            assert r.status_code == 200 and "set-cookie" not in r.headers  # the login form; no session

            # a live session from another origin, or under another Host
            await refused({**live, "Origin": "http://evil.example"}, 403, "cross_origin")
            await refused({**live, "Sec-Fetch-Site": "cross-site"}, 403, "cross_origin")
            await refused({k: v for k, v in live.items() if k != "Origin"}, 403, "cross_origin")
            await refused({**live, "Host": "evil.example"}, 421, "misdirected")
            r = await d.http.post(
                "/login", data={"username": "alice", "password": PASSWORD}, headers={"Origin": "http://evil.example"}
            )
            assert r.status_code == 403  # no login CSRF

            # the throttle: the peer is loopback, so X-Forwarded-For is not believed; five misses lock the account
            for i in range(5):
                r = await d.http.post(
                    "/login", data={"username": "alice", "password": "wrong-password-" + str(i)},
                    headers={"Origin": d.base, "X-Forwarded-For": f"10.0.0.{i}"},
                )  # fmt: skip
                assert r.status_code == 401
            r = await d.http.post(
                "/login", data={"username": "ALICE", "password": PASSWORD},
                headers={"Origin": d.base, "X-Forwarded-For": "10.9.9.9"},
            )  # fmt: skip
            assert r.status_code == 429 and "set-cookie" not in r.headers
            with _admin(d.admin) as c:
                addresses = {r[0] for r in c.execute("SELECT address FROM login_attempts WHERE account = 'alice'")}
            assert addresses == {"127.0.0.1"}

            row = d.row(cid)
            assert (row["state"], row["decided_by"]) == ("pending", None)
            assert d.forwarded() == []
            assert [e for e, *_ in d.events(cid)] == ["held"]
            r = await d.http.post(f"/api/calls/{cid}/reject", json={}, headers=live)
            assert r.status_code == 403 and r.json()["error"] == "self_review"  # rejecting is deciding too
            r = await d.http.post(
                "/login", data={"username": "bob", "password": "another-long-password"}, headers={"Origin": d.base}
            )
            assert r.status_code == 303, r.text
            bob = {"Cookie": r.headers["set-cookie"].split(";")[0], "Origin": d.base,
                   "X-Gatekeeper-Key": r.headers["location"].partition("#key=")[2]}  # fmt: skip
            r = await d.http.post(f"/api/calls/{cid}/reject", json={}, headers=bob)
            assert r.status_code == 200, r.text
            assert (await made.wait()).is_error
    assert d.forwarded() == []


async def test_a_password_changed_while_its_login_is_checked_opens_no_session(pg_admin_dsn: str) -> None:
    """The login checks the password (scrypt, tens of milliseconds off the event loop), then opens the session. An
    admin's ``passwd`` (the password leaked) landing in between ends the account's sessions, so the session the
    old password is opening must not be opened after it: the opening checks the hash that was checked."""
    tag = secrets.token_hex(3)
    roles = Roles(gatekeeper=f"gk_{tag}", approver=f"ap_{tag}", owner=f"own_{tag}")
    report = await init_database(pg_admin_dsn, SystemClock(), roles=roles)
    async with Store.open(report.new_role_urls[roles.approver], SystemClock()) as store:
        await store.reviewers.add(
            "alice", role="reviewer", groups=["ops"], principals=[], password_hash=accounts.hash_password(PASSWORD),
            by="cli:root", channel="cli",
        )  # fmt: skip
        checked = await store.reviewers.password_hash("alice")  # the login's look, then its scrypt
        assert accounts.verify_password(PASSWORD, checked)
        await store.reviewers.set_password("alice", accounts.hash_password("the-new-password"), by="cli:root",
                                           channel="cli")  # fmt: skip
        opened = await open_account_session(store, "alice", host="127.0.0.1:1", user_agent=None, password_hash=checked)
        assert opened is None
        assert await store.sessions.of_account("alice") == []
        # with the password of now, it opens
        now = await store.reviewers.password_hash("alice")
        assert await open_account_session(store, "alice", host="127.0.0.1:1", user_agent=None, password_hash=now)


# ---------------------------------------------------------------------------------------------- hostile labels on the page

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = '<img src=x id=pwned onerror="document.title=1">'


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")
async def test_hostile_labels_written_by_the_agent_are_shown_as_text(
    pg_admin_dsn: str, home: Path, tmp_path: Path
) -> None:
    """The agent writes, with its gatekeeper's role, a gatekeeper instance whose host is markup and a held call
    whose principal, upstream, tool, summary and reasons are markup. A reviewer's real browser shows each as text
    (the queue, its host/agent filter, the card), creates no element from it, runs nothing."""
    pytest.importorskip("playwright")
    from playwright.async_api import async_playwright

    s = SCHEMA
    with anyio.fail_after(240):
        async with deployment(pg_admin_dsn, home, tmp_path) as d:
            cid = "d" * 26
            with psycopg.connect(d.gk_url, autocommit=True, options=f"-c search_path={s}") as c:
                c.execute(
                    "INSERT INTO instances (id, pid, host, label, started_at, heartbeat_at) VALUES"
                    " ('evil-instance', 1, %s, %s, extract(epoch from now()), extract(epoch from now()))",
                    (HOSTILE, HOSTILE),
                )
                c.execute(
                    "INSERT INTO calls (id, state, upstream, tool, arguments, args_digest, gate, risk, created_at,"
                    " deadline_at, instance_id, principal, summary, reasons) VALUES (%s, 'pending', %s, %s, %s, 'd',"
                    " 'hard', 'high', extract(epoch from now()), extract(epoch from now()) + 600, 'evil-instance',"
                    " %s, %s, %s)",
                    (cid, HOSTILE, HOSTILE, json.dumps({"path": HOSTILE}), HOSTILE, HOSTILE, json.dumps([HOSTILE])),
                )
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=str(CHROMIUM), args=["--headless=new", "--no-sandbox", "--disable-gpu"]
                )
                try:
                    page = await (await browser.new_context()).new_page()
                    dialogs: list[str] = []
                    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
                    await page.goto(f"{d.base}/")
                    await page.wait_for_url("**/login")
                    await page.fill("#username", "alice")
                    await page.fill("#password", PASSWORD)
                    await page.click("#login-btn")
                    await page.wait_for_selector("#whoami:has-text('alice')")
                    await page.goto(f"{d.base}/#/queue")
                    item = page.locator(f".qitem[data-id='{cid}']")
                    await item.locator(".who").wait_for()
                    assert HOSTILE in await item.inner_text()  # the markup, as text
                    options = await page.locator("select.qwho option").evaluate_all("os => os.map((o) => o.value)")
                    assert f"host:{HOSTILE}" in options and f"agent:{HOSTILE}" in options
                    await page.select_option("select.qwho", f"host:{HOSTILE}")
                    await item.wait_for()
                    assert await page.locator("#pwned").count() == 0
                    await page.goto(f"{d.base}/#/call/{cid}")
                    await page.wait_for_selector(f"text={HOSTILE}")
                    assert await page.locator("#pwned").count() == 0
                    await page.goto(f"{d.base}/api/weekly-review?key=" + await page.evaluate(
                        "localStorage.getItem('gk-page-key')"
                    ))  # fmt: skip
                    await page.wait_for_load_state()
                    assert await page.locator("#pwned").count() == 0
                    assert await page.evaluate("document.title") != "1"
                    assert dialogs == []
                finally:
                    await browser.close()
            row = d.row(cid)
            assert (row["state"], row["decided_by"]) == ("pending", None)


# ---------------------------------------------------------------------------------------------- passkeys

PASSKEY_RULES = (
    RULES.split("[[rules]]", 1)[0].replace(
        "autostart = false", 'autostart = false\npublic_url = "http://localhost:8766"'
    )
    + """[[rules]]
name = "etc-keys"
tool = "write_note"
when = { path = { under = "/etc/keys" } }
gate = "hard"
confirm = "passkey"
[[rules]]"""
    + RULES.split("[[rules]]", 1)[1]
)


async def test_a_row_naming_a_lenient_rule_does_not_spare_the_passkey(
    pg_admin_dsn: str, home: Path, tmp_path: Path
) -> None:
    """Whether approving needs the reviewer's passkey is the service's policy over the call's arguments, not the
    rule named in the row: the agent, with its gatekeeper's role, writes a held call for /etc/keys (passkey) that
    says it was held under "notes", offered for a retry it would attach to. A reviewer's approval without a
    passkey is refused, so the agent's retry never runs it."""
    with anyio.fail_after(240):
        async with deployment(pg_admin_dsn, home, tmp_path, PASSKEY_RULES) as d:
            first = await d.call(
                {"path": "/tmp/a", "content": "x"}
            )  # the agent's principal, as its gatekeeper writes it
            principal = d.row(first.id)["principal"]
            args = {"path": "/etc/keys/authorized", "content": "ssh-ed25519 AAAA attacker"}
            cid = "c" * 26
            with psycopg.connect(d.gk_url, autocommit=True, options=f"-c search_path={SCHEMA}") as c:
                c.execute(
                    "INSERT INTO calls (id, state, upstream, tool, arguments, args_digest, gate, risk, rule, created_at,"
                    " deadline_at, principal, retry_offered) VALUES (%s, 'pending', 'feat', 'write_note', %s, %s,"
                    " 'hard', 'high', 'notes', extract(epoch from now()), extract(epoch from now()) + 600, %s, 1)",
                    (cid, json.dumps(args), digest(args), principal),
                )
            alice = await d.session("alice")
            shown = (await d.http.get(f"/api/calls/{cid}", headers=alice)).json()
            assert shown["confirm"] == "passkey"  # the card asks for it
            r = await d.http.post(f"/api/calls/{cid}/approve", json={"args_digest": digest(args)}, headers=alice)
            assert r.status_code == 403 and r.json()["error"] == "passkey_refused", r.text
            row = d.row(cid)
            assert (row["state"], row["decided_by"]) == ("pending", None)
            assert d.forwarded() == []
            r = await d.http.post(f"/api/calls/{first.id}/reject", json={}, headers=alice)
            assert r.status_code == 200
            await first.wait()
    assert d.forwarded() == []


async def test_an_approval_counts_only_while_its_reviewer_may_still_decide(
    pg_admin_dsn: str, home: Path, tmp_path: Path
) -> None:
    """alice approves an /etc note (two approvals of ops), then her account is removed (she left; or it was
    stolen), and an account of the same name is made again, in support. bob's approval is then the only one of
    the round that counts: the call stays held (and bob rejects it)."""
    with anyio.fail_after(240):
        async with deployment(pg_admin_dsn, home, tmp_path) as d:
            made = await d.call({"path": "/etc/motd", "content": "hi"})
            cid, args_digest = made.id, d.row(made.id)["args_digest"]
            alice = await d.session("alice")
            r = await d.http.post(f"/api/calls/{cid}/approve", json={"args_digest": args_digest}, headers=alice)
            assert r.status_code == 200 and r.json()["decided"] is False, r.text
            env = gk_env(d.home, MCP_GATEKEEPER_STORE=d.ap_url)
            done = await anyio.run_process(
                [PY, "-m", "mcp_gatekeeper", "users", "remove", "alice", "--config", str(d.config)], env=env,
                cwd=str(ROOT), check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr.decode()
            await _users_add(d.home, d.config, d.ap_url, "alice", ["support"], [])
            bob = await d.session("bob")
            r = await d.http.post(f"/api/calls/{cid}/approve", json={"args_digest": args_digest}, headers=bob)
            assert r.status_code == 200 and r.json()["decided"] is False, r.text
            row = d.row(cid)
            assert (row["state"], row["decided_by"]) == ("pending", None)
            assert d.forwarded() == []
            r = await d.http.post(f"/api/calls/{cid}/reject", json={}, headers=bob)
            assert r.status_code == 200, r.text
            assert (await made.wait()).is_error
    assert d.forwarded() == []


KEYS_PORT = free_port()
KEYS = f"http://localhost:{KEYS_PORT}"
KEY_RULES = (
    RULES.split("[[rules]]", 1)[0].replace("autostart = false", f'autostart = false\npublic_url = "{KEYS}"')
    + """[[rules]]
name = "etc-keys"
tool = "write_note"
when = { path = { under = "/etc/keys" } }
gate = "hard"
confirm = "passkey"
reviewers = ["ops"]
[[rules]]"""
    + RULES.split("[[rules]]", 1)[1]
)


async def test_a_passkey_assertion_approves_only_the_call_and_arguments_it_was_made_for(
    pg_admin_dsn: str, home: Path, tmp_path: Path
) -> None:
    """alice registers a passkey on the service and approves a call with it. Her assertion over that call does
    not approve another call, nor the same call with other arguments (another round's), nor again (its sign
    count was spent); each refusal is audited and nothing runs but the call she confirmed."""
    with anyio.fail_after(300):
        async with deployment(pg_admin_dsn, home, tmp_path, KEY_RULES, port=KEYS_PORT) as d:
            a = await d.call({"path": "/etc/keys/a", "content": "a"})
            b = await d.call({"path": "/etc/keys/b", "content": "b"})
            site = {"Host": f"localhost:{KEYS_PORT}", "Origin": KEYS}
            r = await d.http.post("/login", data={"username": "alice", "password": PASSWORD}, headers=site)
            assert r.status_code == 303, r.text
            alice = {**site, "Cookie": r.headers["set-cookie"].split(";")[0],
                     "X-Gatekeeper-Key": r.headers["location"].partition("#key=")[2]}  # fmt: skip
            auth = SoftAuthenticator(RelyingParty.from_url(KEYS), reviewer="alice")
            # registering needs her password again (a session alone registers nothing: tests/team/test_passkey_reauth)
            proof = {"password": PASSWORD}
            start = (await d.http.post("/api/passkeys/register/options", json=proof, headers=alice)).json()
            r = await d.http.post(
                "/api/passkeys/register",
                json={"state": start["state"], "credential": auth.registration(start["options"]["challenge"])},
                headers=alice,
            )
            assert r.status_code == 200 and r.json()["reviewer"] == "alice", r.text
            da, db = d.row(a.id)["args_digest"], d.row(b.id)["args_digest"]
            over_a = auth.assertion(challenge_for(a.id, da))
            edit = {"path": "/etc/keys/a", "content": "other"}

            async def approve(cid: str, seen: str, assertion: dict[str, str], **extra: Any) -> httpx2.Response:
                body = {"args_digest": seen, "passkey": as_response(assertion), **extra}
                return await d.http.post(f"/api/calls/{cid}/approve", json=body, headers=alice)

            for cid, seen, assertion, extra in (
                (b.id, db, over_a, {}),  # another call
                (a.id, da, auth.assertion(challenge_for(a.id, digest(edit))), {}),  # other arguments than these
                (a.id, da, over_a, {"arguments": edit}),  # these arguments, approved as an edit
            ):
                r = await approve(cid, seen, assertion, **extra)
                assert r.status_code == 403 and r.json()["error"] == "passkey_refused", r.text
            assert d.refusals(b.id) == [("alice", "passkey_refused")]
            assert d.refusals(a.id) == [("alice", "passkey_refused")] * 2
            r = await approve(a.id, da, over_a)
            assert r.status_code == 200 and r.json()["state"] == "approved", r.text
            assert not (await a.wait()).is_error
            # the spent assertion, and a fresh one over b with a count already used, open nothing more
            r = await approve(b.id, db, over_a)
            assert r.status_code == 403, r.text
            r = await approve(b.id, db, auth.assertion(challenge_for(b.id, db), count=1))  # over_a's
            assert r.status_code == 403 and r.json()["error"] == "passkey_refused", r.text
            row = d.row(b.id)
            assert (row["state"], row["decided_by"]) == ("pending", None)
            r = await d.http.post(f"/api/calls/{b.id}/reject", json={}, headers=alice)
            assert r.status_code == 200, r.text
            assert (await b.wait()).is_error
    assert d.forwarded() == [{"path": "/etc/keys/a", "content": "a"}]


BRIEF = (
    RULES.split("[[rules]]", 1)[0]
    + """[[rules]]
name = "brief"
tool = "write_note"
when = { path = { under = "/srv" } }
gate = "hard"
timeout = 3
[[rules]]"""
    + RULES.split("[[rules]]", 1)[1]
)


async def test_a_call_past_its_deadline_is_not_approved_even_if_its_row_says_otherwise(
    pg_admin_dsn: str, home: Path, tmp_path: Path
) -> None:
    """The agent pushes its held call's deadline (a column its gatekeeper's role may write) a long way off. The
    gatekeeper holding it still rejects it at its own deadline, and a reviewer's approval after that is refused
    (409): the call never runs."""
    with anyio.fail_after(240):
        async with deployment(pg_admin_dsn, home, tmp_path, BRIEF) as d:
            made = await d.call({"path": "/srv/x", "content": "late"})
            with psycopg.connect(d.gk_url, autocommit=True, options=f"-c search_path={SCHEMA}") as c:
                c.execute("UPDATE calls SET deadline_at = 1e12 WHERE id = %s", (made.id,))
            result = await made.wait()
            assert result.is_error and "not approved in time" in text(result), text(result)
            alice = await d.session("alice")
            r = await d.http.post(
                f"/api/calls/{made.id}/approve", json={"args_digest": d.row(made.id)["args_digest"]}, headers=alice
            )
            assert r.status_code == 409, r.text
            row = d.row(made.id)
            assert (row["state"], row["decided_by"]) == ("expired", None)
    assert d.forwarded() == []
