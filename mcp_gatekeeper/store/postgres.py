"""The PostgreSQL backend of the store (psycopg 3 and psycopg_pool): the admin set-up and the engine.

- :func:`init_database` is the owner's one step (``mcp-gatekeeper db init``): roles, schema, the migrations of
  :mod:`mcp_gatekeeper.store.pg_schema` recorded in ``schema_migrations``, guards and grants. It refuses a database
  written by a newer version, as the SQLite store does.
- :class:`PgEngine` is the store's engine (:class:`~mcp_gatekeeper.store.engine.Backend`) for a gatekeeper or the
  approval service, opened with its own role's URL. The repositories' transaction bodies are synchronous (the
  store's seam), so they run on worker threads with a pooled connection, as SQLite's run on aiosqlite's thread;
  their SQLite dialect is translated (:func:`to_postgres`). A lost server makes every read and write raise
  :class:`StoreError` (callers fail closed) until a fresh pool reaches it again. Decisions go through the
  database's ``decide`` function (one compare-and-set plus its audit event; the gatekeeper's role cannot call it).
  ``LISTEN`` (async psycopg, in the upkeep task) wakes waiters; polling is the fallback. Sweeper claims
  (:mod:`mcp_gatekeeper.store.sweeps`) end their reads with :attr:`PgEngine.claim_rows`, ``FOR UPDATE SKIP LOCKED``.

This is the only module that imports psycopg: the SQLite-only user never loads it.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import anyio
import anyio.to_thread
import psycopg
import psycopg_pool
from psycopg import sql

from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.errors import AlreadyDecidedError, CallNotFoundError, StoreError
from mcp_gatekeeper.models import GENESIS_HASH, audit_body, audit_hash, canonical_json, digest
from mcp_gatekeeper.signatures import DecisionFacts
from mcp_gatekeeper.store.engine import Tx
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

T = TypeVar("T")

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

_DB_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout, OSError)
LISTEN_POLL = 1.0
"""Seconds between reads of a waiter whose listener is up (a lost NOTIFY costs at most this much)."""


@functools.lru_cache(maxsize=1024)
def to_postgres(statement: str) -> str:
    """A statement of the repositories (SQLite's dialect, ``?`` placeholders) in PostgreSQL's.

    Placeholders become ``%s`` (a literal ``%`` becomes ``%%``); ``x IS ?`` becomes ``IS NOT DISTINCT FROM``;
    ``INSERT OR IGNORE`` becomes ``ON CONFLICT DO NOTHING``; ``CAST(... AS INTEGER)`` truncates as SQLite does;
    ``json_each(?)`` reads a JSON array. The scalar ``MIN(a, b)``, ``SUM`` of a condition and ``json_extract``
    are functions of the schema (:mod:`mcp_gatekeeper.store.pg_schema`).
    """
    out: list[str] = []
    quoted = False
    for ch in statement:
        if ch == "'":
            quoted = not quoted
        if ch == "%":
            out.append("%%")
        elif ch == "?" and not quoted:
            out.append("%s")
        else:
            out.append(ch)
    text = "".join(out)
    text = re.sub(r"\bIS NOT %s", "IS DISTINCT FROM %s", text)
    text = re.sub(r"\bIS %s", "IS NOT DISTINCT FROM %s", text)
    text = re.sub(r"CAST\((.+?) AS INTEGER\)", r"TRUNC(\1)::INTEGER", text)
    text = text.replace("json_each(%s)", "json_array_elements_text(%s::json)")
    if text.lstrip().upper().startswith("INSERT OR IGNORE"):
        text = text.replace("INSERT OR IGNORE", "INSERT", 1) + " ON CONFLICT DO NOTHING"
    return text


class _Tx:
    """A transaction's handle for the repositories' bodies (the store's ``Tx``): their statements, translated."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, statement: str, parameters: Sequence[Any] = (), /) -> Any:
        # parameters always passed (even none): psycopg then reads "%%" as "%"
        return self._conn.execute(to_postgres(statement).encode(), tuple(parameters))


@dataclass
class _Signals:
    """Change signals from LISTEN: one event per generation; a waiter re-reads the row whatever woke it."""

    changed: anyio.Event = field(default_factory=anyio.Event)
    listening: bool = False
    count: int = 0

    def fire(self) -> None:
        self.count += 1
        self.changed.set()
        self.changed = anyio.Event()


def _new_pool(url: str, *, max_size: int, timeout: float) -> psycopg_pool.ConnectionPool[Any]:
    return psycopg_pool.ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        timeout=timeout,
        open=False,
        check=psycopg_pool.ConnectionPool.check_connection,  # a connection the server dropped is replaced
        reconnect_timeout=60.0,
        kwargs={
            "autocommit": True,
            "cursor_factory": psycopg.ClientCursor,
            "connect_timeout": max(1, int(timeout)),
            "options": f"-c search_path={SCHEMA}",
        },
    )


class PgEngine:
    """One process's pool of connections to a team database, as the store's engine (``Backend``).

    The repositories' bodies are synchronous (the store's seam), so each read or transaction runs on a worker
    thread with a connection of a psycopg pool: one hand-off per transaction, as with SQLite's worker thread.
    Every write transaction first takes the audit chain's advisory lock: writers queue as SQLite's do behind
    ``BEGIN IMMEDIATE``, and the chain keeps one tail. A dropped connection is replaced when next handed out
    (the pool checks it); until the server answers again every read and write raises :class:`StoreError`.
    """

    claim_rows = " FOR UPDATE SKIP LOCKED"  # a row another gatekeeper claimed is left to it, never waited for

    def __init__(self, pool: psycopg_pool.ConnectionPool[Any], url: str, clock: Clock) -> None:
        self._pool = pool
        self.url = url
        self.where = redact(url)
        self.clock = clock
        self._signals = _Signals()
        self._waited = 0
        """The signal count when :meth:`wait_changed` last returned: a NOTIFY after it was missed by nobody."""
        self._sizes = (8, 5.0)
        self._lost = False

    @classmethod
    @asynccontextmanager
    async def open(
        cls, url: str, clock: Clock, *, key: str = "[store] url", max_size: int = 8, timeout: float = 5.0
    ) -> AsyncIterator[PgEngine]:
        """Open a pool on ``url`` and check its schema (not set up, or newer: :class:`StoreError`)."""
        check_url(url, key=key)
        pool = _new_pool(url, max_size=max_size, timeout=timeout)
        try:
            await anyio.to_thread.run_sync(functools.partial(pool.open, wait=True, timeout=timeout))
        except _DB_ERRORS as e:
            await anyio.to_thread.run_sync(pool.close)
            raise StoreError(f"{key}: cannot connect to {redact(url)}: {e}") from e
        engine = cls(pool, url, clock)
        engine._sizes = (max_size, timeout)
        try:
            await engine._check_schema()
            yield engine
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(engine._pool.close)

    async def _check_schema(self) -> None:
        def look(c: Tx) -> set[str] | None:
            row = c.execute("SELECT to_regclass(?) IS NOT NULL", (f"{SCHEMA}.schema_migrations",)).fetchone()
            if not row or not row[0]:
                return None
            return {r[0] for r in c.execute("SELECT name FROM schema_migrations").fetchall()}

        done = await self.scan(look)
        if done is None:
            raise StoreError(
                f"{self.where} has no mcp-gatekeeper schema (or this role cannot see it): run"
                " `mcp-gatekeeper db init --url <an admin URL>` once"
            )
        _newer(done, self.where)
        if missing := [name for name, _ in MIGRATIONS if name not in done]:
            raise StoreError(f"{self.where} needs migrations {missing}: run `mcp-gatekeeper db init` as its owner")

    # ------------------------------------------------------------------ the store's Engine

    async def _on_thread(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        if self._lost:  # the server went away: a fresh pool connects at once (the old one backs off, slower and
            # slower, between its attempts)
            self._lost = False
            old, self._pool = self._pool, _new_pool(self.url, max_size=self._sizes[0], timeout=self._sizes[1])
            self._pool.open(wait=False)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(functools.partial(old.close, timeout=0))
        pool = self._pool

        def run() -> T:
            with pool.connection() as conn:
                return fn(conn)

        try:
            # not abandoned on cancellation: a transaction handed over is finished (or rolled back) first
            return await anyio.to_thread.run_sync(run)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout, OSError) as e:
            self._lost = True
            raise StoreError(f"cannot use {self.where}: {e}") from e
        except psycopg.Error as e:
            raise StoreError(f"cannot use {self.where}: {e}") from e

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self._on_thread(lambda conn: [tuple(r) for r in _Tx(conn).execute(sql, params).fetchall()])

    async def scan(self, fn: Callable[[Tx], T]) -> T:
        def body(conn: psycopg.Connection[Any]) -> T:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")  # one snapshot
                return fn(_Tx(conn))

        return await self._on_thread(body)

    async def write(self, fn: Callable[[Tx], T], *, fsync: bool = True) -> T:
        """``fn`` in one transaction after the audit chain's lock; every commit is durable (``fsync`` is the
        server's business: ``synchronous_commit`` stays on)."""

        def body(conn: psycopg.Connection[Any]) -> T:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
                return fn(_Tx(conn))

        return await self._on_thread(body)

    async def run_checkpoints(self) -> None:
        """Upkeep until cancelled: LISTEN for changes (reconnecting after a failure; waiters poll meanwhile)."""
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
            except _DB_ERRORS as e:
                log.debug("LISTEN on %s lost (%s); waiters poll until it is back", self.where, e)
            finally:
                self._signals.listening = False
            await anyio.sleep(delay)  # back-off between reconnection attempts (not a synchronisation)
            delay = min(delay * 2, 2.0)

    async def data_version(self) -> int:
        """Changes whenever anyone records anything: every change of a call appends to the audit chain."""
        rows = await self.read("SELECT COALESCE(MAX(seq), 0) FROM audit")
        return int(rows[0][0])

    async def integrity_check(self) -> str:
        await self.read("SELECT 1")
        return "ok"

    async def wait_changed(self, poll: float = LISTEN_POLL) -> None:
        """Return after the next NOTIFY of a change to any call; at the latest after ``LISTEN_POLL`` seconds while
        the listener is up, or ``poll`` seconds while it is down (the polling fallback). Either way the caller
        reads the state from the table: a NOTIFY is only a hint.

        A NOTIFY that came while the caller was reading (after the previous wait returned) is not lost: the wait
        returns at once, so the caller reads again. (Exact for one watcher per engine, the gate's; another caller
        at worst reads once more, or waits for the next signal as before.)"""
        if self._signals.count == self._waited:
            changed = self._signals.changed
            with anyio.move_on_after(max(poll, LISTEN_POLL) if self._signals.listening else poll):
                await changed.wait()
        self._waited = self._signals.count

    # ------------------------------------------------------------------ decisions (the approval service's role)

    async def decide_call(
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
        sign: Callable[[DecisionFacts], dict[str, Any]] | None = None,
    ) -> str:
        """The one compare-and-set of a decision (``approved``/``rejected``, or ``confirmed``/``review_failed`` for
        a review) with its audit event, through the schema's ``decide`` function (the gatekeeper's role cannot
        call it); returns the new state. Late, expired or stale decisions raise :class:`AlreadyDecidedError`.

        ``sign`` signs what is written (as :meth:`~mcp_gatekeeper.store.calls.Calls.decide` does on SQLite): the
        function stores the signature in the row, and it is in the audit event's detail."""
        now = self.clock.now()
        to_run = None if modified_arguments is None else digest(modified_arguments)
        base = dict(detail or {})
        if reason:
            base["reason"] = reason
        if to_run is not None:
            base["modified_args_digest"] = to_run

        def body(c: Tx) -> tuple[str, str | None]:
            row = c.execute("SELECT args_digest FROM calls WHERE id = ?", (call_id,)).fetchone()
            if row is None:
                raise CallNotFoundError(f"no call with id {call_id!r}")
            held = str(row[0])
            d, seal = dict(base), None
            if sign is not None:  # over the held digest: if the reviewer saw another one, decide writes nothing
                seal = sign(
                    DecisionFacts(call_id=call_id, decision=str(state), args_digest=to_run or held, decided_by=decided_by,
                                  channel=channel, decided_at=now)
                )  # fmt: skip
                d["signature"] = seal
            tail = c.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            prev = str(tail[0]) if tail else GENESIS_HASH
            body = audit_body(
                at=now, call_id=call_id, event=state, actor=decided_by, channel=channel, args_digest=held, detail=d
            )
            out = c.execute(
                "SELECT outcome, state FROM decide(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    call_id, state, expected_digest if expected_digest is not None else held, now, decided_by,
                    channel, reason, None if modified_arguments is None else canonical_json(modified_arguments),
                    canonical_json(d), prev, audit_hash(prev, body), None if seal is None else canonical_json(seal),
                ),
            ).fetchone()  # fmt: skip
            return (str(out[0]), out[1]) if out else ("not_found", None)

        outcome, current = await self.write(body)
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
