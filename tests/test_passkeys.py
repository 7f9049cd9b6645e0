"""Passkeys (mcp_gatekeeper/passkeys.py) with a software authenticator: what an assertion must match (the call,
the arguments to run, the origin, the RP id, user verification, the reviewer's own credential), sign counts, and
the gate's rule: a ``confirm = "passkey"`` call is approved only with one, and the holder checks it again.
The same in real Chromium: tests/reliability/test_passkeys_browser.py.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from softauthn import SoftAuthenticator as Soft
from softauthn import as_response, b64

from mcp_gatekeeper.cli import main
from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import CallRecord, Decision, NewCall, State, digest
from mcp_gatekeeper.passkeys import PasskeyError, RelyingParty, challenge_for, verify_assertion
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.signatures import DecisionKeys
from mcp_gatekeeper.store import Store

pytestmark = pytest.mark.anyio

RP = RelyingParty.from_url("https://gk.example.com")
POLICY = """
[ui]
autostart = false
public_url = "https://gk.example.com"
[[rules]]
name = "refunds"
tool = "issue_refund"
gate = "hard"
confirm = "passkey"
"""


def SoftAuthenticator(reviewer: str = "web:ann") -> Soft:
    return Soft(RP, reviewer)


CALL, DIGEST = "0123456789abcdef0123456789", "d" * 64


def _check(auth: SoftAuthenticator, assertion: dict[str, str], *, stored: int = 0, stored_count: bool = False) -> int:
    return verify_assertion(
        RP, assertion, auth.credential(stored), call_id=CALL, args_digest=DIGEST, stored_count=stored_count
    )


def test_an_assertion_verifies_only_for_this_call_these_arguments_and_this_page() -> None:
    auth = SoftAuthenticator()
    assert _check(auth, auth.assertion(challenge_for(CALL, DIGEST))) == 1
    for bad in (
        auth.assertion(challenge_for("f" * 26, DIGEST)),  # made for another call: replay
        auth.assertion(challenge_for(CALL, "e" * 64)),  # other arguments
        auth.assertion(challenge_for(CALL, DIGEST, "rejected")),  # for a rejection
        auth.assertion(secrets.token_bytes(32)),  # a random challenge (a login, say)
        auth.assertion(challenge_for(CALL, DIGEST), origin="https://evil.example"),
        auth.assertion(challenge_for(CALL, DIGEST), rp_id="evil.example"),
        auth.assertion(challenge_for(CALL, DIGEST), uv=False),  # nobody verified at the authenticator
    ):
        with pytest.raises(PasskeyError):
            _check(auth, bad)
    other = SoftAuthenticator()  # signed by another authenticator under this credential's id
    forged = {**other.assertion(challenge_for(CALL, DIGEST)), "credential_id": b64(auth.credential_id)}
    with pytest.raises(PasskeyError):
        _check(auth, forged)
    with pytest.raises(PasskeyError, match="no passkey assertion"):
        _check(auth, {"credential_id": b64(auth.credential_id)})


def test_sign_counts_never_go_backwards() -> None:
    auth = SoftAuthenticator()
    with pytest.raises(PasskeyError, match="backwards"):
        _check(auth, auth.assertion(challenge_for(CALL, DIGEST), count=3), stored=5)  # a cloned authenticator
    with pytest.raises(PasskeyError, match="backwards"):
        _check(auth, auth.assertion(challenge_for(CALL, DIGEST), count=5), stored=5)
    assert _check(auth, auth.assertion(challenge_for(CALL, DIGEST), count=0), stored=0) == 0  # no counter at all
    # the holder's re-check: a count above the recorded one was never accepted by the page
    with pytest.raises(PasskeyError, match="never recorded"):
        _check(auth, auth.assertion(challenge_for(CALL, DIGEST), count=9), stored=5, stored_count=True)
    assert _check(auth, auth.assertion(challenge_for(CALL, DIGEST), count=4), stored=5, stored_count=True) == 4


def test_a_passkey_rule_needs_a_name_and_a_public_url() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config('[[rules]]\ntool = "x"\ngate = "hard"\nconfirm = "passkey"\n')
    assert "rules[0].confirm" in str(e.value)
    passkey_rule = '[[rules]]\nname = "a"\ntool = "x"\ngate = "hard"\nconfirm = "passkey"\n'
    for url in ("http://gk.example.com", "ftp://x", "https://gk.example.com/path?q"):
        with pytest.raises(ConfigError, match=r"ui\.public_url"):
            parse_config(f'[ui]\npublic_url = "{url}"\n{passkey_rule}')
    parse_config(f'[ui]\npublic_url = "http://localhost:8765"\n{passkey_rule}')  # a page on this machine
    with pytest.raises(ConfigError, match="confirm"):
        parse_config('[[rules]]\nname = "a"\ntool = "x"\ngate = "hard"\nconfirm = "tty"\n')
    assert RelyingParty.from_url("http://localhost:8765") == RelyingParty("localhost", "http://localhost:8765")


@asynccontextmanager
async def passkey_gate(home: Path) -> AsyncIterator[Gate]:
    clock = FakeClock(1_700_000_000.0)
    async with Store.open(home / "gatekeeper.db", clock) as store:
        gate = Gate(store, Policy(parse_config(POLICY)), clock, sweep_interval=None, keys=DecisionKeys.for_home(home))
        async with gate.running():
            yield gate


async def _held(gate: Gate) -> CallRecord:
    return await gate.store.insert_call(new_call(), state=State.PENDING, deadline_at=gate.clock.now() + 600)


def _response(stored: dict[str, str]) -> dict[str, Any]:
    return as_response(stored)


def new_call() -> NewCall:
    return NewCall(upstream="shop", tool="issue_refund", arguments={"order_id": "A-17", "amount": 40}, gate="hard",
                   risk="high", rule="refunds")  # fmt: skip


def approve(**kw: Any) -> Decision:
    return Decision(approve=True, decided_by=kw.pop("decided_by", "ann"), channel=kw.pop("channel", "web"), **kw)


async def test_the_gate_approves_a_passkey_call_only_with_the_reviewers_own_passkey(home: Path) -> None:
    ann, bob = SoftAuthenticator("web:ann"), SoftAuthenticator("web:bob")
    async with passkey_gate(home) as gate:
        for a in (ann, bob):
            assert await gate.store.passkeys.add(a.credential(), channel="web")
        rec = await _held(gate)
        with pytest.raises(PasskeyError, match="needs the reviewer's passkey"):
            await gate.decide(rec.id, approve(args_digest=rec.args_digest, decided_by="web:ann"))
        with pytest.raises(PasskeyError, match="no registered passkey of web:ann"):  # bob's passkey, ann's name
            await gate.decide(rec.id, approve(args_digest=rec.args_digest, decided_by="web:ann",
                                              passkey=_response(bob.assertion(challenge_for(rec.id, rec.args_digest)))))  # fmt: skip
        edit = {**rec.arguments, "amount": 1}
        with pytest.raises(PasskeyError):  # an assertion over the held arguments does not approve an edit
            await gate.decide(rec.id, approve(args_digest=rec.args_digest, decided_by="web:ann", arguments=edit,
                                              passkey=_response(ann.assertion(challenge_for(rec.id, rec.args_digest)))))  # fmt: skip
        assert (await gate.store.get(rec.id)).state == State.PENDING
        done = await gate.decide(rec.id, approve(args_digest=rec.args_digest, decided_by="web:ann", arguments=edit,
                                                 passkey=_response(ann.assertion(challenge_for(rec.id, digest(edit))))))  # fmt: skip
        assert done.state == State.APPROVED and await gate.verify_approval(rec.id) is None
        assert (await gate.store.passkeys.get(b64(ann.credential_id)) or ann.credential()).sign_count == ann.count == 2
        # the same counter again (a replayed or cloned assertion) is refused, even for a fresh challenge
        rec2 = await _held(gate)
        with pytest.raises(PasskeyError, match="backwards"):
            await gate.decide(rec2.id, approve(args_digest=rec2.args_digest, decided_by="web:ann",
                                               passkey=_response(ann.assertion(challenge_for(rec2.id, rec2.args_digest), count=1))))  # fmt: skip


async def test_the_cli_cannot_approve_a_passkey_call(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(POLICY)
    async with passkey_gate(home) as gate:
        rec = await _held(gate)
    rc = await anyio.to_thread.run_sync(main, ["approve", rec.id, "--config", str(cfg)])
    assert rc != 0 and "passkey" in capsys.readouterr().err
    async with passkey_gate(home) as gate:
        assert (await gate.store.get(rec.id)).state == State.PENDING


def test_team_public_url_is_refused_naming_its_line_and_the_one_key_to_write_instead() -> None:
    """One concept, one key: the page's public address is ``[ui] public_url`` (the passkeys' relying party too).
    A config that still sets the former ``[team] public_url`` fails closed, even beside a valid ``[ui]`` one."""
    for text, line, value in (
        ('[ui]\nautostart = false\n\n[team]\npublic_url = "https://gk.example.com"\n', 5, '"https://gk.example.com"'),
        (
            '[ui]\npublic_url = "https://a.example"\n[team]\npublic_url = "https://b.example"\n',
            4,
            '"https://b.example"',
        ),
        ('[team]\n"public_url" = "http://localhost:8765"\n', 2, '"http://localhost:8765"'),
        ('team.public_url = "https://gk.example.com"\n', 1, '"https://gk.example.com"'),
    ):
        with pytest.raises(ConfigError) as e:
            parse_config(text)
        (problem,) = e.value.problems
        assert problem.startswith(f"line {line}: team.public_url: removed"), problem
        assert problem.endswith(f"write under [ui]: public_url = {value}"), problem
