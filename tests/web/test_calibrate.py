"""The Calibrate view's API: suggestions with evidence and replay, shadow verdicts against humans, masking."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from mcp_gatekeeper.models import NewCall, State

from .conftest import Harness

pytestmark = pytest.mark.anyio


async def _seed(harness: Harness) -> None:
    now = harness.clock.now()
    rows: list[tuple[NewCall, State, dict[str, Any]]] = []
    for i in range(24):
        args = {"order_id": f"A-{i}", "amount": 10 + i, "currency": "EUR", "password": "correct-horse-battery"}
        new = NewCall(upstream="orderdesk", tool="issue_refund", arguments=args, gate="hard", risk="high",
                      rule="refunds", tooldef_hash="h1", shadow_action="allow", shadow_rule="cheap-refunds")  # fmt: skip
        extra = {
            "created_at": now - 3600 - i,
            "decided_at": now - 3000 - i,
            "decided_by": "web:alice",
            "channel": "web",
        }
        rows.append((new, State.FORWARDED, extra))
    new = NewCall(upstream="orderdesk", tool="issue_refund", arguments={"order_id": "B", "amount": 999, "currency": "USD"},
                  gate="hard", risk="high", rule="refunds", tooldef_hash="h1", shadow_action="allow")  # fmt: skip
    rows.append(
        (
            new,
            State.REJECTED,
            {"created_at": now - 100, "decided_at": now - 50, "decided_by": "web:bob", "channel": "web"},
        )
    )
    await harness.store.insert_history(rows)


async def test_the_calibrate_view_suggests_with_evidence_and_masks_secrets(harness: Harness) -> None:
    await _seed(harness)
    r = await harness.client.get("/api/calibrate?days=7", headers=harness.bearer)
    assert r.status_code == 200, r.text
    data = r.json()
    (s,) = data["suggestions"]
    assert (s["kind"], s["tool"], s["rule"]) == ("allow", "issue_refund", "refunds")
    assert s["evidence"]["decisions"] == 25
    assert s["evidence"]["reviewers"] == [
        {"reviewer": "web:alice", "decisions": 24},
        {"reviewer": "web:bob", "decisions": 1},
    ]
    assert s["masked"] is True
    assert "correct-horse-battery" not in s["toml"]
    rule = tomllib.loads(s["toml"])["rules"][0]  # still TOML
    assert rule["when"]["amount"] == {"gte": 10, "lte": 33}
    assert rule["when"]["currency"] == {"in": ["EUR"]}
    assert "order_id" not in rule["when"]
    assert s["replay"]["exit_code"] == 0  # the rejected refund (999 USD) stays held
    assert any("24 approved unchanged" in line for line in s["replay"]["summary"])
    shadow = data["shadow"]
    assert shadow["counts"] == {"allow": {"approved": 24, "rejected": 1}}
    assert [d["then"] for d in shadow["passed_rejected"]] == ["rejected"]


@pytest.mark.parametrize("days", ["0", "-1", "abc", "1000"])
async def test_a_bad_period_is_refused(harness: Harness, days: str) -> None:
    r = await harness.client.get(f"/api/calibrate?days={days}", headers=harness.bearer)
    assert r.status_code == 422


async def test_the_view_needs_a_login(harness: Harness) -> None:
    r = await harness.client.get("/api/calibrate")
    assert r.status_code == 401


async def test_the_card_shows_the_shadow_verdict(harness: Harness) -> None:
    await _seed(harness)
    (rec,) = await harness.store.list_calls(states=[State.REJECTED])
    got = (await harness.client.get(f"/api/calls/{rec.id}", headers=harness.bearer)).json()
    assert got["shadow"] == {"action": "allow", "rule": None, "reason": None}
