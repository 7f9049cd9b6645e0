"""Shadow rules: the call takes the active policy's gate; the shadow verdict is recorded beside it, alike on
the stdio fast lane and the SDK path, and a fault in the shadow never changes the outcome."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness import ROOT, cli, raw_wrap, wrap_params
from mcp import Client
from upstreams.feature_server import build_server

from mcp_gatekeeper.calibrate.shadow import shadow_config
from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import State
from mcp_gatekeeper.policy import Policy, Verdict
from mcp_gatekeeper.proxy import Proxy
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.upstream import Upstream

pytestmark = pytest.mark.anyio

RAW_SERVER = ROOT / "tests" / "upstreams" / "raw_server.py"
LANES = [pytest.param(True, id="fast-lane"), pytest.param(False, id="full-path")]

SHADOW_RULES = """
[ui]
autostart = false
[performance]
fast_lane = {lane}
[[rules]]
name = "big-n-would-hold"
tool = "echo"
when = {{ n = {{ gt = 5 }} }}
gate = "hard"
shadow = true
[[rules]]
name = "strict-would-deny"
tool = "strict"
gate = "deny"
shadow = true
[[rules]]
name = "everything"
tool = "*"
gate = "allow"
"""


def _rows(home: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(home / "gatekeeper.db") as db:
        return db.execute(
            "SELECT tool, arguments, state, gate, rule, shadow_action, shadow_rule, shadow_reason FROM calls"
            " ORDER BY created_at, rowid"
        ).fetchall()


async def _through_wrap(tmp_path: Path, lane: bool) -> tuple[list[Any], list[tuple[Any, ...]], list[bytes]]:
    home = tmp_path / f"home-{lane}"
    home.mkdir()
    cfg = tmp_path / f"gk-{lane}.toml"
    cfg.write_text(SHADOW_RULES.format(lane=str(lane).lower()))
    log = tmp_path / f"upstream-{lane}.log"
    replies = []
    async with raw_wrap(wrap_params(home, cfg, "raw", [sys.executable, str(RAW_SERVER), "--log", str(log)])) as c:
        replies.append(await c.call(1, "echo", {"n": 1}))
        replies.append(await c.call(2, "echo", {"n": 10}))
        replies.append(await c.call(3, "strict", {"n": 3}))
        replies.append(await c.call(4, "strict", {"n": "3"}))  # refused by the schema check, in both policies
    return replies, _rows(home), log.read_bytes().splitlines()


@pytest.mark.parametrize("lane", LANES)
async def test_a_shadow_rule_is_recorded_and_changes_nothing(tmp_path: Path, lane: bool) -> None:
    replies, rows, upstream = await _through_wrap(tmp_path, lane)
    assert [r["result"].get("isError", False) for r in replies] == [False, False, False, True]
    sent = [json.loads(b"{" + line)["params"] for line in upstream]
    assert [p["arguments"] for p in sent] == [{"n": 1}, {"n": 10}, {"n": 3}]  # every allowed call ran
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        ("echo", "forwarded", "allow", "everything"),
        ("echo", "forwarded", "allow", "everything"),
        ("strict", "forwarded", "allow", "everything"),
        ("strict", "denied", "deny", None),
    ]
    assert [(r[5], r[6]) for r in rows] == [
        ("allow", "everything"),
        ("hold", "big-n-would-hold"),
        ("deny", "strict-would-deny"),
        ("refuse_invalid", None),
    ]
    assert rows[2][7] == "denied by policy rule strict-would-deny"


async def test_both_lanes_record_the_same_shadow_verdicts(tmp_path: Path) -> None:
    on = await _through_wrap(tmp_path, True)
    off = await _through_wrap(tmp_path, False)
    assert on[1] == off[1]
    assert on[2] == off[2]


async def test_show_prints_the_shadow_verdict(tmp_path: Path) -> None:
    await _through_wrap(tmp_path, True)
    home = tmp_path / "home-True"
    with sqlite3.connect(home / "gatekeeper.db") as db:
        (cid,) = db.execute("SELECT id FROM calls WHERE shadow_action = 'hold'").fetchone()
    _code, out, _err = await cli(home, "show", cid)
    assert "would have held" in out and "big-n-would-hold" in out
    _code, out, _err = await cli(home, "show", cid, "--json")
    assert json.loads(out)["shadow"]["action"] == "hold"


class _Raising(Policy):
    def evaluate(
        self,
        upstream: str,
        tool: str,
        arguments: Mapping[str, Any],
        annotations: Mapping[str, Any] | None = None,
        *,
        confidence: float | None = None,
    ) -> Verdict:
        raise RuntimeError("the shadow broke")


class _Garbage(Policy):
    def evaluate(
        self,
        upstream: str,
        tool: str,
        arguments: Mapping[str, Any],
        annotations: Mapping[str, Any] | None = None,
        *,
        confidence: float | None = None,
    ) -> Verdict:
        return None  # type: ignore[return-value]  # a broken policy: the judgement itself fails on it


@pytest.mark.parametrize(
    ("shadow", "action", "said"),
    [
        pytest.param(_Raising, "deny", "policy error", id="policy-raises"),  # fail closed, as live
        pytest.param(_Garbage, "error", "shadow error: AttributeError", id="judgement-fails"),
    ],
)
async def test_a_failing_shadow_is_recorded_and_the_call_runs(
    tmp_path: Path, shadow: type[Policy], action: str, said: str
) -> None:
    config = parse_config('[ui]\nautostart = false\n[[rules]]\ntool = "echo"\ngate = "allow"\n')
    clock = SystemClock()
    async with Store.open(tmp_path / "gk.db", clock) as store:
        await store.register_instance("test")
        gate = Gate(store, Policy(config), clock)
        proxy = Proxy(config=config, policy=gate.policy, gate=gate, clock=clock, shadow=shadow(config))
        server = build_server(None)
        up = Upstream("feat", None, proxy.hooks(), target=server)
        proxy.upstreams = {"feat": up}
        async with gate.running(), up.running():
            await up.connect()
            with anyio.fail_after(10):
                async with Client(proxy.build_server(), mode="legacy") as client:
                    got = await client.call_tool("echo", {"text": "hi"})
        assert not got.is_error
        assert [c["arguments"] for c in server.state.calls if c["tool"] == "echo"] == [{"text": "hi"}]
        (rec,) = await store.list_calls()
    assert rec.state == State.FORWARDED
    assert rec.gate == "allow"
    assert rec.shadow_action == action
    assert rec.shadow_reason is not None and said in rec.shadow_reason


def test_shadow_config_shapes_and_failures(tmp_path: Path) -> None:
    base = tmp_path / "gk.toml"
    assert shadow_config(parse_config('[[rules]]\ntool = "x"\ngate = "allow"\n'), base) is None
    with_rule = parse_config('[[rules]]\ntool = "x"\ngate = "deny"\nshadow = true\n')
    assert Policy(with_rule).evaluate("u", "x", {}).rule is None  # not enforced
    shadow = shadow_config(with_rule, base)
    assert shadow is not None
    assert Policy(shadow).evaluate("u", "x", {}).action == "deny"
    (tmp_path / "candidate.toml").write_text('[[rules]]\ntool = "x"\ngate = "hard"\n')
    whole = parse_config('[shadow]\npolicy = "candidate.toml"\n')
    shadow = shadow_config(whole, base)
    assert shadow is not None and Policy(shadow).evaluate("u", "x", {}).action == "hold"
    (tmp_path / "bad.toml").write_text('[[rules]]\ntool = "x"\ngate = "maybe"\nshadow = true\n')
    with pytest.raises(ConfigError) as bad:
        shadow_config(parse_config('[shadow]\npolicy = "bad.toml"\n'), base)
    assert all(p.startswith("shadow.policy (") for p in bad.value.problems)
    assert any("rules[0].gate" in p for p in bad.value.problems)
    with pytest.raises(ConfigError, match="no such file"):
        shadow_config(parse_config('[shadow]\npolicy = "missing.toml"\n'), base)
    with pytest.raises(ConfigError, match=r"rules\[0\].shadow"):
        parse_config('[shadow]\npolicy = "candidate.toml"\n[[rules]]\ntool = "x"\ngate = "deny"\nshadow = true\n')
    with pytest.raises(ConfigError, match=r"shadow\.polcy"):
        parse_config('[shadow]\npolcy = "candidate.toml"\n')


async def test_explain_says_what_the_shadow_would_do(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text('[[rules]]\ntool = "push"\ngate = "deny"\nshadow = true\n[[rules]]\ntool = "push"\ngate = "hard"\n')
    _code, out, _err = await cli(home, "explain", "push", config=cfg)
    assert "-> HOLD" in out
    assert "shadow: would have denied" in out
    _code, out, _err = await cli(home, "explain", "push", "--json", config=cfg)
    assert json.loads(out)["shadow"]["action"] == "deny"
    (tmp_path / "broken.toml").write_text("[[rules]]\ngate = 3\n")
    cfg.write_text('[shadow]\npolicy = "broken.toml"\n')
    code, _out, err = await cli(home, "check-config", config=cfg, check=False)
    assert code == 2 and "shadow.policy" in err
