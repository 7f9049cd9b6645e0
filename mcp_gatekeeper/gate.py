"""Holding and deciding: the only place a decision is made.

``Gate.hold(call)`` records a pending row, notifies, waits (in-process event, or the store's change
signal when another process decides), expires at the deadline (reject, never approve) and returns an
:data:`~mcp_gatekeeper.models.Outcome`. ``Gate.decide(id, decision)`` validates a reviewer's edit
(schema + policy) and commits the decision as one compare-and-set.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import jsonschema
from jsonschema.exceptions import SchemaError

from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.config import EscalationStep, check_predicates
from mcp_gatekeeper.errors import AlreadyDecidedError, InvalidModificationError, NotAllowedError, StoreError
from mcp_gatekeeper.models import (
    Approved,
    CallRecord,
    Decision,
    NewCall,
    Outcome,
    Refused,
    State,
    canonical_json,
    digest,
    is_quarantine_hold,
)
from mcp_gatekeeper.notify import Notifier
from mcp_gatekeeper.passkeys import Credential, PasskeyError, RelyingParty, assertion_of, verify_assertion
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.signatures import DecisionKeys, facts_of
from mcp_gatekeeper.store import Store

log = logging.getLogger(__name__)

OUTCOME_PATIENCE = 60.0
"""How long (seconds) :meth:`Gate.finish` keeps trying to record a forwarded call's outcome while the store is
unusable (a PostgreSQL server restarting, a full disk) before it gives up: the reply waits for the record."""

Tick = Callable[[CallRecord, float], Awaitable[None]]
"""Called every heartbeat while a call waits: ``(call, seconds_left)``."""


class Gate:
    """Holds calls and takes decisions. Use :meth:`running` to start its change watcher."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        clock: Clock,
        *,
        notifier: Notifier | None = None,
        poll_interval: float = 0.02,
        heartbeat_interval: float = 15.0,
        sweep_interval: float | None = 1.0,
        keys: DecisionKeys | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        """Sign this process's decisions and check approvals before they run (None: neither; tests only)."""
        self.policy = policy
        self.clock = clock
        self.notifier = notifier
        self._poll = poll_interval
        self._heartbeat = heartbeat_interval
        self._sweep_interval = sweep_interval
        self._waiters: dict[str, list[anyio.Event]] = {}
        """Every wait in this process on a call (an identical retry can wait beside the first request)."""
        self._deadlines: dict[str, float | None] = {}
        """The deadline the waiters of each call count down to (the watcher wakes them when it moves)."""
        self._have_waiters = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self.reviewed = anyio.Event()
        """Set (and replaced) whenever a review is decided in this process: the compensation runner wakes."""

    # ------------------------------------------------------------------ watcher

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gate]:
        """Run the cross-process change watcher for as long as the context is open."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            if self._sweep_interval is not None:
                tg.start_soon(self._sweep, self._sweep_interval)
            self._tg = tg
            try:
                yield self
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    async def _watch(self) -> None:
        """Wake this process's waiters when another process decided, expired or escalated their call."""
        version: int | None = None
        while True:
            if not self._waiters:
                self._have_waiters = anyio.Event()
                await self._have_waiters.wait()
            try:
                current = await self.store.data_version()
                if current != version:
                    version = current
                    ids = list(self._waiters)
                    marks = await self.store.calls.watch_marks(ids)
                    for cid in ids:
                        if (mark := marks.get(cid)) is None:
                            continue
                        state, deadline = mark
                        # decided, or an escalation moved the deadline its waiters count down to
                        if state != State.PENDING or deadline != self._deadlines.get(cid, deadline):
                            self._wake(cid)
            except StoreError:
                log.warning("store unreadable while watching for decisions; retrying", exc_info=True)
            await self.store.wait_changed(self._poll)

    async def _sweep(self, interval: float) -> None:
        while True:
            await self.clock.sleep_until(self.clock.monotonic() + interval)
            try:
                await self.sweep_once()
            except StoreError:
                log.warning("store unusable while sweeping held calls; retrying", exc_info=True)

    @property
    def sweeping(self) -> bool:
        """Whether :meth:`running` sweeps (then it also rings :attr:`reviewed` while a compensation is due)."""
        return self._sweep_interval is not None

    async def sweep_once(self) -> None:
        """This process's share of the sweeper work of every process of the store, each piece a claim
        (:mod:`mcp_gatekeeper.store.sweeps`): expire overdue calls, fire due escalation steps (and send their
        notices), close due review windows, orphan released approved calls whose client never came back, and ring
        :attr:`reviewed` while a compensation is due. Nothing due costs one indexed read."""
        now = self.clock.now()
        grace = self.policy.config.waiting.retry_grace
        sweeps = self.store.sweeps
        due = await sweeps.due(now, grace=grace)
        if not due:
            return
        if "abandon" in due:
            for cid in await self.store.abandon_unclaimed(now, grace):
                self._wake(cid)
        if "expire" in due:
            for cid in await sweeps.expire(now, why=_expiry_reason):
                self._wake(cid)
        if "escalate" in due:
            await self._escalate(now)
        if "notice" in due:  # steps whose claimant died before it sent their notice
            for rec, level in await sweeps.claim_open_notices():
                rule = self.policy.rule_named(rec.rule)
                steps = rule.escalate if rule else []
                await self._send_notice(rec, level, list(steps[level - 1].notify) if level <= len(steps) else None)
        if "review" in due:
            for rec in await sweeps.reviews_due(now):
                rule = self.policy.rule_named(rec.rule)
                if rule is not None and rule.on_review_timeout == "rollback":
                    to, why = State.REVIEW_FAILED, "nobody reviewed it within its window; rolling back as configured"
                else:
                    to, why = State.UNREVIEWED, "nobody reviewed it within its window"
                if await sweeps.close_review(rec.id, now=now, to_state=to, reason=why) and to == State.REVIEW_FAILED:
                    due |= {"compensate"}
        if "compensate" in due:
            self._ring_reviewed()

    async def _escalate(self, now: float) -> None:
        """Claim every escalation step that has fallen due (in order), one claim each, and send its notice."""
        sweeps = self.store.sweeps
        for rec, level in await sweeps.escalations_due(now):
            rule = self.policy.rule_named(rec.rule)
            if rule is None:
                if rec.rule is None:  # held by the defaults, which never escalate
                    await sweeps.reschedule(rec.id, level=level, escalate_at=None)
                continue  # a rule this process's policy does not have: left to a process that has it
            steps = rule.escalate
            reached, lost = level, False
            for index, step in enumerate(steps, start=1):
                if index <= reached or now < rec.created_at + step.after:
                    continue
                deadline = now + step.timeout if step.timeout is not None else None
                claimed = await sweeps.claim_escalation(
                    rec.id, level=index, deadline_at=deadline, escalate_at=_next_step_at(rule.escalate, index, rec),
                    channels=list(step.notify),
                )  # fmt: skip
                if claimed is None:
                    lost = True  # another process claimed it (and goes on from there), or the call was decided
                    break
                reached = index
                self._wake(rec.id)  # a waiter of this process re-reads its (maybe shorter) deadline
                await self._send_notice(claimed, index, list(step.notify))
            if reached == level and not lost:  # nothing was due after all (a call held before escalate_at existed)
                await sweeps.reschedule(rec.id, level=level, escalate_at=_next_step_at(steps, level, rec))

    async def _send_notice(self, rec: CallRecord, level: int, channels: list[str] | None) -> None:
        """Send the notice of escalation step ``level`` this process claimed, then close the claim (a crash in
        between leaves it to a survivor, which sends it again). ``channels=None``: the step is not in this
        process's policy; the claim is closed unsent."""
        escalated = getattr(self.notifier, "escalated", None)
        if escalated is not None and channels is not None:
            try:
                await escalated(rec, channels)
            except Exception:  # never blocks or decides
                log.warning("escalation notice for %s failed", rec.id[:8], exc_info=True)
        await self.store.sweeps.notice_sent(rec.id, level=level)

    def _ring_reviewed(self) -> None:
        self.reviewed.set()
        self.reviewed = anyio.Event()

    async def review(self, call_id: str, *, ok: bool, by: str, channel: str, reason: str | None) -> CallRecord:
        """Confirm or fail an audit-gated call that already ran; a failed review triggers its compensation."""
        rec = await self.store.find(call_id)
        done = await self.store.transition(
            rec.id,
            [State.UNDER_REVIEW, State.UNREVIEWED],
            State.CONFIRMED if ok else State.REVIEW_FAILED,
            event="confirmed" if ok else "review_failed",
            actor=by,
            channel=channel,
            reason=reason,
            decided_at=self.clock.now(),
            decided_by=by,
            decision_channel=channel,
            detail={"reason": reason} if reason else {},
        )
        if done is None:
            current = await self.store.get(rec.id)
            raise AlreadyDecidedError(f"call {rec.id[:12]} is {current.state}, not under review", state=current.state)
        self._ring_reviewed()
        return done

    def _wake(self, call_id: str) -> None:
        for ev in self._waiters.get(call_id, ()):
            ev.set()

    # ------------------------------------------------------------------ recording

    async def record(self, new: NewCall, state: State, *, reason: str | None = None) -> CallRecord:
        """Record a call that is not held (``allowed`` or ``denied``). Raises StoreError: fail closed."""
        return await self.store.insert_call(new, state=state, reason=reason)

    # ------------------------------------------------------------------ holding

    async def hold(self, new: NewCall, *, timeout: float, on_tick: Tick | None = None) -> Outcome:
        """Record ``new`` as pending and wait for a human until ``timeout`` seconds have passed."""
        rec = await self.start_hold(new, timeout=timeout)
        outcome = await self.wait(rec, on_tick=on_tick)
        assert outcome is not None
        return outcome

    async def start_hold(self, new: NewCall, *, timeout: float) -> CallRecord:
        """Record ``new`` as pending with a deadline ``timeout`` seconds away, and tell the humans."""
        rule = self.policy.rule_named(new.rule) if new.rule else None
        first = min((step.after for step in rule.escalate), default=None) if rule is not None else None
        rec = await self.store.insert_call(
            new, state=State.PENDING, deadline_at=self.clock.now() + timeout, escalate_after=first
        )
        if self.notifier is not None:
            if self._tg is not None:
                self._tg.start_soon(self._notify, rec)  # a slow channel never delays or blocks the hold
            else:
                await self._notify(rec)
        return rec

    async def _notify(self, rec: CallRecord) -> None:
        assert self.notifier is not None
        try:
            await self.notifier.held(rec)
        except Exception:  # notification never blocks or decides a hold
            log.warning("notifying about %s failed", rec.id[:8], exc_info=True)

    async def wait(
        self,
        rec: CallRecord,
        *,
        budget: float | None = None,
        on_tick: Tick | None = None,
        cancel_on_abort: bool = True,
    ) -> Outcome | None:
        """Wait for a decision on ``rec``.

        Returns the outcome, or ``None`` if ``budget`` seconds ran out first (the call stays pending).
        At the call's own deadline it expires (CAS pending → expired): a timeout never approves.
        Cancellation (the client cancelled or went away) cancels the hold, shielded, and re-raises; with
        ``cancel_on_abort=False`` (a 2026 HTTP client closing its stream) only this wait ends.
        """
        ev = anyio.Event()
        mine = self._waiters.setdefault(rec.id, [])
        mine.append(ev)
        self._deadlines[rec.id] = rec.deadline_at
        self._have_waiters.set()
        wall_left = (rec.deadline_at - self.clock.now()) if rec.deadline_at is not None else float("inf")
        start = self.clock.monotonic()
        deadline = start + wall_left
        stop = min(deadline, start + budget) if budget is not None else deadline
        try:
            current = await self.store.get(rec.id)
            while current.state == State.PENDING:
                now = self.clock.monotonic()
                if now >= deadline:
                    current = await self._expire(rec)
                    break
                if now >= stop:
                    return None
                next_tick = min(stop, now + self._heartbeat) if on_tick is not None else stop
                async with anyio.create_task_group() as tg:

                    async def _timer(until: float = next_tick) -> None:
                        await self.clock.sleep_until(until)
                        tg.cancel_scope.cancel()

                    tg.start_soon(_timer)
                    await ev.wait()
                    tg.cancel_scope.cancel()
                if ev.is_set():
                    current = await self.store.get(rec.id)
                    if current.state == State.PENDING:  # woken without a decision (an escalation): re-arm
                        mine.remove(ev)
                        ev = anyio.Event()
                        mine.append(ev)
                        self._deadlines[rec.id] = current.deadline_at
                        if current.deadline_at is not None:  # the deadline may have been shortened
                            deadline = self.clock.monotonic() + (current.deadline_at - self.clock.now())
                            stop = min(deadline, start + budget) if budget is not None else deadline
                elif on_tick is not None and self.clock.monotonic() < stop:
                    try:
                        await on_tick(current, max(0.0, deadline - self.clock.monotonic()))
                    except Exception:  # a heartbeat failure never decides
                        log.debug("heartbeat for %s failed", rec.id[:8], exc_info=True)
        except BaseException:
            if not cancel_on_abort:
                raise
            with anyio.CancelScope(shield=True):
                try:
                    await self.store.transition(
                        rec.id,
                        [State.PENDING],
                        State.CANCELLED,
                        event="cancelled",
                        channel="client",
                        error="the client cancelled the call or went away before a decision",
                        finished_at=self.clock.now(),
                    )
                except StoreError:
                    log.error("could not record the cancellation of %s", rec.id[:8], exc_info=True)
            raise
        finally:
            mine.remove(ev)
            if not mine and self._waiters.get(rec.id) is mine:
                del self._waiters[rec.id]
                self._deadlines.pop(rec.id, None)
        return outcome_of(current)

    async def _expire(self, rec: CallRecord) -> CallRecord:
        current = await self.store.get(rec.id)  # its deadline may have been shortened by an escalation
        done = await self.store.transition(
            rec.id,
            [State.PENDING],
            State.EXPIRED,
            event="expired",
            channel="timeout",
            reason=_expiry_reason((current.deadline_at or 0) - current.created_at),
            finished_at=self.clock.now(),
        )
        return done if done is not None else await self.store.get(rec.id)

    # ------------------------------------------------------------------ deciding

    async def decide(self, call_id: str, decision: Decision) -> CallRecord:
        """Approve, reject, or modify-and-approve ``call_id`` (a unique prefix is enough).

        Raises CallNotFoundError, AlreadyDecidedError (decided, expired, stale digest) or
        InvalidModificationError (the edit breaks the tool's schema or lands in a deny rule).
        """
        rec = await self.store.find(call_id)
        if decision.lease is not None:
            self.check_lease(rec, decision)
        modified: dict[str, Any] | None = None
        if decision.approve and decision.arguments is not None:
            if digest(decision.arguments) != rec.args_digest:
                self.check_modification(rec, decision.arguments)
                modified = decision.arguments
        elif decision.arguments is not None:
            raise InvalidModificationError("arguments can only be given with an approval")
        detail: dict[str, Any] = {"evidence": decision.evidence} if decision.evidence else {}
        if modified is not None:
            detail["modified"] = True
        if decision.approve:
            to_run = rec.args_digest if modified is None else digest(modified)
            need, passkey = self.quorum_of(rec, modified), self.requires_passkey(rec, modified)
            if need > 1:
                # a quorum is its signed steps (mcp_gatekeeper.team), and a passkey rule's passkeys are theirs, one
                # per approver: an approval without them (the CLI, a local page) decides nothing
                why = await self.verify_steps(rec, to_run, need=need, passkeys=passkey, own_key=True)
                if why is not None:
                    raise NotAllowedError(
                        f"call {rec.id[:12]} needs {need} approvals by different reviewers, each its own step on the"
                        f" approval service (mcp-gatekeeper serve): {why}",
                        why="quorum_required",
                    )
            elif passkey:
                if decision.passkey is not None or not await self.store.approvals.steps(rec.id):
                    detail["passkey"] = await self._accept_passkey(rec, decision, to_run)
                elif (why := await self.verify_steps(rec, to_run, need=1, passkeys=True, own_key=True)) is not None:
                    # the service asked for a quorum this rule does not: its step carries the passkey
                    raise PasskeyError(f"call {rec.id[:12]} cannot be approved: {why}")
        signer = None if self.keys is None else self.keys.signer()  # an unusable key decides nothing
        done: CallRecord = await self.store.decide(
            rec.id,
            approve=decision.approve,
            decided_by=decision.decided_by,
            channel=decision.channel,
            reason=decision.reason,
            modified_arguments=modified,
            expected_digest=decision.args_digest,
            detail=detail,
            sign=None if signer is None else signer.seal,
        )
        self._wake(rec.id)
        if decision.lease is not None:
            lease = decision.lease
            await self.store.create_lease(
                upstream=rec.upstream,
                tool=rec.tool,
                tooldef_hash=rec.tooldef_hash,
                envelope=lease.envelope,
                created_by=decision.decided_by,
                channel=decision.channel,
                source_call=rec.id,
                expires_at=self.clock.now() + lease.seconds if lease.seconds is not None else None,
                calls=lease.calls,
            )
        return done

    def check_lease(self, rec: CallRecord, decision: Decision) -> None:
        """Leases are never offered for critical calls, tools marked no_lease, or without any bound."""
        lease = decision.lease
        assert lease is not None
        if not decision.approve:
            raise InvalidModificationError("a lease can only come with an approval")
        if rec.risk == "critical":
            raise InvalidModificationError("no lease for a critical call: each one needs its own approval")
        rule = self.policy.rule_named(rec.rule)
        if rule is not None and rule.no_lease:
            raise InvalidModificationError(f"rule {rec.rule} says no_lease: each call needs its own approval")
        if is_quarantine_hold(rec.reasons):
            raise InvalidModificationError("no lease for a quarantined tool: re-pin its definition first")
        if lease.seconds is None and lease.calls is None:
            raise InvalidModificationError("a lease needs a duration or a number of calls (or both)")
        if (lease.seconds is not None and lease.seconds <= 0) or (lease.calls is not None and lease.calls <= 0):
            raise InvalidModificationError("a lease's duration and number of calls must be positive")
        try:
            check_predicates(lease.envelope)
        except ValueError as e:
            raise InvalidModificationError(f"the lease's argument envelope is invalid: {e}") from None

    def check_modification(self, rec: CallRecord, arguments: Mapping[str, Any]) -> None:
        """Edited arguments must satisfy the tool's input schema and must not land in a deny rule."""
        if not isinstance(arguments, Mapping):
            raise InvalidModificationError("the modified arguments must be a JSON object")
        size = len(canonical_json(arguments).encode())
        cap = self.policy.config.security.max_argument_bytes
        if size > cap:
            raise InvalidModificationError(f"the modified arguments are {size} bytes; the limit is {cap}")
        schema = rec.input_schema or {"type": "object"}
        try:
            validator_cls = jsonschema.validators.validator_for(schema)
            validator = validator_cls(schema)
            errors = sorted(validator.iter_errors(dict(arguments)), key=lambda e: list(e.path))
        except SchemaError as e:
            raise InvalidModificationError(
                f"the tool's input schema is itself invalid, so edits cannot be checked: {e.message}"
            ) from e
        if errors:
            msgs = "; ".join(f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors[:5])
            raise InvalidModificationError(f"the modified arguments do not match {rec.tool}'s input schema: {msgs}")
        verdict = self.policy.evaluate(rec.upstream, rec.tool, arguments)
        if verdict.action == "deny":
            raise InvalidModificationError(
                f"the modified arguments are denied by policy ({verdict.rule}): {verdict.deny_reason}"
            )

    # ------------------------------------------------------------------ forwarding bookkeeping

    async def verify_approval(self, call_id: str) -> str | None:
        """Why an approved call must not run, or ``None``: the approval went through ``decide`` (its audit event
        is in the chain and matches the record) and, with :attr:`keys`, it carries a valid signature by a
        trusted key over what the record now says (call, arguments to run, who, channel, when). A call whose rule
        asks for a quorum (``approvals = N``) also needs N valid signed steps (:meth:`verify_steps`); a passkey
        rule, the approver's assertion (each approver's own, for a quorum)."""
        why = await self.store.verify_decision(call_id)
        if why is not None:
            return why
        rec = await self.store.get(call_id)
        to_run = rec.args_digest if rec.modified_arguments is None else digest(rec.modified_arguments)
        if self.keys is not None:
            seal = await self.store.calls.decision_signature(call_id)
            facts = facts_of(
                call_id=rec.id, approved=rec.state != State.REJECTED, args_digest=rec.args_digest,
                modified_digest=to_run if rec.modified_arguments is not None else None, decided_by=rec.decided_by,
                channel=rec.channel, decided_at=rec.decided_at, step=seal.get("step") if isinstance(seal, dict) else None,
            )  # fmt: skip
            if (why := self.keys.check(facts, seal)) is not None:
                return why
        need, passkey = self.quorum_of(rec), self.requires_passkey(rec)
        if need > 1:
            return await self.verify_steps(rec, to_run, need=need, passkeys=passkey)
        if passkey:
            (approval,) = [e for e in await self.store.audit_events(call_id=rec.id) if e.event == "approved"]
            assertion = approval.detail.get("passkey")
            if assertion is None and await self.store.approvals.steps(rec.id):
                # approved by a quorum the service asked for: each step carries its approver's assertion
                return await self.verify_steps(rec, to_run, need=1, passkeys=True)
            try:
                await self._check_passkey(rec, assertion, rec.decided_by or "", to_run)
            except PasskeyError as e:
                return str(e)
        return None

    def quorum_of(self, rec: CallRecord, arguments: Mapping[str, Any] | None = None) -> int:
        """How many different reviewers this process's policy says must approve ``rec`` (``approvals = N`` of the
        rule it was held under, and of the rule its arguments to run, or ``arguments``, match)."""
        found = [self.policy.rule_named(rec.rule)] if rec.rule else []
        found.append(self.policy.evaluate(rec.upstream, rec.tool, arguments or rec.forward_arguments).rule_config)
        return max((r.approvals for r in found if r is not None), default=1)

    async def verify_steps(
        self, rec: CallRecord, to_run: str, *, need: int, passkeys: bool, own_key: bool = False
    ) -> str | None:
        """Why the stored approval steps of ``rec`` do not make a quorum of ``need`` for the arguments ``to_run``,
        or ``None``: ``need`` different reviewers each approved exactly ``to_run`` in the latest round, in steps
        signed by a trusted key (with :attr:`keys`; ``own_key``: this process's own key counts too, for the
        service checking its own steps before it decides) and, with ``passkeys``, each with their own assertion
        by a credential registered to them (no credential counted twice). A step that fails any of it counts for
        nothing, whoever wrote it."""
        check = None if self.keys is None else self.keys.step_checker(own=own_key)
        signed = [
            s for s in await self.store.approvals.steps(rec.id)
            if s.call_id == rec.id and (check is None or check(s.facts(), s.signature) is None)
        ]  # fmt: skip
        if not signed:
            return f"the call needs {need} approval(s) by different reviewers and has no signed approval step"
        latest = max(s.round for s in signed)
        counted: set[str] = set()
        credentials: set[str] = set()
        problems: list[str] = []
        for s in signed:
            if s.round != latest or s.reviewer in counted:
                continue
            if s.proposal_digest != to_run:
                problems.append(f"step {s.step} by {s.reviewer} approved other arguments")
                continue
            if passkeys:
                try:
                    cred, _ = await self._check_passkey(rec, s.passkey, s.reviewer, to_run, round_=latest)
                except PasskeyError as e:
                    problems.append(f"step {s.step} by {s.reviewer}: {e}")
                    continue
                if cred.credential_id in credentials:
                    problems.append(f"step {s.step} by {s.reviewer}: a passkey already counted for another step")
                    continue
                credentials.add(cred.credential_id)
            counted.add(s.reviewer)
        if len(counted) >= need:
            return None
        why = (
            f"the call needs {need} approvals by different reviewers of the arguments that run"
            f"{' (each with their own passkey)' if passkeys else ''}; it has {len(counted)} valid signed step(s)"
        )
        return why + (f" ({'; '.join(problems[:3])})" if problems else "")

    def requires_passkey(self, rec: CallRecord, edit: Mapping[str, Any] | None = None) -> bool:
        """Does this process's policy say approving the call (with ``edit``) needs a passkey? (:func:`needs_passkey`)"""
        return needs_passkey(self.policy, rec, edit)

    async def _check_passkey(
        self, rec: CallRecord, assertion: Any, reviewer: str, to_run: str, *, accepting: bool = False, round_: int = 0
    ) -> tuple[Credential, int]:
        """Verify a passkey assertion over approving ``rec`` with arguments ``to_run`` by ``reviewer``."""
        url = self.policy.config.passkey_url
        if url is None:
            raise PasskeyError("passkeys need [ui] public_url")
        found = assertion_of(assertion) if accepting else assertion
        cred = await self.store.passkeys.get(found["credential_id"]) if isinstance(found, dict) else None
        if cred is None or cred.reviewer != reviewer:
            raise PasskeyError(f"the approval carries no registered passkey of {reviewer}")
        count = verify_assertion(
            RelyingParty.from_url(url), found, cred, call_id=rec.id, args_digest=to_run, stored_count=not accepting,
            round_=round_,
        )  # fmt: skip
        return cred, count

    async def _accept_passkey(self, rec: CallRecord, decision: Decision, to_run: str) -> dict[str, Any]:
        """The approval's passkey assertion, verified and its sign count recorded (raises :class:`PasskeyError`)."""
        if decision.passkey is None:
            raise PasskeyError(f"call {rec.id[:12]} needs the reviewer's passkey to approve (rule {rec.rule!r})")
        return await self.accept_step_passkey(rec, decision.decided_by, decision.passkey, to_run, round_=0)

    async def accept_step_passkey(
        self, rec: CallRecord, reviewer: str, assertion: Any, to_run: str, *, round_: int
    ) -> dict[str, Any]:
        """``reviewer``'s assertion over approving ``rec`` with ``to_run`` in quorum round ``round_`` (0: a single
        decision), verified and its sign count recorded: the value to store (raises :class:`PasskeyError`)."""
        if assertion is None:
            raise PasskeyError(f"call {rec.id[:12]} needs {reviewer}'s own passkey to approve (rule {rec.rule!r})")
        cred, count = await self._check_passkey(rec, assertion, reviewer, to_run, accepting=True, round_=round_)
        if not await self.store.passkeys.advance(cred.credential_id, seen=cred.sign_count, new=count):
            raise PasskeyError("the passkey was used for another approval at the same moment; try again")
        return assertion_of(assertion)

    async def begin_forward(self, rec: CallRecord, *, from_state: State = State.APPROVED) -> CallRecord | None:
        """CAS approved/allowed → forwarding, written *before* the upstream call (at-most-once).

        The forwarding process becomes the call's owner (a released call has none): if it dies now, recovery
        finds the call and records ``outcome_unknown``. Of several processes racing an approved call's retry,
        exactly one wins this compare-and-set; the others get ``None`` and never run it.
        """
        return await self.store.transition(
            rec.id, [from_state], State.FORWARDING, event="forwarding", instance_id=self.store.instance_id
        )

    async def finish(
        self, rec: CallRecord, *, result: dict[str, Any] | None, error: str | None, unknown: bool = False
    ) -> None:
        """Record how a forwarded call ended; shielded so a cancellation cannot lose it. While the store is unusable
        it keeps trying (up to :data:`OUTCOME_PATIENCE`), so the caller replies only once the outcome is recorded."""
        if unknown:
            state = State.OUTCOME_UNKNOWN
        elif error is not None:
            state = State.FAILED
        else:
            state = State.FORWARDED
        give_up, delay = self.clock.monotonic() + OUTCOME_PATIENCE, 0.1
        with anyio.CancelScope(shield=True):
            while True:
                try:
                    await self.store.finish_call(
                        rec.id,
                        rec.state if rec.state in (State.FORWARDING, State.ALLOWED) else State.FORWARDING,
                        state,
                        result=result,
                        error=error,
                        detail={"is_error": bool(result and result.get("isError"))}
                        if result is not None
                        else {"error": error},
                        args_digest=rec.args_digest,
                    )
                    return
                except StoreError:
                    # the upstream has run it: a reply the store cannot back would disagree with it (I3, I5)
                    if self.clock.monotonic() >= give_up:
                        log.error("could not record the outcome of %s; giving up", rec.id[:8], exc_info=True)
                        return
                    log.warning("could not record the outcome of %s yet; retrying", rec.id[:8])
                await self.clock.sleep_until(self.clock.monotonic() + delay)  # back-off, not a synchronisation
                delay = min(delay * 2, 2.0)


def needs_passkey(policy: Policy, rec: CallRecord, edit: Mapping[str, Any] | None = None) -> bool:
    """Does ``policy`` say approving ``rec`` (with the reviewer's ``edit``) needs a passkey (``confirm =
    "passkey"``)? The rule it was held under, or a rule its arguments, its approved edit or ``edit`` match here:
    the rule a row names is written by the gatekeeper's role, and naming a lenient one must not spare the passkey."""
    rules = [policy.rule_named(rec.rule)] if rec.rule else []
    for arguments in (rec.arguments, rec.modified_arguments, edit):
        if arguments is not None:
            rules.append(policy.evaluate(rec.upstream, rec.tool, arguments).rule_config)
    return any(rule is not None and rule.confirm == "passkey" for rule in rules)


def outcome_of(rec: CallRecord) -> Outcome:
    """The outcome a (no longer pending) call stands for."""
    if rec.state in (State.APPROVED, State.FORWARDING, State.FORWARDED, State.FAILED, State.OUTCOME_UNKNOWN):
        return Approved(call=rec, arguments=rec.forward_arguments, modified=rec.modified_arguments is not None)
    if rec.state == State.REJECTED:
        # only the reviewer's words: who rejected it is said once, by the text the agent reads (execute.py)
        return Refused(call=rec, state=rec.state, reason=rec.reason or "none given")
    if rec.state == State.EXPIRED:
        return Refused(call=rec, state=rec.state, reason=rec.reason or "no decision in time; rejected by default")
    if rec.state == State.CANCELLED:
        return Refused(call=rec, state=rec.state, reason="the call was cancelled before a decision")
    if rec.state == State.ORPHANED:
        return Refused(call=rec, state=rec.state, reason=rec.error or "the gatekeeper holding this call stopped")
    return Refused(call=rec, state=rec.state, reason=rec.reason or f"the call is {rec.state}")


def _expiry_reason(held_for: float) -> str:
    return f"no decision within {_human_seconds(held_for)}; the safe default is to reject"


def _next_step_at(steps: Sequence[EscalationStep], reached: int, rec: CallRecord) -> float | None:
    """When the first escalation step after level ``reached`` falls due (``None``: there is none)."""
    return min((rec.created_at + step.after for step in steps[reached:]), default=None)


def _human_seconds(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"
