"""The weekly review on a seeded history: the figures, the fatigue flags, and escaping in Markdown and HTML."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from mcp_gatekeeper.models import State
from mcp_gatekeeper.review.fatigue import FatigueThresholds
from mcp_gatekeeper.review.render import SUGGESTIONS_MISSING, html_document, markdown
from mcp_gatekeeper.review.weekly import WeeklyReview, weekly_review

from .conftest import API_KEY, HOSTILE_REASON, HOSTILE_REVIEWER, HOSTILE_TOOL, History

pytestmark = pytest.mark.anyio

WEEK = 7 * 86400.0


async def seed(h: History) -> None:
    """22 calls in the week (17 held) after one call eight days before it."""
    await h.held(rule="refunds", decision="rejected", wait=10, reviewer="old-timer")
    h.clock.advance(8 * 86400)
    # refunds: 1 approved (fast), 2 modified, 1 rejected (with a hostile reason holding a secret), 2 timed out
    await h.held(rule="refunds", decision="approved", wait=1)
    for amount in (10, 20):
        await h.held(
            rule="refunds", decision="modified", wait=30, reviewer="bob", modified={"order_id": "1", "amount": amount}
        )
    await h.held(rule="refunds", decision="rejected", wait=60, reviewer="bob", reason=f"{HOSTILE_REASON} key {API_KEY}")
    await h.held(rule="refunds", decision="expired", wait=0, escalate=True)
    await h.held(rule="refunds", decision="expired", wait=0)
    # exports: never rejected (alice approves five in a second each, then one more by a hostile name)
    for _ in range(5):
        await h.held(
            rule="exports", decision="approved", wait=1, tool=HOSTILE_TOOL, upstream="files", tooldef_hash=None
        )
    await h.held(
        rule="exports", decision="approved", wait=3, reviewer=HOSTILE_REVIEWER, tool=HOSTILE_TOOL, upstream="files"
    )
    # deletes: always rejected
    for _ in range(5):
        await h.held(
            rule="deletes", decision="rejected", wait=20, reviewer="carol", channel="cli", tool="delete_everything"
        )
    for _ in range(3):
        await h.passed(State.ALLOWED)
    for _ in range(2):
        await h.passed(State.DENIED, tool="drop_table")
    h.clock.advance(1)


async def review(h: History, **kw: object) -> WeeklyReview:
    await seed(h)
    now = h.clock.now()
    return await weekly_review(h.store, since=now - WEEK, now=now, **kw)  # type: ignore[arg-type]


async def test_the_figures_of_a_seeded_week(history: History) -> None:
    r = await review(history)
    assert r.volume == {"total": 22, "allowed": 3, "denied": 2, "held": 17, "audit": 0}
    assert r.held == {"approved": 7, "modified": 2, "rejected": 6, "expired": 2, "cancelled": 0, "pending": 0}
    rules = {row.rule: row for row in r.rules}
    refunds = rules["refunds"]
    assert refunds.counts["approved"] == 1 and refunds.counts["modified"] == 2 and refunds.counts["rejected"] == 1
    assert refunds.finished == 6 and refunds.escalated == 1
    assert [round(refunds.rate(o) or 0, 3) for o in ("approved", "modified", "rejected", "expired")] == [
        0.167,
        0.333,
        0.167,
        0.333,
    ]
    assert rules["deletes"].rate("rejected") == 1.0
    assert [x["rule"] for x in r.never_rejected] == ["exports"]
    assert [x["rule"] for x in r.always_rejected] == ["deletes"]
    assert [x["rule"] for x in r.timeouts] == ["refunds"]  # a third of its held calls ran out of time
    assert r.escalations["calls"] == 1 and r.escalations["events"] == 1
    assert r.decisions == 15  # the call from eight days ago is not in the week
    assert {b["label"]: b["count"] for b in r.time_to_decision["histogram"]}["< 2 s"] == 6
    assert {(t["tool"], t["total"]) for t in r.tools} >= {("delete_everything", 5), (HOSTILE_TOOL, 6)}
    assert [x["tool"] for x in r.rejections][:1] == ["delete_everything"]  # newest first
    assert sum(day["rejected"] for day in r.series) == 6


async def test_fatigue_flags_the_rubber_stamp_and_not_the_careful(history: History) -> None:
    r = await review(history, thresholds=FatigueThresholds(fast_seconds=2, approval_run=6, per_hour=6))
    who = {f.reviewer: f for f in r.reviewers}
    assert [f.reviewer for f in r.reviewers] == ["alice", "carol", "bob", HOSTILE_REVIEWER]
    alice = who["alice"]
    assert (alice.decisions, alice.fast, alice.longest_approval_run, alice.peak_hour) == (6, 6, 6, 6)
    assert (alice.active_hours, alice.per_active_hour) == (1, 6.0)
    assert alice.flags == ["6 of 6 decisions in under 2 s", "6 approvals in a row", "6 decisions in one hour"]
    assert who["carol"].longest_approval_run == 0 and who["carol"].flags == []
    assert who["carol"].channels == ["cli"]
    assert (who["bob"].decisions, who["bob"].rejections, who["bob"].longest_approval_run) == (3, 1, 2)
    assert who["bob"].median_seconds == 30
    assert who["bob"].flags == []


async def test_markdown_has_the_figures_and_neutralises_hostile_text(history: History) -> None:
    text = markdown(await review(history))
    assert "| Calls | 22 |" in text and "| Human decisions | 15 |" in text and "| Timed out | 2 |" in text
    assert "| refunds | 6 | 1 (17%) | 2 (33%) | 1 (17%) | 2 (33%) | 1 |" in text
    assert "| deletes | 5 | 0 (0%) | 0 (0%) | 5 (100%) | 0 (0%) | 0 |" in text
    assert "**6 of 6 decisions in under 2 s**" in text
    assert "- deletes: all 5 decisions rejected" in text
    assert SUGGESTIONS_MISSING in text  # not faked: said plainly
    for raw in ("<script", "<img", "<b>", "\u202e", "\u200b", API_KEY, "](javascript"):
        assert raw not in text
    assert "&lt;script&gt;" in text and "\\u202e" in text and "\\u200b" in text
    assert "API secret key \\(sk\\-…\\): masked" in text
    pipes = re.compile(r"(?<!\\)\|")
    [header] = [line for line in text.splitlines() if line.startswith("| Reviewer |")]
    [hostile_row] = [line for line in text.splitlines() if "mallory" in line]
    assert len(pipes.findall(hostile_row)) == len(pipes.findall(header)) == 10  # a name cannot add a column
    [tool_row] = [line for line in text.splitlines() if "script" in line and line.startswith("| files")]
    assert len(pipes.findall(tool_row)) == 6


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)


SAFE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "dl", "div", "dt", "dd", "svg",
    "rect", "text", "line", "table", "thead", "tbody", "tr", "th", "td", "small", "span", "ul", "li",
}  # fmt: skip


async def test_the_html_stands_alone_and_escapes_everything(history: History) -> None:
    page = html_document(await review(history))
    parser = _Tags()
    parser.feed(page)
    assert parser.tags <= SAFE_TAGS  # no script, link, img, iframe, object, a, form
    assert not {a for a in parser.attrs if a.startswith("on") or a in ("href", "src", "xlink:href", "action", "style")}
    assert "url(" not in page and "@import" not in page
    assert "<style>" in page  # the CSS is inline
    assert page.count("<svg") == 3  # per day, per rule, time to decide
    for raw in (API_KEY, "\u202e", "\u200b", "<b>mallory"):
        assert raw not in page
    assert "&lt;script&gt;alert(&quot;t&quot;)&lt;/script&gt;\\u202e|`x`" in page
    assert "&lt;img src=&quot;https://evil.test/x.png&quot;" in page  # shown as text, never fetched
    assert "<dt>Calls</dt><dd>22</dd>" in page
    assert "6 of 6 decisions in under 2 s" in page


async def test_the_page_variant_links_its_stylesheet(history: History) -> None:
    page = html_document(await review(history), stylesheet_href="/static/review.css")
    assert '<link rel="stylesheet" href="/static/review.css">' in page and "<style>" not in page
    assert "style=" not in page  # the page's CSP allows no inline style attribute either


async def test_an_empty_week(history: History) -> None:
    now = history.clock.now()
    r = await weekly_review(history.store, since=now - WEEK, now=now)
    assert r.volume["total"] == 0 and r.reviewers == [] and r.rules == []
    assert "No call was held in this period." in markdown(r)
    assert "No human decision in this period." in html_document(r)


async def test_calibration_suggestions_are_shown_as_given(history: History) -> None:
    from mcp_gatekeeper.calibrate.suggest import suggestions
    from mcp_gatekeeper.config import parse_config
    from mcp_gatekeeper.review.charts import esc
    from mcp_gatekeeper.review.render import md

    config = parse_config('[[rules]]\nname = "deletes"\ntool = "delete_everything"\ngate = "hard"\n')
    for _ in range(10):
        await history.held(rule="deletes", decision="rejected", wait=20, reviewer="carol", tool="delete_everything")
    history.clock.advance(1)
    now = history.clock.now()
    found = await suggestions(history.store, config, since=now - WEEK, now=now)
    assert [s.kind for s in found] == ["deny"]
    r = await weekly_review(history.store, since=now - WEEK, now=now, suggestions=found)
    text, page = markdown(r), html_document(r)
    assert md(found[0].title) in text and "```toml" in text and 'gate = "deny"' in text
    assert SUGGESTIONS_MISSING not in text
    assert esc(found[0].title) in page and "<pre><code>" in page and "gate = &quot;deny&quot;" in page


def test_a_suggested_envelope_never_carries_a_secret() -> None:
    from mcp_gatekeeper.review.weekly import masked_toml

    secret = "q8Zr2Lm0Xv7Nw4Pt9Kc1Qq"
    text = f'[[rules]]\nname = "x"\ntool = "t"\ngate = "allow"\nwhen = {{ api_key = {{ eq = "{secret}" }} }}\n'
    shown = masked_toml(text)
    assert secret not in shown and "masked" in shown
