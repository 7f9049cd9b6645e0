"""The approval page's sessions (server-side, shared by every process serving the page) and one-time login codes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcp_gatekeeper.models import WebSession
from mcp_gatekeeper.store import schema
from mcp_gatekeeper.store.audit import append
from mcp_gatekeeper.store.engine import Engine, Tx


class Sessions:
    """The ``web_sessions`` and ``login_codes`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def add_login_code(self, code_hash: str, *, label: str, expires_at: float) -> None:
        """Store a one-time login code (only its hash); codes past their expiry are dropped on the way."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            c.execute("DELETE FROM login_codes WHERE expires_at < ?", (now - 86400,))
            c.execute(
                "INSERT INTO login_codes (code_hash, label, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (code_hash, label, now, expires_at),
            )

        await self._engine.write(_body)

    async def redeem_login_code(
        self, code_hash: str, session: WebSession, *, secret_hash: str, key_hash: str
    ) -> WebSession | None:
        """Spend a login code (compare-and-set: once, before it expires) and open ``session`` for it.

        The session takes the code's label. ``None`` if the code is unknown, used or expired.
        """
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            rows = c.execute(
                "UPDATE login_codes SET used_at = ? WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?"
                " RETURNING label",
                (now, code_hash, now),
            ).fetchall()  # all: a RETURNING statement left unfinished would block the COMMIT
            if not rows:
                return None
            row = rows[0]
            s = session
            # sessions over for 30 days are forgotten (their start and end stay in the audit log)
            c.execute(
                "DELETE FROM web_sessions WHERE MIN(COALESCE(ended_at, ends_at), expires_at, ends_at) < ?",
                (now - 30 * 86400,),
            )
            c.execute(
                "INSERT INTO web_sessions (id, secret_hash, key_hash, label, host, user_agent, created_at,"
                " last_seen_at, expires_at, ends_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (s.id, secret_hash, key_hash, row[0], s.host, s.user_agent, now, now, s.expires_at, s.ends_at),
            )
            append(c, self._engine.clock, event="session_started", call_id=None, actor=f"web:{row[0]}", channel="web",
                detail={"session": s.id, "host": s.host, "user_agent": s.user_agent},
            )  # fmt: skip
            return True

        if not await self._engine.write(_body):
            return None
        return await self.get(session.id)

    async def open_for_account(
        self, session: WebSession, *, secret_hash: str, key_hash: str, password_hash: str | None = None
    ) -> WebSession | None:
        """Open ``session`` for ``session.account`` (team mode, after its password was checked), if that account
        still exists and (``password_hash``: the hash the login checked) its password was not changed since;
        audited as the account's ``session_started``."""
        now = self._engine.clock.now()
        s = session

        def _body(c: Tx) -> Any:
            row = c.execute("SELECT password_hash FROM reviewers WHERE name = ?", (s.account,)).fetchone()
            if row is None or (password_hash is not None and row[0] != password_hash):
                return None
            c.execute(
                "DELETE FROM web_sessions WHERE MIN(COALESCE(ended_at, ends_at), expires_at, ends_at) < ?",
                (now - 30 * 86400,),
            )
            c.execute(
                "INSERT INTO web_sessions (id, secret_hash, key_hash, label, host, user_agent, created_at,"
                " last_seen_at, expires_at, ends_at, account) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (s.id, secret_hash, key_hash, s.account, s.host, s.user_agent, now, now, s.expires_at, s.ends_at,
                 s.account),
            )  # fmt: skip
            append(c, self._engine.clock, event="session_started", call_id=None, actor=s.account, channel="web",
                detail={"session": s.id, "host": s.host, "user_agent": s.user_agent, "account": s.account},
            )  # fmt: skip
            return True

        if not await self._engine.write(_body):
            return None
        return await self.get(session.id)

    async def of_account(self, account: str) -> list[str]:
        """The live sessions' ids of one account."""
        now = self._engine.clock.now()
        rows = await self._engine.read(
            "SELECT id FROM web_sessions WHERE account = ? AND ended_at IS NULL AND expires_at > ? AND ends_at > ?",
            (account, now, now),
        )
        return [r[0] for r in rows]

    async def get(self, session_id: str) -> WebSession | None:
        rows = await self._engine.read(f"SELECT {schema.SESSION_COLUMNS} FROM web_sessions WHERE id = ?", (session_id,))
        return schema.web_session(rows[0]) if rows else None

    async def session_hashes(self, session_id: str) -> tuple[WebSession, str, str] | None:
        """A session with the hashes of its cookie secret and its page key (for the page's guard only)."""
        rows = await self._engine.read(
            f"SELECT {schema.SESSION_COLUMNS}, secret_hash, key_hash FROM web_sessions WHERE id = ?", (session_id,)
        )
        return (schema.web_session(rows[0]), rows[0][-2], rows[0][-1]) if rows else None

    async def touch(self, session_id: str, *, expires_at: float) -> None:
        """Slide a live session's idle expiry forward (never past its end, never revives an ended one)."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            c.execute(
                "UPDATE web_sessions SET last_seen_at = ?, expires_at = MIN(?, ends_at)"
                " WHERE id = ? AND ended_at IS NULL AND expires_at > ?",
                (now, expires_at, session_id, now),
            )

        await self._engine.write(_body, fsync=False)

    async def list_sessions(self, *, alive_only: bool = True) -> list[WebSession]:
        now = self._engine.clock.now()
        sql = f"SELECT {schema.SESSION_COLUMNS} FROM web_sessions"
        params: tuple[Any, ...] = ()
        if alive_only:
            sql += " WHERE ended_at IS NULL AND expires_at > ? AND ends_at > ?"
            params = (now, now)
        return [
            schema.web_session(r) for r in await self._engine.read(sql + " ORDER BY created_at DESC LIMIT 500", params)
        ]

    async def end(self, session_ids: Sequence[str] | None, *, by: str, channel: str, why: str) -> list[str]:
        """End live sessions (``None``: every live one): logout or revocation. The ids actually ended."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            if session_ids is None:
                rows = c.execute("SELECT id FROM web_sessions WHERE ended_at IS NULL").fetchall()
                ids = [r[0] for r in rows]
            else:
                ids = list(session_ids)
            ended = []
            for sid in ids:
                cur = c.execute(
                    "UPDATE web_sessions SET ended_at = ?, ended_by = ?, ended_why = ? WHERE id = ? AND ended_at IS NULL",
                    (now, by, why, sid),
                )
                if cur.rowcount == 1:
                    ended.append(sid)
                    append(c, self._engine.clock, event="session_ended", call_id=None, actor=by, channel=channel,
                        detail={"session": sid, "why": why},
                    )  # fmt: skip
            return ended

        ended: list[str] = await self._engine.write(_body)
        return ended
