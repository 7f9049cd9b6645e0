"""The JSON API through an in-process ASGI client: statuses, races, digests, modifications."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx2
import pytest

from mcp_gatekeeper.errors import StoreError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import Approved, Decision, Refused, State, digest
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.web import build_app, live_snapshot
from mcp_gatekeeper.webauth import reviewer_label

from .conftest import RULE_NAMES, Harness, new_call, refund_args

pytestmark = pytest.mark.anyio


async def test_list_pending_oldest_first_with_cursor(harness: Harness) -> None:
    first, _ = await harness.hold()
    harness.clock.advance(5)  # type: ignore[attr-defined]
    second, _ = await harness.hold(new_call(harness.policy, arguments=refund_args(order_id="9000")))
    r = await harness.client.get("/api/calls?state=pending&limit=1", headers=harness.bearer)
    assert r.status_code == 200
    page = r.json()
    assert [c["id"] for c in page["calls"]] == [first.id]
    assert page["calls"][0]["summary"] == "Issue $750 refund to john@example.com for order #8821"
    assert page["counts"] == {"pending": 2}
    r2 = await harness.client.get(
        f"/api/calls?state=pending&limit=1&cursor={page['next_cursor']}", headers=harness.bearer
    )
    assert [c["id"] for c in r2.json()["calls"]] == [second.id]
    assert r2.json()["next_cursor"] is None


async def test_history_filters(harness: Harness) -> None:
    a, _ = await harness.hold()
    harness.clock.advance(1)  # type: ignore[attr-defined]
    b, _ = await harness.hold(new_call(harness.policy, "delete_record", {"id": "r-77"}))
    await harness.gate.decide(
        a.id, Decision(approve=False, decided_by="web:alice", channel="web", reason="wrong amount")
    )

    async def ids(query: str) -> list[str]:
        r = await harness.client.get(f"/api/calls?{query}", headers=harness.bearer)
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()["calls"]]

    assert await ids("state=rejected") == [a.id]
    assert await ids("state=pending,rejected") == [b.id, a.id]
    assert await ids("tool=delete_record") == [b.id]
    assert await ids("upstream=orderdesk") == [b.id, a.id]
    assert await ids("decided_by=web:alice") == [a.id]
    assert await ids("q=wrong%20amount") == [a.id]
    r = await harness.client.get("/api/calls?state=bogus", headers=harness.bearer)
    assert r.status_code == 400


async def test_get_call_has_card_fields_and_404(harness: Harness) -> None:
    rec, _ = await harness.hold()
    r = await harness.client.get(f"/api/calls/{rec.id[:8]}", headers=harness.bearer)
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == rec.id
    assert body["effects"]["reversible"] is False
    assert body["agent_confidence"] == 0.82
    assert body["input_schema"]["required"] == ["order_id", "amount"]
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-content-type-options"] == "nosniff"
    for bad in ("ffffffffffffffff", "not-hex", "%2e%2e%2fetc"):
        r = await harness.client.get(f"/api/calls/{bad}", headers=harness.bearer)
        assert r.status_code == 404
        assert r.json()["error"] == "not_found"
    r = await harness.client.post("/api/calls/ffffffff/approve", headers=harness.bearer, json={"args_digest": "x"})
    assert r.status_code == 404


async def test_approve_forwards_original_arguments(harness: Harness) -> None:
    rec, holder = await harness.hold()
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve", headers=harness.bearer, json={"args_digest": rec.args_digest}
    )
    assert r.status_code == 200, r.text
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved)
    assert outcome.arguments == refund_args()
    assert outcome.modified is False
    row = await harness.store.get(rec.id)
    assert row.state == State.APPROVED
    assert row.channel == "api"  # the bearer token is a script's channel, not the page's
    assert row.decided_by == f"api:{reviewer_label()}"


async def test_reviewer_comes_from_session_not_body(harness: Harness) -> None:
    rec, holder = await harness.hold()
    headers = await harness.browser_headers()
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve",
        headers=headers,
        json={"args_digest": rec.args_digest, "decided_by": "mallory", "channel": "cli"},
    )
    assert r.status_code == 200, r.text
    await holder.outcome()
    row = await harness.store.get(rec.id)
    assert row.decided_by == f"web:{reviewer_label()}"  # readable: the OS user who made the login link
    assert row.channel == "web"


async def test_modify_then_approve_forwards_exactly_the_edit(harness: Harness) -> None:
    rec, holder = await harness.hold()
    edited = refund_args(amount=500, notify=True)
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve",
        headers=harness.bearer,
        json={"args_digest": rec.args_digest, "arguments": edited, "reason": "partial refund"},
    )
    assert r.status_code == 200, r.text
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved)
    assert outcome.arguments == edited
    assert outcome.modified is True
    row = await harness.store.get(rec.id)
    assert row.modified_arguments == edited
    assert row.arguments == refund_args()
    assert row.reason == "partial refund"


@pytest.mark.parametrize(
    "edit",
    [
        refund_args(amount=5000),  # over the schema's maximum
        refund_args(currency="GBP"),  # not in the enum
        {"order_id": "8821"},  # a required field removed
        refund_args(bcc="attacker@evil.test"),  # additionalProperties: false
    ],
)
async def test_schema_invalid_modification_is_422_and_stays_pending(harness: Harness, edit: dict[str, Any]) -> None:
    rec, holder = await harness.hold()
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve", headers=harness.bearer, json={"args_digest": rec.args_digest, "arguments": edit}
    )
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_modification"
    assert (await harness.store.get(rec.id)).state == State.PENDING
    assert not holder.done.is_set()


async def test_modification_into_a_deny_rule_is_422(harness: Harness) -> None:
    rec, _ = await harness.hold(new_call(harness.policy, "delete_record", {"id": "r-1"}))
    for edit in ({"id": "prod-1"}, [1]):
        r = await harness.client.post(
            f"/api/calls/{rec.id}/approve",
            headers=harness.bearer,
            json={"args_digest": rec.args_digest, "arguments": edit},
        )
        assert r.status_code == 422
    assert (await harness.store.get(rec.id)).state == State.PENDING


async def test_stale_digest_is_409_and_stays_pending(harness: Harness) -> None:
    rec, holder = await harness.hold()
    stale = digest(refund_args(amount=1))
    r = await harness.client.post(f"/api/calls/{rec.id}/approve", headers=harness.bearer, json={"args_digest": stale})
    assert r.status_code == 409
    assert r.json()["error"] == "stale_digest"
    assert (await harness.store.get(rec.id)).state == State.PENDING
    assert not holder.done.is_set()


async def test_approve_requires_a_digest(harness: Harness) -> None:
    rec, _ = await harness.hold()
    r = await harness.client.post(f"/api/calls/{rec.id}/approve", headers=harness.bearer, json={})
    assert r.status_code == 422
    assert (await harness.store.get(rec.id)).state == State.PENDING


async def test_already_decided_is_409(harness: Harness) -> None:
    rec, holder = await harness.hold()
    ok = await harness.client.post(f"/api/calls/{rec.id}/reject", headers=harness.bearer, json={"reason": "no"})
    assert ok.status_code == 200
    again = await harness.client.post(
        f"/api/calls/{rec.id}/approve", headers=harness.bearer, json={"args_digest": rec.args_digest}
    )
    assert again.status_code == 409
    assert again.json()["error"] == "decided"
    outcome = await holder.outcome()
    assert isinstance(outcome, Refused)
    assert (await harness.store.get(rec.id)).state == State.REJECTED


async def test_expired_is_409(harness: Harness) -> None:
    rec, holder = await harness.hold(timeout=30)
    harness.clock.advance(31)  # type: ignore[attr-defined]
    outcome = await holder.outcome()
    assert isinstance(outcome, Refused) and outcome.state == State.EXPIRED
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve", headers=harness.bearer, json={"args_digest": rec.args_digest}
    )
    assert r.status_code == 409
    assert (await harness.store.get(rec.id)).state == State.EXPIRED


async def test_two_approvals_at_once_exactly_one_wins(harness: Harness) -> None:
    rec, holder = await harness.hold()
    statuses: list[int] = []
    start = anyio.Event()

    async def approve(amount: int) -> None:
        await start.wait()
        r = await harness.client.post(
            f"/api/calls/{rec.id}/approve",
            headers=harness.bearer,
            json={"args_digest": rec.args_digest, "arguments": refund_args(amount=amount)},
        )
        statuses.append(r.status_code)

    async with anyio.create_task_group() as tg:
        tg.start_soon(approve, 100)
        tg.start_soon(approve, 200)
        start.set()
    assert sorted(statuses) == [200, 409]
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved)
    row = await harness.store.get(rec.id)
    assert outcome.arguments == row.modified_arguments
    events = await harness.store.audit_events(call_id=rec.id)
    assert [e.event for e in events].count("approved") == 1


async def test_reject_reason_reaches_the_agent(harness: Harness) -> None:
    rec, holder = await harness.hold()
    r = await harness.client.post(
        f"/api/calls/{rec.id}/reject", headers=harness.bearer, json={"reason": "refunds over $500 need a manager"}
    )
    assert r.status_code == 200
    outcome = await holder.outcome()
    assert isinstance(outcome, Refused)
    assert outcome.state == State.REJECTED
    assert "refunds over $500 need a manager" in outcome.reason


async def test_reject_with_arguments_is_422(harness: Harness) -> None:
    rec, _ = await harness.hold()
    r = await harness.client.post(f"/api/calls/{rec.id}/reject", headers=harness.bearer, json={"arguments": {}})
    assert r.status_code == 422
    assert (await harness.store.get(rec.id)).state == State.PENDING


async def test_body_limits(harness: Harness) -> None:
    rec, _ = await harness.hold()
    url = f"/api/calls/{rec.id}/approve"
    deep: Any = "x"
    for _ in range(900):
        deep = [deep]
    body = json.dumps({"args_digest": rec.args_digest, "arguments": {"order_id": deep}})
    r = await harness.client.post(url, headers={**harness.bearer, "content-type": "application/json"}, content=body)
    assert r.status_code == 422
    huge = json.dumps({"args_digest": rec.args_digest, "arguments": {"email": "a" * 1_200_000}})
    r = await harness.client.post(url, headers={**harness.bearer, "content-type": "application/json"}, content=huge)
    assert r.status_code == 413
    r = await harness.client.post(url, headers={**harness.bearer, "content-type": "text/plain"}, content="{}")
    assert r.status_code == 415
    r = await harness.client.post(url, headers={**harness.bearer, "content-type": "application/json"}, content="{nope")
    assert r.status_code == 422
    assert (await harness.store.get(rec.id)).state == State.PENDING


class _BrokenGate(Gate):
    async def decide(self, call_id: str, decision: Decision) -> Any:
        raise StoreError("database is locked")


async def test_store_unavailable_is_503(harness: Harness) -> None:
    rec, _ = await harness.hold()
    broken = _BrokenGate(harness.store, harness.policy, harness.clock)
    app = build_app(
        store=harness.store, gate=broken, policy=harness.policy, token=harness.token, port=8765, clock=harness.clock
    )
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://127.0.0.1:8765") as c:
        r = await c.post(f"/api/calls/{rec.id}/approve", headers=harness.bearer, json={"args_digest": rec.args_digest})
    assert r.status_code == 503
    assert r.json()["error"] == "store_unavailable"
    assert "locked" not in r.text  # no internals leak
    assert (await harness.store.get(rec.id)).state == State.PENDING


async def test_explain_matches_policy(harness: Harness) -> None:
    body = {"upstream": "orderdesk", "tool": "issue_refund", "arguments": refund_args()}
    r = await harness.client.post("/api/explain", headers=harness.bearer, json=body)
    assert r.status_code == 200
    assert r.json() == Policy(harness.policy.config).evaluate("orderdesk", "issue_refund", refund_args()).to_json()
    rules = await harness.client.get("/api/rules", headers=harness.bearer)
    assert [r["name"] for r in rules.json()["rules"]] == RULE_NAMES
    assert "command" not in rules.text  # upstream definitions (env, headers) are not exposed


async def test_openapi_is_served(harness: Harness) -> None:
    r = await harness.client.get("/api/openapi.json", headers=harness.bearer)
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.")
    for path in ("/api/calls", "/api/calls/{id}", "/api/calls/{id}/approve", "/api/calls/{id}/reject", "/api/events",
                 "/api/stats", "/api/audit"):  # fmt: skip
        assert path in spec["paths"]


async def test_the_principal_is_shown_on_the_card_and_in_the_queue(harness: Harness) -> None:
    client = {"name": "py-agent", "version": "1", "principal": "agent:ci-bot"}
    rec, _ = await harness.hold(new_call(harness.policy, client=client))
    legacy, _ = await harness.hold(new_call(harness.policy, arguments=refund_args(order_id="1")))
    r = await harness.client.get(f"/api/calls/{rec.id}", headers=harness.bearer)
    assert r.status_code == 200 and r.json()["client"]["principal"] == "agent:ci-bot"
    snap = await live_snapshot(harness.app.state.gk)
    assert {c["id"]: c["principal"] for c in snap["pending"]} == {rec.id: "agent:ci-bot", legacy.id: None}
