"""Replay: a candidate policy judged against recorded calls, joined with what humans decided.

Each recorded call is judged again by :func:`mcp_gatekeeper.judgement.judge`, the live planner's own
function, on its stored arguments, its agent's stated confidence and the tool definition it was checked
against (annotations and ``inputSchema``, by hash); a call held because its tool's definition had changed is
held again. What the candidate would do (``allow``, ``audit``, ``hold``, ``deny``) is compared with what the
active policy did and what the human decided (:mod:`mcp_gatekeeper.calibrate.history`).

Not replayed: calls to tools that were never routed (unknown names) and calls whose arguments were not
recorded (over the size limit, or not JSON). Leases are runtime approvals, not policy: replay reports the
policy's verdict. Pure evaluation: nothing is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from mcp_gatekeeper.argcheck import SchemaChecks
from mcp_gatekeeper.calibrate.history import THEN_ORDER, Then, held, pages, then
from mcp_gatekeeper.judgement import TRUNCATED, UNENCODABLE, Judgement, judge
from mcp_gatekeeper.models import PastCall, is_quarantine_hold
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store

Action = Literal["allow", "audit", "hold", "deny"]
ACTIONS: tuple[Action, ...] = ("allow", "audit", "hold", "deny")
RUNS: frozenset[str] = frozenset({"allow", "audit"})
"""Actions that let a call run before any human sees it."""
LISTED = 50
"""Calls listed per kind of change (the counts are always complete; calls a human rejected are all listed)."""
EXIT_AGAINST_HUMANS = 1
"""``replay``'s exit code when the candidate would have let a call run that a human rejected."""


def action_of(kind: str) -> Action:
    """A judgement's kind as replay compares it (a refusal by the schema check is a denial)."""
    return "deny" if kind in ("deny", "refuse_invalid") else kind  # type: ignore[return-value]  # the other kinds are Actions


def recorded_action(call: PastCall) -> Action:
    """What the active policy did with the call when it was recorded (a lease counts as allowed)."""
    if call.gate == "deny":
        return "deny"
    if held(call):
        return "hold"
    return "audit" if call.gate == "audit" else "allow"


@dataclass(frozen=True, slots=True)
class Change:
    """One recorded call the candidate would treat otherwise."""

    id: str
    upstream: str
    tool: str
    created_at: float
    then: Then
    was: Action
    would: Action
    rule: str | None
    """The candidate's rule (None: its built-in default)."""
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "upstream": self.upstream, "tool": self.tool, "created_at": self.created_at,
            "then": self.then, "was": self.was, "would": self.would, "rule": self.rule, "reason": self.reason,
        }  # fmt: skip


@dataclass(frozen=True)
class ReplaySummary:
    """What a candidate policy would have done to the recorded calls of ``[since, until)``."""

    since: float
    until: float
    replayed: int
    skipped: int
    """Not replayable: never routed to a tool, or arguments not recorded."""
    without_definition: int
    """Judged without their tool's definition (recorded before definitions were kept): no annotations, no schema."""
    counts: Mapping[tuple[Then, Action, Action], int]
    """``(what happened, what the active policy did, what the candidate would do) -> calls``."""
    against_humans: tuple[Change, ...]
    """Calls a human rejected that the candidate would let run (all of them)."""
    listed: Mapping[str, tuple[Change, ...]] = field(default_factory=dict)
    """Up to :data:`LISTED` calls of each other kind of change, by the kind's key (see :meth:`groups`)."""

    @property
    def exit_code(self) -> int:
        return EXIT_AGAINST_HUMANS if self.against_humans else 0

    def count(self, *, then: set[str] | None = None, was: set[str] | None = None, would: set[str] | None = None) -> int:
        return sum(
            n
            for (t, w, c), n in self.counts.items()
            if (then is None or t in then) and (was is None or w in was) and (would is None or c in would)
        )

    @property
    def changed(self) -> int:
        return sum(n for (_t, w, c), n in self.counts.items() if w != c)

    def groups(self) -> dict[str, Counter[str]]:
        """The changes by kind, each with its calls counted by what happened: ``auto_allow`` (held before,
        now run unreviewed or under audit), ``hold`` (ran before, now held), ``deny`` (now denied),
        ``undeny`` (denied before, now run or held)."""
        out: dict[str, Counter[str]] = {}
        for (t, w, c), n in self.counts.items():
            if w == c:
                continue
            out.setdefault(change_kind(w, c), Counter())[t] += n
        return out

    def lines(self) -> list[str]:
        """The summary in sentences (``would auto-allow 41 calls: 39 approved unchanged, 2 rejected``)."""
        out = [f"replayed {self.replayed} call(s); {self.changed} would be treated otherwise"]
        groups = self.groups()
        words = {
            "auto_allow": "would let {n} held call(s) run without a human first",
            "hold": "would hold {n} call(s) that ran without a human",
            "deny": "would deny {n} call(s) the active policy did not deny",
            "undeny": "would not deny {n} call(s) the active policy denied",
            "other": "would treat {n} other call(s) otherwise",
        }
        for kind in ("auto_allow", "hold", "deny", "undeny", "other"):
            by_then = groups.get(kind)
            if not by_then:
                continue
            parts = [f"{by_then[t]} {_THEN_WORDS[t]}" for t in THEN_ORDER if by_then.get(t)]
            out.append(words[kind].format(n=sum(by_then.values())) + ": " + ", ".join(parts))
        if self.skipped:
            out.append(f"{self.skipped} call(s) not replayed (unknown tool, or arguments not recorded)")
        if self.without_definition:
            out.append(
                f"{self.without_definition} call(s) judged without their tool's definition (recorded before"
                " definitions were kept): no annotations, no schema check"
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "replayed": self.replayed,
            "skipped": self.skipped,
            "without_definition": self.without_definition,
            "changed": self.changed,
            "exit_code": self.exit_code,
            "summary": self.lines(),
            "counts": [{"then": t, "was": w, "would": c, "calls": n} for (t, w, c), n in sorted(self.counts.items())],
            "changes": {k: dict(v) for k, v in self.groups().items()},
            "against_humans": [c.to_json() for c in self.against_humans],
            "listed": {k: [c.to_json() for c in v] for k, v in self.listed.items()},
        }


_THEN_WORDS: dict[str, str] = {
    "approved": "approved unchanged",
    "modified": "approved with edits",
    "rejected": "REJECTED by a human",
    "expired": "timed out",
    "undecided": "never decided",
    "ran": "that ran",
    "denied": "denied",
}


def change_kind(was: str, would: str) -> str:
    if was == "hold" and would in RUNS:
        return "auto_allow"
    if was in RUNS and would == "hold":
        return "hold"
    if would == "deny":
        return "deny"
    if was == "deny":
        return "undeny"
    return "other"


class Replayer:
    """Judges recorded calls with one candidate policy (schema validators and tool definitions cached)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.checks = SchemaChecks()
        self._definitions: dict[str, Mapping[str, Any] | None] = {}
        self._seen: dict[tuple[Any, ...], tuple[Judgement, bool]] = {}
        """Judgements of calls already judged: an identical call (same tool definition, same arguments by
        digest, same stated confidence) gets the same judgement, so retries and repeated reads cost a lookup."""

    async def _load_definitions(self, store: Store, page: list[PastCall]) -> None:
        wanted = {c.tooldef_hash for c in page if c.tooldef_hash is not None} - self._definitions.keys()
        if wanted:
            found = await store.tool_definitions(sorted(wanted))
            for h in wanted:
                self._definitions[h] = found.get(h)

    def judge(self, call: PastCall) -> tuple[Judgement, bool] | None:
        """The candidate's judgement of a recorded call and whether its tool's definition was known; None when
        the call cannot be replayed."""
        if call.tooldef_hash is None:
            return None  # never routed to a tool
        if len(call.arguments) == 1 and (TRUNCATED in call.arguments or UNENCODABLE in call.arguments):
            return None  # only a safe stand-in was recorded
        quarantine = "(the tool's definition had changed; recorded)" if is_quarantine_hold(call.reasons) else None
        key = (call.upstream, call.tool, call.tooldef_hash, call.args_digest, call.agent_confidence, quarantine)
        if call.args_digest and (seen := self._seen.get(key)) is not None:
            return seen
        tooldef = self._definitions.get(call.tooldef_hash)
        known = tooldef is not None
        j = judge(
            # without a recorded definition: no annotations, and a schema that takes any object (not "no schema",
            # which the live check refuses as unusable: the live call was checked against the real one)
            self.policy, self.checks, upstream=call.upstream, tool=call.tool, tooldef=tooldef or _UNKNOWN_TOOL,
            tool_hash=call.tooldef_hash if known else "", arguments=call.arguments,
            confidence=call.agent_confidence, quarantine=quarantine,
        )  # fmt: skip
        if call.args_digest:
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            self._seen[key] = (j, known)
        return j, known

    async def run(
        self,
        store: Store,
        *,
        since: float,
        until: float,
        upstream: str | None = None,
        tool: str | None = None,
        batch: int = 2000,
    ) -> ReplaySummary:
        counts: Counter[tuple[Then, Action, Action]] = Counter()
        against: list[Change] = []
        listed: dict[str, list[Change]] = {}
        replayed = skipped = unknown = 0
        async for page in pages(store, since=since, until=until, batch=batch, upstream=upstream, tool=tool):
            await self._load_definitions(store, page)
            for call in page:
                judged = self.judge(call)
                if judged is None:
                    skipped += 1
                    continue
                j, known = judged
                replayed += 1
                unknown += not known
                t, was, would = then(call), recorded_action(call), action_of(j.kind)
                counts[(t, was, would)] += 1
                if was == would:
                    continue
                v = j.verdict
                change = Change(
                    call.id, call.upstream, call.tool, call.created_at, t, was, would, v.rule,
                    v.deny_reason if would == "deny" else (v.reasons[0] if v.reasons else None),
                )  # fmt: skip
                if t == "rejected" and would in RUNS:
                    against.append(change)
                    continue
                kind = change_kind(was, would)
                bucket = listed.setdefault(kind, [])
                if len(bucket) < LISTED:
                    bucket.append(change)
        return ReplaySummary(
            since=since, until=until, replayed=replayed, skipped=skipped, without_definition=unknown,
            counts=dict(counts), against_humans=tuple(against), listed={k: tuple(v) for k, v in listed.items()},
        )  # fmt: skip


_SEEN_MAX = 50_000
_UNKNOWN_TOOL: Mapping[str, Any] = MappingProxyType({"inputSchema": MappingProxyType({"type": "object"})})


async def replay(
    store: Store,
    policy: Policy,
    *,
    since: float,
    until: float,
    upstream: str | None = None,
    tool: str | None = None,
    batch: int = 2000,
) -> ReplaySummary:
    """Judge the recorded calls created in ``[since, until)`` with ``policy`` (optionally only one upstream's
    tool) and compare with what happened. Pure: nothing is written."""
    return await Replayer(policy).run(store, since=since, until=until, upstream=upstream, tool=tool, batch=batch)
