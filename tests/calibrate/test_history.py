"""What happened to a recorded call, and the tool definitions kept by hash for replay."""

from __future__ import annotations

import pytest

from mcp_gatekeeper.calibrate.history import held, pages, then
from mcp_gatekeeper.calibrate.replay import replay
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.models import NewCall, PastCall, State
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.proxy import tooldef_hash
from mcp_gatekeeper.store import Store

from .seeding import DAY, NOW, WRITE_FILE

pytestmark = pytest.mark.anyio


def _past(
    state: State, *, gate: str = "hard", decided_by: str | None = None, modified: bool = False, deadline: bool = True
) -> PastCall:
    return PastCall(
        id="c", state=state, upstream="u", tool="t", arguments={}, gate=gate, risk="low", rule=None,
        tooldef_hash="h", reasons=(), agent_confidence=None, created_at=0.0, decided_at=None,
        decided_by=decided_by, channel=None, modified=modified, had_deadline=deadline,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("call", "what", "was_held"),
    [
        (_past(State.FORWARDED, decided_by="web:a"), "approved", True),
        (_past(State.FORWARDED, decided_by="web:a", modified=True), "modified", True),
        (_past(State.OUTCOME_UNKNOWN, decided_by="cli:a"), "approved", True),
        (_past(State.DENIED, decided_by="web:a"), "approved", True),  # approved, then refused by the proxy
        (_past(State.REJECTED, decided_by="web:a"), "rejected", True),
        (_past(State.EXPIRED), "expired", True),
        (_past(State.CANCELLED), "undecided", True),
        (_past(State.PENDING), "undecided", True),
        (_past(State.ORPHANED, gate="allow", deadline=False), "undecided", False),  # died while it ran
        (_past(State.FORWARDED, gate="allow"), "ran", False),
        (_past(State.FORWARDED, gate="lease"), "ran", False),
        (_past(State.DENIED, gate="deny"), "denied", False),
        (_past(State.CONFIRMED, gate="audit", decided_by="web:a"), "approved", False),
        (_past(State.ROLLED_BACK, gate="audit", decided_by="web:a"), "rejected", False),
        (_past(State.UNREVIEWED, gate="audit"), "ran", False),
    ],
)
def test_what_happened(call: PastCall, what: str, was_held: bool) -> None:
    assert then(call) == what
    assert held(call) is was_held


async def test_a_replaced_definition_is_kept_by_hash_and_replay_uses_the_one_the_call_saw(store: Store) -> None:
    strict = {**WRITE_FILE, "inputSchema": {**WRITE_FILE["inputSchema"], "additionalProperties": False}}
    await store.check_pins("fs", {"write_file": (tooldef_hash(strict), strict)})
    await store.check_pins("fs", {"write_file": (tooldef_hash(WRITE_FILE), WRITE_FILE)})  # changed: quarantined
    kept = await store.tool_definitions([tooldef_hash(strict), tooldef_hash(WRITE_FILE), "nope"])
    assert kept == {tooldef_hash(strict): strict, tooldef_hash(WRITE_FILE): WRITE_FILE}
    # a call recorded under the strict definition, with an argument it does not allow: a candidate that allows
    # every call still refuses it, as the live schema check did; under the loose definition it would run
    for h in (tooldef_hash(strict), tooldef_hash(WRITE_FILE)):
        new = NewCall(upstream="fs", tool="write_file", arguments={"path": "/w/a", "content": "", "mode": "x"},
                      gate="hard", risk="medium", tooldef_hash=h)  # fmt: skip
        await store.insert_history([(new, State.REJECTED, {"created_at": NOW - 60, "decided_by": "web:b"})])
    out = await replay(
        store, Policy(parse_config('[[rules]]\ntool = "*"\ngate = "allow"\n')), since=NOW - DAY, until=NOW
    )
    assert out.count(would={"deny"}) == 1
    assert out.count(would={"allow"}) == 1
    assert out.without_definition == 0


async def test_pages_walk_every_call_once_in_order_even_with_equal_times(store: Store) -> None:
    rows = []
    for i in range(7):
        new = NewCall(upstream="fs", tool="write_file", arguments={"i": i}, gate="allow", risk="low", tooldef_hash="h")
        rows.append((new, State.FORWARDED, {"created_at": NOW - 100 + (i // 3)}))  # three calls share a time
    await store.insert_history(rows)
    seen = [c.arguments["i"] async for page in pages(store, since=0, until=NOW, batch=2) for c in page]
    assert sorted(seen) == list(range(7))
    assert len(seen) == 7
    only = [c async for page in pages(store, since=NOW - 99, until=NOW, batch=2) for c in page]
    assert {c.arguments["i"] for c in only} == {3, 4, 5, 6}
