"""The page in a real browser (Debian chromium driven by Playwright), served for real by ``serve``.

Skipped with a reason when /usr/bin/chromium or the playwright package is missing. Never runs
``playwright install``: it drives the system chromium.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest

from mcp_gatekeeper.clock import FakeClock, SystemClock
from mcp_gatekeeper.config import validate_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import Approved, NewCall, Refused, State
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.proxy import tooldef_hash
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.web import build_app, mint_login_url, serve
from mcp_gatekeeper.webauth import load_or_create_token

from .conftest import (
    CONFIG,
    FILE_ARGS,
    REFUND_SCHEMA,
    TOOL_V1,
    TOOL_V2,
    Harness,
    RecordingNotifier,
    call_for,
    new_call,
    quarantine_refunds,
    quarantined_call,
    ran_for_review,
    refund_args,
    text_result,
)

CHROMIUM = Path("/usr/bin/chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
# a test run writes its pictures to test-artifacts/ (ignored by git, kept by CI); to refresh the committed
# ones in docs/screenshots, run with GK_SCREENSHOTS_DIR=docs/screenshots
_REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = _REPO / os.environ.get("GK_SCREENSHOTS_DIR", "test-artifacts/screenshots")
CHROME_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP evil.test 127.0.0.1",
]

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package (pip install playwright)"),
]


@dataclass
class Live:
    h: Harness
    port: int
    base: str
    browser: Any
    dialogs: list[str]

    async def page(self, **context: Any) -> Any:
        ctx = await self.browser.new_context(**{"viewport": {"width": 1280, "height": 860}, **context})
        page = await ctx.new_page()

        async def on_dialog(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        return page

    async def logged_in_page(self, **context: Any) -> Any:
        page = await self.page(**context)
        await page.goto(await mint_login_url(self.h.store, self.base))
        await page.wait_for_selector("#whoami:has-text('web:')", state="attached")
        assert self.h.token not in page.url
        assert "token=" not in page.url
        return page


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    from playwright.async_api import async_playwright

    clock = SystemClock()
    policy = Policy(validate_config(CONFIG))
    home = tmp_path / "home"
    token = load_or_create_token(home)
    await _seed_history(home / "gatekeeper.db", policy)
    notifier = RecordingNotifier()
    async with Store.open(home / "gatekeeper.db", clock) as store:
        await store.register_instance("browser-test")
        gate = Gate(store, policy, clock, notifier=notifier)
        app = build_app(store=store, gate=gate, policy=policy, token=token, port=0, clock=clock)
        async with gate.running(), anyio.create_task_group() as tg:
            port = await tg.start(lambda task_status: serve(
                app, host="127.0.0.1", port=0, allow_remote=False, task_status=task_status
            ))  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            async with httpx2.AsyncClient(base_url=base) as client, async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
                harness = Harness(home, store, gate, policy, clock, app, token, notifier, tg, client)
                try:
                    yield Live(harness, port, base, browser, [])
                finally:
                    await browser.close()
            tg.cancel_scope.cancel()


async def _seed_history(db: Path, policy: Policy) -> None:
    """Two weeks of decided calls (written with a fake clock), so History and Stats have something to show."""
    rng = random.Random(7)
    clock = FakeClock(start=time.time() - 14 * 86400)
    async with Store.open(db, clock) as store:
        await store.register_instance("seed")
        for _ in range(70):
            clock.advance(rng.uniform(2000, 30000))
            pick = rng.random()
            if pick < 0.55:
                new = new_call(
                    policy,
                    arguments=refund_args(
                        amount=rng.choice([40, 120, 310, 750]), order_id=str(rng.randint(8000, 9999))
                    ),
                )
            elif pick < 0.8:
                new = new_call(policy, "delete_record", {"id": f"r-{rng.randint(1, 400)}"})
            else:
                new = NewCall(upstream="mail", tool="send_email", arguments={"to": "ops@example.com", "subject": "Weekly report"},
                              gate="hard", risk="medium", summary="Email ops@example.com: Weekly report")  # fmt: skip
            rec = await store.insert_call(new, state=State.PENDING, deadline_at=clock.now() + 600)
            wait = rng.choice([1.2, 1.6, 4, 9, 22, 48, 95, 240])
            if wait > 60:  # still waiting after a minute: the on-call channel is told too
                clock.advance(60)
                await store.sweeps.claim_escalation(
                    rec.id, level=1, deadline_at=None, escalate_at=None, channels=["oncall"]
                )
                wait -= 60
            clock.advance(wait)
            fate = rng.random()
            who = rng.choice(["web:3fa9c2d1", "web:77b0e4aa", "api:ops"])
            if fate < 0.08 or (rec.tool == "send_email" and fate < 0.45):  # nobody watches the mail rule: ⚑
                clock.advance(600)
                await store.transition(
                    rec.id, [State.PENDING], State.EXPIRED, channel="timeout", reason="no decision in time"
                )
            elif fate < 0.25:
                await store.decide(rec.id, approve=False, decided_by=who, channel="web", reason="not this one",
                                   modified_arguments=None, expected_digest=rec.args_digest)  # fmt: skip
            else:
                edit = None
                if fate > 0.85 and rec.tool == "issue_refund":
                    edit = {**rec.arguments, "amount": 25}
                await store.decide(rec.id, approve=True, decided_by=who, channel="web", reason=None,
                                   modified_arguments=edit, expected_digest=rec.args_digest)  # fmt: skip
                await store.transition(rec.id, [State.APPROVED], State.FORWARDING)
                await store.transition(rec.id, [State.FORWARDING], State.FORWARDED, result={"content": [{"type": "text", "text": "ok"}]}, finished_at=clock.now())  # fmt: skip


async def _wait_for_row(page: Any, call_id: str) -> None:
    await page.wait_for_selector(f'.qitem[data-id="{call_id}"]', timeout=5000)


async def test_live_queue_modify_approve_and_reject(live: Live) -> None:
    h = live.h
    page = await live.logged_in_page()
    await page.wait_for_selector(".qlist .empty")
    # a call held after the page loaded appears live (SSE), without a reload
    rec, holder = await h.hold(new_call(h.policy))
    await _wait_for_row(page, rec.id)
    assert await page.title() == "(1) mcp-gatekeeper"
    await page.wait_for_selector(".card-title")
    assert "Issue $750 refund to john@example.com for order #8821" in await page.text_content(".card-title")
    # modify an argument in the editor, see the diff, approve with changes
    await page.click(".actions .btn.modify")
    await page.fill("#f-amount", "500")
    await page.wait_for_selector(".diff .now")
    assert "500" in await page.text_content(".diff")
    await page.click(".actions .btn.approve")
    # the approval confirms the diff first (and a refund is high risk and not reversible anyway)
    await page.wait_for_selector(".confirm-approve .diff .now")
    assert not holder.done.is_set()
    await page.click(".confirm-approve .confirm-yes")
    with anyio.fail_after(5):
        outcome = await holder.outcome()
    assert isinstance(outcome, Approved)
    assert outcome.modified is True
    assert outcome.arguments == refund_args(amount=500)
    row = await h.store.get(rec.id)
    assert row.modified_arguments == refund_args(amount=500)
    assert row.decided_by is not None and row.decided_by.startswith("web:")
    # reject with a reason the agent reads
    rec2, holder2 = await h.hold(new_call(h.policy, arguments=refund_args(order_id="9001")))
    await _wait_for_row(page, rec2.id)
    await page.click(f'.qitem[data-id="{rec2.id}"]')
    await page.wait_for_selector(f'.card [title="{rec2.id}"]')
    await page.fill(".actions .reason", "Refunds over $500 need a manager's sign-off")
    await page.click(".actions .btn.reject")
    outcome2 = await holder2.outcome()
    assert isinstance(outcome2, Refused)
    assert outcome2.state == State.REJECTED
    assert "Refunds over $500 need a manager's sign-off" in outcome2.reason
    assert live.dialogs == []


async def test_the_reviewer_sees_whose_call_it_is(live: Live) -> None:
    h = live.h
    page = await live.logged_in_page()
    await page.wait_for_selector(".qlist .empty")
    client = {"name": "py-agent", "version": "1", "principal": "agent:ci-bot<b>"}
    rec, _ = await h.hold(new_call(h.policy, client=client))
    await _wait_for_row(page, rec.id)
    assert await page.text_content(f'.qitem[data-id="{rec.id}"] .who') == "agent:ci-bot<b>"  # as text, never markup
    await page.wait_for_selector(".card .principal code")
    assert await page.text_content(".card .principal code") == "agent:ci-bot<b>"
    assert await page.query_selector(".card .principal b") is None


async def test_keyboard_shortcuts_approve(live: Live) -> None:
    """`a` approves a medium-risk call at once; a critical one only after its name is typed."""
    h = live.h
    page = await live.logged_in_page()
    await page.wait_for_selector(".qlist .empty")
    rec, holder = await h.hold(call_for(h.policy, "files", "edit_file", {"path": "/w/README.md", "dryRun": True}))
    await _wait_for_row(page, rec.id)
    await page.wait_for_selector(f'.card [title="{rec.id}"]')
    await page.keyboard.press("a")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments == {"path": "/w/README.md", "dryRun": True}
    rec, holder = await h.hold(new_call(h.policy, "delete_record", {"id": "r-9"}))
    await page.click(f'.qitem[data-id="{rec.id}"]')
    await page.wait_for_selector(f'.card [title="{rec.id}"]')
    await page.keyboard.press("a")
    await page.wait_for_selector(".confirm-approve input.type-confirm:focus")
    await page.keyboard.press("a")  # a second `a` types into the box; it never approves
    await page.keyboard.press("Enter")
    assert (await h.store.get(rec.id)).state == State.PENDING
    await page.fill(".confirm-approve input.type-confirm", "delete_record")
    await page.keyboard.press("Enter")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments == {"id": "r-9"}


def _attack_page(target: str, digest: str) -> bytes:
    body = f"""<!doctype html><html><body>
<form id="f" method="POST" action="{target}" enctype="text/plain">
<input name='{{"args_digest":"{digest}","x":"' value='"}}'>
</form>
<script>
fetch("{target}", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{args_digest: "{digest}"}})}})
  .finally(() => document.getElementById("f").submit());
</script></body></html>"""
    return body.encode()


async def _serve_pages(listener: anyio.abc.SocketListener, pages: dict[str, bytes]) -> None:
    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive()
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ", 2)[1].decode()
            body = pages.get(path, b"not found")
            head = f"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
            await stream.send(head.encode() + body)

    await listener.serve(handle)


async def test_cross_origin_same_site_and_rebound_attacks_fail(live: Live) -> None:
    h = live.h
    page = await live.logged_in_page()  # the victim is logged in: the cookie exists
    rec, holder = await h.hold(new_call(h.policy))
    await _wait_for_row(page, rec.id)
    target = f"{live.base}/api/calls/{rec.id}/approve"
    attack = _attack_page(target, rec.args_digest)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    other = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio's typed attribute, not Django
    seen: list[tuple[str, int]] = []
    page.context.on("response", lambda r: seen.append((r.url, r.status)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(_serve_pages, listener, {"/attack": attack})
        try:
            # another origin: http://evil.test:OTHER (cross-site)
            await page.goto(f"http://evil.test:{other}/attack")
            await page.wait_for_url(target, timeout=5000)
            assert "cross_origin" in (await page.content()) or "unauthorized" in (await page.content())
            # another local port: http://127.0.0.1:OTHER (same-site: the Strict cookie is sent, Sec-Fetch-Site says same-site)
            await page.goto(f"http://127.0.0.1:{other}/attack")
            await page.wait_for_url(target, timeout=5000)
            assert "cross_origin" in await page.content()
            # DNS rebinding: a page at http://evil.test:UIPORT fetching the API "same-origin"
            await page.goto(f"http://evil.test:{live.port}/")
            status = await page.evaluate(
                """async ([url, digest]) => (await fetch(url, {method: "POST", credentials: "include",
                       headers: {"Content-Type": "application/json"}, body: JSON.stringify({args_digest: digest})})).status""",
                [f"http://evil.test:{live.port}/api/calls/{rec.id}/approve", rec.args_digest],
            )
            assert status == 421
        finally:
            tg.cancel_scope.cancel()
    posts = [s for u, s in seen if u == target]
    assert posts and all(s in (401, 403) for s in posts)
    assert (await h.store.get(rec.id)).state == State.PENDING
    assert not holder.done.is_set()


async def test_hostile_arguments_render_inert_and_visible(live: Live) -> None:
    h = live.h
    page = await live.logged_in_page()
    await page.wait_for_selector(".qlist .empty")
    hostile = refund_args(
        order_id="<script>window.__xss=1;alert(1)</script>",
        email="<img src=x onerror=alert(2)>john@\u202eexample.com",
    )
    hostile["note"] = "\x1b[2J\x1b[31mall good\x1b[0m\u200b\U000e0041"
    rec, _ = await h.hold(new_call(h.policy, arguments=hostile, agent_reason="</textarea><script>alert(3)</script>"))
    await _wait_for_row(page, rec.id)
    await page.wait_for_selector(".card pre.json")
    text = await page.text_content(".card")
    assert "<script>window.__xss=1;alert(1)</script>" in text
    assert "<img src=x onerror=alert(2)>" in text
    badges = await page.eval_on_selector_all(".card .uc", "els => els.map(e => e.textContent)")
    assert "⟨U+202E⟩" in badges
    assert "⟨ESC U+001B⟩" in badges
    assert "⟨U+200B⟩" in badges
    assert "⟨U+E0041⟩" in badges
    assert "invisible, bidirectional or control character" in await page.text_content(".warnings")
    assert await page.evaluate("window.__xss") is None
    assert await page.locator(".card img").count() == 0
    assert live.dialogs == []


async def test_screenshots(live: Live) -> None:
    """Pictures of the queue, a card, history, stats, rules, a phone and dark mode (docs/screenshots)."""
    h = live.h
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    big = refund_args(email="john@example.com")
    await h.hold(new_call(h.policy, arguments=big))
    await h.hold(new_call(h.policy, "delete_record", {"id": "r-311"}, summary="Delete order record r-311 for good",
                          effects={"approve": "The record is removed from the order desk.", "reject": "The record stays.",
                                   "reversible": False}, agent_reason="Customer asked for their data to be erased (GDPR).",
                          agent_confidence=0.64))  # fmt: skip
    await h.hold(
        NewCall(
            upstream="mail",
            tool="send_email",
            arguments={
                "to": "customer@example.com",
                "subject": "Your refund",
                "body": "Hi John,\nyour refund of $750 is on its way.\n",
                "headers": {"Authorization": "Bearer ghp_" + "Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8"},
            },
            gate="hard",
            risk="medium",
            rule="outbound-mail",
            summary="Email customer@example.com: Your refund",
            effects={"approve": "The email is sent now.", "reject": "No email is sent.", "reversible": False},
            agent_reason="Let the customer know the refund is processed.",
            agent_confidence=0.9,
            client={"name": "Cursor", "version": "1.4"},
            input_schema={"type": "object"},
        )
    )
    page = await live.logged_in_page()
    await page.wait_for_selector(".qitem >> nth=2")
    await page.wait_for_selector(".card-title")
    await page.screenshot(path=str(SCREENSHOTS / "queue.png"))
    tall = await live.logged_in_page(viewport={"width": 1100, "height": 1600})
    await tall.wait_for_selector(".card .btn.modify")
    await tall.click(".actions .btn.modify")
    await tall.fill("#f-amount", "500")
    await tall.fill("#f-email", "john.doe@example.com")
    await tall.wait_for_selector(".diff .now")
    await tall.locator(".card").screenshot(path=str(SCREENSHOTS / "card.png"))
    await tall.click(".qitem >> nth=2")
    await tall.wait_for_selector(".card .masked")
    await tall.locator(".card").screenshot(path=str(SCREENSHOTS / "card-secrets.png"))
    await page.goto(f"{live.base}/#/stats")
    await page.wait_for_selector(".chart svg")
    await page.screenshot(path=str(SCREENSHOTS / "stats.png"), full_page=True)
    await page.goto(f"{live.base}/#/history")
    await page.wait_for_selector("table.grid tbody tr >> nth=5")
    await page.screenshot(path=str(SCREENSHOTS / "history.png"))
    await page.click("table.grid tbody tr:has(.chip.modified) >> nth=0")
    await page.wait_for_selector(".timeline li")
    await page.screenshot(path=str(SCREENSHOTS / "record.png"), full_page=True)
    await page.goto(f"{live.base}/#/rules")
    await page.wait_for_selector(".rule")
    await page.fill(".testbox input >> nth=1", "issue_refund")
    await page.fill(".testbox textarea", '{"amount": 900, "email": "a@b.c", "order_id": "1"}')
    await page.click(".testbox .btn")
    await page.wait_for_selector(".verdict")
    await page.screenshot(path=str(SCREENSHOTS / "rules.png"))

    mobile = await live.logged_in_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    await mobile.wait_for_selector(".card-title")
    await mobile.screenshot(path=str(SCREENSHOTS / "queue-mobile.png"), full_page=True)

    dark = await live.logged_in_page(color_scheme="dark")
    await dark.wait_for_selector(".card-title")
    await dark.screenshot(path=str(SCREENSHOTS / "queue-dark.png"))
    await dark.goto(f"{live.base}/#/stats")
    await dark.wait_for_selector(".chart svg")
    await dark.screenshot(path=str(SCREENSHOTS / "stats-dark.png"), full_page=True)
    for name in ("queue", "card", "card-secrets", "stats", "queue-mobile", "queue-dark"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000
    assert live.dialogs == []


async def test_lease_from_the_card_review_confirm_and_fail_then_revoke(live: Live) -> None:
    """Through the page: approve with "allow similar", confirm one review, fail another, revoke the lease."""
    h = live.h
    write = await ran_for_review(h.store, h.clock, call_for(h.policy, "files", "write_file", FILE_ARGS), window=600)
    comment = await ran_for_review(
        h.store, h.clock, call_for(h.policy, "tickets", "post_comment", {"ticket": "T-17", "body": "Fixed in 2.1"})
    )
    page = await live.logged_in_page()
    rec, holder = await h.hold(new_call(h.policy))
    await _wait_for_row(page, rec.id)
    await page.wait_for_selector(".banner.info:has-text('2 calls ran and need review')")

    # approve & allow similar: the envelope is built from the arguments and can be edited
    await page.click(".actions .btn.similar")
    await page.wait_for_selector(".lease-editor")
    envelope = json.loads(await page.input_value(".lease-editor .env-json"))
    assert envelope == {
        "order_id": {"eq": "8821"},
        "amount": {"lte": 750},
        "currency": {"eq": "USD"},
        "email": {"eq": "john@example.com"},
    }
    await page.select_option(".lease-editor select[aria-label='Rule for email']", "any")
    await page.select_option(".lease-editor select[aria-label='For how long']", "900")
    await page.fill(".lease-editor input.calls", "3")
    await page.click(".actions .btn.similar")
    await page.click(".confirm-approve .confirm-yes")  # a refund is high risk: one more deliberate click
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments == refund_args()
    [lease] = await h.store.leases(active_at=h.clock.now())
    assert lease.envelope == {"order_id": {"eq": "8821"}, "amount": {"lte": 750}, "currency": {"eq": "USD"}}
    assert lease.calls_left == 3 and lease.expires_at is not None
    assert 890 < lease.expires_at - lease.created_at <= 900

    # the review queue: soonest window first; confirm the file write, fail the comment with a note
    await page.click("#nav a[data-view='review']")
    await page.wait_for_selector(f'.qitem[data-id="{write.id}"].sel')
    await page.wait_for_selector(f'.card [title="{write.id}"]')
    assert "write_file runs on files to undo it" in " ".join(
        (await page.text_content(".card .effect.if-reject")).split()
    )
    await page.click(".actions .btn.confirm")
    await page.wait_for_selector(".decided-banner .chip.st-confirmed")
    assert (await h.store.get(write.id)).state == State.CONFIRMED
    await page.click(f'.qitem[data-id="{comment.id}"]')
    await page.wait_for_selector(f'.card [title="{comment.id}"]')
    assert "Nothing can undo it" in await page.text_content(".card")
    await page.fill(".actions .reason", "posted on the wrong ticket")
    await page.click(".actions .btn.fail")
    await page.wait_for_selector(".decided-banner .chip.st-review_failed")
    failed = await h.store.get(comment.id)
    assert failed.state == State.REVIEW_FAILED and failed.reason == "posted on the wrong ticket"
    assert failed.decided_by is not None and failed.decided_by.startswith("web:")
    await page.wait_for_selector(".qlist .empty")  # nothing left to review

    # revoke the lease from the Leases view
    await page.click("#nav a[data-view='leases']")
    await page.wait_for_selector(f'tr[data-lease="{lease.id}"] .btn.revoke')
    assert "amount ≤ 750" in " ".join((await page.text_content(f'tr[data-lease="{lease.id}"]')).split())
    await page.click(f'tr[data-lease="{lease.id}"] .btn.revoke')
    await page.wait_for_selector(".empty:has-text('No active leases')")
    revoked = await h.store.lease(lease.id)
    assert revoked.revoked_at is not None and revoked.revoked_by is not None and revoked.revoked_by.startswith("web:")
    await page.check("#show-past")
    await page.wait_for_selector(f'tr[data-lease="{lease.id}"] .chip.lease-revoked')
    assert live.dialogs == []


async def test_quarantine_banner_card_diff_and_repin(live: Live) -> None:
    h = live.h
    await quarantine_refunds(h.store)
    page = await live.logged_in_page()
    rec, _ = await h.hold(quarantined_call(h.policy))
    await _wait_for_row(page, rec.id)
    await page.wait_for_selector(".banner.bad:has-text('1 tool quarantined')")
    await page.wait_for_selector(".card .quarantine-diff .dl.add")
    added = await page.text_content(".card .quarantine-diff .dl.add")
    assert "audit@evil.test" in added
    assert await page.locator(".actions .btn.similar").count() == 0  # no lease for a quarantined tool
    await page.click(".banner.bad")
    await page.wait_for_selector(".panel.quarantine .unidiff .dl.add")
    assert "1 call is held because of it" in await page.text_content(".panel.quarantine")
    await page.click(".panel.quarantine .btn.repin")
    await page.wait_for_selector(".panel.quarantine .btn.repin.armed")
    assert (await h.store.pins(quarantined_only=True))[0].quarantined  # one click is not enough
    await page.click(".panel.quarantine .btn.repin")
    await page.wait_for_selector(".panel.empty:has-text('No tool is quarantined')")
    assert await h.store.pins(quarantined_only=True) == []
    assert (await h.store.get(rec.id)).state == State.PENDING  # re-pinning decides nothing
    assert live.dialogs == []


async def _seed_gates(db: Path, policy: Policy) -> dict[str, str]:
    """Reviews (open, closed, failed to undo), leases (active and past) and pins, written minutes ago."""
    clock = FakeClock(start=time.time() - 3 * 3600)
    ids: dict[str, str] = {}
    async with Store.open(db, clock) as store:
        await store.register_instance("seed-gates")
        # leases, granted with approvals over the last hours
        grants: list[tuple[NewCall, dict[str, Any], float | None, int | None, int, str]] = [
            (new_call(policy, "delete_record", {"id": "r-204"}, risk="high"), {"id": {"glob": "r-2*"}}, 3600, None, 1, "web:77b0e4aa"),
            (call_for(policy, "mail", "send_email", {"to": "ops@example.com", "subject": "Nightly report"}),
             {"to": {"glob": "*@example.com"}, "subject": {"eq": "Nightly report"}}, None, 20, 6, "web:3fa9c2d1"),
            (call_for(policy, "files", "write_file", {"path": "./src/app/main.py"}, gate="hard"),
             {"path": {"glob": "./src/*"}}, 8 * 3600, 50, 12, "api:ops"),
            (new_call(policy, arguments=refund_args(amount=40, order_id="9114")),
             {"order_id": {"eq": "9114"}, "amount": {"lte": 40}, "currency": {"eq": "USD"}}, 4 * 3600, 3, 1, "web:3fa9c2d1"),
            (call_for(policy, "github", "create_issue", {"repo": "acme/api", "title": "Flaky test"}),
             {"repo": {"eq": "acme/api"}}, 1800, None, 2, "web:77b0e4aa"),
        ]  # fmt: skip
        for new, envelope, seconds, calls, used, who in grants:
            clock.advance(1500)
            rec = await store.insert_call(new, state=State.PENDING, deadline_at=clock.now() + 600)
            clock.advance(14)
            await store.decide(rec.id, approve=True, decided_by=who, channel="web", reason=None,
                               modified_arguments=None, expected_digest=rec.args_digest)  # fmt: skip
            await store.transition(rec.id, [State.APPROVED], State.FORWARDING)
            await store.transition(rec.id, [State.FORWARDING], State.FORWARDED, result=text_result("ok"),
                                   finished_at=clock.now())  # fmt: skip
            lease = await store.create_lease(
                upstream=rec.upstream, tool=rec.tool, tooldef_hash=None, envelope=envelope, created_by=who,
                channel="web", source_call=rec.id, expires_at=clock.now() + seconds if seconds else None, calls=calls,
            )  # fmt: skip
            for _ in range(used):
                await store.use_lease(lease.id, call_id=None)
            ids[f"lease:{rec.tool}"] = lease.id
        await store.revoke_lease(ids["lease:delete_record"], by="web:3fa9c2d1", channel="web")
        # pins: four tools as first seen
        for upstream, tool, desc in [("orderdesk", "lookup_order", "Look up an order."), ("files", "read_file", "Read a file."),
                                     ("files", "write_file", "Write a file."), ("mail", "send_email", "Send an email.")]:  # fmt: skip
            definition = {"name": tool, "description": desc}
            await store.check_pins(upstream, {tool: (tooldef_hash(definition), definition)})
        # reviews: what ran under audit gates in the last hour
        clock.advance(time.time() - 3100 - clock.now())  # the reviews: the last 50 minutes
        bad = await ran_for_review(store, clock, call_for(
            policy, "files", "write_file", {"path": "./deploy/prod.env", "content": "DB_POOL=80\n"},
            agent_reason="Raise the database pool for the traffic spike.", agent_confidence=0.7))  # fmt: skip
        await store.transition(bad.id, [State.UNDER_REVIEW], State.REVIEW_FAILED, event="review_failed",
                               actor="web:77b0e4aa", channel="web", decided_at=clock.now(), decided_by="web:77b0e4aa",
                               reason="prod config is changed through a PR")  # fmt: skip
        await store.transition(bad.id, [State.REVIEW_FAILED], State.ROLLBACK_FAILED, event="rollback_failed",
                               channel="compensation",
                               error="compensation attempt 4 failed: no connected upstream named 'files'")  # fmt: skip
        clock.advance(900)
        closed = await ran_for_review(store, clock, call_for(
            policy, "tickets", "post_comment", {"ticket": "SUP-4312", "body": "Refund issued; closing."}), window=1200)  # fmt: skip
        await store.transition(closed.id, [State.UNDER_REVIEW], State.UNREVIEWED, event="unreviewed",
                               channel="timeout", reason="nobody reviewed it within its window")  # fmt: skip
        clock.advance(1500)
        ids["changelog"] = (await ran_for_review(store, clock, call_for(
            policy, "files", "write_file", {"path": "./docs/CHANGELOG.md", "content": "## 2.4.0\n- Faster exports\n"},
            agent_reason="Document the release.", agent_confidence=0.93),
            result={"content": [{"type": "text", "text": "Successfully wrote to ./docs/CHANGELOG.md"}]})).id  # fmt: skip
        clock.advance(240)
        ids["comment"] = (await ran_for_review(store, clock, call_for(
            policy, "tickets", "post_comment",
            {"ticket": "SUP-4388", "body": "We have refunded your order #8821. It can take 3-5 days to show."},
            agent_reason="Tell the customer the refund went through.", agent_confidence=0.88), window=2400)).id  # fmt: skip
        clock.advance(120)
        ids["config"] = (await ran_for_review(store, clock, call_for(
            policy, "files", "write_file",
            {"path": "./src/app/config.yaml", "content": "replicas: 3\nlog_level: info\nfeature_flags:\n  new_checkout: true\n"},
            agent_reason="The user asked to turn on the new checkout for everyone.", agent_confidence=0.64),
            window=900, result={"content": [{"type": "text", "text": "Successfully wrote to ./src/app/config.yaml (62 bytes)"}]},
        )).id  # fmt: skip
    return ids


async def test_screenshots_review_leases_quarantine(live: Live) -> None:
    """docs/screenshots/review.png, leases.png and quarantine.png."""
    h = live.h
    ids = await _seed_gates(h.home / "gatekeeper.db", h.policy)
    v1 = {**TOOL_V1, "inputSchema": {**REFUND_SCHEMA, "properties": dict(REFUND_SCHEMA["properties"])}}
    v2 = {**TOOL_V2, "inputSchema": {**REFUND_SCHEMA, "properties": {**REFUND_SCHEMA["properties"], "cc": {"type": "string", "description": "Also send the receipt here."}}}}  # fmt: skip
    await h.store.check_pins("orderdesk", {"issue_refund": (tooldef_hash(v1), v1)})
    await h.store.check_pins("orderdesk", {"issue_refund": (tooldef_hash(v2), v2)})
    await h.hold(quarantined_call(h.policy, refund_args(order_id="9120", amount=120)))

    page = await live.logged_in_page(viewport={"width": 1360, "height": 980})
    await page.goto(f"{live.base}/#/review/{ids['config']}")
    await page.wait_for_selector(f'.card [title="{ids["config"]}"]')
    await page.wait_for_selector(".card .result-text")
    await page.screenshot(path=str(SCREENSHOTS / "review.png"))

    await page.goto(f"{live.base}/#/leases")
    await page.check("#show-past")
    await page.wait_for_selector("tr.lease.st-revoked")
    await page.screenshot(path=str(SCREENSHOTS / "leases.png"))

    await page.goto(f"{live.base}/#/tools")
    await page.wait_for_selector(".panel.quarantine .unidiff")
    await page.screenshot(path=str(SCREENSHOTS / "quarantine.png"), full_page=True)
    for name in ("review", "leases", "quarantine"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000
    assert live.dialogs == []


PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\nMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu"


async def test_a_private_key_masks_only_itself(live: Live) -> None:
    """A PEM block in an email body masks from its BEGIN line to its END line: the text before and after it,
    the subject and the summary stay readable. An unterminated block masks to the end, and nothing before it."""
    h = live.h
    page = await live.logged_in_page()
    await page.wait_for_selector(".qlist .empty")
    pem = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----"
    args = {
        "to": "ops@example.com",
        "subject": "Key rotation for the staging box",
        "body": f"Hi ops,\nhere is the new key:\n{pem}\nPlease install it today.\nThanks, Ana",
        "attachment_note": f"Old key follows, cut off:\n-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}",
    }
    summary = "Email ops@example.com: Key rotation for the staging box"
    rec, _ = await h.hold(call_for(h.policy, "mail", "send_email", args, summary=summary))
    await _wait_for_row(page, rec.id)
    await page.wait_for_selector(".card .masked")
    card = await page.text_content(".card")
    assert "MIIEvQ" not in card and "Mz" + "EfYyji" not in card  # the key is hidden
    for visible in (
        "Hi ops,",
        "here is the new key:",
        "Please install it today.",
        "Thanks, Ana",
        "Old key follows, cut off:",
    ):
        assert visible in card, visible
    assert await page.text_content(".card-title") == summary
    assert "Key rotation for the staging box" in card  # the subject
    masked = await page.eval_on_selector_all(".card .masked", "els => els.map(e => e.textContent)")
    assert masked == ["•••••• private key (PEM)", "•••••• private key (PEM)"]
    for _ in masked:  # revealed on request: exactly the blocks
        await page.click(".card .masked >> nth=0")
    revealed = await page.text_content(".card pre.json")  # multi-line text shows its real line breaks
    assert "new key:\n-----BEGIN PRIVATE KEY-----\nMIIEvQ" in revealed
    assert "-----END PRIVATE KEY-----\nPlease install" in revealed
    assert "cut off:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEvQ" in revealed


async def test_a_running_gatekeeper_whose_rules_miss_its_upstream_gets_a_red_banner(live: Live) -> None:
    from mcp_gatekeeper.config import parse_config
    from mcp_gatekeeper.names import unreached

    page = await live.logged_in_page()
    await page.wait_for_selector(".qlist .empty")
    (problem,) = unreached(parse_config('[[rules]]\nupstream = "fs"\ngate = "allow"\n'), ["filesystem"])
    async with Store.open(live.h.home / "gatekeeper.db", SystemClock()) as other:  # another wrap process
        await other.register_instance("wrap filesystem")
        await other.note_problem(problem.to_json())
        banner = await page.wait_for_selector(".banner.problem")
        assert banner is not None
        text = await banner.text_content()
    assert "Rules do not reach upstream filesystem." in text
    assert "Did you mean 'fs'?" in text and "held for a human" in text


async def test_lists_mask_a_secret_in_a_summary_and_nothing_else(live: Live) -> None:
    """The queue and the history show each call's summary; a token in it is masked there too, exactly the token."""
    h = live.h
    page = await live.logged_in_page()
    await page.wait_for_selector(".qlist .empty")
    token = "ghp_" + "Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8"
    summary = f"Push main to origin with {token} then tag it"
    rec, _ = await h.hold(call_for(h.policy, "git", "git_push", {"remote": "origin"}, summary=summary))
    await _wait_for_row(page, rec.id)
    item = await page.text_content(f'.qitem[data-id="{rec.id}"] .qsummary')
    assert item == "Push main to origin with •••••• GitHub token then tag it"
    await page.goto(f"{live.base}/#/history")
    row = await page.wait_for_selector("table.grid tbody tr:has-text('Push main to origin')")
    assert row is not None
    cell = await row.text_content()
    assert token not in cell and "then tag it" in cell


async def test_allow_similar_keeps_a_path_under_its_real_folder(live: Live) -> None:
    """Issue 11, case 3, on the page: the default envelope for a path is `under` its normalised folder."""
    h = live.h
    page = await live.logged_in_page()
    attack = "/w/src/../.git/hooks/pre-commit"
    rec, holder = await h.hold(call_for(h.policy, "files", "edit_file", {"path": attack, "dryRun": False}))
    await _wait_for_row(page, rec.id)
    await page.click(f'.qitem[data-id="{rec.id}"]')
    await page.click(".actions .btn.similar")
    await page.wait_for_selector(".lease-editor")
    assert await page.input_value(".lease-editor select[aria-label='Rule for path']") == "under"
    envelope = json.loads(await page.input_value(".lease-editor .env-json"))
    assert envelope == {"path": {"under": "/w/.git/hooks"}, "dryRun": {"eq": False}}  # not "/w/src/*"
    await page.click(".actions .btn.similar")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved)
    [lease] = await h.store.leases(active_at=h.clock.now())
    assert lease.envelope["path"] == {"under": "/w/.git/hooks"}
    assert h.policy.envelope_holds(lease.envelope, {"path": "/w/.git/hooks/post-merge", "dryRun": False})
    assert not h.policy.envelope_holds(lease.envelope, {"path": "/w/.git/hooks/../config", "dryRun": False})
