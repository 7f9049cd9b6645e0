"""A screenshot of the Slack message (held, then decided) drawn from the exact blocks the notifier posts, by an
offline Block Kit preview in real Chromium (README "Decisions from Slack")."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from mcp_gatekeeper.models import CallRecord, State, digest
from mcp_gatekeeper.slack.message import decided_blocks, held_blocks

from .blockkit import page

CHROMIUM = Path("/usr/bin/chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
_REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = _REPO / os.environ.get("GK_SCREENSHOTS_DIR", "test-artifacts/screenshots")

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package (pip install playwright)"),
]

ARGS = {
    "order_id": "A-1042",
    "amount": 750,
    "currency": "USD",
    "email": "john@example.com",
    "note": "Refund <!channel> approved by phone `now`",
    "api_key": "sk-live-" + "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
}


def _call(**kw: object) -> CallRecord:
    base: dict[str, object] = {
        "id": "7f3a9c2e41b8d05e6a1f2c3d4e", "state": State.PENDING, "upstream": "orderdesk", "tool": "issue_refund",
        "arguments": ARGS, "args_digest": digest(ARGS), "gate": "hard", "risk": "high", "rule": "refunds",
        "summary": "Issue $750 refund to john@example.com for order #A-1042", "created_at": 1.0,
        "effects": {}, "reasons": (),
    }  # fmt: skip
    base.update(kw)
    return CallRecord(**{f: base.get(f) for f in CallRecord.__dataclass_fields__})  # type: ignore[arg-type]


async def test_the_slack_message_as_posted_and_as_decided(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    link = "https://gk.example.com/c/7f3a9c2e41b8.Qm9vZ2xlU2xhY2sx"
    held = held_blocks(_call(), link)
    decided = decided_blocks(_call(state=State.FORWARDED, decided_by="slack:alice", channel="slack"), link)
    html_file = tmp_path / "preview.html"
    html_file.write_text(
        page([(held, "held: posted by chat.postMessage"), (decided, "decided: the same message after chat.update")]),
        encoding="utf-8",
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless=new", "--no-sandbox"])
        try:
            view = await browser.new_page(viewport={"width": 700, "height": 400}, device_scale_factor=2)
            await view.goto(html_file.as_uri())
            text = await view.inner_text("body")
            assert "Issue $750 refund" in text and "Approve" in text and "Approved by slack:alice (slack)" in text
            assert "sk-live-" not in text and "⟦API secret key (sk-…): hidden⟧" in text
            assert "<!channel>" in text  # shown as text (the HTML preview decodes Slack's &lt;), never a mention
            await view.screenshot(path=str(SCREENSHOTS / "slack-message.png"), full_page=True)
        finally:
            await browser.close()
    assert (SCREENSHOTS / "slack-message.png").stat().st_size > 10_000
