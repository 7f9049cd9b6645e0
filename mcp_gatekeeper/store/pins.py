"""Tool-definition pins: the first definition seen is pinned; a changed one is quarantined until a human re-pins."""

from __future__ import annotations

from typing import Any

from mcp_gatekeeper.errors import AlreadyDecidedError, CallNotFoundError
from mcp_gatekeeper.models import Pin, canonical_json
from mcp_gatekeeper.store import schema
from mcp_gatekeeper.store.audit import append
from mcp_gatekeeper.store.engine import Engine, Tx
from mcp_gatekeeper.store.history import remember_definition


class Pins:
    """The ``pins`` table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def check(self, upstream: str, tools: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Pin]:
        """Pin tools seen for the first time; record a changed definition as pending (quarantined).

        Reads first: when nothing is new or changed (the usual case) nothing is written.
        """
        now = self._engine.clock.now()
        current = {p.tool: p for p in await self.list_pins(upstream=upstream)}
        if all(
            name in current
            and ((h == current[name].hash and current[name].pending_hash is None) or h == current[name].pending_hash)
            for name, (h, _definition) in tools.items()
        ):
            return current

        def _body(c: Tx) -> Any:
            rows = c.execute(f"SELECT {schema.PIN_COLUMNS} FROM pins WHERE upstream = ?", (upstream,)).fetchall()
            pins = {r[1]: schema.pin(tuple(r)) for r in rows}
            for name, (h, definition) in tools.items():
                pin = pins.get(name)
                if pin is None or h not in (pin.hash, pin.pending_hash):
                    remember_definition(c, upstream, name, h, definition, now)
                if pin is None:
                    c.execute(
                        "INSERT INTO pins (upstream, tool, hash, definition, pinned_at, pinned_by) VALUES (?, ?, ?, ?, ?, ?)",
                        (upstream, name, h, canonical_json(definition), now, "first-sight"),
                    )
                    append(c, self._engine.clock, event="pinned", call_id=None, actor="gatekeeper", channel="pinning",
                        detail={"upstream": upstream, "tool": name, "hash": h},
                    )  # fmt: skip
                elif h != pin.hash and h != pin.pending_hash:
                    c.execute(
                        "UPDATE pins SET pending_hash = ?, pending_definition = ?, changed_at = ? WHERE upstream = ? AND tool = ?",
                        (h, canonical_json(definition), now, upstream, name),
                    )
                    append(c, self._engine.clock, event="definition_changed", call_id=None, actor="upstream", channel="pinning",
                        detail={"upstream": upstream, "tool": name, "pinned": pin.hash, "now": h},
                    )  # fmt: skip
                elif h == pin.hash and pin.pending_hash is not None:
                    c.execute(
                        "UPDATE pins SET pending_hash = NULL, pending_definition = NULL, changed_at = NULL"
                        " WHERE upstream = ? AND tool = ?",
                        (upstream, name),
                    )
            return c.execute(f"SELECT {schema.PIN_COLUMNS} FROM pins WHERE upstream = ?", (upstream,)).fetchall()

        rows = await self._engine.write(_body)
        return {r[1]: schema.pin(tuple(r)) for r in rows}

    async def list_pins(self, *, upstream: str | None = None, quarantined_only: bool = False) -> list[Pin]:
        sql = f"SELECT {schema.PIN_COLUMNS} FROM pins"
        params: list[Any] = []
        where = []
        if upstream is not None:
            where.append("upstream = ?")
            params.append(upstream)
        if quarantined_only:
            where.append("pending_hash IS NOT NULL")
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [schema.pin(r) for r in await self._engine.read(sql + " ORDER BY upstream, tool", params)]

    async def repin(self, upstream: str, tool: str, *, by: str, channel: str) -> Pin:
        """A human accepts the changed definition: it becomes the pin."""

        def _body(c: Tx) -> Any:
            row = c.execute(
                f"SELECT {schema.PIN_COLUMNS} FROM pins WHERE upstream = ? AND tool = ?", (upstream, tool)
            ).fetchone()
            if row is None:
                raise CallNotFoundError(f"no pinned tool {upstream}/{tool}")
            pin = schema.pin(tuple(row))
            if pin.pending_hash is None or pin.pending_definition is None:
                raise AlreadyDecidedError(f"{upstream}/{tool} is not quarantined; nothing to re-pin", why="decided")
            c.execute(
                "UPDATE pins SET hash = pending_hash, definition = pending_definition, pinned_at = ?, pinned_by = ?,"
                " pending_hash = NULL, pending_definition = NULL, changed_at = NULL WHERE upstream = ? AND tool = ?",
                (self._engine.clock.now(), by, upstream, tool),
            )
            append(c, self._engine.clock, event="repinned", call_id=None, actor=by, channel=channel,
                detail={"upstream": upstream, "tool": tool, "old": pin.hash, "new": pin.pending_hash},
            )  # fmt: skip

        await self._engine.write(_body)
        (new,) = [p for p in await self.list_pins(upstream=upstream) if p.tool == tool]
        return new
