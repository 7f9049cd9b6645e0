"""One executor for both lanes: the same requests and upstream replies give the same answers, records and
upstream requests whether the stdio fast lane is on or off (a differential test through real ``wrap``).

The upstream is ``tests/upstreams/raw_server.py``, which answers with any reply a test names: valid, odd
and invalid (no ``content``, wrong types, a result that is not an object, huge, nested, unicode, JSON-RPC
errors, ``isError`` results, ``structuredContent``). The requests are generated from a fixed seed.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import ROOT, raw_wrap, wrap_params

pytestmark = pytest.mark.anyio

RAW_SERVER = ROOT / "tests" / "upstreams" / "raw_server.py"
sys.path.insert(0, str(RAW_SERVER.parent))
from raw_server import REPLIES  # noqa: E402  # the upstream's own table of replies, so no case is missed

INVALID_RESULTS = {
    "no_content", "only_is_error", "content_not_list", "block_without_text", "unknown_block_type",
    "structured_not_object",
}  # fmt: skip
"""``isError: "yes"`` is not among them: the SDK's model reads it as true, on both lanes alike."""
NOT_AN_OBJECT = {"result_not_object", "result_null"}

CONFIG = """
[ui]
autostart = false
[performance]
fast_lane = {lane}
[[rules]]
tool = "strict"
when = {{ n = {{ gt = 100 }} }}
gate = "deny"
reason = "n is too large"
[[rules]]
tool = "*"
gate = "allow"
"""

_CALL_ID = re.compile(r"call [0-9a-f]{12}")


def _text(rng: random.Random) -> str:
    alphabet = "aZ09 -_/\\\"'{}[]:,éü✓𝄞\u202e\u0301\t\n\u2028" + "\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.choice(["str", "int", "big", "float", "bool", "null", "list", "dict"] if depth < 5 else ["str", "int"])
    if kind == "str":
        return _text(rng)
    if kind == "int":
        return rng.randint(-1000, 1000)
    if kind == "big":
        return rng.choice([2**63, -(2**70), 10**30])
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e-300, 1.7976931348623157e308, 3.14159])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_text(rng) or "k": _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _line(rid: int, params: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}, ensure_ascii=False)


def requests() -> list[str]:
    """Every request line, in order: generated arguments, every canned reply, schema and number cases."""
    rng = random.Random(11)
    params: list[Any] = [{"name": "echo", "arguments": {"i": i, "v": _value(rng, 1)}} for i in range(25)]
    params += [{"name": "reply", "arguments": {"case": case}} for case in [*REPLIES, "rpc_error"]]
    params += [
        {"name": "strict", "arguments": {"n": 3, "name": "x"}},
        {"name": "strict", "arguments": {"n": 101}},  # the deny rule
        {"name": "strict", "arguments": {"n": "3"}},  # a string for an integer
        {"name": "strict", "arguments": {"n": True}},  # a boolean for an integer
        {"name": "strict", "arguments": {"n": 3, "extra": 1}},
        {"name": "strict", "arguments": {}},
        {"name": "strict", "arguments": {"n": '{"n": 1000}'}},
        {"name": "nope", "arguments": {}},
        {"name": "echo", "arguments": [1]},
        {"name": 7, "arguments": {}},
        {"name": "echo"},
    ]
    lines = [_line(i + 1, p) for i, p in enumerate(params)]
    n = len(lines)
    # numbers JSON cannot carry, written as a client's JSON text would carry them
    lines += [
        f'{{"jsonrpc":"2.0","id":{n + 1},"method":"tools/call","params":{{"name":"echo","arguments":{{"x":1e400}}}}}}',
        f'{{"jsonrpc":"2.0","id":{n + 2},"method":"tools/call","params":{{"name":"strict","arguments":{{"n":-1e400}}}}}}',
        f'{{"jsonrpc":"2.0","id":{n + 3},"method":"tools/call","params":{{"name":"echo","arguments":{{"a":[NaN]}}}}}}',
        f'{{"jsonrpc":"2.0","id":{n + 4},"method":"tools/call","params":{{"name":"echo","arguments":{{"b":Infinity}}}}}}',
        # a key given twice: whatever both parsers keep, the policy and the upstream see the same value
        f'{{"jsonrpc":"2.0","id":{n + 5},"method":"tools/call","params":{{"name":"strict","arguments":{{"n":3,"n":500}}}}}}',
    ]
    return lines


async def _run(tmp_path: Path, *, lane: bool) -> tuple[list[Any], list[Any], list[bytes]]:
    home = tmp_path / f"home-{lane}"
    home.mkdir()
    cfg = tmp_path / f"gk-{lane}.toml"
    cfg.write_text(CONFIG.format(lane=str(lane).lower()))
    log = tmp_path / f"upstream-{lane}.log"
    params = wrap_params(home, cfg, "raw", [sys.executable, str(RAW_SERVER), "--log", str(log)])
    replies: list[Any] = []
    async with raw_wrap(params) as c:
        for line in requests():
            await c.send_line(line)
            reply = await c.receive()
            replies.append(json.loads(_CALL_ID.sub("call <id>", json.dumps(reply, ensure_ascii=False))))
    with sqlite3.connect(home / "gatekeeper.db") as db:
        records = db.execute(
            "SELECT tool, state, arguments, args_digest, gate, rule, reason, error, result, tooldef_hash FROM calls"
            " ORDER BY created_at, rowid"
        ).fetchall()
    return replies, records, log.read_bytes().splitlines()


async def test_the_lanes_on_and_off_answer_record_and_forward_alike(tmp_path: Path) -> None:
    on = await _run(tmp_path, lane=True)
    off = await _run(tmp_path, lane=False)
    replies, records, upstream = on
    assert len(replies) == len(requests())
    for i, (a, b) in enumerate(zip(on[0], off[0], strict=True)):
        assert a == b, f"reply {i}: lane on {a!r} != lane off {b!r}"
    assert on[1] == off[1]  # the store holds the same records
    assert on[2] == off[2]  # the upstream received the same bytes
    # and what they hold is right: nothing but the allowed, valid calls reached the upstream
    sent = [json.loads(b"{" + line)["params"] for line in upstream]
    assert not any(p["name"] == "strict" and p["arguments"] != {"n": 3, "name": "x"} for p in sent)
    assert not any("x" in p["arguments"] or "a" in p["arguments"] or "b" in p["arguments"] for p in sent
                   if p["name"] == "echo" and "i" not in p["arguments"])  # fmt: skip
    by_case = {json.loads(r[2]).get("case"): r for r in records if r[0] == "reply"}
    for case in INVALID_RESULTS | NOT_AN_OBJECT | {"rpc_error"}:
        assert by_case[case][1] == "failed", (case, by_case[case])
    for case in set(REPLIES) - INVALID_RESULTS - NOT_AN_OBJECT:
        assert by_case[case][1] == "forwarded", (case, by_case[case])
    states = [r[1] for r in records]
    assert "outcome_unknown" not in states and "cancelled" not in states


async def test_an_invalid_result_is_failed_and_said_so_on_both_lanes(tmp_path: Path) -> None:
    for lane in (True, False):
        home = tmp_path / f"h{lane}"
        home.mkdir()
        cfg = tmp_path / f"c{lane}.toml"
        cfg.write_text(CONFIG.format(lane=str(lane).lower()))
        log = tmp_path / f"l{lane}"
        params = wrap_params(home, cfg, "raw", [sys.executable, str(RAW_SERVER), "--log", str(log)])
        async with raw_wrap(params) as c:
            missing = await c.call(1, "reply", {"case": "no_content"})
            not_object = await c.call(2, "reply", {"case": "result_not_object"})
            fine = await c.call(3, "reply", {"case": "text"})
        assert missing["result"]["isError"] is True
        assert "not a valid tool result" in missing["result"]["content"][0]["text"]
        assert not_object["error"]["code"] == -32603
        assert fine["result"] == REPLIES["text"]
        with sqlite3.connect(home / "gatekeeper.db") as db:
            rows = db.execute("SELECT state, error FROM calls ORDER BY created_at, rowid").fetchall()
        assert [r[0] for r in rows] == ["failed", "failed", "forwarded"], lane
        assert "content" in rows[0][1]
