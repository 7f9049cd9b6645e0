"""The PostgreSQL schema of the store: the SQLite migrations ported under the same names, and least privilege.

Pure text (no driver import): :mod:`mcp_gatekeeper.store.postgres` runs it. Everything lives in one schema,
:data:`SCHEMA`, owned by a role that cannot log in (:data:`DEFAULT_ROLES.owner`); two login roles use it:

- **gatekeeper** (the proxies): creates calls, reads them, moves calls through the steps a proxy takes
  (:data:`GATEKEEPER_EDGES`: expiry, cancellation, forwarding, outcomes, review windows, compensation), appends
  audit events, registers its instance, records the tool definitions it sees and spends leases (one use at a
  time). It cannot decide: no call may enter ``approved``, ``rejected`` or ``confirmed``, nor make a change
  outside that table, unless the statement runs as the owner (the ``decide`` function); it cannot write
  ``decided_by``, ``decided_at``, ``channel``, ``modified_arguments`` or the arguments (no UPDATE grant; a new
  call carrying a decision is refused); it cannot append a decision event to the audit chain, create a lease,
  repin a tool, nor read or write the page's sessions. It reads the reviewers' passkeys and each decision's
  signature (to check them before forwarding) and writes neither.
- **approver** (the approval service): reads everything, decides through the ``decide`` function (SECURITY
  DEFINER: one compare-and-set plus its audit event and the decision's signature in one transaction), runs the
  page's sessions, leases, pins and reviewers' passkeys, and recovers a dead gatekeeper's calls as any process
  does.

The audit table is append-only for everybody (triggers refuse UPDATE, DELETE and TRUNCATE). Every change of a
call's state or deadline (an escalation may shorten it) sends a ``NOTIFY`` on :data:`CHANNEL` with the call id: a
hint for waiters, never the truth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mcp_gatekeeper.models import GENESIS_HASH

SCHEMA = "mcp_gatekeeper"
"""The schema holding every table and function (connections set their search_path to it)."""

CHANNEL = "mcp_gatekeeper_calls"
"""The LISTEN/NOTIFY channel: the payload is the id of a call whose state changed."""

AUDIT_LOCK = 0x6D6370677461
"""The advisory lock key every writer of an audit event holds until commit: the hash chain has one tail."""

DECISION_STATES = ("approved", "rejected", "confirmed")
"""States only the decision function may set (a human's decision)."""

GATEKEEPER_EDGES: dict[str, tuple[str, ...]] = {
    "pending": ("expired", "cancelled", "orphaned"),  # each means it never runs
    "approved": ("forwarding", "denied", "cancelled", "expired", "orphaned"),
    "allowed": ("forwarding", "forwarded", "failed", "outcome_unknown", "orphaned", "under_review"),
    "forwarding": ("forwarded", "failed", "outcome_unknown"),
    "forwarded": ("under_review",),  # an audit gate opens its review window; nothing runs again
    "under_review": ("unreviewed", "review_failed", "rollback_failed"),  # the window closed (a timeout's outcome)
    "review_failed": ("rolling_back",),
    "rolling_back": ("rolled_back", "rollback_failed", "review_failed"),
}
"""Every state change a gatekeeper may make by itself; any other goes through the decision function."""

_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Roles:
    """The three roles of a team database (names checked by :meth:`check`)."""

    gatekeeper: str = "gatekeeper"
    approver: str = "approver"
    owner: str = "mcp_gatekeeper_owner"

    def check(self) -> None:
        for what, name in (("gatekeeper", self.gatekeeper), ("approver", self.approver), ("owner", self.owner)):
            if not _ROLE_NAME.match(name):
                raise ValueError(f"{what} role {name!r}: use lowercase letters, digits and '_' (at most 63)")
        if len({self.gatekeeper, self.approver, self.owner}) != 3:
            raise ValueError("the gatekeeper, approver and owner roles must be three different roles")


DEFAULT_ROLES = Roles()

# The SQLite migrations of mcp_gatekeeper.store, in PostgreSQL: same names, same tables and columns (REAL is
# double precision, AUTOINCREMENT an identity column). A database records the names it has applied in
# schema_migrations; one that has a name this code does not know was written by a newer version.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "0001_initial",
        """
        CREATE TABLE instances (
            id TEXT PRIMARY KEY,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            label TEXT,
            started_at DOUBLE PRECISION NOT NULL,
            heartbeat_at DOUBLE PRECISION NOT NULL,
            stopped_at DOUBLE PRECISION
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
            agent_confidence DOUBLE PRECISION,
            client TEXT,
            input_schema TEXT,
            instance_id TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            deadline_at DOUBLE PRECISION,
            decided_at DOUBLE PRECISION,
            decided_by TEXT,
            channel TEXT,
            reason TEXT,
            modified_arguments TEXT,
            result TEXT,
            error TEXT,
            finished_at DOUBLE PRECISION,
            wait_strategy TEXT
        );
        CREATE INDEX calls_state_created ON calls (state, created_at);
        CREATE INDEX calls_created ON calls (created_at);
        CREATE INDEX calls_instance ON calls (instance_id, state);
        CREATE INDEX calls_retry ON calls (upstream, tool, args_digest, created_at);
        CREATE TABLE audit (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
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
        CREATE TABLE used_states (nonce TEXT PRIMARY KEY, call_id TEXT NOT NULL, used_at DOUBLE PRECISION NOT NULL);
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
            pinned_at DOUBLE PRECISION NOT NULL,
            pinned_by TEXT NOT NULL,
            pending_hash TEXT,
            pending_definition TEXT,
            changed_at DOUBLE PRECISION,
            PRIMARY KEY (upstream, tool)
        );
        CREATE TABLE leases (
            id TEXT PRIMARY KEY,
            upstream TEXT NOT NULL,
            tool TEXT NOT NULL,
            tooldef_hash TEXT,
            envelope TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            created_by TEXT NOT NULL,
            source_call TEXT,
            expires_at DOUBLE PRECISION,
            calls_left INTEGER,
            revoked_at DOUBLE PRECISION,
            revoked_by TEXT,
            used INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX leases_tool ON leases (upstream, tool);
        """,
    ),
    (
        "0005_lean_indexes",
        """
        DROP INDEX calls_retry;
        CREATE INDEX calls_retry ON calls (upstream, tool, args_digest, created_at) WHERE retry_offered = 1;
        DROP INDEX calls_instance;
        """,
    ),
    (
        "0006_principal",
        """
        ALTER TABLE calls ADD COLUMN principal TEXT;
        ALTER TABLE calls ADD COLUMN released_from TEXT;
        DROP INDEX calls_retry;
        CREATE INDEX calls_retry ON calls (principal, upstream, tool, args_digest, created_at) WHERE retry_offered = 1;
        """,
    ),
    (
        "0007_web_sessions",
        """
        CREATE TABLE web_sessions (
            id TEXT PRIMARY KEY,
            secret_hash TEXT NOT NULL,
            key_hash TEXT NOT NULL,
            label TEXT NOT NULL,
            host TEXT NOT NULL,
            user_agent TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            last_seen_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            ends_at DOUBLE PRECISION NOT NULL,
            ended_at DOUBLE PRECISION,
            ended_by TEXT,
            ended_why TEXT
        );
        CREATE TABLE login_codes (
            code_hash TEXT PRIMARY KEY,
            label TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            used_at DOUBLE PRECISION
        );
        ALTER TABLE instances ADD COLUMN ui_url TEXT;
        """,
    ),
    (
        "0008_shadow",
        """
        ALTER TABLE calls ADD COLUMN shadow_action TEXT;
        ALTER TABLE calls ADD COLUMN shadow_rule TEXT;
        ALTER TABLE calls ADD COLUMN shadow_reason TEXT;
        CREATE TABLE tool_definitions (
            hash TEXT PRIMARY KEY,
            upstream TEXT NOT NULL,
            tool TEXT NOT NULL,
            definition TEXT NOT NULL,
            first_seen DOUBLE PRECISION NOT NULL
        );
        INSERT INTO tool_definitions (hash, upstream, tool, definition, first_seen)
            SELECT hash, upstream, tool, definition, pinned_at FROM pins ON CONFLICT DO NOTHING;
        INSERT INTO tool_definitions (hash, upstream, tool, definition, first_seen)
            SELECT pending_hash, upstream, tool, pending_definition, changed_at FROM pins
            WHERE pending_hash IS NOT NULL AND pending_definition IS NOT NULL ON CONFLICT DO NOTHING
        """,
    ),
    (
        "0009_app_nonces",
        """
        CREATE TABLE app_nonces (
            nonce_hash TEXT PRIMARY KEY,
            call_id TEXT NOT NULL,
            args_digest TEXT NOT NULL,
            principal TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            used_at DOUBLE PRECISION
        );
        CREATE INDEX app_nonces_call ON app_nonces (call_id);
        """,
    ),
    (
        "0010_notify_links",
        """
        CREATE TABLE notify_links (
            call_id TEXT NOT NULL,
            channel TEXT NOT NULL,
            target TEXT NOT NULL,
            ref TEXT NOT NULL,
            posted_at DOUBLE PRECISION NOT NULL,
            claimed_by TEXT,
            claimed_at DOUBLE PRECISION,
            shown_state TEXT,
            shown_at DOUBLE PRECISION,
            PRIMARY KEY (call_id, channel)
        );
        CREATE INDEX notify_links_open ON notify_links (channel) WHERE shown_state IS NULL;
        CREATE TABLE seen_signatures (signature TEXT PRIMARY KEY, seen_at DOUBLE PRECISION NOT NULL);
        """,
    ),
    (
        "0011_reviewers",
        """
        CREATE TABLE reviewers (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            groups TEXT NOT NULL,
            principals TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            created_by TEXT NOT NULL,
            password_changed_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE login_attempts (
            seq BIGSERIAL PRIMARY KEY,
            account TEXT NOT NULL,
            address TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            ok INTEGER NOT NULL
        );
        CREATE INDEX login_attempts_account ON login_attempts (account, at);
        CREATE INDEX login_attempts_address ON login_attempts (address, at);
        CREATE TABLE call_approvals (
            seq BIGSERIAL PRIMARY KEY,
            call_id TEXT NOT NULL,
            reviewer TEXT NOT NULL,
            proposal_digest TEXT NOT NULL,
            arguments TEXT,
            session TEXT,
            at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX call_approvals_call ON call_approvals (call_id, seq);
        ALTER TABLE web_sessions ADD COLUMN account TEXT;
        """,
    ),
    (
        "0012_signatures",
        # each decision's Ed25519 signature (written by the decide function only), the last audit event before
        # decisions were signed, and the reviewers' passkeys (the approver's to write, the gatekeeper's to read)
        """
        ALTER TABLE calls ADD COLUMN decision_sig TEXT;
        CREATE TABLE signing_since (seq BIGINT NOT NULL);
        INSERT INTO signing_since (seq) SELECT COALESCE(MAX(seq), 0) FROM audit;
        CREATE TABLE passkeys (
            credential_id TEXT PRIMARY KEY,
            reviewer TEXT NOT NULL,
            public_key TEXT NOT NULL,
            sign_count BIGINT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX passkeys_reviewer ON passkeys (reviewer);
        """,
    ),
    (
        "0013_sweep_claims",
        # the sweeper's claims (see the SQLite migration of the same name)
        """
        ALTER TABLE calls ADD COLUMN escalate_at DOUBLE PRECISION;
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
        CREATE TABLE step_signing_since (seq BIGINT NOT NULL);
        INSERT INTO step_signing_since (seq) SELECT COALESCE(MAX(seq), 0) FROM audit;
        ALTER TABLE reviewers ADD COLUMN slack TEXT NOT NULL DEFAULT '[]';
        """,
    ),
)


def statements(sql: str) -> list[str]:
    """The statements of a migration (none of them holds a ';' inside a literal or a body)."""
    return [s.strip() for s in sql.split(";") if s.strip()]


# Functions and triggers: recreated by every `db init` (CREATE OR REPLACE), after the migrations, as the owner.
# Each SECURITY DEFINER function pins its search_path so that no caller can put its own objects in front.
_GUARDS = """
CREATE OR REPLACE FUNCTION {s}.owner_is_current() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog AS $f$
    SELECT current_user = (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE n.nspname = '{s}')
$f$;

CREATE OR REPLACE FUNCTION {s}.calls_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, {s} AS $f$
BEGIN
    IF {s}.owner_is_current() THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.state NOT IN ('pending', 'allowed', 'denied') THEN
            RAISE EXCEPTION 'call %: a new call is pending, allowed or denied, never %', NEW.id, NEW.state
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF NEW.decided_by IS NOT NULL OR NEW.decided_at IS NOT NULL OR NEW.modified_arguments IS NOT NULL
           OR NEW.channel IS NOT NULL OR NEW.decision_sig IS NOT NULL THEN
            RAISE EXCEPTION 'call %: only the approval service records a decision', NEW.id
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.state IS DISTINCT FROM OLD.state THEN
        IF NEW.state IN ({decision_states}) THEN
            RAISE EXCEPTION 'call %: only the approval service can move a call to %', NEW.id, NEW.state
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF OLD.state || '>' || NEW.state <> ALL (ARRAY[{edges}]) THEN
            RAISE EXCEPTION 'call %: a gatekeeper does not move a call from % to %', NEW.id, OLD.state, NEW.state
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    RETURN NEW;
END
$f$;
DROP TRIGGER IF EXISTS calls_guard ON {s}.calls;
CREATE TRIGGER calls_guard BEFORE INSERT OR UPDATE ON {s}.calls FOR EACH ROW EXECUTE FUNCTION {s}.calls_guard();

CREATE OR REPLACE FUNCTION {s}.calls_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $f$
BEGIN
    PERFORM pg_notify('{channel}', NEW.id);
    RETURN NULL;
END
$f$;
DROP TRIGGER IF EXISTS calls_notify ON {s}.calls;
CREATE TRIGGER calls_notify AFTER INSERT OR UPDATE OF state, deadline_at ON {s}.calls
    FOR EACH ROW EXECUTE FUNCTION {s}.calls_notify();

CREATE OR REPLACE FUNCTION {s}.audit_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, {s} AS $f$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.event IN ({decision_states}) AND NOT {s}.owner_is_current() THEN
        RAISE EXCEPTION 'only the approval service records a % event', NEW.event
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$f$;
DROP TRIGGER IF EXISTS audit_guard ON {s}.audit;
CREATE TRIGGER audit_guard BEFORE INSERT OR UPDATE OR DELETE ON {s}.audit
    FOR EACH ROW EXECUTE FUNCTION {s}.audit_guard();
DROP TRIGGER IF EXISTS audit_no_truncate ON {s}.audit;
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON {s}.audit
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.audit_guard();

-- before 0012_signatures the function had no p_decision_sig: drop that one, or it would stay callable beside it
DROP FUNCTION IF EXISTS {s}.decide(TEXT, TEXT, TEXT, DOUBLE PRECISION, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT);
CREATE OR REPLACE FUNCTION {s}.decide(
    p_call_id TEXT, p_state TEXT, p_args_digest TEXT, p_now DOUBLE PRECISION, p_decided_by TEXT,
    p_channel TEXT, p_reason TEXT, p_modified_arguments TEXT, p_detail TEXT, p_prev_hash TEXT, p_hash TEXT,
    p_decision_sig TEXT
) RETURNS TABLE (outcome TEXT, state TEXT)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, {s} AS $f$
DECLARE
    cur RECORD;
    tail TEXT;
BEGIN
    IF p_state NOT IN ('approved', 'rejected', 'confirmed', 'review_failed') THEN
        RAISE EXCEPTION 'decide: % is not a decision', p_state USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_modified_arguments IS NOT NULL AND p_state <> 'approved' THEN
        RAISE EXCEPTION 'decide: only an approval carries modified arguments' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock({audit_lock});
    SELECT c.state, c.args_digest, c.deadline_at INTO cur FROM {s}.calls c WHERE c.id = p_call_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::TEXT, NULL::TEXT;
        RETURN;
    END IF;
    IF p_state IN ('approved', 'rejected') THEN
        IF cur.state <> 'pending' THEN
            RETURN QUERY SELECT 'decided'::TEXT, cur.state;
            RETURN;
        END IF;
        IF cur.deadline_at IS NOT NULL AND p_now >= cur.deadline_at THEN
            RETURN QUERY SELECT 'expired'::TEXT, cur.state;
            RETURN;
        END IF;
    ELSIF cur.state NOT IN ('under_review', 'unreviewed') THEN
        RETURN QUERY SELECT 'decided'::TEXT, cur.state;
        RETURN;
    END IF;
    IF p_args_digest IS DISTINCT FROM cur.args_digest THEN
        RETURN QUERY SELECT 'stale_digest'::TEXT, cur.state;
        RETURN;
    END IF;
    SELECT a.hash INTO tail FROM {s}.audit a ORDER BY a.seq DESC LIMIT 1;
    IF COALESCE(tail, '{genesis}') <> p_prev_hash THEN
        RETURN QUERY SELECT 'chain_moved'::TEXT, cur.state;
        RETURN;
    END IF;
    UPDATE {s}.calls c SET state = p_state, decided_at = p_now, decided_by = p_decided_by, channel = p_channel,
        reason = p_reason, modified_arguments = p_modified_arguments, decision_sig = p_decision_sig
        WHERE c.id = p_call_id AND c.state = cur.state AND c.args_digest = cur.args_digest;
    INSERT INTO {s}.audit (at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)
        VALUES (p_now, p_call_id, p_state, p_decided_by, p_channel, cur.args_digest, p_detail, p_prev_hash, p_hash);
    RETURN QUERY SELECT 'ok'::TEXT, p_state;
END
$f$;

-- what the repositories' SQLite dialect needs beyond PostgreSQL's own (mcp_gatekeeper.store.postgres.to_postgres
-- translates the rest): SUM over a condition counts the rows where it holds, MIN(a, b) is the smaller value,
-- json_extract reads one path of a JSON text ('$.a.b'; a JSON null is SQL NULL)
CREATE OR REPLACE FUNCTION {s}.count_true(acc BIGINT, v BOOLEAN) RETURNS BIGINT
LANGUAGE sql IMMUTABLE AS $f$ SELECT acc + CASE WHEN v THEN 1 ELSE 0 END $f$;
CREATE OR REPLACE AGGREGATE {s}.sum(BOOLEAN) (SFUNC = {s}.count_true, STYPE = BIGINT, INITCOND = '0');
CREATE OR REPLACE FUNCTION {s}.min(a DOUBLE PRECISION, b DOUBLE PRECISION) RETURNS DOUBLE PRECISION
LANGUAGE sql IMMUTABLE AS $f$ SELECT CASE WHEN a IS NULL OR b IS NULL THEN NULL ELSE LEAST(a, b) END $f$;
CREATE OR REPLACE FUNCTION {s}.min(a DOUBLE PRECISION, b DOUBLE PRECISION, c DOUBLE PRECISION)
RETURNS DOUBLE PRECISION
LANGUAGE sql IMMUTABLE AS $f$
    SELECT CASE WHEN a IS NULL OR b IS NULL OR c IS NULL THEN NULL ELSE LEAST(a, b, c) END
$f$;
CREATE OR REPLACE FUNCTION {s}.json_extract(doc TEXT, path TEXT) RETURNS JSONB
LANGUAGE sql IMMUTABLE AS $f$
    SELECT CASE WHEN jsonb_typeof(v) = 'null' THEN NULL ELSE v END
    FROM (SELECT doc::jsonb #> string_to_array(substr(path, 3), '.') AS v) AS x
$f$;

CREATE OR REPLACE FUNCTION {s}.leases_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, {s} AS $f$
BEGIN
    IF {s}.owner_is_current() THEN
        RETURN NEW;
    END IF;
    IF NEW.used IS DISTINCT FROM OLD.used OR NEW.calls_left IS DISTINCT FROM OLD.calls_left THEN
        -- spending one use is all a gatekeeper does to a lease: never a refill, never a revoked or used-up one
        IF NEW.used <> OLD.used + 1 OR OLD.revoked_at IS NOT NULL OR OLD.calls_left <= 0
           OR NEW.calls_left IS DISTINCT FROM OLD.calls_left - 1 THEN
            RAISE EXCEPTION 'lease %: only one use at a time is spent', OLD.id USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    IF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        RAISE EXCEPTION 'lease %: a revocation stands', OLD.id USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$f$;
DROP TRIGGER IF EXISTS leases_guard ON {s}.leases;
CREATE TRIGGER leases_guard BEFORE UPDATE ON {s}.leases FOR EACH ROW EXECUTE FUNCTION {s}.leases_guard();
"""


def guards_sql() -> str:
    """The functions and triggers (run as the owner, after the migrations)."""
    quoted = ", ".join(f"'{s}'" for s in DECISION_STATES)
    edges = ", ".join(f"'{a}>{b}'" for a, tos in GATEKEEPER_EDGES.items() for b in tos)
    return _GUARDS.format(
        s=SCHEMA,
        channel=CHANNEL,
        decision_states=quoted,
        edges=edges,
        audit_lock=AUDIT_LOCK,
        genesis=GENESIS_HASH,
    )


DECIDE_ARGS = "TEXT, TEXT, TEXT, DOUBLE PRECISION, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT"
"""The decide function's argument types (call, state, digest, time, decider, channel, reason, modified arguments,
audit detail, previous hash, hash, signature): grants and tests name the function by them."""

GATEKEEPER_UPDATE_CALLS = (
    "state, result, error, finished_at, reason, wait_strategy, capture, deadline_at, instance_id, retry_offered, "
    "session, escalation, attempts, released_from, escalate_at, claimed_by, claim"
)
"""The columns of a call a gatekeeper may change (never the arguments, their digest, or who decided)."""


def grants_sql(roles: Roles, database: str) -> list[str]:
    """Every privilege of the two login roles, from nothing (re-run by each `db init`: new columns included)."""
    roles.check()
    s, gk, ap = SCHEMA, roles.gatekeeper, roles.approver
    db = '"' + database.replace('"', '""') + '"'
    return [
        f"REVOKE ALL ON DATABASE {db} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {db} TO {gk}, {ap}",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"REVOKE ALL ON SCHEMA {s} FROM PUBLIC",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM PUBLIC, {gk}, {ap}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM PUBLIC, {gk}, {ap}",
        f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {s} FROM PUBLIC, {gk}, {ap}",
        f"GRANT USAGE ON SCHEMA {s} TO {gk}, {ap}",
        f"GRANT EXECUTE ON FUNCTION {s}.owner_is_current() TO {gk}, {ap}",  # the guards ask it as the caller
        f"GRANT EXECUTE ON FUNCTION {s}.count_true(BIGINT, BOOLEAN), {s}.min(DOUBLE PRECISION, DOUBLE PRECISION),"
        f" {s}.min(DOUBLE PRECISION, DOUBLE PRECISION, DOUBLE PRECISION), {s}.json_extract(TEXT, TEXT) TO {gk}, {ap}",
        f"GRANT EXECUTE ON FUNCTION {s}.sum(BOOLEAN) TO {gk}, {ap}",
        # the gatekeeper
        f"GRANT SELECT ON {s}.calls, {s}.audit, {s}.instances, {s}.used_states, {s}.pins, {s}.leases,"
        f" {s}.schema_migrations TO {gk}",
        # INSERT names every column (the store writes NULLs for the decision's); the guard refuses a new call
        # that carries a decision, an approved state or a decision channel
        f"GRANT INSERT ON {s}.calls TO {gk}",
        f"GRANT UPDATE ({GATEKEEPER_UPDATE_CALLS}) ON {s}.calls TO {gk}",
        f"GRANT INSERT ON {s}.audit TO {gk}",
        f"GRANT INSERT, DELETE ON {s}.instances TO {gk}",  # DELETE: the rows of long-stopped processes
        f"GRANT UPDATE (heartbeat_at, stopped_at, ui_url) ON {s}.instances TO {gk}",
        f"GRANT INSERT ON {s}.used_states TO {gk}",
        f"GRANT INSERT ON {s}.pins TO {gk}",
        f"GRANT UPDATE (pending_hash, pending_definition, changed_at) ON {s}.pins TO {gk}",
        f"GRANT UPDATE (used, calls_left) ON {s}.leases TO {gk}",  # one use at a time (leases_guard)
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.app_nonces TO {gk}, {ap}",  # 0009: the card's nonces (a click still decides only through decide)
        f"GRANT SELECT, INSERT ON {s}.tool_definitions TO {gk}, {ap}",  # 0008: the definitions calls were checked against
        f"GRANT UPDATE (shadow_action, shadow_rule, shadow_reason) ON {s}.calls TO {gk}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.notify_links, {s}.seen_signatures TO {gk}, {ap}",  # 0010
        # 0012: the holder reads the reviewers' passkeys (to re-check an assertion) and when signing began; a
        # signature is written only by decide, a passkey only by the service
        f"GRANT SELECT ON {s}.passkeys, {s}.signing_since TO {gk}",
        # 0014: the holder reads the signed steps of a quorum (and when their signing began) to check them again
        f"GRANT SELECT ON {s}.call_approvals, {s}.step_signing_since TO {gk}",
        # the approval service
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {ap}",
        f"GRANT EXECUTE ON FUNCTION {s}.decide({DECIDE_ARGS}) TO {ap}",
        f"GRANT INSERT ON {s}.audit TO {ap}",
        f"GRANT INSERT, UPDATE, DELETE ON {s}.web_sessions, {s}.login_codes TO {ap}",
        # 0011: team mode's accounts, login attempts and named approvals are the service's alone (a gatekeeper
        # cannot read a password hash, add an account, or count an approval)
        f"GRANT INSERT, UPDATE, DELETE ON {s}.reviewers, {s}.login_attempts, {s}.call_approvals TO {ap}",
        f"GRANT USAGE ON SEQUENCE {s}.login_attempts_seq_seq, {s}.call_approvals_seq_seq TO {ap}",
        f"GRANT INSERT ON {s}.passkeys TO {ap}",  # 0012: a reviewer registers a passkey on the service's page
        f"GRANT UPDATE (sign_count) ON {s}.passkeys TO {ap}",  # the sign count's compare-and-set, nothing else
        f"GRANT INSERT ON {s}.leases TO {ap}",
        f"GRANT UPDATE (revoked_at, revoked_by) ON {s}.leases TO {ap}",
        f"GRANT UPDATE (hash, definition, pinned_at, pinned_by, pending_hash, pending_definition, changed_at)"
        f" ON {s}.pins TO {ap}",
        # a process of the service recovers the calls of a dead gatekeeper as any process does (the guard's
        # table of changes applies: no decision but through decide)
        f"GRANT UPDATE ({GATEKEEPER_UPDATE_CALLS}) ON {s}.calls TO {ap}",
        f"GRANT INSERT, DELETE ON {s}.instances TO {ap}",
        f"GRANT UPDATE (heartbeat_at, stopped_at, ui_url) ON {s}.instances TO {ap}",
    ]
