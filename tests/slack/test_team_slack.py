"""Slack on the approval service (team mode): a Slack member's click is the click of the reviewer account it is
mapped to (``users add --slack`` / ``users link-slack``), and goes through the same TeamDesk as the page:
groups, no self-review, and a quorum in which a click is one approval step, signed by the service.

A real proxy holds the call for a real MCP server and posts its message to the local stand-in for Slack's Web
API; the approval service's app (team mode, the Slack endpoint mounted as ``serve`` mounts it) answers the
signed clicks and the reviewers' page sessions.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest
from mcp import Client
from standin import StandIn, serving
from upstreams.feature_server import build_server

from mcp_gatekeeper import accounts
from mcp_gatekeeper.cli import main
from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import State
from mcp_gatekeeper.notify import Notifications
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.proxy import Proxy
from mcp_gatekeeper.serve import build_slack, short_links, slack_desk
from mcp_gatekeeper.signatures import DecisionKeys
from mcp_gatekeeper.slack.message import APPROVE, OPEN, REJECT, ButtonValue
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.team import TeamDesk
from mcp_gatekeeper.upstream import Upstream
from mcp_gatekeeper.web import build_app
from mcp_gatekeeper.webauth import load_or_create_token
from mcp_gatekeeper.webhttp import TeamSite

from .rig import ALICE, BOT_TOKEN, CHANNEL, MALLORY, SECRET, TEAM, interaction, signed

pytestmark = pytest.mark.anyio

PORT = 8767
BASE = f"http://127.0.0.1:{PORT}"
BOB, SELF = "U0BOB", "U0SELF"
PASSWORD = "a-long-enough-password"
ARGS = {"path": "notes/plan.txt", "content": "ship it"}


def _config(api_url: str) -> str:
    return f"""
[ui]
autostart = false
public_url = "https://gk.example.com"
[notify]
stderr = false
[notify.slack]
channel = "{CHANNEL}"
bot_token = "{BOT_TOKEN}"
signing_secret = "{SECRET}"
api_url = "{api_url}"
timeout = 2
[[rules]]
name = "notes need two"
tool = "write_note"
gate = "hard"
risk = "medium"
reviewers = ["ops"]
approvals = 2
[[rules]]
name = "echoes need a passkey"
tool = "echo"
gate = "hard"
risk = "medium"
confirm = "passkey"
"""


@dataclass
class Service:
    store: Store
    slack: StandIn
    web: httpx2.AsyncClient
    client: Client
    upstream: Any
    tg: anyio.abc.TaskGroup
    notifier: Any
    results: list[Any]
    finished: list[anyio.Event]
    clicks: int = 0

    async def held(self, tool: str = "write_note", arguments: dict[str, Any] | None = None) -> tuple[str, str]:
        """Start a held call; its id and the ts of the Slack message posted for it (once its link is kept)."""
        seen = len(self.slack.slack("chat.postMessage"))
        done = anyio.Event()
        self.finished.append(done)

        async def call() -> None:
            self.results.append(await self.client.call_tool(tool, arguments or ARGS))
            done.set()

        self.tg.start_soon(call)
        await self.slack.wait_for(lambda s: len(s.slack("chat.postMessage")) > seen)
        message = self.slack.slack("chat.postMessage")[seen].json()
        [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
        rec = await self.store.find(actions["block_id"].removeprefix("gk_"))
        while True:
            stored = self.notifier.posted
            if (link := await self.store.notify_link(rec.id, "slack")) is not None:
                return rec.id, link.ref
            await stored.wait()

    def message(self, ts: str) -> dict[str, Any]:
        for seen, body in zip(self.slack.requests, self.slack.answers, strict=False):
            if seen.path == "/api/chat.postMessage" and json.loads(body).get("ts") == ts:
                message: dict[str, Any] = seen.json()
                return message
        raise AssertionError(f"no message {ts}")

    async def click(self, call_id: str, ts: str, user: str, action: str = APPROVE) -> httpx2.Response:
        rec = await self.store.get(call_id)
        self.clicks += 1  # each click its own request (the same signed request twice is a replay)
        body = interaction(action, ButtonValue(call_id, rec.args_digest).encode(), ts=ts, user=user,
                           action_ts=f"1700000001.{self.clicks:06d}")  # fmt: skip
        return await self.web.post("/slack/interactions", content=body, headers=signed(body))

    def told(self) -> list[str]:
        return [str(t.json()["text"]) for t in self.slack.slack("chat.postEphemeral")]

    async def login(self, name: str) -> dict[str, str]:
        r = await self.web.post(
            "/login", data={"username": name, "password": PASSWORD},
            headers={"Origin": BASE, "Sec-Fetch-Site": "same-origin"},
        )  # fmt: skip
        assert r.status_code == 303, r.text
        key = r.headers["location"].partition("#key=")[2]
        return {"Cookie": r.headers["set-cookie"].split(";")[0], "X-Gatekeeper-Key": key, "Origin": BASE,
                "Sec-Fetch-Site": "same-origin"}  # fmt: skip


@asynccontextmanager
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    clock = SystemClock()
    home = tmp_path / "home"
    token = load_or_create_token(home)
    async with serving(StandIn()) as standin, httpx2.AsyncClient() as http:
        config = parse_config(_config(f"{standin.url}/api"))
        links = short_links(config, home)
        async with Store.open(home / "gk.db", clock) as store:
            await store.register_instance("service")
            for name, groups, slack in (("alice", ["ops"], [f"{TEAM}/{ALICE}"]), ("bob", ["ops"], [f"{TEAM}/{BOB}"]),
                                        ("carol", ["ops"], [])):  # fmt: skip
                await store.reviewers.add(
                    name, role="reviewer", groups=groups, principals=[], slack=slack,
                    password_hash=accounts.hash_password(PASSWORD), by="cli:root", channel="cli",
                )  # fmt: skip
            notifier = build_slack(config, http, store)
            assert notifier is not None
            policy = Policy(config)
            gate = Gate(
                store, policy, clock, notifier=Notifications([notifier], card_url=links), sweep_interval=0.05,
                keys=DecisionKeys.for_home(home),
            )  # fmt: skip
            desk = slack_desk(config, notifier, gate, links, clock, owner="service", poll=0.05)
            desk.team = TeamDesk(store, gate, policy)  # as serve wires it
            server = build_server(None)
            proxy = Proxy(config=config, policy=policy, gate=gate, clock=clock)
            up = Upstream("feat", None, proxy.hooks(), target=server)
            proxy.upstreams = {"feat": up}
            app = build_app(
                store=store, gate=gate, policy=policy, token=token, port=PORT, clock=clock, links=links, slack=desk,
                team=TeamSite(),
            )  # fmt: skip
            assert desk.follower is not None
            async with (
                gate.running(),
                up.running(),
                anyio.create_task_group() as tg,
                httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE) as web,
            ):
                await up.connect()
                await proxy.refresh_tools(up)
                tg.start_soon(desk.follower.run)
                async with Client(proxy.build_server(), mode="legacy") as client:
                    yield Service(store, standin, web, client, server, tg, notifier, [], [])
                    tg.cancel_scope.cancel()  # a call still held ends here, before its client closes


def _ran(s: Service) -> list[dict[str, Any]]:
    return [c["arguments"] for c in s.upstream.state.calls if c["tool"] == "write_note"]


async def test_a_mapped_member_approves_one_step_and_a_page_approval_completes_the_quorum(tmp_path: Path) -> None:
    async with service(tmp_path) as s:
        with anyio.fail_after(30):
            call_id, ts = await s.held()
            assert (await s.click(call_id, ts, ALICE)).status_code == 200
            tally = await s.store.approvals.tally(call_id)
            assert tally.approvers == ("alice",)
            assert (await s.store.get(call_id)).state == State.PENDING
            (step,) = await s.store.approvals.steps(call_id)
            assert (step.reviewer, step.channel, step.step) == ("alice", "slack", 1)
            assert step.signature is not None  # signed by the service, like the page's steps
            await s.slack.wait_for(lambda st: bool(st.slack("chat.postEphemeral")))
            assert "Your approval counts (1 of 2)" in s.told()[-1]
            # the same member again is refused: another reviewer must approve
            assert (await s.click(call_id, ts, ALICE)).status_code == 200
            await s.slack.wait_for(lambda st: len(st.slack("chat.postEphemeral")) >= 2)
            assert "another reviewer must approve" in s.told()[-1]
            assert (await s.store.approvals.tally(call_id)).approvers == ("alice",)

            carol = await s.login("carol")  # no Slack: the page
            r = await s.web.post(f"/api/calls/{call_id}/approve", json={"args_digest": tally.proposal_digest},
                                 headers=carol)  # fmt: skip
            assert r.status_code == 200 and r.json()["decided"] is True, r.text
            await s.finished[0].wait()  # the agent's answer: the call ran
        assert not s.results[0].is_error
        assert _ran(s) == [ARGS]  # once
        done = await s.store.get(call_id)
        assert done.decided_by == "carol"
        assert [(x.reviewer, x.channel) for x in await s.store.approvals.steps(call_id)] == [
            ("alice", "slack"),
            ("carol", "web"),
        ]


async def test_a_page_approval_then_a_slack_approval_forwards_once(tmp_path: Path) -> None:
    async with service(tmp_path) as s:
        with anyio.fail_after(30):
            call_id, ts = await s.held()
            carol = await s.login("carol")
            rec = await s.store.get(call_id)
            r = await s.web.post(f"/api/calls/{call_id}/approve", json={"args_digest": rec.args_digest}, headers=carol)
            assert r.status_code == 200 and r.json()["decided"] is False, r.text
            assert (await s.click(call_id, ts, BOB)).status_code == 200
            done = await s.store.get(call_id)
            assert done.state != State.PENDING and done.decided_by == "bob" and done.channel == "slack"
            await s.finished[0].wait()
            # a click after the decision changes nothing
            assert (await s.click(call_id, ts, ALICE)).status_code == 200
            await s.slack.wait_for(lambda st: bool(st.slack("chat.postEphemeral")))
            assert "already" in s.told()[-1]
        assert not s.results[0].is_error
        assert _ran(s) == [ARGS]


async def test_unmapped_and_self_reviewing_members_are_refused(tmp_path: Path) -> None:
    async with service(tmp_path) as s:
        with anyio.fail_after(30):
            call_id, ts = await s.held()
            before = len(await s.store.audit_events(call_id=call_id))
            assert (await s.click(call_id, ts, MALLORY)).status_code == 200  # linked to no account
            await s.slack.wait_for(lambda st: bool(st.slack("chat.postEphemeral")))
            assert "linked to no reviewer account" in s.told()[-1]
            assert len(await s.store.audit_events(call_id=call_id)) == before
            assert (await s.store.approvals.tally(call_id)).count == 0

            # a member mapped to an account linked to the agent's own principal: self-review
            principal = await s.store.principal_of(call_id)
            assert principal
            await s.store.reviewers.add(
                "selfie", role="reviewer", groups=["ops"], principals=[principal], slack=[f"{TEAM}/{SELF}"],
                password_hash=accounts.hash_password(PASSWORD), by="cli:root", channel="cli",
            )  # fmt: skip
            for action in (APPROVE, REJECT):
                assert (await s.click(call_id, ts, SELF, action)).status_code == 200
            await s.slack.wait_for(lambda st: len(st.slack("chat.postEphemeral")) >= 3)
            assert all(f"selfie is linked to {principal}" in t for t in s.told()[1:3]), s.told()
            refused = [e for e in await s.store.audit_events(call_id=call_id) if e.event == "decision_refused"]
            assert [(e.actor, e.channel, e.detail["why"]) for e in refused] == [("selfie", "slack", "self_review")] * 2
            assert (await s.store.get(call_id)).state == State.PENDING
            assert (await s.store.approvals.tally(call_id)).count == 0
        assert _ran(s) == []


async def test_a_passkey_rule_is_decided_in_the_page_only(tmp_path: Path) -> None:
    async with service(tmp_path) as s:
        with anyio.fail_after(30):
            call_id, ts = await s.held("echo", {"text": "hi"})
            message = s.message(ts)
            [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
            assert [e["action_id"] for e in actions["elements"]] == [OPEN]  # only "Open in page"
            assert (await s.click(call_id, ts, ALICE)).status_code == 200  # a forged Approve button
            await s.slack.wait_for(lambda st: bool(st.slack("chat.postEphemeral")))
            assert "needs your passkey" in s.told()[-1]
            assert (await s.store.get(call_id)).state == State.PENDING
            assert (await s.store.approvals.tally(call_id)).count == 0


async def test_users_link_slack_maps_one_member_to_one_account(
    home: Path, no_ui_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main([*argv, "--config", str(no_ui_config)])
        out = capsys.readouterr()
        return rc, out.out, out.err

    import io
    import sys

    old = sys.stdin
    try:
        sys.stdin = io.StringIO(PASSWORD + "\n")
        rc, out, err = await anyio.to_thread.run_sync(
            lambda: run("users", "add", "alice", "--slack", f"{TEAM}/{ALICE}", "--password-stdin")
        )
        assert rc == 0, err
        sys.stdin = io.StringIO(PASSWORD + "\n")
        assert (await anyio.to_thread.run_sync(lambda: run("users", "add", "bob", "--password-stdin")))[0] == 0
    finally:
        sys.stdin = old
    rc, out, err = await anyio.to_thread.run_sync(lambda: run("users", "link-slack", "bob", f"{TEAM}/{ALICE}"))
    assert rc != 0 and "linked to the account 'alice' already" in err, (out, err)
    rc, out, err = await anyio.to_thread.run_sync(lambda: run("users", "link-slack", "bob", "alice@example.com"))
    assert rc != 0 and "WORKSPACE/MEMBER" in err, (out, err)
    rc, out, err = await anyio.to_thread.run_sync(lambda: run("users", "link-slack", "bob", f"{TEAM}/{BOB}"))
    assert rc == 0 and f"bob: slack {TEAM}/{BOB}" in out, (out, err)
    rc, out, err = await anyio.to_thread.run_sync(lambda: run("users", "list"))
    assert f"slack={TEAM}/{ALICE}" in out and f"slack={TEAM}/{BOB}" in out, out
    rc, out, err = await anyio.to_thread.run_sync(
        lambda: run("users", "link-slack", "alice", f"{TEAM}/{ALICE}", "--unlink")
    )
    assert rc == 0 and "alice: slack (none)" in out, (out, err)
    async with Store.open(home / "gatekeeper.db", SystemClock()) as store:
        assert (await store.reviewers.by_slack(TEAM, BOB)).name == "bob"  # type: ignore[union-attr]
        assert await store.reviewers.by_slack(TEAM, ALICE) is None
        events = [e for e in await store.audit_events() if e.event.startswith("account_")]
    assert [(e.event, e.detail.get("slack")) for e in events] == [
        ("account_added", [f"{TEAM}/{ALICE}"]),
        ("account_added", None),
        ("account_slack_linked", f"{TEAM}/{BOB}"),
        ("account_slack_unlinked", f"{TEAM}/{ALICE}"),
    ]
