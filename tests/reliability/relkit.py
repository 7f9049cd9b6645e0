"""Helpers for the fault and attack suite: real gatekeeper processes, the CLI, and read-only looks at the store.

Waiting is on events: a gatekeeper's stderr lines (``HELD <id>``, ``approval page: ...``, ``serving MCP at ...``),
replies on a pipe, results of client calls. The store is read through a :class:`StoreView`: the SQLite file with
the stdlib ``sqlite3`` in read-only mode, a PostgreSQL database with the admin's URL; a look never changes what
it looks at. A :class:`Backing` says where one test's store is and which role each side uses.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.abc
import mcp.types as types
from anyio.streams.buffered import BufferedByteReceiveStream
from harness import FEATURE_SERVER, ROOT, StderrWatcher, gk_env, wrap_params
from mcp import Client
from mcp.client.stdio import stdio_client
from upstreams.feature_server import FeatureServer, build_server

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import CallRecord, State
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.proxy import Proxy
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.upstream import Upstream

PY = sys.executable
LIVE_STATES = ("pending", "approved", "forwarding")
ALL_STATES = frozenset(s.value for s in State)


# ---------------------------------------------------------------------------------------------- files and the store


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def db_of(home: Path) -> Path:
    return home / "gatekeeper.db"


@runtime_checkable
class StoreView(Protocol):
    """A read-only look at a store from outside the gatekeepers (the test's own connection): the same questions,
    asked of a SQLite file or of a PostgreSQL database. Statements are written in SQLite's dialect, ``?``
    placeholders; rows come back as dicts."""

    name: str

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]: ...

    def integrity(self) -> str:
        """``"ok"`` when the database's own check finds nothing wrong, else what it found."""
        ...

    def writes_held(self) -> AbstractContextManager[None]:
        """While inside, the store cannot commit a write (writers queue behind this connection)."""
        ...


@dataclass(frozen=True)
class SqliteView:
    """The SQLite file, opened read-only (``mode=ro``): looking never writes."""

    db: Path
    name: str = "sqlite"

    @contextmanager
    def _ro(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._ro() as conn:
            return [dict(r) for r in conn.execute(sql, params).fetchall()]

    def integrity(self) -> str:
        with self._ro() as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])

    @contextmanager
    def writes_held(self) -> Iterator[None]:
        lock = sqlite3.connect(self.db, isolation_level=None, timeout=10)
        try:
            lock.execute("BEGIN IMMEDIATE")  # the store's writers all begin with BEGIN IMMEDIATE
            yield
        finally:
            lock.execute("ROLLBACK")
            lock.close()


@dataclass(frozen=True)
class PostgresView:
    """A PostgreSQL team database, read with the admin's URL (never a gatekeeper's or an approver's role)."""

    admin: str
    name: str = "postgres"

    def _connect(self) -> Any:
        import psycopg  # only the PostgreSQL tests load it

        from mcp_gatekeeper.store.pg_schema import SCHEMA

        return psycopg.connect(self.admin, autocommit=True, options=f"-c search_path={SCHEMA}", connect_timeout=10)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        from mcp_gatekeeper.store.postgres import to_postgres

        with self._connect() as conn:
            cur = conn.execute(to_postgres(sql).encode(), params)
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def integrity(self) -> str:
        """amcheck's ``bt_index_check`` of every index of the store's schema (heap and index agree), and every
        table read to its end. (A ``$GATEKEEPER_TEST_PG`` role that may not create amcheck gets the reads only.)"""
        import psycopg
        from psycopg import sql

        from mcp_gatekeeper.store.pg_schema import SCHEMA

        with self._connect() as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
                checkable = True
            except psycopg.errors.InsufficientPrivilege:
                checkable = False
            indexes = conn.execute(
                "SELECT c.oid, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_am a ON a.oid = c.relam WHERE c.relnamespace = %s::regnamespace AND a.amname = 'btree'",
                (SCHEMA,),
            ).fetchall()
            for oid, name in indexes if checkable else ():
                try:
                    conn.execute("SELECT bt_index_check(%s, true)", (oid,))
                except psycopg.Error as e:  # a corrupt index: say which
                    return f"index {name}: {e}"
            for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (SCHEMA,)).fetchall():
                conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        return "ok" if indexes else "no indexes found to check"

    @contextmanager
    def writes_held(self) -> Iterator[None]:
        from mcp_gatekeeper.store.pg_schema import AUDIT_LOCK

        with self._connect() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (AUDIT_LOCK,))  # every write takes it first (PgEngine)
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (AUDIT_LOCK,))


Where = Path | StoreView
"""What the look-ups take: a store view, or the path of a SQLite file (the older tests' way)."""


def view_of(where: Where) -> StoreView:
    return where if isinstance(where, StoreView) else SqliteView(where)


def query(db: Where, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    return view_of(db).query(sql, params)


def call_row(db: Where, prefix: str) -> dict[str, Any]:
    rows = query(db, "SELECT * FROM calls WHERE id LIKE ? ORDER BY id", (prefix + "%",))  # ids are hex
    assert len(rows) == 1, f"expected one call with id prefix {prefix!r}, found {len(rows)}"
    return rows[0]


def audit_of(db: Where, call_id: str) -> list[dict[str, Any]]:
    return query(db, "SELECT * FROM audit WHERE call_id = ? ORDER BY seq", (call_id,))


def events_of(db: Where, call_id: str) -> list[str]:
    return [e["event"] for e in audit_of(db, call_id)]


def integrity(db: Where) -> str:
    return view_of(db).integrity()


@dataclass(frozen=True)
class Backing:
    """Where one test's gatekeepers keep their store: the home's SQLite file, or a fresh PostgreSQL database.

    On PostgreSQL the gatekeepers (``wrap`` processes, in-process holders) use the gatekeeper role's URL and every
    decider (the CLI, a Gate deciding as the approval service does) the approver role's; the test reads with the
    admin's. On SQLite all of them are the one file.
    """

    name: str
    view: StoreView
    holder: str
    """What a gatekeeper's :meth:`Store.open` takes."""
    approver: str
    """What a decider's :meth:`Store.open` takes."""
    env_var: bool = False
    """Whether processes are pointed at the store by ``$MCP_GATEKEEPER_STORE`` (else: the home's file)."""

    def _env(self, home: Path, location: str) -> dict[str, str]:
        return env_for(home, MCP_GATEKEEPER_STORE=location) if self.env_var else env_for(home)

    def holder_env(self, home: Path) -> dict[str, str]:
        return self._env(home, self.holder)

    def approver_env(self, home: Path) -> dict[str, str]:
        return self._env(home, self.approver)


def sqlite_backing(db: Path) -> Backing:
    """The SQLite file ``db`` (a gatekeeper process's is :func:`db_of` its home)."""
    return Backing("sqlite", SqliteView(db), holder=str(db), approver=str(db))


async def postgres_backing(admin: str) -> Backing:
    """``db init`` on the fresh database ``admin`` names, with roles of its own."""
    from mcp_gatekeeper.store.pg_schema import Roles
    from mcp_gatekeeper.store.postgres import init_database

    tag = secrets.token_hex(4)
    roles = Roles(gatekeeper=f"gk_{tag}", approver=f"ap_{tag}", owner=f"own_{tag}")
    report = await init_database(admin, SystemClock(), roles=roles)
    return Backing(
        "postgres",
        PostgresView(admin),
        holder=report.new_role_urls[roles.gatekeeper],
        approver=report.new_role_urls[roles.approver],
        env_var=True,
    )


def call_log(path: Path) -> list[dict[str, Any]]:
    """What the upstream received (one JSON line per tools/call, written before the tool ran)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def received(path: Path, tool: str) -> list[dict[str, Any]]:
    return [c["arguments"] for c in call_log(path) if c["tool"] == tool]


# ---------------------------------------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc before a crash, so leftovers can be reaped by pid)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            with suppress(OSError):
                for c in children.read_text().split():
                    out.append(int(c))
                    todo.append(int(c))
    return out


def sigkill(pids: list[int]) -> None:
    for p in pids:
        with suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def instance_pid(db: Where, label: str) -> int:
    """The pid of the live gatekeeper process registered under ``label`` (``wrap NAME``, ``run``, ``ui``)."""
    rows = query(
        db, "SELECT pid FROM instances WHERE label = ? AND stopped_at IS NULL ORDER BY started_at DESC", (label,)
    )
    pids = [int(r["pid"]) for r in rows if pid_alive(int(r["pid"]))]
    assert pids, f"no live gatekeeper registered as {label!r}"
    return pids[0]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return gk_env(home, **extra)


async def cli(
    home: Path,
    *args: str,
    config: Path | None = None,
    stdin: Any = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """``mcp-gatekeeper ARGS`` as another process, with no terminal unless ``stdin`` is one."""
    argv = [PY, "-m", "mcp_gatekeeper", *args]
    if config is not None:
        argv += ["--config", str(config)]
    proc = await anyio.run_process(
        argv, stdin=stdin, env=env if env is not None else env_for(home), check=False, cwd=str(ROOT)
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@dataclass
class GK:
    """A running ``mcp-gatekeeper wrap`` process with an SDK client connected to it."""

    client: Client
    watcher: StderrWatcher
    pid: int
    name: str

    def kill9(self) -> list[int]:
        """``kill -9`` the gatekeeper; returns its children (the upstream), to reap after the client closed."""
        kids = descendants(self.pid)
        os.kill(self.pid, signal.SIGKILL)
        return kids


class Watcher(StderrWatcher):
    """harness.StderrWatcher that also closes its line stream when done."""

    def close(self) -> None:
        super().close()
        self._send.close()
        self._recv.close()


@asynccontextmanager
async def wrap(
    home: Path, config: Path, name: str, log: Path, *, store: Backing | None = None, **client_kw: Any
) -> AsyncIterator[GK]:
    """``mcp-gatekeeper wrap --name NAME -- feature_server --call-log LOG`` started as an MCP client would (on
    ``store``'s holder side; by default the home's SQLite file)."""
    store = store or sqlite_backing(db_of(home))
    extra = {"MCP_GATEKEEPER_STORE": store.holder} if store.env_var else {}
    params = wrap_params(home, config, name, [PY, str(FEATURE_SERVER), "--call-log", str(log)], **extra)
    watcher = Watcher()
    client_kw.setdefault("mode", "legacy")
    try:
        async with Client(stdio_client(params, errlog=watcher.file), **client_kw) as client:
            yield GK(client, watcher, instance_pid(store.view, f"wrap {name}"), name)
    finally:
        watcher.close()


CLIENT_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


# ---------------------------------------------------------------------------------------------- raw JSON-RPC on stdio


@dataclass
class RawStdio:
    """A ``wrap`` process spoken to in raw JSON lines, so malformed input can be sent as-is."""

    proc: anyio.abc.Process
    watcher: StderrWatcher
    replies: dict[Any, dict[str, Any]] = field(default_factory=dict)
    _events: dict[Any, anyio.Event] = field(default_factory=dict)
    closed: anyio.Event = field(default_factory=anyio.Event)
    progress: anyio.Event = field(default_factory=anyio.Event)
    """Set when a ``notifications/progress`` arrives."""

    async def read_replies(self) -> None:
        assert self.proc.stdout is not None
        stream = BufferedByteReceiveStream(self.proc.stdout)
        try:
            while True:
                line = await stream.receive_until(b"\n", 256 * 1024 * 1024)
                msg = json.loads(line)
                if (
                    isinstance(msg, dict)
                    and isinstance(msg.get("id"), str | int)
                    and ("result" in msg or "error" in msg)
                ):
                    self.replies[msg["id"]] = msg
                    if (ev := self._events.get(msg["id"])) is not None:
                        ev.set()
                elif isinstance(msg, dict) and msg.get("method") == "notifications/progress":
                    self.progress.set()
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
            pass
        finally:
            self.closed.set()

    async def send_raw(self, raw: bytes) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send(raw + b"\n")

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message).encode())

    def expect(self, rid: Any) -> anyio.Event:
        """The event set when the reply to ``rid`` arrives."""
        return self._events.setdefault(rid, anyio.Event())

    async def request(
        self, rid: Any, method: str, params: dict[str, Any], timeout: float = 15, raw: bytes | None = None
    ) -> dict[str, Any]:
        """Send a request (or ``raw`` bytes carrying id ``rid``) and wait for its reply."""
        ev = self.expect(rid)
        if raw is not None:
            await self.send_raw(raw)
        else:
            await self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        with anyio.fail_after(timeout):
            await ev.wait()
        return self.replies[rid]


@asynccontextmanager
async def raw_wrap(
    home: Path, config: Path, log: Path, *, env: dict[str, str] | None = None
) -> AsyncIterator[RawStdio]:
    """Start ``wrap`` with pipes we write raw bytes to; initialized (handshake era) when yielded."""
    watcher = Watcher()
    argv = [PY, "-m", "mcp_gatekeeper", "wrap", "--config", str(config), "--name", "feat", "--"]
    argv += [PY, str(FEATURE_SERVER), "--call-log", str(log)]
    proc = await anyio.open_process(argv, stderr=watcher.file, env=env or env_for(home), cwd=str(ROOT))
    raw = RawStdio(proc, watcher)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(raw.read_replies)
            init = await raw.request(
                "init",
                "initialize",
                {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
            )
            assert "result" in init, init
            await raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            yield raw
            assert proc.stdin is not None
            await proc.stdin.aclose()  # the client goes away: the gatekeeper shuts down cleanly
            with anyio.fail_after(15):
                await proc.wait()
            tg.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
            with anyio.CancelScope(shield=True):
                await proc.wait()
        watcher.close()


# ---------------------------------------------------------------------------------------------- other long-running commands


@dataclass
class Served:
    """A long-running gatekeeper command (``ui``, ``run --http``) and what it printed when ready."""

    proc: anyio.abc.Process
    watcher: StderrWatcher
    match: re.Match[str]


@asynccontextmanager
async def served(home: Path, argv: list[str], ready: re.Pattern[str]) -> AsyncIterator[Served]:
    """Start ``mcp-gatekeeper ARGV``, wait for the stderr line ``ready``, stop it by pid afterwards."""
    watcher = Watcher()
    proc = await anyio.open_process(
        [PY, "-m", "mcp_gatekeeper", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=watcher.file,
        env=env_for(home),
        cwd=str(ROOT),
    )
    try:
        with anyio.fail_after(30):
            match = await watcher.wait_for(ready)
        yield Served(proc, watcher, match)
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.terminate()
                with anyio.move_on_after(5):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        watcher.close()


UI_READY = re.compile(r"approval page: (http://127\.0\.0\.1:(\d+)/login\?token=\S+)")
HTTP_READY = re.compile(r"serving MCP at (http://127\.0\.0\.1:(\d+)/mcp)")


# ---------------------------------------------------------------------------------------------- in-process stack


class KeyedNotifier:
    """Tells the test the moment the call with a given ``path`` argument is held."""

    def __init__(self) -> None:
        self.events: dict[str, anyio.Event] = {}
        self.calls: dict[str, CallRecord] = {}

    def expect(self, path: str) -> anyio.Event:
        return self.events.setdefault(path, anyio.Event())

    async def held(self, call: CallRecord) -> None:
        path = str(call.arguments["path"])
        self.calls[path] = call
        self.expect(path).set()


@dataclass
class Stack:
    backing: Backing
    store: Store
    notifier: KeyedNotifier
    upstream: FeatureServer
    client: Client
    policy: Policy

    def received(self, path: str) -> list[dict[str, Any]]:
        return [c["arguments"] for c in self.upstream.state.calls if c["arguments"].get("path") == path]


@asynccontextmanager
async def stack(tmp_path: Path, config_text: str, backing: Backing | None = None) -> AsyncIterator[Stack]:
    """The holding side: store, gate (with its cross-process watcher), proxy, in-process upstream, SDK client;
    on ``backing``'s holder side (by default a SQLite file of its own)."""
    config = parse_config(config_text)
    clock = SystemClock()
    notifier = KeyedNotifier()
    upstream = build_server(None)
    backing = backing or sqlite_backing(tmp_path / "gk.db")
    async with Store.open(backing.holder, clock) as store:
        await store.register_instance("holder")
        gate = Gate(store, Policy(config), clock, notifier=notifier)
        proxy = Proxy(config=config, policy=gate.policy, gate=gate, clock=clock)
        up = Upstream("feat", None, proxy.hooks(), target=upstream)
        proxy.upstreams = {"feat": up}
        async with gate.running(), up.running():
            await up.connect()
            async with Client(proxy.build_server(), mode="legacy") as client:
                yield Stack(backing, store, notifier, upstream, client, gate.policy)
