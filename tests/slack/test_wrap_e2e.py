"""The whole path through real processes: a ``wrap`` process (started as a client starts it) holds a call for
a real MCP server, posts the Slack message to the local stand-in, serves the page with the Slack endpoint; a
signed click over HTTP approves it, the upstream runs it once, and the message is rewritten."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from harness import FEATURE_SERVER, call_log, gatekeeper, wrap_params
from standin import StandIn, serving

from .rig import ALICE, CHANNEL, SECRET, TEAM, button, interaction, signed

pytestmark = pytest.mark.anyio

LINK = re.compile(r"(http://127\.0\.0\.1:(\d+))/login\?token=")
SHORT = re.compile(r"HELD ([0-9a-f]{8}) .*(http://127\.0\.0\.1:\d+/c/[0-9a-f]{12}\.[A-Za-z0-9_-]{16})")


async def test_a_signed_click_approves_a_call_a_wrap_process_holds(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    async with serving(StandIn()) as slack:
        cfg = tmp_path / "gk.toml"
        cfg.write_text(
            f'[ui]\nautostart = true\nport = 0\n[notify.slack]\nchannel = "{CHANNEL}"\napi_url = "{slack.url}/api"\n'
            f'[[notify.slack.reviewers]]\nteam = "{TEAM}"\nuser = "{ALICE}"\nreviewer = "alice"\n'
            '[[rules]]\nname = "notes"\ntool = "write_note"\ngate = "hard"\nrisk = "medium"\n'
        )
        env = {"MCP_GATEKEEPER_SLACK_BOT_TOKEN": "xoxb-e2e-stand-in", "MCP_GATEKEEPER_SLACK_SIGNING_SECRET": SECRET}
        params = wrap_params(home, cfg, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)], **env)
        with anyio.fail_after(60):
            async with gatekeeper(params) as (client, watcher), anyio.create_task_group() as tg:
                base = (await watcher.wait_for(LINK)).group(1)
                results: list[object] = []

                async def call() -> None:
                    results.append(await client.call_tool("write_note", {"path": "e2e.txt", "content": "hi"}))

                tg.start_soon(call)
                held = await watcher.wait_for(SHORT)
                assert held.group(2).startswith(base + "/c/")  # the stderr line's link leads to the page served
                await slack.wait_for(lambda s: bool(s.slack("chat.postMessage")))
                message = slack.slack("chat.postMessage")[0].json()
                value = button(message, "gk_approve")["value"]
                assert json.loads(value)["c"].startswith(held.group(1))
                ts = json.loads(slack.answers[0])["ts"]
                async with httpx2.AsyncClient(base_url=base) as http:
                    # the wrap process keeps where the message went right after Slack answers: until it has,
                    # a click is told "not the gatekeeper's message" (and decides nothing); each try is a new
                    # click (Slack stamps each with its own action_ts), since the same request twice is a replay
                    for n in range(200):
                        told = len(slack.slack("chat.postEphemeral"))
                        body = interaction("gk_approve", value, ts=ts, action_ts=f"1700000001.{n:06d}")
                        answer = await http.post("/slack/interactions", content=body, headers=signed(body))
                        assert answer.status_code == 200
                        await slack.wait_for(
                            lambda s, told=told: (
                                bool(s.slack("chat.update")) or len(s.slack("chat.postEphemeral")) > told
                            )
                        )
                        if slack.slack("chat.update"):
                            break
            assert not results[0].is_error  # type: ignore[attr-defined]
    assert [c["arguments"] for c in call_log(log) if c["tool"] == "write_note"] == [
        {"path": "e2e.txt", "content": "hi"}
    ]
    assert "Approved by slack:alice (slack)" in json.dumps(slack.slack("chat.update")[0].json()["blocks"])
