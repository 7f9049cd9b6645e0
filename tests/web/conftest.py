"""Shared harness for the web tests: a real SQLite store, a running gate, the app behind an ASGI client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest
from starlette.applications import Starlette

from mcp_gatekeeper.clock import Clock, FakeClock
from mcp_gatekeeper.config import validate_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import CallRecord, NewCall, Outcome
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.web import build_app
from mcp_gatekeeper.webauth import load_or_create_token, mint_login_code

PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"

REFUND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string", "description": "The order to refund"},
        "amount": {"type": "number", "minimum": 0, "maximum": 1000},
        "currency": {"type": "string", "enum": ["USD", "EUR"]},
        "email": {"type": "string"},
        "notify": {"type": "boolean"},
    },
    "required": ["order_id", "amount"],
    "additionalProperties": False,
}

CONFIG: dict[str, Any] = {
    "upstreams": {"orderdesk": {"command": "orderdesk"}},
    "rules": [
        {
            "name": "refunds",
            "upstream": "orderdesk",
            "tool": "issue_refund",
            "gate": "hard",
            "risk": "high",
            "summary": "Issue ${amount} refund to {email} for order #{order_id}",
            "effects": {
                "approve": "The customer's card is credited; the money leaves the shop.",
                "reject": "No money moves; the agent is told the refund was refused.",
                "reversible": False,
            },
            "timeout": "10m",
        },
        {"name": "no-drops", "tool": "drop_*", "gate": "deny", "reason": "dropping tables is never allowed"},
        {
            "name": "no-prod-deletes",
            "tool": "delete_record",
            "when": {"id": {"glob": "prod-*"}},
            "gate": "deny",
            "reason": "production records are never deleted by an agent",
        },
        {"name": "deletes", "tool": "delete_record", "gate": "hard", "risk": "critical"},
    ],
}


def refund_args(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"order_id": "8821", "amount": 750, "currency": "USD", "email": "john@example.com"}
    args.update(over)
    return args


def new_call(
    policy: Policy, tool: str = "issue_refund", arguments: dict[str, Any] | None = None, **over: Any
) -> NewCall:
    """A NewCall as the proxy would build it: the policy's verdict plus what the client said."""
    args = refund_args() if arguments is None else arguments
    v = policy.evaluate("orderdesk", tool, args)
    fields: dict[str, Any] = {
        "upstream": "orderdesk",
        "tool": tool,
        "arguments": args,
        "gate": v.gate,
        "risk": v.risk,
        "rule": v.rule,
        "summary": v.summary,
        "effects": dict(v.effects),
        "reasons": v.reasons,
        "agent_reason": "The customer reported a damaged item and asked for their money back.",
        "agent_confidence": 0.82,
        "client": {"name": "Claude Desktop", "version": "1.2", "session": "s-1"},
        "input_schema": REFUND_SCHEMA if tool == "issue_refund" else {"type": "object"},
    }
    fields.update(over)
    return NewCall(**fields)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingNotifier:
    """Tells the test the moment a call is held (instead of polling the store)."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []
        self.event = anyio.Event()

    async def held(self, call: CallRecord) -> None:
        self.calls.append(call)
        self.event.set()
        self.event = anyio.Event()


@dataclass
class Holder:
    """A client request held at the gate, in a task; ``outcome`` is set once it returns."""

    outcomes: list[Outcome] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)

    async def run(self, gate: Gate, new: NewCall, timeout: float) -> None:
        self.outcomes.append(await gate.hold(new, timeout=timeout))
        self.done.set()

    async def outcome(self) -> Outcome:
        with anyio.fail_after(5):
            await self.done.wait()
        assert len(self.outcomes) == 1
        return self.outcomes[0]


@dataclass
class Harness:
    home: Path
    store: Store
    gate: Gate
    policy: Policy
    clock: Clock
    app: Starlette
    token: str
    notifier: RecordingNotifier
    tg: anyio.abc.TaskGroup
    client: httpx2.AsyncClient

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def hold(self, new: NewCall | None = None, timeout: float = 600.0) -> tuple[CallRecord, Holder]:
        holder = Holder()
        seen = len(self.notifier.calls)
        event = self.notifier.event
        self.tg.start_soon(holder.run, self.gate, new or new_call(self.policy), timeout)
        with anyio.fail_after(5):
            await event.wait()
        return self.notifier.calls[seen], holder

    async def login(self) -> str:
        """Log in like a browser; returns the Cookie header value for the session."""
        code = mint_login_code(self.token, now=self.clock.now())
        r = await self.client.get(f"/login?token={code}")
        assert r.status_code == 303
        return r.headers["set-cookie"].split(";")[0]

    async def browser_headers(self) -> dict[str, str]:
        return {"Cookie": await self.login(), "Sec-Fetch-Site": "same-origin", "Origin": BASE}


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    clock = FakeClock()
    policy = Policy(validate_config(CONFIG))
    home = tmp_path / "home"
    token = load_or_create_token(home)
    notifier = RecordingNotifier()
    async with Store.open(home / "gatekeeper.db", clock) as store:
        await store.register_instance("test")
        gate = Gate(store, policy, clock, notifier=notifier)
        app = build_app(store=store, gate=gate, policy=policy, token=token, port=PORT, clock=clock)
        transport = httpx2.ASGITransport(app=app)
        async with (
            gate.running(),
            httpx2.AsyncClient(transport=transport, base_url=BASE) as client,
            anyio.create_task_group() as tg,
        ):
            yield Harness(home, store, gate, policy, clock, app, token, notifier, tg, client)
            tg.cancel_scope.cancel()
