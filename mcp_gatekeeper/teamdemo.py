"""``mcp-gatekeeper demo --team``: team mode for real, on one machine, with nothing left behind.

One shared store (a throwaway PostgreSQL cluster when PostgreSQL is installed, else a SQLite file), the approval
service (``serve``), two gatekeepers (``run --http``, agents ``laptop`` and ``ci-runner``, each in front of its own
order desk) and two reviewer accounts (alice, bob). Every part is a real ``mcp-gatekeeper`` process started with
the commands the README gives; a scripted agent on each gatekeeper makes one allowed call and one that is held:
the laptop's refund needs two reviewers (``approvals = 2``), the CI runner's deletion needs a reviewer of the group
``ops`` (``reviewers = ["ops"]``), and alice is linked to the CI runner's agent, so she may not decide its calls.

Interactive, it prints the service's address and the logins and waits; Ctrl-C stops every process, the cluster,
and deletes the temp dir. ``--auto`` (tests, CI) has the reviewers decide through the service's HTTP API, as a
browser would, and exits 0 only if each order desk received exactly what was decided.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import httpx2
import mcp.types as types
from mcp import Client

from mcp_gatekeeper import devcluster
from mcp_gatekeeper.errors import DevClusterError, GatekeeperError

REVIEWERS = {"alice": ("ops", "agent:ci-runner"), "bob": ("ops", None)}
"""Each reviewer's group and the agent principal linked to them (alice runs the CI runner's agent)."""

REFUND = {"order_id": "8821", "amount": 119.99, "currency": "USD", "reason": "item arrived damaged"}
DELETE = {"order_id": "8825"}
AGENTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "laptop": [("list_orders", {}), ("issue_refund", REFUND)],
    "ci-runner": [("lookup_order", {"order_id": "8825"}), ("delete_record", DELETE)],
}
"""What each scripted agent calls, in order: one allowed read, then one call the rules hold."""

POLICY = """
heartbeat_interval = "10s"

[ui]
autostart = false            # the approval service is the only page

[defaults]
timeout = "30m"              # a call nobody decides is rejected then (never approved)

[[waiting.clients]]
name = "team-demo-agent"     # the scripted agents keep their request open while a call waits
progress_resets = true

[[rules]]
name = "reads"
upstream = "orderdesk"
tool = ["lookup_order", "list_orders"]
gate = "allow"

[[rules]]
name = "refunds-two-reviewers"
upstream = "orderdesk"
tool = "issue_refund"
gate = "hard"
risk = "high"
approvals = 2                # two different reviewers
summary = "Refund {amount} {currency} on order #{order_id}"

[[rules]]
name = "deletions-by-ops"
upstream = "orderdesk"
tool = "delete_record"
gate = "hard"
risk = "critical"
reviewers = ["ops"]          # only the group ops decides
summary = "Delete order #{order_id} for good"
"""

AUTO_LIMIT = 300.0
"""Seconds ``--auto`` gives the whole script on a loaded machine before it fails."""
SERVING_PAGE = re.compile(r"approval service: (http://127\.0\.0\.1:\d+)/login")
HELD_LINE = re.compile(r"\bHELD ([0-9a-f]{8})\b")
SERVING_MCP = re.compile(r"serving MCP at (http://127\.0\.0\.1:\d+/mcp)")
ROLE_URL = re.compile(r"^role (\w+): (postgresql://\S+)$", re.M)


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _write_secret(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


@dataclass
class Backend:
    """The shared store: what it is, and the URL each side opens it with."""

    name: str
    gatekeeper_url: str
    approver_url: str


@dataclass
class Child:
    """A running ``mcp-gatekeeper`` process whose stderr is relayed (prefixed) and can be waited on."""

    label: str
    process: anyio.abc.Process
    lines: list[str] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)
    ended: bool = False

    async def pump(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            async for chunk in self.process.stderr:
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    line = raw.decode("utf-8", errors="replace")
                    self.lines.append(line)
                    print(f"  [{self.label}] {line}", file=sys.stderr, flush=True)
                self.changed.set()
                self.changed = anyio.Event()
        self.ended = True
        self.changed.set()

    async def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if m := pattern.search(line):
                    return m
            seen = len(self.lines)
            if self.ended:
                raise GatekeeperError(f"{self.label} exited before it said {pattern.pattern!r}")
            await self.changed.wait()


class Cli:
    """Runs ``mcp-gatekeeper`` commands (as this interpreter's module) with a data home and store of their own."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self.children: list[Child] = []

    @staticmethod
    def env(home: Path, store: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_GATEKEEPER_")}
        env["MCP_GATEKEEPER_HOME"] = str(home)
        if store is not None:
            env["MCP_GATEKEEPER_STORE"] = store
        return env

    async def run(self, args: list[str], *, env: dict[str, str], stdin: str | None = None) -> str:
        """One command to its end; its stdout (a failure stops the demo, naming the command)."""
        done = await anyio.run_process(
            [sys.executable, "-m", "mcp_gatekeeper", *args], input=stdin.encode() if stdin else None, env=env,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise GatekeeperError(
                f"mcp-gatekeeper {args[0]} failed ({done.returncode}): {done.stderr.decode()[-2000:]}"
            )
        return done.stdout.decode()

    async def start(self, label: str, args: list[str], *, env: dict[str, str]) -> Child:
        process = await anyio.open_process(
            [sys.executable, "-m", "mcp_gatekeeper", *args], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        child = Child(label, process)
        self.children.append(child)
        self._tg.start_soon(child.pump)
        return child

    async def stop_all(self) -> None:
        """Terminate every process started (the newest first), then kill what has not exited within 10 s."""
        with anyio.CancelScope(shield=True):
            for child in reversed(self.children):
                with contextlib.suppress(ProcessLookupError):
                    child.process.terminate()
            for child in reversed(self.children):
                with anyio.move_on_after(10):
                    await child.process.wait()
                if child.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.process.kill()
                await child.process.aclose()
            self.children.clear()


def _postgres_unavailable() -> str | None:
    why = devcluster.why_unavailable()
    if why is not None:
        return why
    if importlib.util.find_spec("psycopg") is None:  # the driver is the [postgres] extra
        return "the PostgreSQL driver is not installed (pip install 'mcp-gatekeeper-proxy[postgres]')"
    return None


@contextlib.asynccontextmanager
async def shared_store(root: Path, cli: Cli, say: Callable[[str], None], *, backend: str) -> AsyncIterator[Backend]:
    """A throwaway PostgreSQL cluster set up with ``db init`` (both roles), else a SQLite file (saying why)."""
    why = _postgres_unavailable() if backend != "sqlite" else "--backend sqlite"
    if why is None:
        async with devcluster.running_cluster() as cluster:
            say(f"store: a throwaway PostgreSQL cluster on 127.0.0.1:{cluster.port} (removed at the end)")
            # the cluster's own database `postgres` holds the schema: nobody else uses this cluster
            out = await cli.run(["db", "init", "--url", cluster.dsn], env=cli.env(root / "admin"))
            urls = dict(ROLE_URL.findall(out))
            yield Backend("PostgreSQL", gatekeeper_url=urls["gatekeeper"], approver_url=urls["approver"])
        return
    if backend == "postgres":
        raise DevClusterError(f"demo --team --backend postgres: {why}")
    print(f"mcp-gatekeeper demo --team: using a shared SQLite store, not PostgreSQL: {why}", file=sys.stderr)
    url = f"sqlite://{(root / 'team.db').as_posix()}"
    say(f"store: a shared SQLite file ({root / 'team.db'}): every gatekeeper can write decisions to it (see README)")
    yield Backend("SQLite", gatekeeper_url=url, approver_url=url)


@dataclass
class Gatekeeper:
    name: str
    url: str
    token: str
    calls: Path
    process: Child


async def start_gatekeeper(name: str, root: Path, cli: Cli, backend: Backend, service_key: str) -> Gatekeeper:
    """A gatekeeper on its own "machine" (data home), in front of its own order desk, on the gatekeeper role."""
    home = root / name
    home.mkdir(mode=0o700)
    token = secrets.token_urlsafe(24)
    calls = home / "orderdesk-calls.jsonl"
    upstream = [sys.executable, "-m", "mcp_gatekeeper.orderdesk", "--state", str(home / "orders.json"), "--reset",
                "--call-log", str(calls)]  # fmt: skip
    config = _write_secret(
        home / "config.toml",
        POLICY
        + f"\n[store]\nurl = {_toml(backend.gatekeeper_url)}\n"
        + f"\n[team]\ndecision_keys = [{_toml(service_key)}]   # trust only the approval service's signatures\n"
        + f"\n[[agents]]\nname = {_toml(name)}\ntoken_file = {_toml(str(_write_secret(home / 'agent.token', token)))}\n"
        + f"\n[upstreams.orderdesk]\ncommand = {_toml(upstream[0])}\nargs = {json.dumps(upstream[1:])}\n",
    )
    child = await cli.start(name, ["run", "--http", "127.0.0.1:0", "--config", str(config)], env=cli.env(home))
    url = (await child.wait_for(SERVING_MCP)).group(1)
    return Gatekeeper(name, url, token, calls, child)


async def run_agent(gk: Gatekeeper, say: Callable[[str], None], results: dict[str, types.CallToolResult]) -> None:
    """The scripted agent of one gatekeeper: each call in turn, a held one waiting for the reviewers."""
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        if message:
            say(f"agent {gk.name}: … {message}")

    me = types.Implementation(name="team-demo-agent", version="1.0")
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {gk.token}"}) as http,
        Client(streamable_http_client(gk.url, http_client=http), client_info=me) as agent,
    ):
        for tool, arguments in AGENTS[gk.name]:
            say(f"agent {gk.name}: -> {tool} {json.dumps(arguments)}")
            result = await agent.call_tool(tool, arguments, progress_callback=progress)
            text = " ".join(" ".join(getattr(c, "text", "") for c in result.content).split())[:160]
            say(f"agent {gk.name}: <- [{'REFUSED' if result.is_error else 'ok'}] {tool}: {text}")
            results[f"{gk.name}/{tool}"] = result


class Reviewer:
    """A reviewer signed in to the service, deciding through its HTTP API as the page does."""

    def __init__(self, http: httpx2.AsyncClient, base: str, name: str, headers: dict[str, str]) -> None:
        self.http, self.base, self.name, self.headers = http, base, name, headers

    @classmethod
    async def login(cls, http: httpx2.AsyncClient, base: str, name: str, password: str) -> Reviewer:
        r = await http.post(f"{base}/login", data={"username": name, "password": password}, headers={"Origin": base})
        if r.status_code != 303:
            raise GatekeeperError(f"{name} could not sign in: {r.status_code} {r.text[:200]}")
        headers = {"Cookie": r.headers["set-cookie"].split(";")[0], "Origin": base,
                   "X-Gatekeeper-Key": r.headers["location"].partition("#key=")[2]}  # fmt: skip
        return cls(http, base, name, headers)

    async def pending(self) -> list[dict[str, Any]]:
        r = await self.http.get(f"{self.base}/api/calls?state=pending", headers=self.headers)
        r.raise_for_status()
        calls: list[dict[str, Any]] = r.json()["calls"]
        return calls

    async def show(self, call: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.get(f"{self.base}/api/calls/{call['id']}", headers=self.headers)
        r.raise_for_status()
        shown: dict[str, Any] = r.json()
        return shown

    async def decide(self, call: dict[str, Any], *, approve: bool, reason: str | None = None) -> httpx2.Response:
        verb = "approve" if approve else "reject"
        body: dict[str, Any] = {"args_digest": call["args_digest"]} if approve else {}
        if reason:
            body["reason"] = reason
        return await self.http.post(f"{self.base}/api/calls/{call['id']}/{verb}", json=body, headers=self.headers)


async def _held(reviewer: Reviewer, gk: Gatekeeper) -> dict[str, Any]:
    """The call ``gk`` holds, once it says so on stderr (its agent calls concurrently with the reviewers)."""
    prefix = (await gk.process.wait_for(HELD_LINE)).group(1)
    found = [c for c in await reviewer.pending() if str(c.get("id", "")).startswith(prefix)]
    if len(found) != 1:
        raise GatekeeperError(f"{reviewer.name} does not see the call {prefix} that {gk.name} holds")
    return found[0]


def _received(gk: Gatekeeper) -> list[dict[str, Any]]:
    if not gk.calls.exists():
        return []
    lines = gk.calls.read_text(encoding="utf-8").splitlines()
    return [{"tool": c["tool"], "arguments": c["arguments"]} for c in map(json.loads, filter(None, lines))]


async def auto_review(
    base: str,
    passwords: dict[str, str],
    gks: dict[str, Gatekeeper],
    say: Callable[[str], None],
    agents_done: anyio.Event,
) -> list[str]:
    """The reviewers' script; returns every way the outcome differs from what was decided (empty: all good)."""
    problems: list[str] = []

    def expect(ok: bool, what: str) -> None:
        say(f"check: {'ok' if ok else 'FAILED'}: {what}")
        if not ok:
            problems.append(what)

    async with httpx2.AsyncClient(timeout=60) as http:
        alice = await Reviewer.login(http, base, "alice", passwords["alice"])
        bob = await Reviewer.login(http, base, "bob", passwords["bob"])
        refund = await _held(alice, gks["laptop"])
        r = await alice.decide(refund, approve=True)
        expect(r.status_code == 200 and r.json().get("decided") is False, "alice approves the refund: 1 of 2, it waits")
        state = (await alice.show(refund))["state"]
        ran = any(c["tool"] == "issue_refund" for c in _received(gks["laptop"]))
        expect(state == "pending" and not ran, f"the refund has not run yet (the call is {state})")
        r = await alice.decide(refund, approve=True)
        expect(r.status_code == 403, f"alice cannot count twice ({r.status_code} {r.json().get('error')})")
        r = await bob.decide(refund, approve=True)
        expect(r.status_code == 200 and r.json().get("decided") is True, "bob approves: 2 of 2, the refund runs")
        deletion = await _held(alice, gks["ci-runner"])
        r = await alice.decide(deletion, approve=True)
        expect(
            r.status_code == 403 and r.json().get("error") == "self_review",
            f"alice may not decide her own agent's deletion ({r.status_code} {r.json().get('error')})",
        )
        r = await bob.decide(deletion, approve=False, reason="order 8825 is not a duplicate")
        expect(r.status_code == 200, "bob rejects the deletion")
    with anyio.move_on_after(120):
        await agents_done.wait()
    expect(agents_done.is_set(), "both agents got their answers")
    expect(
        _received(gks["laptop"])
        == [{"tool": "list_orders", "arguments": {}}, {"tool": "issue_refund", "arguments": REFUND}],
        "the laptop's order desk received the read and the refund, once",
    )
    expect(
        _received(gks["ci-runner"]) == [{"tool": "lookup_order", "arguments": {"order_id": "8825"}}],
        "the CI runner's order desk received the read and no deletion",
    )
    return problems


async def team_demo(*, auto: bool, backend: str, say: Callable[[str], None]) -> int:
    root = Path(tempfile.mkdtemp(prefix="gk-team-demo-"))
    try:
        async with anyio.create_task_group() as tg:
            cli = Cli(tg)
            try:
                rc = await _run(root, cli, auto=auto, backend=backend, say=say)
            finally:
                await cli.stop_all()
                tg.cancel_scope.cancel()
        return rc
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _run(root: Path, cli: Cli, *, auto: bool, backend: str, say: Callable[[str], None]) -> int:
    async with shared_store(root, cli, say, backend=backend) as store:
        try:
            return await _with_store(root, cli, store, auto=auto, say=say)
        finally:
            await cli.stop_all()  # before the store goes away


async def _with_store(root: Path, cli: Cli, store: Backend, *, auto: bool, say: Callable[[str], None]) -> int:
    service_home = root / "service"
    service_home.mkdir(mode=0o700)
    service_cfg = _write_secret(service_home / "config.toml", POLICY)
    service_env = cli.env(service_home, store.approver_url)
    passwords = {name: secrets.token_urlsafe(12) for name in REVIEWERS}
    for name, (group, principal) in REVIEWERS.items():
        linked = ["--principal", principal] if principal else []
        await cli.run(
            ["users", "add", name, "--group", group, *linked, "--password-stdin", "--config", str(service_cfg)],
            env=service_env, stdin=passwords[name] + "\n",
        )  # fmt: skip
    key = json.loads(await cli.run(["keys", "show", "--json", "--config", str(service_cfg)], env=service_env))
    service = await cli.start("service", ["serve", "--port", "0", "--config", str(service_cfg)], env=service_env)
    base = (await service.wait_for(SERVING_PAGE)).group(1)
    gks = {n: await start_gatekeeper(n, root, cli, store, key["public_key"]) for n in AGENTS}
    say("")
    say(f"mcp-gatekeeper demo --team ({store.name} store): the approval service is at {base}/login")
    for name, (group, principal) in REVIEWERS.items():
        also = f"; linked to {principal}, so not its calls" if principal else ""
        say(f"  reviewer {name:<6} password {passwords[name]}   (group {group}{also})")
    for gk in gks.values():
        say(f"  gatekeeper {gk.name}: {gk.url} (agent:{gk.name}, the gatekeeper role)")
    say("  The laptop's refund needs two reviewers; the CI runner's deletion needs the group ops.")
    say(f"  configs, data homes and order desks: {root} (removed at the end)")
    say("")
    results: dict[str, types.CallToolResult] = {}
    agents_done = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def agents() -> None:
            async with anyio.create_task_group() as both:
                for gk in gks.values():
                    both.start_soon(run_agent, gk, say, results)
            agents_done.set()

        tg.start_soon(agents)
        if not auto:
            say("Decide on the page (sign in as alice or bob). Ctrl-C stops everything and removes it.")
            await anyio.sleep_forever()
        problems = [f"the reviewers' script did not finish within {AUTO_LIMIT:.0f} s"]
        with anyio.move_on_after(AUTO_LIMIT):
            problems = await auto_review(base, passwords, gks, say, agents_done)
        tg.cancel_scope.cancel()  # an agent still waiting (a failed run) is not waited for
    refused = results.get("ci-runner/delete_record")
    if refused is None or not refused.is_error:
        problems.append("the CI runner's agent was not told its deletion was rejected")
    if results.get("laptop/issue_refund") is None or results["laptop/issue_refund"].is_error:
        problems.append("the laptop's agent did not get the refund's result")
    say("demo --team: " + ("every upstream received exactly what was decided" if not problems else "FAILED"))
    for p in problems:
        print(f"mcp-gatekeeper demo --team: {p}", file=sys.stderr)
    return 0 if not problems else 1


def run_team_demo(args: argparse.Namespace) -> int:
    def say(text: str) -> None:
        print(text, flush=True)

    return anyio.run(lambda: team_demo(auto=args.auto, backend=args.backend, say=say))
