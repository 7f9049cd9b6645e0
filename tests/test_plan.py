"""The policy sees what the upstream will act on: arguments checked against the tool's ``inputSchema`` first.

Everything here runs through the real ``wrap`` with real upstreams: ``tests/upstreams/payments_server.py``
(the MCP SDK's ``MCPServer``, which parses a model argument sent as a JSON string back into the model) and
``tests/upstreams/raw_server.py`` (hand-written JSON lines, for schemas an SDK server would not publish).
Each case runs with the stdio fast lane on and off.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness import ROOT, cli, raw_wrap, wrap_params
from test_proxy import make_stack

from mcp_gatekeeper.models import Decision, LeaseRequest

pytestmark = pytest.mark.anyio

PAYMENTS = ROOT / "tests" / "upstreams" / "payments_server.py"
RAW_SERVER = ROOT / "tests" / "upstreams" / "raw_server.py"

PAY_RULES = """
[ui]
autostart = false
[performance]
fast_lane = {lane}
[security]
schema = "{mode}"
[[rules]]
tool = "pay"
when = {{ "payment.amount" = {{ gt = 5000 }} }}
gate = "deny"
reason = "payments over 5000 need the finance desk"
[[rules]]
tool = "pay"
gate = "allow"
"""

LANES = [pytest.param(True, id="fast-lane"), pytest.param(False, id="full-path")]


def _rows(home: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(home / "gatekeeper.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM calls ORDER BY created_at, rowid")]


def _ledger(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _payments(tmp_path: Path, home: Path, *, lane: bool, mode: str = "refuse") -> tuple[Any, Path, Path]:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(PAY_RULES.format(lane=str(lane).lower(), mode=mode))
    ledger = tmp_path / "ledger.jsonl"
    return wrap_params(home, cfg, "pay", [sys.executable, str(PAYMENTS), "--ledger", str(ledger)]), ledger, cfg


async def test_the_upstream_really_pays_a_payment_sent_as_a_string(tmp_path: Path) -> None:
    """The attack, without the gatekeeper: MCPServer turns the string back into a payment and pays it."""
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    ledger = tmp_path / "ledger.jsonl"
    server = StdioServerParameters(command=sys.executable, args=[str(PAYMENTS), "--ledger", str(ledger)])
    async with Client(stdio_client(server), mode="legacy") as client:
        with anyio.fail_after(30):
            result = await client.call_tool("pay", {"payment": json.dumps({"to": "mallory", "amount": 1_000_000})})
    assert not result.is_error
    assert _ledger(ledger) == [{"to": "mallory", "amount": 1_000_000.0, "currency": "EUR"}]


@pytest.mark.parametrize("lane", LANES)
async def test_a_payment_sent_as_a_string_cannot_get_around_a_deny_rule(home: Path, tmp_path: Path, lane: bool) -> None:
    params, ledger, _ = _payments(tmp_path, home, lane=lane)
    attacks: list[Any] = [
        {"payment": json.dumps({"to": "mallory", "amount": 1_000_000})},  # the object as a JSON string
        {"payment": {"to": "mallory", "amount": "1000000"}},  # the number as a string
        {"payment": {"to": "mallory", "amount": True}},  # a boolean for a number
        {"payment": {"to": "mallory", "amount": [1_000_000]}},
        {"payment": json.dumps({"to": "mallory", "amount": 1_000_000}), "gatekeeper_reason": "refund"},
        {"Payment": {"to": "mallory", "amount": 1_000_000}},  # another spelling of the name
    ]
    async with raw_wrap(params) as c:
        replies = [await c.call(i, "pay", args) for i, args in enumerate(attacks, 1)]
        fine = await c.call(99, "pay", {"payment": {"to": "alice", "amount": 10}})
        big = await c.call(100, "pay", {"payment": {"to": "bob", "amount": 6000}})
    for reply in replies:
        assert reply["result"]["isError"] is True, reply
        assert "inputSchema" in reply["result"]["content"][0]["text"]
    # the refusal says where and what, so the model can correct the call
    assert "$.payment: " in replies[0]["result"]["content"][0]["text"]
    assert '$.payment: expected object, got string "{' in replies[0]["result"]["content"][0]["text"]
    assert "$.payment.amount: expected number, got boolean true" in replies[2]["result"]["content"][0]["text"]
    assert "$.payment.amount: " in replies[1]["result"]["content"][0]["text"]
    assert fine["result"]["isError"] is False
    assert big["result"]["isError"] is True and "finance desk" in big["result"]["content"][0]["text"]
    assert _ledger(ledger) == [{"to": "alice", "amount": 10.0, "currency": "EUR"}]
    rows = _rows(home)
    assert [r["state"] for r in rows] == ["denied"] * len(attacks) + ["forwarded", "denied"]
    assert all("inputSchema" in r["reason"] for r in rows[: len(attacks)])
    # recorded as sent, for the human who reads the log
    assert json.loads(rows[0]["arguments"]) == attacks[0]


@pytest.mark.parametrize("lane", LANES)
async def test_schema_hold_mode_holds_the_call_with_the_validation_error(
    home: Path, tmp_path: Path, lane: bool
) -> None:
    params, ledger, cfg = _payments(tmp_path, home, lane=lane, mode="hold")
    async with raw_wrap(params) as c:
        await c.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "pay", "arguments": {"payment": json.dumps({"to": "m", "amount": 10})}}})  # fmt: skip
        with anyio.fail_after(30):
            held = await c.watcher.held()
        row = _rows(home)[0]
        assert row["state"] == "pending"
        reasons = json.loads(row["reasons"])
        assert "inputSchema" in reasons[0] and "$.payment" in reasons[0]
        assert row["risk"] in ("high", "critical")
        await cli(home, "reject", held, "--reason", "send it as an object", config=cfg)
        reply = await c.receive()
        # a deny rule still wins over the hold: an invalid call that the policy denies is denied
        denied = await c.call(2, "pay", {"payment": {"to": "m", "amount": 9000}, "extra": "x"})
    assert reply["id"] == 1 and reply["result"]["isError"] is True
    assert denied["result"]["isError"] is True
    assert _ledger(ledger) == []
    assert [r["state"] for r in _rows(home)] == ["rejected", "denied"]


RAW_RULES = """
[ui]
autostart = false
[performance]
fast_lane = {lane}
[risk]
ask_agent = true
[[rules]]
tool = "*"
gate = "allow"
"""


async def _raw(tmp_path: Path, home: Path, lane: bool, *calls: tuple[str, Any]) -> tuple[list[Any], list[Any]]:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(RAW_RULES.format(lane=str(lane).lower()))
    log = tmp_path / "upstream.log"
    params = wrap_params(home, cfg, "raw", [sys.executable, str(RAW_SERVER), "--log", str(log)])
    async with raw_wrap(params) as c:
        replies = []
        for i, (name, args) in enumerate(calls, 1):
            if isinstance(args, str):  # JSON text as a client would write it (numbers Python cannot write)
                await c.send_line(f'{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":'
                                  f'{{"name":"{name}","arguments":{args}}}}}')  # fmt: skip
                replies.append(await c.receive())
            else:
                replies.append(await c.call(i, name, args))
    sent = [json.loads(b"{" + line)["params"] for line in log.read_bytes().splitlines()] if log.exists() else []
    return replies, sent


@pytest.mark.parametrize("lane", LANES)
async def test_numbers_json_cannot_carry_are_refused_and_recorded(home: Path, tmp_path: Path, lane: bool) -> None:
    replies, sent = await _raw(
        tmp_path, home, lane,
        ("echo", '{"x":1e400}'),  # echo's schema accepts anything: refused all the same
        ("strict", '{"n":-1e400}'),
        ("echo", '{"deep":{"list":[1,NaN]}}'),
        ("strict", '{"n":true}'),  # a boolean is not a number
        ("strict", '{"n":7}'),
    )  # fmt: skip
    for reply in replies[:4]:
        assert "error" not in reply, reply  # never an internal error
        assert reply["result"]["isError"] is True
    assert "$.x: not a finite number" in replies[0]["result"]["content"][0]["text"]
    assert "$.deep.list[1]: not a finite number" in replies[2]["result"]["content"][0]["text"]
    assert replies[4]["result"] == {"content": [{"type": "text", "text": "ok"}]}
    assert [s["arguments"] for s in sent] == [{"n": 7}]
    rows = _rows(home)
    assert [r["state"] for r in rows] == ["denied"] * 4 + ["forwarded"]
    # stored in a safe form: valid JSON that still shows what was sent
    stored = json.loads(rows[0]["arguments"])
    assert "Infinity" in stored["gatekeeper_unencodable"]["head"]


@pytest.mark.parametrize("lane", LANES)
async def test_the_agents_own_parameters_are_stripped_before_validation(home: Path, tmp_path: Path, lane: bool) -> None:
    """``strict`` forbids extra properties; the gatekeeper's own reason/confidence are not the upstream's."""
    replies, sent = await _raw(
        tmp_path, home, lane,
        ("strict", {"n": 1, "gatekeeper_reason": "the user asked", "gatekeeper_confidence": 0.9}),
        ("strict", {"n": 1, "gatekeeper_reasons": "a look-alike name is an ordinary (unknown) property"}),
    )  # fmt: skip
    assert replies[0]["result"] == {"content": [{"type": "text", "text": "ok"}]}
    assert replies[1]["result"]["isError"] is True
    assert sent == [{"name": "strict", "arguments": {"n": 1}}]
    rows = _rows(home)
    assert (rows[0]["agent_reason"], rows[0]["agent_confidence"]) == ("the user asked", 0.9)


@pytest.mark.parametrize("lane", LANES)
async def test_an_unusable_upstream_schema_never_opens_the_gate(home: Path, tmp_path: Path, lane: bool) -> None:
    replies, sent = await _raw(
        tmp_path, home, lane, ("broken_schema", {}), ("unknown_draft", {}), ("remote_ref", {"a": 1})
    )
    for reply in replies:
        assert reply["result"]["isError"] is True
        assert "not a usable JSON Schema" in reply["result"]["content"][0]["text"]
    assert "draft-99" in replies[1]["result"]["content"][0]["text"]
    assert sent == []
    assert [r["state"] for r in _rows(home)] == ["denied"] * 3


HOLD_NOTES = """
[ui]
autostart = false
[security]
schema = "hold"
[[rules]]
tool = "write_note"
gate = "hard"
"""


async def test_a_lease_never_approves_a_call_held_for_its_schema(tmp_path: Path) -> None:
    """A lease covers calls like the approved one; arguments that fail the schema still go to a human."""
    async with make_stack(tmp_path, HOLD_NOTES) as stack, stack.client() as client:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "write_note", {"path": "/a", "content": "1"})
                first = await stack.held.next()
                lease = LeaseRequest(envelope={}, calls=5)
                await stack.gate.decide(first.id, Decision(approve=True, decided_by="t", channel="test", lease=lease))
            assert not (await client.call_tool("write_note", {"path": "/b", "content": "2"})).is_error  # leased
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "write_note", {"path": "/c", "content": "3", "x": 1})
                odd = await stack.held.next()  # held, although the lease would cover the path
                assert "inputSchema" in odd.reasons[0] and "$" in odd.reasons[0]
                await stack.gate.decide(odd.id, Decision(approve=False, decided_by="t", channel="test"))
    assert [c["arguments"]["content"] for c in stack.received] == ["1", "2"]
