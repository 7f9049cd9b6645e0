"""Reports over the store for the Stats page and the audit export (named reads: ``mcp_gatekeeper.store.queries``).

Held calls are the rows with a deadline that are not audit-gated (a hold sets the deadline for the
decision; an audit gate sets one for its review window, after the call ran). Each held call is classed
by how it ended: ``approved``, ``modified`` (approved with edited arguments), ``rejected``, ``expired``,
``cancelled`` (cancelled or orphaned) or still ``pending``. Audit-gated calls are counted by review state.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mcp_gatekeeper.store import Store
from mcp_gatekeeper.store.queries import HumanDecision
from mcp_gatekeeper.webredact import redact

OUTCOMES = ("approved", "modified", "rejected", "expired", "cancelled", "pending")
REVIEW_STATES = (
    "under_review",
    "confirmed",
    "unreviewed",
    "review_failed",
    "rolling_back",
    "rolled_back",
    "rollback_failed",
)
TIMEOUT_RATE_FLAG = 0.3
"""A rule whose held calls expire this often (or more) is flagged: its timeout or its reviewers are off."""
MIN_CALLS_FOR_TIMEOUT_FLAG = 5
FAST_DECISION_S = 2.0
"""Decisions faster than this are a fatigue signal (nobody reads a card in under two seconds)."""
MIN_DECISIONS_FOR_RULE_HINT = 5
LATENCY_BUCKETS: tuple[tuple[str, float], ...] = (
    ("< 2 s", 2),
    ("2–10 s", 10),
    ("10–30 s", 30),
    ("30 s–1 min", 60),
    ("1–5 min", 300),
    ("5–15 min", 900),
    ("> 15 min", float("inf")),
)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


SLICE_S = 900.0
"""The store groups calls in quarter hours: every time zone's offset is a whole number of them, so each slice
falls inside one of the viewer's calendar days or clock hours."""


def calendar_buckets(now: float, days: int, zone: tzinfo) -> tuple[list[float], float]:
    """Bucket starts (epoch seconds) and their nominal length: for one day, the last 24 clock hours (the first
    one starting on the hour before ``now - 24 h``); for more, ``days`` calendar days in ``zone`` ending with
    today, each starting at its local midnight (a day with a DST change is 23 or 25 hours long)."""
    local_now = datetime.fromtimestamp(now, zone)
    if days <= 1:
        first = (local_now - timedelta(hours=24)).replace(minute=0, second=0, microsecond=0)
        hour = first.astimezone(UTC)
        starts = []
        while hour.timestamp() <= now:
            starts.append(hour.timestamp())
            hour += timedelta(hours=1)
        return starts, 3600.0
    today = local_now.date()
    starts = []
    for back in range(days - 1, -1, -1):
        day = today - timedelta(days=back)
        starts.append(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())
    return starts, 86400.0


def resolve_zone(name: str | None, offset_minutes: int | None) -> tzinfo:
    """The viewer's time zone: an IANA name when this machine knows it (Windows needs the tzdata package),
    else the browser's current UTC offset, else UTC."""
    if name and len(name) <= 64:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # unknown, a path (refused by zoneinfo), unreadable
            pass
    if offset_minutes is not None:
        return timezone(timedelta(minutes=offset_minutes))
    return UTC


async def stats(
    store: Store, *, now: float, days: float = 14.0, zone: tzinfo = UTC, since: float | None = None
) -> dict[str, Any]:
    """Everything the Stats page draws, for calls created in the period: the last 24 hours for ``days`` 1,
    else the last ``days`` calendar days of ``zone`` (today included), so a bar is one of the viewer's days.
    ``since`` (the weekly review's) starts the period there instead; the bars stay calendar days."""
    starts, bucket = calendar_buckets(now, max(1, round(days)), zone)
    if since is None:
        since = starts[0] if days > 1 else now - 86400.0

    rows = await store.queries.held_outcomes(since=since, slice_seconds=SLICE_S)
    series = [{"start": start, **dict.fromkeys(OUTCOMES, 0)} for start in starts]
    totals = dict.fromkeys(OUTCOMES, 0)
    for q, outcome, n in rows:
        at = since + q * SLICE_S
        b = bisect.bisect_right(starts, at) - 1
        if 0 <= b < len(series):
            series[b][outcome] += n
        totals[outcome] += n

    per_rule: dict[str, dict[str, Any]] = {}
    for rule, outcome, n, escalated in await store.queries.held_outcomes_per_rule(since=since):
        row = per_rule.setdefault(rule, {"rule": rule, **dict.fromkeys(OUTCOMES, 0), "escalated": 0})
        row[outcome] += n
        row["escalated"] += escalated
    for row in per_rule.values():
        _timeout_calibration(row)

    decided = await store.queries.human_decisions(since=since)
    latencies = sorted(max(0.0, d.latency) for d in decided)
    histogram = []
    lo = 0.0
    for label, hi in LATENCY_BUCKETS:
        histogram.append({"label": label, "count": sum(1 for v in latencies if lo <= v < hi)})
        lo = hi

    usage = [u._asdict() for u in await store.queries.tool_usage(since=since)]

    return {
        "since": since,
        "until": now,
        "bucket_seconds": bucket,
        "time_zone": str(zone),
        "totals": totals,
        "series": series,
        "per_rule": sorted(per_rule.values(), key=lambda r: (-sum(r[o] for o in OUTCOMES), r["rule"])),
        "time_to_decision": {
            "count": len(latencies),
            "median": statistics.median(latencies) if latencies else None,
            "p90": _percentile(latencies, 0.9),
            "histogram": histogram,
        },
        "usage": usage,
        "fatigue": _fatigue(decided),
        "rule_hints": _rule_hints(per_rule),
        "timeouts": {
            "flag_rate": TIMEOUT_RATE_FLAG,
            "min_calls": MIN_CALLS_FOR_TIMEOUT_FLAG,
            "miscalibrated": [
                {k: r[k] for k in ("rule", "finished", "expired", "timeout_rate", "escalated")}
                for r in sorted(per_rule.values(), key=lambda r: (-(r["timeout_rate"] or 0), r["rule"]))
                if r["miscalibrated"]
            ],
        },
        "escalations": await _escalations(store, since),
        "reviews": await _reviews(store, since),
    }


def _timeout_calibration(row: dict[str, Any]) -> None:
    """How often a rule's held calls ran out of time; flagged when often enough over enough calls."""
    finished = sum(row[o] for o in OUTCOMES if o != "pending")
    rate = row["expired"] / finished if finished else None
    row["finished"] = finished
    row["timeout_rate"] = rate
    row["miscalibrated"] = rate is not None and finished >= MIN_CALLS_FOR_TIMEOUT_FLAG and rate >= TIMEOUT_RATE_FLAG


async def _escalations(store: Store, since: float) -> dict[str, Any]:
    """Escalation steps fired (from the audit log) and how the escalated calls ended."""
    by_level = [
        {"level": s.level, "count": s.events, "shortened": s.shortened}
        for s in await store.queries.escalation_steps(since=since)
    ]
    outcomes = dict.fromkeys(OUTCOMES, 0)
    for outcome, n in (await store.queries.escalated_outcomes(since=since)).items():
        outcomes[outcome] += n
    return {
        "events": sum(x["count"] for x in by_level),
        "calls": sum(outcomes.values()),
        "deadline_shortened": sum(x["shortened"] for x in by_level),
        "by_level": by_level,
        "outcomes": outcomes,
    }


async def _reviews(store: Store, since: float) -> dict[str, int]:
    """Audit-gated calls by review state (calls that failed upstream were never reviewable)."""
    counts = dict.fromkeys(REVIEW_STATES, 0)
    for state, n in (await store.queries.audit_gated_states(since=since)).items():
        if state in counts:
            counts[state] = n
    return counts


def _fatigue(decided: Sequence[HumanDecision]) -> dict[str, Any]:
    """Fast decisions and runs of approvals, per reviewer (in decision order)."""
    per: dict[str, dict[str, Any]] = {}
    for latency, who, state, _modified in decided:
        r = per.setdefault(
            who, {"reviewer": who, "decisions": 0, "fast": 0, "longest_approval_run": 0, "current_approval_run": 0}
        )
        r["decisions"] += 1
        if latency < FAST_DECISION_S:
            r["fast"] += 1
        if state == "rejected":
            r["current_approval_run"] = 0
        else:
            r["current_approval_run"] += 1
            r["longest_approval_run"] = max(r["longest_approval_run"], r["current_approval_run"])
    reviewers = sorted(per.values(), key=lambda r: -r["decisions"])
    total = sum(r["decisions"] for r in reviewers)
    fast = sum(r["fast"] for r in reviewers)
    return {
        "fast_threshold_seconds": FAST_DECISION_S,
        "decisions": total,
        "fast_decisions": fast,
        "fast_share": (fast / total) if total else None,
        "longest_approval_run": max((r["longest_approval_run"] for r in reviewers), default=0),
        "reviewers": reviewers,
    }


def _rule_hints(per_rule: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    relax, deny = [], []
    for r in per_rule.values():
        decided = r["approved"] + r["modified"] + r["rejected"]
        if decided < MIN_DECISIONS_FOR_RULE_HINT:
            continue
        if r["rejected"] == 0 and r["modified"] == 0:
            relax.append({"rule": r["rule"], "decisions": decided})
        elif r["rejected"] == decided:
            deny.append({"rule": r["rule"], "decisions": decided})
    return {"never_rejected": relax, "always_rejected": deny}


async def audit_export(
    store: Store, *, hasher: Callable[[str], str], now: float, limit: int = 100_000
) -> dict[str, Any]:
    """The audit chain and every call, with secrets replaced by keyed hashes (never the raw value)."""
    ok, checked, message = await store.verify_audit()
    events = [e.to_json() for e in await store.audit_events(limit=limit)]
    for e in events:
        e["detail"] = _safe_redact(e["detail"], hasher)
    calls = []
    for rec in await store.list_calls(limit=limit, oldest_first=True):
        c = rec.to_json()
        for key in ("arguments", "modified_arguments", "result", "reason", "error", "agent_reason", "summary"):
            c[key] = _safe_redact(c[key], hasher)
        calls.append(c)
    return {
        "format": "mcp-gatekeeper audit export v1",
        "exported_at": now,
        "secrets": "every secret-looking value is replaced by HMAC-SHA256 keyed with the ui-token",
        "chain": {"ok": ok, "checked": checked, "message": message},
        "events": events,
        "calls": calls,
    }


def _safe_redact(value: Any, hasher: Callable[[str], str]) -> Any:
    try:
        return redact(value, hasher)
    except RecursionError:
        return "(too deeply nested to redact; omitted from the export)"
