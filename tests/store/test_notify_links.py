"""The store's contract for what notification channels keep (``backend`` fixture, tests/store/conftest.py): the
message posted about a call, claimed for an update once its call is decided, and the request signatures
accepted once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.models import NewCall, NotifyLink, State

if TYPE_CHECKING:
    from store.conftest import BackendUnderTest  # the fixture's type only (pytest puts tests/ on the path)

pytestmark = pytest.mark.anyio


def _new(n: int) -> NewCall:
    return NewCall(upstream="ops", tool="deploy", arguments={"n": n}, gate="hard", risk="high")


async def test_a_message_is_claimed_for_its_update_once_its_call_is_decided(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as a, backend.open(clock) as b:
        first = await a.insert_call(_new(1), state=State.PENDING, deadline_at=clock.now() + 60)
        second = await a.insert_call(_new(2), state=State.PENDING, deadline_at=clock.now() + 60)
        for rec, ts in ((first, "1.1"), (second, "1.2")):
            await a.add_notify_link(NotifyLink(rec.id, "slack", "C1", ts))
        assert await b.notify_link(first.id, "slack") == NotifyLink(first.id, "slack", "C1", "1.1")
        assert await b.notify_link(first.id, "ntfy") is None
        assert await a.notify_links_open("slack") == (2, 0)
        assert await a.claim_notify_updates("slack", by="a") == []  # nothing decided yet

        await a.decide(
            first.id, approve=False, decided_by="cli:bob", channel="cli", reason="no", modified_arguments=None,
            expected_digest=None,
        )  # fmt: skip
        assert await b.notify_links_open("slack") == (2, 1)
        [(link, rec)] = await b.claim_notify_updates("slack", by="b")
        assert link.ref == "1.1" and rec.state == State.REJECTED and rec.decided_by == "cli:bob"
        assert await a.claim_notify_updates("slack", by="a") == []  # claimed by b
        clock.advance(61)
        [(taken, _)] = await a.claim_notify_updates("slack", by="a")  # b went quiet: a takes it over
        await a.settle_notify_link(taken, shown_state=None)  # the update failed: given back
        [(again, _)] = await b.claim_notify_updates("slack", by="b")
        await b.settle_notify_link(again, shown_state="rejected")
        assert await a.notify_link_shown(first.id, "slack") == "rejected"
        assert await a.notify_link_shown(second.id, "slack") is None
        assert await a.claim_notify_updates("slack", by="a") == []  # shown: never again
        assert await a.notify_links_open("slack") == (1, 0)

        # a second post (an escalation without a message) replaces the first, asking again
        await a.add_notify_link(NotifyLink(first.id, "slack", "C1", "2.0"))
        assert (await a.notify_link(first.id, "slack")).ref == "2.0"  # type: ignore[union-attr]
        assert await a.notify_link_shown(first.id, "slack") is None


async def test_a_signature_is_accepted_once_across_connections(backend: BackendUnderTest) -> None:
    clock = FakeClock()
    async with backend.open(clock) as a, backend.open(clock) as b:
        assert await a.first_sighting("v0=abc", keep=660)
        assert not await b.first_sighting("v0=abc", keep=660)
        assert await b.first_sighting("v0=def", keep=660)
        clock.advance(661)
        assert await a.first_sighting("v0=ghi", keep=660)  # and the old ones are forgotten on the way
        assert backend.raw("SELECT signature FROM seen_signatures ORDER BY signature") == [("v0=ghi",)]
