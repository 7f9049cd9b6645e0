"""The decision card in the chat (MCP Apps), without a browser: what a client that declared the extension gets,
what every other client does not get, and the app-only decide tool's nonce rules.

A real SDK client (declaring ``io.modelcontextprotocol/ui`` or not) talks to the gatekeeper's server in-process,
in front of the real feature server, over a real SQLite file. The browser side is tests/web/test_apps_browser.py.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from harness import FEATURE_SERVER, StderrWatcher, agent_token, call_log, gk_env, http_client
from mcp import Client, MCPError
from mcp.client.extension import advertise
from upstreams.feature_server import FeatureServer, build_server

from mcp_gatekeeper.apps import APP_MIME_TYPE, CARD_KEY, CARD_URI, DECIDE_TOOL, EXTENSION_ID, NONCE_META_KEY
from mcp_gatekeeper.apps.nonce import NonceRefused, Nonces, nonce_hash
from mcp_gatekeeper.clock import FakeClock, SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import CallRecord, NewCall, State, digest
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.proxy import Proxy
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.upstream import Upstream

pytestmark = pytest.mark.anyio

CONFIG = """
[ui]
autostart = false
port = 8765
[[waiting.clients]]
name = "quick-host*"
budget = 1.0
[[rules]]
name = "no-etc"
tool = "write_note"
when = { path = { glob = "/etc/*" } }
gate = "deny"
reason = "never write under /etc"
[[rules]]
name = "critical-notes"
tool = "write_note"
when = { path = { glob = "/tmp/chat/critical*" } }
gate = "hard"
risk = "critical"
in_chat = "decide"
[[rules]]
name = "notes-in-chat"
tool = "write_note"
when = { path = { glob = "/tmp/chat/*" } }
gate = "hard"
in_chat = "decide"
summary = "Write a note to {path}"
effects = { approve = "the note is written", reject = "nothing is written" }
[[rules]]
name = "notes-on-the-page"
tool = "write_note"
gate = "hard"
[[rules]]
name = "reads"
tool = ["echo"]
gate = "allow"
"""

APPS = advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})


@dataclass
class Stack:
    proxy: Proxy
    store: Store
    gate: Gate
    upstream: FeatureServer

    def client(self, *, apps: bool, name: str = "test-host", mode: str = "legacy") -> Client:
        return Client(
            self.proxy.build_server(), mode=mode, extensions=[APPS] if apps else None,
            client_info=types.Implementation(name=name, version="1"),
        )  # fmt: skip

    @property
    def received(self) -> list[dict[str, Any]]:
        return self.upstream.state.calls


@contextlib.asynccontextmanager
async def make_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    config = parse_config(CONFIG)
    clock = SystemClock()
    upstream_server = build_server(None)
    async with Store.open(tmp_path / "gk.db", clock) as store:
        await store.register_instance("test")
        gate = Gate(store, Policy(config), clock, heartbeat_interval=0.05)
        proxy = Proxy(config=config, policy=gate.policy, gate=gate, clock=clock)
        up = Upstream("feat", None, proxy.hooks(), target=upstream_server)
        proxy.upstreams = {"feat": up}
        async with gate.running(), up.running():
            await up.connect()
            yield Stack(proxy, store, gate, upstream_server)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with make_stack(tmp_path) as s:
        yield s


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def card_of(result: types.CallToolResult) -> tuple[dict[str, Any], str | None]:
    data = (result.structured_content or {})[CARD_KEY]
    nonce = ((result.meta or {}).get(NONCE_META_KEY) or {}).get("nonce")
    return data, nonce


async def all_tools(c: Client) -> list[types.Tool]:
    page = await c.list_tools()
    tools = list(page.tools)
    while page.next_cursor:
        page = await c.list_tools(cursor=page.next_cursor)
        tools += page.tools
    return tools


async def decide(c: Client, **arguments: Any) -> types.CallToolResult:
    return await c.call_tool(DECIDE_TOOL, arguments)


# ---------------------------------------------------------------------------------------------- no leakage


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_client_without_the_extension_sees_nothing_new(stack: Stack, mode: str) -> None:
    with anyio.fail_after(15):
        async with stack.client(apps=False, name="quick-host", mode=mode) as c:
            tools = await all_tools(c)
            assert DECIDE_TOOL not in [t.name for t in tools]
            assert all(not (t.meta or {}).get("ui") for t in tools)
            resources = (await c.list_resources()).resources
            assert CARD_URI not in [str(r.uri) for r in resources]
            with pytest.raises(MCPError):
                await c.read_resource(CARD_URI)
            held = await c.call_tool("write_note", {"path": "/tmp/chat/a", "content": "x"})
            assert held.is_error and "waiting for a human" in text(held)
            assert CARD_KEY not in (held.structured_content or {})
            assert NONCE_META_KEY not in (held.meta or {})
            # the decide tool does not exist for it: an unknown tool, refused and recorded like any other
            refused = await decide(c, call_id="x", nonce="y", args_digest="z", decision="approve")
            assert refused.is_error and "unknown tool" in text(refused)
    assert stack.received == []
    assert await stack.store.app_nonce(nonce_hash("y")) is None


async def test_an_apps_client_gets_the_card_resource_tags_and_an_app_only_tool(stack: Stack) -> None:
    with anyio.fail_after(10):
        async with stack.client(apps=True) as c:
            tools = {t.name: t for t in await all_tools(c)}
            resources = (await c.list_resources()).resources
            read = await c.read_resource(CARD_URI)
    assert (tools["echo"].meta or {})["ui"]["resourceUri"] == CARD_URI
    assert (tools[DECIDE_TOOL].meta or {})["ui"]["visibility"] == ["app"]
    assert "gatekeeper_status" in tools and not (tools["gatekeeper_status"].meta or {}).get("ui")
    card = next(r for r in resources if str(r.uri) == CARD_URI)
    assert card.mime_type == APP_MIME_TYPE
    (content,) = read.contents
    assert isinstance(content, types.TextResourceContents) and content.mime_type == APP_MIME_TYPE
    html = content.text
    assert "connect-src 'none'" in html and "<script src" not in html and "http" not in html.replace("http-equiv", "")
    assert (content.meta or {})["ui"]["csp"] == {"connectDomains": [], "resourceDomains": []}


# ---------------------------------------------------------------------------------------------- deciding in the chat


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_approve_with_an_edit_runs_the_edited_arguments_once(stack: Stack, mode: str) -> None:
    with anyio.fail_after(15):
        async with stack.client(apps=True, mode=mode) as c:
            args = {"path": "/tmp/chat/a", "content": "draft"}
            held = await c.call_tool("write_note", args)
            assert held.is_error
            data, nonce = card_of(held)
            assert nonce is not None and nonce not in text(held) and nonce not in str(held.structured_content)
            assert data["can_decide"] is True and data["headline"] == "Write a note to /tmp/chat/a"
            assert data["effects"] == {"approve": "the note is written", "reject": "nothing is written"}
            assert data["arguments"] == args and data["args_digest"] == digest(args)
            edited = {"path": "/tmp/chat/a", "content": "final"}
            ok = await decide(
                c, call_id=data["call_id"], nonce=nonce, args_digest=data["args_digest"], decision="approve",
                arguments=edited, reason="looks right",
            )  # fmt: skip
            assert not ok.is_error, text(ok)
            first = await c.call_tool("write_note", args)  # the model's retry of the identical call
            second = await c.call_tool("write_note", args)
    assert not first.is_error
    assert [call["arguments"] for call in stack.received] == [edited]
    assert "/tmp/chat/a" in text(second)  # the second retry gets the stored outcome; nothing runs again
    rec = await stack.store.get(data["call_id"])
    assert rec.state == State.FORWARDED and rec.channel == "in-chat" and rec.modified_arguments == edited


async def test_reject_from_the_card(stack: Stack) -> None:
    with anyio.fail_after(15):
        async with stack.client(apps=True) as c:
            args = {"path": "/tmp/chat/b", "content": "x"}
            data, nonce = card_of(await c.call_tool("write_note", args))
            ok = await decide(
                c, call_id=data["call_id"], nonce=nonce, args_digest=data["args_digest"], decision="reject",
                reason="not now",
            )  # fmt: skip
            assert not ok.is_error
            retry = await c.call_tool("write_note", args)
    assert retry.is_error and "not now" in text(retry)
    assert stack.received == []


async def test_the_model_cannot_decide_without_the_cards_nonce(stack: Stack) -> None:
    with anyio.fail_after(15):
        async with stack.client(apps=True) as c:
            args = {"path": "/tmp/chat/c", "content": "x"}
            data, nonce = card_of(await c.call_tool("write_note", args))
            cid, dg = data["call_id"], data["args_digest"]
            attempts = [
                {"call_id": cid, "args_digest": dg, "decision": "approve"},  # no nonce
                {"call_id": cid, "nonce": "guessed", "args_digest": dg, "decision": "approve"},
                {"call_id": cid, "nonce": nonce, "args_digest": digest({"path": "/tmp/chat/c"}), "decision": "approve"},
                {
                    "call_id": cid[:8],
                    "nonce": nonce,
                    "args_digest": dg,
                    "decision": "approve",
                },  # a prefix is not the id
            ]
            for attempt in attempts:
                refused = await c.call_tool(DECIDE_TOOL, attempt)
                assert refused.is_error and "refused" in text(refused), attempt
            assert (await stack.store.get(cid)).state == State.PENDING
            # none of those burned the card's nonce: the human's click still works, once
            ok = await decide(c, call_id=cid, nonce=nonce, args_digest=dg, decision="approve")
            assert not ok.is_error, text(ok)
            replay = await decide(c, call_id=cid, nonce=nonce, args_digest=dg, decision="reject")
            assert replay.is_error and "already used" in text(replay)
    events = [e for e in await stack.store.audit_events() if e.event == "app_decide_refused"]
    assert [e.detail["code"] for e in events] == [
        "no_nonce",
        "unknown_nonce",
        "other_digest",
        "unknown_call",
        "replayed",
    ]
    assert (await stack.store.get(cid)).state == State.APPROVED


async def test_another_client_holding_the_nonce_cannot_use_it(stack: Stack) -> None:
    with anyio.fail_after(15):
        async with stack.client(apps=True) as mine, stack.client(apps=True, name="other-host") as theirs:
            data, nonce = card_of(await mine.call_tool("write_note", {"path": "/tmp/chat/e", "content": "x"}))
            base = {"call_id": data["call_id"], "nonce": nonce, "args_digest": data["args_digest"]}
            stolen = await decide(theirs, **base, decision="approve")
            assert stolen.is_error and "another client" in text(stolen)
            ok = await decide(mine, **base, decision="reject")
            assert not ok.is_error
    assert (await stack.store.get(data["call_id"])).state == State.REJECTED


async def test_an_edit_gets_the_pages_checks_and_a_refused_edit_keeps_the_nonce(stack: Stack) -> None:
    with anyio.fail_after(15):
        async with stack.client(apps=True) as c:
            args = {"path": "/tmp/chat/d", "content": "x"}
            data, nonce = card_of(await c.call_tool("write_note", args))
            base = {"call_id": data["call_id"], "nonce": nonce, "args_digest": data["args_digest"]}
            denied = await decide(c, **base, decision="approve", arguments={"path": "/etc/passwd", "content": "x"})
            assert denied.is_error and "denied by policy" in text(denied)
            bad = await decide(c, **base, decision="approve", arguments={"path": 7})
            assert bad.is_error and "schema" in text(bad)
            assert (await stack.store.get(data["call_id"])).state == State.PENDING
            ok = await decide(c, **base, decision="approve", arguments={"path": "/tmp/chat/d2", "content": "y"})
            assert not ok.is_error, text(ok)


async def test_a_hard_gate_by_default_shows_status_and_a_link_without_a_nonce(stack: Stack) -> None:
    with anyio.fail_after(15):
        async with stack.client(apps=True, name="quick-host") as c:
            held = await c.call_tool("write_note", {"path": "/home/me/n", "content": "x"})
    data, nonce = card_of(held)
    assert nonce is None and data["can_decide"] is False
    assert data["page_url"] == f"http://127.0.0.1:8765/#/call/{data['call_id']}"
    assert (await stack.store.get(data["call_id"])).state == State.PENDING


async def test_a_critical_call_is_never_decided_with_a_click_in_the_chat(stack: Stack) -> None:
    with anyio.fail_after(15):
        async with stack.client(apps=True, name="quick-host") as c:
            held = await c.call_tool("write_note", {"path": "/tmp/chat/critical", "content": "x"})
    data, nonce = card_of(held)
    assert nonce is None and data["can_decide"] is False and data["risk"] == "critical"


# ---------------------------------------------------------------------------------------------- nonce rules


async def _held(store: Store, clock: FakeClock, *, deadline_in: float = 3600) -> CallRecord:
    policy = Policy(parse_config(CONFIG))
    gate = Gate(store, policy, clock)
    new = NewCall(
        upstream="feat", tool="write_note", arguments={"path": "/tmp/chat/n"}, gate="hard", risk="high",
        client={"principal": "stdio:me/host"},
    )  # fmt: skip
    return await gate.start_hold(new, timeout=deadline_in)


async def test_nonce_expires_with_the_injected_clock_and_never_outlives_its_call(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "n.db", clock) as store:
        await store.register_instance("t")
        rec = await _held(store, clock)
        nonces = Nonces(store, clock, ttl=60)
        nonce = await nonces.mint(rec, principal="stdio:me/host")
        assert (await store.app_nonce(nonce_hash(nonce))) is not None
        at_rest = b"".join(p.read_bytes() for p in tmp_path.glob("n.db*"))  # the database and its WAL
        assert nonce.encode() not in at_rest and nonce_hash(nonce).encode() in at_rest  # only its hash at rest
        clock.advance(61)
        got = await nonces.check(nonce, call_id=rec.id, args_digest=rec.args_digest, principal="stdio:me/host")
        assert isinstance(got, NonceRefused) and got.code == "expired"
        short = await _held(store, clock, deadline_in=5)
        n2 = await nonces.mint(short, principal="stdio:me/host")
        row = await store.app_nonce(nonce_hash(n2))
        assert row is not None and row.expires_at == short.deadline_at


async def test_nonce_is_bound_to_call_digest_and_principal(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "n.db", clock) as store:
        await store.register_instance("t")
        rec, other = await _held(store, clock), await _held(store, clock)
        nonces = Nonces(store, clock)
        nonce = await nonces.mint(rec, principal="stdio:me/host")
        cases = {
            "other_call": {"call_id": other.id, "args_digest": rec.args_digest, "principal": "stdio:me/host"},
            "other_digest": {"call_id": rec.id, "args_digest": digest({"path": "/"}), "principal": "stdio:me/host"},
            "other_principal": {"call_id": rec.id, "args_digest": rec.args_digest, "principal": "stdio:you/host"},
        }
        for code, kw in cases.items():
            got = await nonces.check(nonce, **kw)
            assert isinstance(got, NonceRefused) and got.code == code
        assert not isinstance(
            await nonces.check(nonce, call_id=rec.id, args_digest=rec.args_digest, principal="stdio:me/host"),
            NonceRefused,
        )


async def test_nonce_is_spent_once_under_two_concurrent_uses(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Store.open(tmp_path / "n.db", clock) as store:
        await store.register_instance("t")
        rec = await _held(store, clock)
        nonces = Nonces(store, clock)
        nonce = await nonces.mint(rec, principal="p")
        row = await nonces.check(nonce, call_id=rec.id, args_digest=rec.args_digest, principal="p")
        assert not isinstance(row, NonceRefused)
        outcomes: list[NonceRefused | None] = []

        async def use() -> None:
            outcomes.append(await nonces.spend(row))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(use)
                tg.start_soon(use)
        assert sorted(o is None for o in outcomes) == [False, True]
        again = await nonces.check(nonce, call_id=rec.id, args_digest=rec.args_digest, principal="p")
        assert isinstance(again, NonceRefused) and again.code == "replayed"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_over_streamable_http_in_both_eras(home: Path, tmp_path: Path, mode: str) -> None:
    """``run --http``: the agent's bearer token is the principal; the card works in both protocol eras."""
    log = tmp_path / "calls.jsonl"
    cfg = tmp_path / "gk.toml"
    cfg.write_text(
        CONFIG
        + f'\n[upstreams.feat]\ncommand = "{sys.executable}"\nargs = ["{FEATURE_SERVER}", "--call-log", "{log}"]\n'
    )
    watcher = StderrWatcher()
    argv = [sys.executable, "-m", "mcp_gatekeeper", "run", "--config", str(cfg), "--http", "127.0.0.1:0"]
    args = {"path": "/tmp/chat/http", "content": "x"}
    try:
        with anyio.fail_after(90):
            async with await anyio.open_process(argv, env=gk_env(home), stderr=watcher.file) as proc:
                url = (await watcher.wait_for(re.compile(r"serving MCP at (http://\S+)"))).group(1)
                async with http_client(url, agent_token(home), mode=mode, extensions=[APPS]) as c:
                    assert DECIDE_TOOL in [t.name for t in await all_tools(c)]
                    data, nonce = card_of(await c.call_tool("write_note", args))
                    assert nonce is not None
                    ok = await decide(
                        c, call_id=data["call_id"], nonce=nonce, args_digest=data["args_digest"], decision="approve"
                    )
                    assert not ok.is_error, text(ok)
                    assert not (await c.call_tool("write_note", args)).is_error
                async with http_client(url, agent_token(home), mode=mode) as plain:
                    assert DECIDE_TOOL not in [t.name for t in await all_tools(plain)]
                proc.terminate()
    finally:
        watcher.close()
    assert [e["arguments"] for e in call_log(log) if e["tool"] == "write_note"] == [args]


# ---------------------------------------------------------------------------------------------- the rule setting


def _verdict(config_text: str, path: str) -> Any:
    return Policy(parse_config(config_text)).evaluate("feat", "write_note", {"path": path, "content": "x"})


def test_in_chat_defaults_keep_the_page_authoritative_for_hard_gates() -> None:
    rules = """
[[rules]]
name = "hard"
tool = "write_note"
when = { path = { glob = "/h/*" } }
gate = "hard"
[[rules]]
name = "soft"
tool = "write_note"
when = { path = { glob = "/s/*" } }
gate = "soft"
hold_at = "low"
"""
    assert _verdict(rules, "/h/x").in_chat == "show"
    assert _verdict(rules, "/s/x").in_chat == "decide"
    assert _verdict('[waiting]\nin_chat = "decide"\n' + rules, "/h/x").in_chat == "decide"
    assert _verdict('[waiting]\nin_chat = "show"\n' + rules, "/s/x").in_chat == "show"
    assert _verdict(rules.replace('gate = "hard"', 'gate = "hard"\nin_chat = "decide"'), "/h/x").in_chat == "decide"


def test_a_bad_in_chat_value_is_named() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config('[[rules]]\ntool = "x"\ngate = "hard"\nin_chat = "maybe"\n')
    assert "rules[0].in_chat" in str(e.value)
