"""A throwaway PostgreSQL server: ``mcp-gatekeeper demo --team`` and the tests start one, use it, and remove it.

:func:`start_cluster` runs the installed PostgreSQL's ``initdb`` and ``pg_ctl`` in a fresh temp dir, on a free
127.0.0.1 port, with a random superuser password (scram-sha-256 for every connection, so a client that connects
with a role's credentials gets exactly that role). ``initdb`` refuses to run as root, so when this process is
root every server command runs as the ``postgres`` OS user (``runuser -u postgres --``) and the temp dir is
handed to that user. Linux and macOS only; where PostgreSQL is missing :func:`why_unavailable` says what to
install. :meth:`Cluster.stop` stops the server and deletes everything it wrote. Use it as a context manager
(``with start_cluster() as c:`` or ``async with running_cluster() as c:``) and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import anyio
import anyio.to_thread

from mcp_gatekeeper.errors import DevClusterError
from mcp_gatekeeper.hostos import is_windows

SERVER_TIMEOUT = 120.0
"""Seconds any one server command (initdb, pg_ctl) may take on a loaded machine."""


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/<major>/bin), else PATH's."""
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_root() -> bool:
    return sys.platform != "win32" and os.geteuid() == 0


def _postgres_user() -> tuple[int, int] | None:
    """The uid and gid of the ``postgres`` OS user, if there is one (never on Windows: no ``pwd`` module)."""
    try:
        pwd: Any = importlib.import_module("pwd")  # POSIX only: imported by name, so every platform type-checks
    except ImportError:
        return None
    try:
        pg = pwd.getpwnam("postgres")
    except KeyError:
        return None
    return int(pg.pw_uid), int(pg.pw_gid)


def why_unavailable() -> str | None:
    """None when a throwaway server can be started here, else why not (in words a user can act on)."""
    if is_windows(sys.platform):  # read now, not at import (tests stand in for another platform)
        return "a throwaway PostgreSQL server is started on Linux and macOS only"
    if bin_dir() is None:
        return "PostgreSQL is not installed (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql)"
    if _as_root() and _postgres_user() is None:
        return "running as root and there is no 'postgres' OS user to run initdb as (initdb refuses root)"
    if _as_root() and shutil.which("runuser") is None:
        return "running as root and there is no runuser to run initdb as the 'postgres' OS user"
    return None


def with_credentials(dsn: str, *, user: str, password: str, dbname: str | None = None) -> str:
    """``dsn`` with another user, password and (optionally) database."""
    parts = urlsplit(dsn)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    path = f"/{dbname}" if dbname is not None else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


def with_database(dsn: str, dbname: str) -> str:
    """``dsn`` naming another database (same user and password)."""
    parts = urlsplit(dsn)
    return with_credentials(
        dsn, user=unquote(parts.username or ""), password=unquote(parts.password or ""), dbname=dbname
    )


def free_port() -> int:
    """A 127.0.0.1 port nobody listens on now (it can be taken before it is used: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Cluster:
    """A PostgreSQL server: ``dsn`` is its superuser's (database ``postgres``). One this process started
    (``owned``) can be stopped, killed and restarted; one it was given (a DSN) only used."""

    dsn: str
    data_dir: Path | None = None
    port: int = 0
    _bin: Path | None = None
    _owned: bool = False
    _log: Path | None = field(default=None, repr=False)

    @property
    def owned(self) -> bool:
        return self._owned

    def _server_cmd(self, *args: str) -> list[str]:
        if self._bin is None:
            raise DevClusterError("this PostgreSQL server was given, not started here: it has no binaries")
        cmd = [str(self._bin / args[0]), *args[1:]]
        return ["runuser", "-u", "postgres", "--", *cmd] if _as_root() else cmd

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if self.data_dir is None:
            raise DevClusterError("this PostgreSQL server was given, not started here: it has no data directory")
        return subprocess.run(
            self._server_cmd("pg_ctl", "-D", str(self.data_dir / "data"), *args),
            check=check,
            capture_output=True,
            text=True,
            timeout=SERVER_TIMEOUT,
        )

    def start(self) -> None:
        """Start (or restart) the server on its port; returns once it accepts connections."""
        if not self._owned or self.data_dir is None or self._log is None:
            raise DevClusterError("a PostgreSQL server this process did not start is not its to start or stop")
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.data_dir}"
        done = self._pg_ctl("start", "-w", "-t", "60", "-l", str(self._log), "-o", opts, check=False)
        if done.returncode != 0:
            log = self._log.read_text(errors="replace") if self._log.exists() else ""
            raise DevClusterError(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{log[-2000:]}")

    def kill(self) -> None:
        """Stop the server the hard way (``pg_ctl stop -m immediate``: no checkpoint, clients cut off)."""
        self._pg_ctl("stop", "-m", "immediate", "-w")

    def stop(self) -> None:
        """Stop the server (if this process started it) and delete its temp dir; safe to call twice."""
        if not self._owned or self.data_dir is None:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._pg_ctl("stop", "-m", "fast", "-w", check=False)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _give_to_postgres(*paths: Path) -> None:
    user = _postgres_user()
    if _as_root() and user is not None:
        chown: Any = getattr(os, "chown")  # noqa: B009 -- POSIX only (as root, so never on Windows); by name, so every platform type-checks
        for p in paths:
            chown(p, *user)


def start_cluster() -> Cluster:
    """A new throwaway server, running (stop it with :meth:`Cluster.stop`, or use it as a context manager)."""
    why = why_unavailable()
    if why is not None:
        raise DevClusterError(why)
    binaries = bin_dir()
    assert binaries is not None  # why_unavailable said so
    # a temp dir of its own, not the caller's (a test's tmp dir is 0700 and root's; the server runs as postgres)
    root = Path(tempfile.mkdtemp(prefix="gk-pg-"))
    password = secrets.token_urlsafe(18)
    (root / "pw").write_text(password + "\n")
    _give_to_postgres(root, root / "pw")
    cluster = Cluster(dsn="", data_dir=root, _bin=binaries, _owned=True, _log=root / "server.log")
    initdb = ["initdb", "-D", str(root / "data"), "-U", "postgres", f"--pwfile={root / 'pw'}", "-E", "UTF8"]
    initdb += ["--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "--no-instructions"]
    try:
        init = subprocess.run(
            cluster._server_cmd(*initdb), capture_output=True, text=True, timeout=SERVER_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        shutil.rmtree(root, ignore_errors=True)
        raise DevClusterError(f"initdb could not run: {e}") from e
    (root / "pw").unlink()
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise DevClusterError(f"initdb failed: {init.stdout}{init.stderr}")
    (root / "server.log").touch()  # written by the server's user
    _give_to_postgres(root / "server.log")
    for attempt in range(5):  # a free port can be taken between the look and the bind
        cluster.port = free_port()
        try:
            cluster.start()
            break
        except DevClusterError:
            if attempt == 4:
                cluster.stop()
                raise
    cluster.dsn = f"postgresql://postgres:{quote(password, safe='')}@127.0.0.1:{cluster.port}/postgres"
    return cluster


@contextlib.asynccontextmanager
async def running_cluster() -> AsyncIterator[Cluster]:
    """A throwaway server for the body of an ``async with``; stopped and deleted however the body ends
    (the slow parts run in a worker thread; the stop is shielded from cancellation, e.g. Ctrl-C)."""
    cluster = await anyio.to_thread.run_sync(start_cluster)
    try:
        yield cluster
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(cluster.stop)
