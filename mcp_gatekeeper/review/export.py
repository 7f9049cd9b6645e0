"""Review data export: one JSON record per human decision on a held call, streamed page by page.

Each record carries what the reviewer saw and did: the tool and its description (from the tool definition
the call was made against, when the store still has it), the proposed and the final arguments, the decision
(``approved``, ``modified``, ``rejected``), the reason, the reviewer and channel, the time it took, the rule,
gate and risk, the call id and the timestamps. A modified decision also carries a preference pair: the
agent's proposal (``rejected``) against the reviewer's edit (``chosen``).

Secrets are redacted as in the audit export (:func:`mcp_gatekeeper.webredact.redact`: every secret-looking
value becomes an HMAC-SHA256 keyed with the home's ui-token), in every free-text and argument field.
The records follow :data:`SCHEMA_FILE` (JSON Schema draft 2020-12), versioned by :data:`SCHEMA_ID`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mcp_gatekeeper.models import CallRecord
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.webredact import redact

SCHEMA_ID = "mcp-gatekeeper/decision-record/v1"
SCHEMA_FILE = Path(__file__).resolve().parent / "decision-record.v1.schema.json"
ONLY = ("modified", "rejected", "approved")
PAGE = 500
"""Decisions read from the store at a time: memory stays flat however long the history."""
NO_DESCRIPTION = "unavailable: the store holds no tool definition with the hash this call was made against"


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _safe(value: Any, hasher: Callable[[str], str]) -> Any:
    try:
        return redact(value, hasher)
    except RecursionError:
        return "(too deeply nested to redact; omitted from the export)"


def decision_record(
    rec: CallRecord, decision: str, definition: dict[str, Any] | None, hasher: Callable[[str], str]
) -> dict[str, Any]:
    """The export record of one decided call (secrets already redacted)."""
    proposed = _safe(rec.arguments, hasher)
    if decision == "rejected":
        final = None
    elif decision == "modified":
        final = _safe(rec.modified_arguments, hasher)
    else:
        final = proposed
    description = definition.get("description") if definition is not None else None
    assert rec.decided_at is not None
    return {
        "schema": SCHEMA_ID,
        "call_id": rec.id,
        "upstream": rec.upstream,
        "tool": rec.tool,
        "tool_description": _safe(description, hasher) if isinstance(description, str) else None,
        "tool_description_source": "tool definition" if isinstance(description, str) else NO_DESCRIPTION,
        "input_schema": _safe(rec.input_schema, hasher),  # an upstream's defaults and examples may hold secrets
        "proposed_arguments": proposed,
        "final_arguments": final,
        "decision": decision,
        "reason": _safe(rec.reason, hasher),
        "reviewer": rec.decided_by,
        "channel": rec.channel,
        "latency_seconds": round(max(0.0, rec.decided_at - rec.created_at), 3),
        "rule": rec.rule,
        "gate": rec.gate,
        "risk": rec.risk,
        "summary": _safe(rec.summary, hasher),
        "agent_reason": _safe(rec.agent_reason, hasher),
        "outcome": rec.state.value,
        "held_at": _iso(rec.created_at),
        "decided_at": _iso(rec.decided_at),
        "preference_pair": {"rejected": proposed, "chosen": final} if decision == "modified" else None,
    }


async def decision_records(
    store: Store,
    *,
    hasher: Callable[[str], str],
    since: float | None,
    until: float,
    only: str | None = None,
    page: int = PAGE,
) -> AsyncIterator[dict[str, Any]]:
    """Every human decision made in ``[since, until)``, oldest first, one page of the store at a time."""
    definitions: dict[tuple[str, str, str | None], dict[str, Any] | None] = {}
    after: tuple[float, str] | None = None
    while True:
        rows = await store.review.decided_calls(since=since, until=until, only=only, after=after, limit=page)
        for rec, decision in rows:
            key = (rec.upstream, rec.tool, rec.tooldef_hash)
            if key not in definitions:
                if len(definitions) > 4096:  # bounded: a long history of many tools does not grow it forever
                    definitions.clear()
                definitions[key] = await store.review.tool_definition(*key)
            yield decision_record(rec, decision, definitions[key], hasher)
        if len(rows) < page:
            return
        last = rows[-1][0]
        assert last.decided_at is not None
        after = (last.decided_at, last.id)


def jsonl(record: dict[str, Any]) -> str:
    """One line of the export: ASCII JSON (no raw newline, control, bidi or invisible character inside)."""
    return json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n"
