"""The approval service in a real browser (Debian chromium driven by Playwright), served for real by ``serve``
in team mode: two reviewers in two browser contexts, a critical call that needs both, self-review refused, and a
logout that ends the session in every tab."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import validate_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import Approved, NewCall, State
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.web import build_app, serve
from mcp_gatekeeper.webauth import load_or_create_token
from mcp_gatekeeper.webhttp import TeamSite
from team.conftest import PASSWORDS, TEAM_CONFIG, Held, Notified, add_accounts, refund

CHROMIUM = Path("/usr/bin/chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]  # fmt: skip

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package (pip install playwright)"),
]


@dataclass
class Service:
    store: Store
    gate: Gate
    base: str
    browser: Any
    tg: anyio.abc.TaskGroup
    notifier: Notified

    async def hold(self, new: NewCall) -> tuple[str, Held]:
        held = Held()
        seen, event = len(self.notifier.calls), self.notifier.event

        async def run() -> None:
            held.outcomes.append(await self.gate.hold(new, timeout=600))
            held.done.set()

        self.tg.start_soon(run)
        with anyio.fail_after(5):
            await event.wait()
        return self.notifier.calls[seen].id, held

    async def reviewer(self, name: str) -> Any:
        """A browser context of its own, logged in through the form."""
        ctx = await self.browser.new_context(viewport={"width": 1280, "height": 900})
        page = await ctx.new_page()
        await page.goto(f"{self.base}/")
        await page.wait_for_url("**/login")  # not signed in: the service's form
        await page.fill("#username", name)
        await page.fill("#password", PASSWORDS[name])
        await page.click("#login-btn")
        await page.wait_for_selector(f"#whoami:has-text('{name}')")
        assert "key=" not in page.url  # the page key left the address bar
        return page


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    from playwright.async_api import async_playwright

    clock = SystemClock()
    policy = Policy(validate_config(TEAM_CONFIG))
    home = tmp_path / "home"
    notifier = Notified()
    async with Store.open(home / "gatekeeper.db", clock) as store:
        await store.register_instance("browser-test")
        await add_accounts(store)
        gate = Gate(store, policy, clock, notifier=notifier)
        app = build_app(store=store, gate=gate, policy=policy, token=load_or_create_token(home), port=0, clock=clock,
                        team=TeamSite())  # fmt: skip
        async with gate.running(), anyio.create_task_group() as tg:
            port = await tg.start(lambda task_status: serve(
                app, host="127.0.0.1", port=0, allow_remote=False, task_status=task_status
            ))  # fmt: skip
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
                try:
                    yield Service(store, gate, f"http://127.0.0.1:{port}", browser, tg, notifier)
                finally:
                    await browser.close()
            tg.cancel_scope.cancel()


async def _approve_critical(page: Any) -> None:
    await page.click(".actions .btn.approve")
    await page.fill(".confirm-approve input.type-confirm", "issue_refund")
    await page.click(".confirm-approve .confirm-yes")


async def test_two_reviewers_a_quorum_no_self_review_and_logout_everywhere(service: Service) -> None:
    alice, bob = await service.reviewer("alice"), await service.reviewer("bob")
    call_id, held = await service.hold(refund(5000))
    other_id, _ = await service.hold(refund(700, principal="agent:night-bot"))

    # the queue says which agent on which machine made each call, and narrows to one of them
    host = socket.gethostname()
    await alice.goto(f"{service.base}/#/queue")
    await alice.wait_for_selector(f".qitem[data-id='{call_id}'] .who:has-text('agent:ops-bot on {host}')")
    await alice.select_option("select.qwho", "agent:agent:night-bot")
    await alice.wait_for_selector(f".qitem[data-id='{call_id}']", state="detached")
    assert await alice.locator(f".qitem[data-id='{other_id}']").count() == 1
    await alice.select_option("select.qwho", "")
    await alice.select_option("select.qgroup", "agent")
    ids = await alice.locator(".qitem").evaluate_all("els => els.map((e) => e.dataset.id)")
    assert ids == [other_id, call_id]  # agent:night-bot before agent:ops-bot
    assert await alice.locator(".actions .btn.similar").count() == 0

    await alice.goto(f"{service.base}/#/call/{call_id}")
    await alice.wait_for_selector("#team-approvals:has-text('Needs 2 approvals')")
    await _approve_critical(alice)
    await alice.wait_for_selector("#toast:has-text('1 of 2')")
    await alice.wait_for_selector("#team-approvals:has-text('1 of 2 approvals, by alice')")
    assert (await service.store.get(call_id)).state == State.PENDING

    await bob.goto(f"{service.base}/#/call/{call_id}")
    await bob.wait_for_selector("#team-approvals:has-text('1 of 2 approvals, by alice')")
    await _approve_critical(bob)
    assert isinstance(await held.outcome(), Approved)
    done = await service.store.get(call_id)
    assert done.decided_by == "bob"

    # alice's own agent made this one: the card says she cannot decide it, and the service refuses her
    own_id, _ = await service.hold(refund(500, principal="agent:alice-bot"))
    await alice.goto(f"{service.base}/#/call/{own_id}")
    await alice.wait_for_selector("#team-approvals:has-text('You cannot decide this call')")
    await alice.click(".actions .btn.reject")
    await alice.wait_for_selector("#toast:has-text('alice is linked to agent:alice-bot')")
    assert (await service.store.get(own_id)).state == State.PENDING

    # logout in one tab ends the session in the other tab too
    other_tab = await alice.context.new_page()
    await other_tab.goto(f"{service.base}/#/queue")
    await other_tab.wait_for_selector("#whoami:has-text('alice')")
    key = await other_tab.evaluate("localStorage.getItem('gk-page-key')")
    await alice.goto(f"{service.base}/#/sessions")
    await alice.click("#logout-btn")
    await alice.wait_for_url("**/login*")
    await other_tab.wait_for_url("**/login*")  # its live stream heard the session end
    status = await other_tab.evaluate(
        """async ([id, key]) => (await fetch(`/api/calls/${id}/reject`, {method: "POST", credentials: "same-origin",
             headers: {"Content-Type": "application/json", "X-Gatekeeper-Key": key}, body: "{}"})).status""",
        [own_id, key],
    )
    assert status == 401
    assert (await service.store.get(own_id)).state == State.PENDING
