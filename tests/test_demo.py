"""The demo, as a user runs it: the scripted agent, ``wrap`` and the order desk, decided from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from harness import StderrWatcher, cli

from mcp_gatekeeper.demo import demo_config, run_agent

pytestmark = pytest.mark.anyio


async def test_demo_agent_continues_after_each_human_decision(home: Path) -> None:
    config = demo_config(home, port=None, ui=False)
    watcher = StderrWatcher()
    results: list[object] = []
    try:
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:

                async def agent() -> None:
                    results.extend(await run_agent(config, home, errlog=watcher.file))

                tg.start_soon(agent)
                refund = await watcher.held()  # the 119.99 refund: approved with a smaller amount
                edited = {"order_id": "8821", "amount": 100, "currency": "USD", "reason": "item arrived damaged"}
                await cli(home, "approve", refund, "--args", json.dumps(edited))
                email = await watcher.held()  # the customer email: approved as is
                await cli(home, "approve", email)
                delete = await watcher.held()  # the deletion: rejected
                await cli(home, "reject", delete, "--reason", "8825 is not a duplicate")
    finally:
        watcher.close()

    errors = [r.is_error for r in results]  # type: ignore[attr-defined]
    # list, lookup, small refund, big refund (modified), email, outside email (denied), delete (rejected)
    assert errors == [False, False, False, False, False, True, True]
    state = json.loads((home / "orderdesk.json").read_text())
    assert [r["amount"] for r in state["refunds"]] == [10, 100]
    assert [m["to"] for m in state["outbox"]] == ["dana.whitfield@example.com"]
    assert "8825" in state["orders"] and state["deleted"] == []
    rc, out, _ = await cli(home, "audit", "--verify")
    assert rc == 0, out
