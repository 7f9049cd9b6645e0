"""Team mode under load: many ``run --http`` gatekeepers, one approval service, reviewers deciding at once.

    .venv/bin/python bench/load.py                                  # 20 gatekeepers, 5,000 calls, 4 reviewers, both
    .venv/bin/python bench/load.py --quick                          # 3 / 60 / 2, written under bench/.out/quick/
    .venv/bin/python bench/load.py --gatekeepers 20 --calls 5000 --reviewers 4 --backend postgres

What runs, per backend (everything a separate process, as in production):

* the store: PostgreSQL (a throwaway cluster from tests/pgcluster.py, or ``--pg-admin-url``; ``db init`` makes the
  gatekeeper and approver roles), or SQLite (one data home shared by every process);
* N gatekeepers, ``mcp-gatekeeper run --http 127.0.0.1:0``, each with its own home, agent token and host label
  (its own UTS namespace via ``unshare -u`` where allowed, so the store records a different host for each), the
  gatekeeper role's URL as ``[store] url`` and the approval service's public key as ``[team] decision_keys``;
  upstream: tests/upstreams/feature_server.py, whose call log has one JSON line per execution (arguments and
  ``time.time()`` taken when the tool ran);
* the approval service, ``mcp-gatekeeper serve`` on the approver role's URL, with reviewer accounts made by
  ``users add NAME --password-stdin``;
* agents: one SDK v2 Streamable HTTP client per gatekeeper calling ``write_note`` with a unique path; each waits
  for its answer (``[[waiting.clients]] name = "*"`` without a budget: the gatekeeper holds the request open until
  the decision and answers it then), at most ``--inflight`` calls open per gatekeeper;
* reviewers: R accounts, each logged in over HTTP, polling ``GET /api/calls?state=pending`` and deciding its share
  (a call's share is crc32(id) mod R; about 1 call in 30 of another reviewer's share is tried as well, so some
  calls are raced and the loser gets a 409). What is decided is read from the call's path: every 15th call is
  rejected, every 40th approved with modified content, the rest approved as they are.

Measured: decision -> upstream, from the call's ``decided_at`` in the store (the service's clock at the moment
of its compare-and-set) to the upstream's log time; and, beside it, from the moment the reviewer's approve
response returned. Checked: nothing ran twice, nothing was lost, every client got its answer (the approved
result, the modified one, or the refusal).

The Markdown goes to bench/load.md (``--quick``: bench/.out/quick/load.md) and into the README.md next to it
(between the load markers, which bench/run.py keeps when it rewrites the README).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _common as C
import anyio
import anyio.abc
import httpx2

SERVING_MCP = re.compile(r"serving MCP at (http://\S+)")
SERVING_SERVICE = re.compile(r"approval service: (http://127\.0\.0\.1:\d+)/login")
PASSWORD = "load-bench-password-1"
REJECT_EVERY, MODIFY_EVERY = 15, 40
RACE_EVERY = 30
BACKENDS = ("postgres", "sqlite")


@dataclass
class Params:
    gatekeepers: int = 20
    calls: int = 5000
    reviewers: int = 4
    inflight: int = 50
    backends: tuple[str, ...] = BACKENDS
    poll: float = 0.05
    """Seconds a reviewer waits after finding nothing of its share pending (a human's page would be pushed)."""
    timeout: float = 3600.0
    host_labels: bool = True
    pg_admin_url: str | None = None
    max_connections: int = 400
    keep: bool = False
    """Keep each backend's work directory (logs, homes, call logs) instead of removing it."""


def intended(seq: int) -> str:
    if seq % REJECT_EVERY == 7:
        return "reject"
    if seq % MODIFY_EVERY == 11:
        return "modify"
    return "approve"


def seq_of(path: str) -> int:
    return int(path.rsplit("/", 1)[1])


# ------------------------------------------------------------------------------------------------- processes


class Proc:
    """A child process whose stderr goes to a log file; waits on a pattern by the line's arrival, not polling."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self._log = log.open("w", encoding="utf-8")
        self._patterns: list[tuple[re.Pattern[str], list[str], anyio.Event]] = []
        self._token = anyio.lowlevel.current_token()
        self.watcher = C.LineWatcher(log=self._log, on_line=self._on_line)
        self.proc: subprocess.Popen[bytes] | None = None

    def _on_line(self, line: str, _t: float) -> None:
        for pattern, found, event in self._patterns:
            if not found and (m := pattern.search(line)):
                found.append(m.group(1))
                anyio.from_thread.run_sync(event.set, token=self._token)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.watcher.file,
            cwd=str(C.ROOT),
        )  # fmt: skip

    async def wait_for(self, pattern: re.Pattern[str], timeout: float) -> str:
        found: list[str] = []
        event = anyio.Event()
        self._patterns.append((pattern, found, event))
        for _t, line in list(self.watcher.lines):  # it may have come already
            if m := pattern.search(line):
                return m.group(1)
        with anyio.fail_after(timeout):
            while not found:
                with anyio.move_on_after(0.5):
                    await event.wait()
                if self.proc is not None and self.proc.poll() is not None and not found:
                    tail = "".join(line for _t, line in self.watcher.lines[-20:])
                    raise RuntimeError(f"{self.name} exited {self.proc.returncode} before serving:\n{tail}")
        return found[0]

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with anyio.move_on_after(30):
                while self.proc.poll() is None:
                    await anyio.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.watcher.close()
        self._log.close()


def can_label_hosts() -> bool:
    """Can a child get its own hostname (a UTS namespace of its own: root, or user namespaces allowed)?"""
    try:
        done = subprocess.run(["unshare", "-u", "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def with_host(label: str | None, argv: list[str]) -> list[str]:
    if label is None:
        return argv
    return ["unshare", "-u", "sh", "-c", 'hostname "$0" && exec "$@"', label, *argv]


def gk(*args: str, home: Path, stdin: str | None = None) -> str:
    """Run an ``mcp-gatekeeper`` command to its end; its stdout."""
    done = subprocess.run(
        [*C.gatekeeper_cmd(), *args], input=stdin, capture_output=True, text=True, env=C.gk_env(home),
        cwd=str(C.ROOT), timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"mcp-gatekeeper {args[0]} {args[1] if len(args) > 1 else ''} exited {done.returncode}: {done.stderr}"
        )
    return done.stdout


# ------------------------------------------------------------------------------------------------- set-up


RULES = """
[ui]
autostart = false
[[waiting.clients]]
name = "*"
[[rules]]
name = "load"
tool = "write_note"
gate = "hard"
risk = "high"
timeout = {timeout}
"""


@dataclass
class Setup:
    work: Path
    service_home: Path
    service_cfg: Path
    gk_homes: list[Path]
    gk_cfgs: list[Path]
    call_logs: list[Path]
    tokens: list[str]
    store: str


def toml_str(s: str) -> str:
    return json.dumps(s)


def prepare(backend: str, p: Params, work: Path, role_urls: dict[str, str] | None) -> Setup:
    """Homes, configs, accounts and keys for one backend (``role_urls``: gatekeeper and approver, for PostgreSQL)."""
    rules = RULES.format(timeout=int(p.timeout) + 600)
    shared = work / "home"
    if backend == "postgres":
        assert role_urls is not None
        service_home = work / "service"
        store_gk = f"[store]\nurl = {toml_str(role_urls['gatekeeper'])}\n"
        store_ap = f"[store]\nurl = {toml_str(role_urls['approver'])}\n"
    else:
        service_home = shared
        store_gk = store_ap = ""
    service_home.mkdir(parents=True, exist_ok=True)
    service_cfg = work / "service.toml"
    service_cfg.write_text(store_ap + rules)
    for i in range(p.reviewers):
        gk("users", "add", f"rev{i}", "--password-stdin", "--config", str(service_cfg), home=service_home,
           stdin=PASSWORD + "\n")  # fmt: skip
    team = ""
    if backend == "postgres":  # gatekeepers trust the service's key (SQLite: one home, one key)
        key = gk("keys", "show", "--config", str(service_cfg), home=service_home).strip()
        team = f"[team]\ndecision_keys = [{toml_str(key)}]\n"
    homes, cfgs, logs, tokens = [], [], [], []
    for i in range(p.gatekeepers):
        home = work / f"gk{i:02d}" if backend == "postgres" else shared
        home.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        log = work / f"calls-{i:02d}.jsonl"
        cfg = work / f"gk{i:02d}.toml"
        cfg.write_text(
            store_gk + team + rules
            + f'[[agents]]\nname = "agent-{i:02d}"\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
            + f"[upstreams.feat]\ncommand = {toml_str(sys.executable)}\n"
            + f"args = [{toml_str(str(C.FEATURE_SERVER))}, \"--call-log\", {toml_str(str(log))}]\n"
        )  # fmt: skip
        homes.append(home)
        cfgs.append(cfg)
        logs.append(log)
        tokens.append(token)
    return Setup(work, service_home, service_cfg, homes, cfgs, logs, tokens, store_gk or f"sqlite in {shared}")


def pg_roles(admin_url: str, home: Path) -> dict[str, str]:
    """``db init`` with roles of this run's own: the gatekeeper's and the approver's URLs."""
    tag = secrets.token_hex(3)
    out = gk(
        "db", "init", "--url", admin_url, "--gatekeeper-role", f"gk_load_{tag}", "--approver-role",
        f"ap_load_{tag}", "--owner-role", f"own_load_{tag}", home=home,
    )  # fmt: skip
    urls = dict(re.findall(r"^role (\S+): (\S+)$", out, re.MULTILINE))
    return {"gatekeeper": urls[f"gk_load_{tag}"], "approver": urls[f"ap_load_{tag}"]}


@contextlib.asynccontextmanager
async def pg_admin(p: Params) -> AsyncIterator[str]:
    """An admin URL of a fresh database: on ``--pg-admin-url``'s server, else on a throwaway cluster."""
    import pgcluster
    import psycopg
    from psycopg import sql

    cluster = None
    if p.pg_admin_url:
        server = p.pg_admin_url
    else:
        cluster = pgcluster.start_cluster()
        server = cluster.dsn
        if cluster.data_dir is not None:  # our own server: room for every gatekeeper's pool and listener
            with psycopg.connect(server, autocommit=True) as c:
                c.execute(f"ALTER SYSTEM SET max_connections = {int(p.max_connections)}")
            cluster.kill()
            cluster.start()
    name = f"gk_load_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield pgcluster.with_database(server, name)
        finally:
            with psycopg.connect(server, autocommit=True) as c:
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        if cluster is not None:
            cluster.stop()


# ------------------------------------------------------------------------------------------------- the run


@dataclass
class Sent:
    gatekeeper: int
    path: str
    content: str
    sent: float = 0.0
    answered: float | None = None
    is_error: bool | None = None
    text: str = ""
    failure: str | None = None


@dataclass
class Tally:
    sent: dict[str, Sent] = field(default_factory=dict)
    decided: dict[str, tuple[str, float, int]] = field(default_factory=dict)
    """call id -> (decision, time.time() when the response returned, reviewer) for the decisions that won."""
    refused: int = 0
    """Decisions that lost: another reviewer had decided the call (409)."""
    other_errors: list[str] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)


def text_of(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def agent(i: int, url: str, token: str, paths: list[str], p: Params, tally: Tally) -> None:
    """One agent's client of gatekeeper ``i``: its calls, at most ``inflight`` open at a time."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    limit = anyio.Semaphore(p.inflight)
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx2.Timeout(60.0, read=p.timeout + 60, pool=None),
        limits=httpx2.Limits(max_connections=p.inflight + 8, max_keepalive_connections=p.inflight + 8),
    )  # fmt: skip
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        tools = [t.name for t in (await client.list_tools()).tools]
        (tool,) = [t for t in tools if t.endswith("write_note")]

        async def one(path: str) -> None:
            s = tally.sent[path]
            try:
                s.sent = time.time()
                result = await client.call_tool(tool, {"path": path, "content": s.content})
                s.is_error, s.text = bool(result.is_error), text_of(result)
            except Exception as e:  # counted as lost, reported
                s.failure = f"{type(e).__name__}: {e}"
            finally:
                s.answered = time.time()
                limit.release()

        async with anyio.create_task_group() as tg:
            for path in paths:
                await limit.acquire()
                tg.start_soon(one, path)


async def login(http: httpx2.AsyncClient, base: str, name: str) -> dict[str, str]:
    r = await http.post("/login", data={"username": name, "password": PASSWORD}, headers={"Origin": base})
    if r.status_code != 303:
        raise RuntimeError(f"login of {name}: {r.status_code} {r.text[:200]}")
    return {"Cookie": r.headers["set-cookie"].split(";")[0], "X-Gatekeeper-Key": r.headers["location"].partition("#key=")[2],
            "Origin": base}  # fmt: skip


async def queue_filled(base: str, want: int, p: Params, full: anyio.Event) -> None:
    """Set ``full`` once ``want`` calls are pending (the agents' first wave is held): reviewers start then."""
    async with httpx2.AsyncClient(base_url=base, timeout=120) as http:
        headers = await login(http, base, "rev0")
        while True:
            page = await http.get("/api/calls", params={"state": "pending", "limit": 1}, headers=headers)
            if page.json()["counts"].get("pending", 0) >= want:
                full.set()
                return
            await anyio.sleep(p.poll)


async def reviewer(r: int, base: str, p: Params, tally: Tally, done: anyio.Event, full: anyio.Event) -> None:
    async with httpx2.AsyncClient(base_url=base, timeout=120) as http:
        headers = await login(http, base, f"rev{r}")
        await full.wait()
        while not done.is_set():
            page = await http.get(
                "/api/calls", params={"state": "pending", "limit": 200, "order": "asc"}, headers=headers
            )
            page.raise_for_status()
            mine = []
            for c in page.json()["calls"]:
                share = zlib.crc32(c["id"].encode())
                if share % p.reviewers == r or (share // p.reviewers) % RACE_EVERY == 0:
                    mine.append(c)
            if not mine:
                with anyio.move_on_after(p.poll):
                    await done.wait()
                continue
            for c in mine:
                path = c["arguments"]["path"]
                what = intended(seq_of(path))
                tally.attempts[what] += 1
                if what == "reject":
                    resp = await http.post(f"/api/calls/{c['id']}/reject", json={"reason": "load: no"}, headers=headers)
                else:
                    body: dict[str, Any] = {"args_digest": c["args_digest"]}
                    if what == "modify":
                        body["arguments"] = {"path": path, "content": "modified:" + c["arguments"]["content"]}
                    resp = await http.post(f"/api/calls/{c['id']}/approve", json=body, headers=headers)
                at = time.time()
                if resp.status_code == 200:
                    tally.decided[c["id"]] = (what, at, r)
                elif resp.status_code == 409:
                    tally.refused += 1
                else:
                    tally.other_errors.append(f"{what} {c['id']}: {resp.status_code} {resp.text[:200]}")


async def all_calls(base: str) -> list[dict[str, Any]]:
    """Every call the store holds, read through the service's API by a reviewer."""
    out: list[dict[str, Any]] = []
    async with httpx2.AsyncClient(base_url=base, timeout=120) as http:
        headers = await login(http, base, "rev0")
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = (await http.get("/api/calls", params=params, headers=headers)).json()
            out += page["calls"]
            cursor = page["next_cursor"]
            if not cursor:
                return out


async def hosts_seen(base: str, ids: list[str]) -> set[str]:
    async with httpx2.AsyncClient(base_url=base, timeout=120) as http:
        headers = await login(http, base, "rev0")
        return {(await http.get(f"/api/calls/{cid}", headers=headers)).json()["team"]["host"] for cid in ids}


def audit_times(backend: str, admin: str | None, work: Path) -> list[tuple[str, str, float]]:
    """(call id, event, at) of every audit event, read straight from the store (the phases of each call)."""
    if backend == "postgres":
        import psycopg

        assert admin is not None
        with psycopg.connect(admin, autocommit=True, options="-c search_path=mcp_gatekeeper") as c:
            return [
                (str(a), str(b), float(t))
                for a, b, t in c.execute("SELECT call_id, event, at FROM audit WHERE call_id IS NOT NULL")
            ]
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{work / 'home' / 'gatekeeper.db'}?mode=ro", uri=True)) as c:
        return [
            (str(a), str(b), float(t))
            for a, b, t in c.execute("SELECT call_id, event, at FROM audit WHERE call_id IS NOT NULL")
        ]


def phases(calls: list[dict[str, Any]], events: list[tuple[str, str, float]]) -> dict[str, dict[str, float]]:
    """For each audit event that follows an approval: ms from the call's decided_at to it."""
    decided = {c["id"]: c["decided_at"] for c in calls if c["state"] == "forwarded" and c["decided_at"]}
    out: dict[str, list[float]] = {}
    for cid, event, at in events:
        if cid in decided and at >= decided[cid] - 1e-6 and event != "approved":
            out.setdefault(event, []).append((at - decided[cid]) * 1000)
    return {e: C.summary(xs) for e, xs in sorted(out.items(), key=lambda kv: C.median(kv[1]))}


async def sample_waits(admin: str, until: anyio.Event, every: float = 0.5) -> dict[str, Any]:
    """What the database's sessions are doing, sampled while the run lasts (pg_stat_activity and pg_locks): a
    profile of where server-side time goes. Sessions holding the audit chain's lock are told apart from those
    waiting for it; "waiting for its client" is a session inside a transaction whose process has not yet sent
    the next statement."""
    import psycopg

    seen: Counter[str] = Counter()
    samples = 0
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as c:
        while not until.is_set():
            cur = await c.execute(
                "SELECT COALESCE(a.wait_event_type, 'CPU'), COALESCE(a.wait_event, '-'), a.state,"
                " EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)"
                " FROM pg_stat_activity a WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
                " AND a.state <> 'idle'"
            )
            for kind, event, state, holds in await cur.fetchall():
                if kind == "Lock" and event == "advisory":
                    what = "waiting for the audit chain's lock"
                elif state == "idle in transaction":
                    what = "in a transaction, waiting for its client"
                else:
                    what = f"running ({kind}/{event})" if kind != "CPU" else "running (CPU)"
                seen[what + (" [holds the chain lock]" if holds else "")] += 1
            samples += 1
            with anyio.move_on_after(every):
                await until.wait()
    return {"samples": samples, "per_sample": {k: round(v / max(samples, 1), 2) for k, v in seen.most_common(8)}}


async def keep_result(into: dict[str, Any], fn: Callable[..., Any], *args: Any) -> None:
    into.update(await fn(*args))


async def run_backend(backend: str, p: Params, work: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        role_urls = None
        admin = None
        if backend == "postgres":
            admin = await stack.enter_async_context(pg_admin(p))
            role_urls = await anyio.to_thread.run_sync(pg_roles, admin, work)
        setup = await anyio.to_thread.run_sync(prepare, backend, p, work, role_urls)
        labels = p.host_labels and can_label_hosts()
        procs: list[Proc] = []

        async def stop_all() -> None:
            async with anyio.create_task_group() as tg:
                for pr in procs:
                    tg.start_soon(pr.stop)

        stack.push_async_callback(stop_all)
        service = Proc("service", [*C.gatekeeper_cmd(), "serve", "--port", "0", "--config", str(setup.service_cfg)],
                       C.gk_env(setup.service_home), work / "service.log")  # fmt: skip
        procs.append(service)
        service.start()
        gks = []
        for i in range(p.gatekeepers):
            argv = [*C.gatekeeper_cmd(), "run", "--http", "127.0.0.1:0", "--config", str(setup.gk_cfgs[i])]
            g = Proc(f"gatekeeper {i}", with_host(f"gk-{i:02d}" if labels else None, argv),
                     C.gk_env(setup.gk_homes[i]), work / f"gk{i:02d}.log")  # fmt: skip
            procs.append(g)
            gks.append(g)
            g.start()
        base = await service.wait_for(SERVING_SERVICE, 180)
        urls = [await g.wait_for(SERVING_MCP, 300) for g in gks]
        progress(f"   {backend}: service and {len(gks)} gatekeepers up")

        tally = Tally()
        per: list[list[str]] = [[] for _ in range(p.gatekeepers)]
        for n in range(p.calls):
            i = n % p.gatekeepers
            path = f"/load/{backend}/g{i:02d}/{n:06d}"
            tally.sent[path] = Sent(i, path, f"note {n} {secrets.token_hex(4)}")
            per[i].append(path)
        done, full = anyio.Event(), anyio.Event()
        waits: dict[str, Any] = {}
        load_before = os.getloadavg()
        t0 = time.time()
        with anyio.fail_after(p.timeout):
            async with anyio.create_task_group() as tg:
                if admin is not None:
                    tg.start_soon(keep_result, waits, sample_waits, admin, done)
                tg.start_soon(queue_filled, base, min(p.calls, p.inflight * p.gatekeepers), p, full)
                for r in range(p.reviewers):
                    tg.start_soon(reviewer, r, base, p, tally, done, full)
                async with anyio.create_task_group() as agents:
                    for i in range(p.gatekeepers):
                        agents.start_soon(agent, i, urls[i], setup.tokens[i], per[i], p, tally)
                done.set()
        t1 = time.time()
        t_full = min((at for _w, at, _r in tally.decided.values()), default=t1)
        load_after = os.getloadavg()
        progress(f"   {backend}: {p.calls} calls answered in {t1 - t0:.1f} s; checking")
        calls = await all_calls(base)
        first_of_each: dict[str, str] = {}
        for c in calls:
            first_of_each.setdefault(c["instance_id"] or "", c["id"])
        hosts = await hosts_seen(base, list(first_of_each.values())[:50])
        events = await anyio.to_thread.run_sync(audit_times, backend, admin, work)
        await stop_all()  # the upstream logs are complete once the gatekeepers are gone
        executions = []
        for log in setup.call_logs:
            if log.exists():
                executions += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        result = check(tally, calls, executions)
        result["phases_ms"] = phases(calls, events)
        result["db_sessions"] = waits
        result.update(
            backend=backend, store=setup.store.split("@")[-1].strip(), wall_s=t1 - t0, fill_s=t_full - t0,
            decided_per_s=len(tally.decided) / (t1 - t_full) if t1 > t_full else None,
            loadavg_before=[round(x, 2) for x in load_before], loadavg_after=[round(x, 2) for x in load_after],
            hosts=sorted(h for h in hosts if h), instances=len(first_of_each), host_labels=labels,
        )  # fmt: skip
        return result
    raise AssertionError("unreachable")


def check(tally: Tally, calls: list[dict[str, Any]], executions: list[dict[str, Any]]) -> dict[str, Any]:
    """The invariants, and decision -> upstream latencies (ms)."""
    ran: dict[str, list[dict[str, Any]]] = {}
    for e in executions:
        if e.get("tool") == "write_note":
            ran.setdefault(e["arguments"]["path"], []).append(e)
    by_path = {c["arguments"]["path"]: c for c in calls if c["tool"] == "write_note"}
    problems: list[str] = []
    double = sorted(path for path, es in ran.items() if len(es) > 1)
    lost: list[str] = []
    states: Counter[str] = Counter()
    unanswered = wrong_answer = 0
    from_store: list[float] = []
    samples: list[tuple[float, float]] = []
    from_response: list[float] = []
    decisions: Counter[str] = Counter()
    for path, s in tally.sent.items():
        rec = by_path.get(path)
        what = intended(seq_of(path))
        if s.failure is not None or s.is_error is None:
            unanswered += 1
            problems.append(f"{path}: the client got no answer ({s.failure})")
        if rec is None:
            lost.append(path)
            problems.append(f"{path}: not in the store")
            continue
        states[rec["state"]] += 1
        decisions[what] += 1
        es = ran.get(path, [])
        if what == "reject":
            ok = rec["state"] == "rejected" and not es and s.is_error is True and "reject" in s.text.lower()
            if es:
                problems.append(f"{path}: rejected, yet it ran")
        else:
            want = "modified:" + s.content if what == "modify" else s.content
            ok = (
                rec["state"] == "forwarded" and len(es) == 1 and es[0]["arguments"]["content"] == want
                and s.is_error is False and s.text.startswith(f"wrote {len(want)} characters to {path}")
                and (what != "modify" or "changed the arguments" in s.text)
            )  # fmt: skip
            if len(es) == 1 and rec["decided_at"] is not None:
                from_store.append((es[0]["at"] - rec["decided_at"]) * 1000)
                samples.append((rec["decided_at"], (es[0]["at"] - rec["decided_at"]) * 1000))
                if rec["id"] in tally.decided:
                    from_response.append((es[0]["at"] - tally.decided[rec["id"]][1]) * 1000)
        if not ok:
            if rec["state"] not in ("forwarded", "rejected") or (what != "reject" and not es):
                lost.append(path)
            if s.is_error is not None:
                wrong_answer += 1
            problems.append(
                f"{path}: {what}: state {rec['state']}, ran {len(es)}x, answer {s.is_error} {s.text[:120]!r}"
            )
    extra = sorted(set(ran) - set(tally.sent))
    return {
        "calls": len(tally.sent),
        "in_store": len(by_path),
        "states": dict(states),
        "decisions": dict(decisions),
        "executions": sum(len(es) for es in ran.values()),
        "double_executions": len(double),
        "lost": len(lost),
        "unanswered": unanswered,
        "wrong_answers": wrong_answer,
        "unknown_executions": len(extra),
        "race_refusals": tally.refused,
        "other_decision_errors": len(tally.other_errors),
        "problems": (problems + tally.other_errors)[:30],
        "decision_to_upstream_ms": C.summary(from_store),
        "response_to_upstream_ms": C.summary(from_response),
        "by_tenth": by_tenth(samples),
        "raw": sorted(samples),
    }


def by_tenth(samples: list[tuple[float, float]]) -> list[dict[str, float]]:
    """Decision -> upstream over the run: p50 and p95 of each tenth of the decisions in time order."""
    ordered = [ms for _at, ms in sorted(samples)]
    if len(ordered) < 10:
        return []
    size = len(ordered) // 10
    return [{"p50": C.pct(ordered[i * size : (i + 1) * size], 50), "p95": C.pct(ordered[i * size : (i + 1) * size], 95)}
            for i in range(10)]  # fmt: skip


# ------------------------------------------------------------------------------------------------- report


def fmt(x: Any, digits: int = 1) -> str:
    return (
        "-" if x is None else f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x)
    )


def markdown(meta: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    p = meta["params"]
    lines = [
        "## Team mode under load (bench/load.py)",
        "",
        f"{p['gatekeepers']} `run --http` gatekeeper processes, {p['calls']:,} held calls spread evenly over them"
        f" (each agent keeps {p['inflight']} open, replacing each answered call with a new one), {p['reviewers']} reviewers deciding at once through the"
        " approval service (`serve`) over its HTTP API; upstream: tests/upstreams/feature_server.py, one per"
        ' gatekeeper. Each agent\'s SDK v2 client waits for its answer (`[[waiting.clients]] name = "*"`, no'
        f" budget: the request stays open until the decision). Every {REJECT_EVERY}th call is rejected, every"
        f" {MODIFY_EVERY}th approved with modified arguments, the rest approved; about 1 in {RACE_EVERY} is tried"
        " by two reviewers. The reviewers start once the agents' first wave is held (a full queue), so a"
        " burst of holds being written does not sit in front of the first decisions.",
        "",
        "**Decision → upstream** is from the call's `decided_at` in the store (the approval service's clock at its"
        " compare-and-set) to the upstream's own `time.time()` when the tool ran (same machine, same clock); the"
        " row beside it starts when the reviewer's approve response returned.",
        "",
        "| | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]

    def row(label: str, get: Callable[[dict[str, Any]], Any], digits: int = 1) -> None:
        lines.append(f"| {label} | " + " | ".join(fmt(get(r), digits) for r in results.values()) + " |")

    def lat(key: str, q: str) -> Callable[[dict[str, Any]], Any]:
        return lambda r: r.get(key, {}).get(q)

    for q in ("p50", "p95", "p99", "max"):
        row(f"decision → upstream {q} (ms)", lat("decision_to_upstream_ms", q))
    row("samples", lat("decision_to_upstream_ms", "n"))
    for q in ("p50", "p95"):
        row(f"approve response → upstream {q} (ms)", lat("response_to_upstream_ms", q))
    row(
        "wall time (s): whole run / until the first wave was held",
        lambda r: f"{fmt(r.get('wall_s'))} / {fmt(r.get('fill_s'))}",
    )
    row("calls decided per s (first decision to last answer)", lambda r: r.get("decided_per_s"))
    row("calls / in store / executions", lambda r: f"{r.get('calls')} / {r.get('in_store')} / {r.get('executions')}")
    row("final states", lambda r: ", ".join(f"{k} {v}" for k, v in sorted(r.get("states", {}).items())))
    row("double executions", lambda r: r.get("double_executions"))
    row("lost calls", lambda r: r.get("lost"))
    row("clients without an answer / wrong answers", lambda r: f"{r.get('unanswered')} / {r.get('wrong_answers')}")
    row("races lost by a second reviewer (409)", lambda r: r.get("race_refusals"))
    row("other decision errors", lambda r: r.get("other_decision_errors"))
    row(
        "gatekeeper hosts seen by the service",
        lambda r: len(r.get("hosts", [])) if r.get("host_labels") else "one host (no UTS namespaces)",
    )
    row("load average before → after", lambda r: f"{r.get('loadavg_before')} → {r.get('loadavg_after')}")
    lines += [""]
    for name, r in results.items():
        if r.get("failed"):
            lines.append(f"- **{name} failed:** {r['failed']}")
        elif r.get("problems"):
            lines.append(f"- **{name}: {len(r['problems'])} problem(s) shown**: " + "; ".join(r["problems"][:5]))
    for name, r in results.items():
        ph = dict(r.get("phases_ms", {}))
        ph["upstream ran"] = r.get("decision_to_upstream_ms", {})
        shown = sorted(((k, v) for k, v in ph.items() if v.get("n")), key=lambda kv: kv[1]["p50"])
        if shown:
            lines.append(
                f"- {name}, where the time goes after `decided_at` (audit events' times, ms p50 / p95): "
                + ", ".join(f"{k} {v['p50']:.0f} / {v['p95']:.0f}" for k, v in shown)
            )
    for name, r in results.items():
        if r.get("by_tenth"):
            lines.append(
                f"- {name}, decision → upstream over the run (p50 / p95 ms of each tenth of the decisions, in order): "
                + ", ".join(f"{t['p50']:.0f} / {t['p95']:.0f}" for t in r["by_tenth"])
            )
    for name, r in results.items():
        if (db := r.get("db_sessions")) and db.get("per_sample"):
            lines.append(
                f"- {name}, the database's sessions over {db['samples']} samples (average number in each state): "
                + ", ".join(f"{k} {v}" for k, v in db["per_sample"].items())
            )
    goal = results.get("postgres", {}).get("decision_to_upstream_ms", {}).get("p95")
    if goal is not None:
        verdict = "met" if goal <= 200 else "missed"
        lines.append(f"- Goal PostgreSQL p95 ≤ 200 ms: **{verdict}** ({goal:.0f} ms).")
    m = meta["machine"]
    lines += [
        "",
        f"Command: `{meta['command']}` · {meta['started_utc']} · commit {meta['commit']} · {m['cores']} cores"
        f" ({m['cpu']}), {m['memory']}, Linux {m['kernel']}, Python {m['python']} · load average at start"
        f" {m['loadavg_at_start']}, at end {meta['loadavg_at_end']} (a machine shared with other work) ·"
        f" {meta['duration_s']:.0f} s in all.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- main


async def run(p: Params, progress: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for backend in p.backends:
        work = Path(tempfile.mkdtemp(prefix=f"gk-load-{backend}-"))
        try:
            t = time.perf_counter()
            results[backend] = await run_backend(backend, p, work, progress)
            progress(f"   {backend}: done in {time.perf_counter() - t:.0f} s")
        finally:
            if p.keep:
                progress(f"   {backend}: logs and homes kept in {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    return results


def options(argv: list[str] | None) -> tuple[Params, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gatekeepers", type=int, default=None)
    ap.add_argument("--calls", type=int, default=None)
    ap.add_argument("--reviewers", type=int, default=None)
    ap.add_argument("--inflight", type=int, default=50, help="open calls per gatekeeper at most (default 50)")
    ap.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    ap.add_argument("--quick", action="store_true", help="3 gatekeepers, 60 calls, 2 reviewers")
    ap.add_argument("--pg-admin-url", default=None, help="an admin URL of a server to use instead of a throwaway one")
    ap.add_argument("--keep", action="store_true", help="keep the work directories (process logs, homes, call logs)")
    ap.add_argument("--no-host-labels", dest="host_labels", action="store_false")
    ap.add_argument("--out", default=None, help="directory of load.md (default bench/, --quick: bench/.out/quick/)")
    a = ap.parse_args(argv)
    small = (3, 60, 2) if a.quick else (20, 5000, 4)
    p = Params(
        gatekeepers=a.gatekeepers or small[0], calls=a.calls or small[1], reviewers=a.reviewers or small[2],
        inflight=a.inflight, backends=BACKENDS if a.backend == "both" else (a.backend,), host_labels=a.host_labels,
        pg_admin_url=a.pg_admin_url, keep=a.keep,
    )  # fmt: skip
    return p, a


def main(argv: list[str] | None = None) -> int:
    p, a = options(argv)
    out = Path(a.out) if a.out else (C.OUT / "quick" if a.quick else C.BENCH)
    out.mkdir(parents=True, exist_ok=True)
    import run as bench_run

    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    meta: dict[str, Any] = {
        "command": "python bench/load.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": C.machine_info(),
        "commit": bench_run.git_commit(),
        "params": {"gatekeepers": p.gatekeepers, "calls": p.calls, "reviewers": p.reviewers, "inflight": p.inflight},
    }
    print(f"load: {meta['command']} (load average {meta['machine']['loadavg_at_start']})", flush=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        results = anyio.run(run, p, lambda m: print(m, flush=True))
    finally:
        meta["duration_s"] = time.perf_counter() - t0
        meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        raw = {b: r.pop("raw", None) for b, r in results.items()}  # (decided_at, ms) pairs: not committed
        C.dump_json(out / "load.json", {"meta": meta, "results": results})
        C.dump_json(C.OUT / "load-raw.json", raw)
    section = markdown(meta, results)
    (out / "load.md").write_text(section)
    C.splice_load(out / "README.md", section)
    print(section)
    bad = [
        b for b, r in results.items() if r["double_executions"] or r["lost"] or r["unanswered"] or r["wrong_answers"]
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
