"""Frozen domain values: call states, held calls, decisions and outcomes; canonical JSON and digests.

Nothing here does I/O. The store turns rows into these values; the gate and proxy pass them around.
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any


class State(enum.StrEnum):
    """Every state a call can be in. Transitions happen only in the store, each a compare-and-set."""

    ALLOWED = "allowed"  # passed policy without a hold, forwarded
    DENIED = "denied"  # refused by policy, never forwarded
    PENDING = "pending"  # held, waiting for a human
    APPROVED = "approved"  # a human approved; about to be forwarded
    REJECTED = "rejected"  # a human rejected
    EXPIRED = "expired"  # nobody decided before the deadline: the safe default (reject)
    CANCELLED = "cancelled"  # the client cancelled or went away; never runs later
    ORPHANED = "orphaned"  # the holding process died while pending/approved; never runs
    FORWARDING = "forwarding"  # written before the upstream call (at-most-once)
    FORWARDED = "forwarded"  # the upstream answered (a tool error counts as forwarded)
    FAILED = "failed"  # the upstream could not be reached / raised a protocol error
    OUTCOME_UNKNOWN = "outcome_unknown"  # crashed or timed out after sending upstream: never re-sent
    # audit gates: the call ran at once; a human reviews it within a window
    UNDER_REVIEW = "under_review"
    CONFIRMED = "confirmed"  # the reviewer confirmed it
    UNREVIEWED = "unreviewed"  # the window closed without a review (kept, flagged)
    REVIEW_FAILED = "review_failed"  # the reviewer failed it: its compensation is due
    ROLLING_BACK = "rolling_back"  # a process is running the compensation
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"  # every attempt failed: a human must act


RISK_ORDER: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}
"""Risk levels, lowest first."""


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""Built once: ``json.dumps`` with options builds a new encoder per call (it holds no state between calls)."""


def canonical_json(value: Any) -> str:
    """The one serialisation used for digests and storage: sorted keys, no spaces, UTF-8 kept."""
    return _CANONICAL.encode(value)


def digest(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def new_call_id() -> str:
    """A fresh call id: 26 lowercase hex characters (104 bits); a short prefix is enough to type."""
    return secrets.token_hex(13)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call as the store holds it (every call, held or not)."""

    id: str
    state: State
    upstream: str
    tool: str
    arguments: dict[str, Any]
    args_digest: str
    gate: str
    risk: str
    created_at: float
    rule: str | None = None
    tooldef_hash: str | None = None
    summary: str | None = None
    effects: dict[str, str] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    agent_reason: str | None = None
    agent_confidence: float | None = None
    client: dict[str, Any] = field(default_factory=dict)
    input_schema: dict[str, Any] | None = None
    instance_id: str | None = None
    deadline_at: float | None = None
    decided_at: float | None = None
    decided_by: str | None = None
    channel: str | None = None
    reason: str | None = None
    modified_arguments: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    finished_at: float | None = None
    wait_strategy: str | None = None
    shadow_action: str | None = None
    """What the shadow policy would have done (``allow``, ``hold``, ``deny``, ``refuse_invalid``, ``audit``, or
    ``error``); None when no shadow policy ran (see :mod:`mcp_gatekeeper.calibrate.shadow`)."""
    shadow_rule: str | None = None
    shadow_reason: str | None = None

    @property
    def forward_arguments(self) -> dict[str, Any]:
        """The arguments that run if this call is (or was) approved: the reviewer's edit wins."""
        return self.modified_arguments if self.modified_arguments is not None else self.arguments

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (CLI ``--json`` and the web API share it)."""
        return {
            "id": self.id,
            "state": self.state.value,
            "upstream": self.upstream,
            "tool": self.tool,
            "arguments": self.arguments,
            "args_digest": self.args_digest,
            "modified_arguments": self.modified_arguments,
            "gate": self.gate,
            "risk": self.risk,
            "rule": self.rule,
            "summary": self.summary,
            "effects": self.effects,
            "reasons": list(self.reasons),
            "agent_reason": self.agent_reason,
            "agent_confidence": self.agent_confidence,
            "client": self.client,
            "tooldef_hash": self.tooldef_hash,
            "input_schema": self.input_schema,
            "created_at": self.created_at,
            "deadline_at": self.deadline_at,
            "decided_at": self.decided_at,
            "decided_by": self.decided_by,
            "channel": self.channel,
            "reason": self.reason,
            "result": self.result,
            "error": self.error,
            "finished_at": self.finished_at,
            "wait_strategy": self.wait_strategy,
            "instance_id": self.instance_id,
            "shadow": None
            if self.shadow_action is None
            else {"action": self.shadow_action, "rule": self.shadow_rule, "reason": self.shadow_reason},
        }


@dataclass(frozen=True, slots=True)
class NewCall:
    """What the proxy knows about a call before it is recorded."""

    upstream: str
    tool: str
    arguments: dict[str, Any]
    gate: str
    risk: str
    rule: str | None = None
    tooldef_hash: str | None = None
    summary: str | None = None
    effects: dict[str, str] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    agent_reason: str | None = None
    agent_confidence: float | None = None
    client: dict[str, Any] = field(default_factory=dict)
    input_schema: dict[str, Any] | None = None
    wait_strategy: str | None = None
    args_digest: str = ""
    """The canonical-JSON SHA-256 of ``arguments`` (computed when not given)."""
    shadow_action: str | None = None
    """The shadow policy's verdict, recorded beside the call (never acted on)."""
    shadow_rule: str | None = None
    shadow_reason: str | None = None

    def __post_init__(self) -> None:
        if not self.args_digest:
            object.__setattr__(self, "args_digest", digest(self.arguments))


@dataclass(frozen=True, slots=True)
class Decision:
    """A human's decision on a held call.

    ``args_digest`` is the digest of the arguments the reviewer saw; when given it must match the
    stored digest (a stale view is refused). ``arguments`` present means "modify, then approve".
    """

    approve: bool
    decided_by: str
    channel: str
    reason: str | None = None
    arguments: dict[str, Any] | None = None
    args_digest: str | None = None
    lease: LeaseRequest | None = None
    evidence: dict[str, Any] | None = None
    """Facts about how the decision was made, recorded in its audit event as evidence only (the CLI: OS user,
    uid, pid, whether stdin was a terminal). Never a guarantee of who decided."""
    passkey: dict[str, Any] | None = None
    """A WebAuthn assertion (``navigator.credentials.get``'s response) over this approval, for a rule that says
    ``confirm = "passkey"`` (see :mod:`mcp_gatekeeper.passkeys`)."""


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """ "Approve and allow similar calls": later calls of the same tool inside ``envelope`` pass, for a while."""

    envelope: dict[str, Any]
    """``when``-style predicates on the arguments (``{"path": {"glob": "./src/**"}}``); ``{}`` = any arguments."""
    seconds: float | None = None
    calls: int | None = None


@dataclass(frozen=True, slots=True)
class Approved:
    """Outcome: a human approved. ``arguments`` are the ones to forward (modified or original)."""

    call: CallRecord
    arguments: dict[str, Any]
    modified: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """Outcome: the call will not run. ``state`` says why (rejected, expired, cancelled, denied...)."""

    call: CallRecord
    state: State
    reason: str


Outcome = Approved | Refused


@dataclass(frozen=True, slots=True)
class Lease:
    """ "Approve and allow similar calls": an approval that covers later calls inside an argument envelope."""

    id: str
    upstream: str
    tool: str
    tooldef_hash: str | None
    envelope: dict[str, Any]
    created_at: float
    created_by: str
    source_call: str | None
    expires_at: float | None
    calls_left: int | None
    revoked_at: float | None = None
    revoked_by: str | None = None
    used: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "upstream": self.upstream,
            "tool": self.tool,
            "tooldef_hash": self.tooldef_hash,
            "envelope": self.envelope,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "source_call": self.source_call,
            "expires_at": self.expires_at,
            "calls_left": self.calls_left,
            "revoked_at": self.revoked_at,
            "revoked_by": self.revoked_by,
            "used": self.used,
        }


@dataclass(frozen=True, slots=True)
class Pin:
    """A tool definition as first seen (or as a human re-pinned it); a different one is quarantined."""

    upstream: str
    tool: str
    hash: str
    definition: dict[str, Any]
    pinned_at: float
    pinned_by: str
    pending_hash: str | None = None
    pending_definition: dict[str, Any] | None = None
    changed_at: float | None = None

    @property
    def quarantined(self) -> bool:
        return self.pending_hash is not None and self.pending_hash != self.hash

    def to_json(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "tool": self.tool,
            "hash": self.hash,
            "definition": self.definition,
            "pinned_at": self.pinned_at,
            "pinned_by": self.pinned_by,
            "pending_hash": self.pending_hash,
            "pending_definition": self.pending_definition,
            "changed_at": self.changed_at,
            "quarantined": self.quarantined,
        }


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One append-only, hash-chained audit event."""

    seq: int
    at: float
    call_id: str | None
    event: str
    actor: str | None
    channel: str | None
    args_digest: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    @property
    def hash_ok(self) -> bool:
        """Does the stored hash match this event's content and its previous-hash link?"""
        body = audit_body(
            at=self.at, call_id=self.call_id, event=self.event, actor=self.actor, channel=self.channel,
            args_digest=self.args_digest, detail=self.detail,
        )  # fmt: skip
        return audit_hash(self.prev_hash, body) == self.hash

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "call_id": self.call_id,
            "event": self.event,
            "actor": self.actor,
            "channel": self.channel,
            "args_digest": self.args_digest,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def audit_body(
    *,
    at: float,
    call_id: str | None,
    event: str,
    actor: str | None,
    channel: str | None,
    args_digest: str | None,
    detail: dict[str, Any],
) -> dict[str, Any]:
    """What an audit event's hash covers (written and verified from this one shape)."""
    return {
        "at": at,
        "call_id": call_id,
        "event": event,
        "actor": actor,
        "channel": channel,
        "args_digest": args_digest,
        "detail": detail,
    }


def audit_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """The chain link: SHA-256 over the previous hash and the canonical event body."""
    return hashlib.sha256((prev_hash + "\n" + canonical_json(body)).encode("utf-8")).hexdigest()


GENESIS_HASH = "0" * 64

QUARANTINE_MARK = "QUARANTINED:"
"""The first reason of a call held because its tool's definition changed since it was pinned."""


def is_quarantine_hold(reasons: tuple[str, ...] | list[str]) -> bool:
    return bool(reasons) and reasons[0].startswith(QUARANTINE_MARK)


def definition_diff(old: Any, new: Any, *, context: int = 3) -> list[str]:
    """A unified diff of two tool definitions (pretty JSON, sorted keys), as lines."""
    a = json.dumps(old, indent=1, sort_keys=True, ensure_ascii=False).splitlines()
    b = json.dumps(new, indent=1, sort_keys=True, ensure_ascii=False).splitlines()
    return list(difflib.unified_diff(a, b, "pinned definition", "definition now", lineterm="", n=context))


@dataclass(frozen=True, slots=True)
class WebSession:
    """A signed-in browser on the approval page: a server-side row, so any serving process agrees on it.

    ``host`` is the ``Host`` (name and port) of the page it was opened on; it is honoured nowhere else.
    ``expires_at`` slides forward while the page is used; ``ends_at`` never moves.
    """

    id: str
    label: str
    host: str
    user_agent: str | None
    created_at: float
    last_seen_at: float
    expires_at: float
    ends_at: float
    ended_at: float | None
    ended_by: str | None
    ended_why: str | None
    account: str | None = None
    """Team mode: the reviewer account that logged in with its password (``None``: a login link's session)."""

    def alive(self, now: float) -> bool:
        return self.ended_at is None and now < self.expires_at and now < self.ends_at

    @property
    def reviewer(self) -> str:
        """The reviewer its decisions are recorded under: the account's name (team mode), else ``web:<label>``
        (the OS user who made the login link)."""
        return self.account if self.account else f"web:{self.label}"

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "reviewer": self.reviewer,
            "host": self.host,
            "user_agent": self.user_agent,
            "created_at": self.created_at,
            "last_seen_at": self.last_seen_at,
            "expires_at": min(self.expires_at, self.ends_at),
            "ended_at": self.ended_at,
            "ended_by": self.ended_by,
            "ended_why": self.ended_why,
            "account": self.account,
            "alive": self.alive(now),
        }


@dataclass(frozen=True, slots=True)
class PastCall:
    """A recorded call as calibration reads it (replay, suggestions): what was asked, what the policy did, what a
    human decided. Lighter than :class:`CallRecord` (no result, schema or client), so 100,000 of them stream fast."""

    id: str
    state: State
    upstream: str
    tool: str
    arguments: dict[str, Any]
    gate: str
    risk: str
    rule: str | None
    tooldef_hash: str | None
    reasons: tuple[str, ...]
    agent_confidence: float | None
    created_at: float
    decided_at: float | None
    decided_by: str | None
    channel: str | None
    modified: bool
    shadow_action: str | None = None
    args_digest: str = ""
    had_deadline: bool = False
    """It was held (a held call gets a deadline for its decision; audit-gated calls one for their review)."""


@dataclass(frozen=True, slots=True)
class NotifyLink:
    """A message a notification channel posted about a call (Slack: channel id ``target``, message ``ref`` = ts),
    kept so the message can be updated with the call's outcome wherever the call is decided."""

    call_id: str
    channel: str
    target: str
    ref: str
