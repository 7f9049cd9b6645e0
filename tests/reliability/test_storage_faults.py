"""E1/E3: the store cannot be written (disk full, read-only, locked by another process) → fail closed, then recover.

Disk full is a real ENOSPC: the gatekeeper runs in a private mount namespace (``unshare -m``) whose data home is
a tiny tmpfs; the test reaches that tmpfs through ``/proc/<pid>/root`` without mounting anything on the host.
While the store cannot be written, a new held call and an allowed call are both refused with ``isError`` ("could
not record"), a decision is refused, and nothing reaches the upstream. Once the fault is gone, everything works
again and the database is intact.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import mcp.types as types
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from harness import FEATURE_SERVER, ROOT
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from relkit import (
    PY,
    Watcher,
    call_log,
    call_row,
    cli,
    db_of,
    env_for,
    events_of,
    integrity,
    received,
    text,
    wrap,
    write_config,
)

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

CONFIG = """
[ui]
autostart = false
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
[[rules]]
name = "echo"
tool = "echo"
gate = "allow"
"""
TMPFS_SIZE = "1m"
MOUNT_THEN_EXEC = 'mount -t tmpfs -o size={size} tmpfs "$0" && echo "GKNS $$" >&2 && exec "$@"'


def _unshare_works() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    if os.geteuid() != 0:
        return "needs root for unshare -m and mount (CI runs as root)"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False, timeout=10
    )
    if probe.returncode != 0:
        return f"unshare -m is not permitted here: {probe.stderr.decode().strip()}"
    return None


UNSHARE_PROBLEM = _unshare_works()
needs_unshare = pytest.mark.skipif(UNSHARE_PROBLEM is not None, reason=f"disk-full test: {UNSHARE_PROBLEM}")


@dataclass
class Jailed:
    """A ``wrap`` process whose data home is a private tmpfs.

    Files on that tmpfs are reached through ``/proc/<pid>/root`` (``view``); SQLite and the CLI run inside the
    namespace with ``nsenter``, because SQLite resolves the ``/proc/<pid>/root`` symlink to the host's path.
    """

    client: Client
    watcher: Watcher
    pid: int
    home: Path
    config: Path

    @property
    def view(self) -> Path:
        return Path(f"/proc/{self.pid}/root") / self.home.relative_to("/")

    def enter(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "--"]

    async def cli(self, *args: str) -> tuple[int, str, str]:
        argv = [*self.enter(), PY, "-m", "mcp_gatekeeper", *args, "--config", str(self.config)]
        proc = await anyio.run_process(
            argv, stdin=subprocess.DEVNULL, env=env_for(self.home), cwd=str(ROOT), check=False
        )
        return proc.returncode, proc.stdout.decode(), proc.stderr.decode()

    async def query(self, sql: str, *params: Any) -> list[list[Any]]:
        """A read-only look at the database on the tmpfs."""
        argv = [*self.enter(), PY, "-c", READ_ONLY_QUERY, str(self.home / "gatekeeper.db"), sql, json.dumps(params)]
        proc = await anyio.run_process(argv, cwd=str(ROOT))
        rows: list[list[Any]] = json.loads(proc.stdout)
        return rows

    async def state(self, prefix: str) -> str:
        (row,) = await self.query("SELECT state FROM calls WHERE id >= ? AND id < ?", prefix, prefix + "g")
        return str(row[0])


READ_ONLY_QUERY = """
import json, sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
print(json.dumps([list(r) for r in conn.execute(sys.argv[2], json.loads(sys.argv[3])).fetchall()]))
"""


@asynccontextmanager
async def jailed_wrap(home: Path, cfg: Path, log: Path) -> AsyncIterator[Jailed]:
    gk = [PY, "-m", "mcp_gatekeeper", "wrap", "--config", str(cfg), "--name", "feat", "--"]
    gk += [PY, str(FEATURE_SERVER), "--call-log", str(log)]
    script = MOUNT_THEN_EXEC.format(size=TMPFS_SIZE)
    params = StdioServerParameters(
        command="unshare",
        args=["-m", "--propagation", "private", "sh", "-c", script, str(home), *gk],
        env=env_for(home),
        cwd=str(ROOT),
    )
    watcher = Watcher()
    try:
        async with Client(stdio_client(params, errlog=watcher.file), mode="legacy") as client:
            m = await watcher.wait_for(re.compile(r"GKNS (\d+)"))
            yield Jailed(client, watcher, int(m.group(1)), home, cfg)
    finally:
        watcher.close()


def fill(directory: Path) -> int:
    """Write a file until the filesystem says ENOSPC; the bytes written."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = 0
    try:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    written += os.write(fd, b"\0" * chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return written


async def _refused(client: Client, tool: str, args: dict[str, str]) -> types.CallToolResult:
    result = await client.call_tool(tool, args)
    assert result.is_error and "could not record" in text(result), text(result)
    return result


@needs_unshare
async def test_e1_disk_full_refuses_holds_and_allowed_calls_then_recovers(home: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gk.toml", CONFIG)
    log = tmp_path / "calls.jsonl"
    results: list[types.CallToolResult] = []
    with anyio.fail_after(60):
        async with jailed_wrap(home, cfg, log) as gk, anyio.create_task_group() as tg:

            async def hold() -> None:
                results.append(await gk.client.call_tool("write_note", {"path": "/e/a", "content": "a"}))

            tg.start_soon(hold)
            a = await gk.watcher.held()
            assert not (await gk.client.call_tool("echo", {"text": "before"})).is_error

            assert fill(gk.view) > 0  # ENOSPC from now on
            await _refused(gk.client, "echo", {"text": "during"})  # allowed, but cannot be recorded: not run
            await _refused(gk.client, "write_note", {"path": "/e/b", "content": "b"})  # cannot be held: not run
            rc, _, err = await gk.cli("approve", a)
            assert rc == 3 and "full" in err, (rc, err)  # a decision that cannot be recorded is not taken
            assert await gk.state(a) == "pending"
            assert received(log, "write_note") == [] and received(log, "echo") == [{"text": "before"}]
            assert await gk.query("SELECT COUNT(*) FROM calls WHERE arguments LIKE ?", "%/e/b%") == [[0]]

            (gk.view / "filler").unlink()  # space again
            rc, _, err = await gk.cli("approve", a)
            assert rc == 0, err
            assert not (await gk.client.call_tool("echo", {"text": "after"})).is_error
            assert await gk.query("PRAGMA integrity_check") == [["ok"]]
            rc, out, _ = await gk.cli("audit", "--verify")
            assert rc == 0, out
    assert not list(home.iterdir())  # nothing was written on the host: the data lived on the private tmpfs
    assert not results[0].is_error and "wrote" in text(results[0])
    assert received(log, "write_note") == [{"path": "/e/a", "content": "a"}]  # once
    assert received(log, "echo") == [{"text": "before"}, {"text": "after"}]


CREATE_THEN_READ_ONLY = (
    'mount -t tmpfs -o size=1m tmpfs "$0" && "$1" -m mcp_gatekeeper pending >/dev/null'
    ' && mount -o remount,ro "$0" && exec "$@"'
)


@needs_unshare
async def test_e1_read_only_store_refuses_to_start(home: Path, tmp_path: Path) -> None:
    """A store that cannot be written (a read-only mount: ``chmod`` proves nothing as root) → exit 3, nothing runs.

    (Linux refuses to remount a filesystem read-only while the gatekeeper has the database open for writing,
    so the read-only case is the start-up one; a store that fails at run time is covered by the disk-full test.)
    """
    cfg = write_config(tmp_path / "gk.toml", CONFIG)
    log = tmp_path / "calls.jsonl"
    gk = [PY, "-m", "mcp_gatekeeper", "wrap", "--config", str(cfg), "--name", "feat", "--"]
    gk += [PY, str(FEATURE_SERVER), "--call-log", str(log)]
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", CREATE_THEN_READ_ONLY, str(home), *gk]
    with anyio.fail_after(30):
        proc = await anyio.run_process(argv, stdin=subprocess.DEVNULL, env=env_for(home), cwd=str(ROOT), check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 3, (proc.returncode, err)  # the store is unusable: refuse to start
    assert str(home / "gatekeeper.db") in err, err  # names the file (it says "not a usable database")
    assert call_log(log) == []
    assert not list(home.iterdir())


# ---------------------------------------------------------------------------------------------- E3: a locked database

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN IMMEDIATE")  # another process holds the write lock
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
print("released", flush=True)
"""


@asynccontextmanager
async def write_lock(db: Path) -> AsyncIterator[anyio.abc.Process]:
    proc = await anyio.open_process([PY, "-c", LOCKER, str(db)], start_new_session=True)
    assert proc.stdout is not None
    out = BufferedByteReceiveStream(proc.stdout)
    try:
        assert await out.receive_until(b"\n", 100) == b"locked"
        yield proc
        assert proc.stdin is not None
        await proc.stdin.send(b"release\n")
        assert await out.receive_until(b"\n", 100) == b"released"
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with anyio.CancelScope(shield=True):
                await proc.wait()


async def _timed_refusal(client: Client, tool: str, args: dict[str, str], took: dict[str, float]) -> None:
    start = time.monotonic()
    await _refused(client, tool, args)
    took[tool] = time.monotonic() - start


async def test_e3_locked_database_fails_closed_within_the_busy_timeout_then_recovers(
    home: Path, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "gk.toml", CONFIG)
    db, log = db_of(home), tmp_path / "calls.jsonl"
    results: list[types.CallToolResult] = []
    took: dict[str, float] = {}
    with anyio.fail_after(60):
        async with wrap(home, cfg, "feat", log) as gk, anyio.create_task_group() as holds:

            async def hold() -> None:
                results.append(await gk.client.call_tool("write_note", {"path": "/l/a", "content": "a"}))

            holds.start_soon(hold)
            a = await gk.watcher.held()
            async with write_lock(db):
                decision: list[tuple[int, str]] = []

                async def approve_a() -> None:
                    rc, _, err = await cli(home, "approve", a, config=cfg)
                    decision.append((rc, err))

                async with anyio.create_task_group() as tg:  # all at once: each waits out the busy timeout
                    tg.start_soon(_timed_refusal, gk.client, "write_note", {"path": "/l/b", "content": "b"}, took)
                    tg.start_soon(_timed_refusal, gk.client, "echo", {"text": "during"}, took)
                    tg.start_soon(approve_a)
                assert decision[0][0] == 3, decision  # the decision could not be recorded: not taken
                assert call_row(db, a)["state"] == "pending"  # (readers are not blocked in WAL mode)
                assert received(log, "write_note") == [] and received(log, "echo") == []
            # the lock is gone: service resumes
            rc, _, err = await cli(home, "approve", a, config=cfg)
            assert rc == 0, err
            assert not (await gk.client.call_tool("echo", {"text": "after"})).is_error
    print(f"E3: refused after {took}")
    assert all(t >= 4.5 for t in took.values()), took  # it waited out the busy timeout (5 s) before refusing
    assert not results[0].is_error
    assert received(log, "write_note") == [{"path": "/l/a", "content": "a"}]
    assert received(log, "echo") == [{"text": "after"}]
    assert events_of(db, call_row(db, a)["id"]) == ["held", "approved", "forwarding", "forwarded"]
    assert integrity(db) == "ok"


BUSY_TIMEOUT = 5.0
SLACK = 1.5


async def test_e3_a_held_call_is_refused_within_the_busy_timeout(home: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gk.toml", CONFIG)
    log = tmp_path / "calls.jsonl"
    took: dict[str, float] = {}
    with anyio.fail_after(60):
        async with wrap(home, cfg, "feat", log) as gk, write_lock(db_of(home)):
            await _timed_refusal(gk.client, "write_note", {"path": "/l/t", "content": "t"}, took)
    assert received(log, "write_note") == []
    assert took["write_note"] <= BUSY_TIMEOUT + SLACK, took


async def test_e3_concurrent_calls_are_each_refused_within_the_busy_timeout(home: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gk.toml", CONFIG)
    log = tmp_path / "calls.jsonl"
    took: dict[str, float] = {}
    with anyio.fail_after(60):
        async with wrap(home, cfg, "feat", log) as gk, write_lock(db_of(home)), anyio.create_task_group() as tg:
            for n in range(2):

                async def call(k: str = f"echo-{n}") -> None:
                    start = time.monotonic()
                    await _refused(gk.client, "echo", {"text": k})
                    took[k] = time.monotonic() - start

                tg.start_soon(call)
    assert received(log, "echo") == []
    assert max(took.values()) <= BUSY_TIMEOUT + SLACK, took


async def test_e3_pending_list_still_works_while_the_database_is_locked(home: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gk.toml", CONFIG)
    db, log = db_of(home), tmp_path / "calls.jsonl"
    with anyio.fail_after(60):
        async with wrap(home, cfg, "feat", log) as gk, anyio.create_task_group() as holds:

            async def hold() -> None:
                await gk.client.call_tool("write_note", {"path": "/l/p", "content": "p"})

            holds.start_soon(hold)
            a = await gk.watcher.held()
            async with write_lock(db):
                rc, out, err = await cli(home, "pending", "--json", config=cfg)
            await cli(home, "reject", a, config=cfg)
    assert rc == 0, err
    assert [c["id"][:8] for c in json.loads(out)] == [a]


async def test_e3_a_cancelled_write_does_not_wedge_the_store(home: Path, tmp_path: Path) -> None:
    """A client that gives up while the gatekeeper waits for the write lock must not leave the store wedged.

    Regression guard: on the committed store (HEAD f0d42cf, ``Store._write``) the CancelledError escaped
    ``await c.execute("BEGIN IMMEDIATE")`` with no ROLLBACK while aiosqlite's thread still ran the BEGIN, so the
    process failed every later write ("cannot start a transaction within a transaction") and kept the write
    lock, locking out every other gatekeeper process. The transaction-in-one-hand-off store (``Store._tx``)
    fixes it.
    """
    cfg = write_config(tmp_path / "gk.toml", CONFIG)
    db, log = db_of(home), tmp_path / "calls.jsonl"
    with anyio.fail_after(60):
        async with wrap(home, cfg, "feat", log) as gk:
            async with write_lock(db):
                # the client gives up (notifications/cancelled) while the gatekeeper waits out the busy timeout
                with anyio.move_on_after(1.0):
                    await gk.client.call_tool("echo", {"text": "given up"})
            # the lock is gone; a new call should be recorded and run
            after = await gk.client.call_tool("echo", {"text": "after"})
            neighbour = sqlite3.connect(db, isolation_level=None, timeout=1)
            try:
                neighbour.execute("BEGIN IMMEDIATE")  # can another process write?
                neighbour.execute("ROLLBACK")
                others_can_write = True
            except sqlite3.OperationalError:
                others_can_write = False
            finally:
                neighbour.close()
    assert not after.is_error, text(after)
    assert others_can_write
    assert received(log, "echo") == [{"text": "after"}]
