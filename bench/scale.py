"""Benchmark 5: many held calls.

(a) One client sends N concurrent calls that are all held, through ``mcp-gatekeeper wrap`` (a subprocess,
    feature upstream with a call log). Timed from the first send to the N-th ``HELD <id>`` line on stderr
    (each line stamped by the reader thread when it arrives). The wrap process's RSS (VmRSS; its pid from
    the ``instances`` table) before and with N held. Then the *last* held call is approved by a separate
    process (bench/decider.py) while the other N-1 still wait: commit -> upstream receiving it, and ->
    the client getting its result.
(b) The pending-list query on a database with 10,000 and 100,000 calls (1,000 of them pending, the rest
    in finished states): ``Store.list_calls(states=["pending"], limit=100, oldest_first=True)`` and the web
    API ``GET /api/calls?state=pending`` in-process through ``httpx2.ASGITransport``.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C
import anyio
from decision import HOLD_CONFIG, HeldFeed, JsonLines, read_call_log
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client


def _wrap_pid(db: Path) -> int | None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute("SELECT pid FROM instances WHERE stopped_at IS NULL ORDER BY started_at DESC").fetchone()
    return int(row[0]) if row else None


async def held_burst(n: int, decisions: int, progress: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n}
    with tempfile.TemporaryDirectory(prefix="gk-bench-") as d:
        home = Path(d)
        cfg = home / "bench.toml"
        cfg.write_text(HOLD_CONFIG)
        call_log = home / "calls.jsonl"
        argv = [*C.gatekeeper_cmd(), "wrap", "--config", str(cfg), "--name", "feat", "--", *C.feature_server(call_log)]
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=C.gk_env(home), cwd=str(C.ROOT))
        feed = HeldFeed(C.OUT / "scale-wrap.stderr.log", expect=n)
        try:
            decider = await anyio.open_process(
                [sys.executable, str(C.BENCH / "decider.py"), str(cfg)],
                env=C.gk_env(home), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
            )  # fmt: skip
            assert decider.stdin is not None
            assert decider.stdout is not None
            answers = JsonLines(decider.stdout)
            async with decider, Client(stdio_client(params, errlog=feed.watcher.file), mode="legacy") as c:
                await c.list_tools()
                pid = _wrap_pid(home / "gatekeeper.db")
                out["wrap_pid_found"] = pid is not None
                out["rss_idle_mib"] = (C.rss_kb(pid) or 0) / 1024 if pid else None
                results: dict[int, float] = {}

                async def call(i: int) -> None:
                    await c.call_tool("write_note", {"path": f"/tmp/scale-{i}", "content": "x"})
                    results[i] = time.time()

                with anyio.fail_after(300):
                    async with anyio.create_task_group() as tg:
                        t0 = time.perf_counter()
                        for i in range(n):
                            tg.start_soon(call, i)
                        t_sent = time.perf_counter()
                        await feed.all_held.wait()
                        held = sorted(feed.held)
                        out["send_all_s"] = t_sent - t0
                        out["all_pending_s"] = held[-1][0] - t0
                        out["first_held_s"] = held[0][0] - t0
                        out["median_held_s"] = held[len(held) // 2][0] - t0
                        progress(f"  {n} held in {out['all_pending_s']:.2f} s")
                        out["rss_held_mib"] = (C.rss_kb(pid) or 0) / 1024 if pid else None
                        # the live pending list with n rows, from this (other) process
                        out["live_pending_query_ms"] = await _store_query_times(home / "gatekeeper.db", 50)
                        # decide the most recent ones, one by one, from a separate process while the rest wait
                        rng = random.Random(3)
                        lat: list[float] = []
                        to_client: list[float] = []
                        for k in range(decisions):
                            await anyio.sleep(rng.uniform(0.0, 0.05))  # not phase-locked with the 20 ms poll
                            await decider.stdin.send(f"{held[-1 - k][1]}\n".encode())
                            ans = await answers.next()
                            while "ready" in ans:
                                ans = await answers.next()
                            if "error" in ans:
                                raise RuntimeError(f"decider: {ans['error']}")
                            commit = float(ans["commit"])
                            while len(read_call_log(call_log)) <= k or len(results) <= k:
                                await anyio.sleep(0.001)
                            lat.append((read_call_log(call_log)[k]["at"] - commit) * 1e3)
                            to_client.append((sorted(results.values())[k] - commit) * 1e3)
                        out["decide_while_held_commit_to_upstream_ms"] = C.summary(lat)
                        out["decide_while_held_commit_to_client_ms"] = C.summary(to_client)
                        out["decide_while_held_raw_ms"] = lat
                        progress(
                            f"  {decisions} decisions with {n - 1}..{n - decisions} others held: commit -> upstream"
                            f" p50 {C.median(lat):.1f} ms, max {max(lat):.1f} ms"
                        )
                        t_cancel = time.perf_counter()
                        tg.cancel_scope.cancel()  # the client cancels the rest (notifications/cancelled)
                out["cancel_rest_s"] = time.perf_counter() - t_cancel
        finally:
            feed.close()
    return out


# ---------------------------------------------------------------------------------------------- (b)

_FINISHED = [("forwarded", 80), ("denied", 8), ("rejected", 5), ("expired", 4), ("failed", 2), ("cancelled", 1)]


_COLS = (
    "id", "state", "upstream", "tool", "arguments", "args_digest", "gate", "risk", "rule", "tooldef_hash", "summary",
    "effects", "reasons", "agent_reason", "agent_confidence", "client", "input_schema", "instance_id", "created_at",
    "deadline_at", "decided_at", "decided_by", "channel", "reason", "modified_arguments", "result", "error",
    "finished_at", "wait_strategy",
)  # fmt: skip
"""The columns of the first schema; later migrations only add columns with defaults."""


def _fill(db: Path, total: int, pending: int, seed: int = 1) -> None:
    """Rows straight into the calls table (same schema, made by Store.open first); realistic sizes."""
    rng = random.Random(seed)
    states = [s for s, w in _FINISHED for _ in range(w)]
    now = time.time()
    tools = ["write_file", "issue_refund", "send_email", "delete_branch", "create_issue", "get_status", "search"]

    def rows() -> Any:
        for i in range(total):
            state = "pending" if i >= total - pending else rng.choice(states)
            tool = rng.choice(tools)
            args = json.dumps({"path": f"/srv/data/{i}.txt", "content": "x" * rng.randint(20, 400), "n": i})
            created = now - (total - i) * 0.5
            yield (
                f"{i:026x}", state, "bench", tool, args, f"{i:064x}", "hard", "medium", "bench-hold", "0" * 64,
                f"Write file {i}", "{}", '["matched bench-hold"]', None, None, '{"name":"bench"}', None, "inst",
                created, created + 3600, None if state == "pending" else created + 5, None, None, None, None,
                None if state == "pending" else '{"content":[{"type":"text","text":"ok"}]}', None,
                None if state == "pending" else created + 6, "hold",
            )  # fmt: skip

    with sqlite3.connect(db) as conn:
        conn.executemany(f"INSERT INTO calls ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})", rows())
        conn.commit()


async def _store_query_times(db: Path, reps: int) -> dict[str, float]:
    from mcp_gatekeeper.clock import SystemClock
    from mcp_gatekeeper.store import Store

    async with Store.open(db, SystemClock()) as store:
        ts = []
        for _ in range(reps + 5):
            t = time.perf_counter()
            rows = await store.list_calls(states=["pending"], limit=100, oldest_first=True)
            ts.append((time.perf_counter() - t) * 1e3)
        assert rows
    return C.summary(ts[5:])


async def pending_queries(sizes: list[int], pending: int, reps: int, progress: Any) -> dict[str, Any]:
    import httpx2

    from mcp_gatekeeper.clock import SystemClock
    from mcp_gatekeeper.config import parse_config
    from mcp_gatekeeper.gate import Gate
    from mcp_gatekeeper.policy import Policy
    from mcp_gatekeeper.store import Store

    try:
        from mcp_gatekeeper import web
    except ImportError as e:  # the page is optional
        web = None
        web_error = f"mcp_gatekeeper.web does not import: {e}"
    out: dict[str, Any] = {}
    clock = SystemClock()
    config = parse_config(HOLD_CONFIG)
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="gk-bench-") as d:
            db = Path(d) / "gatekeeper.db"
            async with Store.open(db, clock):
                pass
            t = time.perf_counter()
            _fill(db, size, min(pending, size))
            fill_s = time.perf_counter() - t
            res: dict[str, Any] = {"rows": size, "pending": min(pending, size), "fill_s": fill_s}
            res["store_list_calls_ms"] = await _store_query_times(db, reps)
            async with Store.open(db, clock) as store:
                ts = []
                for _ in range(reps):
                    t = time.perf_counter()
                    await store.counts()
                    ts.append((time.perf_counter() - t) * 1e3)
                res["store_counts_ms"] = C.summary(ts)
                if web is None:
                    res["web_api"] = {"skipped": web_error}
                else:
                    try:
                        app = web.build_app(
                            store=store, gate=Gate(store, Policy(config), clock), policy=Policy(config),
                            token="bench-token", port=8765, clock=clock,
                        )  # fmt: skip
                        transport = httpx2.ASGITransport(app=app)
                        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765") as http:
                            headers = {"Authorization": "Bearer bench-token"}
                            ts = []
                            for i in range(reps + 5):
                                t = time.perf_counter()
                                r = await http.get("/api/calls", params={"state": "pending"}, headers=headers)
                                dt = (time.perf_counter() - t) * 1e3
                                if r.status_code != 200:
                                    raise RuntimeError(f"GET /api/calls -> {r.status_code}: {r.text[:200]}")
                                if i >= 5:
                                    ts.append(dt)
                            res["web_api_ms"] = C.summary(ts)
                            res["web_api_returned"] = len(r.json().get("calls", []))
                    except Exception as e:  # report, do not fail the whole run
                        res["web_api"] = {"skipped": f"{type(e).__name__}: {e}"[:300]}
        out[str(size)] = res
        progress(
            f"  {size:>7} rows: list_calls p95 {res['store_list_calls_ms']['p95']:.2f} ms"
            + (f", GET /api/calls p95 {res['web_api_ms']['p95']:.2f} ms" if "web_api_ms" in res else "")
        )
    return out


async def run(opts: Any, progress: Any = print) -> dict[str, Any]:
    progress(f"  {opts.held} concurrent held calls through wrap ...")
    burst = await held_burst(opts.held, opts.held_decisions, progress)
    progress("  pending-list queries ...")
    queries = await pending_queries(opts.db_sizes, 1000, opts.query_reps, progress)
    return {"held_burst": burst, "pending_queries": queries}
