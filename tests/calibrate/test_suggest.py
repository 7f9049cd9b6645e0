"""Suggestions on a seeded history: evidence, TOML that the real CLI accepts, and a replay that matches it."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest
from harness import cli

from mcp_gatekeeper.calibrate.suggest import suggestions
from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.store import Store

from .seeding import DAY, NOW, Past, approved, expired, rejected, seed

pytestmark = pytest.mark.anyio

ACTIVE = """[ui]
autostart = false

[[rules]]
name = "writes"
upstream = "fs"
tool = "write_file"
gate = "hard"

[[rules]]
name = "deletes"
upstream = "fs"
tool = "delete_file"
gate = "hard"
timeout = 60

[[rules]]
name = "mail"
upstream = "fs"
tool = "send_email"
gate = "hard"
"""


def history() -> list[Past]:
    calls = [
        approved("write_file", {"path": f"/work/src/m{i % 3}/f{i}.py", "content": f"v{i}"}, rule="writes", wait=10 + i)
        for i in range(40)
    ]
    calls += [rejected("write_file", {"path": "/etc/hosts", "content": "x"}, rule="writes")]
    calls += [rejected("delete_file", {"path": f"/work/f{i}"}, rule="deletes") for i in range(12)]
    calls += [expired("delete_file", {"path": f"/work/g{i}"}, rule="deletes") for i in range(4)]
    calls += [approved("send_email", {"to": "a@example.com", "body": "x"}, rule="mail") for _ in range(5)]
    return calls


async def test_suggestions_with_evidence_and_replay(store: Store) -> None:
    await seed(store, history())
    config = parse_config(ACTIVE)
    found = await suggestions(store, config, since=NOW - 30 * DAY, now=NOW)
    by_kind = {(s.kind, s.tool): s for s in found}
    assert set(by_kind) == {("allow", "write_file"), ("deny", "delete_file"), ("timeout", "delete_file")}

    allow = by_kind[("allow", "write_file")]
    ev = allow.evidence
    assert (ev.decisions, ev.outcomes["approved"], ev.outcomes["rejected"]) == (41, 40, 1)
    assert ev.reviewers == (("web:alice", 40), ("web:bob", 1))
    assert ev.decide_p50 is not None and 10 <= ev.decide_p50 <= 50
    rule = tomllib.loads(allow.toml)["rules"][0]
    assert rule["gate"] == "allow"
    assert rule["tool"] == "write_file"
    assert rule["when"]["path"] == {"under": ["/work/src/m0", "/work/src/m1", "/work/src/m2"]}
    assert "content" not in rule["when"]  # free text stays open
    assert allow.placement == "right before writes"
    # the envelope covers the approved calls and not the rejected one
    assert allow.replay.count(then={"approved"}, would={"allow"}) == 40
    assert allow.replay.count(then={"rejected"}, would={"hold"}) == 1
    assert allow.replay.exit_code == 0

    deny = by_kind[("deny", "delete_file")]
    assert tomllib.loads(deny.toml)["rules"][0]["gate"] == "deny"
    assert deny.replay.count(then={"rejected"}, would={"deny"}) == 12
    assert deny.replay.count(then={"expired"}, would={"deny"}) == 4

    longer = by_kind[("timeout", "delete_file")]
    t = tomllib.loads(longer.toml)["rules"][0]
    assert t["name"] == "deletes" and t["timeout"] >= 120
    assert longer.replay.changed == 0  # waiting longer changes no verdict
    assert longer.evidence.rate("expired") == 0.25


async def test_too_little_evidence_suggests_nothing(store: Store) -> None:
    await seed(store, [approved("write_file", {"path": "/w/a.py", "content": ""}, rule="writes") for _ in range(19)])
    assert await suggestions(store, parse_config(ACTIVE), since=NOW - DAY, now=NOW) == []


async def test_paths_spread_over_many_folders_get_no_allow(store: Store) -> None:
    await seed(
        store, [approved("write_file", {"path": f"/d{i}/x.py", "content": ""}, rule="writes") for i in range(25)]
    )
    assert await suggestions(store, parse_config(ACTIVE), since=NOW - DAY, now=NOW) == []


async def test_the_cli_accepts_the_toml_and_replays_as_claimed(home: Path, tmp_path: Path) -> None:
    now = time.time()
    async with Store.open(home / "gatekeeper.db", SystemClock()) as store:
        await seed(store, history(), now=now)
    active = tmp_path / "active.toml"
    active.write_text(ACTIVE)
    code, out, err = await cli(home, "suggest", "--since", "30d", "--json", config=active)
    assert code == 0, err
    found = json.loads(out)["suggestions"]
    assert {(s["kind"], s["tool"]) for s in found} == {
        ("allow", "write_file"), ("deny", "delete_file"), ("timeout", "delete_file")
    }  # fmt: skip
    for s in found:
        head, sep, rest = ACTIVE.partition("[[rules]]\nname = " + json.dumps(s["rule"]))
        assert sep
        if s["kind"] == "timeout":  # instead of the rule
            rest = rest.partition("\n\n")[2]
            text = head + s["toml"] + "\n" + rest
        else:  # right before it
            text = head + s["toml"] + "\n" + sep + rest
        candidate = tmp_path / f"candidate-{s['kind']}.toml"
        candidate.write_text(text)
        code, out, err = await cli(home, "check-config", config=candidate)
        assert code == 0, (err, text)
        code, out, err = await cli(home, "replay", "--since", "30d", "--json", config=candidate, check=False)
        got = json.loads(out)
        mine = [c for c in got["counts"] if c["was"] != c["would"]]
        claimed = [c for c in s["replay"]["counts"] if c["was"] != c["would"]]
        assert mine == claimed, (s["kind"], mine, claimed)
        assert code == s["replay"]["exit_code"] == 0
    code, out, _ = await cli(home, "suggest", "--since", "30d", config=active)
    assert "allow write_file" in out and "nothing was changed" in out
