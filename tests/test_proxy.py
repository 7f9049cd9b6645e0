"""The proxy in-process: a real SDK client → the gatekeeper's Server → a real upstream Server.

Everything runs in one event loop (real JSON-RPC framing in legacy mode, the direct dispatcher at
2026-07-28), against a real SQLite file. The upstream records every call it receives; the store is
read back after each step.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import Client, MCPError
from upstreams.feature_server import FeatureServer, build_server

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import CallRecord, Decision, State
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.proxy import Proxy
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.upstream import Upstream

pytestmark = pytest.mark.anyio

CONFIG = """
[ui]
autostart = false
[[rules]]
name = "notes-to-tmp"
tool = "write_note"
when = { path = { glob = "/tmp/*" } }
gate = "hard"
summary = "Write a note to {path}"
effects = { approve = "the note is written", reject = "nothing is written" }
[[rules]]
name = "no-etc"
tool = "write_note"
when = { path = { glob = "/etc/*" } }
gate = "deny"
reason = "never write under /etc"
[[rules]]
name = "fast-timeout"
tool = "add_tool"
gate = "hard"
timeout = "1s"
[[rules]]
name = "reads"
tool = ["echo", "slow", "ask", "sample", "roots", "log", "err", "boom", "touch_resource", "change_description", "hang"]
gate = "allow"
"""


class HeldQueue:
    """A notifier that hands held calls to the test as they arrive."""

    def __init__(self) -> None:
        self.send, self.recv = anyio.create_memory_object_stream[CallRecord](100)

    async def held(self, call: CallRecord) -> None:
        await self.send.send(call)

    async def next(self) -> CallRecord:
        return await self.recv.receive()


@dataclass
class Stack:
    proxy: Proxy
    store: Store
    gate: Gate
    held: HeldQueue
    upstream: FeatureServer

    def client(self, **kw: Any) -> Client:
        kw.setdefault("mode", "legacy")
        return Client(self.proxy.build_server(), **kw)

    @property
    def received(self) -> list[dict[str, Any]]:
        return self.upstream.state.calls


@contextlib.asynccontextmanager
async def make_stack(tmp_path: Path, config_text: str = CONFIG) -> AsyncIterator[Stack]:
    config = parse_config(config_text)
    clock = SystemClock()
    held = HeldQueue()
    upstream_server = build_server(None)
    async with Store.open(tmp_path / "gk.db", clock) as store:
        await store.register_instance("test")
        gate = Gate(store, Policy(config), clock, notifier=held, heartbeat_interval=0.05)
        proxy = Proxy(config=config, policy=gate.policy, gate=gate, clock=clock)
        up = Upstream("feat", None, proxy.hooks(), target=upstream_server)
        proxy.upstreams = {"feat": up}
        async with gate.running(), up.running(), held.send, held.recv:
            await up.connect()
            yield Stack(proxy, store, gate, held, upstream_server)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with make_stack(tmp_path) as s:
        yield s


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_tools_list_is_verbatim_plus_status_tool(stack: Stack, mode: str) -> None:
    with anyio.fail_after(10):
        async with Client(stack.upstream, mode="legacy") as direct, stack.client(mode=mode) as proxied:
            d = [t.model_dump(by_alias=True, exclude_none=True) for t in (await direct.list_tools()).tools]
            page = await proxied.list_tools()
            p = [t.model_dump(by_alias=True, exclude_none=True) for t in page.tools]
            cursor = page.next_cursor
            while cursor:  # the upstream paginates; the proxy passes cursors through
                page = await proxied.list_tools(cursor=cursor)
                p += [t.model_dump(by_alias=True, exclude_none=True) for t in page.tools]
                cursor = page.next_cursor
            cursor = (await direct.list_tools()).next_cursor
            while cursor:
                page = await direct.list_tools(cursor=cursor)
                d += [t.model_dump(by_alias=True, exclude_none=True) for t in page.tools]
                cursor = page.next_cursor
    assert [t for t in p if t["name"] != "gatekeeper_status"] == d
    assert p[-1]["name"] == "gatekeeper_status"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_allowed_call_passes_untouched_and_is_recorded(stack: Stack, mode: str) -> None:
    with anyio.fail_after(10):
        async with Client(stack.upstream, mode="legacy") as direct, stack.client(mode=mode) as proxied:
            want = await direct.call_tool("echo", {"text": "hi"})
            got = await proxied.call_tool("echo", {"text": "hi"})
    assert got.structured_content == want.structured_content == {"text": "hi"}
    assert got.content == want.content
    rows = await stack.store.list_calls()
    assert [(r.tool, r.state) for r in rows] == [("echo", State.FORWARDED)]
    assert rows[0].result is not None and rows[0].result["structuredContent"] == {"text": "hi"}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_held_call_approved_runs_once_with_original_arguments(stack: Stack, mode: str) -> None:
    with anyio.fail_after(10):
        async with stack.client(mode=mode) as c, anyio.create_task_group() as tg:
            results: list[types.CallToolResult] = []

            async def call() -> None:
                results.append(await c.call_tool("write_note", {"path": "/tmp/a", "content": "x"}))

            tg.start_soon(call)
            rec = await stack.held.next()
            assert rec.summary == "Write a note to /tmp/a" and rec.state == State.PENDING
            assert [x["tool"] for x in stack.received] == []  # nothing ran while held
            await stack.gate.decide(
                rec.id, Decision(approve=True, decided_by="t", channel="test", args_digest=rec.args_digest)
            )
    assert not results[0].is_error
    assert [x["arguments"] for x in stack.received if x["tool"] == "write_note"] == [{"path": "/tmp/a", "content": "x"}]
    assert (await stack.store.get(rec.id)).state == State.FORWARDED


async def test_rejected_call_never_runs_and_agent_reads_reason(stack: Stack) -> None:
    with anyio.fail_after(10):
        async with stack.client() as c, anyio.create_task_group() as tg:
            results: list[types.CallToolResult] = []
            tg.start_soon(lambda: _collect(c, results, "write_note", {"path": "/tmp/b", "content": "y"}))
            rec = await stack.held.next()
            await stack.gate.decide(
                rec.id, Decision(approve=False, decided_by="t", channel="test", reason="wrong file")
            )
    assert results[0].is_error and "wrong file" in text(results[0]) and "rejected" in text(results[0])
    assert not [x for x in stack.received if x["tool"] == "write_note"]
    assert (await stack.store.get(rec.id)).state == State.REJECTED


@pytest.mark.parametrize(
    ("decided_by", "channel", "reason", "expected"),
    [
        ("cli:root", "cli", "wrong file", "rejected by root (a human reviewer, from the command line)"),
        ("web:alice", "web", "wrong file", "rejected by alice (a human reviewer, on the approval page)"),
        ("api:bob", "api", None, "rejected by bob (a human reviewer, through the page's API)"),
        # the client's name is not a person: it must not read as if the agent's own client decided
        ("client:claude-code", "in-client", "no", "rejected by a human reviewer (in the client)"),
    ],
)
async def test_the_reject_text_names_the_reviewer_once(
    stack: Stack, decided_by: str, channel: str, reason: str | None, expected: str
) -> None:
    with anyio.fail_after(10):
        async with stack.client() as c, anyio.create_task_group() as tg:
            results: list[types.CallToolResult] = []
            tg.start_soon(lambda: _collect(c, results, "write_note", {"path": "/tmp/b", "content": "y"}))
            rec = await stack.held.next()
            await stack.gate.decide(
                rec.id, Decision(approve=False, decided_by=decided_by, channel=channel, reason=reason)
            )
    said = text(results[0])
    assert results[0].is_error
    assert said == (
        f"mcp-gatekeeper: this call to write_note was {expected} and did not run."
        f" Reason: {reason or 'none given'} (call {rec.id[:12]})"
    )
    assert said.count("reject") == 1 and said.count("human reviewer") == 1 and "cli:" not in said


async def test_modified_call_runs_with_reviewer_arguments(stack: Stack) -> None:
    with anyio.fail_after(10):
        async with stack.client() as c, anyio.create_task_group() as tg:
            results: list[types.CallToolResult] = []
            tg.start_soon(lambda: _collect(c, results, "write_note", {"path": "/tmp/c", "content": "draft"}))
            rec = await stack.held.next()
            edited = {"path": "/tmp/c", "content": "final"}
            await stack.gate.decide(rec.id, Decision(approve=True, decided_by="t", channel="test", arguments=edited))
    assert [x["arguments"] for x in stack.received if x["tool"] == "write_note"] == [edited]
    assert "changed the arguments" in text(results[0])
    row = await stack.store.get(rec.id)
    assert row.modified_arguments == edited and row.arguments == {"path": "/tmp/c", "content": "draft"}


async def test_deny_rule_and_unknown_tool_never_reach_upstream(stack: Stack) -> None:
    with anyio.fail_after(10):
        async with stack.client() as c:
            denied = await c.call_tool("write_note", {"path": "/etc/passwd", "content": "x"})
            unknown = await c.call_tool("no_such_tool", {})
    assert denied.is_error and "never write under /etc" in text(denied)
    assert unknown.is_error and "unknown tool" in text(unknown)
    assert stack.received == []
    states = sorted(r.state for r in await stack.store.list_calls())
    assert states == [State.DENIED, State.DENIED]


async def test_timeout_rejects_never_approves(stack: Stack) -> None:
    with anyio.fail_after(10):
        async with stack.client() as c:
            result = await c.call_tool("add_tool", {"name": "x"})  # rule timeout 1 s, nobody decides
    assert result.is_error and "not approved in time" in text(result)
    rec = (await stack.store.list_calls())[0]
    assert rec.state == State.EXPIRED
    assert stack.received == []


async def test_client_cancellation_cancels_the_hold(stack: Stack) -> None:
    with anyio.fail_after(10):
        async with stack.client() as c:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: _collect(c, [], "write_note", {"path": "/tmp/d", "content": "z"}))
                rec = await stack.held.next()
                tg.cancel_scope.cancel()  # the SDK client sends notifications/cancelled
            # the cancellation is recorded by the proxy's handler; wait for it through the store's own change
            while (await stack.store.get(rec.id)).state == State.PENDING:
                await anyio.lowlevel.checkpoint()
    assert (await stack.store.get(rec.id)).state == State.CANCELLED
    with pytest.raises(Exception, match="already cancelled"):
        await stack.gate.decide(rec.id, Decision(approve=True, decided_by="t", channel="test"))
    assert not [x for x in stack.received if x["tool"] == "write_note"]


async def test_progress_heartbeats_while_held(stack: Stack) -> None:
    messages: list[str] = []
    got_three = anyio.Event()

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")
        if len(messages) >= 3:
            got_three.set()

    with anyio.fail_after(10):
        async with stack.client() as c, anyio.create_task_group() as tg:
            results: list[types.CallToolResult] = []

            async def call() -> None:
                results.append(
                    await c.call_tool("write_note", {"path": "/tmp/p", "content": "."}, progress_callback=on_progress)
                )

            tg.start_soon(call)
            rec = await stack.held.next()
            await got_three.wait()
            await stack.gate.decide(rec.id, Decision(approve=True, decided_by="t", channel="test"))
    assert not results[0].is_error
    assert all("waiting for human approval of write_note" in m for m in messages[:3])


async def test_upstream_error_and_iserror_pass_through(stack: Stack) -> None:
    with anyio.fail_after(10):
        async with Client(stack.upstream, mode="legacy") as direct, stack.client() as c:
            err = await c.call_tool("err", {})
            assert err.is_error and text(err) == "upstream says no"
            with pytest.raises(MCPError) as proxied:
                await c.call_tool("boom", {})
            with pytest.raises(MCPError) as original:
                await direct.call_tool("boom", {})
    assert (proxied.value.code, proxied.value.message) == (original.value.code, original.value.message)


async def test_elicitation_sampling_roots_progress_relay(stack: Stack) -> None:
    async def on_elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"ok": True})

    async def on_sample(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled!"), model="m"
        )

    async def on_roots(ctx: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///srv/project")])

    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    with anyio.fail_after(10):
        async with stack.client(
            elicitation_callback=on_elicit, sampling_callback=on_sample, list_roots_callback=on_roots
        ) as c:
            asked = await c.call_tool("ask", {})
            sampled = await c.call_tool("sample", {})
            roots = await c.call_tool("roots", {})
            slow = await c.call_tool("slow", {"steps": 3, "delay": 0.0}, progress_callback=on_progress)
    assert "accept" in text(asked) and "True" in text(asked)
    assert "sampled!" in text(sampled)
    assert "file:///srv/project" in text(roots)
    assert text(slow) == "done 3"
    assert sorted(progress) == [0.0, 1.0, 2.0] or len(progress) == 3


async def test_notifications_relay_list_changed_and_logging(stack: Stack) -> None:
    seen: list[str] = []
    changed = anyio.Event()

    async def on_message(msg: Any) -> None:
        if isinstance(msg, Exception):
            return
        seen.append(msg.method)
        if msg.method == "notifications/tools/list_changed":
            changed.set()

    with anyio.fail_after(10):
        async with stack.client(message_handler=on_message) as c:
            await c.list_tools()
            await c.call_tool("change_description", {"text": "a new description"})
            await changed.wait()
            tools = {t.name: t for t in (await c.list_tools()).tools}
            cursor = None
            names = set(tools)
            while "echo" not in names:
                page = await c.list_tools(cursor=cursor)
                tools.update({t.name: t for t in page.tools})
                names = set(tools)
                cursor = page.next_cursor
    assert "notifications/tools/list_changed" in seen
    assert tools["echo"].description == "a new description"


async def test_resources_prompts_completion_pass_through(stack: Stack) -> None:
    with anyio.fail_after(10):
        async with Client(stack.upstream, mode="legacy") as direct, stack.client() as c:
            for client in (direct, c):
                res = await client.list_resources()
                assert "memo://hello" in [r.uri for r in res.resources]
            read_p = await c.read_resource("memo://hello")
            read_d = await direct.read_resource("memo://hello")
            assert read_p.contents == read_d.contents
            templates = await c.list_resource_templates()
            assert [t.uri_template for t in templates.resource_templates] == ["memo://note/{name}"]
            prompt = await c.get_prompt("greet", {"name": "Ada"})
            assert prompt.messages == (await direct.get_prompt("greet", {"name": "Ada"})).messages
            done = await c.complete(
                types.PromptReference(type="ref/prompt", name="greet"), {"name": "name", "value": "Al"}
            )
            assert done.completion.values == ["Alice", "Alan"]


async def test_status_tool_reports_pending_then_result(stack: Stack) -> None:
    with anyio.fail_after(10):
        async with stack.client() as c:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: _collect(c, [], "write_note", {"path": "/tmp/s", "content": "s"}))
                rec = await stack.held.next()
                status = await c.call_tool("gatekeeper_status", {"id": rec.id[:8]})
                assert status.structured_content is not None and status.structured_content["state"] == "pending"
                await stack.gate.decide(rec.id, Decision(approve=True, decided_by="t", channel="test"))
            status = await c.call_tool("gatekeeper_status", {"id": rec.id[:8]})
    assert status.structured_content is not None and status.structured_content["state"] == "forwarded"
    assert "wrote" in json.dumps(status.structured_content["result"])


async def test_store_failure_fails_closed(tmp_path: Path) -> None:
    async with make_stack(tmp_path) as stack, stack.client() as c:
        await stack.store.engine.connection.close()  # the database goes away under the proxy
        with anyio.fail_after(10):
            allowed = await c.call_tool("echo", {"text": "x"})
            held = await c.call_tool("write_note", {"path": "/tmp/x", "content": "x"})
    assert allowed.is_error and "could not record" in text(allowed)
    assert held.is_error and "could not record" in text(held)
    assert stack.received == []


async def _collect(c: Client, out: list[types.CallToolResult], tool: str, args: dict[str, Any]) -> None:
    out.append(await c.call_tool(tool, args))
