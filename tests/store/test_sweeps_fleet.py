"""Gates of several processes sharing one store share its sweeper work without doubling it (``backend`` fixture).

Each gate has its own :class:`Store` (its own connection, its own instance row), as separate processes do; time is
a :class:`FakeClock` shared by all of them, moved by the test. The real-process version is tests/test_sweeper_e2e.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import CallRecord, NewCall, Outcome, Refused, State
from mcp_gatekeeper.policy import Policy

if TYPE_CHECKING:
    from store.conftest import BackendUnderTest  # the fixture's type only (pytest puts tests/ on the path)

pytestmark = pytest.mark.anyio

CONFIG = """
[notify]
stderr = false
[[notify.webhooks]]
name = "oncall"
url = "http://127.0.0.1:9/hook"
[[rules]]
name = "deploys"
tool = "deploy"
gate = "hard"
timeout = "1h"
escalate = [
  { after = "10m", notify = ["oncall"], timeout = "1m" },
  { after = "20m", notify = ["oncall"] },
]
[[rules]]
name = "releases"
tool = "release"
gate = "hard"
timeout = "1h"
escalate = [{ after = "10m", notify = ["oncall"] }, { after = "20m", notify = ["stderr"] }]
[[rules]]
name = "writes"
tool = "write"
gate = "audit"
review_window = "5m"
on_review_timeout = "rollback"
compensate = { tool = "undo", arguments = { path = "{{args.path}}" } }
[[rules]]
name = "reads"
tool = "read"
gate = "audit"
review_window = "5m"
irreversible_ok = true
"""


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str]]] = []

    async def held(self, call: CallRecord) -> None:
        pass

    async def escalated(self, call: CallRecord, channels: list[str]) -> None:
        self.sent.append((call.id, list(channels)))


def deploy(n: int) -> NewCall:
    return NewCall(upstream="ops", tool="deploy", arguments={"n": n}, gate="hard", risk="high", rule="deploys")


async def test_a_waiter_wakes_when_another_process_escalates_then_expires_its_call(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    policy = Policy(parse_config(CONFIG))
    mine, theirs = Recorder(), Recorder()
    async with backend.open(clock) as hs, backend.open(clock) as os_:
        await hs.register_instance("holder")
        await os_.register_instance("other")
        holder = Gate(hs, policy, clock, notifier=mine, sweep_interval=None, poll_interval=0.01)
        other = Gate(os_, policy, clock, notifier=theirs, sweep_interval=None)
        outcome: list[Outcome] = []
        with anyio.fail_after(30):
            async with holder.running(), anyio.create_task_group() as tg:
                rec = await holder.start_hold(deploy(1), timeout=3600)

                async def wait() -> None:
                    got = await holder.wait(rec)
                    assert got is not None
                    outcome.append(got)

                tg.start_soon(wait)
                clock.advance(600)
                await other.sweep_once()  # the other process claims the first step and sends its notice
                assert theirs.sent == [(rec.id, ["oncall"])]
                assert mine.sent == []
                assert (await hs.get(rec.id)).deadline_at == clock.now() + 60
                clock.advance(60)
                # nobody sweeps: only the holder's watcher, seeing its deadline moved, lets its waiter expire it
                # (counting down to the hour it was first given, the waiter would sleep on)
        assert isinstance(outcome[0], Refused) and outcome[0].state == State.EXPIRED
        assert [e.event for e in await hs.audit_events(call_id=rec.id)] == ["held", "escalated", "expired"]

        rec2 = await holder.start_hold(deploy(2), timeout=60)
        outcome.clear()
        with anyio.fail_after(30):
            async with holder.running(), anyio.create_task_group() as tg:

                async def wait2() -> None:
                    got = await holder.wait(rec2, budget=10_000)
                    assert got is not None
                    outcome.append(got)

                tg.start_soon(wait2)
                await os_.sweeps.expire(clock.now() + 60, why=lambda _: "no decision")  # the other's clock ran on
        assert isinstance(outcome[0], Refused) and outcome[0].state == State.EXPIRED  # woken by the watcher


async def test_gates_sweeping_at_once_do_each_piece_of_work_once(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    policy = Policy(parse_config(CONFIG))
    async with backend.open(clock) as a, backend.open(clock) as b, backend.open(clock) as c:
        notes = [Recorder(), Recorder(), Recorder()]
        gates = []
        for i, store in enumerate((a, b, c)):
            await store.register_instance(f"gk{i}")
            gates.append(Gate(store, policy, clock, notifier=notes[i], sweep_interval=None))
        held = []
        for i in range(12):
            new = NewCall(upstream="ops", tool="release", arguments={"n": i}, gate="hard", risk="high", rule="releases")
            held.append(await gates[i % 3].start_hold(new, timeout=1800))
        audited = []
        for i in range(8):
            tool, rule = ("write", "writes") if i % 2 == 0 else ("read", "reads")
            new = NewCall(upstream="files", tool=tool, arguments={"path": f"/f{i}"}, gate="audit", risk="medium",
                          rule=rule)  # fmt: skip
            rec = await (a, b, c)[i % 3].insert_call(new, state=State.ALLOWED)
            await a.transition(rec.id, [State.ALLOWED], State.UNDER_REVIEW, deadline_at=clock.now() + 300)
            audited.append(rec)

        async def all_sweep() -> None:
            async with anyio.create_task_group() as tg:
                for g in gates:
                    tg.start_soon(g.sweep_once)

        rings = [g.reviewed for g in gates]
        clock.advance(300)
        await all_sweep()  # review windows close: the rollback rule's calls fail review, the others go unreviewed
        states = await a.states_of([r.id for r in audited])
        assert [states[r.id] for r in audited] == [State.REVIEW_FAILED, State.UNREVIEWED] * 4
        assert any(ring.is_set() for ring in rings)  # whoever failed a review rang its compensation runner at once
        rings = [g.reviewed for g in gates]
        await all_sweep()
        assert all(ring.is_set() for ring in rings)  # and every process's is rung while a compensation is due
        clock.advance(300)  # 10 minutes: every held call's first step
        await all_sweep()
        clock.advance(600)  # 20 minutes: the second
        await all_sweep()
        sent = [n for r in notes for n in r.sent]
        expected = [(h.id, ["oncall"]) for h in held] + [(h.id, ["stderr"]) for h in held]
        assert sorted(sent) == sorted(expected)  # each step's notice once in the whole fleet
        assert set((await a.states_of([h.id for h in held])).values()) == {State.PENDING}
        clock.advance(600)  # 30 minutes: their deadline
        await all_sweep()
        assert set((await a.states_of([h.id for h in held])).values()) == {State.EXPIRED}
        events = await a.audit_events(limit=5000)
        for h in held:
            mine = [e.event for e in events if e.call_id == h.id]
            assert mine == ["held", "escalated", "escalated", "expired"]
        for r in audited:
            closed = [e.event for e in events if e.call_id == r.id and e.event in ("review_failed", "unreviewed")]
            assert len(closed) == 1
        assert await a.sweeps.due(clock.now(), grace=600.0) == {"compensate"}  # the failed reviews wait for it
        ok, _, message = await a.verify_audit()
        assert ok, message
