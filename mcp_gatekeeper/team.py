"""Team mode's decisions: who may decide a held call, and approvals that need several reviewers.

The approval service (``mcp-gatekeeper serve``) decides through :class:`TeamDesk`, never through
:meth:`Gate.decide` directly, so that every decision is made by a named reviewer account and:

- **reviewer groups**: a rule's ``reviewers = ["payments"]`` lets only members of one of those groups decide
  its calls (approve or reject);
- **no self-review**: with ``prevent_self_review`` (on unless a rule turns it off) a reviewer linked to the
  principal that made the call (:meth:`Reviewer.linked_to`) cannot decide it;
- **a quorum**: ``approvals = N`` needs N different reviewers, each approval its own audited step
  (:mod:`mcp_gatekeeper.store.approvals`), signed by the service's key like a decision and, with
  ``confirm = "passkey"``, carrying the approver's own passkey assertion; the call is approved (one
  compare-and-set, so forwarded once) when the N-th arrives, and refused by the first rejection. An approval
  that edits the arguments starts a new round: the approvals before it were for other arguments. The holder
  checks every step again before forwarding (:meth:`Gate.verify_approval`).

The requirements come from the service's own config, never from the gatekeeper that holds the call (an
agent that can edit its gatekeeper's config must not lower them): every rule the call matches, for its own
arguments and for an edit's, and the rule it was held under, count; the strictest wins.
A refusal is audited (``decision_refused``) and raised as :class:`NotAllowedError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp_gatekeeper.accounts import Reviewer
from mcp_gatekeeper.config import RuleConfig
from mcp_gatekeeper.errors import AlreadyDecidedError, NotAllowedError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import CallRecord, Decision, State, digest
from mcp_gatekeeper.passkeys import PasskeyError
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.store.approvals import Tally


@dataclass(frozen=True, slots=True)
class Requirements:
    """What deciding one call takes."""

    group_sets: tuple[tuple[str, ...], ...]
    """The reviewer must be in at least one group of each of these (one per rule that names groups)."""
    approvals: int
    prevent_self_review: bool
    rules: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": [list(g) for g in self.group_sets],
            "approvals": self.approvals,
            "prevent_self_review": self.prevent_self_review,
            "rules": list(self.rules),
        }


def requirements(policy: Policy, rec: CallRecord, *extra_arguments: dict[str, Any]) -> Requirements:
    """The strictest requirements of every rule that covers ``rec`` (see the module docstring)."""
    found: list[RuleConfig] = []
    for arguments in (rec.arguments, *extra_arguments):
        verdict = policy.evaluate(rec.upstream, rec.tool, arguments)
        if verdict.rule_config is not None:
            found.append(verdict.rule_config)
    found.extend(r for r in policy.config.rules if r.name is not None and r.name == rec.rule)
    return Requirements(
        group_sets=tuple(tuple(r.reviewers) for r in found if r.reviewers),
        approvals=max([r.approvals for r in found], default=1),
        prevent_self_review=all(r.prevent_self_review is not False for r in found),
        rules=tuple(dict.fromkeys(r.name or "(unnamed)" for r in found)),
    )


def refusal(req: Requirements, principal: str | None, reviewer: Reviewer) -> tuple[str, str] | None:
    """Why ``reviewer`` may not decide a call of ``principal``: ``(code, message)``, or ``None``."""
    for groups in req.group_sets:
        if not set(groups) & set(reviewer.groups):
            return (
                "not_in_group",
                f"{reviewer.name} is not in the reviewer group(s) {', '.join(groups)} that decide this call",
            )
    if req.prevent_self_review and reviewer.linked_to(principal):
        return (
            "self_review",
            f"{reviewer.name} is linked to {principal}, which made this call; another reviewer must decide",
        )
    return None


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one approval: the call as it now stands and its round of approvals."""

    call: CallRecord
    tally: Tally
    needed: int
    decided: bool


class TeamDesk:
    """Decisions by named reviewers (see the module docstring)."""

    def __init__(self, store: Store, gate: Gate, policy: Policy) -> None:
        self.store, self.gate, self.policy = store, gate, policy

    async def _allowed(
        self, rec: CallRecord, reviewer: Reviewer, *extra: dict[str, Any], channel: str = "web"
    ) -> Requirements:
        req = requirements(self.policy, rec, *extra)
        refused = refusal(req, await self.store.principal_of(rec.id), reviewer)
        if refused is not None:
            code, message = refused
            await self.store.approvals.note_refusal(
                rec.id, reviewer=reviewer.name, why=code, message=message, channel=channel
            )
            raise NotAllowedError(message, why=code)
        return req

    async def check(self, call_id: str, reviewer: Reviewer, *, channel: str = "web") -> None:
        """Refuse now (audited, :class:`NotAllowedError`) if ``reviewer`` may not decide the call at all: before a
        dialog asks them for a reason, say."""
        await self._allowed(await self.store.find(call_id), reviewer, channel=channel)

    async def check_reviewer(self, rec: CallRecord, reviewer: Reviewer) -> Requirements:
        """Refuse (audited, :class:`NotAllowedError`) a reviewer who may not decide ``rec``: outside its rules'
        groups, or linked to the principal that made it. Reviewing a call that already ran is such a decision."""
        return await self._allowed(rec, reviewer)

    async def approve(
        self,
        call_id: str,
        reviewer: Reviewer,
        *,
        seen_digest: str,
        arguments: dict[str, Any] | None,
        session: str | None,
        reason: str | None = None,
        passkey: dict[str, Any] | None = None,
        channel: str = "web",
    ) -> Step:
        """``reviewer`` approves what they saw (``seen_digest``: the call's arguments, or the current round's
        edit); ``arguments``: an edit. The call is approved once the quorum is met. Each approval of a quorum is
        a step signed by the service's key; with a passkey rule it needs ``passkey``, the approver's own assertion
        over this round's proposal (:func:`mcp_gatekeeper.passkeys.challenge_for` with the round)."""
        rec = await self.store.find(call_id)
        tally = await self.store.approvals.tally(rec.id)
        # an edit is arguments other than the round's proposal: putting a colleague's edit back to the call's own
        # arguments is an edit too (a new round), never an approval of the colleague's edit
        edit = arguments if arguments is not None and digest(arguments) != tally.proposal_digest else None
        # what this approval is for: the reviewer's edit, else the current round's (a colleague's edit): the rules
        # of those arguments count too, or one reviewer's edit into a stricter rule would be met by the looser one
        # (approving it again, or a reviewer outside the stricter rule's groups). A round that changes after this
        # read is refused by the approval's own compare-and-set (the digest seen).
        proposal = edit if edit is not None else tally.arguments
        req = await self._allowed(rec, reviewer, *([proposal] if proposal is not None else []), channel=channel)
        if edit is not None:
            self.gate.check_modification(rec, edit)
        if req.approvals <= 1 and tally.count == 0:
            done = await self._decide(
                rec, reviewer, tally, seen_digest=seen_digest, arguments=edit, session=session, reason=reason,
                passkey=passkey, channel=channel,
            )  # fmt: skip
            return Step(done, await self.store.approvals.tally(rec.id), req.approvals, decided=True)
        proposal_digest = digest(edit) if edit is not None else tally.proposal_digest
        round_ = tally.next_round(proposal_digest)
        stored_passkey = None
        if self.gate.requires_passkey(rec, edit):  # each approver's own assertion, over this round's proposal
            stored_passkey = await self.gate.accept_step_passkey(
                rec, reviewer.name, passkey, proposal_digest, round_=round_
            )
        signer = None if self.gate.keys is None else self.gate.keys.signer()
        try:
            tally = await self.store.approvals.add(
                rec.id, reviewer=reviewer.name, seen_digest=seen_digest, arguments=edit,
                arguments_digest=digest(edit) if edit is not None else None, needed=req.approvals, session=session,
                channel=channel, expected_round=round_, passkey=stored_passkey,
                sign=None if signer is None else signer.seal_step,
            )  # fmt: skip
        except NotAllowedError as e:
            tally = await self.store.approvals.tally(rec.id)
            if await self._counted(rec, tally, req) < req.approvals:  # a real second try; else: finish a quorum
                # whose decision was lost
                await self.store.approvals.note_refusal(
                    rec.id, reviewer=reviewer.name, why=e.why, message=str(e), channel=channel
                )
                raise
        if await self._counted(rec, tally, req) < req.approvals:
            return Step(await self.store.get(rec.id), tally, req.approvals, decided=False)
        # the rows counted so far may have been written past the service: decide only on steps it signed itself
        # (the holder checks them all again before forwarding)
        unsound = await self.gate.verify_steps(
            rec,
            tally.proposal_digest,
            need=req.approvals,
            passkeys=self.gate.requires_passkey(rec, tally.arguments),
            own_key=True,
        )
        if unsound is not None:
            await self.store.approvals.note_refusal(
                rec.id, reviewer=reviewer.name, why="unverified_steps", message=unsound, channel=channel
            )
            raise NotAllowedError(
                f"the approvals of call {rec.id[:12]} do not add up: {unsound}", why="unverified_steps"
            )
        # no passkey with the decision: a quorum's passkeys are its steps' (the gate finds them there)
        done = await self._decide(
            rec, reviewer, tally, seen_digest=tally.call_digest, arguments=tally.arguments, session=session,
            reason=reason, channel=channel,
        )  # fmt: skip
        return Step(done, tally, req.approvals, decided=True)

    async def _counted(self, rec: CallRecord, tally: Tally, req: Requirements) -> int:
        """The round's approvals that still count: by accounts that still exist and may still decide the call (a
        removed account's approval, or one whose groups no longer qualify, does not make up a quorum)."""
        principal = await self.store.principal_of(rec.id)
        counted = 0
        for name in tally.approvers:
            found = await self.store.reviewers.get(name)
            counted += found is not None and refusal(req, principal, found) is None
        return counted

    async def _decide(
        self,
        rec: CallRecord,
        reviewer: Reviewer,
        tally: Tally,
        *,
        seen_digest: str,
        arguments: dict[str, Any] | None,
        session: str | None,
        reason: str | None,
        passkey: dict[str, Any] | None = None,
        channel: str = "web",
    ) -> CallRecord:
        evidence: dict[str, Any] = {"session": session, "account": reviewer.name}
        if tally.count:
            evidence["approvals"] = list(tally.approvers)
        decision = Decision(
            approve=True, decided_by=reviewer.name, channel=channel, reason=reason, arguments=arguments,
            args_digest=seen_digest, evidence=evidence, passkey=passkey,
        )  # fmt: skip
        try:
            return await self.gate.decide(rec.id, decision)
        except PasskeyError as e:  # no passkey, or one over another call, other arguments, or spent: audited
            await self.store.approvals.note_refusal(
                rec.id, reviewer=reviewer.name, why="passkey_refused", message=str(e), channel="web"
            )
            raise
        except AlreadyDecidedError:
            if tally.count == 0:
                raise
            # two reviewers completed the quorum at once: the call was approved (once) by the other one
            current = await self.store.get(rec.id)
            if current.decided_by is None or current.state in (State.REJECTED, State.EXPIRED, State.CANCELLED):
                raise
            return current

    async def reject(
        self, call_id: str, reviewer: Reviewer, *, session: str | None, reason: str | None, channel: str = "web"
    ) -> CallRecord:
        """``reviewer`` refuses the call: one rejection is enough, whatever the quorum."""
        rec = await self.store.find(call_id)
        await self._allowed(rec, reviewer, channel=channel)
        decision = Decision(
            approve=False, decided_by=reviewer.name, channel=channel, reason=reason,
            evidence={"session": session, "account": reviewer.name},
        )  # fmt: skip
        return await self.gate.decide(rec.id, decision)
