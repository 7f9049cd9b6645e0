"""The recorded history as calibration reads it (:mod:`mcp_gatekeeper.calibrate`): recorded calls a page at a
time, and every tool definition a call was checked against, by hash (``tool_definitions``, migration
``0008_shadow``; :meth:`mcp_gatekeeper.store.pins.Pins.check` records each new one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcp_gatekeeper.models import NewCall, PastCall, State, canonical_json, new_call_id
from mcp_gatekeeper.store import schema
from mcp_gatekeeper.store.engine import Engine, Tx


def remember_definition(c: Tx, upstream: str, tool: str, h: str, definition: dict[str, Any], now: float) -> None:
    """Keep a tool definition by its hash (the first sight of each hash wins)."""
    c.execute(
        "INSERT OR IGNORE INTO tool_definitions (hash, upstream, tool, definition, first_seen) VALUES (?, ?, ?, ?, ?)",
        (h, upstream, tool, canonical_json(definition), now),
    )


class History:
    """Reads of the ``calls`` and ``tool_definitions`` tables for replay and suggestions."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def past_calls(
        self,
        *,
        since: float,
        until: float,
        after: tuple[float, str] | None = None,
        limit: int = 2000,
        upstream: str | None = None,
        tool: str | None = None,
    ) -> list[PastCall]:
        """Recorded calls created in ``[since, until)``, oldest first, a page at a time (``after`` = the last
        page's ``(created_at, id)``); only the columns calibration reads."""
        where = ["created_at >= ?", "created_at < ?"]
        params: list[Any] = [since, until]
        if after is not None:
            where.append("(created_at, id) > (?, ?)")
            params.extend(after)
        for col, val in (("upstream", upstream), ("tool", tool)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        rows = await self._engine.read(
            f"SELECT {schema.PAST_CALL_COLUMNS} FROM calls WHERE {' AND '.join(where)} ORDER BY created_at, id LIMIT ?",
            [*params, limit],
        )
        return [schema.past_call(r) for r in rows]

    async def tool_definitions(self, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The recorded tool definitions with these hashes (a hash never recorded is absent)."""
        out: dict[str, dict[str, Any]] = {}
        wanted = list(dict.fromkeys(hashes))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            rows = await self._engine.read(
                f"SELECT hash, definition FROM tool_definitions WHERE hash IN ({schema.placeholders(chunk)})", chunk
            )
            out.update({r[0]: schema.loads(r[1]) for r in rows})
        return out

    async def insert(self, rows: Sequence[tuple[NewCall, State, dict[str, Any]]]) -> int:
        """Write many recorded calls in one transaction, without audit events: for benchmarks and tests that need
        a long history fast (``dict`` = extra columns: ``created_at``, ``decided_at``, ``decided_by``, ``channel``,
        ``reason``, ``modified_arguments``). Never used by the proxy."""
        allowed = {"created_at", "decided_at", "decided_by", "channel", "reason", "modified_arguments"}
        now = self._engine.clock.now()

        def _body(c: Tx) -> int:
            for new, state, extra in rows:
                if bad := set(extra) - allowed:
                    raise ValueError(f"cannot set {bad}")
                modified = extra.get("modified_arguments")
                c.execute(
                    "INSERT INTO calls (id, state, upstream, tool, arguments, args_digest, gate, risk, rule,"
                    " tooldef_hash, reasons, agent_confidence, client, created_at, decided_at, decided_by, channel,"
                    " reason, modified_arguments, shadow_action, shadow_rule, shadow_reason)"
                    f" VALUES ({schema.placeholders(range(22))})",
                    (
                        new_call_id(), state.value, new.upstream, new.tool, canonical_json(new.arguments),
                        new.args_digest, new.gate, new.risk, new.rule, new.tooldef_hash,
                        canonical_json(list(new.reasons)), new.agent_confidence, canonical_json(new.client),
                        extra.get("created_at", now), extra.get("decided_at"), extra.get("decided_by"),
                        extra.get("channel"), extra.get("reason"),
                        None if modified is None else canonical_json(modified),
                        new.shadow_action, new.shadow_rule, new.shadow_reason,
                    ),
                )  # fmt: skip
            return len(rows)

        done: int = await self._engine.write(_body)
        return done

    async def remember_definitions(self, upstream: str, tools: dict[str, tuple[str, dict[str, Any]]]) -> None:
        """Record tool definitions by hash without pinning them (tests and benchmarks seeding a history)."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> None:
            for name, (h, definition) in tools.items():
                remember_definition(c, upstream, name, h, definition, now)

        await self._engine.write(_body)
