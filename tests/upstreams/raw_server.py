"""A hand-written JSON-lines MCP upstream that answers ``tools/call`` with whatever reply a test asks for.

No SDK: it reads one JSON-RPC message per line on stdin and writes replies on stdout, so it can send
replies an SDK server never would (no ``content``, wrong types, a result that is not an object, huge or
deeply nested ones). Run it::

    python tests/upstreams/raw_server.py --log FILE

Tools:

* ``reply(case)``: answers with ``REPLIES[case]`` (a ``result``, or an ``error`` for ``rpc_error``).
* ``echo(...)``: any arguments; answers with them as text and as ``structuredContent``.
* ``strict(n, name)``: ``n`` an integer, ``name`` a string, nothing else; answers ``ok``.
* ``broken_schema``, ``unknown_draft``, ``remote_ref``: unusable input schemas; answer ``ok`` (they must never
  be reached).

Every ``tools/call`` line is appended to the log exactly as received (the bytes of its ``params``, i.e.
the line with the request id removed), flushed before the reply is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = {"level": i, "inner": [value]}
    return value


REPLIES: dict[str, Any] = {
    "text": {"content": [{"type": "text", "text": "ok"}]},
    "text_is_error_false": {"content": [{"type": "text", "text": "ok"}], "isError": False},
    "is_error": {"content": [{"type": "text", "text": "it went wrong"}], "isError": True},
    "empty_content": {"content": []},
    "structured": {"content": [{"type": "text", "text": "s"}], "structuredContent": {"a": [1, {"b": "ü"}], "n": 2.5}},
    "meta": {"content": [{"type": "text", "text": "m"}], "_meta": {"x": 1}},
    "image": {"content": [{"type": "image", "data": "aGk=", "mimeType": "image/png"}]},
    "extra_fields": {"content": [{"type": "text", "text": "x", "extra": 1}], "foo": {"bar": 1}},
    "unicode": {"content": [{"type": "text", "text": 'héllo ✓ 𝄞 \u202e rtl \u0000 nul \\ " quote'}]},
    "huge": {"content": [{"type": "text", "text": "x" * 300_000}]},
    "nested": {"content": [{"type": "text", "text": "deep"}], "structuredContent": _nested(40)},
    "no_content": {"isError": False},
    "only_is_error": {"isError": True},
    "content_not_list": {"content": "just a string"},
    "block_without_text": {"content": [{"type": "text"}]},
    "unknown_block_type": {"content": [{"type": "hologram", "text": "x"}]},
    "is_error_not_bool": {"content": [{"type": "text", "text": "x"}], "isError": "yes"},
    "structured_not_object": {"content": [{"type": "text", "text": "x"}], "structuredContent": [1, 2]},
    "result_not_object": [1, 2, 3],
    "result_null": None,
}
RPC_ERROR = {"code": -32050, "message": "the upstream refuses", "data": {"why": "because ✓"}}

TOOLS = [
    {
        "name": "reply",
        "description": "Answer with a canned reply.",
        "inputSchema": {"type": "object", "properties": {"case": {"type": "string"}}, "required": ["case"]},
    },
    {"name": "echo", "description": "Echo the arguments.", "inputSchema": {"type": "object"}},
    {
        "name": "strict",
        "description": "Strict arguments.",
        "inputSchema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"n": {"type": "integer"}, "name": {"type": "string"}},
            "required": ["n"],
            "additionalProperties": False,
        },
    },
    # schemas that are not usable: a call to these must never pass unchecked
    {
        "name": "broken_schema",
        "description": "Not a JSON Schema.",
        "inputSchema": {"type": "object", "properties": {"a": {"type": "objekt"}}},
    },
    {
        "name": "unknown_draft",
        "description": "A draft nobody knows.",
        "inputSchema": {"$schema": "https://example.invalid/draft-99/schema", "type": "object"},
    },
    {
        "name": "remote_ref",
        "description": "A $ref that cannot be resolved (nothing is fetched).",
        "inputSchema": {"type": "object", "properties": {"a": {"$ref": "http://127.0.0.1:9/schema.json"}}},
    },
]


def answer(msg: dict[str, Any]) -> dict[str, Any] | None:
    method = msg.get("method")
    if "id" not in msg:
        return None
    rid = msg["id"]
    params = msg.get("params") or {}
    if method == "initialize":
        return {"jsonrpc": "2.0", "id": rid, "result": {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}}, "serverInfo": {"name": "raw", "version": "1"}}}  # fmt: skip
    if method == "ping":
        return {"jsonrpc": "2.0", "id": rid, "result": {}}
    if method == "tools/list":
        return {"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}}
    if method != "tools/call":
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"no method {method}"}}
    name = params.get("name")
    args = params.get("arguments") or {}
    if name == "echo":
        text = json.dumps(args, ensure_ascii=False, sort_keys=True)
        return {"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": text}],
                                                        "structuredContent": args}}  # fmt: skip
    if name in ("strict", "broken_schema", "unknown_draft", "remote_ref"):
        return {"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "ok"}]}}
    case = args.get("case")
    if case == "rpc_error":
        return {"jsonrpc": "2.0", "id": rid, "error": RPC_ERROR}
    return {"jsonrpc": "2.0", "id": rid, "result": REPLIES.get(case, {"content": []})}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", type=Path, required=True)
    log = parser.parse_args().log
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        msg = json.loads(line)
        if msg.get("method") == "tools/call":
            # the params exactly as they arrived: the request id is the only per-run part of the line
            params_at = line.index(b'"params"')
            with log.open("ab") as f:
                f.write(line[params_at:].rstrip(b"\r\n") + b"\n")
                f.flush()
        reply = answer(msg)
        if reply is not None:
            sys.stdout.write(json.dumps(reply, ensure_ascii=False) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
