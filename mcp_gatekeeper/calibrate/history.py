"""What happened to a recorded call, in calibration terms, and the recorded calls read a page at a time.

A recorded call either ran without a human (``ran``), was denied by the policy (``denied``), or was held
and then ``approved`` (as proposed), ``modified`` (approved with edited arguments), ``rejected``, ``expired``
(nobody decided in time) or ``undecided`` (still pending, cancelled by the client, or abandoned). An
audit-gated call ran first; its review counts as the human's word: confirmed is ``approved``, a failed
review ``rejected``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from mcp_gatekeeper.models import PastCall, State
from mcp_gatekeeper.store import Store

Then = Literal["ran", "denied", "approved", "modified", "rejected", "expired", "undecided"]
THEN_ORDER: tuple[Then, ...] = ("approved", "modified", "rejected", "expired", "undecided", "ran", "denied")
HUMAN: frozenset[Then] = frozenset({"approved", "modified", "rejected"})
"""What counts as a human decision."""

_RAN = frozenset(
    {State.ALLOWED, State.FORWARDING, State.FORWARDED, State.FAILED, State.OUTCOME_UNKNOWN, State.UNDER_REVIEW,
     State.UNREVIEWED}
)  # fmt: skip
_AFTER_APPROVAL = frozenset(
    {State.APPROVED, State.FORWARDING, State.FORWARDED, State.FAILED, State.OUTCOME_UNKNOWN, State.DENIED}
)
_REVIEW_FAILED = frozenset({State.REVIEW_FAILED, State.ROLLING_BACK, State.ROLLED_BACK, State.ROLLBACK_FAILED})


def then(call: PastCall) -> Then:
    """What happened to ``call``."""
    if call.gate == "audit":
        if call.state == State.CONFIRMED:
            return "approved"
        if call.state in _REVIEW_FAILED:
            return "rejected"
    if call.state == State.REJECTED:
        return "rejected"
    if call.state == State.EXPIRED:
        return "expired"
    if call.decided_by is not None and call.state in _AFTER_APPROVAL:
        # approved by a human (a DENIED here is an approval the proxy refused to run afterwards)
        return "modified" if call.modified else "approved"
    if call.state == State.DENIED:
        return "denied"
    if call.state in _RAN or call.state == State.CONFIRMED:
        return "ran"
    return "undecided"


def held(call: PastCall) -> bool:
    """Was a human asked before it ran (the active policy held it)? An audit-gated call ran first."""
    if call.gate == "audit":
        return False
    if then(call) in ("approved", "modified", "rejected", "expired"):
        return True
    # still waiting, or cancelled or abandoned: held if it was given a deadline (an allowed call whose process
    # died while it ran is orphaned too, without one)
    return call.state in (State.PENDING, State.CANCELLED, State.ORPHANED) and call.had_deadline


async def pages(
    store: Store,
    *,
    since: float,
    until: float,
    batch: int = 2000,
    upstream: str | None = None,
    tool: str | None = None,
) -> AsyncIterator[list[PastCall]]:
    """The recorded calls created in ``[since, until)``, oldest first, ``batch`` at a time."""
    after: tuple[float, str] | None = None
    while True:
        page = await store.past_calls(since=since, until=until, after=after, limit=batch, upstream=upstream, tool=tool)
        if not page:
            return
        yield page
        if len(page) < batch:
            return
        after = (page[-1].created_at, page[-1].id)
