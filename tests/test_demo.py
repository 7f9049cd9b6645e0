"""The demo, as a user runs it: the scripted agent, ``wrap`` and the order desk, decided from the CLI."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import anyio
import httpx2
import pytest
from harness import StderrWatcher, cli

from mcp_gatekeeper.demo import STEPS, demo_config, demo_session, run_agent

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


class _Lines:
    """A text stream the demo writes to; the test waits on its lines (no polling)."""

    def __init__(self) -> None:
        self.text = ""
        self._send, self._recv = anyio.create_memory_object_stream[str](10_000)

    def write(self, s: str) -> int:
        self.text += s
        for line in s.splitlines():
            self._send.send_nowait(line)
        return len(s)

    def flush(self) -> None:
        pass

    async def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        async for line in self._recv:
            if m := pattern.search(line):
                return m
        raise AssertionError(f"no line matched {pattern.pattern!r}")


LINK = re.compile(r"approval page \(one-time login link\): (http://127\.0\.0\.1:\d+/login\?token=\S+)")
WAITS = re.compile(r"call ([0-9a-f]{8}) waits for your decision")


async def _logs_in(url: str) -> bool:
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        return (await http.get(url)).status_code == 303


async def test_demo_puts_a_fresh_login_link_beside_each_hold_and_on_enter(home: Path) -> None:
    """The link is next to the call that waits (not scrolled away with the start-up lines), each one logs in
    once, and a line on the demo's stdin (Enter) prints a new one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = demo_config(home, port=port, ui=True)
    out = _Lines()
    enter_r, enter_w = os.pipe()
    keys, enter = os.fdopen(enter_r, "r"), os.fdopen(enter_w, "w", buffering=1)
    results: list[object] = []
    try:
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:

                async def session() -> None:
                    results.extend(await demo_session(config, home, command="gk", out=out, keys=keys, steps=STEPS[3:4]))

                tg.start_soon(session)
                call = (await out.wait_for(WAITS)).group(1)
                first = (await out.wait_for(LINK)).group(1)
                assert f":{port}/" in first
                assert await _logs_in(first)
                assert not await _logs_in(first)  # one-time: the page refuses it the second time
                enter.write("\n")
                again = (await out.wait_for(LINK)).group(1)
                assert again != first and await _logs_in(again)
                await cli(home, "approve", call)
    finally:
        enter.close()
    assert [r.is_error for r in results] == [False]  # type: ignore[attr-defined]
