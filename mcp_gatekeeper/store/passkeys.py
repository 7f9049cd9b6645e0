"""Reviewers' passkeys (WebAuthn credentials): registered, listed, and their sign counts advanced by compare-and-set."""

from __future__ import annotations

from typing import Any

from mcp_gatekeeper.passkeys import Credential
from mcp_gatekeeper.store.audit import append
from mcp_gatekeeper.store.engine import Engine, Tx

_COLUMNS = "credential_id, reviewer, public_key, sign_count"


def _credential(r: Any) -> Credential:
    return Credential(credential_id=r[0], reviewer=r[1], public_key=bytes.fromhex(r[2]), sign_count=int(r[3]))


class Passkeys:
    """The ``passkeys`` table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def add(self, credential: Credential, *, channel: str) -> bool:
        """Register a credential (audited); False if that credential id is already registered."""

        def _body(c: Tx) -> bool:
            cur = c.execute(
                f"INSERT OR IGNORE INTO passkeys ({_COLUMNS}, created_at) VALUES (?, ?, ?, ?, ?)",
                (credential.credential_id, credential.reviewer, credential.public_key.hex(), credential.sign_count,
                 self._engine.clock.now()),
            )  # fmt: skip
            if cur.rowcount != 1:
                return False
            append(c, self._engine.clock, event="passkey_registered", call_id=None, actor=credential.reviewer,
                   channel=channel, detail={"credential_id": credential.credential_id})  # fmt: skip
            return True

        done: bool = await self._engine.write(_body)
        return done

    async def note_refused(self, reviewer: str, *, channel: str, why: str, message: str) -> None:
        """Audit a refused registration (``passkey_registration_refused``): no fresh proof of the account, say."""

        def _body(c: Tx) -> None:
            append(c, self._engine.clock, event="passkey_registration_refused", call_id=None, actor=reviewer[:64],
                   channel=channel, detail={"why": why, "message": message})  # fmt: skip

        await self._engine.write(_body)

    async def of_reviewer(self, reviewer: str) -> list[Credential]:
        rows = await self._engine.read(
            f"SELECT {_COLUMNS} FROM passkeys WHERE reviewer = ? ORDER BY created_at", (reviewer,)
        )
        return [_credential(r) for r in rows]

    async def get(self, credential_id: str) -> Credential | None:
        rows = await self._engine.read(f"SELECT {_COLUMNS} FROM passkeys WHERE credential_id = ?", (credential_id,))
        return _credential(rows[0]) if rows else None

    async def advance(self, credential_id: str, *, seen: int, new: int) -> bool:
        """CAS the sign count ``seen`` → ``new``: two assertions with one count are never both accepted."""

        def _body(c: Tx) -> bool:
            cur = c.execute(
                "UPDATE passkeys SET sign_count = ? WHERE credential_id = ? AND sign_count = ?",
                (new, credential_id, seen),
            )
            return cur.rowcount == 1

        done: bool = await self._engine.write(_body)
        return done
