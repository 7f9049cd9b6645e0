"""The decision card in a real browser: Debian chromium, a host page built on the ext-apps SDK's ``app-bridge``.

The host page (tests/web/apps_host, bundled by esbuild from the npm package ``@modelcontextprotocol/ext-apps``)
is served from 127.0.0.1 by the test. Its MCP connection is a real SDK client that declared the MCP Apps
extension, connected over stdio to a real ``mcp-gatekeeper wrap`` process in front of the feature server. The
"model" makes a held call; the host renders the card from the gatekeeper's ``ui://`` resource in a sandboxed
iframe; the test edits an argument and clicks Approve; the model's retry runs the edited arguments exactly once.
The model calling the app-only tool itself is refused, and so is a replay of the card's nonce.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from harness import FEATURE_SERVER, ROOT, call_log, gatekeeper, peers_dir, wrap_params
from mcp import Client
from mcp.client.extension import advertise
from starlette.applications import Starlette
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from mcp_gatekeeper.apps import APP_MIME_TYPE, DECIDE_TOOL, EXTENSION_ID, NONCE_META_KEY

CHROMIUM = Path("/usr/bin/chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
HOST_DIR = Path(__file__).parent / "apps_host"
SCREENSHOTS = ROOT / os.environ.get("GK_SCREENSHOTS_DIR", "test-artifacts/screenshots")
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def apps_node_modules() -> Path | None:
    """The peers' npm project for the host page (``.ci/setup`` installs ext-apps and esbuild there)."""
    for base in (peers_dir(), ROOT / ".peers"):
        if base is not None and (base / "apps" / "node_modules" / "@modelcontextprotocol" / "ext-apps").is_dir():
            return base / "apps" / "node_modules"
    return None


NODE_MODULES = apps_node_modules()

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.npm,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package"),
    pytest.mark.skipif(
        NODE_MODULES is None or shutil.which("node") is None,
        reason="needs node and @modelcontextprotocol/ext-apps + esbuild in .peers/apps (run .ci/setup)",
    ),
]

CONFIG = """
[ui]
autostart = false
port = 8765
[[rules]]
name = "no-etc"
tool = "write_note"
when = { path = { glob = "/etc/*" } }
gate = "deny"
reason = "never write under /etc"
[[rules]]
name = "notes in the chat"
tool = "write_note"
when = { path = { glob = "notes/*" } }
gate = "hard"
in_chat = "decide"
summary = "Write the note {path}"
effects = { approve = "the note is saved where the team reads it", reject = "nothing is written" }
[[rules]]
name = "other notes on the page"
tool = "write_note"
gate = "hard"
"""


def bundle(out: Path) -> Path:
    """host.js with the ext-apps app-bridge (and its dependencies) bundled in, for the browser."""
    assert NODE_MODULES is not None
    esbuild = NODE_MODULES / ".bin" / "esbuild"
    target = out / "host.bundle.js"
    subprocess.run(
        [str(esbuild), str(HOST_DIR / "host.js"), "--bundle", "--format=iife", "--platform=browser",
         "--log-level=warning", f"--outfile={target}"],
        check=True, env={**os.environ, "NODE_PATH": str(NODE_MODULES)}, timeout=120,
    )  # fmt: skip
    return target


@pytest.fixture
async def host_url(tmp_path: Path) -> AsyncIterator[str]:
    """The host page, served from 127.0.0.1 by this test."""
    script = bundle(tmp_path)

    async def index(request: Any) -> Response:
        return FileResponse(HOST_DIR / "host.html")

    async def host_js(request: Any) -> Response:
        return FileResponse(script, media_type="text/javascript")

    app = Starlette(routes=[Route("/", index), Route("/host.js", host_js)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", ws="none"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            server.should_exit = True
    sock.close()


def dump(model: Any) -> Any:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


async def all_tools(c: Client) -> list[dict[str, Any]]:
    page = await c.list_tools()
    tools = [dump(t) for t in page.tools]
    while page.next_cursor:
        page = await c.list_tools(cursor=page.next_cursor)
        tools += [dump(t) for t in page.tools]
    return tools


def bridge_to(c: Client) -> Any:
    """What the host page calls for every MCP request: the same client connection, as the host's would be."""

    async def gk_mcp(method: str, params: dict[str, Any]) -> Any:
        if method == "tools/list":
            return await all_tools(c)
        if method == "tools/call":
            return dump(await c.call_tool(params["name"], params.get("arguments") or {}))
        if method == "resources/read":
            return dump(await c.read_resource(params["uri"]))
        raise ValueError(f"the test host does not forward {method}")

    return gk_mcp


async def test_a_click_in_the_card_approves_an_edited_call_that_runs_once(
    tmp_path: Path, home: Path, host_url: str
) -> None:
    from playwright.async_api import async_playwright

    cfg = tmp_path / "gk.toml"
    cfg.write_text(CONFIG)
    log = tmp_path / "calls.jsonl"
    params = wrap_params(home, cfg, "notes", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)])
    apps = advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})
    args = {"path": "notes/standup.md", "content": "Ship it on Fridya"}
    edited = {"path": "notes/standup.md", "content": "Ship it on Friday"}
    with anyio.fail_after(90):
        async with gatekeeper(params, extensions=[apps]) as (client, _), async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
            try:
                page = await (await browser.new_context(viewport={"width": 900, "height": 900})).new_page()
                await page.expose_function("gkMcp", bridge_to(client))
                await page.goto(host_url)
                await page.wait_for_function("window.hostReady === true")
                await page.evaluate("([n, a]) => modelCalls(n, a)", ["write_note", args])
                await page.wait_for_function("window.cardFed === true")
                card = page.frame_locator("#card")
                await card.locator("#headline").wait_for()
                assert await card.locator("#headline").text_content() == "Write the note notes/standup.md"
                body = await card.locator("main").text_content() or ""
                for words in ("Why it was held", "notes in the chat", "If approved",
                              "the note is saved where the team reads it", "If rejected", "nothing is written"):  # fmt: skip
                    assert words in body
                assert json.loads(await card.locator("#args").input_value()) == args
                # the host keeps the app-only tool from the model
                assert DECIDE_TOOL not in await page.evaluate("window.modelTools")
                assert "write_note" in await page.evaluate("window.modelTools")

                await card.locator("#args").fill(json.dumps(edited, indent=2))
                await card.locator("#reason").fill("typo fixed")
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(SCREENSHOTS / "apps-decision-card.png"), full_page=True)
                await card.locator("#approve").click()  # high risk: the first click only arms the button
                assert await card.locator("#approve").text_content() == "Click again to approve"
                assert await page.evaluate("window.hostLog.length") == 0
                await card.locator("#approve").click()
                await card.locator("#status.done").wait_for()
                assert "Approved with your edited arguments" in (await card.locator("#status").text_content() or "")
                host_log = await page.evaluate("window.hostLog")
                nonce = (await page.evaluate("window.lastResult"))["_meta"][NONCE_META_KEY]["nonce"]
                held = await page.evaluate("window.lastResult.structuredContent.mcpGatekeeper")
            finally:
                await browser.close()
            assert {"kind": "tools/call", "name": DECIDE_TOOL} in host_log
            assert any(e["kind"] == "message" and "Retry the identical call" in e["text"] for e in host_log)

            # the model retries the identical call: it runs once, with the reviewer's arguments
            first = await client.call_tool("write_note", args)
            again = await client.call_tool("write_note", args)
            assert not first.is_error
            assert [c["arguments"] for c in call_log(log) if c.get("tool") == "write_note"] == [edited]
            assert not again.is_error

            # the model calling the app-only tool itself: refused (no nonce), and a replay of the card's: refused
            cid, dg = held["call_id"], held["args_digest"]
            by_model = await client.call_tool(DECIDE_TOOL, {"call_id": cid, "args_digest": dg, "decision": "reject"})
            replay = await client.call_tool(
                DECIDE_TOOL, {"call_id": cid, "nonce": nonce, "args_digest": dg, "decision": "approve"}
            )
    assert by_model.is_error and "no card nonce" in str(by_model.content)
    assert replay.is_error and "already used" in str(replay.content)
    assert [c["arguments"] for c in call_log(log) if c.get("tool") == "write_note"] == [edited]


async def test_a_hard_gate_card_shows_status_and_a_link_to_the_page(tmp_path: Path, home: Path, host_url: str) -> None:
    from playwright.async_api import async_playwright

    cfg = tmp_path / "gk.toml"
    cfg.write_text(CONFIG + '\n[[waiting.clients]]\nname = "mcp"\nbudget = 1.0\n')
    log = tmp_path / "calls.jsonl"
    params = wrap_params(home, cfg, "notes", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)])
    apps = advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})
    with anyio.fail_after(90):
        async with gatekeeper(params, extensions=[apps]) as (client, _), async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
            try:
                page = await (await browser.new_context()).new_page()
                await page.expose_function("gkMcp", bridge_to(client))
                await page.goto(host_url)
                await page.wait_for_function("window.hostReady === true")
                await page.evaluate("([n, a]) => modelCalls(n, a)", ["write_note", {"path": "/srv/x", "content": "y"}])
                card = page.frame_locator("#card")
                await card.locator("#waiting").wait_for()
                assert await card.locator("#approve").count() == 0
                assert await card.locator("#args").get_attribute("readonly") is not None
                await card.locator("#open-page").click()
                await page.wait_for_function("window.hostLog.some((e) => e.kind === 'open-link')")
                host_log = await page.evaluate("window.hostLog")
            finally:
                await browser.close()
    (link,) = [e["url"] for e in host_log if e["kind"] == "open-link"]
    assert link.startswith("http://127.0.0.1:8765/#/call/")
    assert call_log(log) == [] or all(c.get("tool") != "write_note" for c in call_log(log))
