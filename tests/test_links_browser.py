"""The phone path in real Chromium at a phone's size: a notification's short link opens the login prompt (the
link itself opens nothing), and after a login the page shows that call's card."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import anyio
import pytest

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import NewCall
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.serve import short_links
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.web import build_app, mint_login_url, serve
from mcp_gatekeeper.webauth import load_or_create_token

CHROMIUM = Path("/usr/bin/chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
_REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = _REPO / os.environ.get("GK_SCREENSHOTS_DIR", "test-artifacts/screenshots")

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package (pip install playwright)"),
]


async def test_a_short_link_asks_for_a_login_then_opens_that_card(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    clock = SystemClock()
    home = tmp_path / "home"
    token = load_or_create_token(home)
    config = parse_config("[ui]\nautostart = false\n")
    links = short_links(config, home)
    async with Store.open(home / "gk.db", clock) as store:
        await store.register_instance("t")
        gate = Gate(store, Policy(config), clock, sweep_interval=None)
        for n in range(3):  # the call of the link is not the first in the queue
            await gate.start_hold(
                NewCall(upstream="ops", tool="deploy", arguments={"service": f"api-{n}"}, gate="hard", risk="high"),
                timeout=600,
            )
        wanted = await gate.start_hold(
            NewCall(
                upstream="orderdesk", tool="issue_refund", arguments={"order_id": "A-1042", "amount": 750},
                gate="hard", risk="high", summary="Issue $750 refund for order #A-1042",
            ),
            timeout=600,
        )  # fmt: skip
        app = build_app(store=store, gate=gate, policy=gate.policy, token=token, port=0, clock=clock, links=links)
        with anyio.fail_after(60):
            async with gate.running(), anyio.create_task_group() as tg, async_playwright() as pw:
                port = await tg.start(
                    lambda task_status: serve(
                        app, host="127.0.0.1", port=0, allow_remote=False, task_status=task_status
                    )
                )
                base = f"http://127.0.0.1:{port}"
                links.base_url = base
                browser = await pw.chromium.launch(
                    executable_path=str(CHROMIUM), args=["--headless=new", "--no-sandbox"]
                )
                try:
                    ctx = await browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
                    phone = await ctx.new_page()
                    await phone.goto(links.url(wanted.id))
                    await phone.wait_for_selector("text=Log in to review held calls")
                    assert phone.url == f"{base}/#/call/{wanted.id}"
                    await phone.goto(await mint_login_url(store, base))
                    await phone.wait_for_selector(".card-title:has-text('Issue $750 refund')")
                    assert phone.url == f"{base}/#/call/{wanted.id}"
                    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                    await phone.screenshot(path=str(SCREENSHOTS / "phone-link.png"))
                    # a forged link shows a refusal, not the page
                    forged = await phone.goto(f"{base}/c/{wanted.id[:12]}.AAAAAAAAAAAAAAAA")
                    assert forged is not None and forged.status == 404
                finally:
                    await browser.close()
                tg.cancel_scope.cancel()
