"""Every step of a quorum is as strong as a single decision (issue 12): each approval of ``approvals = N`` is a
statement signed by the approval service (call, proposal digest, reviewer, step, round, time, channel), with
``confirm = "passkey"`` it carries the approver's own assertion, and the gatekeeper that holds the call (here a
second gate that trusts only the service's public key) counts N valid steps of exactly the arguments that run
before forwarding. The attacks: steps tampered with after the fact, and quorums completed by rows written
straight into ``call_approvals`` (what the approver's database role can do) that the service then finishes.
The same in Chromium with two virtual authenticators: test_quorum_browser.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from softauthn import SoftAuthenticator, as_response

from mcp_gatekeeper.accounts import Reviewer
from mcp_gatekeeper.cli import main
from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.errors import NotAllowedError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import (
    GENESIS_HASH,
    CallRecord,
    Decision,
    NewCall,
    State,
    audit_body,
    audit_hash,
    canonical_json,
)
from mcp_gatekeeper.passkeys import PasskeyError, RelyingParty, challenge_for
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.signatures import DecisionKeys, check_step_events, public_text
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.team import TeamDesk
from team.conftest import add_accounts, refund

pytestmark = pytest.mark.anyio

CONFIG = """
[ui]
autostart = false
public_url = "https://gk.example.com"
[[rules]]
name = "big-refunds"
tool = "issue_refund"
when = { amount = { gt = 1000 } }
gate = "hard"
risk = "critical"
reviewers = ["payments"]
approvals = 2
[[rules]]
name = "wipes"
tool = "delete_record"
gate = "hard"
reviewers = ["payments"]
approvals = 2
confirm = "passkey"
"""
RP = RelyingParty.from_url("https://gk.example.com")


def wipe(record: str = "r-1") -> NewCall:
    return NewCall(
        upstream="orderdesk", tool="delete_record", arguments={"id": record}, gate="hard", risk="high", rule="wipes",
        client={"principal": "agent:ops-bot"}, input_schema={"type": "object", "properties": {"id": {"type": "string"}}},
    )  # fmt: skip


@dataclass
class Quorum:
    store: Store
    service: Gate
    """The approval service's gate: signs decisions and steps with the home's key."""
    holder: Gate
    """The gatekeeper that holds the calls: trusts only the service's public key, never signs."""
    desk: TeamDesk
    db: Path

    async def hold(self, new: NewCall) -> CallRecord:
        return await self.store.insert_call(new, state=State.PENDING, deadline_at=self.store.clock.now() + 600)

    async def who(self, name: str) -> Reviewer:
        found = await self.store.reviewers.get(name)
        assert found is not None
        return found

    async def approve(self, name: str, rec: CallRecord, seen: str | None = None, **kw: Any) -> Any:
        return await self.desk.approve(
            rec.id, await self.who(name), seen_digest=seen or rec.args_digest, arguments=kw.pop("arguments", None),
            session=None, **kw,
        )  # fmt: skip

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """What the approver's database role can write past the service (the file, here)."""
        conn = sqlite3.connect(self.db, isolation_level=None, timeout=10)
        try:
            return conn.execute(statement, params).fetchall()
        finally:
            conn.close()


@pytest.fixture
async def quorum(home: Path, tmp_path: Path) -> AsyncIterator[Quorum]:
    clock = FakeClock(1_700_000_000.0)
    policy = Policy(parse_config(CONFIG))
    service_keys = DecisionKeys.for_home(home)
    holder_keys = DecisionKeys.for_home(
        tmp_path / "holder-home", decision_keys=[public_text(service_keys.signer().public)]
    )
    async with Store.open(home / "gatekeeper.db", clock) as store:
        await store.register_instance("quorum-test")
        await add_accounts(store)
        service = Gate(store, policy, clock, sweep_interval=None, keys=service_keys)
        holder = Gate(store, policy, clock, sweep_interval=None, keys=holder_keys)
        async with service.running():
            yield Quorum(store, service, holder, TeamDesk(store, service, policy), home / "gatekeeper.db")


async def test_each_step_is_signed_stored_and_audited_and_the_holder_checks_them(quorum: Quorum) -> None:
    rec = await quorum.hold(refund(5000))
    first = await quorum.approve("alice", rec)
    assert not first.decided and first.tally.approvers == ("alice",)
    assert await quorum.holder.verify_steps(rec, rec.args_digest, need=2, passkeys=False) is not None  # one of two
    second = await quorum.approve("bob", rec)
    assert second.decided and second.call.state == State.APPROVED
    assert await quorum.holder.verify_approval(rec.id) is None

    steps = await quorum.store.approvals.steps(rec.id)
    assert [(s.reviewer, s.step, s.round, s.proposal_digest) for s in steps] == [
        ("alice", 1, 0, rec.args_digest),
        ("bob", 2, 0, rec.args_digest),
    ]
    keys = quorum.holder.keys
    assert keys is not None
    for s in steps:
        assert keys.check_step(s.facts(), s.signature) is None
    events = [e for e in await quorum.store.audit_events(call_id=rec.id) if e.event == "approval_given"]
    assert [e.detail["signature"] for e in events] == [s.signature for s in steps]
    since, all_steps = await quorum.store.audit.step_events()
    assert check_step_events(all_steps, signed_since=since, trusted=keys.trusted()) == []


async def test_a_quorum_call_is_never_approved_past_its_steps(quorum: Quorum) -> None:
    """The CLI or a local page decide through the gate directly: without the quorum's signed steps, nothing."""
    rec = await quorum.hold(refund(5000))
    await quorum.approve("alice", rec)
    for by in ("alice", "bob"):
        with pytest.raises(NotAllowedError) as refused:
            await quorum.service.decide(
                rec.id, Decision(approve=True, decided_by=by, channel="cli", args_digest=rec.args_digest)
            )
        assert refused.value.why == "quorum_required" and "1 valid signed step" in str(refused.value)
    assert (await quorum.store.get(rec.id)).state == State.PENDING
    rejected = await quorum.service.decide(rec.id, Decision(approve=False, decided_by="bob", channel="cli"))
    assert rejected.state == State.REJECTED  # one rejection is enough, from anywhere


async def test_an_edit_starts_a_round_whose_steps_name_it(quorum: Quorum) -> None:
    rec = await quorum.hold(refund(5000))
    await quorum.approve("alice", rec)
    smaller = {"order_id": "A-17", "amount": 4000}
    step = await quorum.approve(
        "bob", rec, arguments=smaller
    )  # bob approves an edit: round 1, alice's no longer counts
    assert not step.decided and step.tally.round == 1 and step.tally.approvers == ("bob",)
    with pytest.raises(NotAllowedError):
        await quorum.approve("bob", rec, seen=step.tally.proposal_digest)
    done = await quorum.approve("alice", rec, seen=step.tally.proposal_digest)
    assert done.decided and done.call.modified_arguments == smaller
    assert await quorum.holder.verify_approval(rec.id) is None
    steps = await quorum.store.approvals.steps(rec.id)
    assert [(s.reviewer, s.round, s.step) for s in steps] == [("alice", 0, 1), ("bob", 1, 1), ("alice", 1, 2)]


TAMPERING = {
    "reviewer_renamed": "UPDATE call_approvals SET reviewer = 'carol' WHERE call_id = ? AND step = 2",
    "digest_changed": "UPDATE call_approvals SET proposal_digest = 'e' || substr(proposal_digest, 2) WHERE call_id = ?"
    " AND step = 2",
    "round_moved": "UPDATE call_approvals SET round = 3 WHERE call_id = ? AND step = 2",
    "step_renumbered": "UPDATE call_approvals SET step = 1 WHERE call_id = ? AND step = 2",
    "time_moved": "UPDATE call_approvals SET signature = json_set(signature, '$.at', 1) WHERE call_id = ? AND step = 2",
    "signature_stripped": "UPDATE call_approvals SET signature = NULL WHERE call_id = ? AND step = 2",
    "step_deleted": "DELETE FROM call_approvals WHERE call_id = ? AND step = 2",
}


@pytest.mark.parametrize("attack", sorted(TAMPERING))
async def test_a_step_tampered_with_after_the_quorum_is_refused_by_the_holder(quorum: Quorum, attack: str) -> None:
    rec = await quorum.hold(refund(5000))
    await quorum.approve("alice", rec)
    assert (await quorum.approve("bob", rec)).decided
    assert await quorum.holder.verify_approval(rec.id) is None
    quorum.sql(TAMPERING[attack], (rec.id,))
    why = await quorum.holder.verify_approval(rec.id)
    assert why is not None and "needs 2 approvals" in why and "1 valid signed step" in why, why


async def _forge_second(quorum: Quorum, attack: str, rec: CallRecord) -> str:
    """Write a second approval into ``call_approvals`` past the service; return who then asks the service to
    finish the quorum (its retry path for a quorum whose decision was lost)."""
    if attack == "unsigned_row":
        quorum.sql(
            "INSERT INTO call_approvals (call_id, reviewer, proposal_digest, at, round, step) VALUES (?, 'bob', ?, 1, 0, 2)",
            (rec.id, rec.args_digest),
        )
        return "alice"
    if attack == "step_duplicated":  # alice's own signed step, twice
        quorum.sql(
            "INSERT INTO call_approvals (call_id, reviewer, proposal_digest, arguments, session, at, round, step,"
            " channel, signature, passkey) SELECT call_id, reviewer, proposal_digest, arguments, session, at, round,"
            " step, channel, signature, passkey FROM call_approvals WHERE call_id = ?",
            (rec.id,),
        )
        return "alice"
    if attack == "step_of_another_call":  # bob's signed step of another call of the same arguments
        other = await quorum.hold(refund(5000))
        await quorum.approve("bob", other)
        quorum.sql(
            "INSERT INTO call_approvals (call_id, reviewer, proposal_digest, arguments, session, at, round, step,"
            " channel, signature, passkey) SELECT ?, reviewer, proposal_digest, arguments, session, at,"
            " round, 2, channel, signature, passkey FROM call_approvals WHERE call_id = ?",
            (rec.id, other.id),
        )
        return "alice"
    assert attack == "step_of_another_round"
    # alice approved round 0; bob edits (round 1); alice's round-0 step is replayed into round 1
    smaller = {"order_id": "A-17", "amount": 4000}
    edit = await quorum.approve("bob", rec, arguments=smaller)
    quorum.sql(
        "INSERT INTO call_approvals (call_id, reviewer, proposal_digest, arguments, session, at, round, step,"
        " channel, signature, passkey) SELECT call_id, reviewer, ?, ?, session, at, 1, 2, channel,"
        " signature, passkey FROM call_approvals WHERE call_id = ? AND reviewer = 'alice'",
        (edit.tally.proposal_digest, json.dumps(smaller), rec.id),
    )
    return "bob"


@pytest.mark.parametrize("attack", ["unsigned_row", "step_duplicated", "step_of_another_call", "step_of_another_round"])
async def test_a_quorum_completed_past_the_service_is_refused_by_the_service_and_the_holder(
    quorum: Quorum, attack: str
) -> None:
    rec = await quorum.hold(refund(5000))
    await quorum.approve("alice", rec)
    finisher = await _forge_second(quorum, attack, rec)
    tally = await quorum.store.approvals.tally(rec.id)
    assert tally.count == 2  # the rows add up to a quorum ...
    with pytest.raises(NotAllowedError) as refused:  # ... but the service decides only on steps it signed
        await quorum.approve(finisher, rec, seen=tally.proposal_digest)
    assert refused.value.why == "unverified_steps"
    assert (await quorum.store.get(rec.id)).state == State.PENDING
    (event,) = [e for e in await quorum.store.audit_events(call_id=rec.id) if e.event == "decision_refused"]
    assert event.detail["why"] == "unverified_steps"

    # a decision signed with the service's key all the same (a service fooled some other way): the holder refuses
    signer = quorum.service.keys.signer() if quorum.service.keys else None
    assert signer is not None
    await quorum.store.decide(
        rec.id, approve=True, decided_by=finisher, channel="web", reason=None, expected_digest=rec.args_digest,
        modified_arguments=tally.arguments, sign=signer.seal,
    )  # fmt: skip
    why = await quorum.holder.verify_approval(rec.id)
    assert why is not None and "needs 2 approvals by different reviewers" in why, why


# ------------------------------------------------------------------ each approver's own passkey


async def _register(quorum: Quorum, name: str) -> SoftAuthenticator:
    auth = SoftAuthenticator(RP, name)
    assert await quorum.store.passkeys.add(auth.credential(), channel="web")
    return auth


def _assertion(auth: SoftAuthenticator, rec: CallRecord, digest: str | None = None, round_: int = 0) -> Any:
    return as_response(auth.assertion(challenge_for(rec.id, digest or rec.args_digest, round_=round_)))


async def test_each_approver_confirms_their_own_step_with_their_own_passkey(quorum: Quorum) -> None:
    alice, bob = await _register(quorum, "alice"), await _register(quorum, "bob")
    rec = await quorum.hold(wipe())
    with pytest.raises(PasskeyError, match="alice's own passkey"):
        await quorum.approve("alice", rec)
    assert (await quorum.store.approvals.tally(rec.id)).count == 0
    assert not (await quorum.approve("alice", rec, passkey=_assertion(alice, rec))).decided

    refused = {
        "no passkey": None,
        "another digest": _assertion(bob, rec, "e" * 64),
        "another round": _assertion(bob, rec, round_=1),
        "another call": _assertion(bob, await quorum.hold(wipe("r-2"))),
        "alice's passkey": _assertion(alice, rec),
    }
    for what, assertion in refused.items():
        with pytest.raises(PasskeyError):
            await quorum.approve("bob", rec, passkey=assertion)
        assert (await quorum.store.get(rec.id)).state == State.PENDING, what
    assert (await quorum.store.approvals.tally(rec.id)).approvers == ("alice",)

    done = await quorum.approve("bob", rec, passkey=_assertion(bob, rec))
    assert done.decided and done.call.state == State.APPROVED
    assert await quorum.holder.verify_approval(rec.id) is None
    steps = await quorum.store.approvals.steps(rec.id)
    assert [s.passkey["credential_id"] for s in steps] == [
        alice.credential().credential_id,
        bob.credential().credential_id,
    ]
    (approved,) = [e for e in await quorum.store.audit_events(call_id=rec.id) if e.event == "approved"]
    assert "passkey" not in approved.detail  # the quorum's passkeys are its steps'


@pytest.mark.parametrize("attack", ["passkey_stripped", "first_approvers_passkey", "passkey_of_round_1"])
async def test_a_quorum_steps_passkey_tampered_with_is_refused_by_the_holder(quorum: Quorum, attack: str) -> None:
    alice, bob = await _register(quorum, "alice"), await _register(quorum, "bob")
    rec = await quorum.hold(wipe())
    await quorum.approve("alice", rec, passkey=_assertion(alice, rec))
    assert (await quorum.approve("bob", rec, passkey=_assertion(bob, rec))).decided
    if attack == "passkey_stripped":
        quorum.sql("UPDATE call_approvals SET passkey = NULL WHERE call_id = ? AND step = 2", (rec.id,))
    elif attack == "first_approvers_passkey":  # both steps carry alice's assertion
        quorum.sql(
            "UPDATE call_approvals SET passkey = (SELECT passkey FROM call_approvals WHERE call_id = ? AND step = 1)"
            " WHERE call_id = ? AND step = 2",
            (rec.id, rec.id),
        )
    else:  # a valid assertion of bob's, made for another round of the same call
        stored = bob.assertion(challenge_for(rec.id, rec.args_digest, round_=1), count=0)
        quorum.sql("UPDATE call_approvals SET passkey = ? WHERE call_id = ? AND step = 2", (json.dumps(stored), rec.id))
    why = await quorum.holder.verify_approval(rec.id)
    assert why is not None and "each with their own passkey" in why, why


async def test_a_passkey_quorum_completed_past_the_service_is_refused_by_the_gate_and_the_holder(
    quorum: Quorum,
) -> None:
    alice = await _register(quorum, "alice")
    await _register(quorum, "bob")
    rec = await quorum.hold(wipe())
    await quorum.approve("alice", rec, passkey=_assertion(alice, rec))
    # bob's step written past the service, with a copy of alice's assertion: the service refuses to decide on
    # it, and the holder would refuse the call had it been decided
    quorum.sql(
        "INSERT INTO call_approvals (call_id, reviewer, proposal_digest, at, round, step, channel, signature, passkey)"
        " SELECT call_id, 'bob', proposal_digest, at, round, 2, channel, signature, passkey FROM call_approvals"
        " WHERE call_id = ?",
        (rec.id,),
    )
    with pytest.raises((PasskeyError, NotAllowedError)):
        await quorum.approve("alice", rec, passkey=_assertion(alice, rec))
    assert (await quorum.store.get(rec.id)).state == State.PENDING
    why = await quorum.holder.verify_steps(rec, rec.args_digest, need=2, passkeys=True)
    assert why is not None and "1 valid signed step" in why, why


# ------------------------------------------------------------------ audit --verify


def _rewrite_step_events(db: Path, change: dict[str, Any]) -> None:
    """A writer of the database file: change the last ``approval_given`` event and recompute the (unkeyed) chain."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("BEGIN IMMEDIATE")
        (last,) = conn.execute("SELECT MAX(seq) FROM audit WHERE event = 'approval_given'").fetchone()
        prev = GENESIS_HASH
        for r in conn.execute("SELECT * FROM audit ORDER BY seq").fetchall():
            e = dict(r)
            e["detail"] = json.loads(e["detail"])
            if e["seq"] == last:
                for key, value in change.items():
                    if key == "actor":
                        e["actor"] = value
                    else:
                        e["detail"][key] = value
            body = audit_body(
                at=e["at"], call_id=e["call_id"], event=e["event"], actor=e["actor"], channel=e["channel"],
                args_digest=e["args_digest"], detail=e["detail"],
            )  # fmt: skip
            h = audit_hash(prev, body)
            conn.execute(
                "UPDATE audit SET actor = ?, detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (e["actor"], canonical_json(e["detail"]), prev, h, e["seq"]),
            )
            prev = h
        conn.execute("COMMIT")
    finally:
        conn.close()


async def _verify_cli(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[int, str]:
    capsys.readouterr()
    rc = await anyio.to_thread.run_sync(main, ["audit", "--verify", "--config", str(config)])
    return rc, capsys.readouterr().out


@pytest.mark.parametrize("change", [{"actor": "carol"}, {"round": 1}, {"signature": None}])
async def test_audit_verify_checks_every_quorum_step(
    home: Path, no_ui_config: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any]
) -> None:
    clock = FakeClock(1_700_000_000.0)
    policy = Policy(parse_config(CONFIG))
    async with Store.open(home / "gatekeeper.db", clock) as store:
        await add_accounts(store)
        gate = Gate(store, policy, clock, sweep_interval=None, keys=DecisionKeys.for_home(home))
        desk = TeamDesk(store, gate, policy)
        rec = await store.insert_call(refund(5000), state=State.PENDING, deadline_at=clock.now() + 600)
        for name in ("alice", "bob"):
            who = await store.reviewers.get(name)
            assert who is not None
            await desk.approve(rec.id, who, seen_digest=rec.args_digest, arguments=None, session=None)
    rc, out = await _verify_cli(capsys, no_ui_config)
    assert rc == 0 and "decision signatures valid: 1 decisions, 2 quorum steps" in out, out
    _rewrite_step_events(home / "gatekeeper.db", change)
    rc, out = await _verify_cli(capsys, no_ui_config)
    assert rc == 1 and "audit chain intact" in out and f"approval_given of call {rec.id[:12]}" in out, out
