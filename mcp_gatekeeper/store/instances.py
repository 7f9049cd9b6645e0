"""Gatekeeper processes: registration, heartbeats, recovering the calls of processes that are gone, where each
serves the approval page and which config file it runs."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any

from mcp_gatekeeper import hostos
from mcp_gatekeeper.models import State, new_call_id
from mcp_gatekeeper.store import schema
from mcp_gatekeeper.store.audit import append
from mcp_gatekeeper.store.engine import Engine, Tx
from mcp_gatekeeper.store.sweeps import release_claims


def _pid_alive(pid: int) -> bool:
    return hostos.pid_alive(pid)


class Instances:
    """The ``instances`` table; ``instance_id`` is this process once it has registered."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.instance_id: str | None = None

    async def register(self, label: str, config_path: str | None = None) -> str:
        iid = new_call_id()[:16]
        now = self._engine.clock.now()

        def _body(c: Tx) -> Any:
            c.execute(
                "INSERT INTO instances (id, pid, host, label, started_at, heartbeat_at, config_path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (iid, os.getpid(), socket.gethostname(), label, now, now, config_path),
            )

        await self._engine.write(_body)
        self.instance_id = iid
        return iid

    async def heartbeat(self) -> None:
        if self.instance_id is None:
            return

        def _body(c: Tx) -> Any:
            c.execute(
                "UPDATE instances SET heartbeat_at = ? WHERE id = ?", (self._engine.clock.now(), self.instance_id)
            )

        await self._engine.write(_body)

    async def stop(self) -> None:
        iid = self.instance_id

        def _body(c: Tx) -> Any:
            self._orphan_calls_of(c, [iid], why="the gatekeeper process holding it shut down")
            release_claims(c, self._engine.clock, self._engine.claim_rows, [iid], why="its process shut down")
            c.execute("UPDATE instances SET stopped_at = ? WHERE id = ?", (self._engine.clock.now(), iid))

        await self._engine.write(_body)

    async def recover_orphans(self, *, stale_after: float = 60.0) -> int:
        """Calls whose owning process is gone: forwarding → ``outcome_unknown``; pending/approved → released if
        their client was told to retry, else ``orphaned`` (see :meth:`_orphan_calls_of`).

        A live neighbour's calls are never touched: an instance is dead only if it stopped, or its pid is gone
        on this host, or (another host) its heartbeat is older than ``stale_after`` seconds.
        """
        now = self._engine.clock.now()
        host = socket.gethostname()
        rows = await self._engine.read(
            "SELECT id, pid, host, heartbeat_at, stopped_at FROM instances WHERE id != ?", (self.instance_id or "",)
        )
        dead = []
        for iid, pid, ihost, hb, stopped in rows:
            if (
                stopped is not None
                or (ihost == host and not _pid_alive(pid))
                or (ihost != host and now - hb > stale_after)
            ):
                dead.append(iid)
        if not dead:
            return 0

        def _body(c: Tx) -> Any:
            n = self._orphan_calls_of(c, dead, why="the gatekeeper process holding it died")
            # and the sweeper work it had claimed goes back to the fleet (not counted: nothing of it was lost)
            release_claims(c, self._engine.clock, self._engine.claim_rows, dead, why="the process running it died")
            for iid in dead:
                c.execute("UPDATE instances SET stopped_at = COALESCE(stopped_at, ?) WHERE id = ?", (now, iid))
            c.execute(
                "DELETE FROM instances WHERE stopped_at IS NOT NULL AND stopped_at < ? AND id NOT IN "
                "(SELECT DISTINCT instance_id FROM calls WHERE state IN ('pending','approved','forwarding','allowed') AND instance_id IS NOT NULL)",
                (now - 7 * 86400,),
            )
            return n

        count: int = await self._engine.write(_body)
        return count

    def _orphan_calls_of(self, c: Tx, instance_ids: Iterable[str | None], *, why: str) -> int:
        """Settle the live calls of processes that are gone; returns how many calls were orphaned or unknown.

        - ``forwarding`` or ``allowed``: it may have reached the upstream, so ``outcome_unknown`` (never re-sent);
        - ``pending`` or ``approved`` whose client was told to retry (``retry_offered``): *released* — it keeps
          its state with no owner, stays decidable until its deadline, and an identical retry of the same
          principal attaches to it from any process (the sweeper of any live process expires it);
        - any other ``pending`` or ``approved``: nobody was told to come back for it, so ``orphaned`` (never runs).
        """
        n = 0
        now = self._engine.clock.now()
        for iid in instance_ids:
            rows = c.execute(
                f"SELECT id, state, args_digest, retry_offered FROM calls WHERE instance_id = ?"
                f" AND state IN ({schema.placeholders(schema.LIVE_OWNER_STATES)}){self._engine.claim_rows}",
                (iid, *schema.LIVE_OWNER_STATES),
            ).fetchall()
            for cid, state, args_digest, retry_offered in rows:
                if retry_offered and state in schema.RELEASED_STATES:
                    c.execute(
                        "UPDATE calls SET instance_id = NULL, released_from = instance_id"
                        " WHERE id = ? AND state = ? AND instance_id = ?",
                        (cid, state, iid),
                    )
                    append(c, self._engine.clock, event="released", call_id=cid, actor="gatekeeper", channel="recovery",
                        args_digest=args_digest, detail={"state": state, "why": why},
                    )  # fmt: skip
                    continue
                # forwarding or allowed: it may have reached the upstream, so its outcome is unknown (never re-sent)
                new = State.OUTCOME_UNKNOWN if state in (State.FORWARDING, State.ALLOWED) else State.ORPHANED
                c.execute(
                    "UPDATE calls SET state = ?, error = ?, finished_at = ? WHERE id = ? AND state = ?",
                    (new, why, now, cid, state),
                )
                append(
                    c,
                    self._engine.clock,
                    event=new.value,
                    call_id=cid,
                    actor="gatekeeper",
                    channel="recovery",
                    args_digest=args_digest,
                    detail={"from": state, "why": why},
                )
                n += 1
        return n

    async def abandon_unclaimed(self, now: float, grace: float) -> list[str]:
        """Released approved calls that no retry came back for within deadline + ``grace``: ``orphaned`` (a claim:
        processes sweeping at once abandon disjoint calls)."""

        def _body(c: Tx) -> Any:
            rows = c.execute(
                "SELECT id, args_digest FROM calls WHERE state = 'approved' AND instance_id IS NULL"
                f" AND deadline_at IS NOT NULL AND deadline_at + ? <= ? LIMIT 1000{self._engine.claim_rows}",
                (grace, now),
            ).fetchall()
            done = []
            why = "approved, but its client never retried the call to collect it"
            for cid, args_digest in rows:
                cur = c.execute(
                    "UPDATE calls SET state = 'orphaned', error = ?, finished_at = ? WHERE id = ? AND state = 'approved'"
                    " AND instance_id IS NULL",
                    (why, now, cid),
                )
                if cur.rowcount == 1:
                    append(c, self._engine.clock, event="orphaned", call_id=cid, actor="gatekeeper", channel="timeout",
                        args_digest=args_digest, detail={"from": "approved", "why": why},
                    )  # fmt: skip
                    done.append(cid)
            return done

        if not await self._engine.read(
            "SELECT 1 FROM calls WHERE state = 'approved' AND instance_id IS NULL AND deadline_at + ? <= ? LIMIT 1",
            (grace, now),
        ):
            return []  # the usual case: nothing to write
        abandoned: list[str] = await self._engine.write(_body)
        return abandoned

    async def live_config_paths(self) -> list[str]:
        """The config files of the gatekeeper processes that are running (their security settings apply to all)."""
        rows = await self._engine.read(
            "SELECT DISTINCT config_path FROM instances WHERE stopped_at IS NULL AND config_path IS NOT NULL"
        )
        return [r[0] for r in rows]

    async def instance_config_path(self, instance_id: str | None) -> str | None:
        """The config file the process that holds a call was started with (the CLI decides under the same policy)."""
        if instance_id is None:
            return None
        rows = await self._engine.read("SELECT config_path FROM instances WHERE id = ?", (instance_id,))
        return rows[0][0] if rows else None

    async def serving_page(self, url: str | None) -> None:
        """Record that this process serves the approval page at ``url`` (``None``: no longer)."""

        def _body(c: Tx) -> Any:
            c.execute("UPDATE instances SET ui_url = ? WHERE id = ?", (url, self.instance_id))

        if self.instance_id is not None:
            await self._engine.write(_body)

    async def page_urls(self) -> list[str]:
        """Where the running gatekeeper processes serve the approval page (``http://HOST:PORT``), newest first.

        A process of this host whose pid is gone is left out even before anyone has marked it stopped.
        """
        rows = await self._engine.read(
            "SELECT ui_url, pid, host FROM instances WHERE stopped_at IS NULL AND ui_url IS NOT NULL"
            " ORDER BY started_at DESC"
        )
        here = socket.gethostname()
        return list(dict.fromkeys(url for url, pid, host in rows if host != here or _pid_alive(int(pid))))
