"""The review data export: records valid against the shipped schema, secrets redacted, filters, pagination."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mcp_gatekeeper.review.export import NO_DESCRIPTION, SCHEMA_FILE, SCHEMA_ID, decision_records, jsonl
from mcp_gatekeeper.webauth import keyed_hash

from .conftest import API_KEY, BEARER, PASSWORD, History, secret_args

pytestmark = pytest.mark.anyio

TOKEN = "ui-token-for-tests"
SECRETS = (API_KEY, BEARER.split()[1], PASSWORD)
DOCS_SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "decision-record.v1.schema.json"


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


async def seed(h: History) -> None:
    await h.held(rule="refunds", decision="approved", wait=4, arguments=secret_args("1"))
    await h.held(
        rule="refunds", decision="modified", wait=40, reviewer="bob", arguments=secret_args("2"),
        modified={**secret_args("2"), "amount": 10, "note": f"smaller; key {API_KEY}"}, reason=f"halved (was {API_KEY})",
    )  # fmt: skip
    await h.held(
        rule="refunds", decision="rejected", wait=9, reviewer="carol", channel="cli", arguments=secret_args("3"),
        reason=f"never paste {BEARER}",
    )  # fmt: skip
    await h.held(rule="refunds", decision="expired", wait=0)  # a timeout is not a human decision
    await h.held(rule=None, decision="approved", wait=2, tool="other", tooldef_hash="unknown-hash")


async def records(h: History, **kw: Any) -> list[dict[str, Any]]:
    return [
        r
        async for r in decision_records(
            h.store, hasher=lambda v: keyed_hash(TOKEN, v), since=kw.pop("since", None), until=h.clock.now(), **kw
        )
    ]


async def test_every_record_validates_and_round_trips(history: History) -> None:
    await seed(history)
    out = await records(history)
    check = validator()
    for r in out:
        check.validate(r)
        line = jsonl(r)
        assert line.endswith("\n") and "\n" not in line[:-1] and line.isascii()
        assert json.loads(line) == r
    assert [r["decision"] for r in out] == ["approved", "modified", "rejected", "approved"]
    approved, modified, rejected, other = out
    assert approved["schema"] == SCHEMA_ID
    assert approved["tool_description"] == "Refund an order to the customer's card."
    assert approved["tool_description_source"] == "tool definition"
    assert other["tool_description"] is None and other["tool_description_source"] == NO_DESCRIPTION
    assert approved["final_arguments"] == approved["proposed_arguments"] and approved["preference_pair"] is None
    assert modified["final_arguments"]["amount"] == 10
    assert modified["preference_pair"] == {
        "rejected": modified["proposed_arguments"],
        "chosen": modified["final_arguments"],
    }
    assert rejected["final_arguments"] is None and rejected["preference_pair"] is None
    assert (rejected["reviewer"], rejected["channel"], rejected["latency_seconds"]) == ("carol", "cli", 9.0)
    assert (modified["reviewer"], modified["latency_seconds"], modified["rule"], modified["risk"]) == (
        "bob", 40.0, "refunds", "high",
    )  # fmt: skip
    assert approved["held_at"].endswith("Z") and approved["decided_at"] > approved["held_at"]


async def test_no_secret_survives_in_arguments_edits_or_reasons(history: History) -> None:
    await seed(history)
    text = "".join(jsonl(r) for r in await records(history))
    for secret in SECRETS:
        assert secret not in text
        assert json.dumps(secret)[1:-1] not in text
    # replaced by the audit export's keyed hash, so equal secrets still compare equal
    assert keyed_hash(TOKEN, API_KEY) in text and keyed_hash(TOKEN, PASSWORD) in text


async def test_only_modified_or_rejected_and_since(history: History) -> None:
    await seed(history)
    assert [r["decision"] for r in await records(history, only="modified")] == ["modified"]
    assert [r["decision"] for r in await records(history, only="rejected")] == ["rejected"]
    history.clock.advance(3600)
    await history.held(rule="refunds", decision="rejected", wait=1)
    recent = await records(history, since=history.clock.now() - 60)
    assert len(recent) == 1 and recent[0]["decision"] == "rejected"


async def test_pages_of_the_store_lose_nothing_when_decisions_share_a_timestamp(history: History) -> None:
    for i in range(7):
        await history.held(rule="refunds", decision="approved", wait=0, gap=0, arguments={"order_id": str(i)})
    history.clock.advance(1)
    out = await records(history, page=2)
    assert sorted(r["proposed_arguments"]["order_id"] for r in out) == [str(i) for i in range(7)]
    assert len({r["call_id"] for r in out}) == 7


def test_the_schema_in_the_docs_is_the_shipped_one() -> None:
    assert json.loads(DOCS_SCHEMA.read_text(encoding="utf-8")) == json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def test_the_schema_refuses_a_record_that_breaks_it() -> None:
    good = {
        "schema": SCHEMA_ID, "call_id": "c1", "upstream": "u", "tool": "t", "tool_description": None,
        "tool_description_source": NO_DESCRIPTION, "input_schema": None, "proposed_arguments": {"a": 1},
        "final_arguments": None, "decision": "rejected", "reason": None, "reviewer": "r", "channel": "web",
        "latency_seconds": 1.0, "rule": None, "gate": "hard", "risk": "high", "summary": None, "agent_reason": None,
        "outcome": "rejected", "held_at": "2027-01-01T00:00:00Z", "decided_at": "2027-01-01T00:00:01Z",
        "preference_pair": None,
    }  # fmt: skip
    check = validator()
    check.validate(good)
    for bad in (
        {**good, "final_arguments": {"a": 2}},  # a rejected call ran nothing
        {**good, "decision": "modified"},  # an edit without its pair
        {**good, "extra": 1},
        {**good, "latency_seconds": -1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            check.validate(bad)
