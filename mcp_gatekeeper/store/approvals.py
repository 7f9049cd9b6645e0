"""Team mode's named approvals of a call that needs several (``approvals = N`` on its rule).

Each approval is its own row and its own audit event (``approval_given``), taken in one transaction with the
checks that make it count: the call is still pending, the reviewer saw the current proposal (its digest),
and this reviewer has not approved this proposal already. An approval that edits the arguments starts a new
*round* (a new proposal): the approvals before it were for other arguments and no longer count.
The decision itself is still the call's one compare-and-set (:meth:`Calls.decide`), made once the quorum of
the current round is met.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mcp_gatekeeper.errors import AlreadyDecidedError, CallNotFoundError, NotAllowedError
from mcp_gatekeeper.store.audit import append
from mcp_gatekeeper.store.engine import Engine, Tx
from mcp_gatekeeper.store.schema import loads


@dataclass(frozen=True, slots=True)
class Tally:
    """The current round of a call's approvals."""

    call_digest: str
    """The digest of the arguments the call was made with."""
    proposal_digest: str
    """The digest of the arguments this round approves (the call's own, unless a reviewer edited them)."""
    arguments: dict[str, Any] | None
    """The edited arguments this round approves (``None``: the call's own)."""
    approvers: tuple[str, ...]
    """Who approved this round, in order."""

    @property
    def count(self) -> int:
        return len(self.approvers)

    def to_json(self, needed: int) -> dict[str, Any]:
        return {
            "needed": needed,
            "count": self.count,
            "by": list(self.approvers),
            "proposal_digest": self.proposal_digest,
            "edited": self.arguments is not None,
            "arguments": self.arguments,
        }


def _tally(c: Tx, call_id: str, call_digest: str) -> Tally:
    rows = c.execute(
        "SELECT reviewer, proposal_digest, arguments FROM call_approvals WHERE call_id = ? ORDER BY seq", (call_id,)
    ).fetchall()
    if not rows:
        return Tally(call_digest, call_digest, None, ())
    current = rows[-1][1]
    approvers: list[str] = []
    for reviewer, proposal, _ in reversed(rows):
        if proposal != current:
            break
        approvers.append(reviewer)
    return Tally(call_digest, current, loads(rows[-1][2]), tuple(reversed(approvers)))


class Approvals:
    """The ``call_approvals`` table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def tally(self, call_id: str) -> Tally:
        """The current round (``CallNotFoundError`` for an unknown call)."""

        def _body(c: Tx) -> Tally:
            row = c.execute("SELECT args_digest FROM calls WHERE id = ?", (call_id,)).fetchone()
            if row is None:
                raise CallNotFoundError(f"no call {call_id!r}")
            return _tally(c, call_id, row[0])

        return await self._engine.scan(_body)

    async def tallies(self, call_ids: list[str]) -> dict[str, Tally]:
        """The current rounds of the calls that have any approval."""
        if not call_ids:
            return {}

        def _body(c: Tx) -> dict[str, Tally]:
            rows = c.execute(
                "SELECT DISTINCT a.call_id, c.args_digest FROM call_approvals a JOIN calls c ON c.id = a.call_id"
                " WHERE a.call_id IN (SELECT value FROM json_each(?))",
                (json.dumps(call_ids),),
            ).fetchall()
            return {r[0]: _tally(c, r[0], r[1]) for r in rows}

        return await self._engine.scan(_body)

    async def add(
        self,
        call_id: str,
        *,
        reviewer: str,
        seen_digest: str,
        arguments: dict[str, Any] | None,
        arguments_digest: str | None,
        needed: int,
        session: str | None,
        channel: str,
    ) -> Tally:
        """Count ``reviewer``'s approval of the proposal whose digest they saw (``arguments``: an edit, which
        starts a new round). Refusals: :class:`AlreadyDecidedError` (not pending, or ``stale_digest``),
        :class:`NotAllowedError` ``already_approved``."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> Tally:
            row = c.execute("SELECT state, args_digest FROM calls WHERE id = ?", (call_id,)).fetchone()
            if row is None:
                raise CallNotFoundError(f"no call {call_id!r}")
            state, call_digest = row
            if state != "pending":
                raise AlreadyDecidedError(f"call {call_id} is {state}", state=state, why="decided")
            current = _tally(c, call_id, call_digest)
            if seen_digest != current.proposal_digest:
                raise AlreadyDecidedError(
                    f"call {call_id}: the arguments to approve changed since you looked (reload it)",
                    state=state, why="stale_digest",
                )  # fmt: skip
            edit = arguments is not None and arguments_digest not in (None, current.proposal_digest)
            if not edit and reviewer in current.approvers:
                raise NotAllowedError(
                    f"{reviewer} has approved call {call_id} already; another reviewer must approve",
                    why="already_approved",
                )
            proposal = arguments_digest if edit else current.proposal_digest
            stored = json.dumps(arguments) if edit else (json.dumps(current.arguments) if current.arguments else None)
            c.execute(
                "INSERT INTO call_approvals (call_id, reviewer, proposal_digest, arguments, session, at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (call_id, reviewer, proposal, stored, session, now),
            )
            after = _tally(c, call_id, call_digest)
            append(c, self._engine.clock, event="approval_given", call_id=call_id, actor=reviewer, channel=channel,
                args_digest=call_digest,
                detail={"count": after.count, "needed": needed, "by": list(after.approvers), "session": session,
                        "proposal_digest": proposal, "edited": edit, "round_reset": edit and current.count > 0},
            )  # fmt: skip
            return after

        return await self._engine.write(_body)

    async def note_refusal(self, call_id: str, *, reviewer: str, why: str, message: str, channel: str) -> None:
        """Audit a decision the service refused to this reviewer (``decision_refused``): groups, self-review, ..."""

        def _body(c: Tx) -> None:
            append(c, self._engine.clock, event="decision_refused", call_id=call_id, actor=reviewer, channel=channel,
                detail={"why": why, "message": message},
            )  # fmt: skip

        await self._engine.write(_body)
