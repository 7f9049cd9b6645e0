"""The durable store: one :class:`Store` per process, over one engine and a repository per concept.

- :mod:`~mcp_gatekeeper.store.engine`: the SQLite connection, transactions, group commit, checkpoints,
  migrations; :class:`~mcp_gatekeeper.store.engine.Engine` is what the repositories need of a backend;
- :mod:`~mcp_gatekeeper.store.schema`: the migrations and the row <-> value mapping;
- the repositories, each over the one engine passed in: :mod:`~mcp_gatekeeper.store.calls`,
  :mod:`~mcp_gatekeeper.store.audit` (the hash chain), :mod:`~mcp_gatekeeper.store.instances`,
  :mod:`~mcp_gatekeeper.store.pins`, :mod:`~mcp_gatekeeper.store.leases`,
  :mod:`~mcp_gatekeeper.store.sessions`, :mod:`~mcp_gatekeeper.store.notify_links`,
  :mod:`~mcp_gatekeeper.store.queries` (named reads for the page and the reports),
  :mod:`~mcp_gatekeeper.store.review` (named reads of the weekly review and the review export),
  :mod:`~mcp_gatekeeper.store.app_nonces` (the MCP Apps decision card's nonces); team mode's
  :mod:`~mcp_gatekeeper.store.reviewers` (accounts, login attempts) and :mod:`~mcp_gatekeeper.store.approvals`
  (the named approvals of a call that needs several); :mod:`~mcp_gatekeeper.store.sweeps` (the sweeper's claims).

:class:`Store` keeps the API the rest of the package uses; each method says which repository answers it.
Every state change is a compare-and-set and appends a hash-chained audit event in the same transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from mcp_gatekeeper import hostos
from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.errors import StoreError
from mcp_gatekeeper.models import AuditEvent, CallRecord, Lease, NewCall, NotifyLink, PastCall, Pin, State, WebSession
from mcp_gatekeeper.signatures import DecisionFacts
from mcp_gatekeeper.store.app_nonces import AppNonce, AppNonces
from mcp_gatekeeper.store.approvals import Approvals
from mcp_gatekeeper.store.audit import AuditLog
from mcp_gatekeeper.store.calls import Calls
from mcp_gatekeeper.store.engine import CHECKPOINT_EVERY, Backend, SqliteEngine
from mcp_gatekeeper.store.history import History
from mcp_gatekeeper.store.instances import Instances, _pid_alive
from mcp_gatekeeper.store.leases import Leases
from mcp_gatekeeper.store.notify_links import NotifyLinks
from mcp_gatekeeper.store.passkeys import Passkeys
from mcp_gatekeeper.store.pins import Pins
from mcp_gatekeeper.store.queries import Queries
from mcp_gatekeeper.store.review import ReviewReads
from mcp_gatekeeper.store.reviewers import Reviewers
from mcp_gatekeeper.store.schema import LIVE_OWNER_STATES, MIGRATIONS, RELEASED_STATES
from mcp_gatekeeper.store.sessions import Sessions
from mcp_gatekeeper.store.sweeps import Sweeps

__all__ = [
    "CHECKPOINT_EVERY",
    "LIVE_OWNER_STATES",
    "MIGRATIONS",
    "RELEASED_STATES",
    "AppNonce",
    "Store",
    "_pid_alive",
    "default_home",
]

log = logging.getLogger(__name__)


def default_home() -> Path:
    """``$MCP_GATEKEEPER_HOME``, else the platform's user state dir (or an older location that already
    holds a database, which is said on stderr): :func:`mcp_gatekeeper.hostos.locate_home`."""
    located = hostos.locate_home()
    if located.note:
        log.warning("%s", located.note)
    return located.path


class Store:
    """The store of one process. Use :meth:`open` (an async context manager)."""

    def __init__(self, engine: Backend) -> None:
        self.engine = engine
        """The backend (today :class:`SqliteEngine`, opened by :meth:`open`); repositories share it."""
        self.clock = engine.clock
        self.calls = Calls(engine)
        self.audit = AuditLog(engine)
        self.instances = Instances(engine)
        self.tool_pins = Pins(engine)
        self.tool_leases = Leases(engine)
        self.sessions = Sessions(engine)
        self.notify_links = NotifyLinks(engine)
        self.passkeys = Passkeys(engine)
        self.queries = Queries(engine)
        self.review = ReviewReads(engine)
        """Named reads of the weekly review and the review data export."""
        self.app_nonces = AppNonces(engine)
        self.history = History(engine)
        self.reviewers = Reviewers(engine)
        """Team mode's reviewer accounts (used directly: no facade methods)."""
        self.approvals = Approvals(engine)
        """Team mode's named approvals (used directly: no facade methods)."""
        self.sweeps = Sweeps(engine, lambda: self.instances.instance_id)
        """The sweeper's claims: expiry, escalation, review windows, compensation (used directly)."""
        self.fsync_every_call = False
        """Also fsync the records of calls that pass without a hold (``[store] fsync_every_call``)."""

    @property
    def instance_id(self) -> str | None:
        """This process's row in ``instances`` once :meth:`register_instance` ran."""
        return self.instances.instance_id

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: str | os.PathLike[str], clock: Clock, *, key: str = "[store] url"
    ) -> AsyncIterator[Store]:
        """The store at ``path``: a SQLite file, or a ``postgresql://`` URL (``key`` names where it came from)."""
        location = os.fspath(path)
        opened: contextlib.AbstractAsyncContextManager[Backend]
        if location.startswith(("postgresql://", "postgres://")):
            from mcp_gatekeeper.store.postgres import PgEngine  # psycopg only for those who use it

            opened = PgEngine.open(location, clock, key=key)
        else:
            opened = SqliteEngine.open(path, clock)
        async with opened as engine:
            store = cls(engine)
            try:
                yield store
            finally:
                with anyio.CancelScope(shield=True):
                    if store.instance_id is not None:
                        with contextlib.suppress(StoreError):
                            await store.instances.stop()

    async def run_checkpoints(self) -> None:
        """The backend's upkeep until cancelled (SQLite: :meth:`SqliteEngine.run_checkpoints`)."""
        await self.engine.run_checkpoints()

    async def data_version(self) -> int:
        """Changes whenever another connection (another process) commits."""
        return await self.engine.data_version()

    async def wait_changed(self, poll: float) -> None:
        """Until another process may have committed (at most ``poll`` s; PostgreSQL: woken by NOTIFY)."""
        await self.engine.wait_changed(poll)

    async def integrity_check(self) -> str:
        return await self.engine.integrity_check()

    # ------------------------------------------------------------------ what depends on this process

    async def insert_call(
        self,
        new: NewCall,
        *,
        state: State,
        deadline_at: float | None = None,
        reason: str | None = None,
        escalate_after: float | None = None,
    ) -> CallRecord:
        """:meth:`Calls.insert`, owned by this process."""
        return await self.calls.insert(
            new, state=state, deadline_at=deadline_at, reason=reason, instance_id=self.instance_id,
            fsync_every_call=self.fsync_every_call, escalate_after=escalate_after,
        )  # fmt: skip

    async def finish_call(
        self,
        call_id: str,
        from_state: State,
        to_state: State,
        *,
        result: dict[str, Any] | None,
        error: str | None,
        detail: dict[str, Any],
        args_digest: str,
    ) -> bool:
        """:meth:`Calls.finish`."""
        return await self.calls.finish(
            call_id, from_state, to_state, result=result, error=error, detail=detail, args_digest=args_digest,
            fsync_every_call=self.fsync_every_call,
        )  # fmt: skip

    async def note_problem(self, detail: dict[str, Any]) -> None:
        """:meth:`AuditLog.note_problem`, noted by this process."""
        await self.audit.note_problem(detail, instance_id=self.instance_id)

    # ------------------------------------------------------------------ the repositories' methods

    async def audit_events(
        self, *, call_id: str | None = None, limit: int = 1000, before_seq: int | None = None
    ) -> list[AuditEvent]:
        """:meth:`AuditLog.events`."""
        return await self.audit.events(call_id=call_id, limit=limit, before_seq=before_seq)

    async def verify_audit(self) -> tuple[bool, int, str]:
        """:meth:`AuditLog.verify`."""
        return await self.audit.verify()

    async def verify_decision(self, call_id: str) -> str | None:
        """:meth:`AuditLog.verify_decision`."""
        return await self.audit.verify_decision(call_id)

    async def live_problems(self) -> list[AuditEvent]:
        """:meth:`AuditLog.live_problems`."""
        return await self.audit.live_problems()

    async def register_instance(self, label: str, config_path: str | None = None) -> str:
        """:meth:`Instances.register`."""
        return await self.instances.register(label, config_path)

    async def heartbeat(self) -> None:
        """:meth:`Instances.heartbeat`."""
        return await self.instances.heartbeat()

    async def recover_orphans(self, *, stale_after: float = 60.0) -> int:
        """:meth:`Instances.recover_orphans`."""
        return await self.instances.recover_orphans(stale_after=stale_after)

    async def abandon_unclaimed(self, now: float, grace: float) -> list[str]:
        """:meth:`Instances.abandon_unclaimed`."""
        return await self.instances.abandon_unclaimed(now, grace)

    async def live_config_paths(self) -> list[str]:
        """:meth:`Instances.live_config_paths`."""
        return await self.instances.live_config_paths()

    async def instance_config_path(self, instance_id: str | None) -> str | None:
        """:meth:`Instances.instance_config_path`."""
        return await self.instances.instance_config_path(instance_id)

    async def serving_page(self, url: str | None) -> None:
        """:meth:`Instances.serving_page`."""
        return await self.instances.serving_page(url)

    async def page_urls(self) -> list[str]:
        """:meth:`Instances.page_urls`."""
        return await self.instances.page_urls()

    async def get(self, call_id: str) -> CallRecord:
        """:meth:`Calls.get`."""
        return await self.calls.get(call_id)

    async def find(self, prefix: str) -> CallRecord:
        """:meth:`Calls.find`."""
        return await self.calls.find(prefix)

    async def list_calls(
        self,
        *,
        states: Sequence[str] | None = None,
        upstream: str | None = None,
        tool: str | None = None,
        decided_by: str | None = None,
        text: str | None = None,
        limit: int = 100,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[CallRecord]:
        """:meth:`Calls.list_calls`."""
        return await self.calls.list_calls(
            states=states,
            upstream=upstream,
            tool=tool,
            decided_by=decided_by,
            text=text,
            limit=limit,
            before=before,
            oldest_first=oldest_first,
        )

    async def states_of(self, ids: Sequence[str]) -> dict[str, State]:
        """:meth:`Calls.states_of`."""
        return await self.calls.states_of(ids)

    async def decide(
        self,
        call_id: str,
        *,
        approve: bool,
        decided_by: str,
        channel: str,
        reason: str | None,
        modified_arguments: dict[str, Any] | None,
        expected_digest: str | None,
        detail: dict[str, Any] | None = None,
        sign: Callable[[DecisionFacts], dict[str, Any]] | None = None,
    ) -> CallRecord:
        """:meth:`Calls.decide`."""
        return await self.calls.decide(
            call_id,
            approve=approve,
            decided_by=decided_by,
            channel=channel,
            reason=reason,
            modified_arguments=modified_arguments,
            expected_digest=expected_digest,
            detail=detail,
            sign=sign,
        )

    async def transition(
        self,
        call_id: str,
        from_states: Sequence[State],
        to_state: State,
        *,
        event: str | None = None,
        actor: str = "gatekeeper",
        channel: str = "proxy",
        detail: dict[str, Any] | None = None,
        **fields: Any,
    ) -> CallRecord | None:
        """:meth:`Calls.transition`."""
        return await self.calls.transition(
            call_id, from_states, to_state, event=event, actor=actor, channel=channel, detail=detail, **fields
        )

    async def find_retry(
        self, upstream: str, tool: str, args_digest: str, *, now: float, grace: float, principal: str | None
    ) -> CallRecord | None:
        """:meth:`Calls.find_retry`."""
        return await self.calls.find_retry(upstream, tool, args_digest, now=now, grace=grace, principal=principal)

    async def find_for(self, prefix: str, *, principal: str | None, upstreams: Sequence[str]) -> CallRecord:
        """:meth:`Calls.find_for`."""
        return await self.calls.find_for(prefix, principal=principal, upstreams=upstreams)

    async def principal_of(self, call_id: str) -> str | None:
        """:meth:`Calls.principal_of`."""
        return await self.calls.principal_of(call_id)

    async def mark_retry_offered(self, call_id: str, *, strategy: str) -> None:
        """:meth:`Calls.mark_retry_offered`."""
        return await self.calls.mark_retry_offered(call_id, strategy=strategy)

    async def consume_state(self, nonce: str, call_id: str) -> bool:
        """:meth:`Calls.consume_state`."""
        return await self.calls.consume_state(nonce, call_id)

    async def holder_instance(self, call_id: str) -> str | None:
        """:meth:`Calls.holder_instance`."""
        return await self.calls.holder_instance(call_id)

    async def capture_of(self, call_id: str) -> Any:
        """:meth:`Calls.capture_of`."""
        return await self.calls.capture_of(call_id)

    async def check_pins(self, upstream: str, tools: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Pin]:
        """:meth:`Pins.check`."""
        return await self.tool_pins.check(upstream, tools)

    async def pins(self, *, upstream: str | None = None, quarantined_only: bool = False) -> list[Pin]:
        """:meth:`Pins.list_pins`."""
        return await self.tool_pins.list_pins(upstream=upstream, quarantined_only=quarantined_only)

    async def repin(self, upstream: str, tool: str, *, by: str, channel: str) -> Pin:
        """:meth:`Pins.repin`."""
        return await self.tool_pins.repin(upstream, tool, by=by, channel=channel)

    async def create_lease(
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
        """:meth:`Leases.create`."""
        return await self.tool_leases.create(
            upstream=upstream,
            tool=tool,
            tooldef_hash=tooldef_hash,
            envelope=envelope,
            created_by=created_by,
            channel=channel,
            source_call=source_call,
            expires_at=expires_at,
            calls=calls,
        )

    async def lease(self, lease_id: str) -> Lease:
        """:meth:`Leases.get`."""
        return await self.tool_leases.get(lease_id)

    async def leases(
        self, *, active_at: float | None = None, upstream: str | None = None, tool: str | None = None
    ) -> list[Lease]:
        """:meth:`Leases.list_leases`."""
        return await self.tool_leases.list_leases(active_at=active_at, upstream=upstream, tool=tool)

    async def revoke_lease(self, lease_id: str, *, by: str, channel: str) -> Lease:
        """:meth:`Leases.revoke`."""
        return await self.tool_leases.revoke(lease_id, by=by, channel=channel)

    async def use_lease(self, lease_id: str, *, call_id: str | None) -> bool:
        """:meth:`Leases.use`."""
        return await self.tool_leases.use(lease_id, call_id=call_id)

    async def add_login_code(self, code_hash: str, *, label: str, expires_at: float) -> None:
        """:meth:`Sessions.add_login_code`."""
        return await self.sessions.add_login_code(code_hash, label=label, expires_at=expires_at)

    async def redeem_login_code(
        self, code_hash: str, session: WebSession, *, secret_hash: str, key_hash: str
    ) -> WebSession | None:
        """:meth:`Sessions.redeem_login_code`."""
        return await self.sessions.redeem_login_code(code_hash, session, secret_hash=secret_hash, key_hash=key_hash)

    async def web_session(self, session_id: str) -> WebSession | None:
        """:meth:`Sessions.get`."""
        return await self.sessions.get(session_id)

    async def session_hashes(self, session_id: str) -> tuple[WebSession, str, str] | None:
        """:meth:`Sessions.session_hashes`."""
        return await self.sessions.session_hashes(session_id)

    async def touch_session(self, session_id: str, *, expires_at: float) -> None:
        """:meth:`Sessions.touch`."""
        return await self.sessions.touch(session_id, expires_at=expires_at)

    async def web_sessions(self, *, alive_only: bool = True) -> list[WebSession]:
        """:meth:`Sessions.list_sessions`."""
        return await self.sessions.list_sessions(alive_only=alive_only)

    async def end_sessions(self, session_ids: Sequence[str] | None, *, by: str, channel: str, why: str) -> list[str]:
        """:meth:`Sessions.end`."""
        return await self.sessions.end(session_ids, by=by, channel=channel, why=why)

    async def counts(self) -> dict[str, int]:
        """:meth:`Queries.counts`."""
        return await self.queries.counts()

    # ------------------------------------------------------------------ the MCP Apps card's nonces

    async def add_app_nonce(
        self, nonce_hash: str, *, call_id: str, args_digest: str, principal: str | None, expires_at: float
    ) -> None:
        """:meth:`AppNonces.add`."""
        return await self.app_nonces.add(
            nonce_hash, call_id=call_id, args_digest=args_digest, principal=principal, expires_at=expires_at
        )

    async def app_nonce(self, nonce_hash: str) -> AppNonce | None:
        """:meth:`AppNonces.get`."""
        return await self.app_nonces.get(nonce_hash)

    async def spend_app_nonce(self, nonce_hash: str, *, now: float) -> bool:
        """:meth:`AppNonces.spend`."""
        return await self.app_nonces.spend(nonce_hash, now=now)

    async def forget_app_nonces(self, *, before: float) -> None:
        """:meth:`AppNonces.forget`."""
        return await self.app_nonces.forget(before=before)

    async def audit_app_refusal(self, call_id: str | None, *, actor: str, detail: dict[str, Any]) -> None:
        """:meth:`AppNonces.audit_refusal`."""
        return await self.app_nonces.audit_refusal(call_id, actor=actor, detail=detail)

    # ------------------------------------------------------------------ calibration (mcp_gatekeeper.calibrate)

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
        """:meth:`History.past_calls`."""
        return await self.history.past_calls(
            since=since, until=until, after=after, limit=limit, upstream=upstream, tool=tool
        )

    async def tool_definitions(self, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """:meth:`History.tool_definitions`."""
        return await self.history.tool_definitions(hashes)

    async def insert_history(self, rows: Sequence[tuple[NewCall, State, dict[str, Any]]]) -> int:
        """:meth:`History.insert` (benchmarks and tests only)."""
        return await self.history.insert(rows)

    async def remember_definitions(self, upstream: str, tools: dict[str, tuple[str, dict[str, Any]]]) -> None:
        """:meth:`History.remember_definitions` (benchmarks and tests only)."""
        return await self.history.remember_definitions(upstream, tools)

    # ------------------------------------------------------------------ what notification channels keep

    async def add_notify_link(self, link: NotifyLink) -> None:
        """:meth:`NotifyLinks.add`."""
        await self.notify_links.add(link)

    async def notify_link(self, call_id: str, channel: str) -> NotifyLink | None:
        """:meth:`NotifyLinks.get`."""
        return await self.notify_links.get(call_id, channel)

    async def notify_link_shown(self, call_id: str, channel: str) -> str | None:
        """:meth:`NotifyLinks.shown`."""
        return await self.notify_links.shown(call_id, channel)

    async def notify_links_open(self, channel: str) -> tuple[int, int]:
        """:meth:`NotifyLinks.open_counts`."""
        return await self.notify_links.open_counts(channel)

    async def claim_notify_updates(
        self, channel: str, *, by: str, stale_after: float = 60.0, limit: int = 50
    ) -> list[tuple[NotifyLink, CallRecord]]:
        """:meth:`NotifyLinks.claim_updates`."""
        return await self.notify_links.claim_updates(channel, by=by, stale_after=stale_after, limit=limit)

    async def settle_notify_link(self, link: NotifyLink, *, shown_state: str | None) -> None:
        """:meth:`NotifyLinks.settle`."""
        await self.notify_links.settle(link, shown_state=shown_state)

    async def first_sighting(self, signature: str, *, keep: float) -> bool:
        """:meth:`NotifyLinks.first_sighting`."""
        return await self.notify_links.first_sighting(signature, keep=keep)
