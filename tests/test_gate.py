"""gate.py: holding, waking, expiring, modifying and cancelling, against a real SQLite file.

Time is a ``FakeClock`` that the tests move by hand; ``SteppingClock`` also reports when somebody is
asleep on a deadline, so a test advances only once the gate is really waiting (no sleeps anywhere).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_gatekeeper.clock import Clock, FakeClock, SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.errors import AlreadyDecidedError, InvalidModificationError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import Approved, CallRecord, Decision, NewCall, Outcome, Refused, State
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store

pytestmark = pytest.mark.anyio

POLICY = """
[[rules]]
name = "no-big-refunds"
tool = "issue_refund"
when = { amount = { gt = 1000 } }
gate = "deny"
reason = "refunds over 1000 need the finance team"

[[rules]]
name = "refunds"
tool = "issue_refund"
gate = "hard"
"""

SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "amount": {"type": "number", "exclusiveMinimum": 0},
        "currency": {"type": "string", "enum": ["EUR", "USD"]},
    },
    "required": ["order_id", "amount"],
    "additionalProperties": False,
}

ARGS = {"order_id": "A-17", "amount": 40, "currency": "EUR"}


class SteppingClock(FakeClock):
    """A FakeClock that knows who sleeps on which deadline, so tests can wait until the gate waits."""

    def __init__(self) -> None:
        super().__init__()
        self._deadlines: list[float] = []
        self._entered = anyio.Event()

    async def sleep_until(self, deadline: float) -> None:
        self._deadlines.append(deadline)
        self._entered.set()
        try:
            await super().sleep_until(deadline)
        finally:
            self._deadlines.remove(deadline)

    async def sleeping(self, at_least: int = 1) -> float:
        """Wait until ``at_least`` tasks sleep on deadlines still ahead; return the earliest such deadline."""
        while True:
            ahead = [d for d in self._deadlines if d > self.monotonic()]
            if len(ahead) >= at_least:
                return min(ahead)
            self._entered = anyio.Event()
            await self._entered.wait()


class Recorder:
    """A notifier that remembers what it was told and lets a test wait for it; optionally fails."""

    def __init__(self, *, fail: bool = False, block: bool = False) -> None:
        self.calls: list[CallRecord] = []
        self.seen = anyio.Event()
        self.fail = fail
        self.block = block

    async def held(self, call: CallRecord) -> None:
        self.calls.append(call)
        self.seen.set()
        if self.block:
            await anyio.sleep_forever()
        if self.fail:
            raise RuntimeError("the webhook is down")

    async def first(self) -> CallRecord:
        await self.seen.wait()
        return self.calls[0]


def new_call(arguments: dict[str, Any] | None = None) -> NewCall:
    return NewCall(
        upstream="shop",
        tool="issue_refund",
        arguments=dict(ARGS if arguments is None else arguments),
        gate="hard",
        risk="high",
        rule="refunds",
        input_schema=SCHEMA,
    )


def approve(**kw: Any) -> Decision:
    return Decision(approve=True, decided_by=kw.pop("decided_by", "ann"), channel=kw.pop("channel", "web"), **kw)


@asynccontextmanager
async def running_gate(path: Path, clock: Clock, *, notifier: Recorder | None = None, **kw: Any) -> AsyncIterator[Gate]:
    kw.setdefault("sweep_interval", None)  # these tests drive expiry through wait(); the sweeper has its own tests
    async with Store.open(path, clock) as store:
        gate = Gate(store, Policy(parse_config(POLICY)), clock, notifier=notifier, **kw)
        async with gate.running():
            yield gate


class Holder:
    """Runs ``gate.hold`` in a task and keeps its outcome."""

    def __init__(self, gate: Gate, *, timeout: float = 60.0, **kw: Any) -> None:
        self.gate, self.timeout, self.kw = gate, timeout, kw
        self.outcome: Outcome | None = None
        self.done = anyio.Event()

    async def __call__(self, new: NewCall | None = None) -> None:
        try:
            self.outcome = await self.gate.hold(new or new_call(), timeout=self.timeout, **self.kw)
        finally:
            self.done.set()


async def decision_events(gate: Gate, call_id: str) -> list[str]:
    return [e.event for e in await gate.store.audit_events(call_id=call_id) if e.event in ("approved", "rejected")]


# ---------------------------------------------------------------------------------------------- expiry


async def test_a_held_call_expires_at_its_deadline_and_is_rejected(tmp_path: Path) -> None:
    clock = SteppingClock()
    notifier = Recorder()
    async with running_gate(tmp_path / "gk.db", clock, notifier=notifier) as gate:
        holder = Holder(gate, timeout=60.0)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                rec = await notifier.first()
                assert rec.deadline_at == rec.created_at + 60.0
                await clock.sleeping()
                clock.advance(59)
                assert (await gate.store.get(rec.id)).state == State.PENDING
                assert not holder.done.is_set()
                clock.advance(2)
                await holder.done.wait()
        outcome = holder.outcome
        assert isinstance(outcome, Refused)
        assert outcome.state == State.EXPIRED
        assert outcome.reason
        stored = await gate.store.get(rec.id)
        assert stored.state == State.EXPIRED
        assert stored.decided_by is None
        assert [e.event for e in await gate.store.audit_events(call_id=rec.id)] == ["held", "expired"]
        with pytest.raises(AlreadyDecidedError) as info:
            await gate.decide(rec.id, approve())
        assert info.value.why in {"decided", "expired"}
        assert (await gate.store.get(rec.id)).state == State.EXPIRED


# ---------------------------------------------------------------------------------------------- waking


async def test_an_in_process_decision_wakes_the_waiter(tmp_path: Path) -> None:
    clock = SteppingClock()
    notifier = Recorder()
    async with running_gate(tmp_path / "gk.db", clock, notifier=notifier) as gate:
        holder = Holder(gate)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                rec = await notifier.first()
                await clock.sleeping()
                decided = await gate.decide(rec.id[:10], approve(args_digest=rec.args_digest))
                assert decided.state == State.APPROVED
        outcome = holder.outcome
        assert isinstance(outcome, Approved)
        assert outcome.arguments == ARGS
        assert outcome.modified is False
        assert outcome.call.state == State.APPROVED
        assert await decision_events(gate, rec.id) == ["approved"]


async def test_an_in_process_rejection_wakes_the_waiter(tmp_path: Path) -> None:
    clock = SteppingClock()
    notifier = Recorder()
    async with running_gate(tmp_path / "gk.db", clock, notifier=notifier) as gate:
        holder = Holder(gate)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                rec = await notifier.first()
                await gate.decide(rec.id, Decision(approve=False, decided_by="cli:bob", channel="cli", reason="no"))
        assert isinstance(holder.outcome, Refused)
        assert holder.outcome.state == State.REJECTED
        # the outcome carries the reviewer's words only; who rejected it is said by the agent's text (test_execute)
        assert holder.outcome.reason == "no"
        assert holder.outcome.call.decided_by == "cli:bob"


async def test_a_decision_from_another_process_wakes_the_waiter(tmp_path: Path) -> None:
    clock = SystemClock()
    path = tmp_path / "gk.db"
    notifier = Recorder()
    async with running_gate(path, clock, notifier=notifier, poll_interval=0.01) as holding:
        holder = Holder(holding, timeout=60.0)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                rec = await notifier.first()
                async with Store.open(path, clock) as other_store:
                    other = Gate(other_store, Policy(parse_config(POLICY)), clock)
                    await other.decide(rec.id, approve(channel="cli", decided_by="bob"))
                await holder.done.wait()
        outcome = holder.outcome
        assert isinstance(outcome, Approved)
        assert outcome.arguments == ARGS
        assert outcome.call.decided_by == "bob"


async def test_a_decision_wakes_a_waiter_after_another_waiter_on_the_same_call_gave_up(tmp_path: Path) -> None:
    clock = SteppingClock()
    async with running_gate(tmp_path / "gk.db", clock) as gate:
        rec = await gate.store.insert_call(new_call(), state=State.PENDING, deadline_at=clock.now() + 600)
        outcomes: dict[str, Outcome | None] = {}
        short_done = anyio.Event()

        async def waiter(name: str, budget: float | None) -> None:
            outcomes[name] = await gate.wait(rec, budget=budget)
            if name == "short":
                short_done.set()

        # an in-process decision wakes at once, and the clock does not move after it: 1 s is plenty
        with anyio.fail_after(1):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter, "short", 10.0)
                tg.start_soon(waiter, "long", None)
                await clock.sleeping(at_least=2)
                clock.advance(10)
                await short_done.wait()
                assert outcomes["short"] is None  # its budget ran out; the call stays pending
                await gate.decide(rec.id, approve())
        assert isinstance(outcomes["long"], Approved)


# ---------------------------------------------------------------------------------------------- modification


async def test_modifications_are_checked_then_applied(tmp_path: Path) -> None:
    clock = SteppingClock()
    notifier = Recorder()
    async with running_gate(tmp_path / "gk.db", clock, notifier=notifier) as gate:
        holder = Holder(gate)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                rec = await notifier.first()
                await clock.sleeping()

                refused_edits = [
                    {"order_id": "A-17", "amount": "lots"},  # wrong type
                    {"order_id": "A-17"},  # required field dropped
                    {"order_id": "A-17", "amount": 40, "to": "me"},  # additionalProperties
                    {"order_id": "A-17", "amount": -5},  # exclusiveMinimum
                    {"order_id": "A-17", "amount": 5000},  # valid for the schema, but lands in a deny rule
                ]
                for edit in refused_edits:
                    with pytest.raises(InvalidModificationError):
                        await gate.decide(rec.id, approve(arguments=edit))
                with pytest.raises(InvalidModificationError):  # arguments only go with an approval
                    await gate.decide(rec.id, Decision(approve=False, decided_by="ann", channel="web", arguments=ARGS))

                still = await gate.store.get(rec.id)
                assert still.state == State.PENDING
                assert (still.decided_at, still.modified_arguments) == (None, None)
                assert await decision_events(gate, rec.id) == []
                assert not holder.done.is_set()

                edit = {"order_id": "A-17", "amount": 25, "currency": "EUR"}
                done = await gate.decide(rec.id, approve(arguments=edit, args_digest=rec.args_digest))
                assert done.modified_arguments == edit
        outcome = holder.outcome
        assert isinstance(outcome, Approved)
        assert outcome.modified is True
        assert outcome.arguments == edit
        stored = await gate.store.get(rec.id)
        assert stored.modified_arguments == edit
        assert stored.arguments == ARGS  # the original stays on record
        [event] = [e for e in await gate.store.audit_events(call_id=rec.id) if e.event == "approved"]
        assert event.detail.get("modified") is True
        assert event.detail.get("modified_args_digest")


async def test_an_edit_equal_to_the_original_counts_as_unmodified(tmp_path: Path) -> None:
    clock = SteppingClock()
    notifier = Recorder()
    async with running_gate(tmp_path / "gk.db", clock, notifier=notifier) as gate:
        holder = Holder(gate)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                rec = await notifier.first()
                same_in_another_order = {"currency": "EUR", "amount": 40, "order_id": "A-17"}
                await gate.decide(rec.id, approve(arguments=same_in_another_order))
        outcome = holder.outcome
        assert isinstance(outcome, Approved)
        assert outcome.modified is False
        assert outcome.arguments == ARGS
        assert (await gate.store.get(rec.id)).modified_arguments is None


# ---------------------------------------------------------------------------------------------- cancellation


async def test_cancelling_the_waiter_cancels_the_call(tmp_path: Path) -> None:
    clock = SteppingClock()
    notifier = Recorder()
    async with running_gate(tmp_path / "gk.db", clock, notifier=notifier) as gate:
        holder = Holder(gate)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                rec = await notifier.first()
                await clock.sleeping()
                tg.cancel_scope.cancel()
        assert holder.outcome is None
        stored = await gate.store.get(rec.id)
        assert stored.state == State.CANCELLED
        assert stored.finished_at is not None
        assert [e.event for e in await gate.store.audit_events(call_id=rec.id)] == ["held", "cancelled"]
        with pytest.raises(AlreadyDecidedError):
            await gate.decide(rec.id, approve())
        assert (await gate.store.get(rec.id)).state == State.CANCELLED


async def test_cancelling_while_the_notifier_is_stuck_cancels_the_call(tmp_path: Path) -> None:
    clock = SteppingClock()
    notifier = Recorder(block=True)
    async with running_gate(tmp_path / "gk.db", clock, notifier=notifier) as gate:
        holder = Holder(gate)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                rec = await notifier.first()
                tg.cancel_scope.cancel()
        assert (await gate.store.get(rec.id)).state == State.CANCELLED
        with pytest.raises(AlreadyDecidedError):
            await gate.decide(rec.id, approve())


# ---------------------------------------------------------------------------------------------- notifier and ticks


async def test_a_failing_notifier_does_not_stop_the_hold(tmp_path: Path) -> None:
    clock = SteppingClock()
    notifier = Recorder(fail=True)
    async with running_gate(tmp_path / "gk.db", clock, notifier=notifier) as gate:
        holder = Holder(gate)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                rec = await notifier.first()
                await clock.sleeping()
                assert (await gate.store.get(rec.id)).state == State.PENDING
                await gate.decide(rec.id, approve())
        assert isinstance(holder.outcome, Approved)
        assert holder.outcome.arguments == ARGS


async def test_a_notifier_that_never_returns_does_not_delay_the_hold(tmp_path: Path) -> None:
    clock = SteppingClock()
    notifier = Recorder(block=True)
    async with running_gate(tmp_path / "gk.db", clock, notifier=notifier) as gate:
        holder = Holder(gate)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                rec = await notifier.first()
                await clock.sleeping()  # waiting for a human although the notifier is still stuck
                await gate.decide(rec.id, approve())
        assert isinstance(holder.outcome, Approved)


async def test_on_tick_counts_down_while_held(tmp_path: Path) -> None:
    clock = SteppingClock()
    notifier = Recorder()
    send, receive = anyio.create_memory_object_stream[tuple[str, float]](16)

    async def on_tick(call: CallRecord, seconds_left: float) -> None:
        await send.send((call.id, seconds_left))

    with send, receive:
        async with running_gate(tmp_path / "gk.db", clock, notifier=notifier, heartbeat_interval=10.0) as gate:
            holder = Holder(gate, timeout=60.0, on_tick=on_tick)
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(holder)
                    rec = await notifier.first()
                    lefts = []
                    for _ in range(4):
                        await clock.sleeping()
                        clock.advance(10)
                        call_id, left = await receive.receive()
                        assert call_id == rec.id
                        lefts.append(left)
                    assert lefts == pytest.approx([50.0, 40.0, 30.0, 20.0])
                    assert (await gate.store.get(rec.id)).state == State.PENDING
                    await gate.decide(rec.id, approve())
            assert isinstance(holder.outcome, Approved)


async def test_an_on_tick_that_raises_never_decides(tmp_path: Path) -> None:
    clock = SteppingClock()
    notifier = Recorder()
    ticks: list[float] = []

    async def on_tick(call: CallRecord, seconds_left: float) -> None:
        ticks.append(seconds_left)
        raise RuntimeError("the client went deaf")

    async with running_gate(tmp_path / "gk.db", clock, notifier=notifier, heartbeat_interval=10.0) as gate:
        holder = Holder(gate, timeout=60.0, on_tick=on_tick)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                rec = await notifier.first()
                for n in range(1, 4):
                    await clock.sleeping()
                    clock.advance(10)
                    await clock.sleeping()  # the gate is back asleep: the tick has run (and raised)
                    assert len(ticks) == n
                    assert (await gate.store.get(rec.id)).state == State.PENDING
                    assert not holder.done.is_set()
                await gate.decide(rec.id, approve())
        assert ticks == pytest.approx([50.0, 40.0, 30.0])
        assert isinstance(holder.outcome, Approved)
        assert await decision_events(gate, rec.id) == ["approved"]


async def test_ticks_then_expiry_never_approve(tmp_path: Path) -> None:
    clock = SteppingClock()
    notifier = Recorder()
    ticks: list[float] = []

    async def on_tick(call: CallRecord, seconds_left: float) -> None:
        ticks.append(seconds_left)

    async with running_gate(tmp_path / "gk.db", clock, notifier=notifier, heartbeat_interval=10.0) as gate:
        holder = Holder(gate, timeout=30.0, on_tick=on_tick)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await notifier.first()
                while not holder.done.is_set():
                    await clock.sleeping()
                    clock.advance(10)
                    if clock.monotonic() >= 1030:
                        await holder.done.wait()
        assert ticks == pytest.approx([20.0, 10.0])
        assert isinstance(holder.outcome, Refused)
        assert holder.outcome.state == State.EXPIRED
