"""Shared helpers for the benchmarks: paths, peers, statistics, per-process CPU, a stderr line watcher.

Nothing here imports mcp_gatekeeper, so helpers can be used from any venv.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
FEATURE_SERVER = ROOT / "tests" / "upstreams" / "feature_server.py"
VENVS = BENCH / ".venvs"
OUT = BENCH / ".out"  # raw samples, logs, profiles (git-ignored)
SDK_PROXY_DEFAULT = Path("/work/shared/docs/sdk-snippets/proxy.py")
HELD_RE = re.compile(r"HELD ([0-9a-f]{8})")


# ---------------------------------------------------------------------------------------------- paths


def peers_dir() -> Path | None:
    """Where the real third-party servers live: $GK_PEERS, ./.peers, ~/.cache/mcp-peers (first that exists)."""
    for candidate in (os.environ.get("GK_PEERS"), ROOT / ".peers", Path.home() / ".cache" / "mcp-peers"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def peer_bin(name: str) -> str | None:
    p = peers_dir()
    if p is not None and (p / "venv" / "bin" / name).exists():
        return str(p / "venv" / "bin" / name)
    return shutil.which(name)


def time_server() -> list[str] | None:
    exe = peer_bin("mcp-server-time")
    return [exe, "--local-timezone", "UTC"] if exe else None


def feature_server(call_log: Path | None = None) -> list[str]:
    argv = [sys.executable, str(FEATURE_SERVER)]
    if call_log is not None:
        argv += ["--call-log", str(call_log)]
    return argv


def gatekeeper_cmd() -> list[str]:
    """``mcp-gatekeeper`` of the venv running the bench (console script), else ``python -m mcp_gatekeeper``."""
    script = Path(sys.executable).parent / "mcp-gatekeeper"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mcp_gatekeeper"]


def sdk_proxy_path() -> Path | None:
    p = Path(os.environ.get("GK_SDK_PROXY", str(SDK_PROXY_DEFAULT)))
    return p if p.exists() else None


def venv_bin(venv: str, name: str) -> str | None:
    p = VENVS / venv / "bin" / name
    return str(p) if p.exists() else None


def gk_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["MCP_GATEKEEPER_HOME"] = str(home)
    env.pop("MCP_GATEKEEPER_CONFIG", None)
    env.update(extra)
    return env


@contextlib.contextmanager
def temp_home(prefix: str = "gk-bench-") -> Iterator[Path]:
    """A fresh MCP_GATEKEEPER_HOME on the same disk as /tmp (ext4 here, so fsync is real)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"background server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout:g}s")


# ---------------------------------------------------------------------------------------------- statistics


def pct(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no data."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary(xs: Sequence[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50": pct(xs, 50),
        "p95": pct(xs, 95),
        "p99": pct(xs, 99),
        "mean": statistics.fmean(xs),
        "min": min(xs),
        "max": max(xs),
    }


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------- CPU per process

_CLK = os.sysconf("SC_CLK_TCK")
SERVER_MARKERS = ("mcp-server-time", "feature_server.py")


def _proc_table() -> dict[int, tuple[int, list[str], float, int]]:
    """pid -> (ppid, argv, cpu seconds, rss kB) for every readable process."""
    out: dict[int, tuple[int, list[str], float, int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / _CLK
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
        out[int(d)] = (int(fields[1]), [a.decode(errors="replace") for a in argv if a], cpu, rss)
    return out


def classify(argv: list[str]) -> str:
    head = argv[:2]
    if any(a.endswith(SERVER_MARKERS) for a in head):
        return "server"
    return "proxy"


def tree_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of this process and every descendant, tagged client / server / proxy."""
    table = _proc_table()
    me = os.getpid()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    res: dict[int, tuple[str, float]] = {}
    todo = [me]
    while todo:
        pid = todo.pop()
        if pid not in table:
            continue
        _, argv, cpu, _ = table[pid]
        res[pid] = ("client" if pid == me else classify(argv), cpu)
        todo.extend(children.get(pid, []))
    return res


def cpu_per_call(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], n: int) -> dict[str, float]:
    """ms of CPU per call by kind, for processes alive at both samples (1 clock tick resolution)."""
    acc = {"client": 0.0, "proxy": 0.0, "server": 0.0}
    for pid, (kind, cpu) in after.items():
        if pid in before:
            acc[kind] += cpu - before[pid][1]
    return {k: v / n * 1e3 for k, v in acc.items()}


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------------------------- stderr watcher


class LineWatcher:
    """A pipe to give a subprocess as stderr. A thread reads it, stamps each line with perf_counter() on
    arrival, keeps it, copies it to ``log`` and calls ``on_line(line, t)`` (so a waiter is woken by the line
    itself, no polling)."""

    def __init__(self, log: TextIO | None = None, on_line: Any = None) -> None:
        r, w = os.pipe()
        self._r = r
        self.file: TextIO = os.fdopen(w, "w", buffering=1)
        self.lines: list[tuple[float, str]] = []
        self._log = log
        self.on_line = on_line
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with os.fdopen(self._r, "r", errors="replace") as f:
            for line in f:
                t = time.perf_counter()
                self.lines.append((t, line))
                if self._log is not None:
                    with contextlib.suppress(ValueError, OSError):
                        self._log.write(line)
                if self.on_line is not None:
                    with contextlib.suppress(Exception):
                        self.on_line(line, t)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------- misc


def machine_info() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    fs = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        fs = (
            subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True, timeout=5)
            .stdout.splitlines()[-1]
            .split()[1]
        )
    load = os.getloadavg()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "tmp_fs": fs,
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def versions(packages: Sequence[str]) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def dump_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))


async def instrument_commits(conn: Any) -> list[float]:
    """Bench-only: ``time.time()`` each time a hand-off to an aiosqlite connection's thread that ran a ``COMMIT``
    returns to the event loop, i.e. when the committing coroutine learns its transaction is durable.

    Works whether the store sends statements one by one (``execute("COMMIT")``) or whole transactions as one
    callable: a sqlite3 trace callback (on the connection's own thread) notes the COMMIT, and a wrapper around
    the connection's ``_execute`` stamps the time when that hand-off returns. Nothing in the product changes.
    """
    commits: list[float] = []
    seen = threading.Event()

    def trace(sql: str) -> None:
        if sql.strip().upper().startswith("COMMIT"):
            seen.set()

    await conn._execute(lambda: conn._conn.set_trace_callback(trace))
    original = conn._execute

    async def execute(fn: Any, *args: Any, **kw: Any) -> Any:
        result = await original(fn, *args, **kw)
        if seen.is_set():
            seen.clear()
            commits.append(time.time())
        return result

    conn._execute = execute
    return commits


# ---------------------------------------------------------------------------------------------- the load section

LOAD_BEGIN, LOAD_END = "<!-- load.md: begin -->", "<!-- load.md: end -->"
"""bench/load.py's section sits between these in README.md; bench/run.py puts load.md back when it rewrites."""


def splice_load(readme: Path, section: str) -> None:
    """Put ``section`` (bench/load.py's Markdown) into ``readme`` between the load markers (appended at first)."""
    if not readme.exists():
        return
    text = readme.read_text()
    block = f"{LOAD_BEGIN}\n{section.rstrip()}\n{LOAD_END}"
    if LOAD_BEGIN in text and LOAD_END in text:
        head, _, rest = text.partition(LOAD_BEGIN)
        text = head + block + rest.partition(LOAD_END)[2]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)
