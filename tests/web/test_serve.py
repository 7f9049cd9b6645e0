"""``serve``: binding rules, a real socket, live events over SSE, and a clean stop."""

from __future__ import annotations

import json
import socket
from typing import Any

import anyio
import httpx2
import pytest

from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.web import serve
from mcp_gatekeeper.webauth import is_loopback

from .conftest import Harness, new_call, refund_args

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])  # noqa: S104 - must be refused
async def test_non_loopback_bind_is_refused(harness: Harness, host: str) -> None:
    with pytest.raises(ConfigError):
        await serve(harness.app, host=host, port=0, allow_remote=False)


def test_loopback_names() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "evil.test"))  # noqa: S104 - not bound


async def test_port_taken_raises_oserror(harness: Harness) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            await serve(harness.app, host="127.0.0.1", port=port, allow_remote=False)


async def _next_change(lines: Any) -> dict[str, Any]:
    event = None
    async for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event == "change":
            data: dict[str, Any] = json.loads(line.removeprefix("data: "))
            return data
    raise AssertionError("the event stream ended")


async def test_serve_streams_changes_and_stops_cleanly(harness: Harness) -> None:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            port = await tg.start(lambda task_status: serve(
                harness.app, host="127.0.0.1", port=0, allow_remote=False, task_status=task_status
            ))  # fmt: skip
            assert port > 0
            base = f"http://127.0.0.1:{port}"
            async with httpx2.AsyncClient(base_url=base, headers=harness.bearer, timeout=5) as client:
                assert (await client.get("/api/session")).status_code == 200
                async with client.stream("GET", "/api/events") as resp:
                    assert resp.status_code == 200
                    assert resp.headers["content-type"].startswith("text/event-stream")
                    lines = resp.aiter_lines()
                    first = await _next_change(lines)
                    assert first["pending"] == []
                    rec, holder = await harness.hold(new_call(harness.policy, arguments=refund_args(order_id="77")))
                    second = await _next_change(lines)
                    assert [c["id"] for c in second["pending"]] == [rec.id]
                    assert second["pending"][0]["summary"] == "Issue $750 refund to john@example.com for order #77"
                    r = await client.post(f"/api/calls/{rec.id}/reject", json={"reason": "live"})
                    assert r.status_code == 200
                    third = await _next_change(lines)
                    assert third["pending"] == []
                    await holder.outcome()
                    tg.cancel_scope.cancel()  # serve must stop even with this stream still open
