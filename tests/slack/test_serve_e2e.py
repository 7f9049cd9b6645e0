"""Slack on the approval service through real processes: ``users add --slack`` maps two Slack members to
reviewer accounts, ``serve`` answers Slack's buttons, a ``wrap`` process holds the agent's call (and posts its
message to the local stand-in for Slack's Web API). Two signed clicks by the two members are the two steps of
the quorum; the upstream runs the call once."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from harness import FEATURE_SERVER, ROOT, StderrWatcher, call_log, gatekeeper, gk_env, wrap_params
from standin import StandIn, serving

from .rig import ALICE, CHANNEL, SECRET, TEAM, button, interaction, signed

pytestmark = pytest.mark.anyio

SERVING = re.compile(r"approval service: (http://127\.0\.0\.1:\d+)/login")
BOB = "U0BOB"
ENV = {"MCP_GATEKEEPER_SLACK_BOT_TOKEN": "xoxb-e2e-stand-in", "MCP_GATEKEEPER_SLACK_SIGNING_SECRET": SECRET}


def _add(home: Path, cfg: Path, name: str, member: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gatekeeper", "users", "add", name, "--group", "ops", "--slack", f"{TEAM}/{member}",
         "--password-stdin", "--config", str(cfg)],
        input="a-long-enough-password\n", capture_output=True, text=True, env=gk_env(home, **ENV), cwd=str(ROOT),
        check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


async def test_two_mapped_members_complete_a_quorum_on_the_service(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    async with serving(StandIn()) as slack:
        cfg = tmp_path / "gk.toml"
        cfg.write_text(
            f'[ui]\nautostart = false\n[notify.slack]\nchannel = "{CHANNEL}"\napi_url = "{slack.url}/api"\n'
            '[[rules]]\nname = "notes"\ntool = "write_note"\ngate = "hard"\nrisk = "medium"\nreviewers = ["ops"]\n'
            "approvals = 2\n"
        )
        _add(home, cfg, "alice", ALICE)
        _add(home, cfg, "bob", BOB)
        params = wrap_params(home, cfg, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)], **ENV)
        service_err = StderrWatcher()
        try:
            with anyio.fail_after(90):
                async with (
                    await anyio.open_process(
                        [sys.executable, "-m", "mcp_gatekeeper", "serve", "--port", "0", "--config", str(cfg)],
                        env=gk_env(home, **ENV), cwd=str(ROOT), stderr=service_err.file,
                    ) as service,
                    gatekeeper(params) as (client, _watcher),
                    anyio.create_task_group() as tg,
                ):  # fmt: skip
                    base = (await service_err.wait_for(SERVING)).group(1)
                    results: list[object] = []
                    answered = anyio.Event()

                    async def call() -> None:
                        results.append(await client.call_tool("write_note", {"path": "e2e.txt", "content": "hi"}))
                        answered.set()

                    tg.start_soon(call)
                    await slack.wait_for(lambda s: bool(s.slack("chat.postMessage")))
                    message = slack.slack("chat.postMessage")[0].json()
                    value = button(message, "gk_approve")["value"]
                    ts = json.loads(slack.answers[slack.requests.index(slack.slack("chat.postMessage")[0])])["ts"]
                    clicks = 0
                    async with httpx2.AsyncClient(base_url=base) as http:

                        async def click(member: str) -> str:
                            """A click by ``member``; what they were told (retried while the wrap process has not
                            yet kept where its message went: "not the gatekeeper's message" decides nothing)."""
                            nonlocal clicks
                            while True:
                                clicks += 1
                                told = len(slack.slack("chat.postEphemeral"))
                                body = interaction("gk_approve", value, ts=ts, user=member,
                                                   action_ts=f"1700000001.{clicks:06d}")  # fmt: skip
                                answer = await http.post("/slack/interactions", content=body, headers=signed(body))
                                assert answer.status_code == 200
                                if answered.is_set():
                                    return ""
                                await slack.wait_for(lambda s, told=told: len(s.slack("chat.postEphemeral")) > told)
                                text = str(slack.slack("chat.postEphemeral")[-1].json()["text"])
                                if "not the gatekeeper's message" not in text:
                                    return text

                        assert "Your approval counts (1 of 2)" in await click(ALICE)
                        assert "another reviewer must approve" in await click(ALICE)  # not twice
                        clicks += 1
                        body = interaction("gk_approve", value, ts=ts, user=BOB, action_ts=f"1700000001.{clicks:06d}")
                        assert (
                            await http.post("/slack/interactions", content=body, headers=signed(body))
                        ).status_code == 200
                        await answered.wait()
                    service.terminate()
                    tg.cancel_scope.cancel()
        finally:
            service_err.close()
    assert not results[0].is_error  # type: ignore[attr-defined]
    assert [c["arguments"] for c in call_log(log) if c["tool"] == "write_note"] == [
        {"path": "e2e.txt", "content": "hi"}
    ]
