"""A seeded review history: a real SQLite store, time moved by hand, calls held and decided through the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.models import CallRecord, NewCall, State
from mcp_gatekeeper.store import Store

START = 1_800_000_000.0  # on the hour (UTC)
API_KEY = "sk-proj-" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe"
BEARER = "Bearer " + "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PASSWORD = "correct horse battery staple"
HOSTILE_TOOL = '<script>alert("t")</script>\u202e|`x`'
HOSTILE_REASON = '<img src="https://evil.test/x.png" onerror="alert(1)"> ]](javascript:alert(1)) | \u202egnp.exe'
HOSTILE_REVIEWER = "<b>mallory</b>\u200b"
REFUND_DEF: dict[str, Any] = {
    "name": "issue_refund",
    "description": "Refund an order to the customer's card.",
    "inputSchema": {"type": "object"},
}


def secret_args(order: str) -> dict[str, Any]:
    """Arguments with an API key, a password and a bearer token planted in them."""
    return {
        "order_id": order,
        "headers": {"Authorization": BEARER},
        "password": PASSWORD,
        "note": f"use key {API_KEY} for the gateway",
    }


@dataclass
class History:
    store: Store
    clock: FakeClock

    async def held(
        self,
        *,
        rule: str | None,
        decision: str,
        wait: float,
        reviewer: str = "alice",
        channel: str = "web",
        tool: str = "issue_refund",
        upstream: str = "orderdesk",
        arguments: dict[str, Any] | None = None,
        modified: dict[str, Any] | None = None,
        reason: str | None = None,
        escalate: bool = False,
        tooldef_hash: str | None = "h-refund-1",
        gap: float = 5.0,
    ) -> CallRecord:
        """A call held by ``rule``, decided ``wait`` seconds later (``expired``: it ran out of time)."""
        new = NewCall(
            upstream=upstream, tool=tool, arguments=arguments or {"order_id": "1", "amount": 5}, gate="hard",
            risk="high", rule=rule, tooldef_hash=tooldef_hash, summary=f"Refund order {(arguments or {}).get('order_id', '1')}",
            input_schema={"type": "object"}, agent_reason="the customer asked",
        )  # fmt: skip
        rec = await self.store.insert_call(new, state=State.PENDING, deadline_at=self.clock.now() + 3600)
        if escalate:
            await self.store.sweeps.claim_escalation(
                rec.id, level=1, deadline_at=None, escalate_at=None, channels=["stderr"]
            )
        self.clock.advance(wait)
        if decision == "expired":
            out = await self.store.transition(
                rec.id, [State.PENDING], State.EXPIRED, event="expired", finished_at=self.clock.now()
            )
        else:
            out = await self.store.decide(
                rec.id, approve=decision != "rejected", decided_by=reviewer, channel=channel, reason=reason,
                modified_arguments=modified if decision == "modified" else None, expected_digest=None,
            )  # fmt: skip
        assert out is not None
        self.clock.advance(gap)
        return out

    async def passed(self, state: State, *, tool: str = "list_orders", upstream: str = "orderdesk") -> None:
        new = NewCall(
            upstream=upstream, tool=tool, arguments={}, gate="deny" if state == State.DENIED else "allow", risk="low"
        )
        await self.store.insert_call(new, state=state)


@pytest.fixture
async def history(tmp_path: Path) -> AsyncIterator[History]:
    clock = FakeClock(START)
    async with Store.open(tmp_path / "gk.db", clock) as store:
        await store.register_instance("test")
        await store.check_pins("orderdesk", {"issue_refund": ("h-refund-1", REFUND_DEF)})
        yield History(store, clock)
