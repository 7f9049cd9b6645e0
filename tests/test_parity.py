"""Parity: ``@modelcontextprotocol/server-everything`` behaves the same through the gatekeeper as direct.

The same exercise runs against the server directly and through ``mcp-gatekeeper`` (stdio upstream, a
Streamable HTTP upstream, a legacy SSE upstream, and the gatekeeper itself served over HTTP), and the
observations must be equal: tools (pagination, annotations, output schema, structured content, ``_meta``),
resources (read, templates, subscribe), prompts, completions, logging, progress, cancellation, and
server→client elicitation, sampling and roots relayed to the client.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from harness import StderrWatcher, agent_token, gk_env, http_client, npm_bin, wrap_params
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

pytestmark = [pytest.mark.anyio, pytest.mark.npm]

EVERYTHING = npm_bin("mcp-server-everything")
needs_everything = pytest.mark.skipif(EVERYTHING is None, reason="node or server-everything missing (run .ci/setup)")

ALLOW_ALL = """
[ui]
autostart = false
[[rules]]
name = "parity: everything passes"
gate = "allow"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Observer:
    """The client side of the exercise: callbacks that answer like a user would, and what arrived."""

    def __init__(self) -> None:
        self.notifications: list[str] = []
        self.elicited: list[str] = []
        self.sampled: list[str] = []
        self.logs = anyio.Event()

    async def on_message(self, msg: Any) -> None:
        if isinstance(msg, Exception):
            return
        self.notifications.append(msg.method)
        if msg.method == "notifications/message":
            self.logs.set()

    async def on_elicit(self, ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicited.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada", "check": True})

    async def on_sample(self, ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampled.append(str(params.messages[0].content))
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="42"), model="m")

    async def on_roots(self, ctx: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///srv/project", name="project")])

    def client(self, target: Any, **kw: Any) -> Client:
        return Client(
            target,
            mode=kw.pop("mode", "legacy"),
            message_handler=self.on_message,
            elicitation_callback=self.on_elicit,
            sampling_callback=self.on_sample,
            list_roots_callback=self.on_roots,
            **kw,
        )


def dump(model: Any) -> Any:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


async def all_tools(c: Client) -> list[dict[str, Any]]:
    tools, cursor = [], None
    while True:
        page = await c.list_tools(cursor=cursor)
        tools += [dump(t) for t in page.tools if t.name != "gatekeeper_status"]
        if not (cursor := page.next_cursor):
            return tools


async def exercise(c: Client, obs: Observer) -> dict[str, Any]:
    """Everything a client can do with server-everything, reduced to comparable values."""
    out: dict[str, Any] = {}
    out["tools"] = await all_tools(c)
    out["echo"] = dump(await c.call_tool("echo", {"message": "héllo ✓"}))
    out["structured"] = dump(await c.call_tool("get-structured-content", {"location": "New York"}))
    out["annotated"] = dump(await c.call_tool("get-annotated-message", {"messageType": "error", "includeImage": True}))
    out["links"] = dump(await c.call_tool("get-resource-links", {"count": 2}))
    out["sum"] = dump(await c.call_tool("get-sum", {"a": 2, "b": 40}))
    resources, cursor = [], None
    while True:
        page = await c.list_resources(cursor=cursor)
        resources += [dump(r) for r in page.resources]
        if not (cursor := page.next_cursor):
            break
    out["resources"] = resources
    out["read"] = dump(await c.read_resource(resources[0]["uri"]))
    out["templates"] = dump(await c.list_resource_templates())
    await c.subscribe_resource(resources[0]["uri"])
    await c.unsubscribe_resource(resources[0]["uri"])
    out["prompts"] = dump(await c.list_prompts())
    out["prompt"] = dump(await c.get_prompt("args-prompt", {"city": "Oslo", "state": "Norway"}))
    ref = types.PromptReference(type="ref/prompt", name="completable-prompt")
    out["completion"] = dump(await c.complete(ref, {"name": "department", "value": "E"}))
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    out["long"] = dump(
        await c.call_tool(
            "trigger-long-running-operation", {"duration": 0.3, "steps": 3}, progress_callback=on_progress
        )
    )
    out["progress"] = sorted(progress)
    with anyio.move_on_after(0.2):  # cancel a long call; the session stays usable
        await c.call_tool("trigger-long-running-operation", {"duration": 30, "steps": 30})
    out["after_cancel"] = dump(await c.call_tool("echo", {"message": "still here"}))
    out["sampling"] = dump(await c.call_tool("trigger-sampling-request", {"prompt": "6*7?", "maxTokens": 5}))
    out["roots"] = dump(await c.call_tool("get-roots-list", {}))
    out["elicitation"] = dump(await c.call_tool("trigger-elicitation-request", {}))
    await c.set_logging_level("debug")
    await c.call_tool("toggle-simulated-logging", {})
    with anyio.fail_after(15):
        await obs.logs.wait()
    await c.call_tool("toggle-simulated-logging", {})
    out["got_log"] = "notifications/message" in obs.notifications
    out["elicited"], out["sampled"] = len(obs.elicited), len(obs.sampled)
    return out


@asynccontextmanager
async def everything_http(kind: str) -> AsyncIterator[str]:
    """Start server-everything on HTTP ('streamableHttp' or 'sse'); yield its URL once it listens."""
    assert EVERYTHING is not None
    port = free_port()
    watcher = StderrWatcher()
    env = {"PORT": str(port), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    try:
        async with await anyio.open_process(
            [EVERYTHING, kind], env=env, stderr=watcher.file, stdout=watcher.file
        ) as proc:
            with anyio.fail_after(20):
                await watcher.wait_for(re.compile(r"(listening|running) on port"))
            yield f"http://127.0.0.1:{port}/{'mcp' if kind == 'streamableHttp' else 'sse'}"
            proc.terminate()
    finally:
        watcher.close()


def assert_same(direct: dict[str, Any], proxied: dict[str, Any]) -> None:
    assert direct.keys() == proxied.keys()
    for key in direct:
        assert proxied[key] == direct[key], f"{key} differs through the gatekeeper"
    assert direct["got_log"] and direct["elicited"] == 1 and direct["sampled"] == 1
    assert len(direct["progress"]) >= 3


@needs_everything
async def test_parity_stdio(home: Path, tmp_path: Path) -> None:
    assert EVERYTHING is not None
    cfg = tmp_path / "gk.toml"
    cfg.write_text(ALLOW_ALL)
    with anyio.fail_after(90):
        obs_d, obs_p = Observer(), Observer()
        async with obs_d.client(stdio_client(StdioServerParameters(command=EVERYTHING, args=["stdio"]))) as d:
            direct = await exercise(d, obs_d)
        async with obs_p.client(stdio_client(wrap_params(home, cfg, "everything", [EVERYTHING, "stdio"]))) as p:
            proxied = await exercise(p, obs_p)
    assert_same(direct, proxied)


@needs_everything
@pytest.mark.parametrize("kind", ["streamableHttp", "sse"])
async def test_parity_http_upstreams(home: Path, tmp_path: Path, kind: str) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(ALLOW_ALL)
    with anyio.fail_after(120):
        async with everything_http(kind) as url:
            obs_d, obs_p = Observer(), Observer()
            if kind == "sse":
                from mcp.client.sse import sse_client

                target: Any = sse_client(url)
            else:
                target = url
            async with obs_d.client(target) as d:
                direct = await exercise(d, obs_d)
            params = wrap_params(home, cfg, "everything", [])
            params.args = [a for a in params.args if a != "--"] + ["--url", url]
            async with obs_p.client(stdio_client(params)) as p:
                proxied = await exercise(p, obs_p)
    assert_same(direct, proxied)


@needs_everything
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_gatekeeper_served_over_http_both_eras(home: Path, tmp_path: Path, mode: str) -> None:
    """``run --http``: a client reaches the gatekeeper over Streamable HTTP; the upstream is stdio."""
    assert EVERYTHING is not None
    cfg = tmp_path / "gk.toml"
    cfg.write_text(ALLOW_ALL + f'\n[upstreams.everything]\ncommand = "{EVERYTHING}"\nargs = ["stdio"]\n')
    watcher = StderrWatcher()
    argv = [sys.executable, "-m", "mcp_gatekeeper", "run", "--config", str(cfg), "--http", "127.0.0.1:0"]
    try:
        with anyio.fail_after(90):
            async with await anyio.open_process(argv, env=gk_env(home), stderr=watcher.file) as proc:
                m = await watcher.wait_for(re.compile(r"serving MCP at (http://\S+)"))
                url = m.group(1)
                async with http_client(url, agent_token(home), mode=mode) as c:
                    expected = "2025-11-25" if mode == "legacy" else "2026-07-28"
                    assert c.protocol_version == expected
                    tools = await all_tools(c)
                    assert "echo" in {t["name"] for t in tools}
                    r = await c.call_tool("echo", {"message": "over http"})
                    assert not r.is_error and "over http" in str(r.content[0])
                    s = await c.call_tool("get-structured-content", {"location": "Chicago"})
                    assert s.structured_content is not None
                # a request from a foreign Host is refused (DNS rebinding)
                import httpx2

                async with httpx2.AsyncClient() as http:
                    bad = await http.post(
                        url,
                        headers={
                            "Host": "evil.test",
                            "Authorization": f"Bearer {agent_token(home)}",
                            "Content-Type": "application/json",
                            "Accept": "application/json, text/event-stream",
                        },
                        content=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
                    )
                    assert bad.status_code == 421
                proc.terminate()
    finally:
        watcher.close()
