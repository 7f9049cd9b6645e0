"""The sweeper's claims: the work on held calls that no request drives, shared by every process of a store.

Every gatekeeper sweeps about once a second. :meth:`Sweeps.due` is the one indexed read it makes when nothing is
due; the rest are *claims*: each reads the rows it acts on with the engine's ``claim_rows`` (PostgreSQL:
``FOR UPDATE SKIP LOCKED``; SQLite: its single writer) and changes them, with their audit events, in the same
transaction. Two processes claiming at once get disjoint work, so nothing is done twice:

- **expiry**: a pending call past its deadline becomes ``expired`` (:meth:`expire`);
- **escalation**: each step is claimed once (:meth:`claim_escalation`), by the process that sends its notice;
  the claim stays open (``claimed_by``) until that process says the notice went out (:meth:`notice_sent`);
- **review windows**: an audit-gated call whose window closed becomes ``unreviewed`` or ``review_failed``
  (:meth:`close_review`);
- **compensation**: one attempt at a time (:meth:`claim_compensation`), the claimant recorded.

What depends on policy (which rule, which step, how long, rollback or not) is decided by the gate and passed
in as values. A claim whose process dies before finishing it (a notice not sent, a compensation running) is
released by whoever recovers that process's calls (:func:`release_claims`), and another process takes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.models import CallRecord, State
from mcp_gatekeeper.store import schema
from mcp_gatekeeper.store.audit import append
from mcp_gatekeeper.store.engine import Engine, Tx

NOTICE = "notice:"
"""``claim`` of an escalation step whose notice is still to be sent: ``notice:<level>``."""
COMPENSATION = "compensation"
"""``claim`` of a compensation attempt (the call is ``rolling_back``)."""

_SWEPT = "('pending', 'under_review', 'approved', 'review_failed', 'rolling_back')"
"""The states of the calls_sweep index (0013_sweep_claims); every read of due work names them."""


class Sweeps:
    """Claims of sweeper work on the ``calls`` table, made by this process (``instance_id()``: its row in
    ``instances``, once registered)."""

    def __init__(self, engine: Engine, instance_id: Callable[[], str | None]) -> None:
        self._engine = engine
        self._instance_id = instance_id

    @property
    def _me(self) -> str | None:
        return self._instance_id()

    async def due(self, now: float, *, grace: float) -> frozenset[str]:
        """What kinds of work are due: ``expire``, ``escalate``, ``notice`` (an escalation notice whose claimant
        died), ``review``, ``abandon`` (a released approval nobody came back for within ``grace``),
        ``compensate`` (a failed review whose compensation has not run). One read of the live calls only."""
        rows = await self._engine.read(
            "SELECT DISTINCT CASE"
            " WHEN state = 'pending' AND deadline_at <= ? THEN 'expire'"
            " WHEN state = 'pending' AND escalate_at <= ? THEN 'escalate'"
            " WHEN state = 'pending' THEN 'notice'"
            " WHEN state = 'under_review' THEN 'review'"
            " WHEN state = 'approved' THEN 'abandon'"
            " ELSE 'compensate' END"
            f" FROM calls WHERE state IN {_SWEPT} AND ("
            " (state = 'pending' AND (deadline_at <= ? OR escalate_at <= ? OR (claim IS NOT NULL AND claimed_by IS NULL)))"
            " OR (state = 'under_review' AND deadline_at <= ?)"
            " OR (state = 'approved' AND instance_id IS NULL AND deadline_at + ? <= ?)"
            " OR state = 'review_failed')",
            (now, now, now, now, now, grace, now),
        )
        return frozenset(str(r[0]) for r in rows)

    # ------------------------------------------------------------------ expiry

    async def expire(self, now: float, *, why: Callable[[float], str], limit: int = 100) -> list[str]:
        """Expire up to ``limit`` pending calls whose deadline has passed, whichever process holds them; each one's
        reason is ``why(seconds it was held for)``. Returns their ids (the holder's waiter wakes by the store's
        change signal)."""

        def body(c: Tx) -> list[str]:
            rows = c.execute(
                f"SELECT id, args_digest, created_at, deadline_at FROM calls WHERE state = 'pending' AND deadline_at <= ?"
                f" ORDER BY deadline_at LIMIT ?{self._engine.claim_rows}",
                (now, limit),
            ).fetchall()
            done = []
            for cid, args_digest, created_at, deadline_at in rows:
                cur = c.execute(
                    "UPDATE calls SET state = 'expired', reason = ?, finished_at = ? WHERE id = ? AND state = 'pending'",
                    (why(float(deadline_at) - float(created_at)), now, cid),
                )
                if cur.rowcount == 1:
                    append(c, self._engine.clock, event="expired", call_id=cid, actor="gatekeeper", channel="timeout",
                           args_digest=args_digest)  # fmt: skip
                    done.append(str(cid))
            return done

        expired: list[str] = await self._engine.write(body)
        return expired

    # ------------------------------------------------------------------ escalation

    async def escalations_due(self, now: float, *, limit: int = 100) -> list[tuple[CallRecord, int]]:
        """Pending calls whose next escalation step is due, with the level reached so far, most overdue first."""
        rows = await self._engine.read(
            f"SELECT {schema.CALL_COLUMNS}, escalation FROM calls WHERE state = 'pending' AND escalate_at <= ?"
            " ORDER BY escalate_at LIMIT ?",
            (now, limit),
        )
        return [(schema.call_record(r[:-1]), int(r[-1])) for r in rows]

    async def claim_escalation(
        self, call_id: str, *, level: int, deadline_at: float | None, escalate_at: float | None, channels: list[str]
    ) -> CallRecord | None:
        """Claim escalation step ``level`` of a pending call that has not reached it: record it (audit
        ``escalated``), shorten the deadline to ``deadline_at`` (never lengthen it), set when the next step is
        due, and hold the step's notice for this process (:meth:`notice_sent`). ``None``: another process
        claimed this step (or a later one), or the call is no longer pending."""
        me = self._me
        claim = None if me is None else f"{NOTICE}{level}"  # an unregistered process sends at once or never

        def body(c: Tx) -> CallRecord | None:
            row = c.execute(
                f"SELECT id FROM calls WHERE id = ? AND state = 'pending' AND escalation < ?{self._engine.claim_rows}",
                (call_id, level),
            ).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE calls SET escalation = ?, escalate_at = ?, claimed_by = ?, claim = ?,"
                " deadline_at = CASE WHEN ? IS NOT NULL AND ? < deadline_at THEN ? ELSE deadline_at END WHERE id = ?",
                (level, escalate_at, me, claim, deadline_at, deadline_at, deadline_at, call_id),
            )
            rec = schema.call_record(
                c.execute(f"SELECT {schema.CALL_COLUMNS} FROM calls WHERE id = ?", (call_id,)).fetchone()
            )
            append(c, self._engine.clock, event="escalated", call_id=call_id, actor="gatekeeper", channel="timeout",
                   args_digest=rec.args_digest, detail={"level": level, "channels": channels, "deadline_at": deadline_at})  # fmt: skip
            return rec

        claimed: CallRecord | None = await self._engine.write(body)
        return claimed

    async def reschedule(self, call_id: str, *, level: int, escalate_at: float | None) -> bool:
        """No step of level above ``level`` is due yet: look again at ``escalate_at`` (``None``: never)."""

        def body(c: Tx) -> bool:
            cur = c.execute(
                "UPDATE calls SET escalate_at = ? WHERE id = ? AND state = 'pending' AND escalation = ?",
                (escalate_at, call_id, level),
            )
            return cur.rowcount == 1

        done: bool = await self._engine.write(body, fsync=False)
        return done

    async def notice_sent(self, call_id: str, *, level: int) -> None:
        """This process sent (or gave up sending) the notice of step ``level``: its claim is closed."""

        def body(c: Tx) -> None:
            c.execute(
                "UPDATE calls SET claimed_by = NULL, claim = NULL WHERE id = ? AND claimed_by = ? AND claim = ?",
                (call_id, self._me, f"{NOTICE}{level}"),
            )

        await self._engine.write(body)

    async def claim_open_notices(self, *, limit: int = 20) -> list[tuple[CallRecord, int]]:
        """Take over the escalation notices of pending calls whose claimant died before sending them."""
        me = self._me

        def body(c: Tx) -> list[tuple[CallRecord, int]]:
            rows = c.execute(
                f"SELECT id, claim FROM calls WHERE state = 'pending' AND claim IS NOT NULL AND claimed_by IS NULL"
                f" LIMIT ?{self._engine.claim_rows}",
                (limit,),
            ).fetchall()
            out = []
            for cid, claim in rows:
                c.execute("UPDATE calls SET claimed_by = ? WHERE id = ?", (me, cid))
                rec = schema.call_record(
                    c.execute(f"SELECT {schema.CALL_COLUMNS} FROM calls WHERE id = ?", (cid,)).fetchone()
                )
                out.append((rec, int(str(claim).removeprefix(NOTICE))))
            return out

        claimed: list[tuple[CallRecord, int]] = await self._engine.write(body)
        return claimed

    # ------------------------------------------------------------------ review windows

    async def reviews_due(self, now: float, *, limit: int = 100) -> list[CallRecord]:
        """Audit-gated calls whose review window has closed with nobody's review."""
        rows = await self._engine.read(
            f"SELECT {schema.CALL_COLUMNS} FROM calls WHERE state = 'under_review' AND deadline_at <= ?"
            " ORDER BY deadline_at LIMIT ?",
            (now, limit),
        )
        return [schema.call_record(r) for r in rows]

    async def close_review(self, call_id: str, *, now: float, to_state: State, reason: str) -> bool:
        """Claim the close of a call's review window: ``under_review`` → ``to_state`` (``unreviewed``, or
        ``review_failed`` where the rule rolls back), its audit event named for it. False: not due, or another
        process (or a reviewer) got there first."""
        if to_state not in (State.UNREVIEWED, State.REVIEW_FAILED):
            raise ValueError(f"a review window closes into unreviewed or review_failed, not {to_state}")

        def body(c: Tx) -> bool:
            row = c.execute(
                f"SELECT args_digest FROM calls WHERE id = ? AND state = 'under_review' AND deadline_at <= ?"
                f"{self._engine.claim_rows}",
                (call_id, now),
            ).fetchone()
            if row is None:
                return False
            c.execute("UPDATE calls SET state = ?, reason = ? WHERE id = ?", (to_state.value, reason, call_id))
            append(c, self._engine.clock, event=to_state.value, call_id=call_id, actor="gatekeeper", channel="timeout",
                   args_digest=row[0])  # fmt: skip
            return True

        done: bool = await self._engine.write(body)
        return done

    # ------------------------------------------------------------------ compensation

    async def compensations_due(self, upstreams: Sequence[str], *, limit: int = 100) -> list[tuple[CallRecord, int]]:
        """Failed reviews whose compensation has not run yet, for these upstreams, with the attempts so far."""
        if not upstreams:
            return []
        rows = await self._engine.read(
            f"SELECT {schema.CALL_COLUMNS}, attempts FROM calls WHERE state = 'review_failed'"
            f" AND upstream IN ({schema.placeholders(upstreams)}) ORDER BY created_at LIMIT ?",
            (*upstreams, limit),
        )
        return [(schema.call_record(r[:-1]), int(r[-1])) for r in rows]

    async def claim_compensation(self, call_id: str) -> bool:
        """Claim one compensation attempt: ``review_failed`` → ``rolling_back``, the attempt counted and this process
        recorded as running it. False: another process claimed it."""
        me = self._me

        def body(c: Tx) -> bool:
            row = c.execute(
                f"SELECT args_digest FROM calls WHERE id = ? AND state = 'review_failed'{self._engine.claim_rows}",
                (call_id,),
            ).fetchone()
            if row is None:
                return False
            c.execute(
                "UPDATE calls SET state = 'rolling_back', attempts = attempts + 1, claimed_by = ?, claim = ? WHERE id = ?",
                (me, COMPENSATION, call_id),
            )
            append(c, self._engine.clock, event="rolling_back", call_id=call_id, actor="gatekeeper",
                   channel="compensation", args_digest=row[0])  # fmt: skip
            return True

        done: bool = await self._engine.write(body)
        return done


# ---------------------------------------------------------------------------------------------- a claimant that died


def release_claims(c: Tx, clock: Clock, claim_rows: str, instance_ids: Sequence[str | None], *, why: str) -> int:
    """Inside a recovery's transaction: the open claims of processes that are gone go back to the fleet. A notice
    not yet sent is taken over by the next sweep (:meth:`Sweeps.claim_open_notices`); a compensation that was
    running is an attempt that did not finish: ``review_failed`` again (``rollback_retry``), and the next claimant
    runs it (compensations are retried anyway: an attempt may fail half-way). Returns how many were released."""
    n = 0
    for iid in instance_ids:
        if iid is None:
            continue
        rows = c.execute(
            f"SELECT id, state, claim, args_digest, attempts FROM calls WHERE claimed_by = ? AND state IN {_SWEPT}"
            f"{claim_rows}",
            (iid,),
        ).fetchall()
        for cid, state, claim, args_digest, attempts in rows:
            if state == State.ROLLING_BACK and claim == COMPENSATION:
                c.execute(
                    "UPDATE calls SET state = 'review_failed', claimed_by = NULL, claim = NULL, error = ?"
                    " WHERE id = ? AND state = 'rolling_back'",
                    (f"compensation attempt {attempts} did not finish: {why}", cid),
                )
                detail: dict[str, Any] = {"attempt": attempts, "error": why}
                append(c, clock, event="rollback_retry", call_id=cid, actor="gatekeeper", channel="recovery",
                       args_digest=args_digest, detail=detail)  # fmt: skip
            else:
                c.execute("UPDATE calls SET claimed_by = NULL WHERE id = ? AND claimed_by = ?", (cid, iid))
            n += 1
    return n
