"""Named reads for the approval page and the Stats page: each answers one question, as values.

The page and the reports ask these instead of writing SQL (no module outside ``mcp_gatekeeper.store`` does).
Held calls are the rows with a deadline that are not audit-gated (a hold sets the deadline for the decision; an
audit gate sets one for its review window, after the call ran); :data:`OUTCOME_SQL` classes how a held call
ended: ``approved``, ``modified`` (approved with edited arguments), ``rejected``, ``expired``, ``cancelled``
(cancelled or orphaned) or still ``pending``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from mcp_gatekeeper.models import QUARANTINE_MARK
from mcp_gatekeeper.store.engine import Engine

OUTCOME_SQL = """
    CASE
      WHEN state = 'pending' THEN 'pending'
      WHEN state = 'rejected' THEN 'rejected'
      WHEN state = 'expired' THEN 'expired'
      WHEN state IN ('cancelled', 'orphaned') AND decided_at IS NULL THEN 'cancelled'
      WHEN modified_arguments IS NOT NULL THEN 'modified'
      ELSE 'approved'
    END"""
_HUMAN_DECIDED = (
    "decided_at IS NOT NULL AND decided_by IS NOT NULL AND state NOT IN ('expired', 'pending') AND gate != 'audit'"
)
_HEADLINE = (
    " CASE WHEN summary IS NULL AND length(arguments) <= ? THEN arguments END,"
    " CASE WHEN summary IS NULL THEN input_schema END"
)


class QueueRow(NamedTuple):
    """A call as a row of the page's live view (pending, in review, rollback failed).

    ``short_arguments`` (JSON text) and ``input_schema`` (JSON text) are there only for a call without a
    summary, and the arguments only when they are at most the cap the page asked for: enough for a headline.
    """

    id: str
    state: str
    created_at: float
    deadline_at: float | None
    risk: str
    upstream: str
    tool: str
    summary: str | None
    escalation: int
    principal: str | None
    quarantined: bool
    short_arguments: str | None
    input_schema: str | None


class OutcomeSlice(NamedTuple):
    """How many held calls of one slice of time (``slice`` counts slices since the start) ended one way."""

    slice: int
    outcome: str
    calls: int


class RuleOutcome(NamedTuple):
    rule: str
    outcome: str
    calls: int
    escalated: int


class HumanDecision(NamedTuple):
    """A held call decided by a person: how long it waited, who decided, and how."""

    latency: float
    decided_by: str
    state: str
    modified: bool


class ToolUsage(NamedTuple):
    upstream: str
    tool: str
    total: int
    held: int
    allowed: int
    denied: int


class EscalationStep(NamedTuple):
    level: int
    events: int
    shortened: int


class Queries:
    """The reads the page and the reports name."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # ------------------------------------------------------------------ the page

    async def _queue(self, where_and_order: str, params: Sequence[Any], arguments_cap: int) -> list[QueueRow]:
        rows = await self._engine.read(
            "SELECT id, state, created_at, deadline_at, risk, upstream, tool, summary, escalation, principal,"
            f" reasons LIKE ?,{_HEADLINE} FROM calls {where_and_order}",
            (f'["{QUARANTINE_MARK}%', arguments_cap, *params),
        )
        return [
            QueueRow(
                id=r[0],
                state=r[1],
                created_at=r[2],
                deadline_at=r[3],
                risk=r[4],
                upstream=r[5],
                tool=r[6],
                summary=r[7],
                escalation=int(r[8]),
                principal=r[9],
                quarantined=bool(r[10]),
                short_arguments=r[11],
                input_schema=r[12],
            )
            for r in rows
        ]

    async def pending_queue(self, *, arguments_cap: int, limit: int = 500) -> list[QueueRow]:
        """The pending calls, oldest first."""
        return await self._queue(
            "WHERE state = 'pending' ORDER BY created_at, id LIMIT ?", (limit,), arguments_cap=arguments_cap
        )

    async def review_queue(self, *, arguments_cap: int, limit: int = 500) -> list[QueueRow]:
        """Audit-gated calls to review: in their window (soonest deadline first), then unreviewed."""
        return await self._queue(
            "WHERE state IN ('under_review', 'unreviewed')"
            " ORDER BY state = 'unreviewed', deadline_at, created_at, id LIMIT ?",
            (limit,),
            arguments_cap=arguments_cap,
        )

    async def rollbacks_failed(self, *, arguments_cap: int, limit: int = 100) -> list[QueueRow]:
        """Calls whose compensation failed, newest first."""
        return await self._queue(
            "WHERE state = 'rollback_failed' ORDER BY created_at DESC, id LIMIT ?",
            (limit,),
            arguments_cap=arguments_cap,
        )

    async def last_audit_seq(self) -> int:
        """The newest audit event's number (0: none): it moves whenever anything changes."""
        rows = await self._engine.read("SELECT COALESCE(MAX(seq), 0) FROM audit")
        return int(rows[0][0])

    async def summaries(self, call_ids: Sequence[str]) -> dict[str, str | None]:
        """The summaries of these calls (the ones that exist)."""
        if not call_ids:
            return {}
        rows = await self._engine.read(
            "SELECT id, summary FROM calls WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(list(call_ids)),)
        )
        return {r[0]: r[1] for r in rows}

    async def held_by_quarantine(self) -> dict[tuple[str, str], int]:
        """Pending calls held because their tool's definition changed, per (upstream, tool)."""
        rows = await self._engine.read(
            "SELECT upstream, tool, COUNT(*) FROM calls WHERE state = 'pending' AND reasons LIKE ?"
            " GROUP BY upstream, tool",
            (f'["{QUARANTINE_MARK}%',),
        )
        return {(u, t): int(n) for u, t, n in rows}

    async def escalation_and_attempts(self, call_id: str) -> tuple[int, int]:
        """The escalation step a call reached and its compensation attempts ((0, 0) for an unknown call)."""
        rows = await self._engine.read("SELECT escalation, attempts FROM calls WHERE id = ?", (call_id,))
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    async def counts(self) -> dict[str, int]:
        """How many calls are in each state."""
        rows = await self._engine.read("SELECT state, COUNT(*) FROM calls GROUP BY state")
        return {r[0]: r[1] for r in rows}

    # ------------------------------------------------------------------ the Stats page

    async def held_outcomes(self, *, since: float, slice_seconds: float) -> list[OutcomeSlice]:
        """Held calls created since ``since`` by outcome, per slice of ``slice_seconds`` from ``since``."""
        rows = await self._engine.read(
            f"SELECT CAST((created_at - ?) / ? AS INTEGER) AS q, {OUTCOME_SQL} AS o, COUNT(*) FROM calls"
            " WHERE deadline_at IS NOT NULL AND gate != 'audit' AND created_at >= ? GROUP BY q, o",
            (since, slice_seconds, since),
        )
        return [OutcomeSlice(int(q), o, int(n)) for q, o, n in rows]

    async def held_outcomes_per_rule(self, *, since: float) -> list[RuleOutcome]:
        """Held calls created since ``since`` by rule and outcome, with how many of them escalated."""
        rows = await self._engine.read(
            f"SELECT COALESCE(rule, '(no rule: defaults)'), {OUTCOME_SQL} AS o, COUNT(*), SUM(escalation > 0)"
            " FROM calls WHERE deadline_at IS NOT NULL AND gate != 'audit' AND created_at >= ? GROUP BY 1, 2",
            (since,),
        )
        return [RuleOutcome(rule, o, int(n), int(e or 0)) for rule, o, n, e in rows]

    async def human_decisions(self, *, since: float) -> list[HumanDecision]:
        """Decisions by people on held calls created since ``since``, in the order they were made."""
        rows = await self._engine.read(
            "SELECT decided_at - created_at, decided_by, state, modified_arguments IS NOT NULL FROM calls"
            f" WHERE {_HUMAN_DECIDED} AND created_at >= ? ORDER BY decided_at, id",
            (since,),
        )
        return [HumanDecision(float(lat), who, state, bool(m)) for lat, who, state, m in rows]

    async def tool_usage(self, *, since: float, limit: int = 50) -> list[ToolUsage]:
        """The most called tools since ``since``: calls, held, allowed (without a hold) and denied."""
        rows = await self._engine.read(
            "SELECT upstream, tool, COUNT(*), SUM(deadline_at IS NOT NULL AND gate != 'audit'), SUM(gate != 'audit' AND"
            " (state = 'allowed' OR (deadline_at IS NULL AND state IN ('forwarding','forwarded','failed','outcome_unknown')))),"
            " SUM(state = 'denied') FROM calls WHERE created_at >= ? GROUP BY upstream, tool"
            " ORDER BY COUNT(*) DESC, upstream, tool LIMIT ?",
            (since, limit),
        )
        return [ToolUsage(u, t, int(n), int(h or 0), int(a or 0), int(d or 0)) for u, t, n, h, a, d in rows]

    async def escalation_steps(self, *, since: float) -> list[EscalationStep]:
        """Escalation steps fired since ``since`` (from the audit log), per level, and how many shortened a deadline."""
        rows = await self._engine.read(
            "SELECT json_extract(detail, '$.level') AS lv, COUNT(*), SUM(json_extract(detail, '$.deadline_at') IS NOT NULL)"
            " FROM audit WHERE event = 'escalated' AND at >= ? GROUP BY lv ORDER BY lv",
            (since,),
        )
        return [EscalationStep(int(lv), int(n), int(s or 0)) for lv, n, s in rows if lv is not None]

    async def escalated_outcomes(self, *, since: float) -> dict[str, int]:
        """How the held calls created since ``since`` that escalated ended, by outcome."""
        rows = await self._engine.read(
            f"SELECT {OUTCOME_SQL} AS o, COUNT(*) FROM calls"
            " WHERE escalation > 0 AND deadline_at IS NOT NULL AND gate != 'audit' AND created_at >= ? GROUP BY o",
            (since,),
        )
        return {o: int(n) for o, n in rows}

    async def audit_gated_states(self, *, since: float) -> dict[str, int]:
        """Audit-gated calls created since ``since`` by state."""
        rows = await self._engine.read(
            "SELECT state, COUNT(*) FROM calls WHERE gate = 'audit' AND created_at >= ? GROUP BY state", (since,)
        )
        return {s: int(n) for s, n in rows}

    # ------------------------------------------------------------------ team mode

    async def hosts_of(self, call_ids: Sequence[str]) -> dict[str, str]:
        """The host of the gatekeeper process holding each of these calls (the ones whose process is known)."""
        if not call_ids:
            return {}
        rows = await self._engine.read(
            "SELECT c.id, i.host FROM calls c JOIN instances i ON i.id = c.instance_id"
            " WHERE c.id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(call_ids)),),
        )
        return {r[0]: r[1] for r in rows}
