"""The schema (its migrations, in order) and the mapping between rows and values, written once.

Every repository reads rows through these column lists and turns them into values with these functions;
nothing else knows the order of a table's columns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mcp_gatekeeper.accounts import Reviewer
from mcp_gatekeeper.models import AuditEvent, CallRecord, Lease, PastCall, Pin, State, WebSession

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "0001_initial",
        """
        CREATE TABLE instances (
            id TEXT PRIMARY KEY,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            label TEXT,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            stopped_at REAL
        );
        CREATE TABLE calls (
            id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            upstream TEXT NOT NULL,
            tool TEXT NOT NULL,
            arguments TEXT NOT NULL,
            args_digest TEXT NOT NULL,
            gate TEXT NOT NULL,
            risk TEXT NOT NULL,
            rule TEXT,
            tooldef_hash TEXT,
            summary TEXT,
            effects TEXT,
            reasons TEXT,
            agent_reason TEXT,
            agent_confidence REAL,
            client TEXT,
            input_schema TEXT,
            instance_id TEXT,
            created_at REAL NOT NULL,
            deadline_at REAL,
            decided_at REAL,
            decided_by TEXT,
            channel TEXT,
            reason TEXT,
            modified_arguments TEXT,
            result TEXT,
            error TEXT,
            finished_at REAL,
            wait_strategy TEXT
        );
        CREATE INDEX calls_state_created ON calls (state, created_at);
        CREATE INDEX calls_created ON calls (created_at);
        CREATE INDEX calls_instance ON calls (instance_id, state);
        CREATE INDEX calls_retry ON calls (upstream, tool, args_digest, created_at);
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            call_id TEXT,
            event TEXT NOT NULL,
            actor TEXT,
            channel TEXT,
            args_digest TEXT,
            detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX audit_call ON audit (call_id, seq);
        """,
    ),
    (
        "0002_instance_config",
        """
        ALTER TABLE instances ADD COLUMN config_path TEXT;
        """,
    ),
    (
        "0003_waiting",
        """
        ALTER TABLE calls ADD COLUMN retry_offered INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE calls ADD COLUMN session TEXT;
        CREATE TABLE used_states (nonce TEXT PRIMARY KEY, call_id TEXT NOT NULL, used_at REAL NOT NULL);
        """,
    ),
    (
        "0004_gates",
        """
        ALTER TABLE calls ADD COLUMN escalation INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE calls ADD COLUMN capture TEXT;
        ALTER TABLE calls ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE pins (
            upstream TEXT NOT NULL,
            tool TEXT NOT NULL,
            hash TEXT NOT NULL,
            definition TEXT NOT NULL,
            pinned_at REAL NOT NULL,
            pinned_by TEXT NOT NULL,
            pending_hash TEXT,
            pending_definition TEXT,
            changed_at REAL,
            PRIMARY KEY (upstream, tool)
        );
        CREATE TABLE leases (
            id TEXT PRIMARY KEY,
            upstream TEXT NOT NULL,
            tool TEXT NOT NULL,
            tooldef_hash TEXT,
            envelope TEXT NOT NULL,
            created_at REAL NOT NULL,
            created_by TEXT NOT NULL,
            source_call TEXT,
            expires_at REAL,
            calls_left INTEGER,
            revoked_at REAL,
            revoked_by TEXT,
            used INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX leases_tool ON leases (upstream, tool);
        """,
    ),
    (
        "0005_lean_indexes",
        # every commit writes each index page it touches: the retry lookup only ever concerns calls whose
        # client was told to retry, and the live calls of an instance are found through calls_state_created
        """
        DROP INDEX calls_retry;
        CREATE INDEX calls_retry ON calls (upstream, tool, args_digest, created_at) WHERE retry_offered = 1;
        DROP INDEX calls_instance;
        """,
    ),
    (
        "0006_principal",
        # who made the call (see mcp_gatekeeper.principals): a retry attaches, and gatekeeper_status answers,
        # only within one principal; calls recorded before this migration have none and belong to nobody
        """
        ALTER TABLE calls ADD COLUMN principal TEXT;
        ALTER TABLE calls ADD COLUMN released_from TEXT;
        DROP INDEX calls_retry;
        CREATE INDEX calls_retry ON calls (principal, upstream, tool, args_digest, created_at) WHERE retry_offered = 1;
        """,
    ),
    (
        "0007_web_sessions",
        # sessions of the approval page live here (not in a signed cookie) so that every process serving the
        # page agrees on them and a logout or a revocation ends them everywhere; login codes are single use
        # across processes; an instance that serves the page says where, so `mcp-gatekeeper login` can find it
        """
        CREATE TABLE web_sessions (
            id TEXT PRIMARY KEY,
            secret_hash TEXT NOT NULL,
            key_hash TEXT NOT NULL,
            label TEXT NOT NULL,
            host TEXT NOT NULL,
            user_agent TEXT,
            created_at REAL NOT NULL,
            last_seen_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            ends_at REAL NOT NULL,
            ended_at REAL,
            ended_by TEXT,
            ended_why TEXT
        );
        CREATE TABLE login_codes (
            code_hash TEXT PRIMARY KEY,
            label TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            used_at REAL
        );
        ALTER TABLE instances ADD COLUMN ui_url TEXT;
        """,
    ),
    (
        "0008_shadow",
        # calibration (mcp_gatekeeper.calibrate): the shadow policy's verdict beside each call, and every tool
        # definition a call was checked against, by hash, so that replay sees the annotations and inputSchema the
        # live check saw (the pins keep only the current and the pending definition)
        """
        ALTER TABLE calls ADD COLUMN shadow_action TEXT;
        ALTER TABLE calls ADD COLUMN shadow_rule TEXT;
        ALTER TABLE calls ADD COLUMN shadow_reason TEXT;
        CREATE TABLE tool_definitions (
            hash TEXT PRIMARY KEY,
            upstream TEXT NOT NULL,
            tool TEXT NOT NULL,
            definition TEXT NOT NULL,
            first_seen REAL NOT NULL
        );
        INSERT OR IGNORE INTO tool_definitions (hash, upstream, tool, definition, first_seen)
            SELECT hash, upstream, tool, definition, pinned_at FROM pins;
        INSERT OR IGNORE INTO tool_definitions (hash, upstream, tool, definition, first_seen)
            SELECT pending_hash, upstream, tool, pending_definition, changed_at FROM pins
            WHERE pending_hash IS NOT NULL AND pending_definition IS NOT NULL
        """,
    ),
    (
        "0009_app_nonces",
        # the MCP Apps decision card's per-call nonces (mcp_gatekeeper/apps): only a SHA-256 of each is kept;
        # bound to the call, its arguments digest and its principal; short-lived; spent once
        """
        CREATE TABLE app_nonces (
            nonce_hash TEXT PRIMARY KEY,
            call_id TEXT NOT NULL,
            args_digest TEXT NOT NULL,
            principal TEXT,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            used_at REAL
        );
        CREATE INDEX app_nonces_call ON app_nonces (call_id);
        """,
    ),
    (
        "0010_notify_links",
        # the messages notifiers posted about a call (a Slack message is updated with the outcome wherever the
        # call is decided: page, CLI, Slack, timeout), and the Slack request signatures already accepted, so
        # a captured request replayed inside Slack's five-minute window decides nothing
        """
        CREATE TABLE notify_links (
            call_id TEXT NOT NULL,
            channel TEXT NOT NULL,
            target TEXT NOT NULL,
            ref TEXT NOT NULL,
            posted_at REAL NOT NULL,
            claimed_by TEXT,
            claimed_at REAL,
            shown_state TEXT,
            shown_at REAL,
            PRIMARY KEY (call_id, channel)
        );
        CREATE INDEX notify_links_open ON notify_links (channel) WHERE shown_state IS NULL;
        CREATE TABLE seen_signatures (signature TEXT PRIMARY KEY, seen_at REAL NOT NULL);
        """,
    ),
    (
        "0011_reviewers",
        # team mode: reviewer accounts (scrypt hashes only), the login attempts that rate-limit password
        # guessing, the named approvals of a call that needs several, and the account a session stands for
        """
        CREATE TABLE reviewers (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            groups TEXT NOT NULL,
            principals TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            created_by TEXT NOT NULL,
            password_changed_at REAL NOT NULL
        );
        CREATE TABLE login_attempts (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            account TEXT NOT NULL,
            address TEXT NOT NULL,
            at REAL NOT NULL,
            ok INTEGER NOT NULL
        );
        CREATE INDEX login_attempts_account ON login_attempts (account, at);
        CREATE INDEX login_attempts_address ON login_attempts (address, at);
        CREATE TABLE call_approvals (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            call_id TEXT NOT NULL,
            reviewer TEXT NOT NULL,
            proposal_digest TEXT NOT NULL,
            arguments TEXT,
            session TEXT,
            at REAL NOT NULL
        );
        CREATE INDEX call_approvals_call ON call_approvals (call_id, seq);
        ALTER TABLE web_sessions ADD COLUMN account TEXT;
        """,
    ),
    (
        "0012_signatures",
        # each decision's Ed25519 signature (see mcp_gatekeeper.signatures), also kept in its audit event;
        # signing_since is the last audit event written before decisions were signed: `audit --verify` wants
        # a valid signature on every decision after it; passkeys: each reviewer's WebAuthn credentials
        """
        ALTER TABLE calls ADD COLUMN decision_sig TEXT;
        CREATE TABLE signing_since (seq INTEGER NOT NULL);
        INSERT INTO signing_since (seq) SELECT COALESCE(MAX(seq), 0) FROM audit;
        CREATE TABLE passkeys (
            credential_id TEXT PRIMARY KEY,
            reviewer TEXT NOT NULL,
            public_key TEXT NOT NULL,
            sign_count INTEGER NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX passkeys_reviewer ON passkeys (reviewer);
        """,
    ),
    (
        "0013_sweep_claims",
        # the sweeper's claims (mcp_gatekeeper.store.sweeps): when a held call's next escalation step falls due
        # (the gate decides it from the rule), and the process doing sweeper work that outlives one transaction
        # (an escalation notice to send, a compensation running), so that a survivor takes it over if that
        # process dies; calls_sweep keeps "is anything due?" to the few live calls. A call held before this
        # migration is looked at once (its escalate_at is its creation)
        """
        ALTER TABLE calls ADD COLUMN escalate_at REAL;
        ALTER TABLE calls ADD COLUMN claimed_by TEXT;
        ALTER TABLE calls ADD COLUMN claim TEXT;
        UPDATE calls SET escalate_at = created_at WHERE state = 'pending';
        CREATE INDEX calls_sweep ON calls (state, deadline_at)
            WHERE state IN ('pending', 'under_review', 'approved', 'review_failed', 'rolling_back');
        """,
    ),
    (
        "0014_quorum_steps",
        # each approval step of a quorum is signed like a decision (see mcp_gatekeeper.store.approvals): its
        # round and place in the round, the channel, the signature and, for a passkey rule, the approver's own
        # assertion; step_signing_since is the last audit event before steps were signed (audit --verify);
        # reviewers.slack: the Slack members (workspace/member ids) whose clicks are this account's
        """
        ALTER TABLE call_approvals ADD COLUMN round INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE call_approvals ADD COLUMN step INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE call_approvals ADD COLUMN channel TEXT NOT NULL DEFAULT 'web';
        ALTER TABLE call_approvals ADD COLUMN signature TEXT;
        ALTER TABLE call_approvals ADD COLUMN passkey TEXT;
        CREATE TABLE step_signing_since (seq INTEGER NOT NULL);
        INSERT INTO step_signing_since (seq) SELECT COALESCE(MAX(seq), 0) FROM audit;
        ALTER TABLE reviewers ADD COLUMN slack TEXT NOT NULL DEFAULT '[]';
        """,
    ),
)

CALL_COLUMNS = (
    "id, state, upstream, tool, arguments, args_digest, gate, risk, rule, tooldef_hash, summary, effects, "
    "reasons, agent_reason, agent_confidence, client, input_schema, instance_id, created_at, deadline_at, "
    "decided_at, decided_by, channel, reason, modified_arguments, result, error, finished_at, wait_strategy, "
    "shadow_action, shadow_rule, shadow_reason"
)
AUDIT_COLUMNS = "seq, at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash"
PIN_COLUMNS = "upstream, tool, hash, definition, pinned_at, pinned_by, pending_hash, pending_definition, changed_at"
LEASE_COLUMNS = (
    "id, upstream, tool, tooldef_hash, envelope, created_at, created_by, source_call, expires_at, calls_left,"
    " revoked_at, revoked_by, used"
)
SESSION_COLUMNS = (
    "id, label, host, user_agent, created_at, last_seen_at, expires_at, ends_at, ended_at, ended_by, ended_why, account"
)
REVIEWER_COLUMNS = "name, role, groups, principals, created_at, created_by, password_changed_at, slack"

LIVE_OWNER_STATES = (State.PENDING, State.APPROVED, State.FORWARDING, State.ALLOWED)
RELEASED_STATES = (State.PENDING, State.APPROVED)
"""States in which a call whose client was told to retry outlives its process (released: no owner)."""


def loads(text: str | None) -> Any:
    """A JSON column's value (``NULL`` is ``None``)."""
    return None if text is None else json.loads(text)


def placeholders(items: Sequence[Any]) -> str:
    """``?, ?, ?`` for an ``IN (...)`` over ``items``."""
    return ", ".join("?" * len(items))


def call_record(row: Sequence[Any]) -> CallRecord:
    """A row of CALL_COLUMNS as a :class:`CallRecord`."""
    (
        cid,
        state,
        upstream,
        tool,
        arguments,
        args_digest,
        gate,
        risk,
        rule,
        tooldef_hash,
        summary,
        effects,
        reasons,
        agent_reason,
        agent_confidence,
        client,
        input_schema,
        instance_id,
        created_at,
        deadline_at,
        decided_at,
        decided_by,
        channel,
        reason,
        modified_arguments,
        result,
        error,
        finished_at,
        wait_strategy,
        shadow_action,
        shadow_rule,
        shadow_reason,
    ) = tuple(row)
    return CallRecord(
        id=cid,
        state=State(state),
        upstream=upstream,
        tool=tool,
        arguments=json.loads(arguments),
        args_digest=args_digest,
        gate=gate,
        risk=risk,
        rule=rule,
        tooldef_hash=tooldef_hash,
        summary=summary,
        effects=loads(effects) or {},
        reasons=tuple(loads(reasons) or ()),
        agent_reason=agent_reason,
        agent_confidence=agent_confidence,
        client=loads(client) or {},
        input_schema=loads(input_schema),
        instance_id=instance_id,
        created_at=created_at,
        deadline_at=deadline_at,
        decided_at=decided_at,
        decided_by=decided_by,
        channel=channel,
        reason=reason,
        modified_arguments=loads(modified_arguments),
        result=loads(result),
        error=error,
        finished_at=finished_at,
        wait_strategy=wait_strategy,
        shadow_action=shadow_action,
        shadow_rule=shadow_rule,
        shadow_reason=shadow_reason,
    )


def web_session(r: Sequence[Any]) -> WebSession:
    """A row of SESSION_COLUMNS (and anything after them) as a :class:`WebSession`."""
    return WebSession(*r[:12])


def reviewer(r: Sequence[Any]) -> Reviewer:
    """A row of REVIEWER_COLUMNS as a :class:`Reviewer`."""
    return Reviewer(
        name=r[0], role=r[1], groups=tuple(json.loads(r[2])), principals=tuple(json.loads(r[3])), created_at=r[4],
        created_by=r[5], password_changed_at=r[6], slack=tuple(json.loads(r[7] or "[]")),
    )  # fmt: skip


def audit_event(r: Sequence[Any]) -> AuditEvent:
    """A row of AUDIT_COLUMNS as an :class:`AuditEvent`."""
    return AuditEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8], r[9])


def pin(r: Sequence[Any]) -> Pin:
    """A row of PIN_COLUMNS as a :class:`Pin`."""
    return Pin(
        upstream=r[0], tool=r[1], hash=r[2], definition=json.loads(r[3]), pinned_at=r[4], pinned_by=r[5],
        pending_hash=r[6], pending_definition=loads(r[7]), changed_at=r[8],
    )  # fmt: skip


def lease(r: Sequence[Any]) -> Lease:
    """A row of LEASE_COLUMNS as a :class:`Lease`."""
    return Lease(
        id=r[0], upstream=r[1], tool=r[2], tooldef_hash=r[3], envelope=json.loads(r[4]), created_at=r[5],
        created_by=r[6], source_call=r[7], expires_at=r[8], calls_left=r[9], revoked_at=r[10], revoked_by=r[11],
        used=r[12],
    )  # fmt: skip


PAST_CALL_COLUMNS = (
    "id, state, upstream, tool, arguments, gate, risk, rule, tooldef_hash, reasons, agent_confidence, created_at,"
    " decided_at, decided_by, channel, modified_arguments IS NOT NULL, shadow_action, args_digest,"
    " deadline_at IS NOT NULL"
)


def past_call(r: Sequence[Any]) -> PastCall:
    """A row of PAST_CALL_COLUMNS as a :class:`PastCall` (what calibration reads of a recorded call)."""
    return PastCall(
        id=r[0], state=State(r[1]), upstream=r[2], tool=r[3], arguments=json.loads(r[4]), gate=r[5], risk=r[6],
        rule=r[7], tooldef_hash=r[8], reasons=tuple(loads(r[9]) or ()), agent_confidence=r[10], created_at=r[11],
        decided_at=r[12], decided_by=r[13], channel=r[14], modified=bool(r[15]), shadow_action=r[16], args_digest=r[17],
        had_deadline=bool(r[18]),
    )  # fmt: skip
