"""Team mode's reviewer accounts and the login attempts that rate-limit password guessing.

Every change to an account is audited (``account_added``, ``account_removed``, ``password_changed``); the
password hash never leaves this module except to the login check (:meth:`Reviewers.password_hash`).
Removing an account, or changing its password, ends its live sessions in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mcp_gatekeeper.accounts import Reviewer
from mcp_gatekeeper.errors import NotAllowedError
from mcp_gatekeeper.store import schema
from mcp_gatekeeper.store.audit import append
from mcp_gatekeeper.store.engine import Engine, Tx


def _end_sessions_of(c: Tx, clock: Any, account: str, *, by: str, channel: str, why: str) -> list[str]:
    now = clock.now()
    ids = [r[0] for r in c.execute("SELECT id FROM web_sessions WHERE account = ? AND ended_at IS NULL", (account,))]
    for sid in ids:
        c.execute(
            "UPDATE web_sessions SET ended_at = ?, ended_by = ?, ended_why = ? WHERE id = ? AND ended_at IS NULL",
            (now, by, why, sid),
        )
        append(c, clock, event="session_ended", call_id=None, actor=by, channel=channel,
            detail={"session": sid, "why": why, "account": account},
        )  # fmt: skip
    return ids


def _check_slack_free(c: Tx, name: str, identities: Sequence[str]) -> None:
    """Refuse a Slack member that is another account's: one member's click is one account's, never two."""
    if not identities:
        return
    for other, linked in c.execute("SELECT name, slack FROM reviewers WHERE name <> ?", (name,)).fetchall():
        taken = set(identities) & set(json.loads(linked or "[]"))
        if taken:
            raise NotAllowedError(
                f"the Slack member {sorted(taken)[0]} is linked to the account {other!r} already", why="slack_taken"
            )


class Reviewers:
    """The ``reviewers`` and ``login_attempts`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def add(
        self,
        name: str,
        *,
        role: str,
        groups: Sequence[str],
        principals: Sequence[str],
        password_hash: str,
        by: str,
        channel: str,
        slack: Sequence[str] = (),
    ) -> Reviewer:
        """A new account (``NotAllowedError`` ``exists`` if the name is taken, ``slack_taken`` if one of its
        Slack members is another account's)."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            if c.execute("SELECT 1 FROM reviewers WHERE name = ?", (name,)).fetchall():
                return False
            _check_slack_free(c, name, slack)
            c.execute(
                "INSERT INTO reviewers (name, role, groups, principals, password_hash, created_at, created_by,"
                " password_changed_at, slack) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, role, json.dumps(list(groups)), json.dumps(list(principals)), password_hash, now, by, now,
                 json.dumps(list(slack))),
            )  # fmt: skip
            detail = {"account": name, "role": role, "groups": list(groups), "principals": list(principals)}
            if slack:
                detail["slack"] = list(slack)
            append(c, self._engine.clock, event="account_added", call_id=None, actor=by, channel=channel,
                   detail=detail)  # fmt: skip
            return True

        if not await self._engine.write(_body):
            raise NotAllowedError(f"an account named {name!r} exists already", why="exists")
        found = await self.get(name)
        assert found is not None  # written just now, and never deleted in between by the one writer
        return found

    async def link_slack(self, name: str, identity: str, *, unlink: bool = False, by: str, channel: str) -> Reviewer:
        """Map the Slack member ``identity`` (``WORKSPACE/MEMBER``) to account ``name``, or remove the mapping
        (audited: ``account_slack_linked`` / ``account_slack_unlinked``). ``NotAllowedError``: ``no_account``,
        ``slack_taken`` (another account's member)."""

        def _body(c: Tx) -> Any:
            row = c.execute("SELECT slack FROM reviewers WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            mine = list(json.loads(row[0] or "[]"))
            if unlink:
                if identity not in mine:
                    return True
                mine.remove(identity)
            else:
                if identity in mine:
                    return True
                _check_slack_free(c, name, [identity])
                mine.append(identity)
            c.execute("UPDATE reviewers SET slack = ? WHERE name = ?", (json.dumps(mine), name))
            append(c, self._engine.clock, event="account_slack_unlinked" if unlink else "account_slack_linked",
                   call_id=None, actor=by, channel=channel, detail={"account": name, "slack": identity})  # fmt: skip
            return True

        if not await self._engine.write(_body):
            raise NotAllowedError(f"no account named {name!r}", why="no_account")
        found = await self.get(name)
        assert found is not None
        return found

    async def by_slack(self, team_id: str, user_id: str) -> Reviewer | None:
        """The account the Slack member ``user_id`` of workspace ``team_id`` is mapped to, or ``None``."""
        identity = f"{team_id}/{user_id}"
        found = [r for r in await self.list_reviewers() if identity in r.slack]
        return found[0] if len(found) == 1 else None

    async def get(self, name: str) -> Reviewer | None:
        rows = await self._engine.read(f"SELECT {schema.REVIEWER_COLUMNS} FROM reviewers WHERE name = ?", (name,))
        return schema.reviewer(rows[0]) if rows else None

    async def list_reviewers(self) -> list[Reviewer]:
        rows = await self._engine.read(f"SELECT {schema.REVIEWER_COLUMNS} FROM reviewers ORDER BY name")
        return [schema.reviewer(r) for r in rows]

    async def count(self) -> int:
        rows = await self._engine.read("SELECT COUNT(*) FROM reviewers")
        return int(rows[0][0])

    async def password_hash(self, name: str) -> str | None:
        """For the login check only."""
        rows = await self._engine.read("SELECT password_hash FROM reviewers WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    async def remove(self, name: str, *, by: str, channel: str) -> list[str]:
        """Delete an account and end its live sessions (their ids). ``NotAllowedError`` ``no_account``."""

        def _body(c: Tx) -> Any:
            if c.execute("DELETE FROM reviewers WHERE name = ?", (name,)).rowcount != 1:
                return None
            append(c, self._engine.clock, event="account_removed", call_id=None, actor=by, channel=channel,
                detail={"account": name},
            )  # fmt: skip
            return _end_sessions_of(c, self._engine.clock, name, by=by, channel=channel, why="account removed")

        ended: list[str] | None = await self._engine.write(_body)
        if ended is None:
            raise NotAllowedError(f"no account named {name!r}", why="no_account")
        return ended

    async def set_password(self, name: str, password_hash: str, *, by: str, channel: str) -> list[str]:
        """Replace an account's password and end its live sessions (their ids)."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            cur = c.execute(
                "UPDATE reviewers SET password_hash = ?, password_changed_at = ? WHERE name = ?",
                (password_hash, now, name),
            )
            if cur.rowcount != 1:
                return None
            append(c, self._engine.clock, event="password_changed", call_id=None, actor=by, channel=channel,
                detail={"account": name},
            )  # fmt: skip
            return _end_sessions_of(c, self._engine.clock, name, by=by, channel=channel, why="password changed")

        ended: list[str] | None = await self._engine.write(_body)
        if ended is None:
            raise NotAllowedError(f"no account named {name!r}", why="no_account")
        return ended

    # ------------------------------------------------------------------ login attempts

    async def failed_logins(self, *, account: str, address: str, since: float) -> tuple[int, int]:
        """Failed attempts since ``since``: ``(for this account, from this address)``."""
        rows = await self._engine.read(
            "SELECT (SELECT COUNT(*) FROM login_attempts WHERE account = ? AND at >= ? AND ok = 0),"
            " (SELECT COUNT(*) FROM login_attempts WHERE address = ? AND at >= ? AND ok = 0)",
            (account, since, address, since),
        )
        return int(rows[0][0]), int(rows[0][1])

    async def note_login(self, *, account: str, address: str, ok: bool, why: str | None = None) -> None:
        """Record one attempt (audited: ``login_failed`` / ``login_refused``; a success is the session's start)."""
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            c.execute("DELETE FROM login_attempts WHERE at < ?", (now - 86400,))
            c.execute(
                "INSERT INTO login_attempts (account, address, at, ok) VALUES (?, ?, ?, ?)",
                (account, address, now, 1 if ok else 0),
            )
            if not ok:
                append(c, self._engine.clock, event="login_failed", call_id=None, actor=account[:64], channel="web",
                    detail={"account": account[:64], "address": address, "why": why},
                )  # fmt: skip

        await self._engine.write(_body)
