"""What the decision card's data says about a call: its title from the arguments that run, plain words
without a rule summary, and the tool's definition (issue 13, "Approving the wrong thing")."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_gatekeeper.models import Approved, Decision, State
from mcp_gatekeeper.proxy import tooldef_hash

from .conftest import TOOL_V1, TOOL_V2, Harness, call_for, new_call, quarantine_refunds, ran_for_review, refund_args

pytestmark = pytest.mark.anyio

POST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"channel": {"type": "string"}, "text": {"type": "string"}, "thread": {"type": "string"}},
    "required": ["text", "channel"],
}
POST_TOOL: dict[str, Any] = {
    "name": "post_message",
    "description": "Post a message to a Slack channel. Everyone in the channel sees it.",
    "inputSchema": POST_SCHEMA,
    "annotations": {"destructiveHint": False, "openWorldHint": True},
}


async def _get(h: Harness, call_id: str) -> dict[str, Any]:
    r = await h.client.get(f"/api/calls/{call_id}", headers=h.bearer)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_modified_call_is_titled_by_the_arguments_that_ran(harness: Harness) -> None:
    h = harness
    rec, holder = await h.hold(new_call(h.policy, arguments=refund_args(amount=310.0)))
    held = await _get(h, rec.id)
    # the title writes the number as the JSON does (310, not 310.0)
    assert held["summary"] == held["headline"] == "Issue $310 refund to john@example.com for order #8821"
    assert held["held_summary"] is None
    r = await h.client.post(
        f"/api/calls/{rec.id}/approve",
        headers=h.bearer,
        json={"args_digest": rec.args_digest, "arguments": refund_args(amount=150.5)},
    )
    assert r.status_code == 200, r.text
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments["amount"] == 150.5
    after = r.json()
    assert after["headline"] == after["summary"] == "Issue $150.5 refund to john@example.com for order #8821"
    assert after["held_summary"] == "Issue $310 refund to john@example.com for order #8821"
    assert (await h.store.get(rec.id)).summary == "Issue $310 refund to john@example.com for order #8821"
    # the history list says the same
    r = await h.client.get("/api/calls?state=approved,forwarding,forwarded", headers=h.bearer)
    [row] = [c for c in r.json()["calls"] if c["id"] == rec.id]
    assert row["headline"] == "Issue $150.5 refund to john@example.com for order #8821"


async def test_a_modification_that_leaves_the_summary_alone_has_no_held_summary(harness: Harness) -> None:
    h = harness
    rec, _ = await h.hold(new_call(h.policy))
    await h.gate.decide(
        rec.id,
        Decision(
            approve=True,
            decided_by="web:t",
            channel="web",
            arguments=refund_args(notify=True),
            args_digest=rec.args_digest,
        ),
    )
    body = await _get(h, rec.id)
    assert body["modified_arguments"] == refund_args(notify=True)
    assert body["summary"] == rec.summary and body["held_summary"] is None


async def test_plain_words_without_a_rule_summary(harness: Harness) -> None:
    """Seven messages to different channels read differently: the salient arguments, required ones first."""
    h = harness
    texts = [f"Deploy {n} finished" for n in range(7)]
    for n, text in enumerate(texts):
        args = {"thread": f"t-{n}", "channel": f"#ops-{n}", "text": text}
        await h.hold(call_for(h.policy, "slack", "post_message", args, input_schema=POST_SCHEMA))
    r = await h.client.get("/api/calls?state=pending&order=asc", headers=h.bearer)
    heads = [c["headline"] for c in r.json()["calls"]]
    assert len(set(heads)) == 7
    assert 'post_message on slack: text "Deploy 0 finished", channel "#ops-0", thread "t-0"' in heads
    assert all(c["summary"] is None for c in r.json()["calls"])


async def test_plain_words_leave_out_secrets_and_shorten_long_text(harness: Harness) -> None:
    h = harness
    token = "ghp_" + "Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8"
    args = {"password": "hunter2hunter2", "auth": token, "body": "word " * 200, "n": 2.0, "deep": {"x": 1}}
    rec, _ = await h.hold(call_for(h.policy, "mail", "send_email", args))
    body = await _get(h, rec.id)
    head = body["headline"]
    assert "hunter2" not in head and token not in head
    assert head.startswith('send_email on mail: body "word word')
    assert head.endswith('…", n 2 (+3 more)')
    assert len(head) < 120
    long_key, _ = await h.hold(call_for(h.policy, "mail", "send_email", {"k" * 5000 + "\n": "v"}))
    assert (await _get(h, long_key.id))["headline"] == "send_email on mail: " + "k" * 31 + '… "v"'
    empty, _ = await h.hold(call_for(h.policy, "git", "git_status", {}, gate="hard"))
    assert (await _get(h, empty.id))["headline"] == "git_status on git (no arguments)"


async def test_the_live_snapshot_carries_the_headline(harness: Harness) -> None:
    from mcp_gatekeeper.web import live_snapshot

    h = harness
    await h.hold(call_for(h.policy, "slack", "post_message", {"channel": "#ops", "text": "hi"}))
    await h.hold(new_call(h.policy))
    snap = await live_snapshot(h.app.state.gk)
    assert sorted(c["headline"] for c in snap["pending"]) == [
        "Issue $750 refund to john@example.com for order #8821",
        'post_message on slack: channel "#ops", text "hi"',
    ]


async def test_the_live_list_does_not_read_huge_arguments_for_a_headline(harness: Harness) -> None:
    from mcp_gatekeeper.web import live_snapshot
    from mcp_gatekeeper.webhttp import HEADLINE_ARGS_CAP

    h = harness
    big = {"channel": "#ops", "text": "x" * HEADLINE_ARGS_CAP}
    rec, _ = await h.hold(call_for(h.policy, "slack", "post_message", big))
    snap = await live_snapshot(h.app.state.gk)
    assert [c["headline"] for c in snap["pending"]] == ["post_message on slack (large arguments)"]
    assert (await _get(h, rec.id))["headline"].startswith('post_message on slack: channel "#ops", text "xxx')


async def test_the_card_has_the_tool_definition_it_was_called_under(harness: Harness) -> None:
    h = harness
    await h.store.check_pins("slack", {"post_message": (tooldef_hash(POST_TOOL), POST_TOOL)})
    args = {"channel": "#ops", "text": "hi"}
    rec, _ = await h.hold(call_for(h.policy, "slack", "post_message", args, tooldef_hash=tooldef_hash(POST_TOOL)))
    t = (await _get(h, rec.id))["tool_definition"]
    assert t["description"] == POST_TOOL["description"]
    assert t["input_schema"] == POST_SCHEMA
    assert t["annotations"] == POST_TOOL["annotations"]
    assert t["as_called"] is True and t["hash"] == tooldef_hash(POST_TOOL)
    # a call that recorded no definition hash gets the pinned one, not claimed to be the one it ran under
    unknown, _ = await h.hold(call_for(h.policy, "slack", "post_message", args))
    assert (await _get(h, unknown.id))["tool_definition"]["as_called"] is False
    # a tool never listed: nothing to show, and nothing invented
    other, _ = await h.hold(call_for(h.policy, "slack", "delete_channel", {"channel": "#ops"}))
    assert (await _get(h, other.id))["tool_definition"] is None


async def test_a_quarantined_call_shows_the_changed_definition_it_was_held_under(harness: Harness) -> None:
    """The card must not show the harmless pinned description for a call made under the poisoned one."""
    h = harness
    await quarantine_refunds(h.store)
    rec, _ = await h.hold(new_call(h.policy, tooldef_hash=tooldef_hash(TOOL_V2)))
    t = (await _get(h, rec.id))["tool_definition"]
    assert t["description"] == TOOL_V2["description"] and "audit@evil.test" in t["description"]
    assert t["as_called"] is True
    # a call made under an unknown version gets the pinned one, flagged as not the one it was made under
    older, _ = await h.hold(new_call(h.policy, arguments=refund_args(order_id="1"), tooldef_hash="0" * 64))
    t = (await _get(h, older.id))["tool_definition"]
    assert t["description"] == TOOL_V1["description"] and t["as_called"] is False
    assert (await h.store.get(rec.id)).state == State.PENDING


async def test_numbers_a_browser_would_round_are_named_with_their_exact_digits(harness: Harness) -> None:
    h = harness
    big = 2**53 + 1
    args = {"account": big, "ids": [1, -(2**60)], "ok": 2**53 - 1, "flag": True, "f": 1e300}
    rec, _ = await h.hold(call_for(h.policy, "bank", "move_funds", args))
    body = await _get(h, rec.id)
    assert body["inexact_numbers"] == [
        {"path": ["account"], "exact": str(big)},
        {"path": ["ids", 1], "exact": str(-(2**60))},
    ]


async def test_calls_to_review_carry_plain_words_too(harness: Harness) -> None:
    from mcp_gatekeeper.webgates import gates_snapshot

    h = harness
    new = call_for(h.policy, "slack", "post_message", {"channel": "#ops", "text": "done"}, gate="audit")
    rec = await ran_for_review(h.store, h.clock, new)
    snap = await gates_snapshot(h.app.state.gk)
    assert [(c["id"], c["headline"]) for c in snap["reviews"]] == [
        (rec.id, 'post_message on slack: channel "#ops", text "done"')
    ]
