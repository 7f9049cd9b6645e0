"""The Block Kit messages: what a held call's message shows, that nothing in the arguments can format it,
mention anyone, link anywhere or leak a secret, and what it says once decided."""

from __future__ import annotations

import json
from typing import Any

from mcp_gatekeeper.models import CallRecord, State
from mcp_gatekeeper.slack.message import (
    APPROVE,
    ARGS_CHARS,
    OPEN,
    REJECT,
    ButtonValue,
    decided_blocks,
    fallback_text,
    held_blocks,
    outcome_words,
)

LINK = "https://gk.example.com/c/0123456789ab.AAAAAAAAAAAAAAAA"
SLACK_TOKEN = "xoxb-" + "1234567890-abcdefghijkl"  # a Slack-token-shaped argument


def record(**kw: Any) -> CallRecord:
    base: dict[str, Any] = {
        "id": "0123456789abcdef0123456789", "state": State.PENDING, "upstream": "ops", "tool": "post_message",
        "arguments": {"channel": "#general", "text": "hi"}, "args_digest": "d" * 64, "gate": "hard", "risk": "high",
        "rule": "posts", "created_at": 1.0,
    }  # fmt: skip
    base.update(kw)
    fields = {f: base.get(f) for f in CallRecord.__dataclass_fields__}
    for name, default in (("effects", {}), ("reasons", ())):
        fields[name] = base.get(name, default)
    return CallRecord(**fields)


def _text(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def test_a_held_call_shows_what_risk_rule_arguments_and_its_three_buttons() -> None:
    rec = record(summary="Post to #general")
    blocks = held_blocks(rec, LINK)
    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "Post to #general", "emoji": False}}
    facts = [f["text"] for f in blocks[1]["fields"]]
    assert facts == ["*Risk*\nhigh", "*Rule*\nposts", "*Tool*\nops / post_message", "*Call*\n01234567"]
    assert blocks[2]["text"]["text"].startswith("*Arguments*\n```{")
    [actions] = [b for b in blocks if b["type"] == "actions"]
    approve, reject, page = actions["elements"]
    assert (approve["action_id"], reject["action_id"], page["action_id"]) == (APPROVE, REJECT, OPEN)
    assert (
        ButtonValue.decode(approve["value"])
        == ButtonValue(rec.id, rec.args_digest)
        == ButtonValue.decode(reject["value"])
    )
    assert page["url"] == LINK and "value" not in page
    assert approve["confirm"]["confirm"]["text"] == "Approve"  # a high-risk call asks Slack to confirm
    assert "confirm" not in held_blocks(record(risk="low"), None)[3]["elements"][0]
    assert [e["action_id"] for e in held_blocks(rec, None)[3]["elements"]] == [APPROVE, REJECT]  # no link, no button


def test_arguments_cannot_format_mention_link_or_leak() -> None:
    hostile = {
        "text": "<!channel> <@U0BOSS> <https://evil.example|click> *bold* ``` `close` & done",
        "token": SLACK_TOKEN,
        "control": "bell\x07 and \u202eright-to-left",
    }
    rec = record(arguments=hostile, summary=None)
    text = _text(held_blocks(rec, LINK))
    for raw in ("<!channel>", "<@U0BOSS>", "<https://evil.example", SLACK_TOKEN, "\x07", "\u202e"):
        assert raw not in text
    args = held_blocks(rec, LINK)[2]["text"]["text"]
    assert args.count("```") == 2  # the code block cannot be closed from inside
    assert "&lt;!channel&gt;" in args and "&amp; done" in args and "hidden" in args
    # the header is plain text (mrkdwn is not read there) and names the call without the secret
    header = held_blocks(rec, LINK)[0]["text"]
    assert (
        header["type"] == "plain_text"
        and SLACK_TOKEN not in header["text"]
        and "\u2039!channel\u203a" in header["text"]
    )
    # the notification's text (read as mrkdwn by Slack) is escaped
    assert "<" not in fallback_text(rec) and "&lt;!channel&gt;" in fallback_text(rec)


def test_long_arguments_are_cut_and_say_so() -> None:
    rec = record(arguments={"text": "x" * 10_000})
    args = held_blocks(rec, None)[2]["text"]["text"]
    assert len(args) < ARGS_CHARS + 200 and "more characters on the page" in args


def test_the_decided_message_says_who_and_how_and_has_no_buttons() -> None:
    approved = record(state=State.FORWARDED, decided_by="slack:alice", channel="slack")
    blocks = decided_blocks(approved, LINK)
    assert not [b for b in blocks if b["type"] == "actions"]
    shown = _text(blocks)
    assert ":white_check_mark: *Approved by slack:alice (slack)*" in shown and f"<{LINK}|Open in page>" in shown
    rejected = record(state=State.REJECTED, decided_by="web:bob", channel="web", reason="<!here> no")
    assert outcome_words(rejected) == "Rejected by web:bob (web): <!here> no"
    assert "&lt;!here&gt; no" in _text(decided_blocks(rejected, None))  # the reason is escaped as well
    edited = record(state=State.APPROVED, decided_by="cli:c", channel="cli", modified_arguments={"text": "ok"})
    assert outcome_words(edited) == "Approved by cli:c (cli), with edited arguments"
    assert outcome_words(record(state=State.EXPIRED)).startswith("Expired")
    assert outcome_words(record(state=State.CANCELLED)).startswith("Withdrawn")


def test_a_button_value_is_checked_for_shape() -> None:
    for bad in (None, "", "x", "[]", '{"c": 1, "d": "x"}', '{"c": "x"}', "{" * 600):
        assert ButtonValue.decode(bad) is None
