"""The message follows the call: decided in another process (the CLI), on the page, or by the timeout, it is
rewritten with the outcome; and Slack failing (down, 5xx, ``ok: false``, 429 with Retry-After) is logged and
never changes what happens to the call."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import Decision, NewCall, State
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store

from .rig import CHANNEL, Rig, rig

pytestmark = pytest.mark.anyio

NOTE = {"path": "a.txt", "content": "hello"}


def _update_text(r: Rig, i: int = -1) -> str:
    return json.dumps(r.slack.slack("chat.update")[i].json()["blocks"], ensure_ascii=False)


async def _hold_directly(r: Rig, timeout: float = 600.0) -> str:
    rec = await r.gate.start_hold(
        NewCall(
            upstream="feat", tool="write_note", arguments=NOTE, gate="hard", risk="high", rule="notes need a human"
        ),
        timeout=timeout,
    )
    await r.posted(1)
    return rec.id


async def test_a_decision_in_another_process_updates_the_message(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        with anyio.fail_after(20):
            call_id = await _hold_directly(r)
            # another process (as `mcp-gatekeeper reject` is): its own connection to the same database
            async with Store.open(tmp_path / "home" / "gk.db", SystemClock()) as other:
                cli_gate = Gate(other, Policy(r.config), SystemClock(), sweep_interval=None)
                await cli_gate.decide(
                    call_id, Decision(approve=False, decided_by="cli:bob", channel="cli", reason="not today")
                )
            await r.slack.wait_for(lambda s: bool(s.slack("chat.update")))
            update = r.slack.slack("chat.update")[0].json()
            link = await r.store.notify_link(call_id, "slack")
            assert link is not None and update["ts"] == link.ref and update["channel"] == CHANNEL
            assert "Rejected by cli:bob (cli): not today" in _update_text(r)
            assert update["text"] == "Rejected by cli:bob (cli): not today"
            assert await r.shown(call_id) == "rejected"
        assert len(r.slack.slack("chat.update")) == 1  # once shown, never again


async def test_a_decision_on_the_page_and_an_expiry_update_their_messages(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        with anyio.fail_after(20):
            first = await _hold_directly(r)
            rec = await r.store.get(first)
            approved = await r.web.post(
                f"/api/calls/{first}/approve", headers=r.bearer, json={"args_digest": rec.args_digest}
            )
            assert approved.status_code == 200
            await r.slack.wait_for(lambda s: len(s.slack("chat.update")) == 1)
            assert "Approved by api:" in _update_text(r, 0)

            second = await r.gate.start_hold(
                NewCall(upstream="feat", tool="write_note", arguments={"path": "b"}, gate="hard", risk="low"),
                timeout=0.2,
            )
            await r.slack.wait_for(lambda s: len(s.slack("chat.update")) == 2)
            assert (await r.store.get(second.id)).state == State.EXPIRED
            assert "Expired: no decision in time, so it was rejected" in _update_text(r, 1)


async def _approve_through_page(r: Rig, c: Client) -> tuple[str, Any]:
    results: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def call() -> None:
            results.append(await c.call_tool("write_note", NOTE))

        tg.start_soon(call)
        while not (pending := await r.store.list_calls(states=["pending"])):
            await anyio.lowlevel.checkpoint()
        rec = pending[0]
        answer = await r.web.post(
            f"/api/calls/{rec.id}/approve", headers=r.bearer, json={"args_digest": rec.args_digest}
        )
        assert answer.status_code == 200
    return rec.id, results[0]


@pytest.mark.parametrize(
    "reply",
    [
        (500, {"content-type": "text/plain"}, b"upstream connect error"),
        (200, {"content-type": "application/json"}, b'{"ok": false, "error": "channel_not_found"}'),
        (429, {"retry-after": "30", "content-type": "application/json"}, b'{"ok": false, "error": "ratelimited"}'),
    ],
    ids=["5xx", "not-ok", "rate-limited"],
)
async def test_a_failing_post_is_logged_and_the_call_is_decided_as_usual(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, reply: tuple[int, dict[str, str], bytes]
) -> None:
    async with rig(tmp_path) as r, Client(r.proxy.build_server(), mode="legacy") as c:
        r.slack.script.append(reply)
        with anyio.fail_after(20):
            call_id, result = await _approve_through_page(r, c)
        assert not result.is_error
        assert r.upstream_calls("write_note") == [NOTE]
        assert (await r.store.get(call_id)).state == State.FORWARDED
        assert await r.store.notify_link(call_id, "slack") is None
    assert "notifier slack failed for call" in caplog.text


async def test_slack_down_never_touches_the_call(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: every request to "Slack" is refused
    async with (
        rig(tmp_path, api_url=f"http://127.0.0.1:{port}/api") as r,
        Client(r.proxy.build_server(), mode="legacy") as c,
    ):
        with anyio.fail_after(20):
            call_id, result = await _approve_through_page(r, c)
        assert not result.is_error and r.upstream_calls("write_note") == [NOTE]
        assert (await r.store.get(call_id)).state == State.FORWARDED
    assert "notifier slack failed" in caplog.text and "ConnectError" in caplog.text


async def test_a_rate_limited_update_is_retried_after_retry_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with rig(tmp_path) as r:
        with anyio.fail_after(20):
            call_id = await _hold_directly(r)
            r.slack.script.append((429, {"retry-after": "1"}, b'{"ok": false, "error": "ratelimited"}'))
            rec = await r.store.get(call_id)
            await r.gate.decide(
                call_id, Decision(approve=True, decided_by="web:me", channel="web", args_digest=rec.args_digest)
            )
            await r.slack.wait_for(lambda s: len(s.slack("chat.update")) == 2)  # refused once, then done
            assert (await r.store.get(call_id)).state == State.APPROVED  # the failure changed nothing
            assert await r.shown(call_id) == "approved"
    assert "could not update the message of call" in caplog.text and "retrying in 1 s" in caplog.text
