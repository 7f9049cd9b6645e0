"""Slack's buttons, end to end: a real proxy holds a call for a real MCP server, the Slack channel posts the
message to a local stand-in for Slack's Web API, and signed requests to the page's ``/slack/interactions``
decide it, or are refused with the store unchanged."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_gatekeeper.models import State
from mcp_gatekeeper.slack.message import APPROVE, OPEN, REJECT, ButtonValue

from .rig import ALICE, BOT_TOKEN, CHANNEL, MALLORY, TEAM, Rig, button, interaction, rig, signed, submission

pytestmark = pytest.mark.anyio

ARGS = {"path": "notes/plan.txt", "content": "ship it <!channel> & `rm -rf`"}


async def _held(r: Rig, c: Client, results: list[Any], tg: anyio.abc.TaskGroup) -> tuple[str, dict[str, Any]]:
    """Start a held call; its id and the Slack message posted for it."""

    async def call() -> None:
        results.append(await c.call_tool("write_note", ARGS))

    tg.start_soon(call)
    [message] = await r.posted(1)
    value = ButtonValue.decode(button(message, APPROVE)["value"])
    assert value is not None
    return value.call_id, message


async def _snapshot(r: Rig, call_id: str) -> tuple[str, int]:
    rec = await r.store.get(call_id)
    return rec.state, len(await r.store.audit_events(call_id=call_id))


async def test_a_signed_click_approves_and_the_upstream_runs_the_call_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    results: list[Any] = []
    async with rig(tmp_path) as r, Client(r.proxy.build_server(), mode="legacy") as c:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                call_id, message = await _held(r, c, results, tg)
                posted = r.slack.slack("chat.postMessage")[0]
                assert posted.headers["authorization"] == f"Bearer {BOT_TOKEN}"
                assert message["channel"] == CHANNEL
                rec = await r.store.get(call_id)
                assert button(message, APPROVE)["value"] == json.dumps(
                    {"c": call_id, "d": rec.args_digest}, separators=(",", ":")
                )
                assert button(message, OPEN)["url"] == r.links.url(call_id)
                text = json.dumps(message["blocks"])
                assert "<!channel>" not in text and "&lt;!channel&gt;" in text  # no mention from an argument
                assert "`rm" not in text  # a backtick cannot close the code block

                ts = (await r.store.notify_link(call_id, "slack")).ref  # type: ignore[union-attr]
                body = interaction(APPROVE, button(message, APPROVE)["value"], ts=ts)
                started = time.monotonic()
                answer = await r.click(body, signed(body))
                assert answer.status_code == 200
                assert time.monotonic() - started < 3.0  # Slack waits three seconds for the answer
            [result] = results
            assert not result.is_error
            assert r.upstream_calls("write_note") == [ARGS]  # exactly once, as shown
            done = await r.store.get(call_id)
            assert done.decided_by == "slack:alice" and done.channel == "slack"
            [approved] = [e for e in await r.store.audit_events(call_id=call_id) if e.event == "approved"]
            assert approved.detail["evidence"] == {"slack_team": TEAM, "slack_user": ALICE}
            assert approved.channel == "slack" and approved.actor == "slack:alice"
            await r.slack.wait_for(lambda s: bool(s.slack("chat.update")))
            update = r.slack.slack("chat.update")[0].json()
            assert update["ts"] == ts and update["channel"] == CHANNEL
            assert "Approved by slack:alice (slack)" in json.dumps(update["blocks"], ensure_ascii=False)
            assert not [b for b in update["blocks"] if b["type"] == "actions"]  # no buttons once decided
    assert BOT_TOKEN not in caplog.text


async def test_refused_requests_leave_the_call_pending_and_the_store_unchanged(tmp_path: Path) -> None:
    results: list[Any] = []
    async with rig(tmp_path) as r, Client(r.proxy.build_server(), mode="legacy") as c:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                call_id, message = await _held(r, c, results, tg)
                before = await _snapshot(r, call_id)
                link = await r.store.notify_link(call_id, "slack")
                assert link is not None
                value = button(message, APPROVE)["value"]
                good = interaction(APPROVE, value, ts=link.ref)

                # not Slack's: another secret, a body changed after signing, too old, too new, no headers
                for body, headers in (
                    (good, signed(good, secret="not-the-signing-secret")),
                    (good.replace(b"U0ALICE", b"U0ALICF"), signed(good)),
                    (good, signed(good, at=time.time() - 301)),
                    (good, signed(good, at=time.time() + 301)),
                    (good, {"content-type": "application/x-www-form-urlencoded"}),
                ):
                    answer = await r.click(body, headers)
                    assert answer.status_code == 401
                    assert await _snapshot(r, call_id) == before

                # Slack's, but the clicker may not decide: unknown user, or a listed id in another workspace
                for user, team in ((MALLORY, TEAM), (ALICE, "T0OTHER")):
                    body = interaction(APPROVE, value, ts=link.ref, user=user, team=team)
                    assert (await r.click(body, signed(body))).status_code == 200
                    assert await _snapshot(r, call_id) == before
                told = r.slack.slack("chat.postEphemeral")
                assert [t.json()["user"] for t in told] == [MALLORY, ALICE]
                assert all("not on this gatekeeper's list of reviewers" in t.json()["text"] for t in told)

                # a stale button: the digest of other arguments
                stale = ButtonValue(call_id, "0" * 64).encode()
                body = interaction(APPROVE, stale, ts=link.ref)
                assert (await r.click(body, signed(body))).status_code == 200
                assert await _snapshot(r, call_id) == before
                assert "not the ones this message shows" in r.slack.slack("chat.postEphemeral")[-1].json()["text"]

                # a button of this message naming another call, and this call's button on another message
                for body in (
                    interaction(APPROVE, ButtonValue("f" * 26, "0" * 64).encode(), ts=link.ref),
                    interaction(APPROVE, value, ts="1700000000.999999"),
                    interaction(APPROVE, value, ts=link.ref, channel="C0ELSEWHERE"),
                ):
                    assert (await r.click(body, signed(body))).status_code == 200
                    assert await _snapshot(r, call_id) == before

                # Reject opens a dialog (nothing decided yet); its submission decides, once: the same signed
                # request again is a replay, even inside the window
                reject = interaction(REJECT, value, ts=link.ref)
                assert (await r.click(reject, signed(reject))).status_code == 200
                assert await _snapshot(r, call_id) == before
                [opened] = [x.json() for x in r.slack.slack("views.open")]
                done = submission(opened["view"], "  not on a Friday  ")
                headers = signed(done)
                assert (await r.click(done, headers)).status_code == 200
                after = await _snapshot(r, call_id)
                assert after[0] == State.REJECTED
                assert (await r.store.get(call_id)).reason == "not on a Friday"
                assert (await r.click(done, headers)).status_code == 401
                assert await _snapshot(r, call_id) == after
            [result] = results
            assert result.is_error  # rejected
    assert r.upstream_calls("write_note") == []


async def test_a_click_on_a_call_decided_elsewhere_is_refused_and_said_in_slack(tmp_path: Path) -> None:
    results: list[Any] = []
    async with rig(tmp_path) as r, Client(r.proxy.build_server(), mode="legacy") as c:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                call_id, message = await _held(r, c, results, tg)
                rec = await r.store.get(call_id)
                page = await r.web.post(
                    f"/api/calls/{call_id}/approve", headers=r.bearer, json={"args_digest": rec.args_digest}
                )
                assert page.status_code == 200
            decided = await _snapshot(r, call_id)
            link = await r.store.notify_link(call_id, "slack")
            assert link is not None
            body = interaction(REJECT, button(message, REJECT)["value"], ts=link.ref)
            assert (await r.click(body, signed(body))).status_code == 200
            assert await _snapshot(r, call_id) == decided
            await r.slack.wait_for(lambda s: bool(s.slack("chat.postEphemeral")))
            said = r.slack.slack("chat.postEphemeral")[0].json()
            assert said["user"] == ALICE and said["channel"] == CHANNEL
            assert "already" in said["text"] and "api:" in said["text"]
    assert r.upstream_calls("write_note") == [ARGS]


async def test_the_endpoint_keeps_the_host_check_and_needs_no_cookie(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        body = interaction(APPROVE, "{}", ts="1.2")
        # DNS rebinding: a signed request under another Host name is still refused before it is read
        refused = await r.web.post(
            "/slack/interactions", content=body, headers={**signed(body), "host": "evil.example"}
        )
        assert refused.status_code == 421
        # a browser's cross-site form post carries no Slack signature: refused by the signature check
        forged = await r.web.post(
            "/slack/interactions",
            content=body,
            headers={"content-type": "application/x-www-form-urlencoded", "origin": "http://evil.example"},
        )
        assert forged.status_code == 401
        # the exemption is this one path: the page's own API still wants the same origin
        api = await r.web.post("/api/logout", headers={"origin": "http://evil.example"})
        assert api.status_code in (401, 403)


async def test_the_reject_dialog_is_checked_like_a_click(tmp_path: Path) -> None:
    results: list[Any] = []
    async with rig(tmp_path) as r, Client(r.proxy.build_server(), mode="legacy") as c:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                call_id, message = await _held(r, c, results, tg)
                link = await r.store.notify_link(call_id, "slack")
                assert link is not None
                value = button(message, REJECT)["value"]
                click = interaction(REJECT, value, ts=link.ref)
                assert (await r.click(click, signed(click))).status_code == 200
                [opened] = [x.json() for x in r.slack.slack("views.open")]
                assert opened["trigger_id"] == "1.2.3"
                view = opened["view"]
                assert view["callback_id"] == "gk_reject_reason" and view["type"] == "modal"
                assert json.loads(view["private_metadata"]) == {"v": value, "ch": CHANNEL, "ts": link.ref}
                before = await _snapshot(r, call_id)

                # someone not on the list submits (a dialog opened for another user, or a forged payload)
                odd = submission(view, "x", user=MALLORY)
                refused = await r.click(odd, signed(odd))
                assert refused.status_code == 200 and refused.json()["response_action"] == "errors"
                assert "not on this gatekeeper's list" in refused.json()["errors"]["reason"]
                # a dialog whose metadata names another message, or a stale digest
                for meta in (
                    {"v": value, "ch": CHANNEL, "ts": "1.1"},
                    {"v": ButtonValue(call_id, "0" * 64).encode(), "ch": CHANNEL, "ts": link.ref},
                ):
                    bad = submission({**view, "private_metadata": json.dumps(meta)}, "x")
                    answer = await r.click(bad, signed(bad))
                    assert answer.json()["response_action"] == "errors"
                assert await _snapshot(r, call_id) == before

                # the call is approved on the page while the dialog is open: its submission is refused
                rec = await r.store.get(call_id)
                page = await r.web.post(
                    f"/api/calls/{call_id}/approve", headers=r.bearer, json={"args_digest": rec.args_digest}
                )
                assert page.status_code == 200
                late = submission(view, "too late")
                answer = await r.click(late, signed(late))
                assert "already" in answer.json()["errors"]["reason"]
            assert (await r.store.get(call_id)).decided_by.startswith("api:")  # type: ignore[union-attr]
    assert r.upstream_calls("write_note") == [ARGS]


async def test_without_the_dialog_reject_still_rejects(tmp_path: Path) -> None:
    results: list[Any] = []
    async with rig(tmp_path) as r, Client(r.proxy.build_server(), mode="legacy") as c:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                call_id, message = await _held(r, c, results, tg)
                link = await r.store.notify_link(call_id, "slack")
                assert link is not None
                r.slack.script.append(
                    (200, {"content-type": "application/json"}, b'{"ok":false,"error":"expired_trigger_id"}')
                )
                click = interaction(REJECT, button(message, REJECT)["value"], ts=link.ref)
                assert (await r.click(click, signed(click))).status_code == 200
            done = await r.store.get(call_id)
            assert done.state == State.REJECTED and done.reason == "rejected in Slack"
            assert results[0].is_error
    assert r.upstream_calls("write_note") == []
