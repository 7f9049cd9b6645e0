"""Suggestions for the next policy step, from what humans decided; each with its evidence, the TOML to paste,
and the replay of applying it. Nothing changes by itself: a human copies the TOML into the config.

Calls are grouped by upstream, tool and the rule that held them (None: the built-in default). Thresholds:

===========================  ===================================================================================
suggestion                   when
===========================  ===================================================================================
``allow`` (with an envelope)  at least :data:`ALLOW_MIN_DECISIONS` human decisions, at least
                              :data:`ALLOW_MIN_UNCHANGED` of them approved as proposed; the envelope is derived
                              from those approved calls (:mod:`~mcp_gatekeeper.calibrate.envelope`)
``deny``                      at least :data:`DENY_MIN_DECISIONS` decisions, every one a rejection
``timeout`` (longer wait)     at least :data:`TIMEOUT_MIN_HELD` held calls, at least :data:`TIMEOUT_MIN_RATE` of
                              them timed out
===========================  ===================================================================================

A new ``allow`` or ``deny`` rule goes right before the rule that held the calls (after it, every earlier rule
still decides first), or at the end when the built-in default held them; a ``timeout`` replaces the rule.
Its replay is of the current config with the suggested rule in that place, over the same window, for the
calls of that upstream and tool (the only calls a rule naming them can change).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mcp_gatekeeper.calibrate.envelope import NoEnvelope, derive
from mcp_gatekeeper.calibrate.history import HUMAN, Then, held, pages, then
from mcp_gatekeeper.calibrate.replay import ReplaySummary, replay
from mcp_gatekeeper.calibrate.rules_toml import literal_glob, rule_toml
from mcp_gatekeeper.calibrate.shadow import describe
from mcp_gatekeeper.config import GatekeeperConfig, RuleConfig
from mcp_gatekeeper.models import PastCall
from mcp_gatekeeper.ownfiles import OwnFiles
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store

ALLOW_MIN_DECISIONS = 20
ALLOW_MIN_UNCHANGED = 0.95
DENY_MIN_DECISIONS = 10
TIMEOUT_MIN_HELD = 5
TIMEOUT_MIN_RATE = 0.20
MAX_TIMEOUT = 86_400.0
"""A suggested timeout is never longer than a day."""

Kind = Literal["allow", "deny", "timeout"]


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Evidence:
    """What happened to one group's calls in the window."""

    calls: int
    held: int
    outcomes: Mapping[str, int]
    """Calls by what happened (:data:`~mcp_gatekeeper.calibrate.history.Then`)."""
    decide_p50: float | None
    """Seconds from the call to the human decision, median (human decisions only)."""
    decide_p90: float | None
    reviewers: tuple[tuple[str, int], ...]
    """Who decided, with how many decisions, most first."""
    shadow: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Shadow verdicts against what happened: ``{"allow": {"approved": 12, "rejected": 1}}``."""

    @property
    def decisions(self) -> int:
        return sum(self.outcomes.get(t, 0) for t in HUMAN)

    def rate(self, what: Then) -> float:
        """Share of human decisions (``expired``: share of held calls) that were ``what``."""
        base = self.held if what == "expired" else self.decisions
        return self.outcomes.get(what, 0) / base if base else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "held": self.held,
            "decisions": self.decisions,
            "outcomes": dict(self.outcomes),
            "approved_unchanged_rate": self.rate("approved"),
            "modified_rate": self.rate("modified"),
            "rejected_rate": self.rate("rejected"),
            "timed_out_rate": self.rate("expired"),
            "decide_p50": self.decide_p50,
            "decide_p90": self.decide_p90,
            "reviewers": [{"reviewer": r, "decisions": n} for r, n in self.reviewers],
            "shadow": {k: dict(v) for k, v in self.shadow.items()},
        }


@dataclass(frozen=True)
class Suggestion:
    """One concrete next step for one upstream's tool and the rule that held its calls."""

    kind: Kind
    upstream: str
    tool: str
    rule: str | None
    """The rule the evidence is about (None: the built-in default)."""
    title: str
    evidence: Evidence
    toml: str
    """The rule to paste, as TOML (with comments saying where it goes)."""
    placement: str
    """Where it goes: ``before rules[3]``, ``at the end``, ``instead of rules[3]``."""
    replay: ReplaySummary
    """Replay of the current config with this rule in place, over the same window (this tool's calls)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "upstream": self.upstream,
            "tool": self.tool,
            "rule": self.rule,
            "title": self.title,
            "evidence": self.evidence.to_json(),
            "toml": self.toml,
            "placement": self.placement,
            "replay": self.replay.to_json(),
        }


@dataclass
class _Group:
    upstream: str
    tool: str
    rule: str | None
    calls: int = 0
    held: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    waits: list[float] = field(default_factory=list)
    reviewers: Counter[str] = field(default_factory=Counter)
    approved_args: list[dict[str, Any]] = field(default_factory=list)
    shadow: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, call: PastCall) -> None:
        t = then(call)
        self.calls += 1
        self.held += held(call)
        self.outcomes[t] += 1
        if t in HUMAN and call.decided_at is not None:
            self.waits.append(call.decided_at - call.created_at)
            self.reviewers[call.decided_by or "?"] += 1
        if t == "approved":
            self.approved_args.append(call.arguments)
        if call.shadow_action is not None:
            self.shadow.setdefault(call.shadow_action, Counter())[t] += 1

    def evidence(self) -> Evidence:
        return Evidence(
            calls=self.calls, held=self.held, outcomes=dict(self.outcomes), decide_p50=_quantile(self.waits, 0.5),
            decide_p90=_quantile(self.waits, 0.9), reviewers=tuple(self.reviewers.most_common(5)),
            shadow={k: dict(v) for k, v in self.shadow.items()},
        )  # fmt: skip


def evidence_line(ev: Evidence) -> str:
    """The evidence in one line: decisions and rates, time to decide, reviewers, shadow verdicts."""
    parts = [
        f"{ev.calls} call(s), {ev.held} held, {ev.decisions} decision(s): {ev.rate('approved'):.0%} approved unchanged,"
        f" {ev.rate('modified'):.0%} modified, {ev.rate('rejected'):.0%} rejected, {ev.rate('expired'):.0%} of held"
        " timed out"
    ]
    if ev.decide_p50 is not None:
        parts.append(f"decided in {_seconds(ev.decide_p50)} (p50) / {_seconds(ev.decide_p90 or 0)} (p90)")
    if ev.reviewers:
        parts.append("reviewers " + ", ".join(f"{r} ({n})" for r, n in ev.reviewers))
    for action, by_then in ev.shadow.items():
        seen = ", ".join(f"{n} {t}" for t, n in sorted(by_then.items()))
        parts.append(f"shadow {describe(action)}: {seen}")
    return "; ".join(parts)


def rule_index(config: GatekeeperConfig, name: str | None) -> int | None:
    """Where the rule a call recorded (``rules[3]`` or its name) stands in the config now."""
    if name is None:
        return None
    for i, rule in enumerate(config.rules):
        if (rule.name or f"rules[{i}]") == name:
            return i
    return None


def with_rule(config: GatekeeperConfig, rule: RuleConfig, *, at: int | None, replace: bool = False) -> GatekeeperConfig:
    """``config`` with ``rule`` inserted at ``at`` (None: appended), or replacing the rule there."""
    rules = list(config.rules)
    if at is None:
        rules.append(rule)
    elif replace:
        rules[at] = rule
    else:
        rules.insert(at, rule)
    return config.model_copy(update={"rules": rules})


def _name(kind: str, tool: str) -> str:
    return f"suggested-{kind}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', tool).strip('-')[:40] or 'tool'}"


def _seconds(s: float) -> str:
    return f"{s / 3600:g} h" if s >= 3600 else f"{s / 60:g} min" if s >= 60 else f"{s:g} s"


class _Builder:
    def __init__(
        self,
        store: Store,
        config: GatekeeperConfig,
        policy: Policy,
        *,
        since: float,
        now: float,
        own_files: OwnFiles | None,
        home_dir: str | None,
    ) -> None:
        self.store, self.config, self.policy = store, config, policy
        self.since, self.now = since, now
        self.own_files, self.home_dir = own_files, home_dir

    async def _replayed(self, g: _Group, rule: RuleConfig, at: int | None, *, replace: bool) -> ReplaySummary:
        candidate = Policy(
            with_rule(self.config, rule, at=at, replace=replace), own_files=self.own_files, home_dir=self.home_dir
        )
        return await replay(self.store, candidate, since=self.since, until=self.now, upstream=g.upstream, tool=g.tool)

    def _base(self, g: _Group, kind: str) -> dict[str, Any]:
        return {"name": _name(kind, g.tool), "upstream": literal_glob(g.upstream), "tool": literal_glob(g.tool)}

    async def allow(self, g: _Group, ev: Evidence, at: int | None, where: str) -> Suggestion | None:
        try:
            when = derive(g.approved_args, self.policy)
        except NoEnvelope:
            return None
        rule: dict[str, Any] = self._base(g, "allow")
        if when:
            rule["when"] = when
        rule["gate"] = "allow"
        notes = [
            f"{ev.outcomes.get('approved', 0)} of {ev.decisions} decisions on {g.upstream}/{g.tool} approved as"
            f" proposed ({ev.rate('approved'):.0%}); the envelope covers what was approved",
            f"place it {where}",
        ]
        return await self._make("allow", g, ev, rule, notes, at, where, replace=False,
                                title=f"allow {g.tool} inside the envelope humans approved")  # fmt: skip

    async def deny(self, g: _Group, ev: Evidence, at: int | None, where: str) -> Suggestion | None:
        rule: dict[str, Any] = self._base(g, "deny")
        current = self.config.rules[at] if at is not None else None
        if current is not None and current.when:
            rule["when"] = dict(current.when)  # the same calls the rule held, no wider
        rule["gate"] = "deny"
        rule["reason"] = f"a human rejected every such call ({ev.decisions} of {ev.decisions})"
        notes = [f"every one of {ev.decisions} decisions on {g.upstream}/{g.tool} was a rejection", f"place it {where}"]
        return await self._make("deny", g, ev, rule, notes, at, where, replace=False,
                                title=f"deny {g.tool}: humans always reject it")  # fmt: skip

    async def timeout(self, g: _Group, ev: Evidence, at: int | None) -> Suggestion | None:
        current = self.config.rules[at] if at is not None else None
        now_timeout = (current.timeout if current is not None else None) or self.config.defaults.timeout
        wanted = max(now_timeout * 2, (ev.decide_p90 or 0.0) * 2)
        longer = float(min(MAX_TIMEOUT, math.ceil(wanted / 60) * 60))
        if longer <= now_timeout:
            return None
        if current is not None:
            rule = current.model_dump(by_alias=True, exclude_defaults=True)
            rule["timeout"] = longer
            where = f"instead of {g.rule}"
        else:
            rule = {**self._base(g, "timeout"), "gate": "hard", "timeout": longer}
            where = "at the end"
        notes = [
            f"{ev.outcomes.get('expired', 0)} of {ev.held} held calls on {g.upstream}/{g.tool} timed out"
            f" ({ev.rate('expired'):.0%}) after {_seconds(now_timeout)}; decisions took {_seconds(ev.decide_p90 or 0)}"
            " at the 90th percentile",
            f"place it {where}; or add [[rules.escalate]] steps so someone else is told sooner",
        ]
        return await self._make("timeout", g, ev, rule, notes, at, where, replace=current is not None,
                                title=f"wait longer for {g.tool}: {_seconds(longer)} instead of {_seconds(now_timeout)}")  # fmt: skip

    async def _make(
        self,
        kind: Kind,
        g: _Group,
        ev: Evidence,
        rule: dict[str, Any],
        notes: list[str],
        at: int | None,
        where: str,
        *,
        replace: bool,
        title: str,
    ) -> Suggestion | None:
        try:
            text = rule_toml(rule, notes)
        except ValueError:
            return None
        parsed = RuleConfig.model_validate(tomllib.loads(text)["rules"][0])
        summary = await self._replayed(g, parsed, at, replace=replace)
        return Suggestion(kind, g.upstream, g.tool, g.rule, title, ev, text, where, summary)


async def evidence_groups(store: Store, *, since: float, until: float) -> list[_Group]:
    groups: dict[tuple[str, str, str | None], _Group] = {}
    async for page in pages(store, since=since, until=until):
        for call in page:
            if call.tooldef_hash is None:
                continue  # never routed to a tool
            key = (call.upstream, call.tool, call.rule)
            g = groups.get(key)
            if g is None:
                g = groups[key] = _Group(call.upstream, call.tool, call.rule)
            g.add(call)
    return list(groups.values())


async def suggestions(
    store: Store,
    config: GatekeeperConfig,
    *,
    since: float,
    now: float,
    own_files: OwnFiles | None = None,
    home_dir: str | None = None,
) -> list[Suggestion]:
    """Suggestions from the calls recorded in ``[since, now)`` for ``config`` (the config in force), most
    evidence first. ``own_files``/``home_dir`` as for :class:`~mcp_gatekeeper.policy.Policy` (the CLI passes the
    gatekeeper's own files, so replay judges as the live policy does)."""
    policy = Policy(config, own_files=own_files, home_dir=home_dir)
    build = _Builder(store, config, policy, since=since, now=now, own_files=own_files, home_dir=home_dir)
    out: list[Suggestion] = []
    for g in sorted(await evidence_groups(store, since=since, until=now), key=lambda g: -g.calls):
        if g.held == 0:
            continue
        at = rule_index(config, g.rule)
        if g.rule is not None and at is None:
            continue  # the rule is no longer in the config: nothing to place a suggestion against
        ev = g.evidence()
        where = f"right before {g.rule}" if g.rule is not None else "at the end of the rules"
        made: Suggestion | None = None
        if ev.decisions >= DENY_MIN_DECISIONS and ev.outcomes.get("rejected", 0) == ev.decisions:
            made = await build.deny(g, ev, at, where)
        elif ev.decisions >= ALLOW_MIN_DECISIONS and ev.rate("approved") >= ALLOW_MIN_UNCHANGED:
            made = await build.allow(g, ev, at, where)
        if made is not None:
            out.append(made)
        if ev.held >= TIMEOUT_MIN_HELD and ev.rate("expired") >= TIMEOUT_MIN_RATE:
            longer = await build.timeout(g, ev, at)
            if longer is not None:
                out.append(longer)
    return out
