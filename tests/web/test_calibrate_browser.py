"""The Calibrate view and the card's shadow verdict in a real browser (Debian chromium driven by Playwright)."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import validate_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import NewCall, State
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.web import build_app, mint_login_url, serve
from mcp_gatekeeper.webauth import load_or_create_token

from .conftest import CONFIG

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / os.environ.get("GK_SCREENSHOTS_DIR", "test-artifacts/screenshots")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package (pip install playwright)"),
]


async def _seed(store: Store) -> str:
    now = time.time()
    rows: list[tuple[NewCall, State, dict[str, Any]]] = []
    for i in range(24):
        args = {"order_id": f"A-{i}", "amount": 10 + i, "currency": "EUR", "password": "correct-horse-battery"}
        new = NewCall(upstream="orderdesk", tool="issue_refund", arguments=args, gate="hard", risk="high",
                      rule="refunds", tooldef_hash="h1", shadow_action="allow", shadow_rule="cheap-refunds")  # fmt: skip
        rows.append((new, State.FORWARDED, {"created_at": now - 3600 - i, "decided_at": now - 3000 - i,
                                            "decided_by": "web:alice", "channel": "web"}))  # fmt: skip
    evil = "<img src=x onerror=alert(1)>\u202e"
    new = NewCall(upstream="orderdesk", tool="issue_refund", arguments={"order_id": evil, "amount": 999, "currency": "USD"},
                  gate="hard", risk="high", rule="refunds", tooldef_hash="h1", shadow_action="allow",
                  shadow_rule="cheap-refunds", shadow_reason=evil)  # fmt: skip
    rows.append(
        (
            new,
            State.REJECTED,
            {"created_at": now - 100, "decided_at": now - 50, "decided_by": "web:bob", "channel": "web"},
        )
    )
    await store.insert_history(rows)
    (rejected,) = await store.list_calls(states=[State.REJECTED])
    return rejected.id


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Store, str]]:
    clock = SystemClock()
    policy = Policy(validate_config(CONFIG))
    home = tmp_path / "home"
    token = load_or_create_token(home)
    async with Store.open(home / "gatekeeper.db", clock) as store:
        await store.register_instance("browser-test")
        gate = Gate(store, policy, clock)
        app = build_app(store=store, gate=gate, policy=policy, token=token, port=0, clock=clock)
        async with gate.running(), anyio.create_task_group() as tg:
            port = await tg.start(lambda task_status: serve(
                app, host="127.0.0.1", port=0, allow_remote=False, task_status=task_status
            ))  # fmt: skip
            yield store, f"http://127.0.0.1:{port}"
            tg.cancel_scope.cancel()


async def test_the_calibrate_view_and_the_cards_shadow_verdict(served: tuple[Store, str]) -> None:
    from playwright.async_api import async_playwright

    store, base = served
    rejected = await _seed(store)
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless=new", "--no-sandbox"])
        try:
            page = await (await browser.new_context(viewport={"width": 1280, "height": 860})).new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
            await page.goto(await mint_login_url(store, base))
            await page.wait_for_selector("#whoami:has-text('web:')", state="attached")
            await page.click("#nav a[data-view='calibrate']")
            card = await page.wait_for_selector(
                ".suggestion[data-kind='allow'][data-tool='issue_refund']", timeout=10_000
            )
            text = await card.text_content() or ""
            assert "allow issue_refund" in text and "approved unchanged" in text
            toml = await page.text_content(".suggestion pre.toml") or ""
            assert "[[rules]]" in toml and 'gate = "allow"' in toml
            assert "correct-horse-battery" not in toml  # masked on the page
            assert await page.locator(".shadow-table tr[data-shadow='allow']").count() == 1
            assert "would have passed" in (await page.text_content(".calibrate-shadow") or "")
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SCREENSHOTS / "calibrate.png"), full_page=True)
            await page.goto(f"{base}/#/call/{rejected}")
            verdict = await page.wait_for_selector(".shadow-verdict[data-shadow='allow']", timeout=10_000)
            assert "would have passed" in (await verdict.text_content() or "")
            await page.locator(".card").screenshot(path=str(SCREENSHOTS / "card-shadow.png"))
            assert await page.locator("img").count() == await page.locator("img[src='/static/icon.svg']").count()
        finally:
            await browser.close()
    assert problems == []
