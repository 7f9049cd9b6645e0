"""What every handler module of the approval page shares: its state, refusals, and request parsing.

:mod:`mcp_gatekeeper.web` (calls, events, stats) and :mod:`mcp_gatekeeper.webgates` (reviews, leases,
pins) both build on this; neither imports the other's handlers. A handler refuses a request by raising
:class:`Problem`; the app turns it (and the error tree) into a JSON error with its status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio
from starlette.requests import Request

from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.gate import Gate, needs_passkey
from mcp_gatekeeper.models import CallRecord, canonical_json
from mcp_gatekeeper.policy import Policy, json_number, render_summary
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.webauth import Principal, allowed_hosts, keyed_hash, public_origin
from mcp_gatekeeper.webredact import find_secrets

MAX_DEPTH = 64
"""JSON bodies nested deeper than this are refused (422) before any parser recursion can fail."""
MAX_REASON = 2000
HEADLINE_ARGS_CAP = 64 * 1024
"""A call without a rule summary is named by its arguments in the live lists only up to this size (the
card always is): the lists are rebuilt on every change, for up to 500 calls."""


class Problem(Exception):
    """A request the handler refuses, with its status, a stable error code and any extra fields."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


class Changes:
    """An in-process nudge so live views update the moment this process changes something."""

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout: float) -> None:
        if self._event is None:
            self._event = anyio.Event()
        event = self._event
        with anyio.move_on_after(timeout):
            await event.wait()


@dataclass(frozen=True, slots=True)
class TeamSite:
    """Where the approval service is reached: ``public_host`` is the ``Host`` of its public URL (behind a TLS
    reverse proxy; ``None``: loopback only, plain HTTP); the proxy's address is trusted for
    ``X-Forwarded-For`` (the client address that login attempts are counted by)."""

    public_host: str | None = None


class WebState:
    """Everything the handlers share for one app. ``serve`` fills in the port once it has bound."""

    def __init__(
        self,
        *,
        store: Store,
        gate: Gate,
        policy: Policy,
        token: str,
        port: int,
        clock: Clock,
        team: TeamSite | None = None,
    ) -> None:
        self.store, self.gate, self.policy, self.token, self.clock = store, gate, policy, token, clock
        self.team = team
        """Team mode (the approval service): reviewer accounts only, and where the service is reached."""
        self.scheme = "https" if team is not None and team.public_host else "http"
        self.accounts_only = team is not None
        self.changes = Changes()
        self.closing = False
        self.port = 0
        self.hosts: frozenset[str] = frozenset()
        self.public: str | None = None
        """The origin of ``[ui] public_url`` (the page behind a reverse proxy), accepted besides ``http://<Host>``."""
        self.set_port(port)

    def set_port(self, port: int) -> None:
        ui = self.policy.config.ui
        self.port = port
        if self.team is not None and self.team.public_host:
            self.hosts = frozenset({self.team.public_host})  # behind the TLS proxy: its name, nothing else
            return
        if self.team is not None:  # loopback only: the service's own address
            self.hosts = allowed_hosts(port)
            return
        self.hosts = allowed_hosts(port, ui.host if ui.allow_remote else None, ui.public_url)
        self.public = public_origin(ui.public_url) if ui.public_url else None

    @property
    def secure_cookies(self) -> bool:
        return self.scheme == "https"

    def hash_secret(self, value: str) -> str:
        return keyed_hash(self.token, value)

    @property
    def body_cap(self) -> int:
        """The largest request body accepted: the argument limit plus room for the rest of the body."""
        return self.policy.config.security.max_argument_bytes + 64 * 1024


def web_state(request: Request) -> WebState:
    state: WebState = request.app.state.gk
    return state


def principal(request: Request) -> Principal:
    """Who is asking (set by the guard): the reviewer every decision is recorded under."""
    p: Principal = request.state.principal
    return p


def summary_secrets(summary: str | None) -> list[dict[str, Any]]:
    """Where a summary holds secret-looking spans, so every list that shows it masks exactly those."""
    return [h.to_json() for h in find_secrets(summary)] if summary else []


_SALIENT = 3
_SALIENT_CHARS = 48
_SALIENT_KEY = 32


def _short(value: Any) -> str | None:
    """One argument as the plain-words headline shows it, or ``None`` if it is not a short scalar."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return json_number(value)
    if isinstance(value, str):
        flat = " ".join(value.split())
        return json.dumps(flat if len(flat) <= _SALIENT_CHARS else flat[: _SALIENT_CHARS - 1] + "…", ensure_ascii=False)
    return None


def plain_headline(tool: str, upstream: str, arguments: dict[str, Any], schema: dict[str, Any] | None) -> str:
    """Plain words for a call whose rule has no ``summary``: the tool, its upstream and its salient
    arguments (the schema's required ones first), never a secret-looking one: ``post_message on ops:
    channel "#deploys", text "Deploy finished"``."""
    required = (schema or {}).get("required")
    order = [k for k in required if isinstance(k, str) and k in arguments] if isinstance(required, list) else []
    order += [k for k in arguments if k not in order]
    shown: list[str] = []
    for key in order:
        value = arguments[key]
        text = _short(value)
        if text is None or find_secrets(value, (key,), key):
            continue
        name = " ".join(key.split())
        shown.append(f"{name if len(name) <= _SALIENT_KEY else name[: _SALIENT_KEY - 1] + '…'} {text}")
        if len(shown) == _SALIENT:
            break
    rest = len(arguments) - len(shown)
    head = f"{tool} on {upstream}"
    if not arguments:
        return f"{head} (no arguments)"
    more = f" (+{rest} more)" if rest and shown else f" ({rest} argument{'s' if rest > 1 else ''})" if rest else ""
    return f"{head}: {', '.join(shown)}{more}" if shown else f"{head}{more}"


def headline(policy: Policy, rec: CallRecord) -> dict[str, Any]:
    """What a call's title says, from the arguments that run: a modified call's rule summary is rendered
    again from the reviewer's arguments (``held_summary`` keeps the one it was held with); without a rule
    summary, :func:`plain_headline`. If the rule is gone, a modified call loses its old summary rather than
    keep words that describe arguments that did not run."""
    summary = rec.summary
    held = None
    if rec.modified_arguments is not None and rec.summary is not None:
        rule = policy.rule_named(rec.rule)
        summary = render_summary(rule.summary, rec.modified_arguments) if rule and rule.summary else None
        held = rec.summary if summary != rec.summary else None
    words = summary or plain_headline(rec.tool, rec.upstream, rec.forward_arguments, rec.input_schema)
    return {
        "summary": summary,
        "held_summary": held,
        "headline": words,
        "summary_secrets": summary_secrets(summary),
        "headline_secrets": summary_secrets(words),
    }


def row_headline(
    tool: str, upstream: str, summary: str | None, arguments: str | None, schema: str | None
) -> dict[str, Any]:
    """:func:`headline` for a list row read straight from the store (a pending call, never modified);
    ``arguments`` ``None``: too large to read for a list, so the tool and upstream alone."""
    if summary:
        return {"headline": summary, "headline_secrets": summary_secrets(summary)}
    if arguments is None:
        words = f"{tool} on {upstream} (large arguments)"
        return {"headline": words, "headline_secrets": summary_secrets(words)}
    try:
        args, sch = json.loads(arguments), json.loads(schema) if schema else None
    except ValueError:
        args, sch = {}, None
    words = plain_headline(
        tool, upstream, args if isinstance(args, dict) else {}, sch if isinstance(sch, dict) else None
    )
    return {"headline": words, "headline_secrets": summary_secrets(words)}


JS_SAFE_INTEGER = 2**53 - 1


def inexact_numbers(value: Any) -> list[dict[str, Any]]:
    """Whole numbers a browser cannot hold exactly (beyond 2^53 - 1): JSON.parse rounds them, so the page
    shows (and an edit would send) another number. Each with its path and exact digits, to warn instead."""
    out: list[dict[str, Any]] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        v, path = stack.pop()
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > JS_SAFE_INTEGER:
            out.append({"path": list(path), "exact": str(v)})
        elif isinstance(v, dict):
            stack.extend((child, (*path, str(k))) for k, child in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((child, (*path, i)) for i, child in reversed(list(enumerate(v))))
    return out


def call_json(rec: CallRecord, *, detail: bool, policy: Policy) -> dict[str, Any]:
    """A call as the API returns it; ``detail`` adds where secret-looking values are, for the page to mask."""
    out = rec.to_json()
    out["args_bytes"] = len(canonical_json(rec.arguments).encode())
    out.update(headline(policy, rec))
    if detail:
        out["confirm"] = "passkey" if needs_passkey(policy, rec) else None  # approving needs the reviewer's passkey
        out["inexact_numbers"] = inexact_numbers(rec.arguments)
        out["secrets"] = {
            key: [h.to_json() for h in find_secrets(value)]
            for key, value in (
                ("arguments", rec.arguments),
                ("modified_arguments", rec.modified_arguments),
                ("result", rec.result),
                ("summary", out["summary"]),
                ("held_summary", out["held_summary"]),
                ("error", rec.error),
                ("reason", rec.reason),
                ("agent_reason", rec.agent_reason),
            )
            if value is not None
        }
    return out


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


async def json_body(request: Request, cap: int) -> dict[str, Any]:
    """The body as a JSON object: 415 if not JSON, 413 over ``cap`` bytes, 422 if malformed or too deep."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise Problem(415, "unsupported_media_type", "send the body as application/json")
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise Problem(413, "too_large", f"the request body is over {cap} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    if depth_over(raw, MAX_DEPTH):
        raise Problem(422, "too_deep", f"the JSON body is nested deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:
        raise Problem(422, "bad_json", f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise Problem(422, "bad_json", "the body must be a JSON object")
    return body


def depth_over(raw: bytes, limit: int) -> bool:
    """True if brackets nest deeper than ``limit`` (strings skipped), without parsing recursively."""
    depth, in_str, escaped = 0, False, False
    for b in raw:
        if in_str:
            if escaped:
                escaped = False
            elif b == 0x5C:
                escaped = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif b in (0x5D, 0x7D):
            depth -= 1
    return False


def reason_of(body: dict[str, Any]) -> str | None:
    """The optional human ``reason`` of a decision (422 unless a string of at most MAX_REASON characters)."""
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise Problem(422, "bad_reason", "reason must be a string")
    if reason is not None and len(reason) > MAX_REASON:
        raise Problem(422, "bad_reason", f"reason is longer than {MAX_REASON} characters")
    return (reason.strip() or None) if reason is not None else None


def bounded_number(value: Any, name: str, *, most: float, integer: bool = False) -> float | None:
    """``None`` stays ``None``; otherwise a number above zero and at most ``most`` (whole if asked), else 422."""
    if value is None:
        return None
    ok = isinstance(value, int) or (isinstance(value, float) and not integer)
    if isinstance(value, bool) or not ok or not 0 < value <= most:
        what = "a whole number" if integer else "a number"
        raise Problem(422, "bad_lease", f"{name} must be {what} above zero and at most {most:g}")
    return float(value)


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Problem(400, "bad_parameter", f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise Problem(400, "bad_parameter", f"{name} must be between {lo} and {hi}")
    return value


def flag_param(request: Request, name: str) -> bool:
    """A yes/no query parameter: ``1``/``true``/``yes`` or ``0``/``false``/``no`` (absent: no)."""
    raw = request.query_params.get(name, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise Problem(400, "bad_parameter", f"{name} must be 1 or 0")
