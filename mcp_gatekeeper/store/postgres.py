"""The PostgreSQL engine of the store (psycopg 3, async, with its pool): the admin set-up and the write path.

- :func:`init_database` is the owner's one step (``mcp-gatekeeper db init``): roles, schema, the migrations of
  :mod:`mcp_gatekeeper.store.pg_schema` recorded in ``schema_migrations``, guards and grants. It refuses a database
  written by a newer version, as the SQLite store does.
- :class:`PgEngine` is what a gatekeeper or the approval service opens with its own role's URL: a pool whose
  connections reconnect after the server comes back, transactions whose database failures become
  :class:`StoreError` (callers fail closed), the audit chain's append, a decision as one compare-and-set
  (through the ``decide`` function: the gatekeeper's role cannot call it), sweeper work claimed with
  ``FOR UPDATE SKIP LOCKED``, and change signals from ``LISTEN`` with a polling fallback.

This is the only module that imports psycopg: the SQLite-only user never loads it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import anyio
import psycopg
import psycopg_pool
from psycopg import sql

from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.errors import AlreadyDecidedError, CallNotFoundError, StoreError
from mcp_gatekeeper.models import GENESIS_HASH, audit_body, audit_hash, canonical_json, digest
from mcp_gatekeeper.store.pg_schema import (
    AUDIT_LOCK,
    CHANNEL,
    MIGRATIONS,
    SCHEMA,
    Roles,
    grants_sql,
    guards_sql,
    statements,
)

log = logging.getLogger(__name__)

POSTGRES_SCHEMES = ("postgresql", "postgres")


def redact(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = (parts.username or "") + ":***@" + (parts.hostname or "")
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_url(url: str, *, key: str) -> None:
    """Refuse anything but a ``postgresql://`` URL, naming the config key or variable it came from."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in POSTGRES_SCHEMES:
        raise StoreError(f"{key}: {redact(url)!r} is not a postgresql:// URL")


def _with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname or 'localhost'}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# ---------------------------------------------------------------------------------------------- the admin step


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_database` did: migrations applied, and the URLs of roles it created (with passwords)."""

    applied: tuple[str, ...]
    new_role_urls: dict[str, str] = field(default_factory=dict)


async def _schema_state(conn: psycopg.AsyncConnection[Any]) -> set[str] | None:
    """The migration names a database has applied, or None if it has no store schema."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.schema_migrations",))
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute(sql.SQL("SELECT name FROM {}.schema_migrations").format(sql.Identifier(SCHEMA)))
    return {r[0] for r in await cur.fetchall()}


def _newer(done: set[str], where: str) -> None:
    if unknown := done - {name for name, _ in MIGRATIONS}:
        raise StoreError(
            f"{where} was written by a newer mcp-gatekeeper (migrations {sorted(unknown)}); upgrade to use it"
        )


async def init_database(
    admin_url: str, clock: Clock, *, roles: Roles | None = None, reset_passwords: bool = False
) -> InitReport:
    """Set up (or bring up to date) a team database; idempotent. ``admin_url`` is a role that may create roles
    and schemas in that database (its owner, or a superuser); it is needed only for this step."""
    roles = roles or Roles()
    try:
        roles.check()
    except ValueError as e:
        raise StoreError(str(e)) from e
    check_url(admin_url, key="--url")
    where = redact(admin_url)
    new_urls: dict[str, str] = {}
    applied: list[str] = []
    try:
        conn = await psycopg.AsyncConnection.connect(admin_url, autocommit=True, connect_timeout=10)
        async with conn, conn.transaction():
            # one set-up at a time, whoever runs it
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK + 1,))
            done = await _schema_state(conn)
            if done is not None:
                _newer(done, where)
            new_urls = await _ensure_roles(conn, admin_url, roles, reset_passwords=reset_passwords)
            cur = await conn.execute("SELECT current_database()")
            row = await cur.fetchone()
            database = str(row[0]) if row else ""
            owner = sql.Identifier(roles.owner)
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(sql.Identifier(SCHEMA), owner)
            )
            head: list[str] = []
            tail: list[str] = []
            for stmt in grants_sql(roles, database):
                (head if "DATABASE" in stmt or "SCHEMA public" in stmt else tail).append(stmt)
            for stmt in head:  # the database and the public schema may belong to the admin, not the owner
                await conn.execute(stmt.encode())
            await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(owner))
            await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(SCHEMA)))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            done = done or set()
            for name, body in MIGRATIONS:
                if name in done:
                    continue
                for stmt in statements(body):
                    await conn.execute(stmt.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (%s, %s)", (name, clock.now())
                )
                applied.append(name)
            await conn.execute(guards_sql().encode())
            for stmt in tail:
                await conn.execute(stmt.encode())
    except psycopg.Error as e:
        raise StoreError(f"cannot set up the database at {where}: {e}") from e
    return InitReport(applied=tuple(applied), new_role_urls=new_urls)


async def _ensure_roles(
    conn: psycopg.AsyncConnection[Any], admin_url: str, roles: Roles, *, reset_passwords: bool
) -> dict[str, str]:
    async def exists(name: str) -> bool:
        cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        return await cur.fetchone() is not None

    if not await exists(roles.owner):
        await conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(roles.owner)))
    cur = await conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    row = await cur.fetchone()
    if not (row and row[0]):  # a non-superuser admin becomes a member of the owner, to act as it below
        await conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(roles.owner)))
    urls: dict[str, str] = {}
    for name in (roles.gatekeeper, roles.approver):
        ident = sql.Identifier(name)
        password = secrets.token_urlsafe(24)
        if not await exists(name):
            await conn.execute(
                sql.SQL(
                    "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}"
                ).format(ident, sql.Literal(password))
            )
            urls[name] = _with_credentials(admin_url, name, password)
        else:
            cur = await conn.execute(
                "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls OR rolreplication FROM pg_roles"
                " WHERE rolname = %s",
                (name,),
            )
            row = await cur.fetchone()
            if row and row[0]:
                raise StoreError(f"role {name!r} exists with powers a store role must not have; use another name")
            if reset_passwords:
                await conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(password)))
                urls[name] = _with_credentials(admin_url, name, password)
        # a login role must never act as the owner (SET ROLE, inherited privileges)
        cur = await conn.execute(
            "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid"
            " WHERE r.rolname = %s AND g.rolname = ANY(%s)",
            (name, [roles.owner, roles.gatekeeper, roles.approver]),
        )
        if await cur.fetchone() is not None:
            raise StoreError(f"role {name!r} is a member of another store role; refusing to set it up")
    return urls


# --------------------------------------------------------------------------------------------------- the engine

_POOL_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout, OSError)


@dataclass
class _Signals:
    """Change signals from LISTEN: one event per generation; a waiter re-reads the row whatever woke it."""

    changed: anyio.Event = field(default_factory=anyio.Event)
    listening: bool = False

    def fire(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class PgEngine:
    """One process's connection pool to a team database (a gatekeeper's or the approval service's role)."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Any], url: str, clock: Clock) -> None:
        self._pool = pool
        self.url = url
        self.where = redact(url)
        self.clock = clock
        self._signals = _Signals()

    @classmethod
    @asynccontextmanager
    async def open(
        cls, url: str, clock: Clock, *, key: str = "[store] url", max_size: int = 8, timeout: float = 5.0
    ) -> AsyncIterator[PgEngine]:
        """Open a pool on ``url`` and check its schema (not migrated, or newer: :class:`StoreError`)."""
        check_url(url, key=key)
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            open=False,
            check=psycopg_pool.AsyncConnectionPool.check_connection,  # a connection the server dropped is replaced
            reconnect_timeout=0,  # keep trying for as long as it takes; requests fail closed meanwhile
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout)), "options": f"-c search_path={SCHEMA}"},
        )
        try:
            await pool.open(wait=True, timeout=timeout)
        except _POOL_ERRORS as e:
            with anyio.CancelScope(shield=True):
                await pool.close()
            raise StoreError(f"{key}: cannot connect to {redact(url)}: {e}") from e
        engine = cls(pool, url, clock)
        try:
            await engine._check_schema()
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine._listen)
                yield engine
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await pool.close()

    async def _check_schema(self) -> None:
        async with self.connection() as conn:
            done = await _schema_state(conn)
        if done is None:
            raise StoreError(
                f"{self.where} has no mcp-gatekeeper schema (or this role cannot see it): run"
                " `mcp-gatekeeper db init --url <an admin URL>` once"
            )
        _newer(done, self.where)
        if missing := [name for name, _ in MIGRATIONS if name not in done]:
            raise StoreError(f"{self.where} needs migrations {missing}: run `mcp-gatekeeper db init` as its owner")

    # ------------------------------------------------------------------ connections and transactions

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; any database failure inside becomes :class:`StoreError`."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except _POOL_ERRORS as e:
            raise StoreError(f"cannot use {self.where}: {e}") from e

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One transaction: committed when the block ends, rolled back on any error."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self.connection() as conn:
            cur = await conn.execute(query.encode(), params)
            return list(await cur.fetchall())

    # ------------------------------------------------------------------ the audit chain

    async def append_audit(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        event: str,
        call_id: str | None,
        actor: str | None = None,
        channel: str | None = None,
        args_digest: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one hash-chained event inside the caller's transaction (it holds the chain's lock to commit)."""
        prev = await self._audit_tail(conn)
        at = self.clock.now()
        body = audit_body(
            at=at, call_id=call_id, event=event, actor=actor, channel=channel, args_digest=args_digest,
            detail=detail or {},
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO audit (at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                at,
                call_id,
                event,
                actor,
                channel,
                args_digest,
                canonical_json(detail or {}),
                prev,
                audit_hash(prev, body),
            ),
        )

    async def _audit_tail(self, conn: psycopg.AsyncConnection[Any]) -> str:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
        cur = await conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1")
        row = await cur.fetchone()
        return str(row[0]) if row else GENESIS_HASH

    # ------------------------------------------------------------------ decisions (the approval service's role)

    async def decide(
        self,
        call_id: str,
        *,
        state: str,
        decided_by: str,
        channel: str,
        reason: str | None,
        modified_arguments: dict[str, Any] | None,
        expected_digest: str | None,
        detail: dict[str, Any] | None = None,
    ) -> str:
        """The one compare-and-set of a decision (``approved``/``rejected``, or ``confirmed``/``review_failed`` for
        a review), with its audit event, in one transaction; returns the new state. Late, expired or stale
        decisions raise :class:`AlreadyDecidedError` as on SQLite."""
        now = self.clock.now()
        d = dict(detail or {})
        if reason:
            d["reason"] = reason
        if modified_arguments is not None:
            d["modified_args_digest"] = digest(modified_arguments)
        async with self.tx() as conn:
            prev = await self._audit_tail(conn)
            cur = await conn.execute("SELECT args_digest FROM calls WHERE id = %s", (call_id,))
            row = await cur.fetchone()
            if row is None:
                raise CallNotFoundError(f"no call with id {call_id!r}")
            held_digest = str(row[0])
            signed = expected_digest if expected_digest is not None else held_digest
            body = audit_body(
                at=now, call_id=call_id, event=state, actor=decided_by, channel=channel, args_digest=held_digest,
                detail=d,
            )  # fmt: skip
            cur = await conn.execute(
                "SELECT outcome, state FROM decide(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    call_id, state, signed, now, decided_by, channel, reason,
                    None if modified_arguments is None else canonical_json(modified_arguments),
                    canonical_json(d), prev, audit_hash(prev, body),
                ),
            )  # fmt: skip
            out = await cur.fetchone()
        outcome, current = (out[0], out[1]) if out else ("not_found", None)
        if outcome == "ok":
            return str(current)
        if outcome == "not_found":
            raise CallNotFoundError(f"no call with id {call_id!r}")
        if outcome == "expired":
            raise AlreadyDecidedError(
                f"call {call_id[:12]} has expired (its deadline passed)", state=current, why="expired"
            )
        if outcome == "stale_digest":
            raise AlreadyDecidedError(
                f"call {call_id[:12]}: the arguments you reviewed are not the ones held (stale digest); reload and"
                " review again",
                state=current,
                why="stale_digest",
            )
        raise AlreadyDecidedError(f"call {call_id[:12]} is already {current}", state=current, why="decided")

    # ------------------------------------------------------------------ sweeper work, shared without doubling

    async def expire_due(self, now: float, *, limit: int = 100) -> list[str]:
        """Expire the pending calls whose deadline passed. Rows another gatekeeper is already sweeping are skipped
        (``FOR UPDATE SKIP LOCKED``): many gatekeepers share the work and no call is expired twice."""
        async with self.tx() as conn:
            cur = await conn.execute(
                "SELECT id, args_digest FROM calls WHERE state = 'pending' AND deadline_at <= %s"
                " ORDER BY deadline_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (now, limit),
            )
            due = list(await cur.fetchall())
            for cid, args_digest in due:
                await conn.execute(
                    "UPDATE calls SET state = 'expired', finished_at = %s,"
                    " reason = 'no decision before its deadline; the safe default is to reject'"
                    " WHERE id = %s AND state = 'pending'",
                    (now, cid),
                )
                await self.append_audit(
                    conn, event="expired", call_id=cid, actor="gatekeeper", channel="timeout", args_digest=args_digest
                )
        return [str(r[0]) for r in due]

    async def claim(
        self,
        state: str,
        to_state: str,
        *,
        due_before: float | None = None,
        upstreams: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[str]:
        """Move up to ``limit`` calls in ``state`` (whose deadline is before ``due_before``, of these
        ``upstreams``) to ``to_state``, skipping rows another process holds: the claim of review windows
        (``under_review`` → ``unreviewed``/``review_failed``) and of compensation work (``review_failed`` →
        ``rolling_back``, counting the attempt). Each call is claimed by exactly one process."""
        async with self.tx() as conn:
            cur = await conn.execute(
                "SELECT id, args_digest FROM calls WHERE state = %s"
                " AND (%s::double precision IS NULL OR deadline_at <= %s)"
                " AND (%s::text[] IS NULL OR upstream = ANY(%s))"
                " ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (state, due_before, due_before, None if upstreams is None else list(upstreams),
                 None if upstreams is None else list(upstreams), limit),
            )  # fmt: skip
            rows = list(await cur.fetchall())
            for cid, args_digest in rows:
                await conn.execute(
                    "UPDATE calls SET state = %s, attempts = attempts + (CASE WHEN %s = 'rolling_back' THEN 1 ELSE 0"
                    " END) WHERE id = %s AND state = %s",
                    (to_state, to_state, cid, state),
                )
                await self.append_audit(
                    conn, event=to_state, call_id=cid, actor="gatekeeper", channel="sweeper", args_digest=args_digest
                )
        return [str(r[0]) for r in rows]

    # ------------------------------------------------------------------ change signals

    async def wait_changed(self, poll: float = 1.0) -> None:
        """Return after the next NOTIFY of a change to any call, or after ``poll`` seconds (the fallback when the
        listener is down). Either way the caller reads the state from the table: a NOTIFY is only a hint."""
        changed = self._signals.changed
        with anyio.move_on_after(poll if self._signals.listening else min(poll, 0.5)):
            await changed.wait()

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; after a failure, reconnect (waiters poll meanwhile)."""
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=5, options=f"-c search_path={SCHEMA}"
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    self._signals.listening = True
                    self._signals.fire()  # anything may have changed while nobody listened
                    delay = 0.1
                    async for _ in conn.notifies():
                        self._signals.fire()
            except _POOL_ERRORS as e:
                log.debug("LISTEN on %s lost (%s); waiters poll until it is back", self.where, e)
            finally:
                self._signals.listening = False
            await anyio.sleep(delay)  # back-off between reconnection attempts (not a synchronisation)
            delay = min(delay * 2, 2.0)
