"""Test harness: start the real gatekeeper as a subprocess, watch its stderr, find the real peers.

Waiting is event-driven: the gatekeeper prints ``HELD <id>`` on stderr when it holds a call, and
:class:`StderrWatcher` wakes the test when that line arrives (no polling, no sleeps).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parent.parent
FEATURE_SERVER = ROOT / "tests" / "upstreams" / "feature_server.py"
HELD = re.compile(r"HELD ([0-9a-f]{8})")


def peers_dir() -> Path | None:
    for candidate in (os.environ.get("GK_PEERS"), ROOT / ".peers", Path.home() / ".cache" / "mcp-peers"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def peer_bin(name: str) -> str | None:
    """An executable installed in the peers' Python venv (mcp-server-git, mcp-server-time)."""
    p = peers_dir()
    if p is not None and (p / "venv" / "bin" / name).exists():
        return str(p / "venv" / "bin" / name)
    return shutil.which(name)


def npm_bin(name: str) -> str | None:
    """A binary from the peers' npm project (mcp-server-filesystem, mcp-server-everything)."""
    p = peers_dir()
    if p is None or shutil.which("node") is None:
        return None
    candidate = p / "npm" / "node_modules" / ".bin" / name
    return str(candidate) if candidate.exists() else None


def langgraph_python() -> str | None:
    """The Python of the peers' LangGraph venv (langgraph + langchain-mcp-adapters, which pin mcp<2)."""
    p = peers_dir()
    if p is None:
        return None
    candidate = p / "langgraph-venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def gk_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["MCP_GATEKEEPER_HOME"] = str(home)
    env.pop("MCP_GATEKEEPER_CONFIG", None)
    env.update(extra)
    return env


def wrap_params(home: Path, config: Path | None, name: str, upstream: list[str], **env: str) -> StdioServerParameters:
    args = ["-m", "mcp_gatekeeper", "wrap", "--name", name]
    if config is not None:
        args += ["--config", str(config)]
    return StdioServerParameters(
        command=sys.executable, args=[*args, "--", *upstream], env=gk_env(home, **env), cwd=str(ROOT)
    )


async def cli(home: Path, *args: str, check: bool = True, config: Path | None = None) -> tuple[int, str, str]:
    """Run ``mcp-gatekeeper ARGS`` as a separate process (as a human at another terminal would)."""
    argv = [sys.executable, "-m", "mcp_gatekeeper", *args]
    if config is not None:
        argv += ["--config", str(config)]
    proc = await anyio.run_process(argv, env=gk_env(home), check=False, cwd=str(ROOT))
    out, err = proc.stdout.decode(), proc.stderr.decode()
    if check and proc.returncode != 0:
        raise AssertionError(f"mcp-gatekeeper {' '.join(args)} exited {proc.returncode}: {err}")
    return proc.returncode, out, err


class StderrWatcher:
    """A pipe to give a subprocess as stderr; lines arrive in a stream the test can wait on."""

    def __init__(self) -> None:
        r, w = os.pipe()
        self._r = r
        self.file: TextIO = os.fdopen(w, "w", buffering=1)
        self.lines: list[str] = []
        self._send, self._recv = anyio.create_memory_object_stream[str](10_000)
        self._token = anyio.lowlevel.current_token()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with os.fdopen(self._r, "r", errors="replace") as f:
            for line in f:
                self.lines.append(line)
                sys.stderr.write(line)
                try:
                    anyio.from_thread.run_sync(self._send.send_nowait, line, token=self._token)
                except Exception:
                    return

    async def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        async for line in self._recv:
            if m := pattern.search(line):
                return m
        raise AssertionError(f"stderr closed before {pattern.pattern!r} appeared")

    async def held(self) -> str:
        """Wait for the next held call; its id prefix."""
        return (await self.wait_for(HELD)).group(1)

    def close(self) -> None:
        self.file.close()


@asynccontextmanager
async def gatekeeper(params: StdioServerParameters, **client_kw: Any) -> AsyncIterator[tuple[Client, StderrWatcher]]:
    """Start ``mcp-gatekeeper wrap`` as a client would and connect to it."""
    watcher = StderrWatcher()
    client_kw.setdefault("mode", "legacy")
    try:
        async with Client(stdio_client(params, errlog=watcher.file), **client_kw) as client:
            yield client, watcher
    finally:
        watcher.close()


def agent_token(home: Path) -> str:
    """The bearer token ``run --http`` generated for agent ``local`` in this home (it exists once the server
    printed its ``serving MCP at`` line)."""
    return (home / "agent-token").read_text().strip()


@asynccontextmanager
async def http_client(url: str, token: str | None, **client_kw: Any) -> AsyncIterator[Client]:
    """An SDK client of ``run --http`` sending ``Authorization: Bearer <token>`` (none if ``token`` is None)."""
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), **client_kw) as client,
    ):
        yield client


def call_log(path: Path) -> list[dict[str, Any]]:
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RawWrap:
    """``mcp-gatekeeper wrap`` driven with hand-written JSON-RPC lines on its stdin/stdout, as any client does."""

    def __init__(self, proc: Any, watcher: StderrWatcher) -> None:
        self.proc = proc
        self.watcher = watcher
        self.buffer = b""

    async def send_line(self, line: str) -> None:
        await self.proc.stdin.send((line + "\n").encode())

    async def send(self, msg: dict[str, Any]) -> None:
        import json

        await self.send_line(json.dumps(msg))

    async def receive(self) -> dict[str, Any]:
        import json

        with anyio.fail_after(30):
            while b"\n" not in self.buffer:
                self.buffer += await self.proc.stdout.receive()
        line, _, self.buffer = self.buffer.partition(b"\n")
        msg: dict[str, Any] = json.loads(line)
        return msg

    async def request(self, rid: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
        await self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        return await self.receive()

    async def call(self, rid: Any, name: str, arguments: Any) -> dict[str, Any]:
        return await self.request(rid, "tools/call", {"name": name, "arguments": arguments})


@asynccontextmanager
async def raw_wrap(params: StdioServerParameters, *, protocol: str = "2025-06-18") -> AsyncIterator[RawWrap]:
    """Start ``wrap`` as a subprocess and do the handshake; on exit close stdin and wait for it to end."""
    watcher = StderrWatcher()
    try:
        async with await anyio.open_process(
            [params.command, *params.args], env=params.env, cwd=params.cwd, stderr=watcher.file
        ) as proc:
            c = RawWrap(proc, watcher)
            init = await c.request(
                0, "initialize",
                {"protocolVersion": protocol, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
            )  # fmt: skip
            assert "result" in init, init
            await c.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            yield c
            await proc.stdin.aclose()
            with anyio.fail_after(30):
                await proc.wait()
    finally:
        watcher.close()
