"""Team mode's named approvals of a call that needs several (``approvals = N`` on its rule).

Each approval is its own row and its own audit event (``approval_given``), taken in one transaction with the
checks that make it count: the call is still pending, the reviewer saw the current proposal (its digest),
and this reviewer has not approved this proposal already. An approval that edits the arguments starts a new
*round* (a new proposal): the approvals before it were for other arguments and no longer count.
The decision itself is still the call's one compare-and-set (:meth:`Calls.decide`), made once the quorum of
the current round is met.

Each step is a signed statement (:class:`~mcp_gatekeeper.signatures.StepFacts`: call, proposal digest,
reviewer, step, round, time, channel) stored with its row and its audit event, and, for a passkey rule, carries
the approver's own assertion; the gatekeeper that holds the call checks them all again before forwarding
(:meth:`mcp_gatekeeper.gate.Gate.verify_approval`), so a row written past the service counts for nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcp_gatekeeper.errors import AlreadyDecidedError, CallNotFoundError, NotAllowedError
from mcp_gatekeeper.signatures import StepFacts
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
    round: int = 0
    """This round's number (0: the call's own arguments; each edit that changes them starts the next)."""

    def next_round(self, proposal: str) -> int:
        """The round an approval of ``proposal`` (a digest) belongs to: this one, or the next for an edit of a
        round someone approved already (the first approval of a call, edit or not, is in round 0)."""
        return self.round if proposal == self.proposal_digest or not self.approvers else self.round + 1

    @property
    def count(self) -> int:
        return len(self.approvers)

    def to_json(self, needed: int) -> dict[str, Any]:
        return {
            "needed": needed,
            "count": self.count,
            "by": list(self.approvers),
            "proposal_digest": self.proposal_digest,
            "round": self.round,
            "edited": self.arguments is not None,
            "arguments": self.arguments,
        }


@dataclass(frozen=True, slots=True)
class StepRow:
    """One stored approval step, as the holder re-checks it (nothing in it is trusted until its signature is)."""

    seq: int
    call_id: str
    reviewer: str
    proposal_digest: str
    round: int
    step: int
    at: float
    channel: str
    signature: Any
    passkey: Any

    def facts(self) -> StepFacts:
        return StepFacts(
            call_id=self.call_id, proposal_digest=self.proposal_digest, reviewer=self.reviewer, step=self.step,
            round=self.round, at=self.signature.get("at", -1.0) if isinstance(self.signature, dict) else -1.0,
            channel=self.channel,
        )  # fmt: skip


def _tally(c: Tx, call_id: str, call_digest: str) -> Tally:
    rows = c.execute(
        "SELECT reviewer, proposal_digest, arguments, round FROM call_approvals WHERE call_id = ? ORDER BY seq",
        (call_id,),
    ).fetchall()
    if not rows:
        return Tally(call_digest, call_digest, None, ())
    current, current_round = rows[-1][1], rows[-1][3]
    approvers: list[str] = []
    for reviewer, proposal, _, round_ in reversed(rows):
        if proposal != current or round_ != current_round:
            break
        approvers.append(reviewer)
    return Tally(call_digest, current, loads(rows[-1][2]), tuple(reversed(approvers)), current_round)


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

    async def steps(self, call_id: str) -> list[StepRow]:
        """Every stored step of a call, oldest first (the holder checks them: see the module docstring)."""
        rows = await self._engine.read(
            "SELECT seq, call_id, reviewer, proposal_digest, round, step, at, channel, signature, passkey"
            " FROM call_approvals WHERE call_id = ? ORDER BY seq",
            (call_id,),
        )
        return [
            StepRow(int(r[0]), r[1], r[2], r[3], int(r[4]), int(r[5]), float(r[6]), r[7], _json(r[8]), _json(r[9]))
            for r in rows
        ]

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
        expected_round: int | None = None,
        passkey: dict[str, Any] | None = None,
        sign: Callable[[StepFacts], dict[str, Any]] | None = None,
    ) -> Tally:
        """Count ``reviewer``'s approval of the proposal whose digest they saw (``arguments``: an edit, which
        starts a new round). ``expected_round``: the round the approver's passkey assertion was made for (another
        round is ``stale_digest``); ``passkey``: that assertion, stored with the step; ``sign`` (the service's
        :meth:`~mcp_gatekeeper.signatures.Signer.seal_step`) signs the step as written.
        Refusals: :class:`AlreadyDecidedError` (not pending, or ``stale_digest``), :class:`NotAllowedError`
        ``already_approved``."""
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
            proposal = str(arguments_digest) if edit else current.proposal_digest
            round_ = current.next_round(proposal)
            if expected_round is not None and expected_round != round_:
                raise AlreadyDecidedError(
                    f"call {call_id}: another reviewer changed the arguments since you looked (reload it)",
                    state=state, why="stale_digest",
                )  # fmt: skip
            step = 1 if edit else current.count + 1
            seal = None
            if sign is not None:
                seal = sign(StepFacts(call_id, proposal, reviewer, step, round_, now, channel))
            stored = json.dumps(arguments) if edit else (json.dumps(current.arguments) if current.arguments else None)
            c.execute(
                "INSERT INTO call_approvals (call_id, reviewer, proposal_digest, arguments, session, at, round, step,"
                " channel, signature, passkey) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (call_id, reviewer, proposal, stored, session, now, round_, step, channel,
                 None if seal is None else json.dumps(seal), None if passkey is None else json.dumps(passkey)),
            )  # fmt: skip
            after = _tally(c, call_id, call_digest)
            detail: dict[str, Any] = {
                "count": after.count, "needed": needed, "by": list(after.approvers), "session": session,
                "proposal_digest": proposal, "edited": edit, "round_reset": edit and current.count > 0,
                "round": round_, "step": step,
            }  # fmt: skip
            if seal is not None:
                detail["signature"] = seal
            if passkey is not None:
                detail["passkey"] = passkey
            append(c, self._engine.clock, event="approval_given", call_id=call_id, actor=reviewer, channel=channel,
                   args_digest=call_digest, detail=detail)  # fmt: skip
            return after

        return await self._engine.write(_body)

    async def note_refusal(self, call_id: str, *, reviewer: str, why: str, message: str, channel: str) -> None:
        """Audit a decision the service refused to this reviewer (``decision_refused``): groups, self-review, ..."""

        def _body(c: Tx) -> None:
            append(c, self._engine.clock, event="decision_refused", call_id=call_id, actor=reviewer, channel=channel,
                detail={"why": why, "message": message},
            )  # fmt: skip

        await self._engine.write(_body)


def _json(text: Any) -> Any:
    """A JSON column read back (a value that is not JSON is kept as is: it will never verify)."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
