"""A throwaway PostgreSQL server for the tests (or the one ``$GATEKEEPER_TEST_PG`` names).

:func:`start_cluster` runs ``initdb`` and ``pg_ctl`` from Debian's ``postgresql`` package in a fresh temp dir on a
free 127.0.0.1 port. ``initdb`` refuses to run as root, so when the tests run as root every server command runs
as the ``postgres`` OS user (``runuser -u postgres --``) and the temp dir is handed to that user. Connections over
TCP need a password (scram-sha-256): a test that connects with a role's credentials gets exactly that role.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

ENV_DSN = "GATEKEEPER_TEST_PG"
"""A DSN of a superuser (or a role with CREATEDB and CREATEROLE) on a server the tests may use instead."""


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/<major>/bin), or PATH's."""
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def why_unavailable() -> str | None:
    """None when a server can be had, else why not (the tests skip with it; CI turns the skip into a failure)."""
    if os.environ.get(ENV_DSN):
        return None
    if bin_dir() is None:
        return f"PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/setup does it) and ${ENV_DSN} is unset"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' OS user to run initdb as"
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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Cluster:
    """A running server: ``dsn`` is its superuser's (database ``postgres``)."""

    dsn: str
    data_dir: Path | None = None
    port: int = 0
    _bin: Path | None = None
    _owned: bool = False
    _log: Path | None = field(default=None, repr=False)

    def _server_cmd(self, *args: str) -> list[str]:
        assert self._bin is not None
        cmd = [str(self._bin / args[0]), *args[1:]]
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.data_dir is not None
        return subprocess.run(
            self._server_cmd("pg_ctl", "-D", str(self.data_dir / "data"), *args),
            check=check,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self) -> None:
        """Start (or restart) the server on its port; returns once it accepts connections."""
        if not self._owned:
            raise RuntimeError(f"the server of ${ENV_DSN} is not the tests' to start or stop")
        assert self.data_dir is not None and self._log is not None
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.data_dir}"
        done = self._pg_ctl("start", "-w", "-t", "60", "-l", str(self._log), "-o", opts, check=False)
        if done.returncode != 0:
            log = self._log.read_text(errors="replace") if self._log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{log[-2000:]}")

    def kill(self) -> None:
        """Stop the server the hard way (``pg_ctl stop -m immediate``: no checkpoint, clients cut off)."""
        self._pg_ctl("stop", "-m", "immediate", "-w")

    def stop(self) -> None:
        if not self._owned or self.data_dir is None:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._pg_ctl("stop", "-m", "fast", "-w", check=False)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_cluster() -> Cluster:
    """The server of ``$GATEKEEPER_TEST_PG``, else a new throwaway one (call :meth:`Cluster.stop` at the end)."""
    if env := os.environ.get(ENV_DSN):
        return Cluster(dsn=env)
    binaries = bin_dir()
    if binaries is None:
        raise RuntimeError(why_unavailable() or "no PostgreSQL")
    # not under pytest's tmp dirs: those are 0700 and root's, and the server runs as another user
    root = Path(tempfile.mkdtemp(prefix="gk-pg-"))
    password = secrets.token_urlsafe(18)
    (root / "pw").write_text(password + "\n")
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(root, pg.pw_uid, pg.pw_gid)
        os.chown(root / "pw", pg.pw_uid, pg.pw_gid)
    cluster = Cluster(dsn="", data_dir=root, _bin=binaries, _owned=True, _log=root / "server.log")
    initdb = ["initdb", "-D", str(root / "data"), "-U", "postgres", f"--pwfile={root / 'pw'}", "-E", "UTF8"]
    initdb += ["--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "--no-instructions"]
    init = subprocess.run(
        cluster._server_cmd(*initdb),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    (root / "pw").unlink()
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stdout}{init.stderr}")
    if os.geteuid() == 0:  # the log file is written by the server's user
        (root / "server.log").touch()
        pg = pwd.getpwnam("postgres")
        os.chown(root / "server.log", pg.pw_uid, pg.pw_gid)
    for attempt in range(5):  # a free port can be taken between the look and the bind
        cluster.port = free_port()
        try:
            cluster.start()
            break
        except RuntimeError:
            if attempt == 4:
                cluster.stop()
                raise
    cluster.dsn = f"postgresql://postgres:{quote(password, safe='')}@127.0.0.1:{cluster.port}/postgres"
    return cluster
