"""The audit chain: every state change appends a hash-chained event in the same transaction as the change.

If the audit write fails, the change does not happen (it is one transaction). :func:`append` is what the
other repositories call inside their transactions; :class:`AuditLog` reads, verifies and notes problems.
"""

from __future__ import annotations

from typing import Any

from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.errors import CallNotFoundError
from mcp_gatekeeper.models import GENESIS_HASH, AuditEvent, audit_body, audit_hash, canonical_json, digest
from mcp_gatekeeper.store import schema
from mcp_gatekeeper.store.engine import Engine, Tx


def append(
    c: Tx,
    clock: Clock,
    *,
    event: str,
    call_id: str | None,
    actor: str | None = None,
    channel: str | None = None,
    args_digest: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one event to the chain, inside the caller's transaction ``c``."""
    row = c.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    prev = row[0] if row else GENESIS_HASH
    at = clock.now()
    body = audit_body(
        at=at, call_id=call_id, event=event, actor=actor, channel=channel, args_digest=args_digest,
        detail=detail or {},
    )  # fmt: skip
    h = audit_hash(prev, body)
    c.execute(
        "INSERT INTO audit (at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (at, call_id, event, actor, channel, args_digest, canonical_json(detail or {}), prev, h),
    )


class AuditLog:
    """Reading and checking the chain."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def events(
        self, *, call_id: str | None = None, limit: int = 1000, before_seq: int | None = None
    ) -> list[AuditEvent]:
        """The newest ``limit`` events (of one call, or before ``before_seq``), oldest first."""
        where: list[str] = []
        params: list[Any] = []
        if call_id is not None:
            where.append("call_id = ?")
            params.append(call_id)
        if before_seq is not None:
            where.append("seq < ?")
            params.append(before_seq)
        sql = f"SELECT {schema.AUDIT_COLUMNS} FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        rows = await self._engine.read(sql, (*params, limit))
        return [schema.audit_event(r) for r in reversed(rows)]

    async def verify(self) -> tuple[bool, int, str]:
        """Walk the whole chain: (ok, events checked, message)."""

        def walk(c: Tx) -> tuple[bool, int, str]:
            prev = GENESIS_HASH
            count = 0
            for r in c.execute(f"SELECT {schema.AUDIT_COLUMNS} FROM audit ORDER BY seq"):
                event = schema.audit_event(tuple(r))
                if event.prev_hash != prev:
                    return (
                        False,
                        count,
                        f"event {event.seq}: its previous-hash link is broken (an event was removed or reordered)",
                    )
                if not event.hash_ok:
                    return False, count, f"event {event.seq}: its content does not match its hash (it was altered)"
                prev = event.hash
                count += 1
            return True, count, f"audit chain intact: {count} events"

        return await self._engine.scan(walk)

    async def verify_decision(self, call_id: str) -> str | None:
        """Check that an approval was made through ``decide`` and recorded in the audit chain.

        Returns ``None`` if it was, else why not. A row set to ``approved`` by writing the database directly
        (not through the gatekeeper) has no such event, so it is never executed.
        """
        read = self._engine.read
        rows = await read(
            f"SELECT {schema.AUDIT_COLUMNS} FROM audit WHERE call_id = ? AND event = 'approved' ORDER BY seq",
            (call_id,),
        )
        if len(rows) != 1:
            return f"{len(rows)} approval events in the audit log for this call (expected exactly one)"
        event = schema.audit_event(rows[0])
        if not event.hash_ok:
            return "the approval's audit event does not match its hash"
        prev = await read("SELECT hash FROM audit WHERE seq < ? ORDER BY seq DESC LIMIT 1", (event.seq,))
        if (prev[0][0] if prev else GENESIS_HASH) != event.prev_hash:
            return "the approval's audit event is not linked into the chain"
        calls = await read(f"SELECT {schema.CALL_COLUMNS} FROM calls WHERE id = ?", (call_id,))
        if not calls:
            raise CallNotFoundError(f"no call with id {call_id!r}")
        rec = schema.call_record(calls[0])
        if event.args_digest != rec.args_digest:
            return "the approval was given for different arguments"
        modified = event.detail.get("modified_args_digest")
        if (rec.modified_arguments is None) != (modified is None) or (
            rec.modified_arguments is not None and digest(rec.modified_arguments) != modified
        ):
            return "the modified arguments differ from the ones the reviewer approved"
        return None

    async def decision_events(self) -> tuple[int, list[AuditEvent]]:
        """Every decision event (``approved`` / ``rejected`` of a call), oldest first, and the last event written
        before decisions were signed (migration ``0012_signatures``): the ones after it must carry a signature."""
        since = await self._engine.read("SELECT MAX(seq) FROM signing_since")
        rows = await self._engine.read(
            f"SELECT {schema.AUDIT_COLUMNS} FROM audit WHERE event IN ('approved', 'rejected') AND call_id IS NOT NULL"
            " ORDER BY seq"
        )
        return int(since[0][0] or 0), [schema.audit_event(r) for r in rows]

    async def step_events(self) -> tuple[int, list[AuditEvent]]:
        """Every quorum step (``approval_given``), oldest first, and the last event written before steps were
        signed (migration ``0014_quorum_steps``): the ones after it must carry a signature."""
        since = await self._engine.read("SELECT MAX(seq) FROM step_signing_since")
        rows = await self._engine.read(
            f"SELECT {schema.AUDIT_COLUMNS} FROM audit WHERE event = 'approval_given' AND call_id IS NOT NULL"
            " ORDER BY seq"
        )
        return int(since[0][0] or 0), [schema.audit_event(r) for r in rows]

    async def note_problem(self, detail: dict[str, Any], *, instance_id: str | None) -> None:
        """Record a set-up problem a process found at start (audited; shown on the page while it runs)."""
        actor = f"instance:{instance_id}" if instance_id else None

        def _body(c: Tx) -> Any:
            append(c, self._engine.clock, event="config_problem", call_id=None, actor=actor, channel="startup",
                   detail=detail)  # fmt: skip

        await self._engine.write(_body)

    async def live_problems(self) -> list[AuditEvent]:
        """The set-up problems noted by gatekeeper processes that are still running, oldest first."""
        rows = await self._engine.read(
            f"SELECT {', '.join('a.' + c.strip() for c in schema.AUDIT_COLUMNS.split(','))} FROM audit a"
            " JOIN instances i ON a.actor = 'instance:' || i.id"
            " WHERE a.call_id IS NULL AND a.event = 'config_problem' AND i.stopped_at IS NULL ORDER BY a.seq"
        )
        return [schema.audit_event(r) for r in rows]
