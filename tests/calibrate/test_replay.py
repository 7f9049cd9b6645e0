"""Replay: a candidate policy against a recorded history, joined with the human decisions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from harness import cli

from mcp_gatekeeper.calibrate.replay import EXIT_AGAINST_HUMANS, replay
from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.models import QUARANTINE_MARK
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store

from .seeding import DAY, NOW, Past, approved, expired, ran, rejected, seed

pytestmark = pytest.mark.anyio

ACTIVE = """
[[rules]]
name = "writes"
tool = "write_file"
gate = "hard"
"""


def history() -> list[Past]:
    calls = [approved("write_file", {"path": f"/work/src/f{i}.py", "content": "x"}, rule="writes") for i in range(39)]
    calls += [rejected("write_file", {"path": "/work/src/secret.py", "content": "x"}, rule="writes")]
    calls += [rejected("write_file", {"path": "/etc/passwd", "content": "root"}, rule="writes")]
    calls += [expired("write_file", {"path": "/work/src/late.py", "content": "x"}, rule="writes")]
    calls += [ran("send_email", {"to": "a@example.com", "body": "hi"}, gate="allow", rule="mail") for _ in range(7)]
    return calls


async def run(store: Store, candidate: str, *, days: float = 30) -> object:
    return await replay(store, Policy(parse_config(candidate)), since=NOW - days * DAY, until=NOW)


async def test_a_looser_candidate_names_the_rejected_calls_it_would_let_run(store: Store) -> None:
    await seed(store, history())
    out = await replay(
        store,
        Policy(
            parse_config(
                '[[rules]]\ntool = "write_file"\ngate = "allow"\n[[rules]]\ntool = "send_email"\ngate = "allow"\n'
            )
        ),
        since=NOW - 30 * DAY,
        until=NOW,
    )
    assert out.replayed == 49
    assert out.count(then={"approved"}, would={"allow"}) == 39
    assert out.count(then={"expired"}, would={"allow"}) == 1
    assert {c.tool for c in out.against_humans} == {"write_file"}
    assert len(out.against_humans) == 2
    assert out.exit_code == EXIT_AGAINST_HUMANS
    assert out.groups()["auto_allow"] == {"approved": 39, "rejected": 2, "expired": 1}
    assert any("REJECTED" in line for line in out.lines())


async def test_a_candidate_that_only_tightens_exits_zero(store: Store) -> None:
    await seed(store, history())
    out = await replay(
        store,
        Policy(
            parse_config(
                '[[rules]]\ntool = "write_file"\ngate = "hard"\n[[rules]]\ntool = "send_email"\ngate = "hard"\n'
            )
        ),
        since=NOW - 30 * DAY,
        until=NOW,
    )
    assert out.exit_code == 0
    assert not out.against_humans
    assert out.groups() == {"hold": {"ran": 7}}
    assert out.count(was={"hold"}, would={"hold"}) == 42


async def test_an_envelope_candidate_keeps_the_rejected_calls_held(store: Store) -> None:
    await seed(store, history())
    candidate = '[[rules]]\ntool = "write_file"\nwhen = { path = { under = "/work/src" } }\ngate = "allow"\n'
    candidate += '[[rules]]\ntool = "write_file"\nwhen = { path = { eq = "/work/src/secret.py" } }\ngate = "deny"\n'
    out = await replay(store, Policy(parse_config(candidate)), since=NOW - 30 * DAY, until=NOW)
    # secret.py is under /work/src: the allow rule comes first and lets it run
    assert [c.then for c in out.against_humans] == ["rejected"]
    fixed = '[[rules]]\ntool = "write_file"\nwhen = { path = { eq = "/work/src/secret.py" } }\ngate = "deny"\n'
    fixed += '[[rules]]\ntool = "write_file"\nwhen = { path = { under = "/work/src" } }\ngate = "allow"\n'
    out = await replay(store, Policy(parse_config(fixed)), since=NOW - 30 * DAY, until=NOW)
    assert out.exit_code == 0
    assert out.count(then={"rejected"}, would={"deny"}) == 1
    assert out.count(then={"rejected"}, would={"hold"}) == 1  # /etc/passwd: no rule, a write: held


async def test_since_limits_the_window(store: Store) -> None:
    await seed(store, [approved("write_file", {"path": "/w/a", "content": ""}, age=40 * DAY), *history()[:3]])
    out = await replay(store, Policy(parse_config(ACTIVE)), since=NOW - 30 * DAY, until=NOW)
    assert out.replayed == 3


@pytest.mark.parametrize(
    "arguments",
    [
        {"path": "/work/src/../../etc/passwd", "content": "x"},  # climbs out of the envelope
        {"path": "/work/src/./../.././etc/passwd", "content": "x"},
        {"path": ["/work/src/a.py"], "content": "x"},  # a list where the schema says string
        {"path": '{"p": "/work/src/a.py"}', "content": "x"},
    ],
)
async def test_other_shapes_are_judged_as_live_calls_are(store: Store, arguments: dict[str, object]) -> None:
    """A candidate's envelope is checked after the schema check and path normalisation, as a live call."""
    await seed(store, [rejected("write_file", arguments, rule="writes")])
    candidate = '[[rules]]\ntool = "write_file"\nwhen = { path = { under = "/work/src" } }\ngate = "allow"\n'
    out = await replay(store, Policy(parse_config(candidate)), since=NOW - DAY, until=NOW)
    assert out.replayed == 1
    assert out.exit_code == 0, out.to_json()
    assert out.count(would={"allow", "audit"}) == 0


async def test_a_quarantined_call_stays_held_and_unreplayable_ones_are_counted(store: Store) -> None:
    await seed(
        store,
        [
            approved("write_file", {"path": "/w/a", "content": ""}, reasons=(f"{QUARANTINE_MARK} changed",)),
            rejected("write_file", {"gatekeeper_truncated": {"bytes": 9_999_999, "head": "", "tail": ""}}),
        ],
    )
    out = await replay(
        store, Policy(parse_config('[[rules]]\ntool = "*"\ngate = "allow"\n')), since=NOW - DAY, until=NOW
    )
    assert out.replayed == 1
    assert out.skipped == 1
    assert out.count(would={"hold"}) == 1
    assert out.exit_code == 0


async def test_the_replay_command_exits_1_for_a_rejected_call_and_0_when_it_only_tightens(
    home: Path, tmp_path: Path
) -> None:
    async with Store.open(home / "gatekeeper.db", SystemClock()) as store:
        await seed(store, history(), now=time.time())
    loose = tmp_path / "loose.toml"
    loose.write_text('[[rules]]\ntool = "write_file"\ngate = "allow"\n')
    code, out, err = await cli(home, "replay", "--since", "7d", config=loose, check=False)
    assert code == 1, err
    assert "2 REJECTED by a human" in out
    assert "calls a human REJECTED that this policy would let run" in out
    assert out.count("write_file  rejected: hold -> allow") == 2
    code, out, _err = await cli(home, "replay", "--since", "7d", "--json", config=loose, check=False)
    got = json.loads(out)
    assert code == got["exit_code"] == 1
    assert len(got["against_humans"]) == 2
    tight = tmp_path / "tight.toml"
    tight.write_text('[[rules]]\ntool = "*"\ngate = "hard"\n')
    code, out, err = await cli(home, "replay", "--since", "7d", config=tight, check=False)
    assert code == 0, err
    assert "would hold 7 call(s) that ran without a human" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\ntool = "*"\ngate = "sometimes"\n')
    code, _out, err = await cli(home, "replay", config=bad, check=False)
    assert code == 2 and "rules[0].gate" in err
