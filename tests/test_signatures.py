"""Signed decisions (mcp_gatekeeper/signatures.py): what the signature covers, the key files, and a database
writer's attempts to make an approval that runs (another key, a replayed signature, arguments or decider changed
after signing, the signature stripped) -- each with the audit chain rewritten so only the signature can tell.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mcp_gatekeeper import signatures
from mcp_gatekeeper.cli import main
from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.errors import ConfigError, StoreError
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
    digest,
)
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.serve import open_runtime
from mcp_gatekeeper.signatures import DecisionFacts, DecisionKeys, Signer, SigningKeyError, SigningKeyUnavailable
from mcp_gatekeeper.store import Store

pytestmark = pytest.mark.anyio

POLICY = """
[[rules]]
name = "refunds"
tool = "issue_refund"
gate = "hard"
"""
ARGS = {"order_id": "A-17", "amount": 40, "currency": "EUR"}


def new_call(arguments: dict[str, Any] | None = None) -> NewCall:
    return NewCall(upstream="shop", tool="issue_refund", arguments=dict(ARGS if arguments is None else arguments),
                   gate="hard", risk="high", rule="refunds")  # fmt: skip


def approve(**kw: Any) -> Decision:
    return Decision(approve=True, decided_by=kw.pop("decided_by", "ann"), channel=kw.pop("channel", "web"), **kw)


FACTS = DecisionFacts(
    call_id="0123456789abcdef0123456789", decision="approved", args_digest="d" * 64, decided_by="web:ann",
    channel="web", decided_at=1_700_000_000.25, step=None,
)  # fmt: skip


def _trusted(*keys: Ed25519PrivateKey) -> dict[str, Any]:
    return {signatures.key_id(k.public_key()): k.public_key() for k in keys}


# ---------------------------------------------------------------------------------------------- the statement


def test_a_signature_verifies_only_for_exactly_what_was_decided() -> None:
    key = Ed25519PrivateKey.generate()
    seal = Signer(key).seal(FACTS)
    assert signatures.check(FACTS, seal, _trusted(key)) is None
    for change in (
        {"call_id": "f" * 26},
        {"decision": "rejected"},
        {"args_digest": "e" * 64},
        {"decided_by": "web:mallory"},
        {"channel": "cli"},
        {"decided_at": FACTS.decided_at + 0.001},
        {"step": 2},
    ):
        assert signatures.check(replace(FACTS, **change), seal, _trusted(key)) is not None, change


def test_another_key_a_stripped_or_mangled_signature_never_verifies() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    seal = Signer(other).seal(FACTS)
    assert "not trusted" in (signatures.check(FACTS, seal, _trusted(key)) or "")
    # the attacker relabels its signature with the trusted key's id: the bytes still do not verify
    relabelled = {**seal, "key": signatures.key_id(key.public_key())}
    assert "does not match" in (signatures.check(FACTS, relabelled, _trusted(key)) or "")
    assert "not signed" in (signatures.check(FACTS, None, _trusted(key)) or "")
    good = Signer(key).seal(FACTS)
    for bad in ({**good, "sig": "!!"}, {**good, "sig": good["sig"][:-4]}, {**good, "alg": "hmac"}, {**good, "v": 2}):
        assert signatures.check(FACTS, bad, _trusted(key)) is not None, bad
    # a signature over the same JSON without the domain prefix is not a decision signature
    bare = key.sign(signatures.statement(FACTS)[len(signatures.DOMAIN) :])
    assert signatures.check(FACTS, {**good, "sig": signatures._b64(bare)}, _trusted(key)) is not None


def test_public_keys_round_trip_and_bad_ones_are_named() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    text = signatures.public_text(key)
    assert text.startswith("ed25519:") and len(text) == len("ed25519:") + 43
    assert signatures.key_id(signatures.parse_public(text)) == signatures.key_id(key)
    for bad in ("ssh-ed25519 AAAA", "ed25519:" + "A" * 40, "ed25519:***"):
        with pytest.raises(ValueError, match="decision key"):
            signatures.parse_public(bad)
    with pytest.raises(ConfigError) as e:
        parse_config('[team]\ndecision_keys = ["ed25519:short"]\nsiging_key = "x"\n')
    assert "team.decision_keys[0]" in str(e.value) and "team.siging_key" in str(e.value)


# ---------------------------------------------------------------------------------------------- the key file


def test_the_key_is_made_once_private_and_shared_by_processes_starting_together(tmp_path: Path) -> None:
    home = tmp_path / "home"
    made: list[bytes] = []

    def make() -> None:
        made.append(
            signatures.public_text(DecisionKeys.for_home(home).signer().public).encode()
        )  # each its own DecisionKeys, as separate processes

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 1  # one key, whoever won the race
    path = home / signatures.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in home.iterdir()] == [signatures.KEY_FILE]  # no temp file left behind


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_key_file_others_can_read_signs_nothing_and_verifies_nothing(tmp_path: Path) -> None:
    keys = DecisionKeys.for_home(tmp_path)
    seal = keys.signer().seal(FACTS)
    (tmp_path / signatures.KEY_FILE).chmod(0o644)
    fresh = DecisionKeys.for_home(tmp_path)  # the next process to load it
    with pytest.raises(SigningKeyError, match="chmod 600"):
        fresh.signer()
    assert "other users" in (fresh.check(FACTS, seal) or "")  # fails closed: the approval does not run
    configured = DecisionKeys.for_home(tmp_path, signing_key=str(tmp_path / "missing.pem"))
    with pytest.raises(SigningKeyError, match="cannot read"):
        configured.signer()  # a configured path is never created silently
    assert not (tmp_path / "missing.pem").exists()


async def test_a_gatekeeper_makes_its_key_at_start_and_only_in_local_mode(tmp_path: Path) -> None:
    """The key is made when a gatekeeper starts, so the first decision never has to write a file (it may come when
    the disk is full); a one-shot command does not make it, nor a team-mode holder (it trusts the service's keys)."""
    with anyio.fail_after(10):
        async with open_runtime(parse_config(""), home=tmp_path / "once", register=False):
            assert not (tmp_path / "once" / signatures.KEY_FILE).exists()
        async with open_runtime(parse_config(""), home=tmp_path / "local"):
            path = tmp_path / "local" / signatures.KEY_FILE
            assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
        service = signatures.public_text(Ed25519PrivateKey.generate().public_key())
        team = parse_config(f'[team]\ndecision_keys = ["{service}"]\n')
        async with open_runtime(team, home=tmp_path / "team"):
            assert not (tmp_path / "team" / signatures.KEY_FILE).exists()


async def test_a_key_that_cannot_be_made_decides_nothing_and_is_a_store_fault(tmp_path: Path) -> None:
    """The home cannot be written (here its place is taken by a file; disk full: tests/reliability/
    test_storage_faults.py): a clear error that fails closed like an unwritable store, never a crash."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("x")
    keys = DecisionKeys.for_home(blocked)
    with pytest.raises(SigningKeyUnavailable, match="cannot create the decision signing key") as e:
        keys.prepare()
    assert isinstance(e.value, StoreError) and isinstance(e.value, SigningKeyError)  # CLI exit 3, page 503
    home = tmp_path / "home"
    home.mkdir()
    async with signing_gate(home, keys) as gate:
        rec = await gate.store.insert_call(new_call(), state=State.PENDING, deadline_at=gate.clock.now() + 600)
        with pytest.raises(SigningKeyUnavailable):
            await gate.decide(rec.id, approve(args_digest=rec.args_digest))
        assert (await gate.store.get(rec.id)).state == State.PENDING  # nothing was decided
    assert blocked.read_text() == "x"


# ---------------------------------------------------------------------------------------------- the database writer


@asynccontextmanager
async def signing_gate(home: Path, keys: DecisionKeys | None = None) -> AsyncIterator[Gate]:
    clock = FakeClock(1_700_000_000.0)
    async with Store.open(home / "gatekeeper.db", clock) as store:
        gate = Gate(
            store, Policy(parse_config(POLICY)), clock, sweep_interval=None, keys=keys or DecisionKeys.for_home(home)
        )
        async with gate.running():
            yield gate


async def _approved(gate: Gate, arguments: dict[str, Any] | None = None, **kw: Any) -> CallRecord:
    rec = await gate.store.insert_call(new_call(), state=State.PENDING, deadline_at=gate.clock.now() + 600)
    return await gate.decide(rec.id, approve(args_digest=rec.args_digest, arguments=arguments, **kw))


def _rewrite(db: Path, sql: str, params: tuple[Any, ...], *, event: Callable[[dict[str, Any]], None]) -> None:
    """What a writer of the database file can do: change a row, change the matching audit event, and recompute
    the whole (unkeyed) hash chain so that it verifies again."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(sql, params)
        prev = GENESIS_HASH
        for r in conn.execute("SELECT * FROM audit ORDER BY seq").fetchall():
            e = dict(r)
            e["detail"] = json.loads(e["detail"])
            if e["event"] in ("approved", "rejected"):
                event(e)
            body = audit_body(
                at=e["at"], call_id=e["call_id"], event=e["event"], actor=e["actor"], channel=e["channel"],
                args_digest=e["args_digest"], detail=e["detail"],
            )  # fmt: skip
            h = audit_hash(prev, body)
            conn.execute(
                "UPDATE audit SET event = ?, actor = ?, channel = ?, detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (e["event"], e["actor"], e["channel"], canonical_json(e["detail"]), prev, h, e["seq"]),
            )
            prev = h
        conn.execute("COMMIT")
    finally:
        conn.close()


async def _verify_cli(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[int, str]:
    """``mcp-gatekeeper audit --verify`` (its own event loop, so in a thread)."""
    capsys.readouterr()
    rc = await anyio.to_thread.run_sync(main, ["audit", "--verify", "--config", str(config)])
    return rc, capsys.readouterr().out


async def test_an_honest_signed_approval_runs_and_audit_verify_checks_it(
    home: Path, no_ui_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with signing_gate(home) as gate:
        rec = await _approved(gate, {**new_call().arguments, "amount": 5})
        assert await gate.verify_approval(rec.id) is None
        seal = await gate.store.calls.decision_signature(rec.id)
        assert seal["key"] == signatures.key_id(gate.keys.signer().public) if gate.keys else False
        (event,) = [e for e in await gate.store.audit_events(call_id=rec.id) if e.event == "approved"]
        assert event.detail["signature"] == seal
    rc, out = await _verify_cli(capsys, no_ui_config)
    assert rc == 0 and "decision signatures valid: 1 decisions" in out, out


@pytest.mark.parametrize(
    "attack",
    ["modified_arguments", "decided_by", "stripped", "replayed", "other_key", "approve_a_rejection"],
)
async def test_a_database_writer_cannot_make_an_approval_run(
    home: Path, no_ui_config: Path, attack: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = home / "gatekeeper.db"
    async with signing_gate(home) as gate:
        rec = await _approved(gate, {**new_call().arguments, "amount": 5})
        other = await _approved(gate)  # a second honest approval, whose signature the attacker can copy
        if attack == "modified_arguments":  # the reviewer approved 5; the attacker makes it 5000
            bigger = {**new_call().arguments, "amount": 5000}

            def ev(e: dict[str, Any]) -> None:
                if e["call_id"] == rec.id:
                    e["detail"]["modified_args_digest"] = digest(bigger)

            _rewrite(db, "UPDATE calls SET modified_arguments = ? WHERE id = ?", (canonical_json(bigger), rec.id),
                     event=ev)  # fmt: skip
        elif attack == "decided_by":  # pin the decision on someone else

            def ev(e: dict[str, Any]) -> None:
                if e["call_id"] == rec.id:
                    e["actor"] = "web:bob"

            _rewrite(db, "UPDATE calls SET decided_by = 'web:bob' WHERE id = ?", (rec.id,), event=ev)
        elif attack == "stripped":

            def ev(e: dict[str, Any]) -> None:
                if e["call_id"] == rec.id:
                    del e["detail"]["signature"]

            _rewrite(db, "UPDATE calls SET decision_sig = NULL WHERE id = ?", (rec.id,), event=ev)
        elif attack in ("replayed", "other_key"):
            # a pending call approved by copying another call's signature, or signed with the attacker's own key
            target = await gate.store.insert_call(
                new_call({**new_call().arguments, "amount": 9999}), state=State.PENDING, deadline_at=None
            )
            donor = await gate.store.get(other.id)
            if attack == "replayed":
                seal = await gate.store.calls.decision_signature(other.id)
            else:
                seal = Signer(Ed25519PrivateKey.generate()).seal(
                    DecisionFacts(target.id, "approved", target.args_digest, "web:ann", "web", donor.decided_at or 0)
                )
            _rewrite(
                db,
                "UPDATE calls SET state = 'approved', decided_by = 'web:ann', channel = 'web', decided_at = ?,"
                " decision_sig = ? WHERE id = ?",
                (donor.decided_at, canonical_json(seal), target.id),
                event=lambda e: None,
            )
            _append_approval(db, target.id, target.args_digest, seal)
            rec = target
        else:  # a rejection turned into an approval: its signature says "rejected"
            rej = await gate.store.insert_call(new_call(), state=State.PENDING, deadline_at=None)
            await gate.decide(rej.id, replace(approve(args_digest=rej.args_digest), approve=False))

            def ev(e: dict[str, Any]) -> None:
                if e["call_id"] == rej.id:
                    e["event"] = "approved"

            _rewrite(db, "UPDATE calls SET state = 'approved' WHERE id = ?", (rej.id,), event=ev)
            rec = rej
        ok, _, chain = await gate.store.verify_audit()
        assert ok, chain  # the chain was rewritten to verify: only the signature can tell
        why = await gate.verify_approval(rec.id)
    assert why is not None and ("signature" in why or "signed" in why), why
    rc, out = await _verify_cli(capsys, no_ui_config)
    assert rc == 1 and "audit chain intact" in out and f"call {rec.id[:12]}" in out, out


def _append_approval(db: Path, call_id: str, args_digest: str, seal: dict[str, Any]) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        (prev,) = conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        at = 1_700_000_001.0
        detail = {"signature": seal}
        body = audit_body(at=at, call_id=call_id, event="approved", actor="web:ann", channel="web",
                          args_digest=args_digest, detail=detail)  # fmt: skip
        conn.execute(
            "INSERT INTO audit (at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)"
            " VALUES (?, ?, 'approved', 'web:ann', 'web', ?, ?, ?, ?)",
            (at, call_id, args_digest, canonical_json(detail), prev, audit_hash(prev, body)),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_team_mode_trusts_only_the_configured_keys(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent's machine decides with its own key: not trusted, so nothing it approves runs; the service's key is."""
    service = DecisionKeys.for_home(tmp_path / "service")
    service_public = signatures.public_text(service.signer().public)
    agent_side = DecisionKeys.for_home(home, decision_keys=[service_public])
    async with signing_gate(home, agent_side) as gate:
        mine = await _approved(gate)  # signed with the home's key, which the holder does not trust
        assert "not trusted" in (await gate.verify_approval(mine.id) or "")
        theirs = await gate.store.insert_call(new_call(), state=State.PENDING, deadline_at=None)
        service_gate = Gate(gate.store, gate.policy, gate.clock, sweep_interval=None, keys=service)
        await service_gate.decide(theirs.id, approve(args_digest=theirs.args_digest))
        assert await gate.verify_approval(theirs.id) is None
    cfg = tmp_path / "team.toml"
    cfg.write_text(f'[ui]\nautostart = false\n[team]\ndecision_keys = ["{service_public}"]\n')
    rc, out = await _verify_cli(capsys, cfg)
    assert rc == 1 and "not trusted" in out and f"call {mine.id[:12]}" in out
    assert f"call {theirs.id[:12]}" not in out
    # rotation: the old key moves to retired_keys, which audit --verify accepts and the holder never does
    new = DecisionKeys.for_home(tmp_path / "service2")
    new_public = signatures.public_text(new.signer().public)
    cfg.write_text(
        f'[ui]\nautostart = false\n[team]\ndecision_keys = ["{new_public}"]\nretired_keys = ["{service_public}"]\n'
    )
    rc, out = await _verify_cli(capsys, cfg)
    assert f"call {theirs.id[:12]}" not in out and f"call {mine.id[:12]}" in out
    rotated = DecisionKeys.for_home(home, decision_keys=[new_public], retired_keys=[service_public])
    async with signing_gate(home, rotated) as gate:
        assert "not trusted" in (await gate.verify_approval(theirs.id) or "")
