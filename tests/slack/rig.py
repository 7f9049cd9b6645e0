"""One gatekeeper in process for the Slack tests: a real store, gate and proxy in front of a real MCP server,
the Slack channel and its follower (built by serve's own helpers) talking to a local stand-in for Slack's
Web API, and the approval page (with the Slack endpoint) behind an ASGI client."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx2
from standin import StandIn, serving
from upstreams.feature_server import FeatureServer, build_server

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import GatekeeperConfig, parse_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.links import Links
from mcp_gatekeeper.notify import Notifications
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.proxy import Proxy
from mcp_gatekeeper.serve import build_slack, short_links, slack_desk
from mcp_gatekeeper.slack.interactions import SlackDesk
from mcp_gatekeeper.slack.signature import sign
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.upstream import Upstream
from mcp_gatekeeper.web import build_app
from mcp_gatekeeper.webauth import load_or_create_token

PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"
SECRET = "8f14e45fceea167a5a36dedd4bea2543"
BOT_TOKEN = "xoxb-0000-test-bot-token-not-real"
TEAM, ALICE, MALLORY = "T0TEAM", "U0ALICE", "U0MALLORY"
CHANNEL = "C0GATE"


def config_text(api_url: str) -> str:
    return f"""
[ui]
autostart = false
[notify]
stderr = false
[notify.slack]
channel = "{CHANNEL}"
bot_token = "{BOT_TOKEN}"
signing_secret = "{SECRET}"
api_url = "{api_url}"
timeout = 2
[[notify.slack.reviewers]]
team = "{TEAM}"
user = "{ALICE}"
reviewer = "alice"
[[rules]]
name = "notes need a human"
tool = "write_note"
gate = "hard"
risk = "high"
timeout = "10m"
summary = "Write {{path}}"
"""


@dataclass
class Rig:
    config: GatekeeperConfig
    store: Store
    gate: Gate
    proxy: Proxy
    upstream: FeatureServer
    slack: StandIn
    desk: SlackDesk
    links: Links
    web: httpx2.AsyncClient
    bearer: dict[str, str]

    def upstream_calls(self, tool: str) -> list[dict[str, Any]]:
        return [c["arguments"] for c in self.upstream.state.calls if c["tool"] == tool]

    async def posted(self, n: int = 1) -> list[dict[str, Any]]:
        """The first ``n`` chat.postMessage bodies (waiting for them)."""
        await self.slack.wait_for(lambda s: len(s.slack("chat.postMessage")) >= n)
        bodies = [r.json() for r in self.slack.slack("chat.postMessage")[:n]]
        assert self.desk.follower is not None
        notifier = self.desk.follower.notifier
        ids = [json.loads(button(b, "gk_approve")["value"])["c"] for b in bodies]
        while True:  # and until the notifier has kept where each message went
            stored = notifier.posted
            if all([await self.store.notify_link(i, "slack") for i in ids]):
                return bodies
            await stored.wait()

    async def shown(self, call_id: str) -> str | None:
        """The state a call's message was last rewritten to show, once it has been (waiting for the follower)."""
        assert self.desk.follower is not None
        while True:
            updated = self.desk.follower.updated
            if (shown := await self.store.notify_link_shown(call_id, "slack")) is not None:
                return shown
            await updated.wait()

    async def click(self, body: bytes, headers: dict[str, str]) -> httpx2.Response:
        return await self.web.post("/slack/interactions", content=body, headers=headers)


def button(message: dict[str, Any], action: str) -> dict[str, Any]:
    [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
    [found] = [e for e in actions["elements"] if e["action_id"] == action]
    return found


def interaction(
    action: str,
    value: str,
    *,
    ts: str,
    user: str = ALICE,
    team: str = TEAM,
    channel: str = CHANNEL,
    action_ts: str = "1700000001.000001",
) -> bytes:
    """A ``block_actions`` payload as Slack sends it (the fields the gatekeeper reads, and a few it does not)."""
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": "someone", "team_id": team},
        "api_app_id": "A0APP",
        "team": {"id": team, "domain": "example"},
        "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
        "channel": {"id": channel, "name": "approvals"},
        "trigger_id": "1.2.3",
        "response_url": "https://hooks.slack.invalid/actions/never-used",
        "actions": [{"action_id": action, "block_id": "b", "value": value, "type": "button", "action_ts": action_ts}],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def submission(view: dict[str, Any], reason: str | None, *, user: str = ALICE, team: str = TEAM) -> bytes:
    """The ``view_submission`` Slack sends when the reject dialog (as opened by ``views.open``) is submitted."""
    payload = {
        "type": "view_submission",
        "team": {"id": team, "domain": "example"},
        "user": {"id": user, "username": "someone", "team_id": team},
        "view": {
            **view,
            "id": "V0VIEW",
            "state": {"values": {"reason": {"text": {"type": "plain_text_input", "value": reason}}}},
        },
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def signed(body: bytes, *, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    stamp = str(int(time.time() if at is None else at))
    return {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": stamp,
        "x-slack-signature": sign(secret, stamp, body),
    }


@asynccontextmanager
async def rig(tmp_path: Path, *, api_url: str | None = None) -> AsyncIterator[Rig]:
    """``api_url``: Slack's Web API elsewhere than the stand-in (a closed port: Slack is down)."""
    clock = SystemClock()
    home = tmp_path / "home"
    token = load_or_create_token(home)
    async with serving(StandIn()) as standin, httpx2.AsyncClient() as http:
        config = parse_config(config_text(api_url or f"{standin.url}/api"))
        links = short_links(config, home)
        async with Store.open(home / "gk.db", clock) as store:
            await store.register_instance("test")
            notifier = build_slack(config, http, store)
            assert notifier is not None
            notes = Notifications([notifier], card_url=links)
            gate = Gate(store, Policy(config), clock, notifier=notes, sweep_interval=0.05)
            # a short poll: the test does not wait a second for decisions made elsewhere
            desk = slack_desk(config, notifier, gate, links, clock, owner="test", poll=0.05)
            assert desk.follower is not None
            server = build_server(None)
            proxy = Proxy(config=config, policy=gate.policy, gate=gate, clock=clock)
            up = Upstream("feat", None, proxy.hooks(), target=server)
            proxy.upstreams = {"feat": up}
            app = build_app(
                store=store, gate=gate, policy=gate.policy, token=token, port=PORT, clock=clock, links=links, slack=desk
            )
            async with (
                gate.running(),
                up.running(),
                anyio.create_task_group() as tg,
                httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE) as web,
            ):
                await up.connect()
                await proxy.refresh_tools(up)
                tg.start_soon(desk.follower.run)
                yield Rig(
                    config, store, gate, proxy, server, standin, desk, links, web, {"Authorization": f"Bearer {token}"}
                )
                tg.cancel_scope.cancel()
