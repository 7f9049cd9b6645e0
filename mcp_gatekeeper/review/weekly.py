"""The weekly review's figures: what the gates held, how people decided, and where the gates are off.

Built on :func:`mcp_gatekeeper.reports.stats` (the Stats page's figures, for the same period) plus the volume
of every call and the fatigue signals of :mod:`.fatigue`. The result is a plain value that
:mod:`.render` draws as Markdown or HTML. Calibration suggestions are passed in (they come from the
calibrate package) and shown as given; none are invented here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from mcp_gatekeeper.calibrate.rules_toml import masked
from mcp_gatekeeper.calibrate.suggest import Suggestion
from mcp_gatekeeper.reports import OUTCOMES, stats
from mcp_gatekeeper.review.fatigue import FatigueThresholds, ReviewerFatigue, fatigue
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.store.review import DecisionTime
from mcp_gatekeeper.webredact import redact

RATES = ("approved", "modified", "rejected", "expired")
TOP_TOOLS = 15
LATEST_REJECTIONS = 10
"""The per-rule rates the report shows, as shares of the rule's finished held calls."""


@dataclass(frozen=True, slots=True)
class RuleRow:
    rule: str
    counts: dict[str, int]
    """Held calls by outcome (``reports.OUTCOMES``)."""
    escalated: int
    finished: int

    def rate(self, outcome: str) -> float | None:
        return self.counts[outcome] / self.finished if self.finished else None

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            **self.counts,
            "escalated": self.escalated,
            "finished": self.finished,
            "rates": {o: self.rate(o) for o in RATES},
        }


@dataclass
class WeeklyReview:
    since: float
    until: float
    volume: dict[str, int]
    held: dict[str, int]
    """Held calls by outcome."""
    rules: list[RuleRow]
    escalations: dict[str, Any]
    time_to_decision: dict[str, Any]
    series: list[dict[str, Any]]
    """Held calls per UTC calendar day, by outcome (the first day may be partial)."""
    reviewers: list[ReviewerFatigue]
    thresholds: FatigueThresholds
    never_rejected: list[dict[str, Any]]
    always_rejected: list[dict[str, Any]]
    timeouts: list[dict[str, Any]]
    """Rules whose held calls run out of time too often (``reports.TIMEOUT_RATE_FLAG``)."""
    reviews: dict[str, int]
    """Audit-gated calls by review state."""
    tools: list[dict[str, Any]] = field(default_factory=list)
    """The busiest tools: ``upstream``, ``tool``, ``total``, ``held``, ``allowed``, ``denied``."""
    rejections: list[dict[str, Any]] = field(default_factory=list)
    """The latest rejections with their reasons (secrets masked), newest first."""
    suggestions: list[Suggestion] | None = None
    """What ``mcp-gatekeeper suggest`` suggests for the period (:mod:`mcp_gatekeeper.calibrate.suggest`), as given;
    None when the caller did not ask (no config at hand)."""
    notes: list[str] = field(default_factory=list)

    @property
    def decisions(self) -> int:
        return sum(r.decisions for r in self.reviewers)

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "volume": self.volume,
            "held": self.held,
            "rules": [r.to_json() for r in self.rules],
            "escalations": self.escalations,
            "time_to_decision": self.time_to_decision,
            "series": self.series,
            "reviewers": [r.to_json() for r in self.reviewers],
            "never_rejected": self.never_rejected,
            "always_rejected": self.always_rejected,
            "timeouts": self.timeouts,
            "reviews": self.reviews,
            "tools": self.tools,
            "rejections": self.rejections,
            "suggestions": None
            if self.suggestions is None
            else [{**s.to_json(), "toml": masked_toml(s.toml)} for s in self.suggestions],
            "notes": self.notes,
        }


async def weekly_review(
    store: Store,
    *,
    since: float,
    now: float,
    thresholds: FatigueThresholds | None = None,
    suggestions: Sequence[Suggestion] | None = None,
) -> WeeklyReview:
    """The review of calls created in ``[since, now)``."""
    days = max(1, math.ceil((now - since) / 86400)) + 1  # calendar days from the one ``since`` falls in
    s = await stats(store, now=now, days=float(days), zone=UTC, since=since)
    rules = [
        RuleRow(
            rule=r["rule"],
            counts={o: int(r[o]) for o in OUTCOMES},
            escalated=int(r["escalated"]),
            finished=int(r["finished"]),
        )
        for r in s["per_rule"]
    ]
    t = thresholds or FatigueThresholds()
    decided = await store.review.decision_times(since, now)
    return WeeklyReview(
        since=since,
        until=now,
        volume=await store.review.call_volume(since, now),
        held=dict(s["totals"]),
        rules=rules,
        escalations=s["escalations"],
        time_to_decision=s["time_to_decision"],
        series=[day for day in s["series"] if day["start"] + 86400 > since],
        reviewers=fatigue(decided, t),
        thresholds=t,
        never_rejected=s["rule_hints"]["never_rejected"],
        always_rejected=s["rule_hints"]["always_rejected"],
        timeouts=s["timeouts"]["miscalibrated"],
        reviews=s["reviews"],
        suggestions=None if suggestions is None else list(suggestions),
        tools=list(s["usage"][:TOP_TOOLS]),
        rejections=[_rejection(d) for d in reversed(decided) if d.decision == "rejected"][:LATEST_REJECTIONS],
    )


def _masked(secret: str) -> str:
    return "masked"


def masked_toml(text: str) -> str:
    """A suggestion's TOML with secret-looking envelope values masked (by the argument's name, as on the card):
    an envelope lists values humans approved, which the report must not carry."""
    return masked(text, lambda name, value: redact({name: value}, lambda s: f"masked, {len(s)} characters")[name])


def _rejection(d: DecisionTime) -> dict[str, Any]:
    """A rejection as the report lists it; secret-looking spans of the reason are masked (never shown)."""
    reason = redact(d.reason, _masked) if d.reason else None
    return {
        "upstream": d.upstream,
        "tool": d.tool,
        "rule": d.rule,
        "reviewer": d.reviewer,
        "decided_at": d.decided_at,
        "reason": reason,
    }
