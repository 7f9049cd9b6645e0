"""Leases: a human's standing permission for a tool within an envelope, spent one use at a time (CAS)."""

from __future__ import annotations

from typing import Any

from mcp_gatekeeper.errors import AlreadyDecidedError, CallNotFoundError
from mcp_gatekeeper.models import Lease, canonical_json, new_call_id
from mcp_gatekeeper.store import schema
from mcp_gatekeeper.store.audit import append
from mcp_gatekeeper.store.engine import Engine, Tx


class Leases:
    """The ``leases`` table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def create(
        self,
        *,
        upstream: str,
        tool: str,
        tooldef_hash: str | None,
        envelope: dict[str, Any],
        created_by: str,
        channel: str,
        source_call: str | None,
        expires_at: float | None,
        calls: int | None,
    ) -> Lease:
        lid = "l" + new_call_id()[:15]
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            c.execute(
                "INSERT INTO leases (id, upstream, tool, tooldef_hash, envelope, created_at, created_by, source_call,"
                " expires_at, calls_left) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    lid,
                    upstream,
                    tool,
                    tooldef_hash,
                    canonical_json(envelope),
                    now,
                    created_by,
                    source_call,
                    expires_at,
                    calls,
                ),
            )
            append(c, self._engine.clock, event="lease_granted", call_id=source_call, actor=created_by, channel=channel,
                detail={"lease": lid, "upstream": upstream, "tool": tool, "envelope": envelope,
                        "expires_at": expires_at, "calls": calls},
            )  # fmt: skip

        await self._engine.write(_body)
        return await self.get(lid)

    async def get(self, lease_id: str) -> Lease:
        rows = await self._engine.read(f"SELECT {schema.LEASE_COLUMNS} FROM leases WHERE id = ?", (lease_id,))
        if not rows:
            raise CallNotFoundError(f"no lease {lease_id!r}")
        return schema.lease(rows[0])

    async def list_leases(
        self, *, active_at: float | None = None, upstream: str | None = None, tool: str | None = None
    ) -> list[Lease]:
        sql = f"SELECT {schema.LEASE_COLUMNS} FROM leases"
        where: list[str] = []
        params: list[Any] = []
        if active_at is not None:
            where.append(
                "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?) AND (calls_left IS NULL OR calls_left > 0)"
            )
            params.append(active_at)
        for col, val in (("upstream", upstream), ("tool", tool)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [schema.lease(r) for r in await self._engine.read(sql + " ORDER BY created_at DESC LIMIT 1000", params)]

    async def revoke(self, lease_id: str, *, by: str, channel: str) -> Lease:
        def _body(c: Tx) -> Any:
            cur = c.execute(
                "UPDATE leases SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at IS NULL",
                (self._engine.clock.now(), by, lease_id),
            )
            if cur.rowcount != 1:
                exists = c.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone()
                if exists is None:
                    raise CallNotFoundError(f"no lease {lease_id!r}")
                raise AlreadyDecidedError(f"lease {lease_id} is already revoked", why="decided")
            append(
                c,
                self._engine.clock,
                event="lease_revoked",
                call_id=None,
                actor=by,
                channel=channel,
                detail={"lease": lease_id},
            )

        await self._engine.write(_body)
        return await self.get(lease_id)

    async def use(self, lease_id: str, *, call_id: str | None) -> bool:
        """Spend one use of a lease (CAS): False if it expired, ran out or was revoked meanwhile."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            cur = c.execute(
                "UPDATE leases SET used = used + 1, calls_left = CASE WHEN calls_left IS NULL THEN NULL ELSE calls_left - 1 END"
                " WHERE id = ? AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"
                " AND (calls_left IS NULL OR calls_left > 0)",
                (lease_id, now),
            )
            if cur.rowcount != 1:
                return False
            append(
                c,
                self._engine.clock,
                event="lease_used",
                call_id=call_id,
                actor="lease",
                channel="lease",
                detail={"lease": lease_id},
            )
            return True

        done: bool = await self._engine.write(_body)
        return done
