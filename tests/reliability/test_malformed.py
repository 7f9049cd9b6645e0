"""D5 malformed JSON-RPC (stdio and HTTP), H1 huge and H2 deeply nested arguments.

Whatever arrives, the gatekeeper stays alive, answers the next valid request, and forwards nothing malformed,
oversized or too deep. On stdio the SDK drops a message it cannot parse without a reply (the client waits
out its own timeout); on HTTP the transport answers 4xx.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from harness import FEATURE_SERVER
from relkit import (
    HTTP_READY,
    PY,
    RawStdio,
    call_log,
    call_row,
    cli,
    db_of,
    query,
    raw_wrap,
    received,
    served,
    write_config,
)

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

CONFIG = """
[ui]
autostart = false
[security]
max_argument_bytes = 65536
"""
CAP = 65536


def echo(rid: Any, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": text, **extra}},
    }


def reply_text(reply: dict[str, Any]) -> str:
    return " ".join(c.get("text", "") for c in reply["result"]["content"])


def no_success(raw: RawStdio, rid: Any) -> bool:
    """Either no reply at all (dropped by the SDK) or an error reply: never a result."""
    return rid not in raw.replies or "error" in raw.replies[rid]


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def nested_json(depth: int) -> str:
    return '{"a":' * (depth - 1) + '{"leaf":true}' + "}" * (depth - 1)


# ---------------------------------------------------------------------------------------------- D5 on stdio

MALFORMED: list[tuple[Any, bytes]] = [
    (2, b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"truncated"'),
    (3, json.dumps({**echo(3, "wrong-version"), "jsonrpc": "1.0"}).encode()),
    (4, json.dumps([echo(4, "batched")]).encode()),
    (None, b"42"),
    (None, b'"just a string"'),
    (None, b"null"),
    (None, b"[]"),
    (5, b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":"not an object"}'),
    (9, json.dumps({**echo(None, "object-id"), "id": {"x": 1}}).encode()),
    (None, b"\xff\xfe\x00 binary garbage \x1b[2J"),
    (None, b"x" * (2 * 1024 * 1024)),  # a 2 MiB line of garbage
]
NEVER_FORWARDED = {"truncated", "wrong-version", "batched", "object-id"}


async def test_d5_malformed_json_rpc_on_stdio_is_dropped_and_the_process_answers_on(home: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gk.toml", CONFIG)
    log = tmp_path / "calls.jsonl"
    with anyio.fail_after(60):
        async with raw_wrap(home, cfg, log) as gk:
            first = await gk.request(1, "tools/call", {"name": "echo", "arguments": {"text": "first"}})
            assert reply_text(first) == "first"
            for _, raw in MALFORMED:
                await gk.send_raw(raw)
            args_not_object = await gk.request(6, "tools/call", {"name": "echo", "arguments": "not an object"})
            unknown = await gk.request(7, "no/such/method", {})
            alive = await gk.request(100, "tools/call", {"name": "echo", "arguments": {"text": "alive"}})
            listed = await gk.request(101, "tools/list", {})
            assert gk.proc.returncode is None  # still running
            assert reply_text(alive) == "alive"
            assert "echo" in [t["name"] for t in listed["result"]["tools"]]
            assert args_not_object["error"]["code"] == -32602
            assert unknown["error"]["code"] == -32601
            for rid, _ in MALFORMED:
                if rid is not None:
                    assert no_success(gk, rid), (rid, gk.replies.get(rid))
            # invalid UTF-8 inside a string is decoded with U+FFFD by the transport: the policy, the store and the
            # upstream all see that same decoded text (no parser differential between what is judged and what runs)
            lossy = await gk.request(
                10,
                "tools/call",
                {},
                raw=b'{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"echo","arguments":'
                b'{"text":"bad \xff\xfe utf8"}}}',
            )
            assert reply_text(lossy) == "bad \ufffd\ufffd utf8"
    forwarded = [a["text"] for a in received(log, "echo")]
    assert forwarded == ["first", "alive", "bad \ufffd\ufffd utf8"]
    (lossy_row,) = query(db_of(home), "SELECT arguments FROM calls WHERE arguments LIKE '%bad%utf8%'")
    assert json.loads(lossy_row["arguments"]) == {"text": "bad \ufffd\ufffd utf8"}
    assert not NEVER_FORWARDED & set(forwarded), forwarded
    stored = {json.loads(r["arguments"]).get("text") for r in query(db_of(home), "SELECT arguments FROM calls")}
    assert not NEVER_FORWARDED & stored  # nothing malformed was even recorded as a call


# ---------------------------------------------------------------------------------------------- D5 on HTTP


async def test_d5_malformed_requests_over_http_get_4xx_and_nothing_is_forwarded(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    cfg = write_config(
        tmp_path / "gk.toml",
        CONFIG
        + f"[upstreams.feat]\ncommand = {json.dumps(PY)}\nargs = {json.dumps([str(FEATURE_SERVER), '--call-log', str(log)])}\n",
    )
    accept = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    with anyio.fail_after(60):
        async with (
            served(home, ["run", "--http", "127.0.0.1:0", "--config", str(cfg)], HTTP_READY) as srv,
            httpx2.AsyncClient(timeout=30) as http,
        ):
            url = srv.match.group(1)
            accept["authorization"] = f"Bearer {(home / 'agent-token').read_text().strip()}"  # run --http's agent
            init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
            r = await http.post(
                url, headers=accept, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}
            )
            assert r.status_code == 200, r.text
            session = {**accept, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
            r = await http.post(url, headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
            assert r.status_code == 202

            statuses: dict[str, int] = {}
            for label, body in [
                ("truncated", MALFORMED[0][1]),
                ("wrong-version", MALFORMED[1][1]),
                ("batched", MALFORMED[2][1]),
                ("number", b"42"),
                ("garbage", b"\xff\xfe\x00 binary garbage"),
            ]:
                statuses[label] = (await http.post(url, headers=session, content=body)).status_code
            ok_body = json.dumps(echo(50, "host")).encode()
            statuses["bad-host"] = (
                await http.post(url, headers={**session, "host": "evil.test"}, content=ok_body)
            ).status_code
            statuses["bad-origin"] = (
                await http.post(
                    url, headers={**session, "origin": "http://evil.test"}, content=json.dumps(echo(51, "origin"))
                )
            ).status_code
            statuses["text/plain"] = (
                await http.post(
                    url, headers={**session, "content-type": "text/plain"}, content=json.dumps(echo(52, "ctype"))
                )
            ).status_code
            statuses["5 MiB"] = (
                await http.post(url, headers=session, content=json.dumps(echo(53, "x" * (5 << 20))))
            ).status_code
            statuses["no session"] = (
                await http.post(url, headers=accept, content=json.dumps(echo(54, "nosession")))
            ).status_code

            r = await http.post(url, headers=session, content=json.dumps(echo(99, "alive")))
            assert r.status_code == 200 and '"alive"' in r.text, r.text
            assert srv.proc.returncode is None
    print(f"D5 over HTTP: {statuses}")
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    assert (statuses["bad-host"], statuses["bad-origin"], statuses["5 MiB"]) == (421, 403, 413)
    assert [a["text"] for a in received(log, "echo")] == ["alive"]  # only the valid call reached the upstream


# ---------------------------------------------------------------------------------------------- H1 / H2


async def test_h1_h2_huge_and_deep_arguments_are_never_forwarded(home: Path, tmp_path: Path) -> None:
    # write_note's schema forbids the extra "x": held for a human (schema = "hold") rather than refused, so the
    # deep arguments go all the way through policy, digest, store and the hold
    cfg = write_config(tmp_path / "gk.toml", CONFIG.replace("[security]\n", '[security]\nschema = "hold"\n'))
    log = tmp_path / "calls.jsonl"
    db = db_of(home)
    big = "A" * (CAP + 1)
    with anyio.fail_after(60):
        async with raw_wrap(home, cfg, log) as gk:
            # H1: over security.max_argument_bytes, an allowed tool and a held one: denied at once, not held
            huge_echo = await gk.request(1, "tools/call", {"name": "echo", "arguments": {"text": big}})
            huge_note = await gk.request(
                2, "tools/call", {"name": "write_note", "arguments": {"path": "/h", "content": big}}
            )
            for reply in (huge_echo, huge_note):
                assert reply["result"]["isError"] and "too large" in reply_text(reply), reply_text(reply)[:300]

            # H2: 500 levels: past the parser's limit, the SDK drops it (no reply); nothing runs
            deep = nested_json(500)
            await gk.send_raw(
                b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"deep500","x":'
                + deep.encode()
                + b"}}}"
            )
            await gk.send_raw(
                b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"write_note","arguments":'
                b'{"path":"/deep","content":"deep500","x":' + deep.encode() + b"}}}"
            )
            # 150 levels parse: policy, digest and store cope (no RecursionError); a held tool is held, not run
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    gk.request,
                    5,
                    "tools/call",
                    {"name": "write_note", "arguments": {"path": "/deep150", "content": "c", "x": nested(150)}},
                )
                cid = await gk.watcher.held()
                assert call_row(db, cid)["state"] == "pending"
                rc, _, err = await cli(home, "reject", cid, "--reason", "too deep to review", config=cfg)
                assert rc == 0, err

            alive = await gk.request(100, "tools/call", {"name": "echo", "arguments": {"text": "alive"}})
            assert reply_text(alive) == "alive" and gk.proc.returncode is None
            assert no_success(gk, 3) and no_success(gk, 4)
            assert gk.replies[5]["result"]["isError"]
    assert [a["text"] for a in received(log, "echo")] == ["alive"]
    assert received(log, "write_note") == []
    denied = query(db, "SELECT tool, state FROM calls WHERE reason LIKE '%too large%' ORDER BY tool")
    assert [(r["tool"], r["state"]) for r in denied] == [("echo", "denied"), ("write_note", "denied")]
    assert query(db, "SELECT id FROM calls WHERE arguments LIKE '%deep500%'") == []


async def test_h1_oversized_arguments_are_not_stored(home: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gk.toml", CONFIG)
    log = tmp_path / "calls.jsonl"
    with anyio.fail_after(30):
        async with raw_wrap(home, cfg, log) as gk:
            reply = await gk.request(1, "tools/call", {"name": "echo", "arguments": {"text": "B" * (1 << 20)}})
            assert reply["result"]["isError"]
    assert call_log(log) == []
    (row,) = query(db_of(home), "SELECT state, length(arguments) AS n FROM calls")
    assert row["state"] == "denied"
    assert row["n"] <= CAP, f"{row['n']} bytes of arguments stored for a call denied as too large"
