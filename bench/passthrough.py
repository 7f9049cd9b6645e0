"""Benchmarks 1, 2, 6 and 7: pass-through latency, concurrent throughput, start-up, and peer proxies.

Every configuration is one stdio command the SDK client spawns (stdio on both sides). Configurations
run interleaved, round by round (A B C ... then B C ... A), so drift of the shared machine hits all of
them alike; "added" and "ratio" are paired per round against ``direct`` on the same upstream.

Per configuration and round: spawn + initialize (timed), tools/list (timed), 20 warm-up calls,
N sequential calls timed one by one (with CPU per call of client / proxy / server from /proc),
then BURSTS bursts of CONCURRENCY calls in flight at once (calls/s).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as C
import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

WARMUP = 20
TIME_CALL = ("get_current_time", {"timezone": "UTC"})
ECHO_CALL = ("echo", {"text": "hello"})

GK_CONFIG = """
# bench: the tools the pass-through benchmark calls are allowed explicitly; no page.
[ui]
autostart = false

[[rules]]
name = "bench-allow"
tool = ["get_current_time", "echo"]
gate = "allow"
"""


@dataclass
class Config:
    name: str  # e.g. "time/gatekeeper"
    upstream: str  # "time" | "echo": which direct it is paired with
    kind: str  # direct | relay | gatekeeper | sdk-proxy | mcp-proxy | fastmcp
    argv: list[str]
    call: tuple[str, dict[str, Any]]
    note: str = ""
    gk_home: bool = False  # give it a fresh MCP_GATEKEEPER_HOME per run
    env: dict[str, str] = field(default_factory=dict)


class Background:
    """Helper servers we start ourselves (mcp-proxy in server mode); stopped by their own pid."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        fh = log.open("w")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
        self.procs.append((proc, fh))
        return proc

    def stop(self) -> None:
        for proc, fh in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            fh.close()
        self.procs.clear()


def build_configs(bg: Background, *, peers: bool, only: set[str] | None = None) -> tuple[list[Config], list[str]]:
    """Every configuration we can run here, and notes about the ones we cannot."""
    notes: list[str] = []
    cfgs: list[Config] = []
    gk = C.gatekeeper_cmd()
    # GK_BENCH_BASELINE: the `mcp-gatekeeper` of another build (e.g. the previous release installed in its own venv),
    # measured in the same rounds as this one so that a change's cost is a paired difference, not two noisy runs
    base = [os.environ["GK_BENCH_BASELINE"]] if os.environ.get("GK_BENCH_BASELINE") else []
    cfg_file = C.OUT / "passthrough-gatekeeper.toml"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(GK_CONFIG)
    relay = str(C.BENCH / "relay.py")
    t = C.time_server()
    if t is None:
        notes.append("mcp-server-time not found (run .ci/setup or set GK_PEERS): the time-server rows are missing")
    else:
        cfgs += [
            Config("time/direct", "time", "direct", t, TIME_CALL),
            Config("time/byte-relay", "time", "relay", [sys.executable, relay, *t], TIME_CALL,
                   note="bench/relay.py: copies bytes, parses nothing (the floor of one extra hop)"),
            Config("time/gatekeeper", "time", "gatekeeper",
                   [*gk, "wrap", "--config", str(cfg_file), "--name", "time", "--", *t], TIME_CALL,
                   note="mcp-gatekeeper wrap, allow rule, [ui] autostart=false", gk_home=True),
        ]  # fmt: skip
        if base:
            cfgs.append(
                Config("time/gatekeeper-baseline", "time", "gatekeeper",
                       [*base, "wrap", "--config", str(cfg_file), "--name", "time", "--", *t], TIME_CALL,
                       note=f"the same, an earlier build for a side-by-side comparison: {base[0]}", gk_home=True)
            )  # fmt: skip
        if peers:
            sdk = C.sdk_proxy_path()
            if sdk is not None:
                cfgs.append(
                    Config("time/sdk-proxy", "time", "sdk-proxy", [sys.executable, str(sdk), *t], TIME_CALL,
                           note=f"minimal transparent proxy on the mcp SDK (Server + Client, raw dicts): {sdk}")
                )  # fmt: skip
            else:
                notes.append("SDK minimal proxy not found (set GK_SDK_PROXY): row skipped")
            fm = C.venv_bin("fastmcp", "python")
            if fm is not None:
                cfgs.append(
                    Config("time/fastmcp", "time", "fastmcp", [fm, str(C.BENCH / "fastmcp_proxy.py"), *t], TIME_CALL,
                           note="fastmcp create_proxy (PyPI), its own venv bench/.venvs/fastmcp")
                )  # fmt: skip
            else:
                notes.append("fastmcp venv missing (bench/run.sh creates bench/.venvs/fastmcp): row skipped")
            mp = C.venv_bin("mcp-proxy", "mcp-proxy")
            if mp is not None and (not only or "time/mcp-proxy" in only):
                port = C.free_port()
                quiet = ["--log-level", "WARNING"]
                srv = bg.start([mp, *quiet, "--host", "127.0.0.1", "--port", str(port), "--", *t],
                               C.OUT / "mcp-proxy-server.log")  # fmt: skip
                C.wait_port(port, srv)
                cfgs.append(
                    Config("time/mcp-proxy", "time", "mcp-proxy",
                           [mp, *quiet, "--transport", "streamablehttp", f"http://127.0.0.1:{port}/mcp"], TIME_CALL,
                           note="mcp-proxy (PyPI) has no stdio-to-stdio mode: stdio -> mcp-proxy client -> "
                                "Streamable HTTP -> mcp-proxy server -> stdio (two proxies)")
                )  # fmt: skip
            elif mp is None:
                notes.append("mcp-proxy venv missing (bench/run.sh creates bench/.venvs/mcp-proxy): row skipped")
    fs = C.feature_server()
    cfgs += [
        Config("echo/direct", "echo", "direct", fs, ECHO_CALL, note="tests/upstreams/feature_server.py (in-repo)"),
        Config("echo/gatekeeper", "echo", "gatekeeper",
               [*gk, "wrap", "--config", str(cfg_file), "--name", "feat", "--", *fs], ECHO_CALL, gk_home=True),
    ]  # fmt: skip
    if base:
        cfgs.append(
            Config("echo/gatekeeper-baseline", "echo", "gatekeeper",
                   [*base, "wrap", "--config", str(cfg_file), "--name", "feat", "--", *fs], ECHO_CALL, gk_home=True,
                   note=f"an earlier build, side by side: {base[0]}")
        )  # fmt: skip
    if only:
        cfgs = [c for c in cfgs if c.name in only]
    return cfgs, notes


_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[^\"\\]*")


def _normal(obj: Any) -> str:
    return _TS.sub("<ts>", json.dumps(obj, sort_keys=True))


@contextlib.asynccontextmanager
async def connect(cfg: Config, log: Path, home: Path | None) -> Any:
    env = C.gk_env(home) if home is not None else None
    params = StdioServerParameters(command=cfg.argv[0], args=cfg.argv[1:], env=env, cwd=str(C.ROOT))
    with log.open("a") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
            yield client


async def run_round(cfg: Config, n: int, bursts: int, concurrency: int) -> dict[str, Any]:
    pc = time.perf_counter
    out: dict[str, Any] = {}
    log = C.OUT / f"{cfg.name.replace('/', '-')}.stderr.log"
    with contextlib.ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gk-bench-"))) if cfg.gk_home else None
        tool, args = cfg.call
        t0 = pc()
        with anyio.fail_after(60):
            async with connect(cfg, log, home) as c:
                out["connect_ms"] = (pc() - t0) * 1e3
                t1 = pc()
                tools = await c.list_tools()
                out["list_ms"] = (pc() - t1) * 1e3
                out["tools"] = sorted(t.name for t in tools.tools)
                first = await c.call_tool(tool, args)
                out["result"] = _normal(first.model_dump(by_alias=True, exclude_none=True, mode="json"))
                for _ in range(WARMUP):
                    await c.call_tool(tool, args)
                lat: list[float] = []
                errors = 0
                cpu0 = C.tree_cpu()
                ts = pc()
                for _ in range(n):
                    t = pc()
                    r = await c.call_tool(tool, args)
                    lat.append((pc() - t) * 1e3)
                    errors += bool(r.is_error)
                out["wall_ms_per_call"] = (pc() - ts) / n * 1e3
                out["cpu_ms_per_call"] = C.cpu_per_call(cpu0, C.tree_cpu(), n)
                out["lat_ms"] = lat
                rates = []
                for _ in range(bursts):
                    flags: list[bool] = []

                    async def one(flags: list[bool] = flags) -> None:
                        res = await c.call_tool(tool, args)
                        flags.append(bool(res.is_error))

                    tb = pc()
                    async with anyio.create_task_group() as tg:
                        for _ in range(concurrency):
                            tg.start_soon(one)
                    rates.append(concurrency / (pc() - tb))
                    errors += sum(flags)
                out["burst_calls_per_s"] = rates
                out["errors"] = errors
    return out


async def run(opts: Any, progress: Any = print) -> dict[str, Any]:
    bg = Background()
    try:
        cfgs, notes = build_configs(bg, peers=opts.peers, only=opts.only)
        runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in cfgs}
        failed: dict[str, str] = {}
        for rnd in range(opts.rounds):
            order = cfgs[rnd % len(cfgs) :] + cfgs[: rnd % len(cfgs)]
            for cfg in order:
                if cfg.name in failed:
                    continue
                n = opts.calls
                try:
                    r = await run_round(cfg, n, opts.bursts, opts.concurrency)
                except Exception as e:  # record and drop this configuration, keep the others going
                    msg = f"{type(e).__name__}: {e}"
                    if isinstance(e, BaseExceptionGroup):
                        msg += " <- " + "; ".join(f"{type(x).__name__}: {x}" for x in e.exceptions)
                    failed[cfg.name] = f"round {rnd + 1}: {msg[:300]}"
                    progress(f"  [r{rnd + 1}] {cfg.name:18s} FAILED {failed[cfg.name]}")
                    continue
                r["round"] = rnd
                runs[cfg.name].append(r)
                progress(
                    f"  [r{rnd + 1}] {cfg.name:18s} p50 {C.pct(r['lat_ms'], 50):6.3f} ms  p95 {C.pct(r['lat_ms'], 95):6.3f}"
                    f"  burst {C.median(r['burst_calls_per_s']):6.0f}/s  connect {r['connect_ms']:5.0f} ms"
                    f"  cpu/call proxy {r['cpu_ms_per_call']['proxy']:.2f} ms  errors {r['errors']}"
                )
    finally:
        bg.stop()
    return {"configs": {c.name: _summarize(c, runs, failed) for c in cfgs}, "notes": notes, "params": {
        "rounds": opts.rounds, "calls_per_round": opts.calls, "bursts": opts.bursts, "concurrency": opts.concurrency,
        "warmup": WARMUP}}  # fmt: skip


def _summarize(cfg: Config, runs: dict[str, list[dict[str, Any]]], failed: dict[str, str]) -> dict[str, Any]:
    rs = runs[cfg.name]
    base = {"kind": cfg.kind, "upstream": cfg.upstream, "note": cfg.note, "argv": cfg.argv}
    if not rs:
        return {**base, "failed": failed.get(cfg.name, "no data")}
    direct = {r["round"]: r for r in runs.get(f"{cfg.upstream}/direct", [])}
    lat = [x for r in rs for x in r["lat_ms"]]
    bursts = [x for r in rs for x in r["burst_calls_per_s"]]
    paired = [(r, direct[r["round"]]) for r in rs if r["round"] in direct]

    def per_round(r: dict[str, Any]) -> float:
        return C.pct(r["lat_ms"], 50)

    added = [per_round(r) - per_round(d) for r, d in paired]
    ratio = [per_round(r) / per_round(d) for r, d in paired]
    tput_ratio = [C.median(r["burst_calls_per_s"]) / C.median(d["burst_calls_per_s"]) for r, d in paired]
    cpu = {k: C.median([r["cpu_ms_per_call"][k] for r in rs]) for k in ("client", "proxy", "server")}
    same_result = bool(direct) and rs[0]["result"] == next(iter(direct.values()))["result"]
    return {
        **base,
        "rounds": len(rs),
        "calls": len(lat),
        "latency_ms": C.summary(lat),
        "per_round_p50_ms": [per_round(r) for r in rs],
        "added_p50_ms_paired": C.median(added),
        "added_p50_ms_range": [min(added), max(added)] if added else None,
        "ratio_p50_paired": C.median(ratio),
        "burst_calls_per_s": C.median(bursts),
        "burst_range": [min(bursts), max(bursts)],
        "throughput_ratio_paired": C.median(tput_ratio),
        "connect_ms": C.median([r["connect_ms"] for r in rs]),
        "list_ms": C.median([r["list_ms"] for r in rs]),
        "cpu_ms_per_call": cpu,
        "errors": sum(r["errors"] for r in rs),
        "same_result_as_direct": same_result,
        "failed_later": failed.get(cfg.name),
        "raw_lat_ms": lat,
    }


# ---------------------------------------------------------------------------------------------- start-up (6)


async def startup(opts: Any, progress: Any = print) -> dict[str, Any]:
    """Spawn -> initialize answered -> tools/list answered, for each upstream alone and through wrap."""
    bg = Background()
    try:
        cfgs, _ = build_configs(bg, peers=False)
    finally:
        bg.stop()
    cfgs = [c for c in cfgs if c.kind in ("direct", "gatekeeper")]
    res: dict[str, dict[str, list[float]]] = {c.name: {"init_ms": [], "ready_ms": []} for c in cfgs}
    pc = time.perf_counter
    for i in range(opts.startup_reps):
        for cfg in cfgs[i % len(cfgs) :] + cfgs[: i % len(cfgs)]:
            with contextlib.ExitStack() as stack:
                home = (
                    Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gk-bench-"))) if cfg.gk_home else None
                )
                log = C.OUT / f"startup-{cfg.name.replace('/', '-')}.stderr.log"
                t0 = pc()
                with anyio.fail_after(60):
                    async with connect(cfg, log, home) as c:
                        t1 = pc()
                        await c.list_tools()
                        t2 = pc()
                res[cfg.name]["init_ms"].append((t1 - t0) * 1e3)
                res[cfg.name]["ready_ms"].append((t2 - t0) * 1e3)
    out: dict[str, Any] = {}
    for cfg in cfgs:
        r = res[cfg.name]
        d = res.get(f"{cfg.upstream}/direct")
        out[cfg.name] = {
            "upstream": cfg.upstream,
            "kind": cfg.kind,
            "ready_ms": C.summary(r["ready_ms"]),
            "init_ms": C.summary(r["init_ms"]),
            "added_ready_ms_paired": C.median([a - b for a, b in zip(r["ready_ms"], d["ready_ms"], strict=False)])
            if d
            else None,
            "ratio_ready_paired": C.median([a / b for a, b in zip(r["ready_ms"], d["ready_ms"], strict=False)])
            if d
            else None,
        }
        progress(f"  start-up {cfg.name:18s} ready p50 {out[cfg.name]['ready_ms']['p50']:6.0f} ms")
    return out
