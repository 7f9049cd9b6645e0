"""What notification channels keep: the messages they posted about a call (so a Slack message is rewritten with
the call's outcome wherever it is decided), and the request signatures already accepted from Slack (so a
captured request replayed inside Slack's five-minute window decides nothing)."""

from __future__ import annotations

from typing import Any

from mcp_gatekeeper.models import CallRecord, NotifyLink
from mcp_gatekeeper.store import schema
from mcp_gatekeeper.store.engine import Engine, Tx


class NotifyLinks:
    """The ``notify_links`` and ``seen_signatures`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def add(self, link: NotifyLink) -> None:
        """Remember the message ``link.channel`` posted about ``link.call_id`` (a second post replaces the first)."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            c.execute(
                # an upsert both SQLite and PostgreSQL read: the new post replaces the old row whole
                "INSERT INTO notify_links (call_id, channel, target, ref, posted_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (call_id, channel) DO UPDATE SET target = excluded.target, ref = excluded.ref,"
                " posted_at = excluded.posted_at, claimed_by = NULL, claimed_at = NULL, shown_state = NULL,"
                " shown_at = NULL",
                (link.call_id, link.channel, link.target, link.ref, now),
            )

        await self._engine.write(_body)

    async def get(self, call_id: str, channel: str) -> NotifyLink | None:
        rows = await self._engine.read(
            "SELECT call_id, channel, target, ref FROM notify_links WHERE call_id = ? AND channel = ?",
            (call_id, channel),
        )
        return NotifyLink(*rows[0]) if rows else None

    async def shown(self, call_id: str, channel: str) -> str | None:
        """The state the message of ``call_id`` was last rewritten to show (``None``: it still asks)."""
        rows = await self._engine.read(
            "SELECT shown_state FROM notify_links WHERE call_id = ? AND channel = ?", (call_id, channel)
        )
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    async def open_counts(self, channel: str) -> tuple[int, int]:
        """``(messages of channel still asking, of those whose call is no longer pending)``: one read."""
        rows = await self._engine.read(
            "SELECT COUNT(*), COALESCE(SUM(k.state != 'pending'), 0) FROM notify_links l JOIN calls k ON k.id = l.call_id"
            " WHERE l.channel = ? AND l.shown_state IS NULL",
            (channel,),
        )
        return int(rows[0][0]), int(rows[0][1])

    async def claim_updates(
        self, channel: str, *, by: str, stale_after: float = 60.0, limit: int = 50
    ) -> list[tuple[NotifyLink, CallRecord]]:
        """The messages of ``channel`` that still ask for a decision although their call is no longer pending,
        claimed for ``by`` (one updater at a time; a claim older than ``stale_after`` seconds is taken over)."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            rows = c.execute(
                "SELECT l.call_id, l.channel, l.target, l.ref FROM notify_links l JOIN calls k ON k.id = l.call_id"
                " WHERE l.channel = ? AND l.shown_state IS NULL AND k.state != 'pending'"
                " AND (l.claimed_at IS NULL OR l.claimed_at < ?) ORDER BY l.posted_at LIMIT ?",
                (channel, now - stale_after, limit),
            ).fetchall()
            out = []
            for r in rows:
                c.execute(
                    "UPDATE notify_links SET claimed_by = ?, claimed_at = ? WHERE call_id = ? AND channel = ?",
                    (by, now, r[0], r[1]),
                )
                found = c.execute(f"SELECT {schema.CALL_COLUMNS} FROM calls WHERE id = ?", (r[0],)).fetchall()
                out.append((NotifyLink(*r), schema.call_record(found[0])))
            return out

        claimed: list[tuple[NotifyLink, CallRecord]] = await self._engine.write(_body)
        return claimed

    async def settle(self, link: NotifyLink, *, shown_state: str | None) -> None:
        """The message now shows ``shown_state`` (done), or, with ``None``, the claim is given back (retry later)."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            c.execute(
                "UPDATE notify_links SET shown_state = ?, shown_at = ?, claimed_by = NULL, claimed_at = NULL"
                " WHERE call_id = ? AND channel = ?",
                (shown_state, now if shown_state else None, link.call_id, link.channel),
            )

        await self._engine.write(_body)

    async def first_sighting(self, signature: str, *, keep: float) -> bool:
        """Record a request signature as seen; ``False`` if it was seen before (a replay). Signatures older than
        ``keep`` seconds are forgotten on the way (their requests are refused as too old anyway)."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            c.execute("DELETE FROM seen_signatures WHERE seen_at < ?", (now - keep,))
            cur = c.execute(
                "INSERT OR IGNORE INTO seen_signatures (signature, seen_at) VALUES (?, ?)", (signature, now)
            )
            return cur.rowcount == 1

        first: bool = await self._engine.write(_body)
        return first
