"""The PostgreSQL store's set-up and engine on a real server (tests/pgcluster.py): migrations, least privilege,
the decision compare-and-set, shared sweeping, LISTEN/NOTIFY wake-ups, and losing the server."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pgcluster
import psycopg
import pytest

from mcp_gatekeeper.clock import FakeClock, SystemClock
from mcp_gatekeeper.errors import AlreadyDecidedError, StoreError
from mcp_gatekeeper.models import GENESIS_HASH, State, audit_body, audit_hash, new_call_id
from mcp_gatekeeper.store.pg_schema import DECIDE_ARGS, MIGRATIONS, SCHEMA, Roles
from mcp_gatekeeper.store.postgres import InitReport, PgEngine, check_url, init_database
from mcp_gatekeeper.store.sweeps import Sweeps

pytestmark = pytest.mark.anyio


def _roles() -> Roles:
    tag = secrets.token_hex(4)  # roles are per server; each test's database gets its own
    return Roles(gatekeeper=f"gk_{tag}", approver=f"ap_{tag}", owner=f"own_{tag}")


@pytest.fixture
async def team(pg_admin_dsn: str) -> tuple[Roles, InitReport]:
    roles = _roles()
    report = await init_database(pg_admin_dsn, SystemClock(), roles=roles)
    return roles, report


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, options=f"-c search_path={SCHEMA}")


def _insert_pending(url: str, *, deadline_at: float | None = None) -> str:
    """A held call written the way a gatekeeper writes it (its own role), with its 'held' audit event."""
    cid = new_call_id()
    with _connect(url) as c, c.transaction():
        c.execute(
            "INSERT INTO calls (id, state, upstream, tool, arguments, args_digest, gate, risk, created_at, deadline_at)"
            " VALUES (%s, 'pending', 'shop', 'refund', '{\"amount\":40000}', 'd1', 'hard', 'critical', 1.0, %s)",
            (cid, deadline_at),
        )
        c.execute("SELECT pg_advisory_xact_lock(%s)", (0x6D6370677461,))
        row = c.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        prev = row[0] if row else GENESIS_HASH
        body = audit_body(
            at=1.0, call_id=cid, event="held", actor="policy", channel="policy", args_digest="d1", detail={}
        )
        c.execute(
            "INSERT INTO audit (at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)"
            " VALUES (1.0, %s, 'held', 'policy', 'policy', 'd1', '{}', %s, %s)",
            (cid, prev, audit_hash(prev, body)),
        )
    return cid


def _chain_ok(admin: str) -> int:
    """Walk the audit chain as the admin: every link and hash holds; returns the number of events."""
    with _connect(admin) as c:
        rows = c.execute(
            "SELECT at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash FROM audit ORDER BY seq"
        ).fetchall()
    prev = GENESIS_HASH
    for at, call_id, event, actor, channel, args_digest, detail, prev_hash, h in rows:
        assert prev_hash == prev
        body = audit_body(
            at=at, call_id=call_id, event=event, actor=actor, channel=channel, args_digest=args_digest,
            detail=json.loads(detail),
        )  # fmt: skip
        assert audit_hash(prev, body) == h
        prev = h
    return len(rows)


# ------------------------------------------------------------------------------------------------ set-up


async def test_init_applies_every_migration_once_and_is_idempotent(pg_admin_dsn: str) -> None:
    roles = _roles()
    first = await init_database(pg_admin_dsn, SystemClock(), roles=roles)
    assert first.applied == tuple(name for name, _ in MIGRATIONS)
    assert set(first.new_role_urls) == {roles.gatekeeper, roles.approver}
    again = await init_database(pg_admin_dsn, SystemClock(), roles=roles)
    assert again.applied == ()
    assert again.new_role_urls == {}  # existing roles keep their passwords unless asked
    with _connect(pg_admin_dsn) as c:
        names = [r[0] for r in c.execute("SELECT name FROM schema_migrations ORDER BY name")]
        owner = c.execute("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s", (SCHEMA,)).fetchone()
    assert names == [name for name, _ in MIGRATIONS]
    assert owner == (roles.owner,)
    # every role can open an engine on it
    for url in first.new_role_urls.values():
        async with PgEngine.open(url, SystemClock()) as engine:
            assert await engine.read("SELECT count(*) FROM calls") == [(0,)]


async def test_newer_schema_is_refused_by_init_and_by_the_engine(
    team: tuple[Roles, InitReport], pg_admin_dsn: str
) -> None:
    roles, report = team
    with _connect(pg_admin_dsn) as c:
        c.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_from_the_future', 0)")
    with pytest.raises(StoreError, match="newer"):
        await init_database(pg_admin_dsn, SystemClock(), roles=roles)
    with pytest.raises(StoreError, match="newer"):
        async with PgEngine.open(report.new_role_urls[roles.gatekeeper], SystemClock()):
            pass


async def test_an_unprepared_database_and_a_foreign_url_are_refused(pg_admin_dsn: str) -> None:
    with pytest.raises(StoreError, match="db init"):
        async with PgEngine.open(pg_admin_dsn, SystemClock()):
            pass
    for bad in ("mysql://x@127.0.0.1/db", "sqlite:///tmp/x.db", "http://127.0.0.1/"):
        with pytest.raises(StoreError, match=r"\[store\] url"):
            check_url(bad, key="[store] url")
    with pytest.raises(StoreError, match="MCP_GATEKEEPER_STORE"):
        async with PgEngine.open("mysql://u@127.0.0.1/x", SystemClock(), key="MCP_GATEKEEPER_STORE"):
            pass


async def test_role_names_that_could_inject_sql_are_refused(pg_admin_dsn: str) -> None:
    for bad in ('gk"; DROP TABLE x; --', "Gatekeeper", "a b", ""):
        with pytest.raises(StoreError, match="role"):
            await init_database(
                pg_admin_dsn, SystemClock(), roles=Roles(gatekeeper=bad, approver="ap_x", owner="own_x")
            )


async def test_an_existing_powerful_role_is_not_adopted(pg_admin_dsn: str) -> None:
    roles = _roles()
    with _connect(pg_admin_dsn) as c:
        c.execute(f"CREATE ROLE {roles.gatekeeper} LOGIN CREATEROLE")
    with pytest.raises(StoreError, match="powers"):
        await init_database(pg_admin_dsn, SystemClock(), roles=roles)
    with _connect(pg_admin_dsn) as c:
        c.execute(f"DROP ROLE {roles.gatekeeper}")


# ------------------------------------------------------------------------------------------------ least privilege


def _refusal(c: psycopg.Connection[Any], statement: str) -> str:
    """The SQLSTATE with which the server refused ``statement`` ("ran" if it did not refuse it)."""
    try:
        c.execute(statement)
    except psycopg.Error as e:
        return e.sqlstate or "?"
    return "ran"


def _attempts(cid: str, roles: Roles) -> list[tuple[str, str]]:
    """Every way we could think of for the gatekeeper's role to approve (or fake an approval of) a held call."""
    s = SCHEMA
    decide_args = f"'{cid}', 'approved', 'd1', 2.0, 'me', 'web', NULL, NULL, '{{}}', '{GENESIS_HASH}', 'x', NULL"
    return [
        ("set state approved", f"UPDATE calls SET state = 'approved' WHERE id = '{cid}'"),
        ("set state rejected", f"UPDATE calls SET state = 'rejected' WHERE id = '{cid}'"),
        ("skip the decision", f"UPDATE calls SET state = 'forwarding' WHERE id = '{cid}'"),
        ("skip to forwarded", f"UPDATE calls SET state = 'forwarded' WHERE id = '{cid}'"),
        ("set decided_by", f"UPDATE calls SET decided_by = 'alice' WHERE id = '{cid}'"),
        ("set decided_at", f"UPDATE calls SET decided_at = 2.0 WHERE id = '{cid}'"),
        ("set the decision channel", f"UPDATE calls SET channel = 'web' WHERE id = '{cid}'"),
        ("set modified_arguments", f"UPDATE calls SET modified_arguments = '{{}}' WHERE id = '{cid}'"),
        ("swap the arguments", f"UPDATE calls SET arguments = '{{\"amount\":1}}' WHERE id = '{cid}'"),
        ("swap the digest", f"UPDATE calls SET args_digest = 'd2' WHERE id = '{cid}'"),
        (
            "insert an approved call",
            "INSERT INTO calls (id, state, upstream, tool, arguments, args_digest, gate, risk, created_at)"
            " VALUES ('ffff', 'approved', 'shop', 'refund', '{}', 'd', 'hard', 'critical', 1.0)",
        ),
        (
            "insert a call with a decider",
            "INSERT INTO calls (id, state, upstream, tool, arguments, args_digest, gate, risk, created_at, decided_by)"
            " VALUES ('fffe', 'pending', 'shop', 'refund', '{}', 'd', 'hard', 'critical', 1.0, 'alice')",
        ),
        (
            "insert a confirmed review",
            "INSERT INTO calls (id, state, upstream, tool, arguments, args_digest, gate, risk, created_at)"
            " VALUES ('fffd', 'confirmed', 'shop', 'refund', '{}', 'd', 'audit', 'low', 1.0)",
        ),
        ("delete the call", f"DELETE FROM calls WHERE id = '{cid}'"),
        ("call the decision function", f"SELECT * FROM decide({decide_args})"),
        ("call it schema-qualified", f"SELECT * FROM {s}.decide({decide_args})"),
        ("sign a decision itself", f"UPDATE calls SET decision_sig = '{{}}' WHERE id = '{cid}'"),
        (
            "insert a call with a signature",
            "INSERT INTO calls (id, state, upstream, tool, arguments, args_digest, gate, risk, created_at, decision_sig)"
            " VALUES ('fffc', 'pending', 'shop', 'refund', '{}', 'd', 'hard', 'critical', 1.0, '{}')",
        ),
        (
            "register a passkey",
            "INSERT INTO passkeys (credential_id, reviewer, public_key, sign_count, created_at)"
            " VALUES ('mine', 'alice', '00', 0, 1.0)",
        ),
        ("rewind a passkey's sign count", "UPDATE passkeys SET sign_count = 0"),
        ("swap a passkey's key", "UPDATE passkeys SET public_key = '00'"),
        ("delete a passkey", "DELETE FROM passkeys"),
        ("move when signing began", "UPDATE signing_since SET seq = 1000000"),
        ("add when signing began", "INSERT INTO signing_since (seq) VALUES (1000000)"),
        (
            "append an approval event",
            f"INSERT INTO audit (at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)"
            f" VALUES (2.0, '{cid}', 'approved', 'alice', 'web', 'd1', '{{}}', 'x', 'y')",
        ),
        ("rewrite the audit log", "UPDATE audit SET event = 'approved' WHERE event = 'held'"),
        ("delete from the audit log", "DELETE FROM audit"),
        ("truncate the audit log", "TRUNCATE audit"),
        ("disable the audit guard", "ALTER TABLE audit DISABLE TRIGGER audit_guard"),
        ("disable the calls guard", "ALTER TABLE calls DISABLE TRIGGER ALL"),
        ("drop the calls guard", "DROP TRIGGER calls_guard ON calls"),
        (
            "replace the guard function",
            f"CREATE OR REPLACE FUNCTION {s}.calls_guard() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$",
        ),
        (
            "replace owner_is_current",
            f"CREATE OR REPLACE FUNCTION {s}.owner_is_current() RETURNS boolean LANGUAGE sql AS $$SELECT true$$",
        ),
        ("create a function", f"CREATE FUNCTION {s}.mine() RETURNS int LANGUAGE sql AS $$SELECT 1$$"),
        ("create a function in public", "CREATE FUNCTION public.mine() RETURNS int LANGUAGE sql AS $$SELECT 1$$"),
        ("create a temp function", "CREATE FUNCTION pg_temp.mine() RETURNS int LANGUAGE sql AS $$SELECT 1$$"),
        ("shadow a table in temp", "CREATE TEMP TABLE calls (id text)"),
        ("create a schema", "CREATE SCHEMA mine"),
        ("become the owner", f"SET ROLE {roles.owner}"),
        ("become the approver", f"SET ROLE {roles.approver}"),
        ("become the superuser", "SET ROLE postgres"),
        ("session authorization", f"SET SESSION AUTHORIZATION {roles.approver}"),
        ("grant itself the approver", f"GRANT {roles.approver} TO {roles.gatekeeper}"),
        ("make itself superuser", f"ALTER ROLE {roles.gatekeeper} SUPERUSER"),
        ("give itself createrole", f"ALTER ROLE {roles.gatekeeper} CREATEROLE"),
        ("change the approver's password", f"ALTER ROLE {roles.approver} PASSWORD 'mine'"),
        (
            "lease itself the tool",
            "INSERT INTO leases (id, upstream, tool, envelope, created_at, created_by)"
            " VALUES ('l1', 'shop', 'refund', '{}', 1.0, 'alice')",
        ),
        ("refill a lease", "UPDATE leases SET calls_left = 1000"),
        ("un-revoke a lease", "UPDATE leases SET revoked_at = NULL"),
        ("repin a tool", "UPDATE pins SET hash = 'new', definition = '{}'"),
        ("read the page's sessions", "SELECT * FROM web_sessions"),
        (
            "forge a page session",
            "INSERT INTO web_sessions (id, secret_hash, key_hash, label, host, created_at, last_seen_at, expires_at,"
            " ends_at) VALUES ('s', 'h', 'k', 'me', 'h', 1, 1, 9e9, 9e9)",
        ),
        (
            "forge a login code",
            "INSERT INTO login_codes (code_hash, label, created_at, expires_at) VALUES ('c', 'me', 1, 9e9)",
        ),
        ("alter the calls table", "ALTER TABLE calls ADD COLUMN mine text"),
        ("drop the audit table", "DROP TABLE audit"),
        ("copy from a file", "COPY calls FROM '/tmp/x'"),
    ]


async def test_the_gatekeeper_role_cannot_approve_by_any_way_we_know(
    team: tuple[Roles, InitReport], pg_admin_dsn: str
) -> None:
    roles, report = team
    gk_url, ap_url = report.new_role_urls[roles.gatekeeper], report.new_role_urls[roles.approver]
    cid = _insert_pending(gk_url, deadline_at=None)
    with _connect(pg_admin_dsn) as c:  # something for the lease and pin attempts to aim at
        c.execute(
            "INSERT INTO pins (upstream, tool, hash, definition, pinned_at, pinned_by) VALUES ('shop', 'refund', 'h', '{}', 1, 'x')"
        )
        c.execute(
            "INSERT INTO leases (id, upstream, tool, envelope, created_at, created_by, calls_left, revoked_at)"
            " VALUES ('l0', 'shop', 'refund', '{}', 1, 'alice', 0, 5)"
        )
    with _connect(gk_url) as c:
        outcomes = {name: _refusal(c, statement) for name, statement in _attempts(cid, roles)}
        assert {name: why for name, why in outcomes.items() if why != "42501"} == {}  # insufficient_privilege, each
        # a GRANT of what it does not hold is only a warning in PostgreSQL: check that it granted nothing
        c.execute(f"GRANT UPDATE ON {SCHEMA}.calls TO {roles.gatekeeper}")
    with _connect(pg_admin_dsn) as c:
        for column in (
            "decided_by", "modified_arguments", "arguments", "args_digest", "channel", "decided_at", "decision_sig",
        ):  # fmt: skip
            assert c.execute(
                "SELECT has_column_privilege(%s, %s, %s, 'UPDATE')", (roles.gatekeeper, f"{SCHEMA}.calls", column)
            ).fetchone() == (False,)
        assert c.execute(
            "SELECT has_function_privilege(%s, %s, 'EXECUTE')",
            (
                roles.gatekeeper,
                f"{SCHEMA}.decide({DECIDE_ARGS})",
            ),
        ).fetchone() == (False,)
        row = c.execute(
            "SELECT state, decided_by, decided_at, modified_arguments, arguments, args_digest FROM calls WHERE id = %s",
            (cid,),
        ).fetchone()
        assert row == ("pending", None, None, None, '{"amount":40000}', "d1")
        assert c.execute("SELECT count(*) FROM calls").fetchone() == (1,)
        assert c.execute(
            "SELECT count(*) FROM audit WHERE event IN ('approved', 'rejected', 'confirmed')"
        ).fetchone() == (0,)
        assert c.execute("SELECT calls_left, revoked_at FROM leases").fetchone() == (0, 5.0)
        assert c.execute("SELECT count(*) FROM passkeys").fetchone() == (0,)
        assert c.execute("SELECT decision_sig FROM calls WHERE id = %s", (cid,)).fetchone() == (None,)
        # the decide function of before 0012_signatures (no signature argument) is gone, not left callable
        old = ", ".join(["text"] * 3 + ["double precision"] + ["text"] * 7)
        assert c.execute("SELECT to_regprocedure(%s)", (f"{SCHEMA}.decide({old})",)).fetchone() == (None,)
    assert _chain_ok(pg_admin_dsn) == 1
    # the gatekeeper's own engine cannot decide either
    async with PgEngine.open(gk_url, SystemClock()) as engine:
        with pytest.raises(StoreError, match="permission denied"):
            await engine.decide_call(cid, state="approved", decided_by="me", channel="web", reason=None,
                                modified_arguments=None, expected_digest="d1")  # fmt: skip
    # the approval service's role can
    async with PgEngine.open(ap_url, SystemClock()) as engine:
        assert await engine.decide_call(
            cid, state="approved", decided_by="alice", channel="web", reason="ok", modified_arguments=None,
            expected_digest="d1",
        ) == "approved"  # fmt: skip
    # and what a gatekeeper does with an approved call it holds still works: forward it, record the outcome
    with _connect(gk_url) as c:
        c.execute("UPDATE calls SET state = 'forwarding' WHERE id = %s", (cid,))
        c.execute("UPDATE calls SET state = 'forwarded', result = '{}', finished_at = 3 WHERE id = %s", (cid,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # and then it is final
            c.execute("UPDATE calls SET state = 'forwarding' WHERE id = %s", (cid,))
    with _connect(pg_admin_dsn) as c:
        assert c.execute("SELECT state, decided_by FROM calls WHERE id = %s", (cid,)).fetchone() == (
            "forwarded",
            "alice",
        )
    assert _chain_ok(pg_admin_dsn) == 2


async def test_the_approver_cannot_write_calls_directly(team: tuple[Roles, InitReport]) -> None:
    """Decisions go only through the decision function: the CAS and its audit event, together."""
    roles, report = team
    cid = _insert_pending(report.new_role_urls[roles.gatekeeper])
    with _connect(report.new_role_urls[roles.approver]) as c:
        for statement in (
            f"UPDATE calls SET state = 'approved' WHERE id = '{cid}'",
            f"INSERT INTO audit (at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)"
            f" VALUES (2.0, '{cid}', 'approved', 'alice', 'web', 'd1', '{{}}', 'x', 'y')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(statement)


async def test_the_gatekeeper_can_do_its_own_work(team: tuple[Roles, InitReport]) -> None:
    roles, report = team
    gk = report.new_role_urls[roles.gatekeeper]
    expiring, cancelled = _insert_pending(gk), _insert_pending(gk)
    with _connect(gk) as c:
        c.execute("UPDATE calls SET state = 'expired', finished_at = 5 WHERE id = %s", (expiring,))
        c.execute("UPDATE calls SET state = 'cancelled', error = 'went away' WHERE id = %s", (cancelled,))
        c.execute("INSERT INTO instances (id, pid, host, started_at, heartbeat_at) VALUES ('i1', 1, 'h', 1, 1)")
        c.execute("UPDATE instances SET heartbeat_at = 2 WHERE id = 'i1'")
        c.execute("INSERT INTO used_states (nonce, call_id, used_at) VALUES ('n', %s, 1)", (expiring,))
        c.execute(
            "INSERT INTO pins (upstream, tool, hash, definition, pinned_at, pinned_by) VALUES ('u', 't', 'h', '{}', 1, 'first use')"
        )
        c.execute("UPDATE pins SET pending_hash = 'h2', pending_definition = '{}', changed_at = 2")
        states = dict(c.execute("SELECT id, state FROM calls").fetchall())
    assert states == {expiring: "expired", cancelled: "cancelled"}


# ------------------------------------------------------------------------------------------------ the engine


@pytest.fixture
def urls(team: tuple[Roles, InitReport]) -> tuple[str, str]:
    roles, report = team
    return report.new_role_urls[roles.gatekeeper], report.new_role_urls[roles.approver]


async def test_decisions_are_one_compare_and_set(urls: tuple[str, str], pg_admin_dsn: str) -> None:
    gk, ap = urls
    cid = _insert_pending(gk)
    wins: list[str] = []
    losses: list[AlreadyDecidedError] = []

    async def reviewer(engine: PgEngine, name: str, approve: bool) -> None:
        try:
            await engine.decide_call(cid, state="approved" if approve else "rejected", decided_by=name, channel="web",
                                reason=None, modified_arguments=None, expected_digest="d1")  # fmt: skip
            wins.append(name)
        except AlreadyDecidedError as e:
            losses.append(e)

    async with PgEngine.open(ap, SystemClock()) as a, PgEngine.open(ap, SystemClock()) as b:
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(reviewer, a if i % 2 else b, f"r{i}", i % 3 != 0)
        assert len(wins) == 1 and len(losses) == 5
        assert all(e.why == "decided" for e in losses)
        other = _insert_pending(gk)
        with pytest.raises(AlreadyDecidedError) as stale:
            await a.decide_call(other, state="approved", decided_by="x", channel="web", reason=None,
                           modified_arguments=None, expected_digest="not-what-was-held")  # fmt: skip
        assert stale.value.why == "stale_digest"
        late = _insert_pending(gk, deadline_at=0.5)
        with pytest.raises(AlreadyDecidedError) as expired:
            await a.decide_call(late, state="approved", decided_by="x", channel="web", reason=None,
                           modified_arguments=None, expected_digest=None)  # fmt: skip
        assert expired.value.why == "expired"
    with _connect(pg_admin_dsn) as c:
        assert c.execute(
            "SELECT count(*) FROM audit WHERE call_id = %s AND event IN ('approved','rejected')", (cid,)
        ).fetchone() == (1,)
        assert c.execute("SELECT decided_by FROM calls WHERE id = %s", (cid,)).fetchone() == (wins[0],)
        assert c.execute("SELECT state FROM calls WHERE id = %s", (other,)).fetchone() == ("pending",)
    _chain_ok(pg_admin_dsn)


async def test_many_sweepers_expire_each_call_exactly_once(urls: tuple[str, str], pg_admin_dsn: str) -> None:
    gk, _ = urls
    ids = {_insert_pending(gk, deadline_at=1.0) for _ in range(40)}
    swept: list[list[str]] = []

    async def sweeper(engine: PgEngine) -> None:
        sweeps = Sweeps(engine, lambda: None)  # four gatekeepers' sweepers, on the gatekeeper's role
        while batch := await sweeps.expire(2.0, why=lambda _: "late", limit=3):
            swept.append(batch)

    engines = [PgEngine.open(gk, FakeClock()) for _ in range(4)]
    async with engines[0] as e0, engines[1] as e1, engines[2] as e2, engines[3] as e3, anyio.create_task_group() as tg:
        for e in (e0, e1, e2, e3):
            tg.start_soon(sweeper, e)
    flat = [cid for batch in swept for cid in batch]
    assert sorted(flat) == sorted(ids)  # every one, none twice
    with _connect(pg_admin_dsn) as c:
        assert c.execute("SELECT count(*) FROM audit WHERE event = 'expired'").fetchone() == (40,)
        assert c.execute("SELECT count(*) FROM calls WHERE state = 'expired'").fetchone() == (40,)
    _chain_ok(pg_admin_dsn)


async def test_a_decision_wakes_a_waiter_in_another_process_by_notify(urls: tuple[str, str]) -> None:
    gk, ap = urls
    cid = _insert_pending(gk)
    async with (
        PgEngine.open(gk, SystemClock()) as holder,
        PgEngine.open(ap, SystemClock()) as service,
        anyio.create_task_group() as upkeep,
    ):
        upkeep.start_soon(holder.run_checkpoints)  # the LISTEN side of a long-running process
        with anyio.fail_after(10):
            while not holder._signals.listening:  # the listener is up (its connection is its own)
                await holder.wait_changed(poll=0.05)
        seen: list[str] = []

        async def wait_for_decision() -> None:
            while True:
                (state,) = (await holder.read("SELECT state FROM calls WHERE id = ?", (cid,)))[0]
                if state != "pending":
                    seen.append(state)
                    return
                await holder.wait_changed(poll=60)  # a poll this long would fail the test: NOTIFY must wake it

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_decision)
                await service.decide_call(cid, state="rejected", decided_by="bob", channel="web", reason="no",
                                     modified_arguments=None, expected_digest="d1")  # fmt: skip
        assert seen == ["rejected"]
        upkeep.cancel_scope.cancel()


async def test_a_claim_skips_a_row_another_transaction_holds_instead_of_waiting(urls: tuple[str, str]) -> None:
    gk, _ = urls
    busy, free = _insert_pending(gk, deadline_at=1.0), _insert_pending(gk, deadline_at=1.0)
    with _connect(gk) as c, c.transaction():
        c.execute("SELECT id FROM calls WHERE id = %s FOR UPDATE", (busy,))  # another sweeper, mid-claim
        async with PgEngine.open(gk, FakeClock()) as engine:
            with anyio.fail_after(10):  # it would wait for the lock (until this transaction ends) without SKIP LOCKED
                assert await Sweeps(engine, lambda: None).expire(2.0, why=lambda _: "late") == [free]
    async with PgEngine.open(gk, FakeClock()) as engine:
        assert await Sweeps(engine, lambda: None).expire(2.0, why=lambda _: "late") == [busy]  # released: its turn


async def test_an_escalation_by_another_gatekeeper_wakes_the_holder_by_notify(urls: tuple[str, str]) -> None:
    gk, _ = urls
    cid = _insert_pending(gk, deadline_at=3600.0)
    async with (
        PgEngine.open(gk, SystemClock()) as holder,
        PgEngine.open(gk, FakeClock()) as other,
        anyio.create_task_group() as upkeep,
    ):
        upkeep.start_soon(holder.run_checkpoints)
        with anyio.fail_after(10):
            while not holder._signals.listening:
                await holder.wait_changed(poll=0.05)
        seen: list[float] = []

        async def wait_for_a_new_deadline() -> None:
            while True:
                (deadline,) = (await holder.read("SELECT deadline_at FROM calls WHERE id = ?", (cid,)))[0]
                if deadline != 3600.0:
                    seen.append(deadline)
                    return
                await holder.wait_changed(poll=60)  # a poll this long would fail the test: NOTIFY must wake it

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_a_new_deadline)
                sweeps = Sweeps(other, lambda: None)
                assert await sweeps.claim_escalation(cid, level=1, deadline_at=60.0, escalate_at=None, channels=[])
        assert seen == [60.0]  # the state did not change; the deadline did, and that is a change waiters hear
        upkeep.cancel_scope.cancel()


async def test_a_notify_that_comes_while_the_waiter_reads_is_not_lost(urls: tuple[str, str]) -> None:
    """The gate's watcher reads, then waits: a decision's NOTIFY that arrives between the two must still wake it
    (it used to wait for the next NOTIFY, or the poll: up to a second after the last decision of a burst)."""
    gk, ap = urls
    cid = _insert_pending(gk)
    async with (
        PgEngine.open(gk, SystemClock()) as holder,
        PgEngine.open(ap, SystemClock()) as service,
        anyio.create_task_group() as upkeep,
    ):
        upkeep.start_soon(holder.run_checkpoints)
        with anyio.fail_after(10):
            while not holder._signals.listening:
                await holder.wait_changed(poll=0.05)
        assert await holder.read("SELECT state FROM calls WHERE id = ?", (cid,)) == [("pending",)]  # the read
        arrived = holder._signals.changed
        await service.decide_call(cid, state="rejected", decided_by="bob", channel="web", reason="no",
                                  modified_arguments=None, expected_digest="d1")  # fmt: skip
        with anyio.fail_after(10):
            await arrived.wait()  # the NOTIFY is in, and nobody was waiting for it
        with anyio.fail_after(10):  # a poll of 60 s: only the NOTIFY already in can end this wait in time
            await holder.wait_changed(poll=60)
        assert await holder.read("SELECT state FROM calls WHERE id = ?", (cid,)) == [("rejected",)]
        upkeep.cancel_scope.cancel()


async def test_losing_the_server_fails_closed_and_the_pool_reconnects() -> None:
    if why := pgcluster.why_unavailable():
        pytest.skip(why)
    if os.environ.get(pgcluster.ENV_DSN):
        pytest.skip(f"stops and restarts a server of its own (not the one ${pgcluster.ENV_DSN} names)")
    cluster = pgcluster.start_cluster()  # its own: this test kills it
    try:
        roles = _roles()
        report = await init_database(cluster.dsn, SystemClock(), roles=roles)
        gk, ap = report.new_role_urls[roles.gatekeeper], report.new_role_urls[roles.approver]
        cid = _insert_pending(gk)
        async with (
            PgEngine.open(gk, SystemClock(), timeout=2.0) as holder,
            PgEngine.open(ap, SystemClock(), timeout=2.0) as service,
            anyio.create_task_group() as upkeep,
        ):
            upkeep.start_soon(holder.run_checkpoints)
            assert await holder.read("SELECT state FROM calls WHERE id = ?", (cid,)) == [("pending",)]
            cluster.kill()
            with anyio.fail_after(20):
                with pytest.raises(StoreError):
                    await holder.read("SELECT state FROM calls WHERE id = ?", (cid,))
                with pytest.raises(StoreError):  # nothing decided while the server is gone
                    await service.decide_call(cid, state="approved", decided_by="alice", channel="web", reason=None,
                                         modified_arguments=None, expected_digest="d1")  # fmt: skip
                with pytest.raises(StoreError):
                    await Sweeps(holder, lambda: None).expire(1e12, why=lambda _: "late")
            cluster.start()
            with anyio.fail_after(20):
                assert await holder.read("SELECT state FROM calls WHERE id = ?", (cid,)) == [("pending",)]
                assert await service.decide_call(cid, state="approved", decided_by="alice", channel="web", reason=None,
                                            modified_arguments=None, expected_digest="d1") == "approved"  # fmt: skip
                while not holder._signals.listening:  # and the listener came back by itself
                    await holder.wait_changed(poll=0.1)
            upkeep.cancel_scope.cancel()
        _chain_ok(cluster.dsn)
    finally:
        cluster.stop()


async def test_review_windows_and_compensations_are_claimed_once_each(urls: tuple[str, str], pg_admin_dsn: str) -> None:
    gk, _ = urls
    ids = []
    with _connect(gk) as c:
        for i in range(12):
            cid = new_call_id()
            c.execute(
                "INSERT INTO calls (id, state, upstream, tool, arguments, args_digest, gate, risk, created_at, deadline_at)"
                " VALUES (%s, 'allowed', %s, 'write', '{}', 'd', 'audit', 'low', 1.0, 5.0)",
                (cid, "a" if i % 2 else "b"),
            )
            c.execute("UPDATE calls SET state = 'forwarded' WHERE id = %s", (cid,))
            c.execute("UPDATE calls SET state = 'under_review' WHERE id = %s", (cid,))
            ids.append(cid)
        for sneaky in ("forwarding", "forwarded", "allowed", "pending"):  # nothing under review runs again
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("UPDATE calls SET state = %s WHERE id = %s", (sneaky, ids[0]))
    async with PgEngine.open(gk, FakeClock()) as one, PgEngine.open(gk, FakeClock()) as two:
        assert await Sweeps(one, lambda: None).reviews_due(4.0) == []  # not due yet
        failed: list[str] = []
        rolling: list[str] = []

        async def sweep(engine: PgEngine) -> None:
            sweeps = Sweeps(engine, lambda: None)
            for rec in await sweeps.reviews_due(6.0):
                if await sweeps.close_review(rec.id, now=6.0, to_state=State.REVIEW_FAILED, reason="late"):
                    failed.append(rec.id)
            await anyio.lowlevel.checkpoint()  # the other sweeper has read the same calls by now
            for rec, _ in await sweeps.compensations_due(["a"]):
                if await sweeps.claim_compensation(rec.id):
                    rolling.append(rec.id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sweep, one)
            tg.start_soon(sweep, two)
    assert sorted(failed) == sorted(ids)
    assert sorted(rolling) == sorted(ids[1::2])  # upstream "a" only, each once
    with _connect(pg_admin_dsn) as c:
        assert c.execute("SELECT sum(attempts) FROM calls").fetchone() == (6,)
        assert c.execute("SELECT count(*) FROM audit WHERE event = 'rolling_back'").fetchone() == (6,)
    _chain_ok(pg_admin_dsn)


def test_db_init_from_the_command_line(pg_admin_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mcp_gatekeeper.cli import main

    roles = _roles()
    argv = ["db", "init", "--url", pg_admin_dsn, "--gatekeeper-role", roles.gatekeeper, "--approver-role",
            roles.approver, "--owner-role", roles.owner]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "applied 0001_initial" in out
    password = pgcluster.urlsplit(pg_admin_dsn).password
    assert password and password not in out.split("role ")[0]  # the admin's password is never echoed
    gk_url = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith(f"role {roles.gatekeeper}:"))
    with _connect(gk_url) as c:  # the printed URL works, as the gatekeeper
        assert c.execute("SELECT current_user").fetchone() == (roles.gatekeeper,)
    assert main(argv) == 0
    assert "schema up to date" in capsys.readouterr().out
    assert main([*argv[:3], "mysql://root@127.0.0.1/x"]) == 3
    assert "--url" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ choosing it


def test_the_postgres_migrations_are_the_sqlite_ones_under_the_same_names() -> None:
    """A migration added to the SQLite store must be ported here (same name) before PostgreSQL can open it."""
    from mcp_gatekeeper.store.schema import MIGRATIONS as SQLITE_MIGRATIONS

    assert [name for name, _ in MIGRATIONS] == [name for name, _ in SQLITE_MIGRATIONS]


def test_the_store_setting_is_checked_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_gatekeeper.config import load_config
    from mcp_gatekeeper.errors import ConfigError
    from mcp_gatekeeper.serve import STORE_ENV, store_location

    for bad in ("mysql://root@127.0.0.1/db", "http://127.0.0.1/x", "/just/a/path.db", "sqlite://relative.db"):
        p = tmp_path / "bad.toml"
        p.write_text(f'[store]\nurl = "{bad}"\n')
        with pytest.raises(ConfigError, match=r"store\.url"):
            load_config(p)
    good = tmp_path / "good.toml"
    good.write_text('[store]\nurl = "postgresql://gatekeeper:pw@db.internal/gk"\n')
    config = load_config(good)
    monkeypatch.delenv(STORE_ENV, raising=False)
    assert store_location(config, tmp_path) == ("postgresql://gatekeeper:pw@db.internal/gk", "[store] url")
    monkeypatch.setenv(STORE_ENV, f"sqlite://{tmp_path}/x.db")
    assert store_location(config, tmp_path) == (f"{tmp_path}/x.db", STORE_ENV)  # the variable wins
    monkeypatch.setenv(STORE_ENV, "redis://127.0.0.1")
    with pytest.raises(ConfigError, match=STORE_ENV):
        store_location(config, tmp_path)
    monkeypatch.delenv(STORE_ENV)
    no_url = tmp_path / "none.toml"
    no_url.write_text("[store]\nfsync_every_call = true\n")
    assert store_location(load_config(no_url), tmp_path) == (str(tmp_path / "gatekeeper.db"), "the data home")


async def test_a_gatekeeper_pointed_at_postgres_records_its_calls_there(urls: tuple[str, str]) -> None:
    """The Store the whole package uses, on the gatekeeper's role: it records, and cannot decide."""
    from mcp_gatekeeper.models import NewCall, State
    from mcp_gatekeeper.store import Store

    gk, ap = urls
    async with Store.open(gk, SystemClock()) as store:
        await store.register_instance("team")
        rec = await store.insert_call(
            NewCall(upstream="shop", tool="refund", arguments={"amount": 40000}, gate="hard", risk="critical"),
            state=State.PENDING, deadline_at=SystemClock().now() + 60,
        )  # fmt: skip
        with pytest.raises(StoreError, match="permission denied"):
            await store.decide(rec.id, approve=True, decided_by="me", channel="in-client", reason=None,
                               modified_arguments=None, expected_digest=None)  # fmt: skip
        assert (await store.get(rec.id)).state == State.PENDING
        async with Store.open(ap, SystemClock()) as service:
            decided = await service.decide(rec.id, approve=True, decided_by="alice", channel="web", reason=None,
                                           modified_arguments=None, expected_digest=rec.args_digest)  # fmt: skip
            assert decided.state == State.APPROVED and decided.decided_by == "alice"
        assert await store.verify_decision(rec.id) is None  # the holder checks it before forwarding


async def test_a_signed_passkey_approval_by_the_service_is_verified_by_the_gatekeepers_role(
    urls: tuple[str, str], tmp_path: Path, pg_admin_dsn: str
) -> None:
    """The approval service (approver role, its own key) decides a ``confirm = "passkey"`` call through the
    database's decide function; the holder (gatekeeper role, trusting only the service's public key) finds the
    signature and the passkey assertion and accepts them, and refuses them once the decider is changed."""
    from softauthn import SoftAuthenticator, as_response

    from mcp_gatekeeper.config import parse_config
    from mcp_gatekeeper.gate import Gate
    from mcp_gatekeeper.models import Decision, NewCall, State
    from mcp_gatekeeper.passkeys import RelyingParty, challenge_for
    from mcp_gatekeeper.policy import Policy
    from mcp_gatekeeper.signatures import DecisionKeys, public_text
    from mcp_gatekeeper.store import Store

    gk, ap = urls
    clock = SystemClock()
    policy = Policy(parse_config(
        '[ui]\nautostart = false\npublic_url = "https://gk.example.com"\n'
        '[[rules]]\nname = "refunds"\ntool = "issue_refund"\ngate = "hard"\nconfirm = "passkey"\n'
    ))  # fmt: skip
    (tmp_path / "service").mkdir()
    (tmp_path / "holder").mkdir()
    service_keys = DecisionKeys.for_home(tmp_path / "service")
    holder_keys = DecisionKeys.for_home(tmp_path / "holder", decision_keys=[public_text(service_keys.signer().public)])
    ann = SoftAuthenticator(RelyingParty.from_url("https://gk.example.com"), "web:ann")
    async with Store.open(gk, clock) as store, Store.open(ap, clock) as service_store:
        holder = Gate(store, policy, clock, sweep_interval=None, keys=holder_keys)
        service = Gate(service_store, policy, clock, sweep_interval=None, keys=service_keys)
        with pytest.raises(StoreError, match="permission denied"):  # the gatekeeper cannot register a passkey
            await store.passkeys.add(ann.credential(), channel="web")
        assert await service_store.passkeys.add(ann.credential(), channel="web")
        rec = await store.insert_call(
            NewCall(upstream="shop", tool="issue_refund", arguments={"amount": 40000}, gate="hard", risk="critical",
                    rule="refunds"),
            state=State.PENDING, deadline_at=clock.now() + 60,
        )  # fmt: skip
        assertion = as_response(ann.assertion(challenge_for(rec.id, rec.args_digest)))
        done = await service.decide(
            rec.id, Decision(approve=True, decided_by="web:ann", channel="web", args_digest=rec.args_digest,
                             passkey=assertion),
        )  # fmt: skip
        assert done.state == State.APPROVED
        seal = await store.calls.decision_signature(rec.id)
        assert isinstance(seal, dict) and seal["at"] == done.decided_at
        assert await holder.verify_approval(rec.id) is None  # signed by the trusted key, passkey checked again
        assert await service.verify_approval(rec.id) is None
        with _connect(pg_admin_dsn) as c:  # the signed statement's decider changed behind the store's back
            c.execute("SET session_replication_role = replica")
            c.execute("UPDATE calls SET decided_by = 'web:mallory' WHERE id = %s", (rec.id,))
        assert await holder.verify_approval(rec.id) is not None


async def test_the_approval_service_recovers_a_dead_gatekeepers_calls(urls: tuple[str, str], pg_admin_dsn: str) -> None:
    from mcp_gatekeeper.models import NewCall, State
    from mcp_gatekeeper.store import Store

    gk, ap = urls
    clock = SystemClock()
    async with Store.open(gk, clock) as store:
        iid = await store.register_instance("team")
        rec = await store.insert_call(
            NewCall(upstream="shop", tool="refund", arguments={}, gate="hard", risk="high"),
            state=State.PENDING, deadline_at=clock.now() + 60,
        )  # fmt: skip
        with _connect(pg_admin_dsn) as c:  # the gatekeeper "dies": its pid is gone
            c.execute("UPDATE instances SET pid = 2147483000 WHERE id = %s", (iid,))
        async with Store.open(ap, clock) as service:
            await service.register_instance("ui")
            assert await service.recover_orphans() == 1
            assert (await service.get(rec.id)).state == State.ORPHANED


async def test_the_chat_cards_nonces_work_on_the_gatekeeper_role_and_a_click_there_cannot_approve(
    urls: tuple[str, str],
) -> None:
    """MCP Apps: the gatekeeper mints and spends the card's nonces; but the decision a click would make goes
    through ``decide``, which its role cannot call (in team mode a decision comes from the approval service)."""
    from mcp_gatekeeper.models import NewCall, State
    from mcp_gatekeeper.store import Store

    gk, _ = urls
    clock = SystemClock()
    async with Store.open(gk, clock) as store:
        rec = await store.insert_call(
            NewCall(upstream="shop", tool="refund", arguments={"a": 1}, gate="hard", risk="high"),
            state=State.PENDING, deadline_at=clock.now() + 60,
        )  # fmt: skip
        await store.add_app_nonce("h" * 64, call_id=rec.id, args_digest=rec.args_digest, principal="p",
                                  expires_at=clock.now() + 60)  # fmt: skip
        assert (await store.app_nonce("h" * 64)) is not None
        assert await store.spend_app_nonce("h" * 64, now=clock.now())
        assert not await store.spend_app_nonce("h" * 64, now=clock.now())  # once
        await store.forget_app_nonces(before=clock.now() + 3600)
        await store.audit_app_refusal(rec.id, actor="chat", detail={"why": "test"})
        with pytest.raises(StoreError, match="permission denied"):
            await store.decide(rec.id, approve=True, decided_by="chat", channel="in-chat", reason=None,
                               modified_arguments=None, expected_digest=rec.args_digest)  # fmt: skip
        assert (await store.get(rec.id)).state == State.PENDING


async def test_the_gatekeeper_role_pins_tools_and_keeps_their_definitions(urls: tuple[str, str]) -> None:
    from mcp_gatekeeper.store import Store

    gk, _ = urls
    async with Store.open(gk, SystemClock()) as store:
        pins = await store.check_pins("shop", {"refund": ("h1", {"name": "refund"})})
        assert pins["refund"].hash == "h1"
        pins = await store.check_pins("shop", {"refund": ("h2", {"name": "refund", "x": 1})})  # changed: quarantined
        assert pins["refund"].pending_hash == "h2"
        assert set(await store.tool_definitions(["h1", "h2"])) == {"h1", "h2"}


async def test_the_gatekeeper_role_cannot_touch_reviewer_accounts_or_count_an_approval(
    team: tuple[Roles, InitReport],
) -> None:
    """Team mode's accounts and named approvals are the approval service's: an agent holding its gatekeeper's
    credentials cannot read a password hash, make itself a reviewer, or add an approval to a quorum."""
    roles, report = team
    cid = _insert_pending(report.new_role_urls[roles.gatekeeper])
    with _connect(report.new_role_urls[roles.gatekeeper]) as c:
        for statement in (
            "SELECT password_hash FROM reviewers",
            "INSERT INTO reviewers (name, role, groups, principals, password_hash, created_at, created_by,"
            " password_changed_at) VALUES ('mallory', 'admin', '[]', '[]', 'x', 1, 'x', 1)",
            "UPDATE reviewers SET password_hash = 'x'",
            f"INSERT INTO call_approvals (call_id, reviewer, proposal_digest, at) VALUES ('{cid}', 'alice', 'd1', 1)",
            "DELETE FROM login_attempts",
            "UPDATE web_sessions SET account = 'alice'",
        ):
            assert _refusal(c, statement) == "42501", statement  # insufficient_privilege
    with _connect(report.new_role_urls[roles.approver]) as c:
        assert _refusal(c, "SELECT count(*) FROM reviewers") == "ran"
        assert (
            _refusal(
                c,
                f"INSERT INTO call_approvals (call_id, reviewer, proposal_digest, at) VALUES ('{cid}', 'alice', 'd1', 1)",
            )
            == "ran"
        )


async def test_quorum_steps_signed_by_the_service_are_counted_by_the_gatekeepers_role(
    urls: tuple[str, str], tmp_path: Path
) -> None:
    """``0014_quorum_steps`` on PostgreSQL: the service (approver role) signs each step of a passkey quorum, each
    with its approver's own assertion; the holder (gatekeeper role, trusting only the service's public key) reads
    and counts them. A second step written by the approver role straight into ``call_approvals`` (a copy of the
    first approver's, renamed) makes the service finish the quorum, and the holder refuses it."""
    from softauthn import SoftAuthenticator, as_response

    from mcp_gatekeeper.config import parse_config
    from mcp_gatekeeper.gate import Gate
    from mcp_gatekeeper.models import NewCall, State
    from mcp_gatekeeper.passkeys import RelyingParty, challenge_for
    from mcp_gatekeeper.policy import Policy
    from mcp_gatekeeper.signatures import DecisionKeys, public_text
    from mcp_gatekeeper.store import Store
    from mcp_gatekeeper.team import TeamDesk

    gk, ap = urls
    clock = SystemClock()
    policy = Policy(parse_config(
        '[ui]\nautostart = false\npublic_url = "https://gk.example.com"\n'
        '[[rules]]\nname = "refunds"\ntool = "issue_refund"\ngate = "hard"\napprovals = 2\nconfirm = "passkey"\n'
    ))  # fmt: skip
    (tmp_path / "service").mkdir()
    (tmp_path / "holder").mkdir()
    service_keys = DecisionKeys.for_home(tmp_path / "service")
    holder_keys = DecisionKeys.for_home(tmp_path / "holder", decision_keys=[public_text(service_keys.signer().public)])
    rp = RelyingParty.from_url("https://gk.example.com")
    async with Store.open(gk, clock) as store, Store.open(ap, clock) as service_store:
        holder = Gate(store, policy, clock, sweep_interval=None, keys=holder_keys)
        service = Gate(service_store, policy, clock, sweep_interval=None, keys=service_keys)
        desk = TeamDesk(service_store, service, policy)
        auths = {}
        for name in ("alice", "bob"):
            await service_store.reviewers.add(
                name, role="reviewer", groups=[], principals=[], password_hash="x", by="cli:root", channel="cli"
            )
            auths[name] = SoftAuthenticator(rp, name)
            assert await service_store.passkeys.add(auths[name].credential(), channel="web")

        async def approve(name: str, call_id: str, args_digest: str) -> Any:
            who = await service_store.reviewers.get(name)
            assert who is not None
            assertion = as_response(auths[name].assertion(challenge_for(call_id, args_digest)))
            return await desk.approve(
                call_id, who, seen_digest=args_digest, arguments=None, session=None, passkey=assertion
            )

        calls = []
        for amount in (40000, 50000):
            calls.append(await store.insert_call(
                NewCall(upstream="shop", tool="issue_refund", arguments={"amount": amount}, gate="hard",
                        risk="critical", rule="refunds"),
                state=State.PENDING, deadline_at=clock.now() + 60,
            ))  # fmt: skip
        honest, forged = calls
        assert not (await approve("alice", honest.id, honest.args_digest)).decided
        assert (await approve("bob", honest.id, honest.args_digest)).decided
        assert [(s.reviewer, s.step) for s in await store.approvals.steps(honest.id)] == [("alice", 1), ("bob", 2)]
        assert await holder.verify_approval(honest.id) is None

        await approve("alice", forged.id, forged.args_digest)
        with _connect(ap) as c:  # the approver's role, past the service
            c.execute(
                "INSERT INTO call_approvals (call_id, reviewer, proposal_digest, arguments, session, at, round, step,"
                " channel, signature, passkey) SELECT call_id, 'bob', proposal_digest, arguments, session, at, round,"
                " 2, channel, signature, passkey FROM call_approvals WHERE call_id = %s",
                (forged.id,),
            )
        # the service's gate will not decide on a step whose passkey is not bob's; its signature is not bob's either
        from mcp_gatekeeper.errors import NotAllowedError
        from mcp_gatekeeper.passkeys import PasskeyError

        with pytest.raises((PasskeyError, NotAllowedError)):
            await approve("alice", forged.id, forged.args_digest)
        assert (await store.get(forged.id)).state == State.PENDING
        why = await holder.verify_steps(forged, forged.args_digest, need=2, passkeys=True)
        assert why is not None and "1 valid signed step" in why, why
