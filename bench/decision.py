"""Benchmark 3: decision latency, from the decision's COMMIT to the upstream receiving the call.

(a) in-process: the test stack (Store + Gate + Proxy + in-process feature upstream, one event loop, a real
    SQLite file); ``gate.decide`` is called in the same process; the commit time is taken when the hand-off
    that ran its COMMIT returns (``_common.instrument_commits``); the upstream stamps ``at`` when the call
    arrives (``state.calls``).
(b) across processes: ``mcp-gatekeeper wrap`` holds the call (subprocess, ``HELD <id>`` on stderr), and a
    *separate* long-lived decider process (bench/decider.py) commits the approval; the upstream (the
    feature server, ``--call-log``) stamps ``at``. Latency = at - commit (both ``time.time()``, same host).
(c) the CLI as a person would use it: ``mcp-gatekeeper approve ID`` in a fresh process, timed from the
    command's launch (so it includes that process's Python start-up).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C
import anyio
import anyio.lowlevel
import anyio.streams.text
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

HOLD_CONFIG = """
[ui]
autostart = false

[[rules]]
name = "bench-hold"
tool = "write_note"
gate = "hard"
timeout = "1h"

[[rules]]
name = "bench-allow"
tool = ["echo", "get_current_time"]
gate = "allow"
"""


class HeldFeed:
    """``HELD <id>`` lines of a subprocess's stderr, stamped with perf_counter() by the reader thread as they
    arrive. ``recv`` delivers them one by one; ``all_held`` is set once ``expect`` of them have arrived (one
    wake-up for the whole burst, so the reader thread never waits for a busy event loop)."""

    def __init__(self, log: Path, expect: int | None = None) -> None:
        self._send, self.recv = anyio.create_memory_object_stream[tuple[float, str]](100_000)
        self._token = anyio.lowlevel.current_token()
        self._log = log.open("a")
        self.expect = expect
        self.held: list[tuple[float, str]] = []
        self.all_held = anyio.Event()
        self.watcher = C.LineWatcher(self._log, self._on_line)

    def _on_line(self, line: str, t: float) -> None:
        if m := C.HELD_RE.search(line):
            self.held.append((t, m.group(1)))
            if self.expect is None:
                anyio.from_thread.run_sync(self._send.send_nowait, (t, m.group(1)), token=self._token)
            elif len(self.held) == self.expect:
                anyio.from_thread.run_sync(self.all_held.set, token=self._token)

    def close(self) -> None:
        self.watcher.close()
        self._log.close()


class JsonLines:
    """JSON objects, one per line, from a process's stdout."""

    def __init__(self, stream: Any) -> None:
        self._text = anyio.streams.text.TextReceiveStream(stream)
        self._buf = ""

    async def next(self) -> dict[str, Any]:
        while "\n" not in self._buf:
            self._buf += await self._text.receive()
        line, self._buf = self._buf.split("\n", 1)
        return dict(json.loads(line))


def read_call_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- (a)


async def in_process(iters: int) -> dict[str, Any]:
    sys.path.insert(0, str(C.ROOT / "tests"))
    from upstreams.feature_server import build_server  # type: ignore[import-not-found]

    from mcp_gatekeeper.clock import SystemClock
    from mcp_gatekeeper.config import parse_config
    from mcp_gatekeeper.gate import Gate
    from mcp_gatekeeper.models import CallRecord, Decision
    from mcp_gatekeeper.policy import Policy
    from mcp_gatekeeper.proxy import Proxy
    from mcp_gatekeeper.store import Store
    from mcp_gatekeeper.upstream import Upstream

    config = parse_config(HOLD_CONFIG)
    clock = SystemClock()
    send, recv = anyio.create_memory_object_stream[CallRecord](100)

    class Notifier:
        async def held(self, call: CallRecord) -> None:
            await send.send(call)

    upstream = build_server(None)
    lat: list[float] = []
    to_result: list[float] = []
    with tempfile.TemporaryDirectory(prefix="gk-bench-") as d:
        async with Store.open(Path(d) / "gatekeeper.db", clock) as store:
            await store.register_instance("bench")
            gate = Gate(store, Policy(config), clock, notifier=Notifier())
            proxy = Proxy(config=config, policy=gate.policy, gate=gate, clock=clock)
            up = Upstream("feat", None, proxy.hooks(), target=upstream)
            proxy.upstreams = {"feat": up}
            commits = await C.instrument_commits(store.engine.connection)
            async with gate.running(), up.running():
                await up.connect()
                async with Client(proxy.build_server(), mode="legacy") as c:
                    for i in range(iters + 3):
                        done = anyio.Event()
                        finished: list[float] = []

                        async def call(i: int = i, done: anyio.Event = done, finished: list[float] = finished) -> None:
                            await c.call_tool("write_note", {"path": f"/tmp/bench-{i}", "content": "x"})
                            finished.append(time.time())
                            done.set()

                        async with anyio.create_task_group() as tg:
                            tg.start_soon(call)
                            rec = await recv.receive()
                            commits.clear()
                            await gate.decide(
                                rec.id,
                                Decision(
                                    approve=True, decided_by="bench", channel="bench", args_digest=rec.args_digest
                                ),
                            )
                            commit = commits[0]
                            await done.wait()
                        at = upstream.state.calls[-1]["at"]
                        if i >= 3:  # warm-up
                            lat.append((at - commit) * 1e3)
                            to_result.append((finished[0] - commit) * 1e3)
    return {"commit_to_upstream_ms": C.summary(lat), "commit_to_client_result_ms": C.summary(to_result), "raw": lat}


# ---------------------------------------------------------------------------------------------- (b) and (c)


async def across_processes(iters: int, cli_iters: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gk-bench-") as d:
        home = Path(d)
        cfg = home / "bench.toml"
        cfg.write_text(HOLD_CONFIG)
        call_log = home / "calls.jsonl"
        argv = [*C.gatekeeper_cmd(), "wrap", "--config", str(cfg), "--name", "feat", "--", *C.feature_server(call_log)]
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=C.gk_env(home), cwd=str(C.ROOT))
        feed = HeldFeed(C.OUT / "decision-wrap.stderr.log")
        lat: list[float] = []
        to_result: list[float] = []
        decide_ms: list[float] = []
        cli_lat: list[float] = []
        rng = random.Random(7)
        try:
            decider = await anyio.open_process(
                [sys.executable, str(C.BENCH / "decider.py"), str(cfg)],
                env=C.gk_env(home),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,
            )
            assert decider.stdin is not None
            assert decider.stdout is not None
            answers = JsonLines(decider.stdout)
            async with decider, Client(stdio_client(params, errlog=feed.watcher.file), mode="legacy") as c:
                with anyio.fail_after(60):
                    await answers.next()  # ready
                total = iters + 3 + cli_iters
                for i in range(total):
                    finished: list[float] = []

                    async def call(i: int = i, finished: list[float] = finished) -> None:
                        await c.call_tool("write_note", {"path": f"/tmp/bench-{i}", "content": "x"})
                        finished.append(time.time())

                    with anyio.fail_after(60):
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(call)
                            _, prefix = await feed.recv.receive()
                            # a person decides at a random moment: do not phase-lock with the holder's 20 ms poll
                            await anyio.sleep(rng.uniform(0.0, 0.05))
                            if i < iters + 3:
                                await decider.stdin.send(f"{prefix}\n".encode())
                                ans = await answers.next()
                                if "error" in ans:
                                    raise RuntimeError(f"decider: {ans['error']}")
                                commit = float(ans["commit"])
                                launched = None
                            else:
                                launched = time.time()
                                proc = await anyio.run_process(
                                    [*C.gatekeeper_cmd(), "approve", prefix], env=C.gk_env(home), check=False
                                )
                                if proc.returncode != 0:
                                    raise RuntimeError(
                                        f"approve exited {proc.returncode}: {proc.stderr.decode()[:300]}"
                                    )
                        at = read_call_log(call_log)[-1]["at"]
                    if launched is not None:
                        cli_lat.append((at - launched) * 1e3)
                    elif i >= 3:
                        lat.append((at - commit) * 1e3)
                        to_result.append((finished[0] - commit) * 1e3)
                        decide_ms.append((ans["done"] - ans["start"]) * 1e3)
        finally:
            feed.close()
    return {
        "commit_to_upstream_ms": C.summary(lat),
        "commit_to_client_result_ms": C.summary(to_result),
        "decider_decide_call_ms": C.summary(decide_ms),
        "cli_launch_to_upstream_ms": C.summary(cli_lat),
        "raw": lat,
    }


async def run(opts: Any, progress: Any = print) -> dict[str, Any]:
    progress(f"  in-process, {opts.decisions} decisions ...")
    a = await in_process(opts.decisions)
    progress(f"  across processes, {opts.decisions} decisions + {opts.cli_decisions} via the CLI ...")
    b = await across_processes(opts.decisions, opts.cli_decisions)
    return {"in_process": a, "across_processes": b}
