"""The store's contract, whatever the backend (``backend`` fixture, tests/store/conftest.py).

Everything here goes through :class:`Store` only, except where a test plays another process or an attacker
writing the database directly (``backend.raw``). Each section is one repository of mcp_gatekeeper/store/.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.errors import AlreadyDecidedError, CallNotFoundError, NotAllowedError
from mcp_gatekeeper.models import QUARANTINE_MARK, CallRecord, NewCall, State, WebSession, digest
from mcp_gatekeeper.store import Store

if TYPE_CHECKING:
    from store.conftest import BackendUnderTest  # the fixture's type only (pytest puts tests/ on the path)

pytestmark = pytest.mark.anyio

ANN = {"name": "py-agent", "principal": "stdio:ann/py-agent"}
MALLORY = {"name": "py-agent", "principal": "agent:mallory"}


def new_call(**overrides: Any) -> NewCall:
    fields: dict[str, Any] = {
        "upstream": "shop",
        "tool": "issue_refund",
        "arguments": {"order_id": "A-17", "amount": 40},
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
        call_id, approve=approve, decided_by=kw.pop("decided_by", "ann"), channel=kw.pop("channel", "web"),
        reason=kw.pop("reason", None), modified_arguments=kw.pop("modified_arguments", None),
        expected_digest=kw.pop("expected_digest", None),
    )  # fmt: skip


async def events_of(store: Store, call_id: str) -> list[str]:
    return [e.event for e in await store.audit_events(call_id=call_id)]


# ---------------------------------------------------------------------------------------------- calls


async def test_insert_get_find_and_list(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as store:
        held = await hold(
            store, clock, client=ANN, effects={"money": "refund"}, reasons=("refunds rule",), summary="Refund for Ann"
        )
        allowed = await store.insert_call(new_call(gate="allow", risk="low", arguments={"x": 1}), state=State.ALLOWED)
        clock.advance(1)
        denied = await store.insert_call(new_call(gate="deny", arguments={"y": 2}), state=State.DENIED, reason="no")
        got = await store.get(held.id)
        assert got == held  # what insert returns is exactly what is stored
        assert (got.state, got.arguments, got.client, got.effects, got.reasons) == (
            State.PENDING, {"order_id": "A-17", "amount": 40}, ANN, {"money": "refund"}, ("refunds rule",),
        )  # fmt: skip
        assert got.args_digest == digest(got.arguments)
        assert (await store.get(denied.id)).finished_at == clock.now()  # a denial is over at once
        assert await store.find(held.id[:10].upper()) == held  # a prefix, any case
        with pytest.raises(CallNotFoundError):
            await store.get("0" * 32)
        for bad in ("", "zz", "'; --", "0" * 40):
            with pytest.raises(CallNotFoundError):
                await store.find(bad)
        assert await store.states_of([held.id, allowed.id, denied.id, "nope"]) == {
            held.id: State.PENDING, allowed.id: State.ALLOWED, denied.id: State.DENIED,
        }  # fmt: skip
        assert await store.states_of([]) == {}
        newest_first = [r.id for r in await store.list_calls()]
        assert newest_first[0] == denied.id and set(newest_first) == {held.id, allowed.id, denied.id}
        assert [r.id for r in await store.list_calls(states=["pending"])] == [held.id]
        assert [r.id for r in await store.list_calls(text="100%_")] == []  # LIKE wildcards are literal
        assert {r.id for r in await store.list_calls(text="for Ann")} == {held.id}
        oldest = await store.list_calls(oldest_first=True, limit=1)
        page2 = await store.list_calls(oldest_first=True, before=(oldest[0].created_at, oldest[0].id))
        assert oldest[0].id not in {r.id for r in page2} and len(page2) == 2
        assert await store.principal_of(held.id) == ANN["principal"]
        assert await store.principal_of("nope") is None


async def test_an_ambiguous_prefix_is_refused(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as store:
        ids = [(await hold(store, clock, arguments={"i": i})).id for i in range(40)]
        first = {i[0] for i in ids}
        shared = next(c for c in first if sum(i.startswith(c) for i in ids) > 1)
        with pytest.raises(CallNotFoundError, match="ambiguous"):
            await store.find(shared)


async def test_two_concurrent_deciders_on_two_connections_exactly_one_wins(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one, backend.open(clock) as two:
        for n in range(30):
            rec = await hold(one, clock, arguments={"round": n})
            outcomes: dict[str, Any] = {}
            go = anyio.Event()
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_decider, one, rec.id, "ann", True, go, outcomes)
                    tg.start_soon(_decider, two, rec.id, "bob", False, go, outcomes)
                    await anyio.lowlevel.checkpoint()
                    go.set()
            winners = [w for w, o in outcomes.items() if isinstance(o, CallRecord)]
            losers = [o for o in outcomes.values() if isinstance(o, AlreadyDecidedError)]
            assert len(winners) == 1 and len(losers) == 1, outcomes
            assert losers[0].why == "decided"
            stored = await two.get(rec.id)
            assert stored.decided_by == winners[0]
            assert stored.state == (State.APPROVED if winners[0] == "ann" else State.REJECTED)
            assert [e for e in await events_of(one, rec.id) if e in ("approved", "rejected")] == [stored.state.value]
        ok, _, message = await one.verify_audit()
        assert ok, message


async def _decider(
    store: Store, call_id: str, who: str, approve: bool, go: anyio.Event, outcomes: dict[str, Any]
) -> None:
    await go.wait()
    try:
        outcomes[who] = await decide(store, call_id, approve=approve, decided_by=who)
    except AlreadyDecidedError as e:
        outcomes[who] = e


async def test_a_decision_is_refused_when_late_stale_or_repeated(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as store:
        rec = await hold(store, clock)
        with pytest.raises(AlreadyDecidedError) as stale:
            await decide(store, rec.id, expected_digest=digest({"order_id": "A-17", "amount": 4000}))
        assert stale.value.why == "stale_digest"
        assert (await store.get(rec.id)).state == State.PENDING
        modified = {"order_id": "A-17", "amount": 20}
        done = await decide(store, rec.id, expected_digest=rec.args_digest, modified_arguments=modified, reason="ok")
        assert (done.state, done.modified_arguments, done.reason, done.decided_by) == (
            State.APPROVED, modified, "ok", "ann",
        )  # fmt: skip
        with pytest.raises(AlreadyDecidedError) as again:
            await decide(store, rec.id, approve=False)
        assert again.value.why == "decided"
        late = await hold(store, clock, arguments={"late": True})
        clock.advance(60)
        with pytest.raises(AlreadyDecidedError) as expired:
            await decide(store, late.id)
        assert expired.value.why == "expired"
        with pytest.raises(CallNotFoundError):
            await decide(store, "f" * 32)
        assert await store.verify_decision(rec.id) is None


async def test_an_approval_written_behind_the_stores_back_is_not_verified(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as store:
        rec = await hold(store, clock)
        backend.raw("UPDATE calls SET state = 'approved', decided_by = 'mallory' WHERE id = ?", (rec.id,))
        assert "0 approval events" in (await store.verify_decision(rec.id) or "")
        other = await hold(store, clock, arguments={"order_id": "B"})
        await decide(store, other.id, modified_arguments={"order_id": "B", "amount": 1})
        backend.raw(
            "UPDATE calls SET modified_arguments = ? WHERE id = ?", ('{"order_id":"B","amount":9999}', other.id)
        )
        assert "modified arguments differ" in (await store.verify_decision(other.id) or "")


async def test_a_transition_holds_the_write_lock_for_three_statements(
    backend: BackendUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write waits for the one before it (SQLite's write lock, PostgreSQL's audit chain lock), and a
    gatekeeper's process answers each statement in turn: a transition sends the move with its row coming back,
    the chain's tail, and the event; no read-back of the row in between."""
    clock = FakeClock()
    async with backend.open(clock) as store:
        rec = await hold(store, clock)
        await decide(store, rec.id)
        engine, sent = store.engine, []
        real = engine.write

        class Counting:
            def __init__(self, tx: Any) -> None:
                self.tx = tx

            def execute(self, statement: str, parameters: Any = (), /) -> Any:
                sent.append(statement.split()[0])
                return self.tx.execute(statement, parameters)

        async def counting(fn: Any, **kw: Any) -> Any:
            return await real(lambda tx: fn(Counting(tx)), **kw)

        monkeypatch.setattr(engine, "write", counting)
        moved = await store.transition(rec.id, [State.APPROVED], State.FORWARDING, detail={"n": 1})
        assert moved is not None and moved.state == State.FORWARDING and moved.id == rec.id
        assert moved.decided_at is not None and moved.arguments == rec.arguments  # the whole row came back
        assert sent == ["UPDATE", "SELECT", "INSERT"]
        sent.clear()
        assert await store.transition(rec.id, [State.APPROVED], State.FORWARDING) is None
        assert sent == ["UPDATE"]  # lost the compare-and-set: nothing more


async def test_transitions_are_compare_and_set(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as store:
        rec = await hold(store, clock)
        await decide(store, rec.id)
        assert await store.transition(rec.id, [State.PENDING], State.CANCELLED) is None  # not pending any more
        moved = await store.transition(rec.id, [State.APPROVED], State.FORWARDING, detail={"n": 1})
        assert moved is not None and moved.state == State.FORWARDING
        assert await store.transition(rec.id, [State.APPROVED], State.FORWARDING) is None  # only once
        with pytest.raises(ValueError, match="cannot set"):
            await store.transition(rec.id, [State.FORWARDING], State.FORWARDED, state="approved")
        assert await store.finish_call(
            rec.id, State.FORWARDING, State.FORWARDED, result={"content": [{"type": "text", "text": "done"}]},
            error=None, detail={"ms": 3}, args_digest=rec.args_digest,
        )  # fmt: skip
        assert not await store.finish_call(
            rec.id, State.FORWARDING, State.FAILED, result=None, error="late", detail={}, args_digest=rec.args_digest
        )
        done = await store.get(rec.id)
        assert (done.state, done.result, done.error) == (
            State.FORWARDED,
            {"content": [{"type": "text", "text": "done"}]},
            None,
        )
        assert done.finished_at == clock.now()
        assert await events_of(store, rec.id) == ["held", "approved", "forwarding", "forwarded"]
        # a call that was never held: its record and outcome
        allowed = await store.insert_call(new_call(gate="allow", arguments={"z": 1}), state=State.ALLOWED)
        assert await store.finish_call(
            allowed.id, State.ALLOWED, State.FAILED, result=None, error="upstream gone", detail={},
            args_digest=allowed.args_digest,
        )  # fmt: skip
        assert (await store.get(allowed.id)).error == "upstream gone"


async def test_retries_attach_only_within_their_principal(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as store:
        rec = await hold(store, clock, client=ANN)
        args = (rec.upstream, rec.tool, rec.args_digest)
        assert await store.find_retry(*args, now=clock.now(), grace=0, principal=ANN["principal"]) is None  # untold
        await store.mark_retry_offered(rec.id, strategy="pending")
        assert (await store.get(rec.id)).wait_strategy == "pending"
        found = await store.find_retry(*args, now=clock.now(), grace=0, principal=ANN["principal"])
        assert found is not None and found.id == rec.id
        assert await store.find_retry(*args, now=clock.now(), grace=0, principal=MALLORY["principal"]) is None
        assert await store.find_retry(*args, now=clock.now(), grace=0, principal=None) is None
        clock.advance(61)
        assert await store.find_retry(*args, now=clock.now(), grace=0, principal=ANN["principal"]) is None
        assert await store.find_retry(*args, now=clock.now(), grace=5, principal=ANN["principal"]) is not None
        # a status lookup by id prefix sees only the principal's own calls, to its upstreams
        assert (await store.find_for(rec.id[:8], principal=ANN["principal"], upstreams=["shop"])).id == rec.id
        for principal, upstreams in ((MALLORY["principal"], ["shop"]), (ANN["principal"], ["files"]), (None, ["shop"])):
            with pytest.raises(CallNotFoundError):
                await store.find_for(rec.id[:8], principal=principal, upstreams=upstreams)
        assert await store.consume_state("nonce-1", rec.id)
        assert not await store.consume_state("nonce-1", rec.id)  # a replay


# ---------------------------------------------------------------------------------------------- instances

_CHILD = """
import sys, anyio
from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.models import NewCall, State
from mcp_gatekeeper.store import Store

async def main():
    clock = FakeClock()
    async with Store.open(sys.argv[1], clock) as store:
        await store.register_instance("child", config_path="/etc/child.toml")
        await store.serving_page("http://127.0.0.1:9")
        ids = []
        for i, client in enumerate(({"principal": "p"}, {"principal": "p"})):
            new = NewCall(upstream="shop", tool="t", arguments={"i": i}, gate="hard", risk="high", client=client)
            ids.append((await store.insert_call(new, state=State.PENDING, deadline_at=clock.now() + 60)).id)
        await store.mark_retry_offered(ids[0], strategy="pending")
        new = NewCall(upstream="shop", tool="t", arguments={"i": 9}, gate="allow", risk="low")
        ids.append((await store.insert_call(new, state=State.ALLOWED)).id)
        print(" ".join([store.instance_id, *ids]), flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


async def test_the_calls_of_a_killed_process_are_recovered_and_a_live_ones_left_alone(
    backend: BackendUnderTest,
) -> None:
    clock = FakeClock()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, backend.location], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(child.stdout.readline)
        iid, told, untold, running = line.split()
        async with backend.open(clock) as store:
            await store.register_instance("parent")
            assert await store.recover_orphans() == 0  # the child is alive: nothing of it is touched
            assert "http://127.0.0.1:9" in await store.page_urls()
            assert "/etc/child.toml" in await store.live_config_paths()
            assert await store.instance_config_path(iid) == "/etc/child.toml"
            assert await store.instance_config_path(None) is None
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            assert "http://127.0.0.1:9" not in await store.page_urls()  # its pid is gone
            assert await store.recover_orphans() == 2  # the untold pending one and the running one
            assert await store.states_of([told, untold, running]) == {
                told: State.PENDING, untold: State.ORPHANED, running: State.OUTCOME_UNKNOWN,
            }  # fmt: skip
            assert (await store.get(told)).instance_id is None
            assert await store.holder_instance(told) == iid
            assert (await events_of(store, told))[-1] == "released"
            assert await store.recover_orphans() == 0  # once
            assert "/etc/child.toml" not in await store.live_config_paths()
            ok, _, message = await store.verify_audit()
            assert ok, message
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


async def test_a_stopping_process_settles_its_calls_and_a_released_approval_is_abandoned(
    backend: BackendUnderTest,
) -> None:
    clock = FakeClock()
    async with backend.open(clock) as a:
        await a.register_instance("a")
        told = await hold(a, clock, client=ANN)
        await a.mark_retry_offered(told.id, strategy="pending")
        await decide(a, told.id)
        untold = await hold(a, clock, arguments={"u": 1})
    async with backend.open(clock) as b:
        b_id = await b.register_instance("b")
        assert await b.states_of([told.id, untold.id]) == {told.id: State.APPROVED, untold.id: State.ORPHANED}
        assert await b.abandon_unclaimed(clock.now(), 600.0) == []
        clock.advance(60 + 600)
        assert await b.abandon_unclaimed(clock.now(), 600.0) == [told.id]
        assert await b.abandon_unclaimed(clock.now(), 600.0) == []
        assert (await b.get(told.id)).state == State.ORPHANED
        await b.heartbeat()
        assert b.instance_id == b_id


async def test_problems_are_shown_while_their_process_runs(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as a, backend.open(clock) as page:
        await a.register_instance("a")
        await a.note_problem({"problem": "no rule reaches upstream 'files'"})
        assert [p.detail["problem"] for p in await page.live_problems()] == ["no rule reaches upstream 'files'"]
    async with backend.open(clock) as page:
        assert await page.live_problems() == []


# ---------------------------------------------------------------------------------------------- sweeping


async def test_nothing_due_is_one_read_and_each_kind_of_work_shows(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one:
        await one.register_instance("one")
        assert await one.sweeps.due(clock.now(), grace=600.0) == frozenset()
        held = await one.insert_call(new_call(), state=State.PENDING, deadline_at=clock.now() + 60, escalate_after=10)
        await one.insert_call(new_call(arguments={"a": 1}), state=State.ALLOWED)
        assert await one.sweeps.due(clock.now(), grace=600.0) == frozenset()  # held, but nothing due yet
        clock.advance(10)
        assert await one.sweeps.due(clock.now(), grace=600.0) == {"escalate"}
        clock.advance(50)
        assert await one.sweeps.due(clock.now(), grace=600.0) == {"expire"}  # expiry first: it ends the call
        assert await one.sweeps.expire(clock.now(), why=lambda held_for: f"held {held_for:g} s") == [held.id]
        assert (await one.get(held.id)).reason == "held 60 s"
        assert await one.sweeps.due(clock.now(), grace=600.0) == frozenset()
        audited = await _under_review(one, clock, window=30)
        clock.advance(30)
        assert await one.sweeps.due(clock.now(), grace=600.0) == {"review"}
        assert await one.sweeps.close_review(audited.id, now=clock.now(), to_state=State.REVIEW_FAILED, reason="late")
        assert await one.sweeps.due(clock.now(), grace=600.0) == {"compensate"}
        with pytest.raises(ValueError, match="unreviewed or review_failed"):  # a closing window never confirms
            await one.sweeps.close_review(audited.id, now=clock.now(), to_state=State.CONFIRMED, reason="x")


async def _under_review(store: Store, clock: FakeClock, *, window: float, **overrides: Any) -> CallRecord:
    rec = await store.insert_call(new_call(gate="audit", risk="medium", **overrides), state=State.ALLOWED)
    await store.transition(rec.id, [State.ALLOWED], State.FORWARDING)
    await store.finish_call(
        rec.id, State.FORWARDING, State.FORWARDED, result={}, error=None, detail={}, args_digest=rec.args_digest
    )
    moved = await store.transition(
        rec.id, [State.FORWARDED], State.UNDER_REVIEW, deadline_at=clock.now() + window, capture={"before": 1}
    )
    assert moved is not None
    return moved


async def test_two_sweepers_expire_disjoint_calls_each_once(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one, backend.open(clock) as two:
        await one.register_instance("one")
        await two.register_instance("two")
        ids = {(await hold(s, clock, timeout=5, arguments={"n": i})).id for i, s in enumerate([one, two] * 15)}
        later = await hold(one, clock, timeout=500, arguments={"later": True})
        clock.advance(5)
        took: dict[str, list[str]] = {"one": [], "two": []}

        async def sweep(name: str, store: Store) -> None:
            while batch := await store.sweeps.expire(clock.now(), why=lambda _: "late", limit=4):
                took[name].extend(batch)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(sweep, "one", one)
            tg.start_soon(sweep, "two", two)
        assert not set(took["one"]) & set(took["two"])  # disjoint
        assert sorted(took["one"] + took["two"]) == sorted(ids)  # every one, once
        assert (await one.get(later.id)).state == State.PENDING  # not due: untouched
        expired = [e for e in await one.audit_events(limit=1000) if e.event == "expired"]
        assert sorted(e.call_id for e in expired) == sorted(ids)  # one event each
        ok, _, message = await one.verify_audit()
        assert ok, message


async def test_an_escalation_step_is_claimed_once_and_its_notice_stays_with_its_claimant(
    backend: BackendUnderTest,
) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one, backend.open(clock) as two:
        await one.register_instance("one")
        await two.register_instance("two")
        rec = await one.insert_call(new_call(), state=State.PENDING, deadline_at=clock.now() + 600, escalate_after=10)
        assert await one.sweeps.escalations_due(clock.now()) == []
        clock.advance(10)
        assert [(r.id, level) for r, level in await two.sweeps.escalations_due(clock.now())] == [(rec.id, 0)]
        got: list[CallRecord | None] = []

        async def claim(store: Store) -> None:
            got.append(await store.sweeps.claim_escalation(
                rec.id, level=1, deadline_at=clock.now() + 60, escalate_at=clock.now() + 100, channels=["oncall"]
            ))  # fmt: skip

        async with anyio.create_task_group() as tg:
            for s in (one, two, one, two):
                tg.start_soon(claim, s)
        won = [r for r in got if r is not None]
        assert len(won) == 1  # whoever claims it first; the others get nothing to send
        assert won[0].deadline_at == clock.now() + 60
        assert await one.sweeps.escalations_due(clock.now()) == []  # the next step is at +100
        assert await one.queries.escalation_and_attempts(rec.id) == (1, 0)
        # a later step never lengthens the deadline
        assert await one.sweeps.claim_escalation(
            rec.id, level=2, deadline_at=clock.now() + 600, escalate_at=None, channels=[]
        )  # fmt: skip
        assert (await one.get(rec.id)).deadline_at == clock.now() + 60
        assert (
            await two.sweeps.claim_escalation(rec.id, level=2, deadline_at=None, escalate_at=None, channels=[]) is None
        )
        events = [e for e in await one.audit_events(call_id=rec.id) if e.event == "escalated"]
        assert [e.detail["level"] for e in events] == [1, 2]
        # nobody else takes over a notice whose claimant lives
        assert await two.sweeps.claim_open_notices() == []
        await one.sweeps.notice_sent(rec.id, level=2)
        assert await one.sweeps.due(clock.now(), grace=600.0) == frozenset()


async def test_a_call_held_before_escalate_at_existed_is_rescheduled_not_escalated(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one:
        rec = await hold(one, clock, timeout=600)
        backend.raw("UPDATE calls SET escalate_at = created_at WHERE id = ?", (rec.id,))  # as 0013 leaves it
        assert await one.sweeps.due(clock.now(), grace=600.0) == {"escalate"}
        assert await one.sweeps.reschedule(rec.id, level=0, escalate_at=clock.now() + 30)
        assert await one.sweeps.due(clock.now(), grace=600.0) == frozenset()
        assert not await one.sweeps.reschedule(rec.id, level=1, escalate_at=None)  # the level moved: not ours
        assert [e.event for e in await one.audit_events(call_id=rec.id)] == ["held"]


async def test_review_windows_close_once_and_a_compensation_is_claimed_once(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one, backend.open(clock) as two:
        await one.register_instance("one")
        await two.register_instance("two")
        recs = [await _under_review(one, clock, window=30, arguments={"n": i}) for i in range(6)]
        assert await one.capture_of(recs[0].id) == {"before": 1}
        assert await one.sweeps.reviews_due(clock.now()) == []
        assert not await one.sweeps.close_review(recs[0].id, now=clock.now(), to_state=State.UNREVIEWED, reason="x")
        clock.advance(30)
        assert sorted(r.id for r in await two.sweeps.reviews_due(clock.now())) == sorted(r.id for r in recs)
        closed: list[tuple[str, str]] = []

        async def close(name: str, store: Store) -> None:
            for r in recs:  # both try every call: the rule said rollback for the even ones
                to = State.REVIEW_FAILED if recs.index(r) % 2 == 0 else State.UNREVIEWED
                if await store.sweeps.close_review(r.id, now=clock.now(), to_state=to, reason="nobody reviewed it"):
                    closed.append((name, r.id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(close, "one", one)
            tg.start_soon(close, "two", two)
        assert sorted(cid for _, cid in closed) == sorted(r.id for r in recs)  # each closed once
        states = await one.states_of([r.id for r in recs])
        assert [states[r.id] for r in recs] == [State.REVIEW_FAILED, State.UNREVIEWED] * 3
        assert (await one.get(recs[0].id)).reason == "nobody reviewed it"
        failed = [recs[0].id, recs[2].id, recs[4].id]
        assert await one.sweeps.compensations_due([]) == []
        assert await one.sweeps.compensations_due(["files"]) == []
        assert sorted((r.id, n) for r, n in await two.sweeps.compensations_due(["shop"])) == sorted(
            (cid, 0) for cid in failed
        )
        claims: list[tuple[str, str]] = []

        async def claim(name: str, store: Store) -> None:
            for cid in failed:
                if await store.sweeps.claim_compensation(cid):
                    claims.append((name, cid))

        async with anyio.create_task_group() as tg:
            for name, s in (("one", one), ("two", two), ("one", one), ("two", two)):
                tg.start_soon(claim, name, s)
        assert sorted(cid for _, cid in claims) == sorted(failed)  # each attempt claimed once
        assert await one.queries.escalation_and_attempts(failed[0]) == (0, 1)
        events = [e.event for e in await one.audit_events(limit=1000) if e.event in ("review_failed", "unreviewed")]
        assert sorted(events) == ["review_failed"] * 3 + ["unreviewed"] * 3


_CLAIMANT = """
import sys, anyio
from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.models import NewCall, State
from mcp_gatekeeper.store import Store

async def main():
    async with Store.open(sys.argv[1], SystemClock()) as store:
        await store.register_instance("claimant")
        new = NewCall(upstream="shop", tool="issue_refund", arguments={"x": 1}, gate="hard", risk="high", rule="r")
        held = await store.insert_call(new, state=State.PENDING, deadline_at=store.clock.now() + 3600)
        await store.mark_retry_offered(held.id, strategy="pending")  # released, not orphaned, when this dies
        assert await store.sweeps.claim_escalation(held.id, level=1, deadline_at=None, escalate_at=None, channels=["x"])
        audit = NewCall(upstream="shop", tool="write", arguments={"y": 2}, gate="audit", risk="medium")
        rec = await store.insert_call(audit, state=State.ALLOWED)
        await store.transition(rec.id, [State.ALLOWED], State.FORWARDING)
        await store.finish_call(rec.id, State.FORWARDING, State.FORWARDED, result={}, error=None, detail={},
                                args_digest=rec.args_digest)
        await store.transition(rec.id, [State.FORWARDED], State.UNDER_REVIEW, deadline_at=0.0)
        assert await store.sweeps.close_review(rec.id, now=store.clock.now(), to_state=State.REVIEW_FAILED, reason="x")
        assert await store.sweeps.claim_compensation(rec.id)
        print(held.id, rec.id, flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


async def test_the_claims_of_a_killed_process_go_to_a_survivor(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    child = subprocess.Popen([sys.executable, "-c", _CLAIMANT, backend.location], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        with anyio.fail_after(60):
            line = await anyio.to_thread.run_sync(child.stdout.readline)
        held, rolling = line.split()
        async with backend.open(clock) as store:
            await store.register_instance("survivor")
            assert await store.recover_orphans() == 0  # alive: its claims are its own
            assert await store.sweeps.claim_open_notices() == []
            assert await store.sweeps.compensations_due(["shop"]) == []
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            await store.recover_orphans()
            # the notice it had not sent is the survivor's to send; the attempt it was running is due again
            assert [(r.id, level) for r, level in await store.sweeps.claim_open_notices()] == [(held, 1)]
            assert await store.sweeps.claim_open_notices() == []  # once
            assert [(r.id, n) for r, n in await store.sweeps.compensations_due(["shop"])] == [(rolling, 1)]
            assert await store.sweeps.claim_compensation(rolling)
            assert await store.queries.escalation_and_attempts(rolling) == (0, 2)
            events = [e.event for e in await store.audit_events(call_id=rolling)]
            assert events[-3:] == ["rolling_back", "rollback_retry", "rolling_back"]
            ok, _, message = await store.verify_audit()
            assert ok, message
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


# ---------------------------------------------------------------------------------------------- pins and leases


async def test_pins_quarantine_a_changed_definition_until_repinned(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as store:
        first = await store.check_pins("shop", {"t": ("h1", {"name": "t"}), "u": ("h9", {"name": "u"})})
        assert {n: (p.hash, p.quarantined) for n, p in first.items()} == {"t": ("h1", False), "u": ("h9", False)}
        events = len(await store.audit_events())
        assert await store.check_pins("shop", {"t": ("h1", {"name": "t"})}) == first  # nothing new: no write
        assert len(await store.audit_events()) == events
        changed = await store.check_pins("shop", {"t": ("h2", {"name": "t", "description": "evil"})})
        assert changed["t"].quarantined and changed["t"].pending_hash == "h2" and changed["t"].hash == "h1"
        assert [p.tool for p in await store.pins(quarantined_only=True)] == ["t"]
        assert [p.upstream for p in await store.pins()] == ["shop", "shop"]
        with pytest.raises(CallNotFoundError):
            await store.repin("shop", "nope", by="ann", channel="web")
        with pytest.raises(AlreadyDecidedError):
            await store.repin("shop", "u", by="ann", channel="web")
        repinned = await store.repin("shop", "t", by="ann", channel="web")
        assert (repinned.hash, repinned.quarantined, repinned.pinned_by) == ("h2", False, "ann")
        assert await store.pins(quarantined_only=True) == []
        again = await store.check_pins("shop", {"t": ("h3", {})})
        back = await store.check_pins("shop", {"t": ("h2", {})})  # the upstream went back: no longer quarantined
        assert again["t"].quarantined and not back["t"].quarantined


async def test_a_lease_is_spent_once_per_use_and_dies_when_revoked(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one, backend.open(clock) as two:
        lease = await one.create_lease(
            upstream="shop", tool="issue_refund", tooldef_hash="h1", envelope={"amount": {"max": 50}},
            created_by="ann", channel="web", source_call=None, expires_at=clock.now() + 60, calls=3,
        )  # fmt: skip
        assert lease.calls_left == 3 and lease.envelope == {"amount": {"max": 50}}
        spent: list[bool] = []
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(lambda i=i: _use(one if i % 2 else two, lease.id, spent))
        assert sorted(spent) == [False, False, False, True, True, True]  # exactly its calls, across processes
        assert (await two.lease(lease.id)).used == 3
        assert await one.leases(active_at=clock.now()) == []
        other = await one.create_lease(
            upstream="shop", tool="t", tooldef_hash=None, envelope={}, created_by="ann", channel="web",
            source_call=None, expires_at=None, calls=None,
        )  # fmt: skip
        assert [x.id for x in await one.leases(active_at=clock.now(), upstream="shop", tool="t")] == [other.id]
        assert await one.use_lease(other.id, call_id=None)
        revoked = await two.revoke_lease(other.id, by="bob", channel="web")
        assert revoked.revoked_by == "bob"
        assert not await one.use_lease(other.id, call_id=None)
        with pytest.raises(AlreadyDecidedError):
            await one.revoke_lease(other.id, by="bob", channel="web")
        with pytest.raises(CallNotFoundError):
            await one.revoke_lease("lnope", by="bob", channel="web")
        with pytest.raises(CallNotFoundError):
            await one.lease("lnope")
        timed = await one.create_lease(
            upstream="shop", tool="t", tooldef_hash=None, envelope={}, created_by="ann", channel="web",
            source_call=None, expires_at=clock.now() + 10, calls=None,
        )  # fmt: skip
        clock.advance(10)
        assert not await one.use_lease(timed.id, call_id=None)
        assert {x.id for x in await one.leases()} == {lease.id, other.id, timed.id}


async def _use(store: Store, lease_id: str, out: list[bool]) -> None:
    out.append(await store.use_lease(lease_id, call_id=None))


# ---------------------------------------------------------------------------------------------- sessions


def _session(clock: FakeClock, sid: str) -> WebSession:
    now = clock.now()
    return WebSession(sid, "", "127.0.0.1:8765", "firefox", now, now, now + 600, now + 3600, None, None, None)


async def test_a_login_code_opens_one_session_once_and_logout_ends_it(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one, backend.open(clock) as two:
        await one.add_login_code("code-hash", label="ann", expires_at=clock.now() + 60)
        results: list[WebSession | None] = []
        async with anyio.create_task_group() as tg:
            for s, sid in ((one, "s1"), (two, "s2")):
                tg.start_soon(lambda s=s, sid=sid: _redeem(s, sid, clock, results))
        opened = [r for r in results if r is not None]
        assert len(opened) == 1 and opened[0].label == "ann"  # single use, across processes
        sid = opened[0].id
        hashes = await two.session_hashes(sid)
        assert hashes is not None and hashes[1:] == ("secret-hash", "key-hash")
        clock.advance(100)
        await one.touch_session(sid, expires_at=clock.now() + 600)
        touched = await two.web_session(sid)
        assert touched is not None and touched.last_seen_at == clock.now()
        await one.touch_session(sid, expires_at=clock.now() + 10_000)
        capped = await one.web_session(sid)
        assert capped is not None and capped.expires_at == capped.ends_at  # never past its end
        assert [s.id for s in await two.web_sessions()] == [sid]
        assert await two.end_sessions([sid], by="web:ann", channel="web", why="logout") == [sid]
        assert await one.end_sessions([sid], by="web:ann", channel="web", why="logout") == []
        assert await two.web_sessions() == []
        assert [s.ended_why for s in await two.web_sessions(alive_only=False)] == ["logout"]
        assert await one.web_session("nope") is None and await one.session_hashes("nope") is None
        await one.add_login_code("late", label="bob", expires_at=clock.now() + 1)
        clock.advance(1)
        assert await one.redeem_login_code("late", _session(clock, "s3"), secret_hash="x", key_hash="y") is None


async def test_revoking_every_session(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as store:
        for i in range(3):
            await store.add_login_code(f"c{i}", label="ann", expires_at=clock.now() + 60)
            assert await store.redeem_login_code(f"c{i}", _session(clock, f"s{i}"), secret_hash="x", key_hash="y")
        assert sorted(await store.end_sessions(None, by="cli", channel="cli", why="revoked")) == ["s0", "s1", "s2"]
        assert await store.web_sessions() == []


async def _redeem(store: Store, sid: str, clock: FakeClock, out: list[WebSession | None]) -> None:
    out.append(
        await store.redeem_login_code("code-hash", _session(clock, sid), secret_hash="secret-hash", key_hash="key-hash")
    )


# ---------------------------------------------------------------------------------------------- the audit chain


async def test_the_audit_chain_verifies_and_names_tampering(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as store:
        for i in range(5):
            rec = await hold(store, clock, arguments={"i": i})
            await decide(store, rec.id, approve=i % 2 == 0)
            clock.advance(1)
        ok, count, message = await store.verify_audit()
        assert (ok, count) == (True, 10), message
        events = await store.audit_events(limit=3)
        assert len(events) == 3 and events[-1].seq == 10 and events[0].seq == 8  # the newest, oldest first
        assert [e.seq for e in await store.audit_events(before_seq=3)] == [1, 2]
        assert await store.queries.last_audit_seq() == 10
        backend.raw("UPDATE audit SET actor = 'mallory' WHERE seq = 4")
        ok, count, message = await store.verify_audit()
        assert (ok, count) == (False, 3) and "event 4" in message and "altered" in message
    async with backend.open(clock) as store:
        backend.raw("UPDATE audit SET actor = 'ann' WHERE seq = 4")
        assert (await store.verify_audit())[0]
        backend.raw("DELETE FROM audit WHERE seq = 6")
        ok, _, message = await store.verify_audit()
        assert not ok and "event 7" in message and "removed or reordered" in message


async def test_a_new_store_has_an_empty_intact_chain(backend: BackendUnderTest) -> None:
    async with backend.open(FakeClock()) as store:
        assert await store.verify_audit() == (True, 0, "audit chain intact: 0 events")
        assert await store.queries.last_audit_seq() == 0
        assert await store.counts() == {}
        assert await store.integrity_check() == "ok"
        assert isinstance(await store.data_version(), int)


# ---------------------------------------------------------------------------------------------- named queries


async def test_the_pages_queues(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as store:
        plain = await hold(store, clock, summary=None, client=ANN, input_schema={"type": "object"})
        clock.advance(1)
        big = await hold(store, clock, summary=None, arguments={"blob": "x" * 500})
        clock.advance(1)
        quarantined = await hold(store, clock, reasons=(f"{QUARANTINE_MARK} t changed",), arguments={"q": 1})
        await decide(store, (await hold(store, clock, arguments={"decided": 1})).id)
        pending = await store.queries.pending_queue(arguments_cap=100)
        assert [r.id for r in pending] == [plain.id, big.id, quarantined.id]  # oldest first, pending only
        first = pending[0]
        assert (first.state, first.principal, first.escalation, first.quarantined) == (
            "pending",
            ANN["principal"],
            0,
            False,
        )
        assert json.loads(first.short_arguments or "") == plain.arguments
        assert json.loads(first.input_schema or "") == {"type": "object"}
        assert pending[1].short_arguments is None  # over the cap: too large for a list row
        assert pending[2].quarantined and pending[2].short_arguments is None  # it has a summary
        assert [r.id for r in await store.queries.pending_queue(arguments_cap=100, limit=1)] == [plain.id]
        assert await store.queries.held_by_quarantine() == {("shop", "issue_refund"): 1}
        assert await store.queries.summaries([quarantined.id, plain.id, "nope"]) == {
            quarantined.id: "Refund 40 EUR on order A-17", plain.id: None,
        }  # fmt: skip
        assert await store.queries.summaries([]) == {}
        assert await store.counts() == {"pending": 3, "approved": 1}

        audited = []
        for i, deadline in enumerate((30, 10, None)):
            rec = await store.insert_call(new_call(gate="audit", arguments={"a": i}), state=State.ALLOWED)
            await store.transition(
                rec.id, [State.ALLOWED], State.UNDER_REVIEW, deadline_at=deadline and clock.now() + deadline
            )
            audited.append(rec.id)
        await store.transition(audited[2], [State.UNDER_REVIEW], State.UNREVIEWED)
        assert [r.id for r in await store.queries.review_queue(arguments_cap=100)] == [
            audited[1],
            audited[0],
            audited[2],
        ]
        await store.transition(audited[0], [State.UNDER_REVIEW], State.ROLLBACK_FAILED)
        failed = await store.queries.rollbacks_failed(arguments_cap=100)
        assert [(r.id, r.state) for r in failed] == [(audited[0], "rollback_failed")]


async def test_the_stats_queries(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    since = clock.now()
    async with backend.open(clock) as store:
        approved = await hold(store, clock, rule="refunds")
        clock.advance(3)
        await decide(store, approved.id, decided_by="ann")
        modified = await hold(store, clock, rule="refunds", arguments={"m": 1})
        clock.advance(1)
        await decide(store, modified.id, decided_by="bob", modified_arguments={"m": 0})
        rejected = await hold(store, clock, rule=None, arguments={"r": 1})
        await store.sweeps.claim_escalation(
            rejected.id, level=1, deadline_at=clock.now() + 5, escalate_at=None, channels=[]
        )
        clock.advance(1)
        await decide(store, rejected.id, approve=False, decided_by="ann")
        clock.advance(900)
        await hold(store, clock, rule="refunds", arguments={"p": 1})
        await store.insert_call(new_call(gate="allow", risk="low", arguments={"a": 1}), state=State.ALLOWED)
        await store.insert_call(new_call(gate="deny", arguments={"d": 1}), state=State.DENIED)
        audited = await store.insert_call(new_call(gate="audit", arguments={"x": 1}), state=State.ALLOWED)
        await store.transition(audited.id, [State.ALLOWED], State.UNDER_REVIEW, deadline_at=clock.now() + 9)

        slices = await store.queries.held_outcomes(since=since, slice_seconds=900.0)
        assert sorted(slices) == sorted([(0, "approved", 1), (0, "modified", 1), (0, "rejected", 1), (1, "pending", 1)])
        per_rule = await store.queries.held_outcomes_per_rule(since=since)
        assert sorted(per_rule) == sorted([
            ("refunds", "approved", 1, 0), ("refunds", "modified", 1, 0), ("refunds", "pending", 1, 0),
            ("(no rule: defaults)", "rejected", 1, 1),
        ])  # fmt: skip
        decisions = await store.queries.human_decisions(since=since)
        assert [(d.latency, d.decided_by, d.state, d.modified) for d in decisions] == [
            (3.0, "ann", "approved", False), (1.0, "bob", "approved", True), (1.0, "ann", "rejected", False),
        ]  # fmt: skip
        [usage] = await store.queries.tool_usage(since=since)
        assert usage == ("shop", "issue_refund", 7, 4, 1, 1)
        assert await store.queries.escalation_steps(since=since) == [(1, 1, 1)]
        assert await store.queries.escalated_outcomes(since=since) == {"rejected": 1}
        assert await store.queries.audit_gated_states(since=since) == {"under_review": 1}
        assert await store.queries.held_outcomes(since=clock.now() + 1, slice_seconds=900.0) == []


async def test_the_review_reads(backend: BackendUnderTest) -> None:
    """store.review: volume, decision times, pages of decided calls, and the tool definition by hash."""
    clock = FakeClock()
    since = clock.now()
    async with backend.open(clock) as store:
        await store.check_pins("shop", {"issue_refund": ("h1", {"name": "issue_refund", "description": "Refund."})})
        approved = await hold(store, clock, tooldef_hash="h1")
        clock.advance(3)
        await decide(store, approved.id, decided_by="ann")
        modified = await hold(store, clock, arguments={"m": 1})
        clock.advance(1)
        await decide(store, modified.id, decided_by="bob", modified_arguments={"m": 0})
        rejected = await hold(store, clock, rule=None, arguments={"r": 1})
        clock.advance(2)
        await decide(store, rejected.id, approve=False, decided_by="ann", reason="no")
        expired = await hold(store, clock, arguments={"e": 1})
        await store.transition(expired.id, [State.PENDING], State.EXPIRED, finished_at=clock.now())
        await store.insert_call(new_call(gate="allow", risk="low", arguments={"a": 1}), state=State.ALLOWED)
        await store.insert_call(new_call(gate="deny", arguments={"d": 1}), state=State.DENIED)
        clock.advance(1)
        until = clock.now()
        assert await store.review.call_volume(since, until) == {
            "total": 6, "allowed": 1, "denied": 1, "held": 4, "audit": 0,
        }  # fmt: skip
        times = await store.review.decision_times(since, until)
        assert [(t.call_id, t.reviewer, t.decision, t.decided_at - t.created_at) for t in times] == [
            (approved.id, "ann", "approved", 3.0), (modified.id, "bob", "modified", 1.0),
            (rejected.id, "ann", "rejected", 2.0),
        ]  # fmt: skip
        assert times[2].reason == "no" and times[2].rule is None
        first = await store.review.decided_calls(since=None, until=until, limit=2)
        assert [(r.id, d) for r, d in first] == [(approved.id, "approved"), (modified.id, "modified")]
        last = first[-1][0]
        assert last.decided_at is not None
        rest = await store.review.decided_calls(since=None, until=until, after=(last.decided_at, last.id), limit=2)
        assert [(r.id, d) for r, d in rest] == [(rejected.id, "rejected")]
        only = await store.review.decided_calls(since=since, until=until, only="modified")
        assert [r.modified_arguments for r, _ in only] == [{"m": 0}]
        with pytest.raises(ValueError, match="unknown decision"):
            await store.review.decided_calls(since=None, until=until, only="expired")
        assert await store.review.tool_definition("shop", "issue_refund", "h1") == {
            "name": "issue_refund", "description": "Refund.",
        }  # fmt: skip
        assert await store.review.tool_definition("shop", "issue_refund", "h2") is None
        assert await store.review.tool_definition("shop", "issue_refund", None) is None


async def test_the_insert_of_a_pass_through_call_keeps_its_instance(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as store:
        iid = await store.register_instance("wrap")
        rec = await store.insert_call(replace(new_call(), gate="allow"), state=State.ALLOWED)
        assert rec.instance_id == iid == (await store.get(rec.id)).instance_id
        assert os.getpid() > 0


# ---------------------------------------------------------------------------------------------- team mode


async def _account(store: Store, name: str, **kw: Any) -> None:
    await store.reviewers.add(
        name, role=kw.get("role", "reviewer"), groups=kw.get("groups", ["payments"]),
        principals=kw.get("principals", []), password_hash=f"hash-of-{name}", by="cli:root", channel="cli",
    )  # fmt: skip


def _account_session(clock: FakeClock, sid: str, account: str) -> WebSession:
    return replace(_session(clock, sid), account=account, label=account)


async def test_reviewer_accounts_are_audited_and_their_sessions_end_with_them(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one, backend.open(clock) as two:
        await _account(one, "alice", principals=["agent:alice-bot"])
        with pytest.raises(NotAllowedError) as taken:
            await _account(two, "alice")
        assert taken.value.why == "exists"
        await _account(two, "bob", role="admin", groups=[])
        assert [(r.name, r.role, r.groups) for r in await one.reviewers.list_reviewers()] == [
            ("alice", "reviewer", ("payments",)),
            ("bob", "admin", ()),
        ]
        alice = await two.reviewers.get("alice")
        assert alice is not None and alice.linked_to("agent:alice-bot") and not alice.linked_to("agent:bob-bot")
        assert await one.reviewers.password_hash("alice") == "hash-of-alice"
        assert await one.reviewers.password_hash("nobody") is None
        for sid in ("a1", "a2"):
            opened = await one.sessions.open_for_account(
                _account_session(clock, sid, "alice"), secret_hash="s", key_hash="k"
            )
            assert opened is not None and opened.reviewer == "alice"  # the account's name, not web:<label>
        assert (
            await one.sessions.open_for_account(_account_session(clock, "z", "nobody"), secret_hash="s", key_hash="k")
            is None
        )
        assert sorted(await two.sessions.of_account("alice")) == ["a1", "a2"]
        assert sorted(await two.reviewers.set_password("alice", "new-hash", by="cli:root", channel="cli")) == [
            "a1",
            "a2",
        ]
        assert await one.reviewers.password_hash("alice") == "new-hash"
        assert await one.sessions.of_account("alice") == []
        await one.sessions.open_for_account(_account_session(clock, "a3", "alice"), secret_hash="s", key_hash="k")
        assert await two.reviewers.remove("alice", by="cli:root", channel="cli") == ["a3"]
        with pytest.raises(NotAllowedError):
            await one.reviewers.remove("alice", by="cli:root", channel="cli")
        with pytest.raises(NotAllowedError):
            await one.reviewers.set_password("alice", "x", by="cli:root", channel="cli")
        events = [e.event for e in await one.audit_events()]
        assert events.count("account_added") == 2 and "password_changed" in events and "account_removed" in events
        assert (await one.verify_audit())[0]


async def test_failed_logins_are_counted_per_account_and_address(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one, backend.open(clock) as two:
        for _ in range(3):
            await one.reviewers.note_login(account="alice", address="10.0.0.9", ok=False, why="bad password")
        await two.reviewers.note_login(account="bob", address="10.0.0.9", ok=False, why="bad password")
        await two.reviewers.note_login(account="alice", address="10.0.0.7", ok=True)
        assert await two.reviewers.failed_logins(account="alice", address="10.0.0.9", since=0) == (3, 4)
        clock.advance(100)
        await one.reviewers.note_login(account="alice", address="10.0.0.7", ok=False)
        assert await one.reviewers.failed_logins(account="alice", address="10.0.0.7", since=clock.now() - 50) == (1, 1)
        assert [e.event for e in await two.audit_events()].count("login_failed") == 5


async def test_named_approvals_count_once_per_reviewer_and_an_edit_starts_a_new_round(
    backend: BackendUnderTest,
) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one, backend.open(clock) as two:
        rec = await hold(one, clock)
        d = rec.args_digest

        async def add(store: Store, who: str, seen: str, args: dict[str, Any] | None = None) -> Any:
            return await store.approvals.add(
                rec.id, reviewer=who, seen_digest=seen, arguments=args,
                arguments_digest=digest(args) if args is not None else None, needed=2, session=None, channel="web",
            )  # fmt: skip

        first = await add(one, "alice", d)
        assert first.approvers == ("alice",) and first.proposal_digest == d
        with pytest.raises(NotAllowedError) as twice:
            await add(two, "alice", d)  # another connection, same reviewer: still one approval
        assert twice.value.why == "already_approved"
        with pytest.raises(AlreadyDecidedError) as stale:
            await add(two, "bob", "sha256:not-what-is-proposed")
        assert stale.value.why == "stale_digest"
        edited = {"order_id": "A-17", "amount": 30}
        reset = await add(two, "bob", d, edited)
        assert reset.approvers == ("bob",) and reset.arguments == edited and reset.proposal_digest == digest(edited)
        with pytest.raises(AlreadyDecidedError):
            await add(one, "alice", d)  # alice approved the old arguments; she must look at the new ones
        again = await add(one, "alice", digest(edited))
        assert again.approvers == ("bob", "alice") and (await two.approvals.tally(rec.id)).count == 2
        back = await add(one, "alice", digest(edited), rec.arguments)  # editing back to the original: a new round
        assert back.approvers == ("alice",) and back.proposal_digest == d
        again = await add(two, "bob", d, edited)  # and forth again: nobody's old approval of it counts
        assert again.approvers == ("bob",)
        again = await add(one, "alice", digest(edited))
        assert again.approvers == ("bob", "alice")
        assert (await one.approvals.tallies([rec.id, "nope"]))[rec.id].approvers == ("bob", "alice")
        await decide(one, rec.id, decided_by="alice", modified_arguments=edited, expected_digest=d)
        with pytest.raises(AlreadyDecidedError):
            await add(two, "carol", digest(edited))
        await one.approvals.note_refusal(rec.id, reviewer="mallory", why="not_in_group", message="no", channel="web")
        events = [(e.event, e.actor) for e in await two.audit_events(call_id=rec.id)]
        assert events.count(("approval_given", "alice")) == 4 and ("decision_refused", "mallory") in events
        with pytest.raises(CallNotFoundError):
            await one.approvals.tally("nope")


async def test_quorum_steps_are_stored_signed_with_their_round_and_read_back(backend: BackendUnderTest) -> None:
    """``0014_quorum_steps``: each step's round, place, channel, signature and passkey assertion, as written."""
    from mcp_gatekeeper.signatures import StepFacts

    clock = FakeClock()
    signed: list[StepFacts] = []

    def sign(facts: StepFacts) -> dict[str, Any]:
        signed.append(facts)
        return {"v": 1, "sig": f"s{len(signed)}", "at": facts.at}

    async with backend.open(clock) as one, backend.open(clock) as two:
        rec = await hold(one, clock)
        edited = {"order_id": "A-17", "amount": 30}

        async def add(store: Store, who: str, seen: str, args: Any = None, **kw: Any) -> Any:
            return await store.approvals.add(
                rec.id, reviewer=who, seen_digest=seen, arguments=args, needed=2, session=None, channel="slack",
                arguments_digest=digest(args) if args is not None else None, sign=sign, **kw,
            )  # fmt: skip

        await add(one, "alice", rec.args_digest, passkey={"credential_id": "c1"}, expected_round=0)
        with pytest.raises(AlreadyDecidedError) as other_round:
            await add(two, "bob", rec.args_digest, expected_round=1)  # an assertion made for another round
        assert other_round.value.why == "stale_digest"
        edit = await add(two, "bob", rec.args_digest, edited, expected_round=1)
        assert edit.round == 1 and edit.approvers == ("bob",)
        steps = await one.approvals.steps(rec.id)
        assert [(s.reviewer, s.round, s.step, s.channel, s.proposal_digest) for s in steps] == [
            ("alice", 0, 1, "slack", rec.args_digest),
            ("bob", 1, 1, "slack", digest(edited)),
        ]
        assert [s.signature["sig"] for s in steps] == ["s1", "s2"] and steps[0].passkey == {"credential_id": "c1"}
        assert [s.facts() for s in steps] == signed  # what was signed is what is read back
        events = [e for e in await two.audit_events(call_id=rec.id) if e.event == "approval_given"]
        assert [(e.detail["round"], e.detail["step"], e.detail["signature"]["sig"]) for e in events] == [
            (0, 1, "s1"),
            (1, 1, "s2"),
        ]
        since, all_steps = await two.audit.step_events()
        assert [e.seq for e in all_steps] == [e.seq for e in events] and since < events[0].seq


async def test_a_slack_member_is_one_accounts(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one, backend.open(clock) as two:
        for name, slack in (("alice", ["T0/U1"]), ("bob", [])):
            await one.reviewers.add(
                name, role="reviewer", groups=[], principals=[], password_hash="x", by="cli:root", channel="cli",
                slack=slack,
            )  # fmt: skip
        assert (await two.reviewers.by_slack("T0", "U1")).name == "alice"  # type: ignore[union-attr]
        with pytest.raises(NotAllowedError) as taken:
            await two.reviewers.link_slack("bob", "T0/U1", by="cli:root", channel="cli")
        assert taken.value.why == "slack_taken"
        assert (await two.reviewers.link_slack("bob", "T0/U2", by="cli:root", channel="cli")).slack == ("T0/U2",)
        await one.reviewers.link_slack("alice", "T0/U1", unlink=True, by="cli:root", channel="cli")
        assert await two.reviewers.by_slack("T0", "U1") is None
        assert (await one.reviewers.by_slack("T0", "U2")).name == "bob"  # type: ignore[union-attr]
        with pytest.raises(NotAllowedError):
            await one.reviewers.link_slack("nobody", "T0/U3", by="cli:root", channel="cli")
        events = [e.event for e in await one.audit_events() if e.event.startswith("account_slack")]
        assert events == ["account_slack_linked", "account_slack_unlinked"]


async def test_concurrent_approvals_on_two_connections_both_count(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as one, backend.open(clock) as two:
        rec = await hold(one, clock)
        async with anyio.create_task_group() as tg:
            for store, who in ((one, "alice"), (two, "bob")):
                tg.start_soon(
                    lambda s=store, w=who: s.approvals.add(
                        rec.id, reviewer=w, seen_digest=rec.args_digest, arguments=None, arguments_digest=None,
                        needed=2, session=None, channel="web",
                    )
                )  # fmt: skip
        assert sorted((await one.approvals.tally(rec.id)).approvers) == ["alice", "bob"]


async def test_each_call_names_the_host_of_the_gatekeeper_holding_it(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as here, backend.open(clock) as there:
        await here.register_instance("wrap")
        other = await there.register_instance("run --http")
        backend.raw("UPDATE instances SET host = ? WHERE id = ?", ("build-02", other))  # another machine's process
        mine, theirs = await hold(here, clock), await hold(there, clock, tool="issue_refund_v2")
        orphan = await hold(here, clock, tool="other")
        backend.raw("UPDATE calls SET instance_id = NULL WHERE id = ?", (orphan.id,))  # released: no holder
        hosts = await here.queries.hosts_of([mine.id, theirs.id, orphan.id, "nope"])
        assert hosts == {mine.id: socket.gethostname(), theirs.id: "build-02"}
        assert await here.queries.hosts_of([]) == {}


# ---------------------------------------------------------------------------------------------- signed decisions


async def test_a_decision_is_signed_as_it_is_written_and_tampering_breaks_it(backend: BackendUnderTest) -> None:
    """PostgreSQL decides inside its decide function: the signature made in this process must reach the row and
    the audit event there as on SQLite, over the time and digest that were written."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mcp_gatekeeper.signatures import Signer, check, check_events, facts_of, key_id

    signer = Signer(Ed25519PrivateKey.generate())
    trusted = {key_id(signer.public): signer.public}
    clock = FakeClock()
    async with backend.open(clock) as store:
        signed_since, before = await store.audit.decision_events()
        assert before == []
        rec = await hold(store, clock)
        modified = {"order_id": "A-17", "amount": 20}
        with pytest.raises(AlreadyDecidedError):  # a stale decision writes no signature either
            await store.decide(rec.id, approve=True, decided_by="ann", channel="web", reason=None,
                               modified_arguments=None, expected_digest="stale", sign=signer.seal)  # fmt: skip
        assert await store.calls.decision_signature(rec.id) is None
        done = await store.decide(rec.id, approve=True, decided_by="ann", channel="web", reason="ok",
                                  modified_arguments=modified, expected_digest=rec.args_digest, sign=signer.seal)  # fmt: skip
        seal = await store.calls.decision_signature(rec.id)
        assert isinstance(seal, dict) and seal["at"] == done.decided_at
        facts = facts_of(
            call_id=done.id, approved=True, args_digest=done.args_digest, modified_digest=digest(modified),
            decided_by=done.decided_by, channel=done.channel, decided_at=done.decided_at,
        )  # fmt: skip
        assert check(facts, seal, trusted) is None
        rejected = await hold(store, clock, arguments={"order_id": "B"})
        await store.decide(rejected.id, approve=False, decided_by="bob", channel="web", reason=None,
                           modified_arguments=None, expected_digest=None, sign=signer.seal)  # fmt: skip
        signed_since, events = await store.audit.decision_events()
        assert [e.event for e in events] == ["approved", "rejected"]
        assert events[0].detail["signature"] == seal
        assert check_events(events, signed_since=signed_since, trusted=trusted) == []
        # behind the store's back: another decider, or a rejection turned approval, no longer matches
        backend.raw("UPDATE calls SET decided_by = 'mallory' WHERE id = ?", (rec.id,))
        forged = await store.get(rec.id)
        assert check(replace(facts, decided_by=forged.decided_by or ""), seal, trusted) is not None
        backend.raw("UPDATE audit SET event = 'approved' WHERE call_id = ? AND event = 'rejected'", (rejected.id,))
        _, events = await store.audit.decision_events()
        assert len(check_events(events, signed_since=signed_since, trusted=trusted)) == 1


async def test_an_unsigned_decision_after_signing_began_is_named(backend: BackendUnderTest) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mcp_gatekeeper.signatures import Signer, check_events, key_id

    public = Signer(Ed25519PrivateKey.generate()).public
    clock = FakeClock()
    async with backend.open(clock) as store:
        rec = await hold(store, clock)
        await decide(store, rec.id)  # no signer: as a forger with the approver's grants but not its key would
        assert await store.calls.decision_signature(rec.id) is None
        signed_since, events = await store.audit.decision_events()
        assert signed_since == 0
        (problem,) = check_events(events, signed_since=signed_since, trusted={key_id(public): public})
        assert "not signed" in problem


async def test_passkeys_are_registered_once_and_their_sign_count_is_compare_and_set(
    backend: BackendUnderTest,
) -> None:
    from mcp_gatekeeper.passkeys import Credential

    clock = FakeClock()
    async with backend.open(clock) as one, backend.open(clock) as two:
        cred = Credential(credential_id="cred-1", reviewer="alice", public_key=b"\x01\x02", sign_count=3)
        assert await one.passkeys.add(cred, channel="web")
        assert not await two.passkeys.add(replace(cred, reviewer="mallory"), channel="web")  # same id: refused
        assert await two.passkeys.get("cred-1") == cred
        assert await one.passkeys.of_reviewer("alice") == [cred]
        assert await one.passkeys.of_reviewer("mallory") == []
        assert await one.passkeys.get("nope") is None
        results: list[bool] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:  # two approvals with one assertion count: one wins
                for store in (one, two):
                    tg.start_soon(lambda s=store: _advance(s, results))
        assert sorted(results) == [False, True]
        assert (await one.passkeys.get("cred-1")) == replace(cred, sign_count=4)
        assert [e.event for e in await one.audit_events()] == ["passkey_registered"]
        # a refused registration (no fresh proof of the account) is audited, on either backend
        await two.passkeys.note_refused("mallory", channel="web", why="proof_required", message="no password")
        last = (await one.audit_events())[-1]
        assert (last.event, last.actor, last.detail) == (
            "passkey_registration_refused",
            "mallory",
            {"why": "proof_required", "message": "no password"},
        )


async def _advance(store: Store, out: list[bool]) -> None:
    out.append(await store.passkeys.advance("cred-1", seen=3, new=4))
