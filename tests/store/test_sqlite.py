"""The SQLite store against real SQLite files (what is particular to SQLite; the contract is test_contract.py): CAS decisions, races across connections, audit chain, schema, recovery."""

from __future__ import annotations

import itertools
import os
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.errors import AlreadyDecidedError, CallNotFoundError, StoreError
from mcp_gatekeeper.models import CallRecord, NewCall, State, digest
from mcp_gatekeeper.store import Store

pytestmark = pytest.mark.anyio

DECISION_EVENTS = ("approved", "rejected")


def new_call(**overrides: Any) -> NewCall:
    fields: dict[str, Any] = {
        "upstream": "shop",
        "tool": "issue_refund",
        "arguments": {"order_id": "A-17", "amount": 40, "currency": "EUR"},
        "gate": "hard",
        "risk": "high",
        "rule": "refunds",
        "summary": "Refund 40 EUR on order A-17",
    }
    fields.update(overrides)
    return NewCall(**fields)


async def hold(store: Store, clock: FakeClock, timeout: float = 60.0, **overrides: Any) -> CallRecord:
    return await store.insert_call(new_call(**overrides), state=State.PENDING, deadline_at=clock.now() + timeout)


async def decide(store: Store, call_id: str, *, approve: bool = True, **kw: Any) -> CallRecord:
    return await store.decide(
        call_id,
        approve=approve,
        decided_by=kw.pop("decided_by", "ann"),
        channel=kw.pop("channel", "cli"),
        reason=kw.pop("reason", None),
        modified_arguments=kw.pop("modified_arguments", None),
        expected_digest=kw.pop("expected_digest", None),
    )


def raw(path: Path) -> sqlite3.Connection:
    """Another process's view of the file, outside the store (for tampering and checking)."""
    return sqlite3.connect(path, isolation_level=None)


def dead_pid() -> int:
    """The pid of a child that has exited and been reaped: no process has it now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    return proc.pid


# ---------------------------------------------------------------------------------------------- decide (CAS)


async def test_first_decision_wins_second_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "gk.db", clock) as store:
        rec = await hold(store, clock)
        assert rec.state == State.PENDING
        won = await decide(store, rec.id, approve=True, decided_by="ann", reason="looks fine")
        assert (won.state, won.decided_by, won.reason) == (State.APPROVED, "ann", "looks fine")
        assert won.decided_at == clock.now()
        with pytest.raises(AlreadyDecidedError) as info:
            await decide(store, rec.id, approve=False, decided_by="bob")
        assert info.value.why == "decided"
        assert info.value.state == State.APPROVED
        after = await store.get(rec.id)
        assert (after.state, after.decided_by) == (State.APPROVED, "ann")
        events = [e.event for e in await store.audit_events(call_id=rec.id)]
        assert events == ["held", "approved"]


async def test_reject_is_a_decision_too(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "gk.db", clock) as store:
        rec = await hold(store, clock)
        done = await decide(store, rec.id, approve=False, reason="too much")
        assert (done.state, done.reason) == (State.REJECTED, "too much")
        with pytest.raises(AlreadyDecidedError) as info:
            await decide(store, rec.id, approve=True)
        assert (info.value.why, info.value.state) == ("decided", State.REJECTED)


async def test_stale_digest_is_refused_and_the_call_stays_pending(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "gk.db", clock) as store:
        rec = await hold(store, clock)
        with pytest.raises(AlreadyDecidedError) as info:
            await decide(store, rec.id, expected_digest=digest({"order_id": "A-17", "amount": 4000}))
        assert info.value.why == "stale_digest"
        after = await store.get(rec.id)
        assert after.state == State.PENDING
        assert (after.decided_at, after.decided_by) == (None, None)
        assert [e.event for e in await store.audit_events(call_id=rec.id)] == ["held"]
        # the digest of what was really held is accepted
        assert (await decide(store, rec.id, expected_digest=rec.args_digest)).state == State.APPROVED


@pytest.mark.parametrize("past", [60.0, 61.0, 3600.0])
async def test_a_decision_after_the_deadline_is_refused_as_expired(tmp_path: Path, past: float) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "gk.db", clock) as store:
        rec = await hold(store, clock, timeout=60.0)
        clock.advance(past)
        with pytest.raises(AlreadyDecidedError) as info:
            await decide(store, rec.id)
        assert info.value.why == "expired"
        assert (await store.get(rec.id)).state == State.PENDING  # expiring is the gate's job, not decide's
        assert [e.event for e in await store.audit_events(call_id=rec.id)] == ["held"]


async def test_a_decision_just_before_the_deadline_counts(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "gk.db", clock) as store:
        rec = await hold(store, clock, timeout=60.0)
        clock.advance(59.5)
        assert (await decide(store, rec.id)).state == State.APPROVED


async def test_unknown_id_is_not_found(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "gk.db", clock) as store:
        await hold(store, clock)
        with pytest.raises(CallNotFoundError):
            await decide(store, "f" * 26)
        with pytest.raises(CallNotFoundError):
            await store.get("f" * 26)
        with pytest.raises(CallNotFoundError):
            await store.find("f" * 26)


async def test_find_by_prefix_and_refuse_ambiguous_or_malformed(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "gk.db", clock) as store:
        # 17 random hex ids: at least two share their first character (pigeonhole)
        recs = [await hold(store, clock, arguments={"n": i}) for i in range(17)]
        firsts = Counter(r.id[0] for r in recs)
        shared = next(ch for ch, n in firsts.items() if n > 1)
        with pytest.raises(CallNotFoundError):
            await store.find(shared)
        for rec in recs:
            assert (await store.find(rec.id)).id == rec.id
            assert (await store.find(rec.id[:20])).id == rec.id
            assert (await store.find(f"  {rec.id[:20].upper()} ")).id == rec.id
        for bad in ["", "   ", "xyz", "a%", "_", rec.id + "0"]:
            with pytest.raises(CallNotFoundError):
                await store.find(bad)


# ---------------------------------------------------------------------------------------------- races


class Race:
    """``n`` deciders on one call, each on one of the stores, released together once all have arrived."""

    def __init__(self, stores: tuple[Store, ...], call_id: str, n: int) -> None:
        self.stores, self.call_id, self.n = stores, call_id, n
        self.arrived = 0
        self.all_arrived = anyio.Event()
        self.barrier = anyio.Event()
        self.winners: list[tuple[int, CallRecord]] = []
        self.losers: list[AlreadyDecidedError] = []

    async def decider(self, i: int) -> None:
        self.arrived += 1
        if self.arrived == self.n:
            self.all_arrived.set()
        await self.barrier.wait()
        store = self.stores[i % len(self.stores)]
        try:
            done = await decide(store, self.call_id, approve=i % 3 != 1, decided_by=f"reviewer-{i}")
        except AlreadyDecidedError as e:
            self.losers.append(e)
        else:
            self.winners.append((i, done))

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for i in range(self.n):
                tg.start_soon(self.decider, i)
            await self.all_arrived.wait()
            self.barrier.set()


@pytest.mark.parametrize("deciders", [2, 8])
async def test_concurrent_deciders_across_two_connections_exactly_one_wins(tmp_path: Path, deciders: int) -> None:
    rounds = 200
    clock = FakeClock()
    path = tmp_path / "gk.db"
    # two Store.open of one file: two processes' views, each with its own connection and lock
    async with Store.open(path, clock) as one, Store.open(path, clock) as two:
        stores = (one, two)
        ids: list[str] = []
        for n in range(rounds):
            rec = await hold(stores[n % 2], clock, arguments={"round": n})
            ids.append(rec.id)
            race = Race(stores, rec.id, deciders)
            with anyio.fail_after(5):
                await race.run()
            assert len(race.winners) == 1, f"round {n}: {len(race.winners)} winners"
            assert len(race.losers) == deciders - 1
            assert {e.why for e in race.losers} == {"decided"}
            winner, done = race.winners[0]
            assert done.decided_by == f"reviewer-{winner}"
            stored = await stores[(n + 1) % 2].get(rec.id)
            assert stored.decided_by == f"reviewer-{winner}"
            assert stored.state == (State.APPROVED if winner % 3 != 1 else State.REJECTED)

        with raw(path) as db:
            rows = db.execute(
                "SELECT call_id, COUNT(*) FROM audit WHERE event IN (?, ?) GROUP BY call_id", DECISION_EVENTS
            ).fetchall()
        per_call = dict(rows)
        assert set(per_call) == set(ids)
        assert set(per_call.values()) == {1}
        ok, count, _ = await one.verify_audit()
        assert ok
        assert count == 2 * rounds


# ---------------------------------------------------------------------------------------------- audit chain


async def _busy_history(store: Store, clock: FakeClock) -> int:
    """Held, decided, expired, cancelled and forwarded calls: the audit gets every kind of event."""
    for i in range(12):
        rec = await hold(store, clock, arguments={"i": i})
        clock.advance(1)
        if i % 4 == 0:
            await decide(store, rec.id, approve=True, reason=f"ok {i}")
            await store.transition(rec.id, [State.APPROVED], State.FORWARDING)
            await store.transition(rec.id, [State.FORWARDING], State.FORWARDED, result={"content": []})
        elif i % 4 == 1:
            await decide(store, rec.id, approve=False, reason="no")
        elif i % 4 == 2:
            await store.transition(rec.id, [State.PENDING], State.EXPIRED, channel="timeout")
        else:
            await store.transition(rec.id, [State.PENDING], State.CANCELLED, channel="client")
    await store.insert_call(new_call(tool="read_file", gate="allow", risk="low"), state=State.ALLOWED)
    await store.insert_call(new_call(gate="deny"), state=State.DENIED, reason="policy says no")
    ok, count, _ = await store.verify_audit()
    assert ok
    return count


async def test_audit_chain_verifies_after_many_events(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "gk.db", clock) as store:
        count = await _busy_history(store, clock)
        # 12 held + 3x(approved, forwarding, forwarded) + 3 rejected + 3 expired + 3 cancelled + allowed + denied
        assert count == 12 + 9 + 3 + 3 + 3 + 2
        events = await store.audit_events(limit=1000)
        assert [e.seq for e in events] == list(range(1, count + 1))
        assert all(e.prev_hash == p.hash for p, e in itertools.pairwise(events))


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("detail", '{"reason":"forged"}'),
        ("event", "approved"),
        ("actor", "mallory"),
        ("args_digest", "0" * 64),
        ("at", 0.0),
        ("call_id", "0" * 26),
    ],
)
async def test_altering_an_event_is_detected_and_named(tmp_path: Path, column: str, value: Any) -> None:
    clock = FakeClock()
    path = tmp_path / "gk.db"
    async with Store.open(path, clock) as store:
        total = await _busy_history(store, clock)
        victim = 7
        with raw(path) as db:
            db.execute(f"UPDATE audit SET {column} = ? WHERE seq = ?", (value, victim))  # noqa: S608 - fixed names
        ok, count, message = await store.verify_audit()
        assert not ok
        assert count == victim - 1 < total
        assert re.search(rf"\bevent {victim}\b", message), message


async def test_deleting_an_event_is_detected_and_named(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "gk.db"
    async with Store.open(path, clock) as store:
        await _busy_history(store, clock)
        with raw(path) as db:
            db.execute("DELETE FROM audit WHERE seq = 5")
        ok, count, message = await store.verify_audit()
        assert not ok
        assert count == 4
        assert re.search(r"\bevent 6\b", message), message  # the first event whose link no longer holds


async def test_the_chain_keeps_going_after_reopening(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "gk.db"
    async with Store.open(path, clock) as store:
        first = await _busy_history(store, clock)
    async with Store.open(path, clock) as store:
        await decide(store, (await hold(store, clock)).id)
        ok, count, _ = await store.verify_audit()
        assert ok
        assert count == first + 2


# ---------------------------------------------------------------------------------------------- schema and files


async def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "gk.db"
    async with Store.open(path, clock) as store:
        rec = await hold(store, clock)
    with raw(path) as db:
        db.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_from_the_future', 0)")
    with pytest.raises(StoreError) as info:
        async with Store.open(path, clock):
            pytest.fail("a newer schema must not be opened")
    assert "9999_from_the_future" in str(info.value)
    with raw(path) as db:
        assert db.execute("SELECT state FROM calls WHERE id = ?", (rec.id,)).fetchone() == ("pending",)
        names = {r[0] for r in db.execute("SELECT name FROM schema_migrations")}
    assert "9999_from_the_future" in names


def _foreign_db(path: Path) -> None:
    with raw(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT)")
        db.execute("INSERT INTO customers (email) VALUES ('ann@example.com')")
    assert not Path(f"{path}-wal").exists()


async def test_a_foreign_sqlite_database_is_refused_and_its_data_kept(tmp_path: Path) -> None:
    path = tmp_path / "someone-elses.db"
    _foreign_db(path)
    with pytest.raises(StoreError):
        async with Store.open(path, FakeClock()):
            pytest.fail("a foreign database must not be opened")
    with raw(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"customers"}
        assert db.execute("SELECT email FROM customers").fetchall() == [("ann@example.com",)]


async def test_a_foreign_sqlite_database_is_left_byte_for_byte_untouched(tmp_path: Path) -> None:
    path = tmp_path / "someone-elses.db"
    _foreign_db(path)
    before = path.read_bytes()
    with pytest.raises(StoreError):
        async with Store.open(path, FakeClock()):
            pytest.fail("a foreign database must not be opened")
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a database, it is a shopping list\n" * 200,
        bytes(range(256)) * 64,
        b"SQLite format 3\x00" + b"\xff" * 4080,
    ],
    ids=["text", "binary", "bad-header"],
)
async def test_a_file_that_is_not_a_database_is_refused_and_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "gk.db"
    path.write_bytes(content)
    with pytest.raises(StoreError):
        async with Store.open(path, FakeClock()):
            pytest.fail("a non-database file must not be opened")
    assert path.read_bytes() == content


async def test_wal_and_full_sync_for_what_must_survive_a_power_loss(tmp_path: Path) -> None:
    path = tmp_path / "gk.db"
    async with Store.open(path, FakeClock()) as store:
        with raw(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        # synchronous and busy_timeout are per connection: look from inside the store's own transactions
        seen: dict[str, tuple[int, int]] = {}

        def probe(name: str) -> Any:
            def body(c: sqlite3.Connection) -> None:
                sync = c.execute("PRAGMA synchronous").fetchone()[0]
                busy = c.execute("PRAGMA busy_timeout").fetchone()[0]
                seen[name] = (sync, busy)

            return body

        await store.engine.write(
            probe("durable")
        )  # every step of a held call: fsynced (2 = FULL), off the loop (waits)
        await store.engine.write(probe("lazy"), fsync=False)  # a call that passes through: 1 = NORMAL, on the loop
        assert seen == {"durable": (2, 5000), "lazy": (1, 0)}
        # which records take which: a held call's are durable, the record of a call that passes through is not
        flags: list[bool] = []
        original = store.engine.write

        async def spy(fn: Any, *, fsync: bool = True) -> Any:
            flags.append(fsync)
            return await original(fn, fsync=fsync)

        store.engine.write = spy  # type: ignore[method-assign]  # observe the store's own choice per transaction
        new = NewCall(upstream="u", tool="t", arguments={}, gate="hard", risk="high")
        await store.insert_call(new, state=State.PENDING)
        allowed = await store.insert_call(replace(new, gate="allow", risk="low"), state=State.ALLOWED)
        await store.finish_call(
            allowed.id, State.ALLOWED, State.FORWARDED, result={}, error=None, detail={}, args_digest=new.args_digest
        )
        assert flags == [True, False, False]
        store.fsync_every_call = True
        await store.insert_call(replace(new, gate="allow", risk="low"), state=State.ALLOWED)
        assert flags[-1] is True
        [(inline_busy,)] = await store.engine.read("SELECT timeout FROM pragma_busy_timeout")
        assert inline_busy == 0  # inline work fails fast on a locked database and falls back to the thread
        assert await store.integrity_check() == "ok"


def test_the_store_has_no_generic_query() -> None:
    """Every read the page and reports make is a named method (store/queries.py); no SQL comes from outside."""
    assert not hasattr(Store, "query")


async def test_data_version_changes_when_another_connection_commits(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "gk.db"
    async with Store.open(path, clock) as watcher, Store.open(path, clock) as writer:
        before = await watcher.data_version()
        await hold(watcher, clock)
        assert await watcher.data_version() == before  # its own commits do not count
        await hold(writer, clock)
        assert await watcher.data_version() != before


# ---------------------------------------------------------------------------------------------- orphans


async def test_recovery_never_touches_a_live_neighbour_and_recovers_a_dead_one(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "gk.db"
    async with Store.open(path, clock) as a:
        a_id = await a.register_instance("proxy shop")
        pending = await hold(a, clock)
        forwarding = await hold(a, clock, arguments={"order_id": "B-2", "amount": 5})
        await decide(a, forwarding.id)
        assert await a.transition(forwarding.id, [State.APPROVED], State.FORWARDING) is not None
        finished = await hold(a, clock, arguments={"order_id": "C-3", "amount": 1})
        await decide(a, finished.id, approve=False)

        async with Store.open(path, clock) as b:
            await b.register_instance("proxy files")
            events_before = len(await b.audit_events(limit=10_000))
            assert await b.recover_orphans() == 0  # A's pid is ours: alive
            states = await b.states_of([pending.id, forwarding.id, finished.id])
            assert states == {
                pending.id: State.PENDING,
                forwarding.id: State.FORWARDING,
                finished.id: State.REJECTED,
            }
            assert len(await b.audit_events(limit=10_000)) == events_before

            with raw(path) as db:
                db.execute("UPDATE instances SET pid = ? WHERE id = ?", (dead_pid(), a_id))
            assert await b.recover_orphans() == 2
            assert await b.states_of([pending.id, forwarding.id, finished.id]) == {
                pending.id: State.ORPHANED,
                forwarding.id: State.OUTCOME_UNKNOWN,
                finished.id: State.REJECTED,
            }
            orphaned = await b.get(pending.id)
            assert orphaned.error
            assert orphaned.finished_at == clock.now()
            assert [e.event for e in await b.audit_events(call_id=pending.id)][-1] == "orphaned"
            assert [e.event for e in await b.audit_events(call_id=forwarding.id)][-1] == "outcome_unknown"
            assert len(await b.audit_events(limit=10_000)) == events_before + 2
            ok, _, message = await b.verify_audit()
            assert ok, message
            with pytest.raises(AlreadyDecidedError):
                await decide(b, pending.id)
            assert await b.recover_orphans() == 0  # idempotent


async def test_a_stopping_process_orphans_its_own_pending_calls(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "gk.db"
    async with Store.open(path, clock) as a:
        await a.register_instance("proxy")
        rec = await hold(a, clock)
    async with Store.open(path, clock) as b:
        assert (await b.get(rec.id)).state == State.ORPHANED
        assert (await b.verify_audit())[0]


async def test_checkpoints_run_off_the_commits_and_keep_the_wal_bounded(tmp_path: Path) -> None:
    path = tmp_path / "gk.db"
    wal = Path(f"{path}-wal")
    new = NewCall(upstream="u", tool="echo", arguments={"text": "x" * 2000}, gate="allow", risk="low")

    async def pass_through(store: Store, n: int) -> None:
        for _ in range(n):
            rec = await store.insert_call(new, state=State.ALLOWED)
            await (
                anyio.lowlevel.checkpoint()
            )  # a real call waits for its upstream here (store work itself need not yield)
            await store.finish_call(
                rec.id, State.ALLOWED, State.FORWARDED, result={"content": []}, error=None, detail={},
                args_digest=rec.args_digest,
            )  # fmt: skip

    async with Store.open(path, FakeClock()) as store:

        async def autocheckpoint() -> int:
            pages: int = await store.engine.run(
                lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0], inline=True
            )
            return pages

        assert await autocheckpoint() == 1000  # without the task: SQLite's own, in the commits
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.run_checkpoints)
            await pass_through(store, 1)
            assert await autocheckpoint() == 0  # the task has taken over
            await pass_through(store, 600)
            bounded = wal.stat().st_size
            tg.cancel_scope.cancel()
        assert await autocheckpoint() == 1000  # handed back when the task stops
        # without checkpoints, as a control: the same work grows the WAL by every commit
        await store.engine.run(lambda c: c.execute("PRAGMA wal_autocheckpoint = 0"), inline=True)
        await store.engine.run(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(), inline=False)
        await pass_through(store, 600)
        unbounded = wal.stat().st_size
        assert await store.integrity_check() == "ok"
    assert bounded * 3 < unbounded, (bounded, unbounded)


async def test_concurrent_pass_through_records_share_commits_and_stay_chained(tmp_path: Path) -> None:
    new = NewCall(upstream="u", tool="echo", arguments={"text": "x"}, gate="allow", risk="low")
    async with Store.open(tmp_path / "gk.db", FakeClock()) as store:
        ids: list[str] = []

        async def call(i: int) -> None:
            rec = await store.insert_call(replace(new, arguments={"text": f"x{i}"}), state=State.ALLOWED)
            ids.append(rec.id)
            await anyio.lowlevel.checkpoint()  # the upstream works
            assert await store.finish_call(
                rec.id,
                State.ALLOWED,
                State.FORWARDED,
                result={"i": i},
                error=None,
                detail={},
                args_digest=rec.args_digest,
            )

        before = store.engine.commits
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(call, i)
        commits = store.engine.commits - before
        rows = await store.engine.read("SELECT state, arguments, result FROM calls")
        ok, events, _ = await store.verify_audit()
    assert len(set(ids)) == 200
    assert sorted(rows) == sorted(("forwarded", f'{{"text":"x{i}"}}', f'{{"i":{i}}}') for i in range(200))
    assert (ok, events) == (True, 400)  # one "allowed" and one "forwarded" event per call, chained
    assert commits < 40, commits  # 400 transactions, grouped by turn of the event loop


async def test_a_failing_write_in_a_group_fails_alone(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "gk.db", FakeClock()) as store:

        def good(i: int) -> Any:
            def body(c: sqlite3.Connection) -> int:
                c.execute("INSERT INTO used_states (nonce, call_id, used_at) VALUES (?, 'c', 0)", (f"good{i}",))
                return i

            return body

        def bad(c: sqlite3.Connection) -> int:
            c.execute("INSERT INTO used_states (nonce, call_id, used_at) VALUES ('bad', 'c', 0)")
            c.execute("INSERT INTO used_states (nonce, call_id, used_at) VALUES ('good3', 'c', 0)")  # taken: fails
            return -1

        results: dict[int, Any] = {}

        async def run(i: int, fn: Any) -> None:
            try:
                results[i] = await store.engine.write(fn, fsync=False)
            except StoreError as e:
                results[i] = e

        before = store.engine.commits
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(run, i, good(i))
            tg.start_soon(run, 99, bad)
        nonces = {r[0] for r in await store.engine.read("SELECT nonce FROM used_states")}
    assert store.engine.commits - before < 11  # they were grouped
    assert {i: results[i] for i in range(10)} == {i: i for i in range(10)}
    assert isinstance(results[99], StoreError) and "UNIQUE" in str(results[99])
    assert nonces == {f"good{i}" for i in range(10)}  # the failing body left nothing behind, the others all landed


# ---------------------------------------------------------------------------------------------- calls belong to a client

ANN = {"name": "py-agent", "principal": "stdio:ann/py-agent"}
MALLORY = {"name": "py-agent", "principal": "agent:mallory"}


async def test_a_call_whose_client_was_told_to_retry_outlives_its_process(tmp_path: Path) -> None:
    """Released (no owner, same state) if the client was told to retry; orphaned if not; unknown if forwarding."""
    clock = FakeClock()
    path = tmp_path / "gk.db"
    async with Store.open(path, clock) as a:
        a_id = await a.register_instance("wrap shop")
        told = await hold(a, clock, client=ANN)
        await a.mark_retry_offered(told.id, strategy="pending")
        approved = await hold(a, clock, client=ANN, arguments={"order_id": "B", "amount": 1})
        await a.mark_retry_offered(approved.id, strategy="pending")
        await decide(a, approved.id)
        untold = await hold(a, clock, client=ANN, arguments={"order_id": "C", "amount": 2})
        running = await hold(a, clock, client=ANN, arguments={"order_id": "D", "amount": 3})
        await a.mark_retry_offered(running.id, strategy="pending")
        await decide(a, running.id)
        assert await a.transition(running.id, [State.APPROVED], State.FORWARDING) is not None
    async with Store.open(path, clock) as b:  # A stopped: its calls were settled as it went
        b_id = await b.register_instance("wrap shop")
        assert await b.states_of([told.id, approved.id, untold.id, running.id]) == {
            told.id: State.PENDING,
            approved.id: State.APPROVED,
            untold.id: State.ORPHANED,
            running.id: State.OUTCOME_UNKNOWN,
        }
        assert (await b.get(told.id)).instance_id is None
        assert await b.holder_instance(told.id) == a_id  # its holder's config still applies to deciding it
        assert [e.event for e in await b.audit_events(call_id=told.id)][-1] == "released"
        # still decidable until its deadline, by anyone
        assert (await decide(b, told.id)).state == State.APPROVED
        # the forwarding process becomes the owner: if it dies now, recovery finds it
        claimed = await b.transition(told.id, [State.APPROVED], State.FORWARDING, instance_id=b_id)
        assert claimed is not None and claimed.instance_id == b_id
        # nobody comes back for the other approved call: after deadline + grace it is orphaned, never run
        assert await b.abandon_unclaimed(clock.now(), 600.0) == []
        clock.advance(60 + 600)
        assert await b.abandon_unclaimed(clock.now(), 600.0) == [approved.id]
        assert (await b.get(approved.id)).state == State.ORPHANED
        ok, _, message = await b.verify_audit()
        assert ok, message


async def test_a_killed_holder_releases_told_calls_and_orphans_the_rest(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "gk.db"
    async with Store.open(path, clock) as a, Store.open(path, clock) as b:
        a_id = await a.register_instance("wrap shop")
        told = await hold(a, clock, client=ANN)
        await a.mark_retry_offered(told.id, strategy="pending")
        untold = await hold(a, clock, client=ANN, arguments={"order_id": "C", "amount": 2})
        await b.register_instance("wrap shop")
        with raw(path) as db:
            db.execute("UPDATE instances SET pid = ? WHERE id = ?", (dead_pid(), a_id))
        assert await b.recover_orphans() == 1  # only the untold one counts as lost
        assert await b.states_of([told.id, untold.id]) == {told.id: State.PENDING, untold.id: State.ORPHANED}
        assert await b.recover_orphans() == 0  # idempotent: a released call has no owner to recover from


async def test_a_retry_attaches_only_within_its_principal(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "gk.db", clock) as store:
        rec = await hold(store, clock, client=ANN)
        lookup = {"now": clock.now(), "grace": 600.0}
        args = ("shop", "issue_refund", rec.args_digest)
        assert await store.find_retry(*args, principal=ANN["principal"], **lookup) is None  # not told to retry yet
        await store.mark_retry_offered(rec.id, strategy="pending")
        found = await store.find_retry(*args, principal=ANN["principal"], **lookup)
        assert found is not None and found.id == rec.id
        # another principal, no principal, another upstream, other arguments: never this call
        for principal in (MALLORY["principal"], None, "", "stdio:ann/other-agent"):
            assert await store.find_retry(*args, principal=principal, **lookup) is None
        assert (
            await store.find_retry("bank", "issue_refund", rec.args_digest, principal=ANN["principal"], **lookup)
            is None
        )
        assert await store.find_retry("shop", "issue_refund", "0" * 64, principal=ANN["principal"], **lookup) is None


async def test_status_lookup_hides_other_principals_calls_even_through_ambiguity(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "gk.db", clock) as store:
        mine = await hold(store, clock, client=ANN)
        theirs = [await hold(store, clock, client=MALLORY, arguments={"n": 0})]
        while theirs[-1].id[0] != mine.id[0]:  # someone else's call shares mine's first character
            theirs.append(await hold(store, clock, client=MALLORY, arguments={"n": len(theirs)}))
        legacy = await hold(store, clock, arguments={"n": "no principal"})
        own = {"principal": ANN["principal"], "upstreams": ["shop"]}
        with pytest.raises(CallNotFoundError, match="ambiguous"):
            await store.find(mine.id[:1])  # unfiltered, the prefix is ambiguous...
        assert (await store.find_for(mine.id[:1], **own)).id == mine.id  # ...among my calls it is not: nothing leaks
        assert (await store.find_for(mine.id[:6].upper(), **own)).id == mine.id
        answers = set()
        for other in [*theirs, legacy]:
            with pytest.raises(CallNotFoundError) as info:
                await store.find_for(other.id, **own)
            answers.add(str(info.value).replace(other.id, "ID"))
        with pytest.raises(CallNotFoundError) as info:
            await store.find_for("ab" * 13, **own)
        answers.add(str(info.value).replace("ab" * 13, "ID"))
        assert len(answers) == 1  # another client's call reads exactly like one that does not exist
        with pytest.raises(CallNotFoundError):
            await store.find_for(mine.id, principal=ANN["principal"], upstreams=["bank"])  # an upstream not served
        with pytest.raises(CallNotFoundError):
            await store.find_for(mine.id, principal=None, upstreams=["shop"])


async def test_a_database_from_before_principals_is_migrated_and_its_calls_belong_to_nobody(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "gk.db"
    async with Store.open(path, clock) as store:
        old = await hold(store, clock, client=ANN)
        await store.mark_retry_offered(old.id, strategy="pending")
    with raw(path) as db:  # as the previous version left it: no principal column, no 0006 migration
        db.execute("DROP INDEX calls_retry")
        db.execute("ALTER TABLE calls DROP COLUMN principal")
        db.execute("ALTER TABLE calls DROP COLUMN released_from")
        db.execute("DELETE FROM schema_migrations WHERE name = '0006_principal'")
        db.execute(
            "CREATE INDEX calls_retry ON calls (upstream, tool, args_digest, created_at) WHERE retry_offered = 1"
        )
    async with Store.open(path, clock) as store:
        assert (await store.get(old.id)).state == State.PENDING
        found = await store.find_retry(
            "shop", "issue_refund", old.args_digest, now=clock.now(), grace=600.0, principal=ANN["principal"]
        )
        assert found is None  # recorded without a principal: nobody's to attach to
        new = await hold(store, clock, client=ANN)
        assert await store.principal_of(new.id) == ANN["principal"]
    with raw(path) as db:
        assert "0006_principal" in {r[0] for r in db.execute("SELECT name FROM schema_migrations")}


async def test_a_sweep_with_nothing_due_is_one_read_through_the_sweep_index(tmp_path: Path) -> None:
    """Every gatekeeper sweeps every second: with calls held but nothing due, that is one indexed statement."""
    from mcp_gatekeeper.config import parse_config
    from mcp_gatekeeper.gate import Gate
    from mcp_gatekeeper.policy import Policy

    clock = FakeClock()
    async with Store.open(tmp_path / "gk.db", clock) as store:
        await store.register_instance("one")
        for i in range(50):
            await hold(store, clock, timeout=600, arguments={"n": i})
            await store.insert_call(new_call(gate="allow", arguments={"a": i}), state=State.ALLOWED)
        gate = Gate(store, Policy(parse_config("")), clock, sweep_interval=None)
        statements: list[str] = []
        from mcp_gatekeeper.store.engine import SqliteEngine

        assert isinstance(store.engine, SqliteEngine)
        conn = store.engine.connection
        await conn._execute(lambda: conn._conn.set_trace_callback(statements.append))  # type: ignore[no-untyped-call]  # aiosqlite's queue, as the engine uses it
        await gate.sweep_once()
        await conn._execute(lambda: conn._conn.set_trace_callback(None))  # type: ignore[no-untyped-call]  # as above
        reads = [s for s in statements if not s.startswith("PRAGMA")]
        assert len(reads) == 1 and reads[0].startswith("SELECT DISTINCT CASE")
        with sqlite3.connect(tmp_path / "gk.db") as db:
            plan = " ".join(str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN " + reads[0]).fetchall())
        assert "USING INDEX calls_sweep" in plan and "SCAN calls" not in plan
