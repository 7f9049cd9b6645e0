"""CPU time a `wrap` process spends per allowed call, this build against another, side by side.

    GK_BENCH_BASELINE=/path/to/other/venv/bin/mcp-gatekeeper .venv/bin/python bench/cpu_per_call.py [N]

Latency on this shared 2-core machine moves by ±0.5 ms from round to round; the CPU time the proxy process
is charged (utime + stime from /proc, read around N sequential allowed `echo` calls after a warm-up) is the
steadier measure of what a change costs per call. Each build runs three times, interleaved; the medians are
printed. Linux only (/proc).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

import _common as C
import anyio
from mcp import StdioServerParameters
from mcp.client.session import ClientSession
from mcp.client.stdio import stdio_client

CONFIG = '[ui]\nautostart = false\n\n[[rules]]\nname = "bench-allow"\ntool = ["echo"]\ngate = "allow"\n'
WARMUP = 50


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_wrap(parent: int) -> int:
    """The `wrap` process the SDK client started (a child of this process)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == parent and b"wrap" in cmd:
            return int(entry.name)
    raise RuntimeError("the wrap process was not found")


async def one(gatekeeper: str, n: int) -> float:
    """ms of CPU per call."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.toml"
        cfg.write_text(CONFIG)
        env = {**os.environ, "MCP_GATEKEEPER_HOME": str(Path(tmp) / "home")}
        argv = ["wrap", "--config", str(cfg), "--name", "feat", "--", *C.feature_server()]
        params = StdioServerParameters(command=gatekeeper, args=argv, env=env)
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            for _ in range(WARMUP):
                await session.call_tool("echo", {"text": "hello"})
            pid = child_wrap(os.getpid())
            before = cpu_seconds(pid)
            for _ in range(n):
                await session.call_tool("echo", {"text": "hello"})
            return (cpu_seconds(pid) - before) / n * 1000


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    builds = {"this build": C.gatekeeper_cmd()[0]}
    if os.environ.get("GK_BENCH_BASELINE"):
        builds["baseline"] = os.environ["GK_BENCH_BASELINE"]
    runs: dict[str, list[float]] = {name: [] for name in builds}
    for _ in range(3):
        for name, gk in builds.items():
            runs[name].append(await one(gk, n))
    for name, values in runs.items():
        shown = " ".join(f"{v:.3f}" for v in values)
        print(f"{name:>10}: {statistics.median(values):.3f} ms CPU per allowed call (runs: {shown}; {n} calls each)")


if __name__ == "__main__":
    anyio.run(main)
