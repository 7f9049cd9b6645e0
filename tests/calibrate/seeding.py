"""Seeding a recorded history in a real SQLite store, through the store's own bulk insert."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mcp_gatekeeper.models import NewCall, State
from mcp_gatekeeper.proxy import tooldef_hash
from mcp_gatekeeper.store import Store

NOW = 1_800_000_000.0
DAY = 86_400.0
UPSTREAM = "fs"

WRITE_FILE: dict[str, Any] = {
    "name": "write_file",
    "description": "Write a file",
    "inputSchema": {
        "type": "object",
        "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        "required": ["path", "content"],
    },
}
DELETE_FILE: dict[str, Any] = {
    "name": "delete_file",
    "description": "Delete a file",
    "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    "annotations": {"destructiveHint": True},
}
SEND_EMAIL: dict[str, Any] = {
    "name": "send_email",
    "description": "Send an email",
    "inputSchema": {"type": "object", "properties": {"to": {"type": "string"}, "body": {"type": "string"}}},
}
TOOLS = {t["name"]: t for t in (WRITE_FILE, DELETE_FILE, SEND_EMAIL)}


@dataclass
class Past:
    """One recorded call: what was asked and what happened."""

    tool: str
    arguments: dict[str, Any]
    state: State
    gate: str = "hard"
    rule: str | None = None
    decided_by: str | None = None
    modified: dict[str, Any] | None = None
    age: float = 3600.0
    wait: float = 30.0
    reasons: tuple[str, ...] = field(default_factory=tuple)


def approved(tool: str, args: dict[str, Any], **kw: Any) -> Past:
    return Past(tool, args, State.FORWARDED, decided_by="web:alice", **kw)


def rejected(tool: str, args: dict[str, Any], **kw: Any) -> Past:
    return Past(tool, args, State.REJECTED, decided_by="web:bob", **kw)


def expired(tool: str, args: dict[str, Any], **kw: Any) -> Past:
    return Past(tool, args, State.EXPIRED, **kw)


def ran(tool: str, args: dict[str, Any], **kw: Any) -> Past:
    return Past(tool, args, State.FORWARDED, **{"gate": "allow", **kw})


async def seed(store: Store, calls: Sequence[Past], *, now: float = NOW) -> None:
    await store.remember_definitions(UPSTREAM, {n: (tooldef_hash(t), t) for n, t in TOOLS.items()})
    rows = []
    for p in calls:
        created = now - p.age
        new = NewCall(
            upstream=UPSTREAM, tool=p.tool, arguments=p.arguments, gate=p.gate, risk="medium", rule=p.rule,
            tooldef_hash=tooldef_hash(TOOLS[p.tool]), reasons=p.reasons,
        )  # fmt: skip
        extra: dict[str, Any] = {"created_at": created}
        if p.decided_by is not None:
            extra |= {"decided_at": created + p.wait, "decided_by": p.decided_by, "channel": "web"}
        if p.modified is not None:
            extra["modified_arguments"] = p.modified
        rows.append((new, p.state, extra))
    await store.insert_history(rows)
