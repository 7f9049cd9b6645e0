"""Pure rule matching and risk scoring: ``Policy.evaluate(upstream, tool, arguments, annotations) -> Verdict``.

No I/O, no clocks, no async. Rules are tried in order and the first match decides. A call no rule
matches gets the documented default: read-like tool names pass, everything else is held, and a tool
the upstream annotates ``destructiveHint: true`` is always held. Annotations only ever tighten.
"""

from __future__ import annotations

import fnmatch
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from mcp_gatekeeper.config import Amplifier, GatekeeperConfig, RuleConfig
from mcp_gatekeeper.models import RISK_ORDER

READ_WORDS = frozenset(
    [
        "get",
        "list",
        "read",
        "search",
        "find",
        "query",
        "describe",
        "show",
        "view",
        "lookup",
        "look",
        "fetch",
        "status",
        "diff",
        "log",
        "logs",
        "info",
        "inspect",
        "count",
        "check",
        "validate",
        "compare",
        "convert",
        "calculate",
        "echo",
        "ping",
        "tree",
        "head",
        "tail",
        "cat",
        "stat",
        "ls",
        "history",
        "explain",
        "preview",
        "browse",
        "summarize",
        "summarise",
        "resolve",
        "lint",
        "test",
        "current",
        "allowed",
        "whoami",
    ]
)
"""Tool-name words that mark a read: such a tool passes unless something tightens it."""

WRITE_WORDS = frozenset(
    [
        "write",
        "create",
        "update",
        "delete",
        "remove",
        "rm",
        "del",
        "drop",
        "truncate",
        "send",
        "post",
        "put",
        "patch",
        "insert",
        "upsert",
        "set",
        "edit",
        "modify",
        "move",
        "mv",
        "rename",
        "copy",
        "cp",
        "upload",
        "push",
        "commit",
        "merge",
        "rebase",
        "reset",
        "revert",
        "checkout",
        "branch",
        "tag",
        "deploy",
        "publish",
        "release",
        "install",
        "uninstall",
        "run",
        "exec",
        "execute",
        "eval",
        "shell",
        "spawn",
        "kill",
        "stop",
        "start",
        "restart",
        "shutdown",
        "reboot",
        "pay",
        "charge",
        "refund",
        "transfer",
        "withdraw",
        "deposit",
        "purchase",
        "buy",
        "order",
        "cancel",
        "approve",
        "reject",
        "grant",
        "revoke",
        "invite",
        "ban",
        "block",
        "archive",
        "close",
        "open",
        "schedule",
        "book",
        "email",
        "mail",
        "sms",
        "notify",
        "message",
        "reply",
        "forward",
        "share",
        "sign",
        "submit",
        "apply",
        "migrate",
        "add",
        "append",
        "clear",
        "wipe",
        "erase",
        "purge",
        "destroy",
        "terminate",
        "disable",
        "enable",
        "configure",
        "init",
        "mkdir",
        "touch",
        "chmod",
        "chown",
        "link",
        "unlink",
        "replace",
        "save",
        "store",
        "import",
        "export",
        "sync",
    ]
)
"""Tool-name words that mark a side effect: such a tool is held unless a rule says otherwise."""

HIGH_RISK_WORDS = frozenset(
    [
        "delete",
        "drop",
        "revoke",
        "deploy",
        "refund",
        "pay",
        "transfer",
        "withdraw",
        "purge",
        "destroy",
        "wipe",
        "erase",
        "truncate",
        "terminate",
        "shutdown",
        "reboot",
        "kill",
        "charge",
        "publish",
        "release",
        "grant",
        "ban",
        "rm",
    ]
)
MEDIUM_RISK_WORDS = frozenset(
    [
        "update",
        "send",
        "create",
        "schedule",
        "modify",
        "write",
        "edit",
        "move",
        "rename",
        "push",
        "commit",
        "merge",
        "email",
        "post",
        "put",
        "patch",
        "insert",
        "upsert",
        "set",
        "reset",
        "revert",
        "exec",
        "execute",
        "run",
        "cancel",
        "approve",
    ]
)

_LEVELS = tuple(RISK_ORDER)  # lowest first
_CANDIDATE_CACHE_SIZE = 4096
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^A-Za-z0-9]+")
_GLOB_CHARS = frozenset("*?[")


def name_words(tool: str) -> list[str]:
    """``"issueRefund"`` / ``"issue_refund"`` / ``"issue-refund"`` → ``["issue", "refund"]``."""
    return [w.lower() for w in _SPLIT.split(_CAMEL.sub("_", tool)) if w]


def _glob_regex(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What policy says about one call, with the reasons, step by step."""

    gate: str  # allow | deny | hard | soft | audit (as configured)
    hold: bool  # True: a human must decide before it runs
    risk: str
    rule: str | None
    rule_index: int | None
    reasons: tuple[str, ...]
    summary: str | None = None
    effects: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    deny_reason: str | None = None
    in_client: str = "notify"
    ask_agent: bool = False
    rule_config: RuleConfig | None = None

    @property
    def action(self) -> str:
        """``allow``, ``deny`` or ``hold``: what the proxy does."""
        if self.gate == "deny":
            return "deny"
        return "hold" if self.hold else "allow"

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "gate": self.gate,
            "hold": self.hold,
            "risk": self.risk,
            "rule": self.rule,
            "rule_index": self.rule_index,
            "reasons": list(self.reasons),
            "summary": self.summary,
            "effects": dict(self.effects),
            "timeout": self.timeout,
            "deny_reason": self.deny_reason,
            "in_client": self.in_client,
        }


_MISSING = object()


def lookup(arguments: Any, path: str) -> Any:
    """The value at a dotted path (``customer.email``, ``items.0.sku``), or ``_MISSING``."""
    value = arguments
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _number(value: Any) -> Decimal | float | None:
    """A number (or numeric string) as an exact Decimal; huge values compare instead of overflowing."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | str):
        try:
            d = Decimal(value.strip() if isinstance(value, str) else value)
        except (InvalidOperation, ValueError):
            return None
        if d.is_nan():
            return None
        return float(d) if d.is_infinite() else d  # ±inf still compares: 1e999 on the wire is more than 1000
    return None


class _Predicate:
    __slots__ = ("op", "operand", "path", "regex")

    def __init__(self, path: str, op: str, operand: Any) -> None:
        self.path, self.op, self.operand = path, op, operand
        self.regex: re.Pattern[str] | None = None
        if op in ("glob", "not_glob"):
            self.regex = re.compile(fnmatch.translate(str(operand)))
        elif op == "regex":
            self.regex = re.compile(str(operand))

    def holds(self, arguments: Mapping[str, Any]) -> bool:
        value = lookup(arguments, self.path)
        op = self.op
        if op == "exists":
            return (value is not _MISSING) == bool(self.operand)
        if value is _MISSING:
            return op in ("ne", "not_in", "not_glob")
        if op == "eq":
            return bool(value == self.operand)
        if op == "ne":
            return bool(value != self.operand)
        if op == "in":
            return value in self.operand
        if op == "not_in":
            return value not in self.operand
        if op in ("gt", "gte", "lt", "lte"):
            a, b = _number(value), _number(self.operand)
            if a is None or b is None:
                return False
            return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]
        if op.startswith("len_"):
            if not isinstance(value, list | str | Mapping):
                return False
            n, b = len(value), _number(self.operand)
            if b is None:
                return False
            return {"len_gt": n > b, "len_gte": n >= b, "len_lt": n < b, "len_lte": n <= b}[op]
        assert self.regex is not None
        if op == "not_glob":
            return not isinstance(value, str) or self.regex.match(value) is None
        if not isinstance(value, str):
            return False
        if op == "glob":
            return self.regex.match(value) is not None
        return self.regex.search(value) is not None

    def describe(self) -> str:
        return f"{self.path} {self.op} {self.operand!r}"


class _Rule:
    __slots__ = ("config", "index", "name", "predicates", "tool_literals", "tool_re", "upstream_re")

    def __init__(self, index: int, rule: RuleConfig) -> None:
        self.index, self.config = index, rule
        self.name = rule.name or f"rules[{index}]"
        ups = [rule.upstream] if isinstance(rule.upstream, str) else list(rule.upstream)
        tools = [rule.tool] if isinstance(rule.tool, str) else list(rule.tool)
        self.upstream_re = None if "*" in ups else _glob_regex(ups)
        literal = all(not (_GLOB_CHARS & set(t)) for t in tools)
        self.tool_literals: frozenset[str] | None = frozenset(tools) if literal else None
        self.tool_re = None if literal else _glob_regex(tools)
        self.predicates = _compile_when(rule.when)

    def matches_name(self, upstream: str, tool: str) -> bool:
        if self.upstream_re is not None and not self.upstream_re.match(upstream):
            return False
        if self.tool_re is not None and not self.tool_re.match(tool):
            return False
        return self.tool_literals is None or tool in self.tool_literals


class _Amplifier:
    __slots__ = ("config", "name", "predicates", "tool_re", "upstream_re")

    def __init__(self, index: int, amp: Amplifier) -> None:
        self.config = amp
        self.name = amp.name or f"risk.amplifiers[{index}]"
        ups = [amp.upstream] if isinstance(amp.upstream, str) else list(amp.upstream)
        tools = [amp.tool] if isinstance(amp.tool, str) else list(amp.tool)
        self.upstream_re = _glob_regex(ups)
        self.tool_re = _glob_regex(tools)
        self.predicates = _compile_when(amp.when)

    def matches(self, upstream: str, tool: str, arguments: Mapping[str, Any]) -> bool:
        return (
            self.upstream_re.match(upstream) is not None
            and self.tool_re.match(tool) is not None
            and all(p.holds(arguments) for p in self.predicates)
        )


def _compile_when(when: Mapping[str, Any]) -> list[_Predicate]:
    out: list[_Predicate] = []
    for path, pred in when.items():
        if isinstance(pred, dict):
            out.extend(_Predicate(path, op, arg) for op, arg in pred.items())
        else:
            out.append(_Predicate(path, "eq", pred))
    return out


class _SafeFormatter(string.Formatter):
    """``str.format`` over the arguments, by dotted path; unknown fields stay as ``{field}``."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        value = lookup(kwargs, field_name)
        if value is _MISSING:
            return "{" + field_name + "}", field_name
        return value, field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        try:
            return str(super().format_field(value, format_spec))
        except (ValueError, TypeError):
            return str(value)


_FORMATTER = _SafeFormatter()


_WHOLE_FIELD = re.compile(r"^\{([A-Za-z0-9_.\-]+)\}$")


def render_arguments(template: Any, context: Mapping[str, Any]) -> Any:
    """Fill a compensation's argument templates: ``"{args.path}"`` alone keeps the value's type; strings
    with other text are formatted; lists and objects are filled recursively. A missing field is an error."""
    if isinstance(template, str):
        if m := _WHOLE_FIELD.match(template):
            value = lookup(context, m.group(1))
            if value is _MISSING:
                raise KeyError(m.group(1))
            return value
        for name in re.findall(r"\{([A-Za-z0-9_.\-]+)\}", template):
            if lookup(context, name) is _MISSING:
                raise KeyError(name)
        return render_summary(template, context)
    if isinstance(template, list):
        return [render_arguments(t, context) for t in template]
    if isinstance(template, dict):
        return {k: render_arguments(v, context) for k, v in template.items()}
    return template


def render_summary(template: str, arguments: Mapping[str, Any]) -> str:
    """Fill a rule's ``summary`` template from the arguments, never failing."""
    try:
        return _FORMATTER.vformat(template, (), arguments)
    except (ValueError, IndexError, KeyError, AttributeError):
        return template


class Policy:
    """The compiled rules of one config. Immutable and safe to share."""

    def __init__(self, config: GatekeeperConfig) -> None:
        self.config = config
        self._rules = [_Rule(i, r) for i, r in enumerate(config.rules)]
        self._by_tool: dict[str, list[_Rule]] = {}
        self._candidate_cache: dict[tuple[str, str], tuple[_Rule, ...]] = {}
        self._wild: list[_Rule] = []
        for rule in self._rules:
            if rule.tool_literals is None:
                self._wild.append(rule)
            else:
                for t in rule.tool_literals:
                    self._by_tool.setdefault(t, []).append(rule)
        d = config.defaults
        self._read_words = READ_WORDS | {w.lower() for w in d.read_like if not (_GLOB_CHARS & set(w))}
        self._write_words = WRITE_WORDS | {w.lower() for w in d.write_like if not (_GLOB_CHARS & set(w))}
        read_globs = [w for w in d.read_like if _GLOB_CHARS & set(w)]
        write_globs = [w for w in d.write_like if _GLOB_CHARS & set(w)]
        self._read_globs = _glob_regex(read_globs) if read_globs else None
        self._write_globs = _glob_regex(write_globs) if write_globs else None
        r = config.risk
        self._risk_high = _glob_regex(r.high) if r.high else None
        self._risk_medium = _glob_regex(r.medium) if r.medium else None
        self._amplifiers = [_Amplifier(i, a) for i, a in enumerate(r.amplifiers)]

    def asks_agent(self, upstream: str, tool: str) -> bool:
        """Whether the tool's schema gets ``gatekeeper_reason`` / ``gatekeeper_confidence`` (config or any rule)."""
        if self.config.risk.ask_agent:
            return True
        return any(rule.config.ask_agent and rule.matches_name(upstream, tool) for rule in self._rules)

    @staticmethod
    def envelope_holds(envelope: Mapping[str, Any], arguments: Mapping[str, Any]) -> bool:
        """Does a lease's argument envelope (``when``-style predicates) cover these arguments?"""
        return all(p.holds(arguments) for p in _compile_when(envelope))

    def rule_named(self, name: str | None) -> RuleConfig | None:
        """The rule a recorded call matched (by its name), if it still exists."""
        for rule in self._rules:
            if rule.name == name:
                return rule.config
        return None

    def _candidates(self, upstream: str, tool: str) -> Sequence[_Rule]:
        """The rules whose upstream and tool patterns match, in order (cached: only ``when`` is left per call)."""
        key = (upstream, tool)
        found = self._candidate_cache.get(key)
        if found is None:
            literal = self._by_tool.get(tool, ())
            merged = (
                sorted((*literal, *self._wild), key=lambda r: r.index)
                if literal and self._wild
                else (literal or self._wild)
            )
            found = tuple(r for r in merged if r.matches_name(upstream, tool))
            if len(self._candidate_cache) >= _CANDIDATE_CACHE_SIZE:
                self._candidate_cache.clear()
            self._candidate_cache[key] = found
        return found

    def _first_match(self, upstream: str, tool: str, arguments: Mapping[str, Any]) -> _Rule | None:
        for rule in self._candidates(upstream, tool):
            if all(p.holds(arguments) for p in rule.predicates):
                return rule
        return None

    def score(
        self,
        tool: str,
        annotations: Mapping[str, Any] | None,
        *,
        upstream: str = "*",
        arguments: Mapping[str, Any] | None = None,
        confidence: float | None = None,
    ) -> tuple[str, list[str]]:
        """Risk level with its reasons, step by step: taxonomy, annotations, payload amplifiers, agent confidence.

        Each step can only raise the level.
        """
        reasons: list[str] = []
        level = "low"

        def raise_to(new: str, why: str) -> None:
            nonlocal level
            if RISK_ORDER[new] > RISK_ORDER[level]:
                level = new
                reasons.append(f"risk {new}: {why}")

        qualified = f"{upstream}/{tool}"
        if self._risk_high is not None and (self._risk_high.match(tool) or self._risk_high.match(qualified)):
            raise_to("high", "the tool is listed under [risk].high")
        elif self._risk_medium is not None and (self._risk_medium.match(tool) or self._risk_medium.match(qualified)):
            raise_to("medium", "the tool is listed under [risk].medium")
        words = set(name_words(tool))
        if hits := words & HIGH_RISK_WORDS:
            raise_to("high", f"the tool name says {', '.join(sorted(hits))}")
        elif hits := words & MEDIUM_RISK_WORDS:
            raise_to("medium", f"the tool name says {', '.join(sorted(hits))}")
        ann = annotations or {}
        if ann.get("destructiveHint") is True:
            raise_to("high", "the upstream annotates the tool destructiveHint")
        if ann.get("openWorldHint") is True:
            raise_to("medium", "the upstream annotates the tool openWorldHint")
        if arguments is not None:
            for amp in self._amplifiers:
                if amp.matches(upstream, tool, arguments):
                    raise_to(amp.config.level, f"{amp.name}: {'; '.join(p.describe() for p in amp.predicates)}")
        if confidence is not None and confidence < self.config.risk.confidence_below:
            bumped = _LEVELS[min(RISK_ORDER[level] + 1, len(_LEVELS) - 1)]
            raise_to(
                bumped, f"the agent's stated confidence {confidence:g} is below {self.config.risk.confidence_below:g}"
            )
        return level, reasons

    def _default_gate(self, tool: str, annotations: Mapping[str, Any] | None) -> tuple[bool, str]:
        words = set(name_words(tool))
        if hits := words & self._write_words:
            return True, f"no rule matched; the tool name says {', '.join(sorted(hits))}, a write: held"
        if self._write_globs is not None and self._write_globs.match(tool):
            return True, "no rule matched; the tool matches defaults.write_like: held"
        destructive = (annotations or {}).get("destructiveHint") is True
        if destructive:
            return True, "no rule matched; the upstream annotates the tool destructiveHint: held"
        if hits := words & self._read_words:
            return False, f"no rule matched; the tool name says {', '.join(sorted(hits))}, a read: passes"
        if self._read_globs is not None and self._read_globs.match(tool):
            return False, "no rule matched; the tool matches defaults.read_like: passes"
        if self.config.defaults.unknown == "allow":
            return False, "no rule matched; unknown kind of tool and defaults.unknown = 'allow': passes"
        return True, "no rule matched; the tool name is neither a read nor a write: held to be safe"

    def evaluate(
        self,
        upstream: str,
        tool: str,
        arguments: Mapping[str, Any],
        annotations: Mapping[str, Any] | None = None,
        *,
        confidence: float | None = None,
    ) -> Verdict:
        """Which rule matches, which gate, which risk level, and why."""
        risk, reasons = self.score(tool, annotations, upstream=upstream, arguments=arguments, confidence=confidence)
        rule = self._first_match(upstream, tool, arguments)
        if rule is None:
            hold, why = self._default_gate(tool, annotations)
            reasons.insert(0, why)
            if hold and RISK_ORDER[risk] < RISK_ORDER["medium"]:
                risk = "medium"
            return Verdict(
                gate="hard" if hold else "allow",
                hold=hold,
                risk=risk,
                rule=None,
                rule_index=None,
                reasons=tuple(reasons),
                summary=None,
                timeout=self.config.defaults.timeout,
                in_client=self.config.waiting.in_client,
                ask_agent=self.config.risk.ask_agent,
            )
        cfg = rule.config
        conds = "; ".join(p.describe() for p in rule.predicates)
        reasons.insert(0, f"matched {rule.name} (gate {cfg.gate})" + (f" because {conds}" if conds else ""))
        if cfg.risk is not None and RISK_ORDER[cfg.risk] > RISK_ORDER[risk]:
            risk = cfg.risk
            reasons.append(f"risk set to {cfg.risk} by the rule")
        gate = cfg.gate
        hold = gate == "hard"
        destructive = (annotations or {}).get("destructiveHint") is True
        if gate == "soft":
            hold = RISK_ORDER[risk] >= RISK_ORDER[cfg.hold_at]
            reasons.append(
                f"soft gate: risk {risk} {'is' if hold else 'is not'} at or above {cfg.hold_at}: "
                + ("held" if hold else "passes, audited")
            )
        if gate == "allow" and destructive and cfg.risk is None:
            # an allow rule is the user's explicit word; the annotation still shows on the card
            reasons.append("note: the upstream annotates this tool destructiveHint")
        effects = cfg.effects.model_dump(exclude_none=True)
        return Verdict(
            gate=gate,
            hold=hold,
            risk=risk,
            rule=rule.name,
            rule_index=rule.index,
            reasons=tuple(reasons),
            summary=render_summary(cfg.summary, arguments) if cfg.summary else None,
            effects=effects,
            timeout=cfg.timeout or self.config.defaults.timeout,
            deny_reason=(cfg.reason or f"denied by policy rule {rule.name}") if gate == "deny" else None,
            in_client=cfg.in_client or self.config.waiting.in_client,
            ask_agent=cfg.ask_agent if cfg.ask_agent is not None else self.config.risk.ask_agent,
            rule_config=cfg,
        )
