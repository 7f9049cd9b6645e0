"""Setting Slack and phone notifications up: the config fails closed and names every bad field; secrets come
from the environment (an unset one stops the start); a running gatekeeper wires the channel, the follower and
the page's endpoint."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from harness import cli

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.serve import open_runtime
from mcp_gatekeeper.slack.reviewers import AllowList
from mcp_gatekeeper.store import Store

pytestmark = pytest.mark.anyio

GOOD = """
[notify.slack]
channel = "C0GATE"
[[notify.slack.reviewers]]
team = "T0TEAM"
user = "U0ALICE"
reviewer = "alice"
[[notify.ntfy]]
name = "phone"
url = "https://ntfy.example/gk-topic"
[ui]
autostart = false
public_url = "https://gk.example.com"
[[rules]]
name = "deploys"
tool = "deploy"
gate = "hard"
escalate = [{ after = "5m", notify = ["slack", "phone"] }]
"""


def test_a_good_setup_loads_and_its_channels_can_be_named() -> None:
    cfg = parse_config(GOOD)
    assert cfg.notify.channel_names == ["stderr", "slack", "phone"]
    assert cfg.notify.slack is not None and cfg.notify.slack.bot_token == "${MCP_GATEKEEPER_SLACK_BOT_TOKEN}"
    allow = AllowList(cfg.notify.slack.reviewers)
    assert allow.reviewer_for("T0TEAM", "U0ALICE") == "alice"
    assert allow.reviewer_for("T0OTHER", "U0ALICE") is None  # the same member id in another workspace
    assert allow.reviewer_for("T0TEAM", "U0alice") is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[notify.slack]\nchannel = "C1"\nbot_tokn = "x"\n', "notify.slack.bot_tokn"),
        ("[notify.slack]\n", "notify.slack.channel"),
        ('[notify.slack]\nchannel = "C1"\napi_url = "file:///etc/passwd"\n', "notify.slack.api_url"),
        (
            '[notify.slack]\nchannel = "C1"\n[[notify.slack.reviewers]]\nteam = "T1X"\nuser = "alice"\nreviewer = "a"\n',
            "notify.slack.reviewers[0].user",
        ),
        (
            '[notify.slack]\nchannel = "C1"\n[[notify.slack.reviewers]]\nuser = "U1X"\nreviewer = "a"\n',
            "notify.slack.reviewers[0].team",
        ),
        ('[[notify.ntfy]]\nname = "p"\nurl = "ntfy.sh/topic"\n', "notify.ntfy[0].url"),
        ('[[notify.ntfy]]\nname = "p"\nurl = "https://n/t"\npriority = 5\n', "notify.ntfy[0].priority"),
        ('[ui]\npublic_url = "https://gk.example.com/?x=1"\n', "ui.public_url"),
        ('[ui]\npublic_url = "https://user@gk.example.com"\n', "ui.public_url"),
        ('[notify.slack]\nchannel = "C1"\nname = "stderr"\n', "built-in channel names"),
        ('[notify.slack]\nchannel = "C1"\n[[notify.ntfy]]\nname = "slack"\nurl = "https://n/t"\n', "must be unique"),
        (
            '[notify.slack]\nchannel = "C1"\n'
            + '[[notify.slack.reviewers]]\nteam = "T1X"\nuser = "U1X"\nreviewer = "a"\n' * 2,
            "listed twice",
        ),
        (
            '[[rules]]\nname = "r"\ntool = "x"\ngate = "hard"\nescalate = [{ after = "1m", notify = ["slack"] }]\n',
            "unknown channel 'slack'",
        ),
    ],
)
def test_a_bad_setup_is_refused_naming_the_field(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert named in str(e.value)


async def test_an_unset_secret_stops_the_start_and_a_set_one_wires_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = parse_config(GOOD)
    monkeypatch.delenv("MCP_GATEKEEPER_SLACK_BOT_TOKEN", raising=False)
    monkeypatch.setenv("MCP_GATEKEEPER_SLACK_SIGNING_SECRET", "s3cret")
    with pytest.raises(ConfigError) as e:
        async with open_runtime(cfg, home=tmp_path / "a"):
            pass
    assert "MCP_GATEKEEPER_SLACK_BOT_TOKEN" in str(e.value)
    monkeypatch.setenv("MCP_GATEKEEPER_SLACK_BOT_TOKEN", "xoxb-from-the-environment")
    monkeypatch.setenv("MCP_GATEKEEPER_SLACK_SIGNING_SECRET", " ")
    with pytest.raises(ConfigError) as e:
        async with open_runtime(cfg, home=tmp_path / "c"):
            pass
    assert "notify.slack.signing_secret" in str(e.value)
    monkeypatch.setenv("MCP_GATEKEEPER_SLACK_SIGNING_SECRET", "s3cret")
    with anyio.fail_after(10):
        async with open_runtime(cfg, home=tmp_path / "b") as rt:
            assert rt.slack is not None and rt.slack.signing_secret == "s3cret"
            assert rt.slack.follower is not None and rt.links is not None
            assert rt.links.url("a" * 26).startswith("https://gk.example.com/c/")
        # a command that only reads (register=False: list, show, approve) needs no Slack secret
        monkeypatch.delenv("MCP_GATEKEEPER_SLACK_BOT_TOKEN")
        async with open_runtime(cfg, home=tmp_path / "b", register=False) as rt:
            assert rt.slack is None and rt.links is None


async def test_login_also_names_the_public_address(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text('[ui]\npublic_url = "https://gk.example.com"\n')
    async with Store.open(home / "gatekeeper.db", SystemClock()) as store:
        await store.register_instance("page")
        await store.serving_page("http://127.0.0.1:8765")  # this test process serves the page, as far as login knows
        _, out, err = await cli(home, "login", config=cfg)
    code = out.strip().partition("/login?token=")[2]
    assert out.startswith("http://127.0.0.1:8765/login?token=") and code
    assert f"(through https://gk.example.com: https://gk.example.com/login?token={code})" in err
