"""Reviewer fatigue: signs that people approve without reading (pure; computed from decision times).

Three signals, per reviewer: decisions made faster than ``fast_seconds`` after the call was held (nobody
reads a card that fast); the longest run of consecutive approvals (a reviewer who has not rejected anything
in 40 decisions may have stopped looking); and the most decisions in one clock hour (bursts of clicking).
A reviewer is flagged when any signal passes its threshold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mcp_gatekeeper.store.review import DecisionTime


@dataclass(frozen=True, slots=True)
class FatigueThresholds:
    fast_seconds: float = 2.0
    """A decision made sooner than this after the hold is *fast*."""
    fast_share: float = 0.5
    """A reviewer with at least this share of fast decisions (over ``min_decisions``) is flagged."""
    approval_run: int = 20
    """A run of this many consecutive approvals (edits count as approvals) is flagged."""
    per_hour: int = 60
    """This many decisions in one clock hour is flagged."""
    min_decisions: int = 5


@dataclass
class ReviewerFatigue:
    reviewer: str
    decisions: int = 0
    approvals: int = 0
    rejections: int = 0
    fast: int = 0
    longest_approval_run: int = 0
    peak_hour: int = 0
    """The most decisions this reviewer made in one clock hour (UTC)."""
    active_hours: int = 0
    """Clock hours (UTC) in which this reviewer decided anything."""
    median_seconds: float | None = None
    channels: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    @property
    def per_active_hour(self) -> float:
        """Decisions per hour in which the reviewer decided anything."""
        return self.decisions / self.active_hours if self.active_hours else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "reviewer": self.reviewer,
            "decisions": self.decisions,
            "approvals": self.approvals,
            "rejections": self.rejections,
            "fast": self.fast,
            "longest_approval_run": self.longest_approval_run,
            "peak_hour": self.peak_hour,
            "active_hours": self.active_hours,
            "per_active_hour": self.per_active_hour,
            "median_seconds": self.median_seconds,
            "channels": self.channels,
            "flags": self.flags,
        }


def fatigue(decisions: Sequence[DecisionTime], thresholds: FatigueThresholds | None = None) -> list[ReviewerFatigue]:
    """Per reviewer, most decisions first; ``decisions`` in the order they were made."""
    t = thresholds or FatigueThresholds()
    per: dict[str, ReviewerFatigue] = {}
    runs: Counter[str] = Counter()
    hours: dict[str, Counter[int]] = {}
    waits: dict[str, list[float]] = {}
    channels: dict[str, Counter[str]] = {}
    for d in decisions:
        r = per.setdefault(d.reviewer, ReviewerFatigue(reviewer=d.reviewer))
        r.decisions += 1
        wait = max(0.0, d.decided_at - d.created_at)
        waits.setdefault(d.reviewer, []).append(wait)
        if wait < t.fast_seconds:
            r.fast += 1
        if d.decision == "rejected":
            r.rejections += 1
            runs[d.reviewer] = 0
        else:
            r.approvals += 1
            runs[d.reviewer] += 1
            r.longest_approval_run = max(r.longest_approval_run, runs[d.reviewer])
        hours.setdefault(d.reviewer, Counter())[int(d.decided_at // 3600)] += 1
        channels.setdefault(d.reviewer, Counter())[d.channel or "unknown"] += 1
    for name, r in per.items():
        r.peak_hour = max(hours[name].values())
        r.active_hours = len(hours[name])
        ordered = sorted(waits[name])
        mid = len(ordered) // 2
        r.median_seconds = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        r.channels = [c for c, _ in channels[name].most_common()]
        if r.decisions >= t.min_decisions and r.fast / r.decisions >= t.fast_share:
            r.flags.append(f"{r.fast} of {r.decisions} decisions in under {t.fast_seconds:g} s")
        if r.longest_approval_run >= t.approval_run:
            r.flags.append(f"{r.longest_approval_run} approvals in a row")
        if r.peak_hour >= t.per_hour:
            r.flags.append(f"{r.peak_hour} decisions in one hour")
    return sorted(per.values(), key=lambda r: (-r.decisions, r.reviewer))
