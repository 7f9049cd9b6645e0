"""The SQLite engine: one connection per process, its transactions, the write path, checkpoints, migrations.

WAL, ``BEGIN IMMEDIATE`` for writes; every step of a held call is committed with ``synchronous=FULL``
(fsynced), the records of calls that pass straight through with ``NORMAL``; WAL checkpoints run on the worker
thread every :data:`CHECKPOINT_EVERY` commits, never inside a commit on the event loop. Several processes share
one file; ``PRAGMA data_version`` tells a process that another one committed.

The repositories (calls, audit, instances, ...) see only :class:`Engine`: a read, a write transaction whose
body gets a :class:`Tx`, and a long read off the event loop. That protocol is the seam a second backend
implements; nothing outside this module touches ``sqlite3`` or ``aiosqlite`` directly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import aiosqlite
import anyio
import anyio.lowlevel

from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.errors import StoreError
from mcp_gatekeeper.signatures import DecisionFacts
from mcp_gatekeeper.store.schema import MIGRATIONS

log = logging.getLogger(__name__)

T = TypeVar("T")

_GROUP_WINDOW = 0.0002
"""An unsynced commit this soon (seconds) after the previous one is grouped with the others of its turn."""
CHECKPOINT_EVERY = 100
"""Commits between WAL checkpoints: about SQLite's own 1,000-page default at ~10 pages a commit here."""
_BUSY_FAST_FAIL = 2.0  # seconds after a write gave up on a locked database during which queued writes fail fast
_DB_ERRORS = (sqlite3.Error, ValueError)  # aiosqlite raises ValueError once its connection is gone


class Cursor(Protocol):
    """What a statement inside a transaction gives back."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    """A write transaction's handle: the body of :meth:`Engine.write` runs its statements through it.

    Parameters are positional ``?`` placeholders; a row is a sequence of column values.
    """

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


class Engine(Protocol):
    """What the repositories need of a backend (see the module docstring)."""

    clock: Clock
    claim_rows: str
    """What ends a ``SELECT`` that claims the rows it reads for the rest of its write transaction, skipping rows
    another process has claimed and not yet committed (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: nothing,
    its single writer already makes the transaction exclusive)."""

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One read statement's rows; cheap enough for the event loop."""
        ...

    async def scan(self, fn: Callable[[Tx], T]) -> T:
        """A long read (``fn`` may run many statements), kept off the event loop."""
        ...

    async def write(self, fn: Callable[[Tx], T], *, fsync: bool = True) -> T:
        """``fn`` in one write transaction, all or nothing; ``fsync=False`` may be grouped and not fsynced."""
        ...


class Backend(Engine, Protocol):
    """An engine as the :class:`~mcp_gatekeeper.store.Store` facade holds it: the repositories' needs plus upkeep."""

    async def run_checkpoints(self) -> None:
        """Background upkeep of a long-running process, until cancelled (nothing to do is fine)."""
        ...

    async def data_version(self) -> int:
        """A number that changes whenever another process commits."""
        ...

    async def wait_changed(self, poll: float) -> None:
        """Return when another process may have committed: after ``poll`` seconds at the latest (SQLite: just
        that; PostgreSQL: as soon as a NOTIFY arrives). The caller then reads; the signal is only a hint."""
        ...

    async def integrity_check(self) -> str:
        """``"ok"``, or what is wrong with the database."""
        ...


@runtime_checkable
class DecidesThroughTheDatabase(Protocol):
    """A backend whose database writes decisions itself (PostgreSQL: a function only the approver's role may
    call; see :mod:`mcp_gatekeeper.store.pg_schema`). :class:`~mcp_gatekeeper.store.calls.Calls` hands it
    every human decision instead of writing the row."""

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
    ) -> str: ...


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


class SqliteEngine:
    """The SQLite connection of one process. Use :meth:`open` (an async context manager)."""

    claim_rows = ""  # BEGIN IMMEDIATE: one writer at a time, so a row read in a write transaction is its own

    def __init__(self, conn: aiosqlite.Connection, path: Path, clock: Clock) -> None:
        self._conn = conn
        self.path = path
        self.clock = clock
        self.commits = 0
        """Commits so far (a group commit counts once); checkpoints are timed by it."""
        self._checkpoint_due: anyio.Event | None = None
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], _Slot]] | None = None
        self._last_lazy = -1e9
        self._lock = anyio.Lock(fast_acquire=True)  # uncontended (the usual case): no trip round the event loop
        self._busy_at = -1e9

    @property
    def connection(self) -> aiosqlite.Connection:
        """The aiosqlite connection (for tests and bench instrumentation only)."""
        return self._conn

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @asynccontextmanager
    async def open(cls, path: str | os.PathLike[str], clock: Clock) -> AsyncIterator[SqliteEngine]:
        """Open (and create or migrate) the database at ``path``; closed on the way out, shielded."""
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            existed = p.exists() and p.stat().st_size > 0
            # check_same_thread=False: short non-blocking work also runs on the event loop's thread (see run)
            conn = await aiosqlite.connect(str(p), isolation_level=None, timeout=5.0, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open the database {p}: {e}") from e
        engine = cls(conn, p, clock)
        try:
            await engine._setup(existed)
            yield engine
        finally:
            with anyio.CancelScope(shield=True):
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
            # at rest: commits not fsynced (a transaction that must be durable asks for FULL, see write) and a
            # zero busy timeout for the work that runs on the event loop (work on the worker thread waits,
            # see _in_thread)
            c.execute("PRAGMA synchronous = NORMAL")

        try:
            await self._in_thread(setup)
            applied = {r[0] for r in await self.read("SELECT name FROM sqlite_master WHERE type='table'")}
            if "schema_migrations" not in applied or {
                r[0] for r in await self.read("SELECT name FROM schema_migrations")
            } != {name for name, _ in MIGRATIONS}:
                await self._migrate()  # writes only when there is something to migrate
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a usable database ({e}); it was left as it is") from e

    async def _migrate(self) -> None:
        def _body(c: Tx) -> Any:
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

        await self.write(_body)

    # ------------------------------------------------------------------ running work on the connection

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

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool) -> T:
        """Run ``fn`` under the engine's lock: on the event loop's thread when it cannot block, else on the
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
                        out = await self._in_thread(fn)
                    return out  # noqa: RET504  # returned after the scope: to mypy a scope exit may swallow errors
                except sqlite3.OperationalError as e:
                    if "locked" in str(e) or "busy" in str(e):
                        self._busy_at = time.monotonic()
                    raise
            except _DB_ERRORS as e:
                raise StoreError(f"cannot use {self.path}: {e}") from e

    async def write(self, fn: Callable[[Tx], T], *, fsync: bool = True) -> T:
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
        out = await self.run(transaction, inline=not fsync)
        self._committed()
        return out

    def _committed(self) -> None:
        self.commits += 1
        if self._checkpoint_due is not None and self.commits >= CHECKPOINT_EVERY:
            self._checkpoint_due.set()

    async def _grouped(self, fn: Callable[[Tx], T]) -> T:
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
                    await self.run(functools.partial(_commit_group, batch), inline=True)
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

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def read(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in c.execute(sql, params).fetchall()]

        return await self.run(read, inline=True)

    async def scan(self, fn: Callable[[Tx], T]) -> T:
        return await self.run(fn, inline=False)  # a long walk: off the event loop

    # ------------------------------------------------------------------ upkeep

    async def run_checkpoints(self) -> None:
        """Take WAL checkpoints over from commits until cancelled (a long-running process starts this).

        SQLite's default runs the checkpoint inside whichever commit crosses 1,000 WAL pages: for this store
        often a commit on the event loop, which then stalls the loop for the copy and two fsyncs. While this
        runs, commits skip that (``wal_autocheckpoint = 0``) and every CHECKPOINT_EVERY commits it runs one on
        the connection's worker thread under the engine's lock: store work waits for it, the loop does not.
        ``PASSIVE`` never waits for other processes; what it cannot copy now is left for the next one.
        """
        due = self._checkpoint_due = anyio.Event()
        try:
            await self.run(lambda c: c.execute("PRAGMA wal_autocheckpoint = 0"), inline=True)  # no I/O
            while True:
                await due.wait()
                due = self._checkpoint_due = anyio.Event()
                self.commits = 0
                try:
                    await self.run(lambda c: c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall(), inline=False)
                except StoreError as e:  # the WAL grows until the next one; nothing is lost
                    log.warning("WAL checkpoint failed: %s", e)
        finally:
            self._checkpoint_due = None
            with anyio.CancelScope(shield=True), contextlib.suppress(StoreError):
                await self.run(lambda c: c.execute("PRAGMA wal_autocheckpoint = 1000"), inline=True)

    async def wait_changed(self, poll: float) -> None:
        await anyio.sleep(poll)  # SQLite has no signal across processes: PRAGMA data_version is polled

    async def data_version(self) -> int:
        """Changes whenever another connection (another process) commits."""
        rows = await self.read("PRAGMA data_version")
        return int(rows[0][0])

    async def integrity_check(self) -> str:
        rows = await self.read("PRAGMA integrity_check")
        return str(rows[0][0]) if rows else "no answer"
