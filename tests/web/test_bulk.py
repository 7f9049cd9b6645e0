"""Bulk decisions, approve-and-next, queue search and filters, in real Chromium against the real server.

Each call in a bulk approval is its own decision: approved exactly as the reviewer was shown it (digest
checked), audited on its own; a critical call is never approved in bulk; a call decided elsewhere in the
meantime is refused and the rest go through."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from mcp_gatekeeper.models import Approved, Decision, Refused, State

from .conftest import new_call, refund_args
from .test_browser import CHROMIUM, HAVE_PLAYWRIGHT, Live, live  # noqa: F401 - `live` (real server + Chromium) is used by `site`

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package (pip install playwright)"),
]


@pytest.fixture
def site(live: Live) -> Live:  # noqa: F811 - the fixture imported above, under the name pytest gives it
    return live


async def _queue(site: Live, n_refunds: int) -> tuple[list[Any], Any, Any]:
    refunds = [await site.h.hold(new_call(site.h.policy, arguments=refund_args())) for _ in range(n_refunds)]
    delete = await site.h.hold(new_call(site.h.policy, "delete_record", {"id": "r-1"}))  # critical
    page = await site.logged_in_page()
    await page.wait_for_selector(f".qitem >> nth={n_refunds}")
    return refunds, delete, page


async def test_search_and_risk_filter_narrow_the_queue(site: Live) -> None:
    _refunds, delete, page = await _queue(site, 2)
    await page.fill(".qsearch", "delete_record")
    await page.wait_for_selector(".qitem >> nth=0")
    ids = await page.eval_on_selector_all(".qitem", "els => els.map(e => e.dataset.id)")
    assert ids == [delete[0].id]
    assert "1 of 3 held" in await page.text_content(".panel-head .hint")
    await page.fill(".qsearch", "")
    await page.select_option(".qrisk", "critical")
    assert await page.eval_on_selector_all(".qitem", "els => els.map(e => e.dataset.id)") == [delete[0].id]
    await page.fill(".qsearch", "no such thing")
    await page.wait_for_selector(".qlist .empty:has-text('No held call matches')")


async def test_bulk_approval_is_one_digest_checked_decision_per_call(site: Live) -> None:
    h = site.h
    refunds, delete, page = await _queue(site, 3)
    await page.click(f'.qitem[data-id="{refunds[0][0].id}"]')
    await page.wait_for_selector(f'.card [title="{refunds[0][0].id}"]')
    await page.click(".qlike")  # the three refunds (same tool); the critical delete is another tool
    await page.click(f'.qitem[data-id="{delete[0].id}"] .qpick')  # ...and the critical one, picked by hand
    await page.wait_for_selector(".bulk-approve:has-text('Review 4')")
    await page.click(".bulk-approve")
    await page.wait_for_selector(".bulk-review")
    sheet = await page.text_content(".bulk-review")
    assert "3 identical" in sheet and "critical call is left out" in sheet
    # one of them is decided elsewhere (the CLI) while the reviewer reads: it must not be approved twice
    await h.gate.decide(refunds[2][0].id, Decision(approve=False, decided_by="cli:ann", channel="cli", reason="no"))
    await page.click(".bulk-confirm")
    with anyio.fail_after(10):
        outcomes = [await holder.outcome() for _, holder in refunds]
    assert [type(o) for o in outcomes] == [Approved, Approved, Refused]
    assert all(o.arguments == refund_args() for o in outcomes[:2])  # type: ignore[union-attr]
    await page.wait_for_selector(".toast:has-text('Approved 2; refused 1')")
    for rec, _ in refunds[:2]:
        row = await h.store.get(rec.id)
        assert row.state != State.PENDING and row.decided_by is not None and row.decided_by.startswith("web:")
        events = [e.event for e in await h.store.audit_events(call_id=rec.id)]
        assert events.count("approved") == 1
    assert (await h.store.get(delete[0].id)).state == State.PENDING  # never in bulk


async def test_bulk_reject_with_a_reason(site: Live) -> None:
    refunds, _delete, page = await _queue(site, 2)
    for rec, _ in refunds:
        await page.click(f'.qitem[data-id="{rec.id}"] .qpick')
    await page.fill(".bulk .reason", "duplicate refunds")
    await page.click(".bulk-reject")
    with anyio.fail_after(10):
        outcomes = [await holder.outcome() for _, holder in refunds]
    assert all(isinstance(o, Refused) and "duplicate refunds" in o.reason for o in outcomes)


async def test_approve_and_next_opens_the_following_call(site: Live) -> None:
    refunds, delete, page = await _queue(site, 2)
    await page.check(".qnext")
    first, second = refunds[0][0].id, refunds[1][0].id
    await page.click(f'.qitem[data-id="{first}"]')
    await page.wait_for_selector(f'.card [title="{first}"]')
    await page.keyboard.press("a")
    await page.click(".confirm-yes")  # a high-risk refund asks for a deliberate confirmation
    await page.wait_for_selector(f'.card [title="{second}"]')  # moved on by itself
    assert isinstance(await refunds[0][1].outcome(), Approved)
    assert (await site.h.store.get(second)).state == State.PENDING  # moving on decides nothing
    # the setting is remembered (a new tab of the same browser); off, the decided card stays
    page2 = await page.context.new_page()
    await page2.goto(f"{site.base}/#/queue")
    await page2.wait_for_selector(".qitem")
    assert await page2.is_checked(".qnext")
    await page2.uncheck(".qnext")
    await page2.click(f'.qitem[data-id="{second}"]')
    await page2.wait_for_selector(f'.card [title="{second}"]')
    await page2.keyboard.press("a")
    await page2.click(".confirm-yes")
    await page2.wait_for_selector(".decided-banner, .card .chip.st-approved, .card:has-text('approved')")
    assert await page2.locator(f'.card [title="{delete[0].id}"]').count() == 0
