"""The approval service (team mode) in-process: a real SQLite store, a running gate, the team app behind an
ASGI client, and reviewer accounts made through the store as ``users add`` makes them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest

from mcp_gatekeeper import accounts
from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.config import validate_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import CallRecord, NewCall, Outcome
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.web import build_app
from mcp_gatekeeper.webauth import load_or_create_token
from mcp_gatekeeper.webhttp import TeamSite

PORT = 8766
BASE = f"http://127.0.0.1:{PORT}"
PASSWORDS = {"alice": "alice-long-password", "bob": "bob-long-password", "carol": "carol-long-password",
             "dave": "dave-long-password"}  # fmt: skip

TEAM_CONFIG: dict[str, Any] = {
    "rules": [
        {"name": "big-refunds", "tool": "issue_refund", "when": {"amount": {"gt": 1000}}, "gate": "hard",
         "risk": "critical", "reviewers": ["payments"], "approvals": 2},
        {"name": "refunds", "tool": "issue_refund", "gate": "hard", "risk": "high", "reviewers": ["payments"]},
        {"name": "deletes", "tool": "delete_record", "gate": "hard", "risk": "high"},
        {"name": "own-notes", "tool": "write_note", "gate": "hard", "prevent_self_review": False},
    ]
}  # fmt: skip


def refund(amount: float, principal: str = "agent:ops-bot") -> NewCall:
    return NewCall(
        upstream="orderdesk", tool="issue_refund", arguments={"order_id": "A-17", "amount": amount}, gate="hard",
        risk="critical" if amount > 1000 else "high", rule="big-refunds" if amount > 1000 else "refunds",
        client={"principal": principal},
        input_schema={"type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}}},
    )  # fmt: skip


class Notified:
    """Tells the test the moment a call is held."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []
        self.event = anyio.Event()

    async def held(self, call: CallRecord) -> None:
        self.calls.append(call)
        self.event.set()
        self.event = anyio.Event()


@dataclass
class Held:
    """A call held at the gate in a task; its outcome once the gate returns."""

    outcomes: list[Outcome] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)

    async def outcome(self) -> Outcome:
        with anyio.fail_after(5):
            await self.done.wait()
        assert len(self.outcomes) == 1
        return self.outcomes[0]


@dataclass
class Team:
    store: Store
    gate: Gate
    clock: FakeClock
    client: httpx2.AsyncClient
    tg: anyio.abc.TaskGroup

    notifier: Notified

    async def hold(self, new: NewCall) -> tuple[CallRecord, Held]:
        """Hold ``new`` at the gate in a task (as a gatekeeper would)."""
        held = Held()
        seen, event = len(self.notifier.calls), self.notifier.event

        async def run() -> None:
            held.outcomes.append(await self.gate.hold(new, timeout=600))
            held.done.set()

        self.tg.start_soon(run)
        with anyio.fail_after(5):
            await event.wait()
        return self.notifier.calls[seen], held

    async def login(self, name: str, password: str | None = None, **headers: str) -> httpx2.Response:
        return await self.client.post(
            "/login", data={"username": name, "password": password or PASSWORDS[name]},
            headers={"Origin": BASE, "Sec-Fetch-Site": "same-origin", **headers},
        )  # fmt: skip

    async def session(self, name: str) -> dict[str, str]:
        """Log ``name`` in like a browser: the headers its page then sends."""
        r = await self.login(name)
        assert r.status_code == 303, r.text
        key = r.headers["location"].partition("#key=")[2]
        return {"Cookie": r.headers["set-cookie"].split(";")[0], "X-Gatekeeper-Key": key, "Origin": BASE,
                "Sec-Fetch-Site": "same-origin"}  # fmt: skip

    async def approve(self, headers: dict[str, str], call_id: str, digest: str, **body: Any) -> httpx2.Response:
        return await self.client.post(
            f"/api/calls/{call_id}/approve", json={"args_digest": digest, **body}, headers=headers
        )

    async def reject(self, headers: dict[str, str], call_id: str) -> httpx2.Response:
        return await self.client.post(f"/api/calls/{call_id}/reject", json={}, headers=headers)


async def add_accounts(store: Store) -> None:
    for name, role, groups, principals in (
        ("alice", "reviewer", ["payments"], ["agent:alice-bot"]),
        ("bob", "reviewer", ["payments"], []),
        ("carol", "reviewer", ["support"], []),
        ("dave", "admin", [], []),
    ):
        await store.reviewers.add(
            name, role=role, groups=groups, principals=principals, password_hash=accounts.hash_password(PASSWORDS[name]),
            by="cli:root", channel="cli",
        )  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def team(tmp_path: Path) -> AsyncIterator[Team]:
    clock = FakeClock()
    policy = Policy(validate_config(TEAM_CONFIG))
    home = tmp_path / "home"
    async with Store.open(home / "gatekeeper.db", clock) as store:
        await store.register_instance("test")
        await add_accounts(store)
        notified = Notified()
        gate = Gate(store, policy, clock, notifier=notified)
        app = build_app(
            store=store, gate=gate, policy=policy, token=load_or_create_token(home), port=PORT, clock=clock,
            team=TeamSite(),
        )  # fmt: skip
        async with (
            gate.running(),
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE) as client,
            anyio.create_task_group() as tg,
        ):
            yield Team(store, gate, clock, client, tg, notified)
            tg.cancel_scope.cancel()
