"""Helpers for the fault and attack suite: real gatekeeper processes, the CLI, and read-only looks at the store.

Waiting is on events: a gatekeeper's stderr lines (``HELD <id>``, ``approval page: ...``, ``serving MCP at ...``),
replies on a pipe, results of client calls. The store is read with the stdlib ``sqlite3`` in read-only mode,
so a look never changes what it looks at.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@contextmanager
def ro(db: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection (``mode=ro``): looking never writes."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with ro(db) as conn:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]


def call_row(db: Path, prefix: str) -> dict[str, Any]:
    rows = query(db, "SELECT * FROM calls WHERE id >= ? AND id < ? ORDER BY id", (prefix, prefix + "g"))
    assert len(rows) == 1, f"expected one call with id prefix {prefix!r}, found {len(rows)}"
    return rows[0]


def audit_of(db: Path, call_id: str) -> list[dict[str, Any]]:
    return query(db, "SELECT * FROM audit WHERE call_id = ? ORDER BY seq", (call_id,))


def events_of(db: Path, call_id: str) -> list[str]:
    return [e["event"] for e in audit_of(db, call_id)]


def integrity(db: Path) -> str:
    with ro(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


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


def instance_pid(db: Path, label: str) -> int:
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
async def wrap(home: Path, config: Path, name: str, log: Path, **client_kw: Any) -> AsyncIterator[GK]:
    """``mcp-gatekeeper wrap --name NAME -- feature_server --call-log LOG`` started as an MCP client would."""
    params = wrap_params(home, config, name, [PY, str(FEATURE_SERVER), "--call-log", str(log)])
    watcher = Watcher()
    client_kw.setdefault("mode", "legacy")
    try:
        async with Client(stdio_client(params, errlog=watcher.file), **client_kw) as client:
            yield GK(client, watcher, instance_pid(db_of(home), f"wrap {name}"), name)
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
async def raw_wrap(home: Path, config: Path, log: Path) -> AsyncIterator[RawStdio]:
    """Start ``wrap`` with pipes we write raw bytes to; initialized (handshake era) when yielded."""
    watcher = Watcher()
    argv = [PY, "-m", "mcp_gatekeeper", "wrap", "--config", str(config), "--name", "feat", "--"]
    argv += [PY, str(FEATURE_SERVER), "--call-log", str(log)]
    proc = await anyio.open_process(argv, stderr=watcher.file, env=env_for(home), cwd=str(ROOT))
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
    db: Path
    store: Store
    notifier: KeyedNotifier
    upstream: FeatureServer
    client: Client
    policy: Policy

    def received(self, path: str) -> list[dict[str, Any]]:
        return [c["arguments"] for c in self.upstream.state.calls if c["arguments"].get("path") == path]


@asynccontextmanager
async def stack(tmp_path: Path, config_text: str) -> AsyncIterator[Stack]:
    """The holding side: store, gate (with its cross-process watcher), proxy, in-process upstream, SDK client."""
    config = parse_config(config_text)
    clock = SystemClock()
    notifier = KeyedNotifier()
    upstream = build_server(None)
    db = tmp_path / "gk.db"
    async with Store.open(db, clock) as store:
        await store.register_instance("holder")
        gate = Gate(store, Policy(config), clock, notifier=notifier)
        proxy = Proxy(config=config, policy=gate.policy, gate=gate, clock=clock)
        up = Upstream("feat", None, proxy.hooks(), target=upstream)
        proxy.upstreams = {"feat": up}
        async with gate.running(), up.running():
            await up.connect()
            async with Client(proxy.build_server(), mode="legacy") as client:
                yield Stack(db, store, notifier, upstream, client, gate.policy)
