"""Pure rule matching and risk scoring: ``Policy.evaluate(upstream, tool, arguments, annotations) -> Verdict``.

No I/O, no clocks, no async. The built-in ``protect-own-files`` rule comes first (``ownfiles.py``); then
rules are tried in order and the first match decides (a rule that cannot read its value denies: see
``predicates.py``). A call no rule matches gets the documented default: read-like tool names pass,
everything else is held, and a tool the upstream annotates ``destructiveHint: true`` (or, with a read-like
name, ``readOnlyHint: false``) is always held. Annotations tighten; the one thing ``readOnlyHint: true``
decides is whether a word like ``branch`` names a thing or an action (``NOUN_WORDS``).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from mcp_gatekeeper import paths
from mcp_gatekeeper.config import Amplifier, GatekeeperConfig, RuleConfig
from mcp_gatekeeper.models import RISK_ORDER
from mcp_gatekeeper.ownfiles import SELF_PROTECTION_RULE, OwnFiles, OwnFilesCheck
from mcp_gatekeeper.predicates import MISSING, Predicate, Unreadable, compile_when, lookup, quantifier_for

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

NOUN_WORDS = frozenset(["branch", "tag", "message", "order", "link", "archive"])
"""Write words that are as often the name of a thing: ``git_branch`` lists branches, ``get_message`` reads one.
Such a word counts as a write unless the name also has a read word or the upstream annotates the tool
``readOnlyHint`` (and nothing else in the name is a write, and ``defaults.write_like`` does not list it)."""

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
    in_chat: str = "show"
    """``decide``: the MCP Apps card's buttons decide the call; ``show``: the card shows status and a link."""
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
            "in_chat": self.in_chat,
        }


class _Rule:
    __slots__ = ("config", "index", "name", "predicates", "tool_literals", "tool_re", "upstream_re")

    def __init__(self, index: int, rule: RuleConfig, home: str) -> None:
        self.index, self.config = index, rule
        self.name = rule.name or f"rules[{index}]"
        ups = [rule.upstream] if isinstance(rule.upstream, str) else list(rule.upstream)
        tools = [rule.tool] if isinstance(rule.tool, str) else list(rule.tool)
        self.upstream_re = None if "*" in ups else _glob_regex(ups)
        literal = all(not (_GLOB_CHARS & set(t)) for t in tools)
        self.tool_literals: frozenset[str] | None = frozenset(tools) if literal else None
        self.tool_re = None if literal else _glob_regex(tools)
        self.predicates = compile_when(rule.when, quantifier=quantifier_for(rule.gate), home=home)

    def matches_name(self, upstream: str, tool: str) -> bool:
        if self.upstream_re is not None and not self.upstream_re.match(upstream):
            return False
        if self.tool_re is not None and not self.tool_re.match(tool):
            return False
        return self.tool_literals is None or tool in self.tool_literals


class _Amplifier:
    __slots__ = ("config", "name", "predicates", "tool_re", "upstream_re")

    def __init__(self, index: int, amp: Amplifier, home: str) -> None:
        self.config = amp
        self.name = amp.name or f"risk.amplifiers[{index}]"
        ups = [amp.upstream] if isinstance(amp.upstream, str) else list(amp.upstream)
        tools = [amp.tool] if isinstance(amp.tool, str) else list(amp.tool)
        self.upstream_re = _glob_regex(ups)
        self.tool_re = _glob_regex(tools)
        self.predicates = compile_when(amp.when, quantifier="any", home=home)

    def matches(self, upstream: str, tool: str, arguments: Mapping[str, Any]) -> bool:
        return (
            self.upstream_re.match(upstream) is not None
            and self.tool_re.match(tool) is not None
            and all(p.test(arguments) is not False for p in self.predicates)  # unreadable: raise the risk
        )


class _SafeFormatter(string.Formatter):
    """``str.format`` over the arguments, by dotted path; unknown fields stay as ``{field}``."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        value = lookup(kwargs, field_name)
        if value is MISSING:
            return "{" + field_name + "}", field_name
        return value, field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        if not format_spec and not isinstance(value, str):
            return json_text(value)  # as the page's JSON view shows it: 310, not 310.0; true, not True
        try:
            return str(super().format_field(value, format_spec))
        except (ValueError, TypeError):
            return str(value)


def json_number(value: float) -> str:
    """A number as JavaScript (and so the approval page's JSON view) writes it: ``310.0`` is ``310``,
    ``1e-05`` is ``0.00001``, ``1e16`` is ``10000000000000000``; shortest round-trip digits either way."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    # the shortest digits that round-trip (Python's repr finds the same ones JavaScript does)
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)  # finite
    raw = "".join(map(str, digit_tuple))
    k = len(raw)
    n = k + exponent  # value = 0.RAW x 10^n
    if k <= n <= 21:
        out = raw + "0" * (n - k)
    elif 0 < n <= 21:
        out = f"{raw[:n]}.{raw[n:]}"
    elif -6 < n <= 0:
        out = "0." + "0" * -n + raw
    else:
        e10 = n - 1
        out = f"{raw[0]}{'.' + raw[1:] if k > 1 else ''}e{'+' if e10 >= 0 else '-'}{abs(e10)}"
    return ("-" if sign else "") + out


def json_text(value: Any) -> str:
    """A non-string value in a summary, written as JSON is (numbers as :func:`json_number`)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return json_number(value)
    if isinstance(value, list):
        return (
            "["
            + ", ".join(json.dumps(v, ensure_ascii=False) if isinstance(v, str) else json_text(v) for v in value)
            + "]"
        )
    if isinstance(value, dict):
        items = (
            f"{json.dumps(str(k), ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False) if isinstance(v, str) else json_text(v)}"
            for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    return str(value)


_FORMATTER = _SafeFormatter()


_WHOLE_FIELD = re.compile(r"^\{([A-Za-z0-9_.\-]+)\}$")


def render_arguments(template: Any, context: Mapping[str, Any]) -> Any:
    """Fill a compensation's argument templates: ``"{args.path}"`` alone keeps the value's type; strings
    with other text are formatted; lists and objects are filled recursively. A missing field is an error."""
    if isinstance(template, str):
        if m := _WHOLE_FIELD.match(template):
            value = lookup(context, m.group(1))
            if value is MISSING:
                raise KeyError(m.group(1))
            return value
        for name in re.findall(r"\{([A-Za-z0-9_.\-]+)\}", template):
            if lookup(context, name) is MISSING:
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


@dataclass(frozen=True, slots=True)
class _Refused:
    """A rule whose predicate could not read its value: the call is denied, never passed to a later rule."""

    rule: _Rule
    predicate: Predicate
    why: str


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _looks_like_path(value: str) -> bool:
    if value[:5].lower() == "file:":
        return True
    return not _URL.match(value) and ("/" in value.strip("/") or value.startswith(("/", "~/")))


class Policy:
    """The compiled rules of one config. Immutable and safe to share."""

    def __init__(
        self, config: GatekeeperConfig, *, own_files: OwnFiles | None = None, home_dir: str | None = None
    ) -> None:
        """``own_files``: the gatekeeper's files for the built-in self-protection rule (none: nothing to protect);
        ``home_dir``: what ``~`` means in paths (default: the user's home)."""
        self.config = config
        self.own_files = own_files
        self.home_dir = home_dir or os.path.expanduser("~")
        protect = own_files is not None and config.security.protect_own_files and (own_files.dirs or own_files.files)
        self._own = OwnFilesCheck(own_files, self.home_dir) if protect and own_files is not None else None
        # a rule in shadow is not enforced (its index stays its place in the file: names like rules[3] hold)
        self._rules = [_Rule(i, r, self.home_dir) for i, r in enumerate(config.rules) if not r.shadow]
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
        self._nouns = NOUN_WORDS - {w.lower() for w in d.write_like}
        read_globs = [w for w in d.read_like if _GLOB_CHARS & set(w)]
        write_globs = [w for w in d.write_like if _GLOB_CHARS & set(w)]
        self._read_globs = _glob_regex(read_globs) if read_globs else None
        self._write_globs = _glob_regex(write_globs) if write_globs else None
        r = config.risk
        self._risk_high = _glob_regex(r.high) if r.high else None
        self._risk_medium = _glob_regex(r.medium) if r.medium else None
        self._amplifiers = [_Amplifier(i, a, self.home_dir) for i, a in enumerate(r.amplifiers)]

    def asks_agent(self, upstream: str, tool: str) -> bool:
        """Whether the tool's schema gets ``gatekeeper_reason`` / ``gatekeeper_confidence`` (config or any rule)."""
        if self.config.risk.ask_agent:
            return True
        return any(rule.config.ask_agent and rule.matches_name(upstream, tool) for rule in self._rules)

    def envelope_holds(self, envelope: Mapping[str, Any], arguments: Mapping[str, Any]) -> bool:
        """Does a lease's argument envelope (``when``-style predicates) cover these arguments? An envelope
        allows, so over list elements it needs every one, and an unreadable value is not covered."""
        return all(p.holds(arguments) for p in compile_when(envelope, quantifier="all", home=self.home_dir))

    def lease_paths(self, arguments: Mapping[str, Any]) -> dict[str, str]:
        """For "approve and allow similar calls": each top-level or nested string argument that names a file,
        by dotted key, mapped to the folder an envelope should keep later calls ``under`` (lexically
        normalised, so ``src/../.git/x`` suggests ``.git``, not ``src``)."""
        out: dict[str, str] = {}

        def walk(value: Any, key: str) -> None:
            if isinstance(value, Mapping):
                for k, v in value.items():
                    walk(v, f"{key}.{k}" if key else str(k))
            elif isinstance(value, str) and _looks_like_path(value):
                forms = paths.interpretations(value, home=self.home_dir) or ()
                # one reading only: a spelling with several (a file: URI, backslashes) is never covered by
                # an `under` envelope, which must hold for every reading, so suggesting one would mislead
                folder = paths.parent(forms[0]) if len(forms) == 1 else "/"
                if folder not in (".", "/") and not folder.endswith(":/"):  # never suggest a whole drive
                    out[key] = folder

        walk(arguments, "")
        return out

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

    def _first_match(self, upstream: str, tool: str, arguments: Mapping[str, Any]) -> _Rule | _Refused | None:
        for rule in self._candidates(upstream, tool):
            for p in rule.predicates:
                got = p.test(arguments)
                if isinstance(got, Unreadable):
                    return _Refused(rule, p, got.why)
                if not got:
                    break
            else:
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
        reads = words & self._read_words
        writes = words & self._write_words
        read_only = (annotations or {}).get("readOnlyHint") is True
        nouns = writes & self._nouns
        as_things = ""
        if nouns and writes == nouns and (reads or read_only):
            why = "a read word" if reads else "the upstream annotates the tool readOnlyHint"
            as_things = f"; {', '.join(sorted(nouns))} names a thing here, not an action ({why})"
            writes = set()
        if writes:
            return True, f"no rule matched; the tool name says {', '.join(sorted(writes))}, a write: held"
        if self._write_globs is not None and self._write_globs.match(tool):
            return True, "no rule matched; the tool matches defaults.write_like: held"
        destructive = (annotations or {}).get("destructiveHint") is True
        if destructive:
            return True, "no rule matched; the upstream annotates the tool destructiveHint: held"
        if reads and (annotations or {}).get("readOnlyHint") is False:
            return True, (
                f"no rule matched; the tool name says {', '.join(sorted(reads))}, a read, but the upstream annotates"
                " it readOnlyHint false (it changes something): held"
            )
        if reads:
            return False, f"no rule matched; the tool name says {', '.join(sorted(reads))}, a read{as_things}: passes"
        if as_things:
            return False, f"no rule matched{as_things}; nothing in the name says write: passes"
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
        """Which rule matches, which gate, which risk level, and why.

        Before any user rule, the built-in ``protect-own-files`` rule denies a call naming the gatekeeper's own
        files. A rule whose predicate cannot read its value (``amount`` is ``true``, ``path`` is a list) denies
        the call: an unreadable value never falls through to a later rule or the default."""
        risk, reasons = self.score(tool, annotations, upstream=upstream, arguments=arguments, confidence=confidence)
        if self._own is not None:
            reads = not self._default_gate(tool, annotations)[0]
            named = self._own.hit(arguments, ancestors=not reads)
            if named is not None:
                why = "the arguments name the gatekeeper's own files (its data home, database, tokens or config)"
                return self._denied(
                    SELF_PROTECTION_RULE,
                    None,
                    risk if RISK_ORDER[risk] > RISK_ORDER["high"] else "high",
                    [f"matched built-in rule {SELF_PROTECTION_RULE}: {why}", *reasons],
                    f"denied: {why}; no tool call may read or change them",
                )
        match = self._first_match(upstream, tool, arguments)
        if isinstance(match, _Refused):
            why = f"cannot read the arguments for {match.rule.name} ({match.predicate.describe()}): {match.why}"
            return self._denied(
                match.rule.name, match.rule.index, risk, [f"refused: {why}", *reasons], f"denied: {why}"
            )
        rule = match
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
                in_chat=self.config.waiting.in_chat or "show",
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
            in_chat=cfg.in_chat or self.config.waiting.in_chat or ("decide" if gate == "soft" else "show"),
            ask_agent=cfg.ask_agent if cfg.ask_agent is not None else self.config.risk.ask_agent,
            rule_config=cfg,
        )

    def _denied(self, rule: str, index: int | None, risk: str, reasons: list[str], deny_reason: str) -> Verdict:
        return Verdict(
            gate="deny",
            hold=False,
            risk=risk,
            rule=rule,
            rule_index=index,
            reasons=tuple(reasons),
            timeout=self.config.defaults.timeout,
            deny_reason=deny_reason,
            in_client=self.config.waiting.in_client,
        )
