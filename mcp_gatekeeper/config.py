"""The configuration file: pydantic models of the TOML, loaded fail-closed.

``load_config()`` raises one :class:`~mcp_gatekeeper.errors.ConfigError` that names every bad field by
its path and, where the file shows it, its line (``config.toml:14: rules[2].gate: ...``).
Where the config lives: ``--config``, else ``$MCP_GATEKEEPER_CONFIG``, else
the user's ``config.toml`` (``~/.config/mcp-gatekeeper/`` on Linux, the platform's config dir elsewhere:
:func:`default_config_path`) if present, else built-in defaults.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from mcp_gatekeeper import hostos
from mcp_gatekeeper.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PREDICATE_OPS = (
    "eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "glob", "not_glob", "regex", "exists",
    "len_gt", "len_gte", "len_lt", "len_lte", "under", "not_under", "path_glob", "not_path_glob", "path_regex",
)  # fmt: skip
PATH_OPS = frozenset(["under", "not_under", "path_glob", "not_path_glob", "path_regex"])
"""Operators that read their value as a file path: they compare its normal forms (see ``paths.py``)."""
NUMBER_OPS = frozenset(["gt", "gte", "lt", "lte", "len_gt", "len_gte", "len_lt", "len_lte"])
EACH = "[*]"
"""A step of a ``when`` key that means "every element of this list" (``paths[*]``, ``edits[*].path``)."""
_KEY_PART = re.compile(r"^([^\[\]]+)((?:\[\*\])*)$")
Risk = Literal["low", "medium", "high", "critical"]


def parse_duration(value: Any) -> float:
    """Seconds from ``30``, ``2.5``, ``"30s"``, ``"5m"``, ``"1h"``, ``"250ms"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '30s', '5m' or '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 30, '30s', '5m' or '1h', got {value!r}")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UpstreamConfig(_Model):
    """One upstream MCP server: a command (stdio) or a URL (Streamable HTTP or legacy SSE)."""

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment for a stdio child (``${VAR}`` expands from the gatekeeper's environment)."""
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    """HTTP headers for a URL upstream; ``${VAR}`` expands from the environment (keep secrets there)."""
    transport: Literal["stdio", "http", "sse"] | None = None
    """Inferred: ``stdio`` with ``command``, ``http`` with ``url`` (``sse`` if the URL ends in ``/sse``)."""
    timeout: Duration = 120.0
    """Per-call timeout for a forwarded call; past it the call fails (``outcome_unknown`` if it was sent)."""
    connect_timeout: Duration = 30.0
    mode: Literal["legacy", "auto"] = "legacy"
    """Protocol era used towards this upstream: ``legacy`` (handshake) keeps push features working."""

    @model_validator(mode="after")
    def _one_kind(self) -> UpstreamConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of 'command' (stdio) or 'url' (HTTP)")
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError("'args', 'env' and 'cwd' apply only to a 'command' upstream")
        if self.command is not None and self.headers:
            raise ValueError("'headers' apply only to a 'url' upstream")
        if self.transport == "stdio" and self.url is not None:
            raise ValueError("transport 'stdio' needs 'command', not 'url'")
        if self.transport in ("http", "sse") and self.command is not None:
            raise ValueError(f"transport {self.transport!r} needs 'url', not 'command'")
        return self

    @property
    def kind(self) -> Literal["stdio", "http", "sse"]:
        if self.transport is not None:
            return self.transport
        if self.command is not None:
            return "stdio"
        assert self.url is not None
        return "sse" if self.url.rstrip("/").endswith("/sse") else "http"


Predicate = dict[str, Any]


def parse_when_key(key: str) -> tuple[Literal["any", "all"] | None, tuple[str, ...]]:
    """``"all:edits[*].path"`` -> ``("all", ("edits", "[*]", "path"))``; no prefix -> ``None`` (the rule's default).

    Raises ValueError for a malformed key (an empty step, a bracket that is not ``[*]``, an unknown prefix)."""
    quantifier: Literal["any", "all"] | None = None
    if key.startswith(("any:", "all:")):
        quantifier = "any" if key.startswith("any:") else "all"
        key = key[4:]
    steps: list[str] = []
    for part in key.split("."):
        m = _KEY_PART.match(part)
        if m is None:
            raise ValueError(f"when: bad argument path {key!r} (steps are names, numbers or name[*])")
        steps.append(m.group(1))
        steps.extend([EACH] * (len(m.group(2)) // 3))
    if quantifier is not None and EACH not in steps:
        raise ValueError(f"when: {quantifier}: applies only to a path with [*] (got {key!r})")
    return quantifier, tuple(steps)


def _strings_or_list(arg: Any) -> bool:
    if isinstance(arg, str):
        return True
    return isinstance(arg, list) and bool(arg) and all(isinstance(a, str) for a in arg)


def check_predicates(when: dict[str, Any]) -> None:
    """Every ``when`` predicate is well formed (raises ValueError naming the path and operator)."""
    for path, pred in when.items():
        parse_when_key(path)
        if not isinstance(pred, dict):
            continue
        if not pred:
            raise ValueError(f"when.{path}: empty predicate")
        for op, arg in pred.items():
            if op not in PREDICATE_OPS:
                raise ValueError(f"when.{path}: unknown operator {op!r} (use one of {', '.join(PREDICATE_OPS)})")
            if op in ("in", "not_in") and not isinstance(arg, list):
                raise ValueError(f"when.{path}.{op}: expected a list")
            if op in NUMBER_OPS and (isinstance(arg, bool) or not isinstance(arg, int | float | str)):
                raise ValueError(f"when.{path}.{op}: expected a number")
            if op in NUMBER_OPS and not _finite_number(arg):
                raise ValueError(f"when.{path}.{op}: expected a finite number, got {arg!r}")
            if op in ("glob", "not_glob", "regex", "path_regex") and not isinstance(arg, str):
                raise ValueError(f"when.{path}.{op}: expected a string")
            if op in ("under", "not_under", "path_glob", "not_path_glob") and not _strings_or_list(arg):
                raise ValueError(f"when.{path}.{op}: expected a path or a non-empty list of paths")
            if op in ("regex", "path_regex"):
                try:
                    re.compile(arg)
                except re.error as e:
                    raise ValueError(f"when.{path}.{op}: invalid regular expression: {e}") from None
            if op == "exists" and not isinstance(arg, bool):
                raise ValueError(f"when.{path}.exists: expected true or false")


def _finite_number(arg: Any) -> bool:
    try:
        return Decimal(arg.strip() if isinstance(arg, str) else arg).is_finite()
    except (InvalidOperation, ValueError):
        return False


class ToolCall(_Model):
    """A call the gatekeeper makes itself (a compensation or a capture). Strings in ``arguments`` are
    templates: ``{args.path}`` (the original arguments), ``{result.structured.id}``, ``{result.text}``,
    ``{capture.text}`` (what the capture call returned)."""

    tool: str
    upstream: str | None = None
    """Default: the upstream of the original call."""
    arguments: dict[str, Any] = Field(default_factory=dict)


class EscalationStep(_Model):
    """After ``after`` seconds without a decision, notify ``notify`` and (optionally) shorten the wait."""

    after: Duration
    notify: list[str] = Field(default_factory=list)
    """Notifier channel names (``stderr``, ``desktop`` or a ``[[notify.webhooks]]`` name)."""
    timeout: Duration | None = None
    """From this step on, the call is rejected at most this long later."""


class Effects(_Model):
    """What happens if the reviewer approves, and if they reject. Shown on the card."""

    approve: str | None = None
    reject: str | None = None
    reversible: bool | None = None


class RuleConfig(_Model):
    """One policy rule. Rules are tried in order; the first that matches decides."""

    name: str | None = None
    upstream: str | list[str] = "*"
    """Glob(s) on the upstream name."""
    tool: str | list[str] = "*"
    """Glob(s) on the tool name (the upstream's own name, without any ``upstream__`` prefix)."""
    when: dict[str, Predicate | Any] = Field(default_factory=dict)
    """Argument predicates on dotted paths, all must hold: ``{"amount" = {gt = 1000}}``; a bare value means eq.
    ``"paths[*]"`` reaches every list element (``all`` of them for allow/audit/soft, ``any`` for deny/hard;
    ``"all:paths[*]"`` / ``"any:paths[*]"`` choose); ``under``/``path_glob``/... compare normalised paths."""
    gate: Literal["allow", "deny", "hard", "soft", "audit"]
    confirm: Literal["passkey"] | None = None
    """``"passkey"``: an approval needs the reviewer's passkey (WebAuthn) over this call and its arguments;
    the gatekeeper re-checks it before forwarding. Needs a rule ``name`` and ``[ui] public_url`` (the relying party)."""
    risk: Literal["low", "medium", "high", "critical"] | None = None
    summary: str | None = None
    """Plain-words template for the reviewer, e.g. ``"Refund {amount} {currency} on order {order_id}"``."""
    effects: Effects = Field(default_factory=Effects)
    timeout: Duration | None = None
    """How long a held call waits for a human before the safe default (reject)."""
    reason: str | None = None
    """For ``deny``: the reason the agent reads."""
    on_timeout: Literal["reject"] = "reject"
    """What a timeout does. Only ``reject`` exists: nothing in mcp-gatekeeper approves by default."""
    in_client: Literal["decide", "notify", "off"] | None = None
    """Whether an answer given inside the MCP client counts as the human decision (``decide``), only points
    the user at the approval card (``notify``), or is not asked at all (``off``). Default: ``[waiting].in_client``."""
    in_chat: Literal["decide", "show"] | None = None
    """For clients that render MCP Apps: whether the decision card's buttons in the chat decide the call (``decide``)
    or the card only shows the call's status and a link to the approval page (``show``). Default:
    ``[waiting].in_chat``, else ``show`` for hard gates (the page and the CLI stay authoritative) and ``decide``
    for soft gates."""
    hold_at: Risk = "medium"
    """For ``gate = "soft"``: hold when the call's risk is at or above this level; below it the call passes."""
    ask_agent: bool | None = None
    """Add ``gatekeeper_reason`` and ``gatekeeper_confidence`` to the tool's input schema (default: ``[risk].ask_agent``)."""
    escalate: list[EscalationStep] = Field(default_factory=list)
    no_lease: bool = False
    """Never offer "approve and allow similar calls" for this rule's calls."""
    review_window: Duration | None = None
    """For ``gate = "audit"``: how long a reviewer has to confirm or fail the call (default 1 h)."""
    on_review_timeout: Literal["keep", "rollback"] = "keep"
    """For ``gate = "audit"``: an unreviewed call is kept (and flagged) or rolled back when the window closes."""
    compensate: ToolCall | None = None
    """For ``gate = "audit"``: the call that undoes this one if the review fails."""
    capture: ToolCall | None = None
    """For ``gate = "audit"``: a call made *before* forwarding whose result the compensation can use."""
    irreversible_ok: bool = False
    """For ``gate = "audit"`` without ``compensate``: accept that a failed review cannot undo the call."""
    shadow: bool = False
    """Try the rule without enforcing it: calls take the gate of the rules without it, and what it would have
    done is recorded beside each call (``explain``, the call card and ``suggest`` show it). See ``[shadow]``."""
    reviewers: list[str] = Field(default_factory=list)
    """Team mode: the reviewer groups whose members may decide this rule's calls (empty: every reviewer)."""
    approvals: int = Field(default=1, ge=1, le=10)
    """Team mode: how many different reviewers must approve (each a named, audited step); one rejection refuses."""
    prevent_self_review: bool | None = None
    """Team mode: a reviewer linked to the call's principal cannot decide it (default: on in team mode)."""

    @model_validator(mode="after")
    def _check_predicates(self) -> RuleConfig:
        check_predicates(self.when)
        return self

    @model_validator(mode="after")
    def _check_audit(self) -> RuleConfig:
        if self.gate == "audit" and self.compensate is None and not self.irreversible_ok:
            raise ValueError(
                "an audit gate runs the call before anyone reviews it, so it needs 'compensate' (how to undo it"
                " if the review fails); for an action that cannot be undone set irreversible_ok = true, or use"
                " gate = 'hard' to review first"
            )
        if self.gate != "audit" and (self.compensate or self.capture or self.review_window):
            raise ValueError("'compensate', 'capture' and 'review_window' apply only to gate = 'audit'")
        return self


class DefaultsConfig(_Model):
    """What happens to calls no rule matches."""

    read_like: list[str] = Field(default_factory=list)
    """Extra tool-name words (or globs) treated as reads that pass (added to the built-in list)."""
    write_like: list[str] = Field(default_factory=list)
    """Extra tool-name words (or globs) treated as writes that are held (added to the built-in list)."""
    unknown: Literal["hard", "allow"] = "hard"
    """Tools whose name is neither read- nor write-like: held by default."""
    timeout: Duration = 600.0
    """Default hold timeout (10 minutes)."""


class Amplifier(_Model):
    """An argument predicate that raises a call's risk level (``amount > 1000`` → critical)."""

    name: str | None = None
    upstream: str | list[str] = "*"
    tool: str | list[str] = "*"
    when: dict[str, Predicate | Any]
    level: Risk

    @model_validator(mode="after")
    def _check(self) -> Amplifier:
        check_predicates(self.when)
        if not self.when:
            raise ValueError("an amplifier needs at least one 'when' predicate")
        return self


class RiskConfig(_Model):
    """How risky a call is: low | medium | high | critical, explained step by step."""

    high: list[str] = Field(default_factory=list)
    """Tool globs that are high risk (``"billing/refund_*"`` scopes a glob to an upstream)."""
    medium: list[str] = Field(default_factory=list)
    """Tool globs that are medium risk."""
    amplifiers: list[Amplifier] = Field(default_factory=list)
    ask_agent: bool = False
    """Ask the agent for ``gatekeeper_reason`` and ``gatekeeper_confidence`` on every tool."""
    confidence_below: float = Field(default=0.7, ge=0, le=1)
    """A stated confidence below this raises the level one step (medium → high)."""


class WebhookChannel(_Model):
    """A webhook notified when a call is held: JSON (HMAC-signed when ``secret`` is set) or Slack-style."""

    name: str
    url: str
    format: Literal["json", "slack"] = "json"
    secret: str | None = None
    """Signs the JSON body: header ``X-Gatekeeper-Signature: sha256=<hex HMAC>``; ``${VAR}`` expands."""
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = 5.0


class SlackReviewer(_Model):
    """One Slack user allowed to decide from Slack, and the reviewer name their decisions are recorded under."""

    user: str = Field(pattern=r"^[UW][A-Z0-9]{2,30}$")
    """The Slack member id (``U0123ABCD``; profile → ⋮ → Copy member ID)."""
    team: str = Field(pattern=r"^T[A-Z0-9]{2,30}$")
    """The workspace id (``T0123ABCD``): the same member id in another workspace is someone else."""
    reviewer: str = Field(min_length=1, max_length=100)
    """The name in the audit trail (``slack:<reviewer>``)."""


class SlackChannel(_Model):
    """Decisions from Slack: a message with Approve / Reject / Open buttons per held call (``[notify.slack]``)."""

    name: str = "slack"
    """The channel name in ``on_hold`` and escalation steps."""
    channel: str = Field(min_length=1)
    """Where messages are posted: a channel id (``C0123ABCD``) the app has been added to."""
    bot_token: str = "${MCP_GATEKEEPER_SLACK_BOT_TOKEN}"  # noqa: S105 - the name of an environment variable
    """The app's bot token (``xoxb-…``); ``${VAR}`` expands. Keep it in the environment, not in the file."""
    signing_secret: str = "${MCP_GATEKEEPER_SLACK_SIGNING_SECRET}"  # noqa: S105 - the name of an environment variable
    """The app's signing secret (Basic Information → App Credentials); ``${VAR}`` expands."""
    api_url: str = Field(default="https://slack.com/api", pattern=r"^https?://")
    """Slack's Web API (tests point it at a local stand-in)."""
    reviewers: list[SlackReviewer] = Field(default_factory=list)
    """The allow-list: only these Slack users' clicks decide; anyone else is told they may not."""
    timeout: Duration = 5.0


class NtfyChannel(_Model):
    """Push to a phone through an ntfy server (ntfy.sh or your own): one POST to a topic URL per event."""

    name: str
    url: str = Field(pattern=r"^https?://")
    """The topic URL (``https://ntfy.sh/<a long unguessable topic>``); ``${VAR}`` expands."""
    token: str | None = None
    """An access token sent as ``Authorization: Bearer``; ``${VAR}`` expands."""
    timeout: Duration = 5.0


class NotifyConfig(_Model):
    """Who hears about held calls. A failing channel is logged and never blocks or decides a hold."""

    stderr: bool = True
    desktop: bool = False
    """``notify-send`` (Linux) or ``osascript`` (macOS) when available."""
    webhooks: list[WebhookChannel] = Field(default_factory=list)
    slack: SlackChannel | None = None
    ntfy: list[NtfyChannel] = Field(default_factory=list)
    on_hold: list[str] | None = None
    """Channels told when a call is held (default: every configured channel)."""

    @model_validator(mode="after")
    def _names(self) -> NotifyConfig:
        names = [w.name for w in self.webhooks] + [n.name for n in self.ntfy]
        if self.slack is not None:
            names.append(self.slack.name)
        if dup := {n for n in names if names.count(n) > 1}:
            raise ValueError(f"channel names must be unique: {sorted(dup)}")
        if clash := set(names) & {"stderr", "desktop"}:
            raise ValueError(f"'stderr' and 'desktop' are built-in channel names: {sorted(clash)}")
        if self.slack is not None:
            seen = [(r.team, r.user) for r in self.slack.reviewers]
            if dup_users := {f"{t}/{u}" for t, u in seen if seen.count((t, u)) > 1}:
                raise ValueError(f"slack.reviewers: a Slack user is listed twice: {sorted(dup_users)}")
        return self

    @property
    def channel_names(self) -> list[str]:
        out = ["stderr"] if self.stderr else []
        if self.desktop:
            out.append("desktop")
        out += [w.name for w in self.webhooks]
        if self.slack is not None:
            out.append(self.slack.name)
        return out + [n.name for n in self.ntfy]


class ClientProfile(_Model):
    """How long one kind of client waits for a tool call, matched on ``clientInfo.name`` (a glob)."""

    name: str
    budget: Duration | None = None
    """Seconds the client waits before giving up on a call; none = it does not give up."""
    progress_resets: bool = False
    """The client restarts its timeout when it receives progress for the call (Claude Code does)."""
    label: str | None = None


class WaitingConfig(_Model):
    """How held calls wait without losing the client (see the README's "Waiting" section)."""

    margin: Duration = 10.0
    """Answer this long before the client's budget runs out (at most half the budget)."""
    in_client: Literal["decide", "notify", "off"] = "notify"
    """Default for rules: an in-client answer only points at the approval card; the web/CLI decision is authoritative."""
    in_chat: Literal["decide", "show"] | None = None
    """Default for rules' ``in_chat`` (MCP Apps decision card); unset: ``show`` for hard gates, ``decide`` for soft."""
    clients: list[ClientProfile] = Field(default_factory=list)
    """Extra or overriding client profiles, tried before the built-in table."""
    unknown: ClientProfile | None = None
    """The profile for clients nobody recognises (built-in: 60 s, progress does not reset)."""
    retry_grace: Duration = 600.0
    """How long after a held call's deadline an identical retry still gets its stored outcome."""


class UiConfig(_Model):
    autostart: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    allow_remote: bool = False
    """Required to bind a non-loopback address (a loud warning is printed)."""
    public_url: str | None = Field(default=None, pattern=r"^https?://[^/?#@\s]+/?$")
    """Where browsers reach the page through your reverse proxy (``https://gk.example.com``): the base of the
    notifications' short links and of their card links, and a Host and Origin the page accepts besides its loopback
    ones. Team mode: ``mcp-gatekeeper serve`` takes it as its ``--public-url`` (``https://`` only), and the
    gatekeepers' notifications name the call's card there. The passkeys' relying party too (``confirm =
    "passkey"``): ``https://NAME``, or ``http://localhost:PORT`` for a page on this machine."""


class SecurityConfig(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)  # written ``schema`` in the file

    unmatched_upstream: Literal["hold", "warn"] = "hold"
    """An upstream that no rule names while the rules name other upstreams (``--name filesystem`` under rules
    for ``fs``): ``hold`` every call no rule matches (the default: the config's intent is not in force), or
    ``warn`` and let the built-in default policy decide. Either way it is said on stderr and on the page."""
    max_argument_bytes: int = Field(default=1_048_576, gt=0)
    """Calls whose canonical arguments exceed this size are denied (never stored or forwarded)."""
    protect_own_files: bool = True
    """Deny every call whose arguments name the gatekeeper's data home, database, token files or config.
    ``false`` turns this built-in rule off and is logged as a warning at every start."""
    schema_mismatch: Literal["refuse", "hold"] = Field(default="refuse", alias="schema")
    """A call whose arguments do not match the tool's ``inputSchema`` (or whose schema is not a valid JSON Schema)
    is refused with the validation errors (``refuse``, so the model can correct it), or held for a human with the
    errors shown as the reason (``hold``). There is no ``off``: the policy reads the arguments as JSON, and an
    upstream that re-parses a string into an object would act on values the policy never saw."""


class PerformanceConfig(_Model):
    fast_lane: bool = True
    """On stdio, serve plainly allowed calls without the SDK's per-message work (same plan, same executor, same
    reply, record and upstream request as the full path). ``false`` sends every call through the SDK."""


class TelemetryConfig(_Model):
    """``[telemetry]``: OpenTelemetry spans and metrics per gated call (the ``otel`` extra; see mcp_gatekeeper.otel)."""

    enabled: bool = False
    exporter: Literal["global", "console", "otlp"] = "global"
    """``global``: the providers this process registered (e.g. under ``opentelemetry-instrument``); ``console``:
    the SDK writes spans and metrics to stderr; ``otlp``: OTLP over HTTP (needs opentelemetry-exporter-otlp-proto-http)."""
    endpoint: str | None = None
    """The OTLP/HTTP collector's base URL (``otlp`` only; else ``OTEL_EXPORTER_OTLP_ENDPOINT`` or the SDK's default)."""
    service_name: str = "mcp-gatekeeper"

    @model_validator(mode="after")
    def _endpoint(self) -> TelemetryConfig:
        if self.endpoint is not None:
            if self.exporter != "otlp":
                raise ValueError("telemetry.endpoint: only used with exporter = 'otlp'")
            if not re.match(r"^https?://[^\s/]+", self.endpoint):
                raise ValueError(f"telemetry.endpoint: expected an http(s) URL, got {self.endpoint!r}")
        return self


def _check_upstream_name(name: str) -> str:
    if not _NAME.match(name) or "__" in name:
        raise ValueError(
            f"upstream name {name!r}: use letters, digits, '_', '.', '-' (not '__', which separates tool names)"
        )
    return name


UpstreamName = Annotated[str, AfterValidator(_check_upstream_name)]


STORE_SCHEMES = ("postgresql", "postgres", "sqlite")
"""What ``[store] url`` (and ``$MCP_GATEKEEPER_STORE``) may name: a PostgreSQL database, or a SQLite file."""


def check_store_url(url: str) -> str:
    """``url`` if it names a PostgreSQL database (``postgresql://...``) or a SQLite file (``sqlite:///path``)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in STORE_SCHEMES:
        raise ValueError("give a postgresql://user:password@host/database URL, or sqlite:///path/to/file.db")
    if scheme == "sqlite" and not url[len("sqlite://") :].startswith("/"):
        raise ValueError("a SQLite store is sqlite:///absolute/path/to/file.db")
    return url


class StoreConfig(_Model):
    url: Annotated[str, AfterValidator(check_store_url)] | None = None
    """Team mode: ``postgresql://gatekeeper:PASSWORD@host/database`` (a role set up by ``mcp-gatekeeper db init``),
    shared by every gatekeeper; or ``sqlite:///path``. Unset: the SQLite file in the data home.
    ``$MCP_GATEKEEPER_STORE`` overrides it."""
    fsync_every_call: bool = False
    """Held calls, decisions and every step of a held call are always fsynced (``synchronous=FULL``). The records
    of calls that pass without a hold are written before the call runs and survive any process crash, but are
    fsynced lazily (a power loss can drop the last few). ``true`` fsyncs those as well (about 1.5 ms each here)."""


def _check_agent_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"agent name {name!r}: use letters, digits, '_', '.', '-'")
    return name


class AgentConfig(_Model):
    """An agent that may call the proxy over HTTP (``run --http``): its name and its bearer token."""

    name: Annotated[str, AfterValidator(_check_agent_name)]
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """The SHA-256 (lowercase hex) of the agent's token: ``printf %s "$TOKEN" | sha256sum``."""
    token_file: str | None = None
    """A file (mode 0600) holding the token itself."""

    @model_validator(mode="after")
    def _one_token(self) -> AgentConfig:
        if (self.token_sha256 is None) == (self.token_file is None):
            raise ValueError("give exactly one of token_sha256 or token_file")
        return self


class HttpConfig(_Model):
    allow_unauthenticated_loopback: bool = False
    """``run --http`` on a loopback address without agent tokens (any local process can then call it, under a
    principal named after its clientInfo). Logged loudly at start."""


class ShadowConfig(_Model):
    """A whole candidate policy run in shadow: every call takes the active policy's gate, and the candidate's
    verdict is recorded beside it (``mcp-gatekeeper replay --config FILE`` asks the same of past calls)."""

    policy: str | None = None
    """A config file (relative to this one) whose rules, defaults, risk and security limits are the shadow
    policy; its upstreams and everything else are ignored. It may not have a ``[shadow]`` of its own."""


DecisionKey = Annotated[str, Field(pattern=r"^ed25519:[A-Za-z0-9_-]{43}$")]
"""An Ed25519 public key as ``mcp-gatekeeper keys show`` prints it: ``ed25519:`` and 43 base64url characters."""


class TeamConfig(_Model):
    decision_keys: list[DecisionKey] = Field(default_factory=list)
    """The public keys whose signed decisions this gatekeeper forwards (the approval service's). Empty: the
    home's own key (local mode). When set, a decision signed by any other key, or unsigned, never runs."""
    retired_keys: list[DecisionKey] = Field(default_factory=list)
    """Keys no longer trusted for new decisions, still accepted by ``audit --verify`` for the old ones."""
    signing_key: str | None = None
    """The private key this process signs its decisions with (PEM, mode 0600). Default: ``<home>/decision-key``,
    made on first use."""


class GatekeeperConfig(_Model):
    """The whole file."""

    @property
    def passkey_url(self) -> str | None:
        """The passkeys' relying party: the page's public address, ``[ui] public_url`` (one key for one concept)."""
        return self.ui.public_url

    def card_url(self, call_id: str) -> str | None:
        """Where a human decides a call: the approval page's card (never a credential in the URL); in team mode
        the approval service's."""
        if self.ui.public_url:
            return f"{self.ui.public_url.rstrip('/')}/#/call/{call_id}"
        host = f"[{self.ui.host}]" if ":" in self.ui.host else self.ui.host
        return f"http://{host}:{self.ui.port}/#/call/{call_id}" if self.ui.port else None

    @model_validator(mode="after")
    def _references(self) -> GatekeeperConfig:
        known = set(self.notify.channel_names) | {"stderr", "desktop"}
        problems = []
        for i, rule in enumerate(self.rules):
            for j, step in enumerate(rule.escalate):
                for ch in step.notify:
                    if ch not in known:
                        problems.append(f"rules[{i}].escalate[{j}].notify: unknown channel {ch!r}")
            for what in ("compensate", "capture"):
                call = getattr(rule, what)
                if (
                    call is not None
                    and call.upstream is not None
                    and self.upstreams
                    and call.upstream not in self.upstreams
                ):
                    problems.append(f"rules[{i}].{what}.upstream: no upstream named {call.upstream!r}")
        for ch in self.notify.on_hold or []:
            if ch not in known:
                problems.append(f"notify.on_hold: unknown channel {ch!r}")
        if self.shadow.policy is not None:
            problems.extend(
                f"rules[{i}].shadow: a rule cannot be in shadow while [shadow] policy names a whole shadow policy;"
                " choose one"
                for i, rule in enumerate(self.rules)
                if rule.shadow
            )
        for i, rule in enumerate(self.rules):
            if rule.confirm == "passkey" and (rule.name is None or self.passkey_url is None):
                problems.append(f"rules[{i}].confirm: 'passkey' needs the rule to have a name and [ui] public_url")
        if (
            any(rule.confirm == "passkey" for rule in self.rules)
            and self.ui.public_url is not None
            and not re.match(r"^(https://[^/?#\s]+|http://localhost(:\d+)?)/?$", self.ui.public_url)
        ):
            problems.append(
                "ui.public_url: passkeys (confirm = 'passkey') need https://host[:port], or http://localhost:port"
            )
        seen: set[str] = set()
        for i, agent in enumerate(self.agents):
            if agent.name in seen:
                problems.append(f"agents[{i}].name: another agent is already named {agent.name!r}")
            seen.add(agent.name)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    upstreams: dict[UpstreamName, UpstreamConfig] = Field(default_factory=dict)
    rules: list[RuleConfig] = Field(default_factory=list)
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    waiting: WaitingConfig = Field(default_factory=WaitingConfig)
    risk: RiskConfig = Field(default_factory=RiskConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    agents: list[AgentConfig] = Field(default_factory=list)
    """Agents allowed over HTTP (``[[agents]]``); none: one agent ``local`` with the home's ``agent-token``."""
    http: HttpConfig = Field(default_factory=HttpConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    team: TeamConfig = Field(default_factory=TeamConfig)
    status_tool: bool = True
    """Add a ``gatekeeper_status`` tool so an agent can ask about a held call by id."""
    heartbeat_interval: Duration = 15.0
    """Seconds between progress notifications while a call is held (when the client sent a token)."""


def default_config_path() -> Path:
    """The user's config file: the platform's user config dir (``~/.config/mcp-gatekeeper`` on Linux), or
    the older ``~/.config/mcp-gatekeeper/config.toml`` when only that exists (see :mod:`mcp_gatekeeper.hostos`)."""
    return hostos.locate_config().path


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """Which file to load: ``--config``, ``$MCP_GATEKEEPER_CONFIG``, the user file if present, or none."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MCP_GATEKEEPER_CONFIG")
    if env:
        return Path(env)
    p = default_config_path()
    return p if p.exists() else None


def load_config(path: str | os.PathLike[str] | None = None) -> GatekeeperConfig:
    """Load and validate the config at ``path`` (resolved as documented); defaults if there is none."""
    resolved = resolve_config_path(path)
    if resolved is None:
        return GatekeeperConfig()
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"cannot read the file: {e.strerror or e}"], source=str(resolved)) from None
    return parse_config(text, source=str(resolved))


def parse_config(text: str, *, source: str = "<config>") -> GatekeeperConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"not valid TOML: {e}"], source=source) from None
    return validate_config(data, text=text, source=source)


REMOVED_KEYS: dict[tuple[str | int, ...], str] = {
    ("security", "cli_requires_tty"): (
        "removed: it promised that an agent's shell could not decide, but any program can give itself a terminal"
        " (`script -qec 'mcp-gatekeeper approve ID' /dev/null`), so it protected nothing. Delete the line. What does"
        " protect: run the gatekeeper as another OS user that owns its data home (see the README, 'What a local"
        " gate cannot promise'); CLI decisions are recorded with the OS user and whether stdin was a terminal"
    ),
    ("team", "public_url"): (
        "removed: the page's public address is one key, [ui] public_url (also the passkeys' relying party)."
        " Delete this line and write under [ui]: public_url = {value}"
    ),
}
"""Settings that no longer exist, with why and what to do: a security setting is never silently ignored."""


def validate_config(data: Mapping[str, Any], *, text: str = "", source: str = "<config>") -> GatekeeperConfig:
    try:
        return GatekeeperConfig.model_validate(data)
    except ValidationError as e:
        lines = _KeyLines(text)
        found: list[tuple[int, str]] = []
        for err in e.errors(include_url=False):
            path = _format_loc(err["loc"])
            line = lines.find(err["loc"])
            where = f"line {line}: " if line else ""
            msg = err["msg"]
            if err["type"] == "extra_forbidden" and tuple(err["loc"]) in REMOVED_KEYS:
                msg = REMOVED_KEYS[tuple(err["loc"])].replace("{value}", json.dumps(err.get("input")))
            elif err["type"] == "extra_forbidden":
                msg = "unknown key" + _did_you_mean(err["loc"]) + " (see the config reference in the README)"
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            found.append((line or 0, f"{where}{path or '(top level)'}: {msg}"))
        found.sort(key=lambda item: item[0])  # in the order of the file; stable for problems on one line
        raise ConfigError([problem for _line, problem in found], source=source) from None


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """``; did you mean 'port'?`` for an unknown key close to one its table accepts, else ``""``."""
    *parents, key = loc
    if not isinstance(key, str):
        return ""
    known = _keys_at(tuple(parents))
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or [k for k in known if k.lower() == key.lower()]
    return f"; did you mean {close[0]!r}?" if close else ""


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the table at ``loc`` accepts (its model's fields and their aliases), walking the config models."""
    kind: Any = GatekeeperConfig
    for part in loc:
        if isinstance(part, str) and (part.startswith("function-") or part in ("str", "list[str]", "[key]")):
            continue  # pydantic's union-branch labels
        kind = _step(kind, part)
        if kind is None:
            return []
    model = _model_in(kind)
    if model is None:
        return []
    keys = []
    for name, info in model.model_fields.items():
        keys.append(name)
        if isinstance(info.alias, str):
            keys.append(info.alias)
    return keys


def _model_in(kind: Any) -> type[BaseModel] | None:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind
    for arg in typing.get_args(kind):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _step(kind: Any, part: int | str) -> Any:
    """The type one location step below ``kind``: a model's field, a list's item, a table's value."""
    model = isinstance(kind, type) and issubclass(kind, BaseModel)
    if model and isinstance(part, str):
        for name, info in kind.model_fields.items():
            if part in (name, info.alias):
                return info.annotation
        return None
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (list, tuple) and isinstance(part, int) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    for arg in args:  # a union or Annotated: the first branch that has the step
        if arg is not type(None) and (found := _step(arg, part)) is not None:
            return found
    return None


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part.startswith("function-") or part in ("str", "list[str]", "[key]")):
            continue  # pydantic's internal union-branch labels
        else:
            out += f".{part}" if out else str(part)
    return out


class _KeyLines:
    """Maps a validation error's location to the line of the TOML file that holds it (best effort)."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_.-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.entries: list[tuple[tuple[str | int, ...], int]] = []
        table: tuple[str | int, ...] = ()
        counts: dict[str, int] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            if m := self._HEADER.match(raw):
                parts = tuple(_split_key(m.group(2)))
                if m.group(1) == "[[":
                    key = ".".join(parts)
                    index = counts.get(key, 0)
                    counts[key] = index + 1
                    table = (*parts, index)
                else:
                    table = self._within_arrays(parts, counts)
                self.entries.append((table, number))
            elif m := self._KEY.match(raw):
                self.entries.append(((*table, *_split_key(m.group(1))), number))

    @staticmethod
    def _within_arrays(parts: tuple[str, ...], counts: dict[str, int]) -> tuple[str | int, ...]:
        """``[rules.effects]`` after ``[[rules]]`` is the effects of the latest rules element."""
        out: list[str | int] = []
        for i, part in enumerate(parts):
            out.append(part)
            key = ".".join(parts[: i + 1])
            if key in counts and i < len(parts) - 1:
                out.append(counts[key] - 1)
        return tuple(out)

    def find(self, loc: tuple[int | str, ...]) -> int | None:
        wanted = tuple(p for p in loc if not (isinstance(p, str) and (p.startswith("function-") or p == "[key]")))
        best: tuple[int, int] | None = None
        for path, number in self.entries:
            n = 0
            while n < len(path) and n < len(wanted) and path[n] == wanted[n]:
                n += 1
            if n == len(path) and n > 0 and (best is None or n > best[0]):
                best = (n, number)
        return best[1] if best else None


def _split_key(key: str) -> list[str]:
    parts = re.findall(r"\"([^\"]*)\"|'([^']*)'|([^.\s]+)", key)
    return [a or b or c for a, b, c in parts]


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand ``${VAR}`` from the environment; an unset variable is an error (never an empty secret)."""
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in env:
            raise ConfigError([f"environment variable ${{{name}}} is not set"])
        return env[name]

    return _ENV_REF.sub(sub, value)
