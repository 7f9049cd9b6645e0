"""Named reads for the weekly review and the review data export (:mod:`mcp_gatekeeper.review`).

A *human decision* is a held call (a deadline, not audit-gated) that a person approved, approved with edited
arguments (``modified``) or rejected; timeouts and audit reviews are not decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp_gatekeeper.models import CallRecord
from mcp_gatekeeper.store.engine import Engine
from mcp_gatekeeper.store.schema import CALL_COLUMNS, call_record, loads

HUMAN_DECISION = (
    "gate != 'audit' AND deadline_at IS NOT NULL AND decided_at IS NOT NULL AND decided_by IS NOT NULL"
    " AND state NOT IN ('pending', 'expired')"
)
DECISION_SQL = "CASE WHEN state = 'rejected' THEN 'rejected' WHEN modified_arguments IS NOT NULL THEN 'modified' ELSE 'approved' END"
DECISIONS = ("approved", "modified", "rejected")


@dataclass(frozen=True, slots=True)
class DecisionTime:
    """When and by whom one held call was decided (what the fatigue signals are computed from)."""

    call_id: str
    created_at: float
    decided_at: float
    reviewer: str
    channel: str | None
    rule: str | None
    upstream: str
    tool: str
    reason: str | None
    decision: str


class ReviewReads:
    """The reads the weekly review and the review export name."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def call_volume(self, since: float, until: float) -> dict[str, int]:
        """Calls created in ``[since, until)`` by what the policy did with them: ``total``, ``allowed`` (ran
        without a human: allowed, leased), ``denied``, ``held`` (waited for a human) and ``audit`` (ran, then
        reviewed)."""
        rows = await self._engine.read(
            "SELECT COUNT(*), SUM(gate != 'audit' AND deadline_at IS NULL AND state != 'denied'),"
            " SUM(state = 'denied' AND deadline_at IS NULL), SUM(gate != 'audit' AND deadline_at IS NOT NULL),"
            " SUM(gate = 'audit') FROM calls WHERE created_at >= ? AND created_at < ?",
            (since, until),
        )
        total, allowed, denied, held, audit = rows[0]
        return {
            "total": int(total or 0),
            "allowed": int(allowed or 0),
            "denied": int(denied or 0),
            "held": int(held or 0),
            "audit": int(audit or 0),
        }

    async def decision_times(self, since: float, until: float) -> list[DecisionTime]:
        """Every human decision on a held call created in ``[since, until)``, in the order they were made."""
        rows = await self._engine.read(
            "SELECT id, created_at, decided_at, decided_by, channel, rule, upstream, tool, reason,"
            f" {DECISION_SQL} FROM calls WHERE {HUMAN_DECISION} AND created_at >= ? AND created_at < ?"
            " ORDER BY decided_at, id",
            (since, until),
        )
        return [
            DecisionTime(
                call_id=r[0],
                created_at=float(r[1]),
                decided_at=float(r[2]),
                reviewer=str(r[3]),
                channel=r[4],
                rule=r[5],
                upstream=str(r[6]),
                tool=str(r[7]),
                reason=r[8],
                decision=str(r[9]),
            )
            for r in rows
        ]

    async def decided_calls(
        self,
        *,
        since: float | None,
        until: float,
        only: str | None = None,
        after: tuple[float, str] | None = None,
        limit: int = 500,
    ) -> list[tuple[CallRecord, str]]:
        """One page of human decisions on held calls (each with ``approved``, ``modified`` or ``rejected``) made
        in ``[since, until)``, oldest decision first, after the ``(decided_at, id)`` cursor; ``only`` keeps one kind."""
        where = [HUMAN_DECISION, "decided_at < ?"]
        params: list[Any] = [until]
        if since is not None:
            where.append("decided_at >= ?")
            params.append(since)
        if only is not None:
            if only not in DECISIONS:
                raise ValueError(f"unknown decision kind {only!r}")
            where.append(f"{DECISION_SQL} = ?")
            params.append(only)
        if after is not None:
            where.append("(decided_at, id) > (?, ?)")
            params.extend(after)
        rows = await self._engine.read(
            f"SELECT {CALL_COLUMNS}, {DECISION_SQL} FROM calls WHERE {' AND '.join(where)}"
            " ORDER BY decided_at, id LIMIT ?",
            (*params, limit),
        )
        return [(call_record(r[:-1]), str(r[-1])) for r in rows]

    async def tool_definition(self, upstream: str, tool: str, tooldef_hash: str | None) -> dict[str, Any] | None:
        """The tool definition a call was made against: the pin (or the quarantined change) whose hash is the
        call's ``tooldef_hash``; None when neither matches (the tool changed since, or was never pinned)."""
        if tooldef_hash is None:
            return None
        rows = await self._engine.read(
            "SELECT CASE WHEN hash = ? THEN definition WHEN pending_hash = ? THEN pending_definition END"
            " FROM pins WHERE upstream = ? AND tool = ?",
            (tooldef_hash, tooldef_hash, upstream, tool),
        )
        found: dict[str, Any] | None = loads(rows[0][0]) if rows else None
        return found
