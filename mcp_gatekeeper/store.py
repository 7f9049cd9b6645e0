"""The durable store (SQLite): schema, migrations, every SQL statement, CAS transitions, the audit chain.

One connection per process, WAL, ``BEGIN IMMEDIATE`` for writes; every step of a held call is committed
with ``synchronous=FULL`` (fsynced), the records of calls that pass straight through with ``NORMAL``;
WAL checkpoints run on the worker thread every :data:`CHECKPOINT_EVERY` commits, never inside a commit on
the event loop.
Every state change is a compare-and-set ``UPDATE ... WHERE state IN (...)`` and appends a hash-chained
audit event in the same transaction: if the audit write fails, the change does not happen.
Several processes share one file; ``PRAGMA data_version`` tells a process that another one committed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio
import anyio.lowlevel

from mcp_gatekeeper import hostos
from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.errors import AlreadyDecidedError, CallNotFoundError, StoreError
from mcp_gatekeeper.models import (
    GENESIS_HASH,
    AuditEvent,
    CallRecord,
    Lease,
    NewCall,
    Pin,
    State,
    WebSession,
    audit_body,
    audit_hash,
    canonical_json,
    digest,
    new_call_id,
)

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
)

_GROUP_WINDOW = 0.0002
"""An unsynced commit this soon (seconds) after the previous one is grouped with the others of its turn."""


@dataclass
class _Slot:
    """One body's place in a group commit: its result or its error, and when it is known."""

    done: anyio.Event = field(default_factory=anyio.Event)
    value: Any = None
    error: BaseException | None = None


def _commit_group(batch: list[tuple[Callable[[sqlite3.Connection], Any], _Slot]], c: sqlite3.Connection) -> None:
    for _, slot in batch:  # a retry after a busy database starts afresh
        slot.value, slot.error = None, None
    c.execute("BEGIN IMMEDIATE")
    try:
        for fn, slot in batch:
            c.execute("SAVEPOINT one")
            try:
                slot.value = fn(c)
            except Exception as e:
                c.execute("ROLLBACK TO one")
                slot.error = e
            c.execute("RELEASE one")
    except BaseException:
        with contextlib.suppress(*_DB_ERRORS):
            c.execute("ROLLBACK")
        raise
    c.execute("COMMIT")


CHECKPOINT_EVERY = 100
"""Commits between WAL checkpoints: about SQLite's own 1,000-page default at ~10 pages a commit here."""

_COLUMNS = (
    "id, state, upstream, tool, arguments, args_digest, gate, risk, rule, tooldef_hash, summary, effects, "
    "reasons, agent_reason, agent_confidence, client, input_schema, instance_id, created_at, deadline_at, "
    "decided_at, decided_by, channel, reason, modified_arguments, result, error, finished_at, wait_strategy"
)
log = logging.getLogger(__name__)

T = TypeVar("T")
_BUSY_FAST_FAIL = 2.0  # seconds after a write gave up on a locked database during which queued writes fail fast
_DB_ERRORS = (sqlite3.Error, ValueError)  # aiosqlite raises ValueError once its connection is gone
LIVE_OWNER_STATES = (State.PENDING, State.APPROVED, State.FORWARDING, State.ALLOWED)
RELEASED_STATES = (State.PENDING, State.APPROVED)
"""States in which a call whose client was told to retry outlives its process (released: no owner)."""


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _record(row: sqlite3.Row | tuple[Any, ...]) -> CallRecord:
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
        effects=_loads(effects) or {},
        reasons=tuple(_loads(reasons) or ()),
        agent_reason=agent_reason,
        agent_confidence=agent_confidence,
        client=_loads(client) or {},
        input_schema=_loads(input_schema),
        instance_id=instance_id,
        created_at=created_at,
        deadline_at=deadline_at,
        decided_at=decided_at,
        decided_by=decided_by,
        channel=channel,
        reason=reason,
        modified_arguments=_loads(modified_arguments),
        result=_loads(result),
        error=error,
        finished_at=finished_at,
        wait_strategy=wait_strategy,
    )


def default_home() -> Path:
    """``$MCP_GATEKEEPER_HOME``, else the platform's user state dir (or an older location that already
    holds a database, which is said on stderr): :func:`mcp_gatekeeper.hostos.locate_home`."""
    located = hostos.locate_home()
    if located.note:
        log.warning("%s", located.note)
    return located.path


def _pid_alive(pid: int) -> bool:
    return hostos.pid_alive(pid)


class Store:
    """The store of one process. Use :meth:`open` (an async context manager)."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, clock: Clock) -> None:
        self._conn = conn
        self.path = path
        self.clock = clock
        self._commits = 0
        self._checkpoint_due: anyio.Event | None = None
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], _Slot]] | None = None
        self._last_lazy = -1e9
        self._lock = anyio.Lock(fast_acquire=True)  # uncontended (the usual case): no trip round the event loop
        self.instance_id: str | None = None
        self._busy_at = -1e9
        self.fsync_every_call = False
        """Also fsync the records of calls that pass without a hold (``[store] fsync_every_call``)."""

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @asynccontextmanager
    async def open(cls, path: str | os.PathLike[str], clock: Clock) -> AsyncIterator[Store]:
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            existed = p.exists() and p.stat().st_size > 0
            # check_same_thread=False: short non-blocking work also runs on the event loop's thread (see _run)
            conn = await aiosqlite.connect(str(p), isolation_level=None, timeout=5.0, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open the database {p}: {e}") from e
        store = cls(conn, p, clock)
        try:
            await store._setup(existed)
            yield store
        finally:
            with anyio.CancelScope(shield=True):
                if store.instance_id is not None:
                    with contextlib.suppress(StoreError):
                        await store._stop_instance()
                await conn.close()

    async def _setup(self, existed: bool) -> None:
        def setup(c: sqlite3.Connection) -> None:
            # look before touching: a foreign or newer database is refused before anything is written to it
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()}
            if existed and tables and "schema_migrations" not in tables:
                raise StoreError(
                    f"{self.path} is a SQLite database that mcp-gatekeeper did not create; refusing to use it"
                )
            if "schema_migrations" in tables:
                done = {r[0] for r in c.execute("SELECT name FROM schema_migrations").fetchall()}
                if unknown := done - {name for name, _ in MIGRATIONS}:
                    raise StoreError(
                        f"{self.path} was written by a newer mcp-gatekeeper (migrations {sorted(unknown)});"
                        " upgrade to use it"
                    )
            mode = c.execute("PRAGMA journal_mode = WAL").fetchone()
            if not mode or str(mode[0]).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch the database to WAL mode (got {mode})")
            c.execute("PRAGMA foreign_keys = ON")
            # at rest: commits not fsynced (a transaction that must be durable asks for FULL, see _tx) and a
            # zero busy timeout for the work that runs on the event loop (work on the worker thread waits,
            # see _in_thread)
            c.execute("PRAGMA synchronous = NORMAL")

        try:
            await self._in_thread(setup)
            applied = {r[0] for r in await self._read("SELECT name FROM sqlite_master WHERE type='table'")}
            if "schema_migrations" not in applied or {
                r[0] for r in await self._read("SELECT name FROM schema_migrations")
            } != {name for name, _ in MIGRATIONS}:
                await self._migrate()  # writes only when there is something to migrate
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a usable database ({e}); it was left as it is") from e

    async def _migrate(self) -> None:
        def _body(c: sqlite3.Connection) -> Any:
            c.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
            done = {r[0] for r in c.execute("SELECT name FROM schema_migrations").fetchall()}
            known = {name for name, _ in MIGRATIONS}
            if unknown := done - known:
                raise StoreError(
                    f"{self.path} was written by a newer mcp-gatekeeper (migrations {sorted(unknown)}); upgrade to use it"
                )
            for name, sql in MIGRATIONS:
                if name in done:
                    continue
                for statement in (s.strip() for s in sql.split(";")):
                    if statement:
                        c.execute(statement)
                c.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, self.clock.now()))

        await self._tx(_body)

    async def _in_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the connection's own worker thread: one hand-off however many statements it runs."""
        conn = self._conn

        def call() -> T:
            c = conn._conn  # aiosqlite's sqlite3.Connection, used only on its own thread (or under the lock)
            c.execute("PRAGMA busy_timeout = 5000")  # off the event loop, waiting out another writer is fine
            try:
                return fn(c)
            finally:
                c.execute("PRAGMA busy_timeout = 0")

        # aiosqlite runs queued callables on that thread, in order; its public API hops once per statement,
        # which costs a round trip each, so whole transactions go through its (untyped) internal queue
        result: T = await conn._execute(call)  # type: ignore[no-untyped-call]
        return result

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool) -> T:
        """Run ``fn`` under the store's lock: on the event loop's thread when it cannot block, else on the
        connection's worker thread.

        Inline work is what never waits on the disk or on another process: reads, and commits that are not
        fsynced. Handing every statement to a thread costs a GIL hand-over each (about a millisecond here), so
        the hot path of a call that passes through stays on the loop. Inline, the busy timeout is zero: if
        another process holds the write lock, the same work is retried on the worker thread, which waits up to
        the normal busy timeout (5 s) without stalling the loop.
        """
        async with self._lock:
            # another process held the write lock a moment ago and a write of ours already waited it out:
            # the work queued behind that wait gets one non-blocking try and is refused at once if still
            # locked, instead of each waiting the whole busy timeout again
            fail_fast = time.monotonic() - self._busy_at < _BUSY_FAST_FAIL
            inline = inline or fail_fast
            try:
                if inline:
                    # the same connection; never used by two threads at once (the lock). Its busy timeout is
                    # zero at rest, so a locked database fails here at once instead of stalling the loop
                    try:
                        return fn(self._conn._conn)
                    except sqlite3.OperationalError as e:
                        if ("locked" not in str(e) and "busy" not in str(e)) or fail_fast:
                            raise

                try:
                    # shielded: the worker thread finishes what it was handed whatever happens to the caller,
                    # so the lock is held until it has; released early, the next holder would run statements
                    # on the same connection in the middle of this transaction (a cancelled write whose thread
                    # then committed, or a COMMIT with no transaction active)
                    with anyio.CancelScope(shield=True):
                        return await self._in_thread(fn)
                except sqlite3.OperationalError as e:
                    if "locked" in str(e) or "busy" in str(e):
                        self._busy_at = time.monotonic()
                    raise
            except _DB_ERRORS as e:
                raise StoreError(f"cannot use {self.path}: {e}") from e

    async def _tx(self, fn: Callable[[sqlite3.Connection], T], *, fsync: bool = True) -> T:
        """``fn`` inside one ``BEGIN IMMEDIATE`` transaction; any failure rolls back.

        ``fsync=True`` (the default) commits with ``synchronous=FULL``, on the worker thread. ``fsync=False``
        commits with the connection's ``NORMAL``, on the event loop: the write survives a crash of any process
        (it is in the WAL), but a power loss may drop it. Only the records of calls that were never held use
        it (unless ``[store] fsync_every_call``). A database failure becomes :class:`StoreError` (callers fail
        closed).
        """

        def transaction(c: sqlite3.Connection) -> T:
            if fsync:
                c.execute("PRAGMA synchronous = FULL")
            try:
                c.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(c)
                except BaseException:
                    with contextlib.suppress(*_DB_ERRORS):
                        c.execute("ROLLBACK")
                    raise
                c.execute("COMMIT")
            finally:
                if fsync:
                    c.execute("PRAGMA synchronous = NORMAL")
            return out

        if not fsync:
            now = time.monotonic()
            crowded = self._batch is not None or now - self._last_lazy < _GROUP_WINDOW
            self._last_lazy = now
            if crowded:
                return await self._grouped(fn)
        out = await self._run(transaction, inline=not fsync)
        self._committed()
        return out

    def _committed(self) -> None:
        self._commits += 1
        if self._checkpoint_due is not None and self._commits >= CHECKPOINT_EVERY:
            self._checkpoint_due.set()

    async def _grouped(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Group commit: ``fn`` joins the unsynced transactions that arrive in the same turn of the event loop.

        Under load (many calls passing through at once) most of a commit is shared: the pages it appends to
        the WAL, the locking, BEGIN and COMMIT. The first caller of a turn yields once, so that the others
        ready in that turn can join, then commits all of them in one transaction; each body runs in its own
        savepoint, so one that fails is rolled back alone and raises for its own caller only. Shielded: a
        caller that is cancelled while waiting still has its write committed, as with a single commit.
        """
        slot = _Slot()
        batch = self._batch
        leader = batch is None
        if batch is None:
            batch = self._batch = []
        batch.append((fn, slot))
        with anyio.CancelScope(shield=True):
            if leader:
                await anyio.lowlevel.checkpoint()  # the others that are ready this turn join the batch
                self._batch = None
                try:
                    await self._run(functools.partial(_commit_group, batch), inline=True)
                    self._committed()
                except BaseException as e:  # the transaction as a whole failed: every caller in it fails
                    for _, other in batch:
                        other.error = e
                finally:
                    for _, other in batch:
                        other.done.set()
            else:
                await slot.done.wait()
        if slot.error is not None:
            if isinstance(slot.error, _DB_ERRORS):
                raise StoreError(f"cannot use {self.path}: {slot.error}") from slot.error
            if isinstance(slot.error, StoreError):  # the group's own failure: each caller gets its own exception
                raise StoreError(str(slot.error)) from slot.error
            raise slot.error
        out: T = slot.value
        return out

    async def run_checkpoints(self) -> None:
        """Take WAL checkpoints over from commits until cancelled (a long-running process starts this).

        SQLite's default runs the checkpoint inside whichever commit crosses 1,000 WAL pages: for this store
        often a commit on the event loop, which then stalls the loop for the copy and two fsyncs. While this
        runs, commits skip that (``wal_autocheckpoint = 0``) and every CHECKPOINT_EVERY commits it runs one on
        the connection's worker thread under the store's lock: store work waits for it, the loop does not.
        ``PASSIVE`` never waits for other processes; what it cannot copy now is left for the next one.
        """
        due = self._checkpoint_due = anyio.Event()
        try:
            await self._run(lambda c: c.execute("PRAGMA wal_autocheckpoint = 0"), inline=True)  # no I/O
            while True:
                await due.wait()
                due = self._checkpoint_due = anyio.Event()
                self._commits = 0
                try:
                    await self._run(lambda c: c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall(), inline=False)
                except StoreError as e:  # the WAL grows until the next one; nothing is lost
                    log.warning("WAL checkpoint failed: %s", e)
        finally:
            self._checkpoint_due = None
            with anyio.CancelScope(shield=True), contextlib.suppress(StoreError):
                await self._run(lambda c: c.execute("PRAGMA wal_autocheckpoint = 1000"), inline=True)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def read(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in c.execute(sql, params).fetchall()]

        return await self._run(read, inline=True)

    # ------------------------------------------------------------------ audit chain

    def _audit(
        self,
        c: sqlite3.Connection,
        *,
        event: str,
        call_id: str | None,
        actor: str | None = None,
        channel: str | None = None,
        args_digest: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        row = c.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        prev = row[0] if row else GENESIS_HASH
        at = self.clock.now()
        body = audit_body(
            at=at, call_id=call_id, event=event, actor=actor, channel=channel, args_digest=args_digest,
            detail=detail or {},
        )  # fmt: skip
        h = audit_hash(prev, body)
        c.execute(
            "INSERT INTO audit (at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (at, call_id, event, actor, channel, args_digest, canonical_json(detail or {}), prev, h),
        )

    async def audit_events(
        self, *, call_id: str | None = None, limit: int = 1000, before_seq: int | None = None
    ) -> list[AuditEvent]:
        where: list[str] = []
        params: list[Any] = []
        if call_id is not None:
            where.append("call_id = ?")
            params.append(call_id)
        if before_seq is not None:
            where.append("seq < ?")
            params.append(before_seq)
        sql = f"SELECT {_AUDIT_COLUMNS} FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        rows = await self._read(sql, (*params, limit))
        return [_audit_event(r) for r in reversed(rows)]

    async def verify_audit(self) -> tuple[bool, int, str]:
        """Walk the whole chain: (ok, events checked, message)."""

        def walk(c: sqlite3.Connection) -> tuple[bool, int, str]:
            prev = GENESIS_HASH
            count = 0
            for r in c.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY seq"):
                event = _audit_event(tuple(r))
                if event.prev_hash != prev:
                    return (
                        False,
                        count,
                        f"event {event.seq}: its previous-hash link is broken (an event was removed or reordered)",
                    )
                if not event.hash_ok:
                    return False, count, f"event {event.seq}: its content does not match its hash (it was altered)"
                prev = event.hash
                count += 1
            return True, count, f"audit chain intact: {count} events"

        return await self._run(walk, inline=False)  # a long walk: off the event loop

    # ------------------------------------------------------------------ instances (liveness)

    async def register_instance(self, label: str, config_path: str | None = None) -> str:
        iid = new_call_id()[:16]
        now = self.clock.now()

        def _body(c: sqlite3.Connection) -> Any:
            c.execute(
                "INSERT INTO instances (id, pid, host, label, started_at, heartbeat_at, config_path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (iid, os.getpid(), socket.gethostname(), label, now, now, config_path),
            )

        await self._tx(_body)
        self.instance_id = iid
        return iid

    async def heartbeat(self) -> None:
        if self.instance_id is None:
            return

        def _body(c: sqlite3.Connection) -> Any:
            c.execute("UPDATE instances SET heartbeat_at = ? WHERE id = ?", (self.clock.now(), self.instance_id))

        await self._tx(_body)

    async def _stop_instance(self) -> None:
        iid = self.instance_id

        def _body(c: sqlite3.Connection) -> Any:
            self._orphan_calls_of(c, [iid], why="the gatekeeper process holding it shut down")
            c.execute("UPDATE instances SET stopped_at = ? WHERE id = ?", (self.clock.now(), iid))

        await self._tx(_body)

    async def recover_orphans(self, *, stale_after: float = 60.0) -> int:
        """Calls whose owning process is gone: forwarding → ``outcome_unknown``; pending/approved → released if
        their client was told to retry, else ``orphaned`` (see :meth:`_orphan_calls_of`).

        A live neighbour's calls are never touched: an instance is dead only if it stopped, or its pid is gone
        on this host, or (another host) its heartbeat is older than ``stale_after`` seconds.
        """
        now = self.clock.now()
        host = socket.gethostname()
        rows = await self._read(
            "SELECT id, pid, host, heartbeat_at, stopped_at FROM instances WHERE id != ?", (self.instance_id or "",)
        )
        dead = []
        for iid, pid, ihost, hb, stopped in rows:
            if (
                stopped is not None
                or (ihost == host and not _pid_alive(pid))
                or (ihost != host and now - hb > stale_after)
            ):
                dead.append(iid)
        if not dead:
            return 0

        def _body(c: sqlite3.Connection) -> Any:
            n = self._orphan_calls_of(c, dead, why="the gatekeeper process holding it died")
            for iid in dead:
                c.execute("UPDATE instances SET stopped_at = COALESCE(stopped_at, ?) WHERE id = ?", (now, iid))
            c.execute(
                "DELETE FROM instances WHERE stopped_at IS NOT NULL AND stopped_at < ? AND id NOT IN "
                "(SELECT DISTINCT instance_id FROM calls WHERE state IN ('pending','approved','forwarding','allowed') AND instance_id IS NOT NULL)",
                (now - 7 * 86400,),
            )
            return n

        count: int = await self._tx(_body)
        return count

    def _orphan_calls_of(self, c: sqlite3.Connection, instance_ids: Iterable[str | None], *, why: str) -> int:
        """Settle the live calls of processes that are gone; returns how many calls were orphaned or unknown.

        - ``forwarding`` or ``allowed``: it may have reached the upstream, so ``outcome_unknown`` (never re-sent);
        - ``pending`` or ``approved`` whose client was told to retry (``retry_offered``): *released* — it keeps
          its state with no owner, stays decidable until its deadline, and an identical retry of the same
          principal attaches to it from any process (the sweeper of any live process expires it);
        - any other ``pending`` or ``approved``: nobody was told to come back for it, so ``orphaned`` (never runs).
        """
        n = 0
        now = self.clock.now()
        for iid in instance_ids:
            rows = c.execute(
                f"SELECT id, state, args_digest, retry_offered FROM calls WHERE instance_id = ?"
                f" AND state IN ({_q(LIVE_OWNER_STATES)})",
                (iid, *LIVE_OWNER_STATES),
            ).fetchall()
            for cid, state, args_digest, retry_offered in rows:
                if retry_offered and state in RELEASED_STATES:
                    c.execute(
                        "UPDATE calls SET instance_id = NULL, released_from = instance_id"
                        " WHERE id = ? AND state = ? AND instance_id = ?",
                        (cid, state, iid),
                    )
                    self._audit(
                        c, event="released", call_id=cid, actor="gatekeeper", channel="recovery",
                        args_digest=args_digest, detail={"state": state, "why": why},
                    )  # fmt: skip
                    continue
                # forwarding or allowed: it may have reached the upstream, so its outcome is unknown (never re-sent)
                new = State.OUTCOME_UNKNOWN if state in (State.FORWARDING, State.ALLOWED) else State.ORPHANED
                c.execute(
                    "UPDATE calls SET state = ?, error = ?, finished_at = ? WHERE id = ? AND state = ?",
                    (new, why, now, cid, state),
                )
                self._audit(
                    c,
                    event=new.value,
                    call_id=cid,
                    actor="gatekeeper",
                    channel="recovery",
                    args_digest=args_digest,
                    detail={"from": state, "why": why},
                )
                n += 1
        return n

    async def abandon_unclaimed(self, now: float, grace: float) -> list[str]:
        """Released approved calls that no retry came back for within deadline + ``grace``: ``orphaned``."""

        def _body(c: sqlite3.Connection) -> Any:
            rows = c.execute(
                "SELECT id, args_digest FROM calls WHERE state = 'approved' AND instance_id IS NULL"
                " AND deadline_at IS NOT NULL AND deadline_at + ? <= ? LIMIT 1000",
                (grace, now),
            ).fetchall()
            done = []
            why = "approved, but its client never retried the call to collect it"
            for cid, args_digest in rows:
                cur = c.execute(
                    "UPDATE calls SET state = 'orphaned', error = ?, finished_at = ? WHERE id = ? AND state = 'approved'"
                    " AND instance_id IS NULL",
                    (why, now, cid),
                )
                if cur.rowcount == 1:
                    self._audit(
                        c, event="orphaned", call_id=cid, actor="gatekeeper", channel="timeout",
                        args_digest=args_digest, detail={"from": "approved", "why": why},
                    )  # fmt: skip
                    done.append(cid)
            return done

        if not await self._read(
            "SELECT 1 FROM calls WHERE state = 'approved' AND instance_id IS NULL AND deadline_at + ? <= ? LIMIT 1",
            (grace, now),
        ):
            return []  # the usual case: nothing to write
        abandoned: list[str] = await self._tx(_body)
        return abandoned

    # ------------------------------------------------------------------ calls

    async def insert_call(
        self, new: NewCall, *, state: State, deadline_at: float | None = None, reason: str | None = None
    ) -> CallRecord:
        """Record a new call (``allowed``, ``denied`` or ``pending``) and its audit event, atomically."""
        cid = new_call_id()
        now = self.clock.now()
        args_digest = new.args_digest
        finished = now if state == State.DENIED else None

        def _body(c: sqlite3.Connection) -> Any:
            c.execute(
                f"INSERT INTO calls ({_COLUMNS}, session, principal) VALUES ({', '.join('?' * 31)})",
                (
                    cid, state.value, new.upstream, new.tool, canonical_json(new.arguments), args_digest, new.gate,
                    new.risk, new.rule, new.tooldef_hash, new.summary, canonical_json(new.effects),
                    canonical_json(list(new.reasons)), new.agent_reason, new.agent_confidence,
                    canonical_json(new.client), None if new.input_schema is None else canonical_json(new.input_schema),
                    self.instance_id, now, deadline_at, None, None, None, reason, None, None, None, finished,
                    new.wait_strategy, new.client.get("session"), new.client.get("principal"),
                ),
            )  # fmt: skip
            self._audit(
                c,
                event={State.PENDING: "held"}.get(state, state.value),
                call_id=cid,
                actor="policy",
                channel="policy",
                args_digest=args_digest,
                detail={
                    "upstream": new.upstream,
                    "tool": new.tool,
                    "gate": new.gate,
                    "risk": new.risk,
                    "rule": new.rule,
                    "reason": reason,
                    "deadline_at": deadline_at,
                    "client": new.client.get("name"),
                },
            )

        await self._tx(_body, fsync=state == State.PENDING or self.fsync_every_call)
        # the row is exactly what was inserted: build it instead of reading and re-parsing it
        return CallRecord(
            id=cid, state=state, upstream=new.upstream, tool=new.tool, arguments=new.arguments,
            args_digest=args_digest, gate=new.gate, risk=new.risk, created_at=now, rule=new.rule,
            tooldef_hash=new.tooldef_hash, summary=new.summary, effects=dict(new.effects), reasons=tuple(new.reasons),
            agent_reason=new.agent_reason, agent_confidence=new.agent_confidence, client=dict(new.client),
            input_schema=new.input_schema, instance_id=self.instance_id, deadline_at=deadline_at, reason=reason,
            finished_at=finished, wait_strategy=new.wait_strategy,
        )  # fmt: skip

    async def get(self, call_id: str) -> CallRecord:
        rows = await self._read(f"SELECT {_COLUMNS} FROM calls WHERE id = ?", (call_id,))
        if not rows:
            raise CallNotFoundError(f"no call with id {call_id!r}")
        return _record(rows[0])

    async def find(self, prefix: str) -> CallRecord:
        """The call whose id is ``prefix`` or starts with it; an ambiguous prefix is refused."""
        prefix = prefix.strip().lower()
        if not prefix or any(ch not in "0123456789abcdef" for ch in prefix):
            raise CallNotFoundError(f"no call with id {prefix!r} (ids are lowercase hex)")
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM calls WHERE id >= ? AND id < ? ORDER BY id LIMIT 2", (prefix, prefix + "g")
        )
        if not rows:
            raise CallNotFoundError(f"no call with id {prefix!r}")
        if len(rows) > 1:
            raise CallNotFoundError(f"id prefix {prefix!r} is ambiguous; type more characters")
        return _record(rows[0])

    async def list_calls(
        self,
        *,
        states: Sequence[str] | None = None,
        upstream: str | None = None,
        tool: str | None = None,
        decided_by: str | None = None,
        text: str | None = None,
        limit: int = 100,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[CallRecord]:
        where: list[str] = []
        params: list[Any] = []
        if states:
            where.append(f"state IN ({_q(states)})")
            params.extend(states)
        for col, val in (("upstream", upstream), ("tool", tool), ("decided_by", decided_by)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if text:
            where.append(
                "(summary LIKE ? ESCAPE '\\' OR arguments LIKE ? ESCAPE '\\' OR reason LIKE ? ESCAPE '\\' OR tool LIKE ? ESCAPE '\\')"
            )
            like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            params.extend([like] * 4)
        if before is not None:
            op = ">" if oldest_first else "<"
            where.append(f"(created_at, id) {op} (?, ?)")
            params.extend(before)
        order = "ASC" if oldest_first else "DESC"
        sql = f"SELECT {_COLUMNS} FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY created_at {order}, id {order} LIMIT ?"
        params.append(limit)
        return [_record(r) for r in await self._read(sql, params)]

    async def states_of(self, ids: Sequence[str]) -> dict[str, State]:
        if not ids:
            return {}
        rows = await self._read(f"SELECT id, state FROM calls WHERE id IN ({_q(ids)})", list(ids))
        return {r[0]: State(r[1]) for r in rows}

    async def decide(
        self,
        call_id: str,
        *,
        approve: bool,
        decided_by: str,
        channel: str,
        reason: str | None,
        modified_arguments: dict[str, Any] | None,
        expected_digest: str | None,
        detail: dict[str, Any] | None = None,
    ) -> CallRecord:
        """The one compare-and-set of a human decision: first writer wins, late or stale writers lose."""
        now = self.clock.now()
        new_state = State.APPROVED if approve else State.REJECTED

        def _body(c: sqlite3.Connection) -> Any:
            row = c.execute("SELECT state, args_digest, deadline_at FROM calls WHERE id = ?", (call_id,)).fetchone()
            if row is None:
                raise CallNotFoundError(f"no call with id {call_id!r}")
            state, args_digest, deadline_at = row
            if state != State.PENDING:
                raise AlreadyDecidedError(f"call {call_id[:12]} is already {state}", state=state, why="decided")
            if deadline_at is not None and now >= deadline_at:
                raise AlreadyDecidedError(
                    f"call {call_id[:12]} has expired (its deadline passed)", state=state, why="expired"
                )
            if expected_digest is not None and expected_digest != args_digest:
                raise AlreadyDecidedError(
                    f"call {call_id[:12]}: the arguments you reviewed are not the ones held (stale digest); reload and review again",
                    state=state,
                    why="stale_digest",
                )
            cur = c.execute(
                "UPDATE calls SET state = ?, decided_at = ?, decided_by = ?, channel = ?, reason = ?, modified_arguments = ?"
                " WHERE id = ? AND state = 'pending' AND args_digest = ?",
                (
                    new_state, now, decided_by, channel, reason,
                    None if modified_arguments is None else canonical_json(modified_arguments),
                    call_id, args_digest,
                ),
            )  # fmt: skip
            if cur.rowcount != 1:
                raise AlreadyDecidedError(f"call {call_id[:12]} was decided by someone else", why="decided")
            d = dict(detail or {})
            if reason:
                d["reason"] = reason
            if modified_arguments is not None:
                d["modified_args_digest"] = digest(modified_arguments)
            self._audit(
                c,
                event="approved" if approve else "rejected",
                call_id=call_id,
                actor=decided_by,
                channel=channel,
                args_digest=args_digest,
                detail=d,
            )
            return _record(c.execute(f"SELECT {_COLUMNS} FROM calls WHERE id = ?", (call_id,)).fetchone())

        decided: CallRecord = await self._tx(_body)
        return decided

    async def transition(
        self,
        call_id: str,
        from_states: Sequence[State],
        to_state: State,
        *,
        event: str | None = None,
        actor: str = "gatekeeper",
        channel: str = "proxy",
        detail: dict[str, Any] | None = None,
        **fields: Any,
    ) -> CallRecord | None:
        """CAS ``from_states → to_state`` setting ``fields``; ``None`` if the call was not in ``from_states``."""
        allowed = {
            "result", "error", "finished_at", "reason", "decided_at", "decided_by", "wait_strategy",
            "capture", "deadline_at", "decision_channel", "instance_id",
        }  # fmt: skip
        if bad := set(fields) - allowed:
            raise ValueError(f"cannot set {bad}")
        sets = ["state = ?"]
        params: list[Any] = [to_state.value]
        for k, v in fields.items():
            col = "channel" if k == "decision_channel" else k  # `channel` names the audit event's channel
            sets.append(f"{col} = ?")
            params.append(canonical_json(v) if k in ("result", "capture") and v is not None else v)

        def _body(c: sqlite3.Connection) -> Any:
            cur = c.execute(
                f"UPDATE calls SET {', '.join(sets)} WHERE id = ? AND state IN ({_q(from_states)})",
                (*params, call_id, *from_states),
            )
            if cur.rowcount != 1:
                return None
            rec = _record(c.execute(f"SELECT {_COLUMNS} FROM calls WHERE id = ?", (call_id,)).fetchone())
            self._audit(
                c,
                event=event or to_state.value,
                call_id=call_id,
                actor=actor,
                channel=channel,
                args_digest=rec.args_digest,
                detail=detail or {},
            )
            return rec

        changed: CallRecord | None = await self._tx(_body)
        return changed

    async def finish_call(
        self,
        call_id: str,
        from_state: State,
        to_state: State,
        *,
        result: dict[str, Any] | None,
        error: str | None,
        detail: dict[str, Any],
        args_digest: str,
    ) -> bool:
        """CAS ``from_state → to_state`` recording how a forwarded call ended (no read-back: nobody needs it).

        ``args_digest`` is the call's own (the caller holds its record); it goes into the audit event.
        """
        now = self.clock.now()

        def _body(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE calls SET state = ?, result = ?, error = ?, finished_at = ? WHERE id = ? AND state = ?",
                (to_state.value, None if result is None else canonical_json(result), error, now, call_id, from_state),
            )
            if cur.rowcount != 1:
                return False
            self._audit(
                c, event=to_state.value, call_id=call_id, actor="gatekeeper", channel="proxy",
                args_digest=args_digest, detail=detail,
            )  # fmt: skip
            return True

        # the outcome of a call that was never held is bookkeeping: fsynced lazily (see _tx)
        lazy = from_state == State.ALLOWED and not self.fsync_every_call
        done: bool = await self._tx(_body, fsync=not lazy)
        return done

    async def find_retry(
        self, upstream: str, tool: str, args_digest: str, *, now: float, grace: float, principal: str | None
    ) -> CallRecord | None:
        """The held call an identical retry attaches to, whichever process holds it (or none: released).

        Same principal (the client identity, see :mod:`mcp_gatekeeper.principals`), upstream, tool and
        arguments digest; a call whose client was told to retry (``retry_offered``); still within its deadline
        plus ``grace``. Without a principal nothing attaches: a call is never attached to on behalf of another.
        """
        if not principal:
            return None
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM calls WHERE principal = ? AND upstream = ? AND tool = ? AND args_digest = ?"
            " AND retry_offered = 1 AND deadline_at + ? > ? AND state NOT IN ('cancelled', 'orphaned')"
            " ORDER BY created_at DESC LIMIT 1",
            (principal, upstream, tool, args_digest, grace, now),
        )
        return _record(rows[0]) if rows else None

    async def find_for(self, prefix: str, *, principal: str | None, upstreams: Sequence[str]) -> CallRecord:
        """Like :meth:`find`, but only among the calls of ``principal`` to ``upstreams``.

        Another principal's call is "not found", exactly as a call that does not exist (an ambiguous prefix is
        judged among this principal's calls only, so it does not reveal that other calls exist either).
        """
        prefix = prefix.strip().lower()
        if not prefix or any(ch not in "0123456789abcdef" for ch in prefix) or not principal or not upstreams:
            raise CallNotFoundError(f"no call with id {prefix!r}")
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM calls WHERE id >= ? AND id < ? AND principal = ? AND upstream IN ({_q(upstreams)})"
            " ORDER BY id LIMIT 2",
            (prefix, prefix + "g", principal, *upstreams),
        )
        if not rows:
            raise CallNotFoundError(f"no call with id {prefix!r}")
        if len(rows) > 1:
            raise CallNotFoundError(f"id prefix {prefix!r} is ambiguous; type more characters")
        return _record(rows[0])

    async def principal_of(self, call_id: str) -> str | None:
        rows = await self._read("SELECT principal FROM calls WHERE id = ?", (call_id,))
        return rows[0][0] if rows else None

    async def mark_retry_offered(self, call_id: str, *, strategy: str) -> None:
        """The client was answered "still waiting, retry": a later identical call attaches to this one."""

        def _body(c: sqlite3.Connection) -> Any:
            c.execute("UPDATE calls SET retry_offered = 1, wait_strategy = ? WHERE id = ?", (strategy, call_id))
            self._audit(
                c, event="retry_offered", call_id=call_id, actor="gatekeeper", channel="proxy",
                detail={"strategy": strategy},
            )  # fmt: skip

        await self._tx(_body)

    async def consume_state(self, nonce: str, call_id: str) -> bool:
        """Record a requestState nonce as used; False if it was used before (a replay)."""

        def _body(c: sqlite3.Connection) -> Any:
            cur = c.execute(
                "INSERT OR IGNORE INTO used_states (nonce, call_id, used_at) VALUES (?, ?, ?)",
                (nonce, call_id, self.clock.now()),
            )
            return cur.rowcount == 1

        used: bool = await self._tx(_body)
        return used

    async def verify_decision(self, call_id: str) -> str | None:
        """Check that an approval was made through ``decide`` and recorded in the audit chain.

        Returns ``None`` if it was, else why not. A row set to ``approved`` by writing the database directly
        (not through the gatekeeper) has no such event, so it is never executed.
        """
        rows = await self._read(
            f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE call_id = ? AND event = 'approved' ORDER BY seq", (call_id,)
        )
        if len(rows) != 1:
            return f"{len(rows)} approval events in the audit log for this call (expected exactly one)"
        event = _audit_event(rows[0])
        if not event.hash_ok:
            return "the approval's audit event does not match its hash"
        prev = await self._read("SELECT hash FROM audit WHERE seq < ? ORDER BY seq DESC LIMIT 1", (event.seq,))
        if (prev[0][0] if prev else GENESIS_HASH) != event.prev_hash:
            return "the approval's audit event is not linked into the chain"
        rec = await self.get(call_id)
        if event.args_digest != rec.args_digest:
            return "the approval was given for different arguments"
        modified = event.detail.get("modified_args_digest")
        if (rec.modified_arguments is None) != (modified is None) or (
            rec.modified_arguments is not None and digest(rec.modified_arguments) != modified
        ):
            return "the modified arguments differ from the ones the reviewer approved"
        return None

    async def live_config_paths(self) -> list[str]:
        """The config files of the gatekeeper processes that are running (their security settings apply to all)."""
        rows = await self._read(
            "SELECT DISTINCT config_path FROM instances WHERE stopped_at IS NULL AND config_path IS NOT NULL"
        )
        return [r[0] for r in rows]

    async def holder_instance(self, call_id: str) -> str | None:
        """The process that holds a call, or (a released call) the one that held it last."""
        rows = await self._read("SELECT COALESCE(instance_id, released_from) FROM calls WHERE id = ?", (call_id,))
        return rows[0][0] if rows else None

    async def instance_config_path(self, instance_id: str | None) -> str | None:
        """The config file the process that holds a call was started with (the CLI decides under the same policy)."""
        if instance_id is None:
            return None
        rows = await self._read("SELECT config_path FROM instances WHERE id = ?", (instance_id,))
        return rows[0][0] if rows else None

    async def note_problem(self, detail: dict[str, Any]) -> None:
        """Record a set-up problem this process found at start (audited; shown on the page while it runs)."""
        actor = f"instance:{self.instance_id}" if self.instance_id else None

        def _body(c: sqlite3.Connection) -> Any:
            self._audit(c, event="config_problem", call_id=None, actor=actor, channel="startup", detail=detail)

        await self._tx(_body)

    async def live_problems(self) -> list[AuditEvent]:
        """The set-up problems noted by gatekeeper processes that are still running, oldest first."""
        rows = await self._read(
            f"SELECT {', '.join('a.' + c.strip() for c in _AUDIT_COLUMNS.split(','))} FROM audit a"
            " JOIN instances i ON a.actor = 'instance:' || i.id"
            " WHERE a.call_id IS NULL AND a.event = 'config_problem' AND i.stopped_at IS NULL ORDER BY a.seq"
        )
        return [_audit_event(r) for r in rows]

    # ------------------------------------------------------------------ escalation, sweeping, review, compensation

    async def due_pending(self, instance_id: str | None, now: float) -> list[tuple[CallRecord, int]]:
        """This process's pending calls and the released ones (no owner), with their escalation level, oldest first.

        Every live process sweeps the released calls too: expiry and escalation are compare-and-sets, so two
        sweepers never both act.
        """
        rows = await self._read(
            f"SELECT {_COLUMNS}, escalation FROM calls WHERE state = 'pending' AND (instance_id IS ? OR instance_id IS NULL)"
            " ORDER BY created_at LIMIT 1000",
            (instance_id,),
        )
        return [(_record(r[:-1]), int(r[-1])) for r in rows]

    async def escalate(self, call_id: str, *, level: int, deadline_at: float | None, channels: list[str]) -> bool:
        """Record escalation step ``level`` (once, whoever fires it first) and maybe shorten the deadline."""

        def _body(c: sqlite3.Connection) -> Any:
            cur = c.execute(
                "UPDATE calls SET escalation = ?, deadline_at = CASE WHEN ? IS NOT NULL AND ? < deadline_at THEN ? ELSE"
                " deadline_at END WHERE id = ? AND state = 'pending' AND escalation < ?",
                (level, deadline_at, deadline_at, deadline_at, call_id, level),
            )
            if cur.rowcount != 1:
                return False
            self._audit(
                c, event="escalated", call_id=call_id, actor="gatekeeper", channel="timeout",
                detail={"level": level, "channels": channels, "deadline_at": deadline_at},
            )  # fmt: skip
            return True

        done: bool = await self._tx(_body)
        return done

    async def due_reviews(self, now: float) -> list[CallRecord]:
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM calls WHERE state = 'under_review' AND deadline_at <= ? LIMIT 1000", (now,)
        )
        return [_record(r) for r in rows]

    async def compensations_due(self, upstreams: Sequence[str]) -> list[tuple[CallRecord, int]]:
        """Failed reviews whose compensation has not run yet, for these upstreams."""
        if not upstreams:
            return []
        rows = await self._read(
            f"SELECT {_COLUMNS}, attempts FROM calls WHERE state = 'review_failed' AND upstream IN ({_q(upstreams)})"
            " ORDER BY created_at LIMIT 100",
            list(upstreams),
        )
        return [(_record(r[:-1]), int(r[-1])) for r in rows]

    async def claim_compensation(self, call_id: str) -> bool:
        """CAS review_failed → rolling_back: exactly one process runs a compensation attempt."""

        def _body(c: sqlite3.Connection) -> Any:
            cur = c.execute(
                "UPDATE calls SET state = 'rolling_back', attempts = attempts + 1 WHERE id = ? AND state = 'review_failed'",
                (call_id,),
            )
            if cur.rowcount != 1:
                return False
            self._audit(c, event="rolling_back", call_id=call_id, actor="gatekeeper", channel="compensation")
            return True

        done: bool = await self._tx(_body)
        return done

    async def capture_of(self, call_id: str) -> Any:
        rows = await self._read("SELECT capture FROM calls WHERE id = ?", (call_id,))
        return _loads(rows[0][0]) if rows else None

    # ------------------------------------------------------------------ tool-definition pins

    async def check_pins(self, upstream: str, tools: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Pin]:
        """Pin tools seen for the first time; record a changed definition as pending (quarantined).

        Reads first: when nothing is new or changed (the usual case) nothing is written.
        """
        now = self.clock.now()
        current = {p.tool: p for p in await self.pins(upstream=upstream)}
        if all(
            name in current
            and ((h == current[name].hash and current[name].pending_hash is None) or h == current[name].pending_hash)
            for name, (h, _definition) in tools.items()
        ):
            return current

        def _body(c: sqlite3.Connection) -> Any:
            rows = c.execute(f"SELECT {_PIN_COLUMNS} FROM pins WHERE upstream = ?", (upstream,)).fetchall()
            pins = {r[1]: _pin(tuple(r)) for r in rows}
            for name, (h, definition) in tools.items():
                pin = pins.get(name)
                if pin is None:
                    c.execute(
                        "INSERT INTO pins (upstream, tool, hash, definition, pinned_at, pinned_by) VALUES (?, ?, ?, ?, ?, ?)",
                        (upstream, name, h, canonical_json(definition), now, "first-sight"),
                    )
                    self._audit(
                        c, event="pinned", call_id=None, actor="gatekeeper", channel="pinning",
                        detail={"upstream": upstream, "tool": name, "hash": h},
                    )  # fmt: skip
                elif h != pin.hash and h != pin.pending_hash:
                    c.execute(
                        "UPDATE pins SET pending_hash = ?, pending_definition = ?, changed_at = ? WHERE upstream = ? AND tool = ?",
                        (h, canonical_json(definition), now, upstream, name),
                    )
                    self._audit(
                        c, event="definition_changed", call_id=None, actor="upstream", channel="pinning",
                        detail={"upstream": upstream, "tool": name, "pinned": pin.hash, "now": h},
                    )  # fmt: skip
                elif h == pin.hash and pin.pending_hash is not None:
                    c.execute(
                        "UPDATE pins SET pending_hash = NULL, pending_definition = NULL, changed_at = NULL"
                        " WHERE upstream = ? AND tool = ?",
                        (upstream, name),
                    )
            return c.execute(f"SELECT {_PIN_COLUMNS} FROM pins WHERE upstream = ?", (upstream,)).fetchall()

        rows = await self._tx(_body)
        return {r[1]: _pin(tuple(r)) for r in rows}

    async def pins(self, *, upstream: str | None = None, quarantined_only: bool = False) -> list[Pin]:
        sql = f"SELECT {_PIN_COLUMNS} FROM pins"
        params: list[Any] = []
        where = []
        if upstream is not None:
            where.append("upstream = ?")
            params.append(upstream)
        if quarantined_only:
            where.append("pending_hash IS NOT NULL")
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_pin(r) for r in await self._read(sql + " ORDER BY upstream, tool", params)]

    async def repin(self, upstream: str, tool: str, *, by: str, channel: str) -> Pin:
        """A human accepts the changed definition: it becomes the pin."""

        def _body(c: sqlite3.Connection) -> Any:
            row = c.execute(
                f"SELECT {_PIN_COLUMNS} FROM pins WHERE upstream = ? AND tool = ?", (upstream, tool)
            ).fetchone()
            if row is None:
                raise CallNotFoundError(f"no pinned tool {upstream}/{tool}")
            pin = _pin(tuple(row))
            if pin.pending_hash is None or pin.pending_definition is None:
                raise AlreadyDecidedError(f"{upstream}/{tool} is not quarantined; nothing to re-pin", why="decided")
            c.execute(
                "UPDATE pins SET hash = pending_hash, definition = pending_definition, pinned_at = ?, pinned_by = ?,"
                " pending_hash = NULL, pending_definition = NULL, changed_at = NULL WHERE upstream = ? AND tool = ?",
                (self.clock.now(), by, upstream, tool),
            )
            self._audit(
                c, event="repinned", call_id=None, actor=by, channel=channel,
                detail={"upstream": upstream, "tool": tool, "old": pin.hash, "new": pin.pending_hash},
            )  # fmt: skip

        await self._tx(_body)
        (new,) = [p for p in await self.pins(upstream=upstream) if p.tool == tool]
        return new

    # ------------------------------------------------------------------ leases

    async def create_lease(
        self,
        *,
        upstream: str,
        tool: str,
        tooldef_hash: str | None,
        envelope: dict[str, Any],
        created_by: str,
        channel: str,
        source_call: str | None,
        expires_at: float | None,
        calls: int | None,
    ) -> Lease:
        lid = "l" + new_call_id()[:15]
        now = self.clock.now()

        def _body(c: sqlite3.Connection) -> Any:
            c.execute(
                "INSERT INTO leases (id, upstream, tool, tooldef_hash, envelope, created_at, created_by, source_call,"
                " expires_at, calls_left) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    lid,
                    upstream,
                    tool,
                    tooldef_hash,
                    canonical_json(envelope),
                    now,
                    created_by,
                    source_call,
                    expires_at,
                    calls,
                ),
            )
            self._audit(
                c, event="lease_granted", call_id=source_call, actor=created_by, channel=channel,
                detail={"lease": lid, "upstream": upstream, "tool": tool, "envelope": envelope,
                        "expires_at": expires_at, "calls": calls},
            )  # fmt: skip

        await self._tx(_body)
        return await self.lease(lid)

    async def lease(self, lease_id: str) -> Lease:
        rows = await self._read(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE id = ?", (lease_id,))
        if not rows:
            raise CallNotFoundError(f"no lease {lease_id!r}")
        return _lease(rows[0])

    async def leases(
        self, *, active_at: float | None = None, upstream: str | None = None, tool: str | None = None
    ) -> list[Lease]:
        sql = f"SELECT {_LEASE_COLUMNS} FROM leases"
        where: list[str] = []
        params: list[Any] = []
        if active_at is not None:
            where.append(
                "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?) AND (calls_left IS NULL OR calls_left > 0)"
            )
            params.append(active_at)
        for col, val in (("upstream", upstream), ("tool", tool)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_lease(r) for r in await self._read(sql + " ORDER BY created_at DESC LIMIT 1000", params)]

    async def revoke_lease(self, lease_id: str, *, by: str, channel: str) -> Lease:
        def _body(c: sqlite3.Connection) -> Any:
            cur = c.execute(
                "UPDATE leases SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at IS NULL",
                (self.clock.now(), by, lease_id),
            )
            if cur.rowcount != 1:
                exists = c.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone()
                if exists is None:
                    raise CallNotFoundError(f"no lease {lease_id!r}")
                raise AlreadyDecidedError(f"lease {lease_id} is already revoked", why="decided")
            self._audit(c, event="lease_revoked", call_id=None, actor=by, channel=channel, detail={"lease": lease_id})

        await self._tx(_body)
        return await self.lease(lease_id)

    async def use_lease(self, lease_id: str, *, call_id: str | None) -> bool:
        """Spend one use of a lease (CAS): False if it expired, ran out or was revoked meanwhile."""
        now = self.clock.now()

        def _body(c: sqlite3.Connection) -> Any:
            cur = c.execute(
                "UPDATE leases SET used = used + 1, calls_left = CASE WHEN calls_left IS NULL THEN NULL ELSE calls_left - 1 END"
                " WHERE id = ? AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"
                " AND (calls_left IS NULL OR calls_left > 0)",
                (lease_id, now),
            )
            if cur.rowcount != 1:
                return False
            self._audit(
                c, event="lease_used", call_id=call_id, actor="lease", channel="lease", detail={"lease": lease_id}
            )
            return True

        done: bool = await self._tx(_body)
        return done

    # ------------------------------------------------------------------ the approval page: where, who, login codes

    async def serving_page(self, url: str | None) -> None:
        """Record that this process serves the approval page at ``url`` (``None``: no longer)."""

        def _body(c: sqlite3.Connection) -> Any:
            c.execute("UPDATE instances SET ui_url = ? WHERE id = ?", (url, self.instance_id))

        if self.instance_id is not None:
            await self._tx(_body)

    async def page_urls(self) -> list[str]:
        """Where the running gatekeeper processes serve the approval page (``http://HOST:PORT``), newest first.

        A process of this host whose pid is gone is left out even before anyone has marked it stopped.
        """
        rows = await self._read(
            "SELECT ui_url, pid, host FROM instances WHERE stopped_at IS NULL AND ui_url IS NOT NULL"
            " ORDER BY started_at DESC"
        )
        here = socket.gethostname()
        return list(dict.fromkeys(url for url, pid, host in rows if host != here or _pid_alive(int(pid))))

    async def add_login_code(self, code_hash: str, *, label: str, expires_at: float) -> None:
        """Store a one-time login code (only its hash); codes past their expiry are dropped on the way."""
        now = self.clock.now()

        def _body(c: sqlite3.Connection) -> Any:
            c.execute("DELETE FROM login_codes WHERE expires_at < ?", (now - 86400,))
            c.execute(
                "INSERT INTO login_codes (code_hash, label, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (code_hash, label, now, expires_at),
            )

        await self._tx(_body)

    async def redeem_login_code(
        self, code_hash: str, session: WebSession, *, secret_hash: str, key_hash: str
    ) -> WebSession | None:
        """Spend a login code (compare-and-set: once, before it expires) and open ``session`` for it.

        The session takes the code's label. ``None`` if the code is unknown, used or expired.
        """
        now = self.clock.now()

        def _body(c: sqlite3.Connection) -> Any:
            rows = c.execute(
                "UPDATE login_codes SET used_at = ? WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?"
                " RETURNING label",
                (now, code_hash, now),
            ).fetchall()  # all: a RETURNING statement left unfinished would block the COMMIT
            if not rows:
                return None
            row = rows[0]
            s = session
            # sessions over for 30 days are forgotten (their start and end stay in the audit log)
            c.execute(
                "DELETE FROM web_sessions WHERE MIN(COALESCE(ended_at, ends_at), expires_at, ends_at) < ?",
                (now - 30 * 86400,),
            )
            c.execute(
                "INSERT INTO web_sessions (id, secret_hash, key_hash, label, host, user_agent, created_at,"
                " last_seen_at, expires_at, ends_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (s.id, secret_hash, key_hash, row[0], s.host, s.user_agent, now, now, s.expires_at, s.ends_at),
            )
            self._audit(
                c, event="session_started", call_id=None, actor=f"web:{row[0]}", channel="web",
                detail={"session": s.id, "host": s.host, "user_agent": s.user_agent},
            )  # fmt: skip
            return True

        if not await self._tx(_body):
            return None
        return await self.web_session(session.id)

    async def web_session(self, session_id: str) -> WebSession | None:
        rows = await self._read(f"SELECT {_SESSION_COLUMNS} FROM web_sessions WHERE id = ?", (session_id,))
        return _web_session(rows[0]) if rows else None

    async def session_hashes(self, session_id: str) -> tuple[WebSession, str, str] | None:
        """A session with the hashes of its cookie secret and its page key (for the page's guard only)."""
        rows = await self._read(
            f"SELECT {_SESSION_COLUMNS}, secret_hash, key_hash FROM web_sessions WHERE id = ?", (session_id,)
        )
        return (_web_session(rows[0]), rows[0][-2], rows[0][-1]) if rows else None

    async def touch_session(self, session_id: str, *, expires_at: float) -> None:
        """Slide a live session's idle expiry forward (never past its end, never revives an ended one)."""
        now = self.clock.now()

        def _body(c: sqlite3.Connection) -> Any:
            c.execute(
                "UPDATE web_sessions SET last_seen_at = ?, expires_at = MIN(?, ends_at)"
                " WHERE id = ? AND ended_at IS NULL AND expires_at > ?",
                (now, expires_at, session_id, now),
            )

        await self._tx(_body, fsync=False)

    async def web_sessions(self, *, alive_only: bool = True) -> list[WebSession]:
        now = self.clock.now()
        sql = f"SELECT {_SESSION_COLUMNS} FROM web_sessions"
        params: tuple[Any, ...] = ()
        if alive_only:
            sql += " WHERE ended_at IS NULL AND expires_at > ? AND ends_at > ?"
            params = (now, now)
        return [_web_session(r) for r in await self._read(sql + " ORDER BY created_at DESC LIMIT 500", params)]

    async def end_sessions(self, session_ids: Sequence[str] | None, *, by: str, channel: str, why: str) -> list[str]:
        """End live sessions (``None``: every live one): logout or revocation. The ids actually ended."""
        now = self.clock.now()

        def _body(c: sqlite3.Connection) -> Any:
            if session_ids is None:
                rows = c.execute("SELECT id FROM web_sessions WHERE ended_at IS NULL").fetchall()
                ids = [r[0] for r in rows]
            else:
                ids = list(session_ids)
            ended = []
            for sid in ids:
                cur = c.execute(
                    "UPDATE web_sessions SET ended_at = ?, ended_by = ?, ended_why = ? WHERE id = ? AND ended_at IS NULL",
                    (now, by, why, sid),
                )
                if cur.rowcount == 1:
                    ended.append(sid)
                    self._audit(
                        c, event="session_ended", call_id=None, actor=by, channel=channel,
                        detail={"session": sid, "why": why},
                    )  # fmt: skip
            return ended

        ended: list[str] = await self._tx(_body)
        return ended

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only query for reports (stats pages). Writes are refused."""
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            raise StoreError("Store.query is for reads only")
        return await self._read(sql, params)

    async def data_version(self) -> int:
        """Changes whenever another connection (another process) commits."""
        rows = await self._read("PRAGMA data_version")
        return int(rows[0][0])

    async def integrity_check(self) -> str:
        rows = await self._read("PRAGMA integrity_check")
        return str(rows[0][0]) if rows else "no answer"

    async def counts(self) -> dict[str, int]:
        rows = await self._read("SELECT state, COUNT(*) FROM calls GROUP BY state")
        return {r[0]: r[1] for r in rows}


_AUDIT_COLUMNS = "seq, at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash"
_PIN_COLUMNS = "upstream, tool, hash, definition, pinned_at, pinned_by, pending_hash, pending_definition, changed_at"
_LEASE_COLUMNS = (
    "id, upstream, tool, tooldef_hash, envelope, created_at, created_by, source_call, expires_at, calls_left,"
    " revoked_at, revoked_by, used"
)


_SESSION_COLUMNS = (
    "id, label, host, user_agent, created_at, last_seen_at, expires_at, ends_at, ended_at, ended_by, ended_why"
)


def _web_session(r: tuple[Any, ...]) -> WebSession:
    return WebSession(*r[:11])


def _audit_event(r: tuple[Any, ...]) -> AuditEvent:
    return AuditEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8], r[9])


def _pin(r: tuple[Any, ...]) -> Pin:
    return Pin(
        upstream=r[0], tool=r[1], hash=r[2], definition=json.loads(r[3]), pinned_at=r[4], pinned_by=r[5],
        pending_hash=r[6], pending_definition=_loads(r[7]), changed_at=r[8],
    )  # fmt: skip


def _lease(r: tuple[Any, ...]) -> Lease:
    return Lease(
        id=r[0], upstream=r[1], tool=r[2], tooldef_hash=r[3], envelope=json.loads(r[4]), created_at=r[5],
        created_by=r[6], source_call=r[7], expires_at=r[8], calls_left=r[9], revoked_at=r[10], revoked_by=r[11],
        used=r[12],
    )  # fmt: skip


def _q(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))
