"""The MCP Apps decision card's nonces (migration ``0009_app_nonces``): only their SHA-256 is stored.

Each is bound to a held call, its arguments digest and its principal, expires, and is spent once (a
compare-and-set). A refused use of the card's decide tool is appended to the audit chain here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp_gatekeeper.store.audit import append
from mcp_gatekeeper.store.engine import Engine, Tx


@dataclass(frozen=True, slots=True)
class AppNonce:
    """A decision card's nonce as stored: only its hash, and what it is bound to."""

    nonce_hash: str
    call_id: str
    args_digest: str
    principal: str | None
    created_at: float
    expires_at: float
    used_at: float | None


class AppNonces:
    """The ``app_nonces`` table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def add(
        self, nonce_hash: str, *, call_id: str, args_digest: str, principal: str | None, expires_at: float
    ) -> None:
        now = self._engine.clock.now()

        def _body(c: Tx) -> None:
            c.execute(
                "INSERT INTO app_nonces (nonce_hash, call_id, args_digest, principal, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (nonce_hash, call_id, args_digest, principal, now, expires_at),
            )

        await self._engine.write(_body, fsync=False)

    async def get(self, nonce_hash: str) -> AppNonce | None:
        rows = await self._engine.read(
            "SELECT nonce_hash, call_id, args_digest, principal, created_at, expires_at, used_at"
            " FROM app_nonces WHERE nonce_hash = ?",
            (nonce_hash,),
        )
        return AppNonce(*rows[0]) if rows else None

    async def spend(self, nonce_hash: str, *, now: float) -> bool:
        """Mark the nonce used; False if it was used already or has expired (one use, even under a race)."""

        def _body(c: Tx) -> bool:
            cur = c.execute(
                "UPDATE app_nonces SET used_at = ? WHERE nonce_hash = ? AND used_at IS NULL AND expires_at > ?",
                (now, nonce_hash, now),
            )
            return bool(cur.rowcount == 1)

        spent: bool = await self._engine.write(_body)
        return spent

    async def forget(self, *, before: float) -> None:
        """Drop nonces that expired before ``before`` (used or not)."""

        def _body(c: Tx) -> None:
            c.execute("DELETE FROM app_nonces WHERE expires_at < ?", (before,))

        await self._engine.write(_body, fsync=False)

    async def audit_refusal(self, call_id: str | None, *, actor: str, detail: dict[str, Any]) -> None:
        """A refused use of the card's decide tool, in the audit chain."""

        def _body(c: Tx) -> None:
            append(
                c, self._engine.clock, event="app_decide_refused", call_id=call_id, actor=actor, channel="in-chat",
                detail=detail,
            )  # fmt: skip

        await self._engine.write(_body)
