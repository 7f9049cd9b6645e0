"""Shadow verdicts against what happened: did the shadow policy agree with the humans?

For each recorded shadow action (``allow``, ``hold``, ``deny``, ...) the calls by what happened to them
(:mod:`mcp_gatekeeper.calibrate.history`). Two kinds of disagreement matter, and are listed: the shadow
would have let run a call a human rejected (``passed_rejected``), and the shadow would have held or denied a
call that ran or that a human approved (``stopped_approved``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp_gatekeeper.calibrate.history import Then, pages, then
from mcp_gatekeeper.models import PastCall
from mcp_gatekeeper.store import Store

LISTED = 50
_RUNS = frozenset({"allow", "audit"})
_STOPS = frozenset({"hold", "deny", "refuse_invalid"})


@dataclass(frozen=True, slots=True)
class Disagreement:
    id: str
    upstream: str
    tool: str
    created_at: float
    shadow: str
    then: Then

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "upstream": self.upstream, "tool": self.tool, "created_at": self.created_at,
            "shadow": self.shadow, "then": self.then,
        }  # fmt: skip


@dataclass(frozen=True)
class ShadowComparison:
    """Shadow verdicts recorded in ``[since, until)`` against what happened."""

    since: float
    until: float
    counts: Mapping[str, Mapping[str, int]]
    """``{shadow action: {what happened: calls}}``."""
    passed_rejected: tuple[Disagreement, ...]
    stopped_approved: tuple[Disagreement, ...]

    @property
    def calls(self) -> int:
        return sum(sum(v.values()) for v in self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "calls": self.calls,
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "passed_rejected": [d.to_json() for d in self.passed_rejected],
            "stopped_approved": [d.to_json() for d in self.stopped_approved],
        }


def _disagreement(call: PastCall, t: Then) -> Disagreement:
    assert call.shadow_action is not None
    return Disagreement(call.id, call.upstream, call.tool, call.created_at, call.shadow_action, t)


async def compare(store: Store, *, since: float, until: float) -> ShadowComparison:
    counts: dict[str, Counter[str]] = {}
    passed: list[Disagreement] = []
    stopped: list[Disagreement] = []
    async for page in pages(store, since=since, until=until):
        for call in page:
            if call.shadow_action is None:
                continue
            t = then(call)
            counts.setdefault(call.shadow_action, Counter())[t] += 1
            if call.shadow_action in _RUNS and t == "rejected" and len(passed) < LISTED:
                passed.append(_disagreement(call, t))
            elif call.shadow_action in _STOPS and t in ("approved", "ran") and len(stopped) < LISTED:
                stopped.append(_disagreement(call, t))
    return ShadowComparison(
        since=since, until=until, counts={k: dict(v) for k, v in counts.items()},
        passed_rejected=tuple(passed), stopped_approved=tuple(stopped),
    )  # fmt: skip
