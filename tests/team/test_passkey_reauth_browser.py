"""Registering a passkey on the approval service in real Chromium (a CDP virtual authenticator), served for real:
the registration dialog asks for the password again (a wrong one is refused and counted), and once the account has a
passkey, one of its passkeys proves the account instead. The server side: tests/team/test_passkey_reauth.py."""

from __future__ import annotations

import copy
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import validate_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.web import build_app, serve
from mcp_gatekeeper.webauth import load_or_create_token
from mcp_gatekeeper.webhttp import TeamSite
from team.conftest import PASSWORDS, TEAM_CONFIG, Notified, add_accounts
from team.test_team_browser import CHROME_ARGS, CHROMIUM, HAVE_PLAYWRIGHT

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package (pip install playwright)"),
]


@dataclass
class Site:
    store: Store
    base: str
    browser: Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    from playwright.async_api import async_playwright

    port = _free_port()
    base = f"http://localhost:{port}"  # WebAuthn's secure context over plain HTTP: localhost only
    config = copy.deepcopy(TEAM_CONFIG)
    config["ui"] = {**config.get("ui", {}), "public_url": base}
    clock = SystemClock()
    policy = Policy(validate_config(config))
    home = tmp_path / "home"
    async with Store.open(home / "gatekeeper.db", clock) as store:
        await store.register_instance("browser-test")
        await add_accounts(store)
        gate = Gate(store, policy, clock, notifier=Notified())
        app = build_app(store=store, gate=gate, policy=policy, token=load_or_create_token(home), port=port,
                        clock=clock, team=TeamSite())  # fmt: skip
        async with gate.running(), anyio.create_task_group() as tg:
            await tg.start(lambda task_status: serve(
                app, host="127.0.0.1", port=port, allow_remote=False, task_status=task_status
            ))  # fmt: skip
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
                try:
                    yield Site(store, base, browser)
                finally:
                    await browser.close()
            tg.cancel_scope.cancel()


async def _authenticator(cdp: Any) -> str:
    got = await cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {"options": {"protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
                     "isUserVerified": True, "automaticPresenceSimulation": True}},
    )  # fmt: skip
    found: str = got["authenticatorId"]
    return found


async def test_the_registration_dialog_asks_for_the_password_or_an_existing_passkey(site: Site) -> None:
    with anyio.fail_after(120):
        ctx = await site.browser.new_context()
        page = await ctx.new_page()
        cdp = await ctx.new_cdp_session(page)
        await cdp.send("WebAuthn.enable", {"enableUI": False})
        await _authenticator(cdp)
        await page.goto(f"{site.base}/")
        await page.wait_for_url("**/login")
        await page.fill("#username", "alice")
        await page.fill("#password", PASSWORDS["alice"])
        await page.click("#login-btn")
        await page.wait_for_selector("#whoami:has-text('alice')")

        # a wrong password: refused in the dialog, nothing registered, and counted as a failed login
        await page.click("#passkey-register")
        await page.wait_for_selector("dialog#passkey-proof[open]")
        assert await page.locator("#passkey-proof-key").count() == 0  # no passkey yet to prove herself with
        await page.fill("#passkey-password", "not-alices-password")
        await page.click("#passkey-proof-ok")
        await page.wait_for_selector("#passkey-proof-error:has-text('wrong password')")
        assert await site.store.passkeys.of_reviewer("alice") == []
        failed, _ = await site.store.reviewers.failed_logins(account="alice", address="127.0.0.1", since=0)
        assert failed == 1

        # her password: registered
        await page.fill("#passkey-password", PASSWORDS["alice"])
        await page.click("#passkey-proof-ok")
        await page.wait_for_selector("#toast:has-text('Passkey registered')")
        await page.wait_for_selector("dialog#passkey-proof", state="detached")
        assert len(await site.store.passkeys.of_reviewer("alice")) == 1

        # the account proved by its passkey instead of the password: the page's proof is accepted (the passkey's
        # sign count moves on, nothing is refused); this one authenticator then declines to make a second passkey
        # of the same account (excludeCredentials), so the dialog says so and nothing more is registered
        (before,) = await site.store.passkeys.of_reviewer("alice")
        await page.click("#passkey-register")
        await page.wait_for_selector("dialog#passkey-proof[open]")
        await page.click("#passkey-proof-key")
        await page.wait_for_selector("#passkey-proof-error:not([hidden])")
        (after,) = await site.store.passkeys.of_reviewer("alice")
        assert after.sign_count > before.sign_count
        events = [e.event for e in await site.store.audit_events()]
        assert events.count("passkey_registration_refused") == 1  # the wrong password's, only
