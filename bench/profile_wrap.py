"""Where the per-call time of an allowed call goes inside ``mcp-gatekeeper wrap``.

Two views:

1. **py-spy** (sampling, 1 kHz, every thread, on-CPU samples only) of the real ``wrap`` process while the
   client makes N sequential allowed calls. Each sample is put in one bucket by its innermost recognisable
   frame (SQLite work in the aiosqlite thread, our store code, policy, JSON/digests, pydantic, the SDK's
   session and transport, anyio/asyncio scheduling, ...), and we also report inclusive time of the
   handful of functions on the hot path. CPU ms per call = bucket share x the wrap process's CPU per call.
2. **Components in-process** (no pipes): the same building blocks timed alone, so each line is a price
   tag: the two SQLite transactions of an allowed call (as shipped: WAL + synchronous=FULL; and, for
   comparison only, the same with synchronous=NORMAL and with the store's lock-free single commit), one
   policy evaluation, canonical JSON + digests, and one call through the SDK's in-process client/server
   with and without the gatekeeper's Proxy in between.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _common as C
import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

# Main-thread (event loop) samples go to one bucket by their innermost recognisable frame.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("policy.evaluate", ("mcp_gatekeeper/policy.py",)),
    ("canonical JSON / SHA-256 digests / audit hash", ("mcp_gatekeeper/models.py", "json/", "hashlib")),
    ("store.py on the event loop (rows, CallRecord; SQLite itself when run inline)", ("mcp_gatekeeper/store.py",)),
    ("aiosqlite, event-loop side (queue put, futures)", ("aiosqlite/",)),
    ("fastlane.py / gate.py / proxy.py / upstream.py logic", ("mcp_gatekeeper/",)),
    ("jsonschema (arguments against the tool's inputSchema)", ("jsonschema/", "referencing/")),
    ("pydantic validation / serialisation (SDK types)", ("pydantic/", "pydantic_core", "mcp_types/", "type_adapter")),
    ("MCP SDK session, dispatcher, stdio transport", ("mcp/",)),
    ("pipe write syscalls (asyncio pipe transport: to the upstream's stdin)", ("unix_events.py",)),
    ("waking anyio worker threads (to_thread: Queue.put -> Condition.notify)", ("queue.py",)),
    ("anyio / asyncio scheduling (event loop, tasks, cancel scopes, events)", ("anyio/", "asyncio/")),
    ("other", ("",)),
]

HOT_FUNCTIONS = [
    ("FastLane.offer (take the line off stdin: parse, plan_fast)", "offer (mcp_gatekeeper/fastlane.py"),
    ("FastLane._serve (record, forward, record, reply)", "_serve (mcp_gatekeeper/fastlane.py"),
    ("Proxy.plan_fast (the lane's guard around Planner.plan_now)", "plan_fast (mcp_gatekeeper/proxy.py"),
    ("Planner.decide (schema, policy, size, pin, NewCall)", "decide (mcp_gatekeeper/plan.py"),
    ("SchemaChecks.check (arguments against the tool's inputSchema)", "check (mcp_gatekeeper/argcheck.py"),
    ("normalise (the upstream's result, once for both lanes)", "normalise (mcp_gatekeeper/execute.py"),
    ("Proxy._call_tool (the full path's handler, inclusive)", "_call_tool (mcp_gatekeeper/proxy.py"),
    ("Store.insert_call (commit 1)", "insert_call (mcp_gatekeeper/store.py"),
    ("Gate.finish -> Store.finish_call (commit 2)", "finish (mcp_gatekeeper/gate.py"),
    ("Store.get (read back a row -> CallRecord)", "get (mcp_gatekeeper/store.py"),
    ("Store._audit (hash chain: previous hash, SHA-256, INSERT)", "_audit (mcp_gatekeeper/store.py"),
    ("Policy.evaluate", "evaluate (mcp_gatekeeper/policy.py"),
    ("tooldef_hash", "tooldef_hash (mcp_gatekeeper/proxy.py"),
    ("Proxy._client_info", "_client_info (mcp_gatekeeper/proxy.py"),
    ("Upstream.request (send to upstream)", "request (mcp_gatekeeper/upstream.py"),
    ("downstream stdin reader: read line + parse JSON-RPC", "stdin_reader (mcp/server/stdio.py"),
    ("downstream stdout writer: serialise + write", "stdout_writer (mcp/server/stdio.py"),
    ("upstream side: stdout reader (parse the upstream's reply)", "stdout_reader (mcp/client/stdio.py"),
    ("upstream side: stdin writer (serialise + write to upstream)", "stdin_writer (mcp/client/stdio.py"),
    (
        "SDK request dispatch (validate params, run handler, serialise result)",
        "_handle_request (mcp/shared/jsonrpc_dispatcher.py",
    ),
]


_LAUNCH = (
    "import os, sys; os.dup2(3, 1); os.close(3); sys.argv[0] = 'mcp-gatekeeper'; "
    "from mcp_gatekeeper.cli import entry; sys.exit(entry())"
)


def _short(frame: str) -> str:
    return frame.split(" (")[0]


def _is_idle(thread: str, frames: list[str]) -> bool:
    """py-spy's idle detection does not work in this VM, so waits are recognised by their frames."""
    leaf = frames[-1] if frames else ""
    if "select (selectors.py" in leaf or "wait (threading.py" in leaf:
        return True
    return "_connection_worker_thread (aiosqlite/core.py:59)" in leaf  # tx.get(): waiting for work


def _bucket(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for name, needles in BUCKETS[:-1]:
            if any(n in frame for n in needles):
                return name
    return BUCKETS[-1][0]


def analyse(raw: Path) -> dict[str, Any]:
    """Busy samples by thread and (main thread) by bucket; inclusive samples of the hot functions.

    Threads are told apart by id (py-spy sometimes cannot read a thread's name; the main thread is the one
    it names MainThread)."""
    lines = []
    names: dict[str, str] = {}
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        frames = stack.split(";")
        head = frames[0]
        tid, _, name = head.partition(": ")
        if name:
            names[tid] = name
        lines.append((tid, frames[1:], int(count_s)))
    main_tid = next((t for t, nm in names.items() if nm == "MainThread"), None)
    main: Counter[str] = Counter()
    other: Counter[str] = Counter()
    hot: Counter[str] = Counter()
    idle = startup = main_total = 0
    for tid, body, n in lines:
        thread = names.get(tid, tid)
        stack = ";".join(body)
        is_main = tid == main_tid
        if is_main:
            main_total += n
        if "importlib._bootstrap" in stack:
            startup += n
            continue
        if _is_idle(thread, body):
            idle += n
            continue
        leaf = body[-1] if body else ""
        if is_main:
            main[_bucket(body) if body else "no Python frame (native code: GIL hand-off, syscalls)"] += n
            for label, needle in HOT_FUNCTIONS:
                if needle in stack:
                    hot[label] += n
        elif "_connection_worker_thread" in stack or "_connection_worker_thread" in thread:
            if "aiosqlite/core.py:63" in leaf:
                other["aiosqlite worker: running SQL in SQLite (C), incl. fsync at COMMIT"] += n
            elif "call_soon_threadsafe" in stack:
                other["aiosqlite worker: waking the event loop (call_soon_threadsafe -> self-pipe write)"] += n
            else:
                other["aiosqlite worker: other"] += n
        elif "AnyIO worker" in thread or "WorkerThread.run" in stack:
            if "call_soon_threadsafe" in stack or "Queue." in stack:
                other["anyio to_thread workers: hand-off overhead (queue, call_soon_threadsafe)"] += n
            else:
                other["anyio to_thread workers: inside a blocking stdin read / stdout write (mostly waiting)"] += n
        else:
            other["other threads"] += n
    return {
        "main": dict(main), "threads": dict(other), "hot": dict(hot), "idle": idle, "startup": startup,
        "main_total": main_total,
    }  # fmt: skip


async def profile(
    cfg_text: str, upstream: list[str], call: tuple[str, dict[str, Any]], n: int, rate: int
) -> dict[str, Any]:
    """One py-spy session on ``wrap``: start-up, 50 warm-up calls, then ``n`` timed calls. Busy ms by bucket."""
    pyspy = shutil.which("py-spy") or str(Path(C.gatekeeper_cmd()[0]).parent / "py-spy")
    if not Path(pyspy).exists():
        return {"skipped": "py-spy is not installed (pip install py-spy; bench/run.sh does)"}
    raw = C.OUT / f"pyspy-{call[0]}-{n}.txt"
    raw.unlink(missing_ok=True)
    cfg_file = C.OUT / "profile-gatekeeper.toml"
    cfg_file.write_text(cfg_text)
    with tempfile.TemporaryDirectory(prefix="gk-bench-") as home:
        # py-spy prints its banner on stdout, which is the MCP channel here. So py-spy gets stderr as its stdout
        # and the MCP pipe as fd 3, and the profiled Python moves fd 3 back onto its stdout before it runs the
        # same entry point as the `mcp-gatekeeper` console script.
        argv = ["/bin/sh", "-c", 'exec 3>&1 1>&2; exec "$0" "$@"',
                pyspy, "record", "--format", "raw", "--rate", str(rate), "--threads", "--nonblocking", "-o", str(raw),
                "--", sys.executable, "-c", _LAUNCH, "wrap", "--config", str(cfg_file), "--", *upstream]  # fmt: skip
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=C.gk_env(Path(home)), cwd=str(C.ROOT))
        log = C.OUT / f"pyspy-{call[0]}-{n}.stderr.log"
        tool, args = call
        wall = cpu = None
        t_spawn = time.perf_counter()
        with log.open("w") as errlog, anyio.fail_after(300):
            async with Client(stdio_client(params, errlog=errlog), mode="legacy") as c:
                await c.list_tools()
                for _ in range(50):
                    await c.call_tool(tool, args)
                if n:
                    cpu0 = C.tree_cpu()
                    t0 = time.perf_counter()
                    for _ in range(n):
                        await c.call_tool(tool, args)
                    wall = (time.perf_counter() - t0) / n * 1e3
                    cpu = C.cpu_per_call(cpu0, C.tree_cpu(), n)
        lifetime = time.perf_counter() - t_spawn
        for _ in range(100):  # py-spy writes its file when the child exits
            if raw.exists() and raw.stat().st_size > 0:
                break
            await anyio.sleep(0.1)
    if not raw.exists():
        return {"skipped": f"py-spy wrote nothing (see {log})"}
    res = analyse(raw)
    # every sample covers every thread, so one main-thread sample stands for lifetime / main_total seconds
    per = lifetime * 1e3 / max(1, res["main_total"])
    res.update({
        "calls": n, "wall_ms_per_call": wall, "cpu_ms_per_call": cpu, "tool": tool, "lifetime_s": lifetime,
        "ms_per_sample": per, "effective_rate_hz": 1e3 / per,
        "main_ms": {k: v * per for k, v in res["main"].items()},
        "threads_ms": {k: v * per for k, v in res["threads"].items()},
        "hot_ms": {k: v * per for k, v in res["hot"].items()},
    })  # fmt: skip
    return res


async def profile_per_call(
    cfg_text: str, upstream: list[str], call: tuple[str, dict[str, Any]], n: int
) -> dict[str, Any]:
    """Busy ms per call = (session with n calls - session with 0 calls) / n, bucket by bucket: start-up,
    warm-up and shutdown cancel out."""
    full = await profile(cfg_text, upstream, call, n, 1000)
    base = await profile(cfg_text, upstream, call, 0, 1000)
    if "skipped" in full or "skipped" in base:
        return full if "skipped" in full else base

    def diff(key: str) -> dict[str, float]:
        keys = set(full[key]) | set(base[key])
        return {k: (full[key].get(k, 0.0) - base[key].get(k, 0.0)) / n for k in keys}

    return {
        "tool": full["tool"], "calls": n, "wall_ms_per_call": full["wall_ms_per_call"],
        "cpu_ms_per_call": full["cpu_ms_per_call"], "effective_rate_hz": full["effective_rate_hz"],
        "main_ms_per_call": diff("main_ms"), "threads_ms_per_call": diff("threads_ms"),
        "hot_ms_per_call": diff("hot_ms"), "sessions": {"full": full, "baseline": base},
    }  # fmt: skip


async def profile_burst(n: int) -> dict[str, Any]:
    """py-spy on ``wrap`` while one client sends ``n`` concurrent calls that are all held: which of our functions
    the event loop is busy in (inclusive), until the n-th ``HELD`` line."""
    from decision import HOLD_CONFIG, HeldFeed

    pyspy = shutil.which("py-spy") or str(Path(C.gatekeeper_cmd()[0]).parent / "py-spy")
    if not Path(pyspy).exists():
        return {"skipped": "py-spy is not installed"}
    raw = C.OUT / f"pyspy-held-burst-{n}.txt"
    raw.unlink(missing_ok=True)
    cfg_file = C.OUT / "profile-hold.toml"
    cfg_file.write_text(HOLD_CONFIG)
    with tempfile.TemporaryDirectory(prefix="gk-bench-") as home:
        argv = ["/bin/sh", "-c", 'exec 3>&1 1>&2; exec "$0" "$@"',
                pyspy, "record", "--format", "raw", "--rate", "1000", "--threads", "--nonblocking", "-o", str(raw),
                "--", sys.executable, "-c", _LAUNCH, "wrap", "--config", str(cfg_file), "--", *C.feature_server()]  # fmt: skip
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=C.gk_env(Path(home)), cwd=str(C.ROOT))
        feed = HeldFeed(C.OUT / "pyspy-held-burst.stderr.log", expect=n)
        t_spawn = time.perf_counter()
        try:
            with anyio.fail_after(300):
                async with Client(stdio_client(params, errlog=feed.watcher.file), mode="legacy") as c:
                    await c.list_tools()
                    async with anyio.create_task_group() as tg:
                        t0 = time.perf_counter()
                        for i in range(n):
                            tg.start_soon(c.call_tool, "write_note", {"path": f"/tmp/p{i}", "content": "x"})
                        await feed.all_held.wait()
                        all_held = max(t for t, _ in feed.held) - t0
                        tg.cancel_scope.cancel()
            lifetime = time.perf_counter() - t_spawn
        finally:
            feed.close()
        for _ in range(100):
            if raw.exists() and raw.stat().st_size > 0:
                break
            await anyio.sleep(0.1)
    if not raw.exists():
        return {"skipped": "py-spy wrote nothing"}
    names: dict[str, str] = {}
    rows = []
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        frames = stack.split(";")
        tid, _, name = frames[0].partition(": ")
        if name:
            names[tid] = name
        rows.append((tid, frames[1:], int(count_s)))
    main_tid = next((t for t, nm in names.items() if nm == "MainThread"), None)
    main_total = sum(k for t, _, k in rows if t == main_tid)
    per = lifetime * 1e3 / max(1, main_total)
    inclusive: Counter[str] = Counter()
    busy = 0
    for tid, body, k in rows:
        if tid != main_tid or not body or "importlib._bootstrap" in ";".join(body) or _is_idle("MainThread", body):
            continue
        busy += k
        for f in {_short(f) for f in body if "mcp_gatekeeper/" in f and "cli.py" not in f}:
            inclusive[f] += k
    top = {f: v * per for f, v in inclusive.most_common(14) if f not in ("run_proxy", "main", "entry")}
    return {"held": n, "all_held_s": all_held, "busy_ms_total": busy * per, "inclusive_ms": top,
            "effective_rate_hz": 1e3 / per}  # fmt: skip


# ---------------------------------------------------------------------------------------------- components


# labels of the component table (the report looks some of them up)
K_POLICY = "policy.evaluate (1 rule)"
K_HASH = "tooldef_hash + canonical_json(args) + digest(args)"
K_HANDOFFS = "hand-offs to aiosqlite's thread per allowed call (count, not µs)"
K_SHIP = "store as shipped: record(allowed) + finish(forwarded), 2 commits, default durability"
K_FULL = "store with every commit fsynced (synchronous=FULL throughout)"
K_NOSYNC = "store with no commit fsynced (synchronous=NORMAL throughout)"
K_FSYNC_DEFAULT = "allowed-call commits fsynced by default (1 = yes, 0 = no)"
K_HOP = "prototype S1: the same 2 transactions, each ONE thread hop, no read-back, FULL"
K_HOP2 = "prototype S1+S2: as S1, pre-forward commit NORMAL, outcome commit FULL (1 fsync)"
K_RT = "one aiosqlite round trip (SELECT 1: execute + fetchall = 2 hand-offs)"
K_DIRECT = "in-process call: client -> upstream Server (SDK JSON-RPC framing, no pipes)"
K_SDK = "in-process call through the SDK minimal proxy (shared/docs/sdk-snippets/proxy.py)"
K_NOSTORE = "in-process call through the gatekeeper Proxy, store stubbed out (bench-only Gate subclass)"
K_SHIPPED = "in-process call through the gatekeeper Proxy as shipped"


async def _interleaved(variants: dict[str, Any], n: int, batch: int = 25) -> dict[str, float]:
    """Median ms per call of each variant, the variants taking turns in batches (so a burst of load or a slow
    fsync on the shared machine hits all of them alike)."""
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for one in variants.values():
        for _ in range(20):
            await one()
    pc = time.perf_counter
    for _ in range(max(1, n // batch)):
        for label, one in variants.items():
            for _ in range(batch):
                t = pc()
                await one()
                samples[label].append((pc() - t) * 1e3)
    return {k: C.pct(v, 50) for k, v in samples.items()}


async def components(n: int) -> dict[str, Any]:
    """Each per-call building block priced in one process, on real SQLite files (median ms per call)."""
    import sqlite3

    import mcp.types as types
    from mcp.server import Server, ServerRequestContext

    from mcp_gatekeeper.clock import SystemClock
    from mcp_gatekeeper.config import parse_config
    from mcp_gatekeeper.gate import Gate
    from mcp_gatekeeper.models import (
        GENESIS_HASH,
        CallRecord,
        NewCall,
        State,
        audit_hash,
        canonical_json,
        digest,
        new_call_id,
    )
    from mcp_gatekeeper.policy import Policy
    from mcp_gatekeeper.proxy import Proxy, tooldef_hash
    from mcp_gatekeeper.store import Store
    from mcp_gatekeeper.upstream import Upstream

    config = parse_config(
        '[ui]\nautostart = false\n[[rules]]\nname = "bench-allow"\ntool = ["echo", "get_current_time"]\ngate = "allow"\n'
    )
    policy = Policy(config)
    clock = SystemClock()
    tooldef = {
        "name": "get_current_time",
        "description": "Get current time in a specific timezones",
        "inputSchema": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
        "annotations": {"readOnlyHint": True},
    }
    args = {"timezone": "UTC"}
    result = {"content": [{"type": "text", "text": '{"timezone": "UTC", "datetime": "2026-11-24T20:00:00+00:00"}'}]}
    out: dict[str, Any] = {}
    pc = time.perf_counter

    def timed_sync(fn: Any, reps: int) -> float:
        fn()
        t = pc()
        for _ in range(reps):
            fn()
        return (pc() - t) / reps * 1e3

    out[K_POLICY] = timed_sync(
        lambda: policy.evaluate("time", "get_current_time", args, tooldef["annotations"]), n * 10
    )
    out[K_HASH] = timed_sync(lambda: (tooldef_hash(tooldef), canonical_json(args), digest(args)), n * 10)

    def new_call() -> NewCall:
        return NewCall(
            upstream="time", tool="get_current_time", arguments=args, gate="allow", risk="low", rule="bench-allow",
            tooldef_hash=tooldef_hash(tooldef), reasons=("matched bench-allow",), client={"name": "bench"},
            input_schema=tooldef["inputSchema"],
        )  # fmt: skip

    async with contextlib.AsyncExitStack() as stack:

        async def open_store(sync: str | None) -> Store:
            """``sync`` None: as shipped; "FULL": fsync every commit; "NORMAL": fsync none. Newer stores choose
            per transaction (``fsync_every_call``); older ones take the connection's PRAGMA."""
            d = stack.enter_context(tempfile.TemporaryDirectory(prefix="gk-bench-"))
            store = await stack.enter_async_context(Store.open(Path(d) / "gk.db", clock))
            await store.register_instance("bench")
            if sync is not None:
                if hasattr(store, "fsync_every_call"):
                    store.fsync_every_call = sync == "FULL"
                await store.engine.connection.execute(f"PRAGMA synchronous = {sync}")
            return store

        def store_variant(store: Store) -> Any:
            gate = Gate(store, policy, clock)

            async def one() -> None:
                rec = await gate.record(new_call(), State.ALLOWED)
                await gate.finish(rec, result=result, error=None)

            return one

        # how many hand-offs to the aiosqlite thread one allowed call makes
        counted = await open_store(None)
        original = counted.engine.connection._execute
        handoffs = 0

        async def counting(fn: Any, *a: Any, **kw: Any) -> Any:
            nonlocal handoffs
            handoffs += 1
            return await original(fn, *a, **kw)

        counted.engine.connection._execute = counting  # type: ignore[method-assign]
        await store_variant(counted)()
        out[K_HANDOFFS] = float(handoffs)
        out[K_FSYNC_DEFAULT] = 0.0 if getattr(counted, "fsync_every_call", True) is False else 1.0

        def prototype(first_sync: str) -> Any:
            """Bench-only prototype of S1 (and S2): the same two transactions, same SQL shape and audit chain,
            each run as one function in a worker thread (one hand-off), no read-back SELECT."""
            d = stack.enter_context(tempfile.TemporaryDirectory(prefix="gk-bench-"))
            db = Path(d) / "gk.db"
            conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            stack.callback(conn.close)
            cols = "id, state, upstream, tool, arguments, args_digest, gate, risk, rule, tooldef_hash, reasons, client, input_schema, created_at"

            def audit(event: str, cid: str, dig: str, detail: dict[str, Any]) -> None:
                row = conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                prev = row[0] if row else GENESIS_HASH
                at = clock.now()
                body = {"at": at, "call_id": cid, "event": event, "actor": "policy", "channel": "policy",
                        "args_digest": dig, "detail": detail}  # fmt: skip
                conn.execute(
                    "INSERT INTO audit (at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (at, cid, event, "policy", "policy", dig, canonical_json(detail), prev, audit_hash(prev, body)),
                )

            def insert(new: NewCall) -> str:
                cid = new_call_id()
                if first_sync != "FULL":
                    conn.execute(f"PRAGMA synchronous = {first_sync}")
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    f"INSERT INTO calls ({cols}) VALUES ({', '.join('?' * 14)})",
                    (cid, "allowed", new.upstream, new.tool, canonical_json(new.arguments), new.args_digest, new.gate,
                     new.risk, new.rule, new.tooldef_hash, canonical_json(list(new.reasons)),
                     canonical_json(new.client), canonical_json(new.input_schema), clock.now()),
                )  # fmt: skip
                audit("allowed", cid, new.args_digest, {"tool": new.tool, "gate": new.gate})
                conn.execute("COMMIT")
                return cid

            def finish(cid: str, dig: str) -> None:
                conn.execute("PRAGMA synchronous = FULL")  # in WAL, this fsync also covers the first commit
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "UPDATE calls SET state = 'forwarded', result = ?, finished_at = ? WHERE id = ? AND state = 'allowed'",
                    (canonical_json(result), clock.now(), cid),
                )
                audit("forwarded", cid, dig, {"is_error": False})
                conn.execute("COMMIT")

            async def one() -> None:
                new = new_call()
                cid = await anyio.to_thread.run_sync(insert, new)
                await anyio.to_thread.run_sync(finish, cid, new.args_digest)

            return db, one

        proto_full_db, proto_full = prototype("FULL")
        proto_norm_db, proto_norm = prototype("NORMAL")
        for db in (proto_full_db, proto_norm_db):  # same schema as the product's, made by Store.open
            async with Store.open(db, clock):
                pass
        rt_store = await open_store(None)

        async def roundtrip() -> None:
            await (await rt_store.engine.connection.execute("SELECT 1")).fetchall()

        out.update(
            await _interleaved(
                {
                    K_SHIP: store_variant(await open_store(None)),
                    K_FULL: store_variant(await open_store("FULL")),
                    K_NOSYNC: store_variant(await open_store("NORMAL")),
                    K_HOP: proto_full,
                    K_HOP2: proto_norm,
                    K_RT: roundtrip,
                },
                n,
            )
        )

    # ---- whole calls in-process: direct, SDK minimal proxy, our Proxy without and with the store
    async def list_tools(ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool.model_validate(tooldef)])

    async def call_tool(ctx: ServerRequestContext[Any], params: Any) -> types.CallToolResult:
        return types.CallToolResult.model_validate(result)

    up_server: Server[Any] = Server("up", on_list_tools=list_tools, on_call_tool=call_tool)

    class NoStoreGate(Gate):
        """Bench only: the proxy's record/finish without SQLite, to price everything but the store."""

        async def record(self, new: NewCall, state: State, *, reason: str | None = None) -> CallRecord:
            return CallRecord(
                id="0" * 26, state=state, upstream=new.upstream, tool=new.tool, arguments=new.arguments,
                args_digest=new.args_digest, gate=new.gate, risk=new.risk, created_at=clock.now(),
            )  # fmt: skip

        async def finish(self, rec: CallRecord, *, result: Any, error: str | None, unknown: bool = False) -> None:
            return None

    def caller(client: Client) -> Any:
        async def one() -> None:
            await client.call_tool("get_current_time", args)

        return one

    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, Any] = {}
        clients[K_DIRECT] = caller(await stack.enter_async_context(Client(up_server, mode="legacy")))
        sdk = C.sdk_proxy_path()
        if sdk is not None:
            import importlib.util

            spec = importlib.util.spec_from_file_location("sdk_minimal_proxy", sdk)
            if spec is not None and spec.loader is not None:
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                holder: dict[str, Any] = {}
                on_msg, on_elicit = mod.make_upstream_callbacks(holder)
                upc = await stack.enter_async_context(
                    Client(up_server, mode="legacy", cache=None, message_handler=on_msg, elicitation_callback=on_elicit)
                )
                srv, _ = mod.build_proxy(upc, holder)
                clients[K_SDK] = caller(await stack.enter_async_context(Client(srv, mode="legacy")))
        for label, gate_cls in ((K_NOSTORE, NoStoreGate), (K_SHIPPED, Gate)):
            d = stack.enter_context(tempfile.TemporaryDirectory(prefix="gk-bench-"))
            store = await stack.enter_async_context(Store.open(Path(d) / "gk.db", clock))
            await store.register_instance("bench")
            gate = gate_cls(store, policy, clock)
            proxy = Proxy(config=config, policy=policy, gate=gate, clock=clock)
            up = Upstream("time", None, proxy.hooks(), target=up_server)
            proxy.upstreams = {"time": up}
            await stack.enter_async_context(gate.running())
            await stack.enter_async_context(up.running())
            await up.connect()
            clients[label] = caller(await stack.enter_async_context(Client(proxy.build_server(), mode="legacy")))
        out.update(await _interleaved(clients, n))
    return out


async def run(opts: Any, progress: Any = print) -> dict[str, Any]:
    from passthrough import GK_CONFIG

    out: dict[str, Any] = {}
    t = C.time_server()
    targets = []
    if t is not None:
        targets.append(("time", t, ("get_current_time", {"timezone": "UTC"})))
    targets.append(("echo", C.feature_server(), ("echo", {"text": "hello"})))
    for name, upstream, call in targets:
        with contextlib.suppress(subprocess.SubprocessError):
            progress(f"  py-spy on wrap ({name}), {opts.profile_calls} calls ...")
            out[f"pyspy_{name}"] = await profile_per_call(GK_CONFIG, upstream, call, opts.profile_calls)
    progress(f"  py-spy on wrap while {opts.profile_held} concurrent calls are held ...")
    try:
        out["pyspy_held_burst"] = await profile_burst(opts.profile_held)
    except Exception as e:  # the burst profile is extra information; never lose the rest for it
        out["pyspy_held_burst"] = {"skipped": f"{type(e).__name__}: {e}"[:300]}
    rounds: list[dict[str, float]] = []
    for i in range(opts.component_rounds):
        progress(f"  components in-process, round {i + 1}/{opts.component_rounds} ...")
        rounds.append(await components(opts.component_calls))
    out["components_ms"] = {k: C.median([r[k] for r in rounds]) for k in rounds[0]}
    out["components_rounds"] = rounds
    return out
