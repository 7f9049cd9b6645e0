"""The weekly review on the page: the same report, under the page's auth and CSP, linked from Stats."""

from __future__ import annotations

import pytest

from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.web import STATIC_DIR
from mcp_gatekeeper.webguard import CSP

from .conftest import Harness

pytestmark = pytest.mark.anyio


async def test_the_weekly_review_is_served_behind_login_under_the_csp(harness: Harness) -> None:
    rec, holder = await harness.hold()
    assert isinstance(harness.clock, FakeClock)
    harness.clock.advance(12)
    r = await harness.client.post(
        f"/api/calls/{rec.id}/reject", headers=harness.bearer, json={"reason": "<script>alert(1)</script>"}
    )
    assert r.status_code == 200
    await holder.outcome()
    harness.clock.advance(1)
    r = await harness.client.get("/api/weekly-review?days=7", headers=harness.bearer)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == CSP
    page = r.text
    assert '<link rel="stylesheet" href="/static/review.css">' in page
    assert "<style" not in page and "style=" not in page and "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the reviewer's reason, escaped
    assert '<th scope="row">refunds</th><td>1</td>' in page


async def test_it_needs_a_session_and_takes_the_page_key_in_the_query(harness: Harness) -> None:
    assert (await harness.client.get("/api/weekly-review")).status_code == 401
    browser = await harness.login()
    key = browser.pop("X-Gatekeeper-Key")
    assert (await harness.client.get("/api/weekly-review", headers=browser)).status_code == 401  # cookie alone
    r = await harness.client.get(f"/api/weekly-review?key={key}", headers=browser)
    assert r.status_code == 200 and "Weekly gate review" in r.text
    assert (await harness.client.get("/api/weekly-review?days=1000", headers=harness.bearer)).status_code == 400


async def test_the_stylesheet_is_a_static_file_and_stats_links_the_review(harness: Harness) -> None:
    css = await harness.client.get("/static/review.css")
    assert css.status_code == 200 and "url(" not in css.text and "@import" not in css.text
    assert 'keyed("/api/weekly-review?days=7")' in (STATIC_DIR / "app.js").read_text(encoding="utf-8")
