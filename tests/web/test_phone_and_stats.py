"""The page on a phone (390 px) and a laptop (1280×800), and Stats in the viewer's calendar days, in real
Chromium: nothing overflows sideways, every section is reachable from the nav, the action bar leaves the
arguments readable, and the last bar of "Outcomes over time" is today."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import new_call, quarantine_refunds, refund_args
from .test_browser import CHROMIUM, HAVE_PLAYWRIGHT, Live, live  # noqa: F401 - `live` (real server + Chromium) is used by `site`

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package (pip install playwright)"),
]


@pytest.fixture
def site(live: Live) -> Live:  # noqa: F811 - the fixture imported above, under the name pytest gives it
    """The page served for real with a browser at hand (test_browser's ``live``)."""
    return live


PHONE: dict[str, Any] = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True}


async def _sideways(page: Any) -> list[str]:
    """Elements that reach past the right edge of the viewport (what makes a page scroll sideways)."""
    return list(
        await page.evaluate(
            """() => {
              const w = document.documentElement.clientWidth, out = [];
              if (document.documentElement.scrollWidth > w + 1) out.push(`document ${document.documentElement.scrollWidth} > ${w}`);
              for (const el of document.querySelectorAll('#app *')) {
                const r = el.getBoundingClientRect();
                let inBox = false;  // content a box scrolls within itself does not move the page
                for (let a = el.parentElement; a && a.id !== 'app'; a = a.parentElement) {
                  const o = getComputedStyle(a).overflowX;
                  if ((o === 'auto' || o === 'scroll') && a.getBoundingClientRect().right <= w + 1) { inBox = true; break; }
                }
                if (r.width && r.right > w + 1 && !inBox) out.push(`${el.tagName.toLowerCase()}.${el.className} right=${Math.round(r.right)}`);
              }
              return out.slice(0, 8);
            }"""
        )
    )


@pytest.mark.parametrize("view", ["queue", "history", "tools", "stats", "rules", "leases", "review"])
async def test_nothing_overflows_sideways_on_a_phone(site: Live, view: str) -> None:
    await site.h.hold(new_call(site.h.policy, arguments=refund_args(email="a.very.long.address.indeed@example.com")))
    await quarantine_refunds(site.h.store)  # Tools then lists a quarantined definition with its diff
    page = await site.logged_in_page(**PHONE)
    await page.goto(f"{site.base}/#/{view}")
    await page.wait_for_selector(f'#nav a.active[data-view="{view}"]')
    await page.wait_for_function("() => !document.querySelector('#app').textContent.includes('Loading')")
    assert await _sideways(page) == [], await _sideways(page)


async def test_every_section_is_reachable_from_the_nav_on_a_phone(site: Live) -> None:
    page = await site.logged_in_page(**PHONE)
    for view in ("queue", "review", "leases", "tools", "history", "stats", "rules"):
        link = page.locator(f'#nav a[data-view="{view}"]')
        box = await link.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (view, box)
        await link.click()  # a real click at its place on screen, no scrolling of the nav needed
        await page.wait_for_selector(f'#nav a.active[data-view="{view}"]')


async def test_the_action_bar_leaves_the_arguments_readable_on_a_laptop(site: Live) -> None:
    """At 1280×800 with the editor open and a change made (the most buttons the bar shows), the bar is one
    slim row, and the diff of the change scrolled to the bottom of the window stays above the bar."""
    await site.h.hold(new_call(site.h.policy, arguments=refund_args(email="john@example.com")))
    page = await site.logged_in_page(viewport={"width": 1280, "height": 800})
    await page.wait_for_selector(".card .actions")
    await page.click(".actions .btn.modify")
    await page.fill("#f-amount", "500")
    await page.wait_for_selector(".diff .now")
    bar = await page.locator(".card .actions").bounding_box()
    assert bar is not None and bar["height"] <= 800 * 0.12, bar
    for target in (".diff", "#f-order_id"):
        await page.evaluate(f"document.querySelector({target!r}).scrollIntoView({{block: 'end'}})")
        box = await page.locator(target).bounding_box()
        bar = await page.locator(".card .actions").bounding_box()
        assert box is not None and bar is not None
        assert box["y"] + box["height"] <= bar["y"] + 1, (target, box, bar)


async def test_stats_bars_are_the_viewers_days_with_today_last(site: Live) -> None:
    """A viewer in Auckland (far from this machine's zone): today's held call is in the last bar, labelled
    with Auckland's date; both legends name "pending"; the axis text is readable on a phone."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    await site.h.hold(new_call(site.h.policy, arguments=refund_args()))
    today = datetime.now(ZoneInfo("Pacific/Auckland"))
    for context in ({"viewport": {"width": 1280, "height": 860}}, PHONE):
        page = await site.logged_in_page(timezone_id="Pacific/Auckland", **context)
        await page.goto(f"{site.base}/#/stats")
        await page.wait_for_selector(".chart.wide svg rect")
        buckets = await page.eval_on_selector_all(
            ".chart.wide svg rect[data-bucket]", "els => els.map(e => [Number(e.dataset.bucket), e.textContent])"
        )
        last = max(b for b, _ in buckets)
        titles = [t for b, t in buckets if b == last]
        assert any(t.startswith(f"{today.month}/{today.day} · pending") for t in titles), titles
        legends = await page.eval_on_selector_all(".chart .legend", "els => els.map(e => e.textContent)")
        assert len(legends) >= 2 and all("pending" in text for text in legends), legends
        sizes = await page.eval_on_selector_all(
            ".chart svg text.axis", "els => els.map(e => e.getBoundingClientRect().height)"
        )
        assert sizes and min(sizes) >= 9, sizes  # px on screen, whatever the chart's width
        labels = await page.eval_on_selector_all(".chart.wide svg text.axis", "els => els.map(e => e.textContent)")
        assert "today" in labels


async def test_the_weekly_review_opens_from_stats_and_draws_under_the_csp(site: Live) -> None:
    """Stats links the weekly review; it opens in its own tab, signed in through the page key in its link,
    and draws its stylesheet and inline SVG charts without a single CSP violation."""
    await site.h.hold(new_call(site.h.policy, arguments=refund_args()))
    page = await site.logged_in_page(viewport={"width": 1280, "height": 860})
    await page.goto(f"{site.base}/#/stats")
    link = page.locator("a", has_text="Weekly review")
    await link.wait_for()
    async with page.context.expect_page() as opened:
        await link.click()
    review = await opened.value
    violations: list[str] = []
    review.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    await review.wait_for_load_state("load")
    await review.wait_for_selector("main.review svg.chart rect")
    assert (
        await review.title() == await review.evaluate("document.title") and "Weekly gate review" in await review.title()
    )
    # the linked stylesheet applied (a grid of figures), which inline CSS under this CSP could not
    assert await review.eval_on_selector("dl.figures", "e => getComputedStyle(e).display") == "grid"
    await review.reload()
    await review.wait_for_selector("main.review svg.chart")
    assert violations == []
