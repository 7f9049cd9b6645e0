"""Registering a passkey on the approval service needs a fresh proof of the account (mcp_gatekeeper/webpasskeys.py):
the password again, under the login's throttle, or an assertion by one of the account's passkeys. A stolen session
cookie alone must not add the thief's passkey (which would then approve ``confirm = "passkey"`` calls).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from softauthn import SoftAuthenticator, as_response, unb64

from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.config import validate_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.passkeys import RelyingParty, challenge_for
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.web import build_app
from mcp_gatekeeper.webauth import load_or_create_token
from mcp_gatekeeper.webhttp import TeamSite
from mcp_gatekeeper.webteam import MAX_FAILED_PER_ACCOUNT

from .conftest import PASSWORDS, TEAM_CONFIG, Notified, Team, add_accounts

pytestmark = pytest.mark.anyio

PORT = 8767
SITE = f"http://localhost:{PORT}"
RP = RelyingParty.from_url(SITE)


@pytest.fixture
async def team(tmp_path: Path) -> AsyncIterator[Team]:
    """The approval service with ``[ui] public_url`` (passkeys on), reached at ``localhost``."""
    config = copy.deepcopy(TEAM_CONFIG)
    config["ui"] = {**config.get("ui", {}), "public_url": SITE}
    clock = FakeClock()
    policy = Policy(validate_config(config))
    home = tmp_path / "home"
    async with Store.open(home / "gatekeeper.db", clock) as store:
        await store.register_instance("test")
        await add_accounts(store)
        notified = Notified()
        gate = Gate(store, policy, clock, notifier=notified)
        app = build_app(
            store=store, gate=gate, policy=policy, token=load_or_create_token(home), port=PORT, clock=clock,
            team=TeamSite(),
        )  # fmt: skip
        async with (
            gate.running(),
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=SITE) as client,
            anyio.create_task_group() as tg,
        ):
            yield Team(store, gate, clock, client, tg, notified)
            tg.cancel_scope.cancel()


async def _login(team: Team, name: str, password: str | None = None) -> httpx2.Response:
    return await team.client.post(
        "/login", data={"username": name, "password": password or PASSWORDS[name]},
        headers={"Origin": SITE, "Sec-Fetch-Site": "same-origin"},
    )  # fmt: skip


async def _session(team: Team, name: str) -> dict[str, str]:
    r = await _login(team, name)
    assert r.status_code == 303, r.text
    return {"Cookie": r.headers["set-cookie"].split(";")[0], "X-Gatekeeper-Key": r.headers["location"].partition("#key=")[2],
            "Origin": SITE, "Sec-Fetch-Site": "same-origin"}  # fmt: skip


async def _start(team: Team, headers: dict[str, str], **proof: Any) -> httpx2.Response:
    return await team.client.post("/api/passkeys/register/options", json=proof, headers=headers)


async def _finish(
    team: Team, headers: dict[str, str], state: str, auth: SoftAuthenticator, challenge: str
) -> httpx2.Response:
    body = {"state": state, "credential": auth.registration(challenge)}
    return await team.client.post("/api/passkeys/register", json=body, headers=headers)


async def _register(team: Team, headers: dict[str, str], auth: SoftAuthenticator, **proof: Any) -> httpx2.Response:
    start = await _start(team, headers, **proof)
    assert start.status_code == 200, start.text
    return await _finish(team, headers, start.json()["state"], auth, start.json()["options"]["challenge"])


async def _passkey_proof(team: Team, headers: dict[str, str], auth: SoftAuthenticator) -> dict[str, Any]:
    got = await team.client.post("/api/passkeys/proof-options", json={}, headers=headers)
    assert got.status_code == 200, got.text
    assertion = auth.assertion(unb64(got.json()["options"]["challenge"]))
    return {"passkey": as_response(assertion), "proof_state": got.json()["proof_state"]}


async def _refusals(team: Team) -> list[tuple[str, object]]:
    events = await team.store.audit_events()
    return [(e.actor or "", e.detail["why"]) for e in events if e.event == "passkey_registration_refused"]


async def _mine(team: Team, name: str) -> list[str]:
    return [c.credential_id for c in await team.store.passkeys.of_reviewer(name)]


async def test_a_session_without_a_fresh_proof_registers_no_passkey(team: Team) -> None:
    """The thief holds alice's cookie and page key, not her password: nothing they send registers a passkey."""
    alice = await _session(team, "alice")
    thief = SoftAuthenticator(RP, reviewer="alice")
    for proof in ({}, {"password": ""}, {"password": None}, {"passkey": None}):
        r = await _start(team, alice, **proof)
        assert (r.status_code, r.json()["error"]) == (403, "proof_required"), (proof, r.text)
        assert "password" in r.json()["message"]
    # a registration state made up, or one made by the local page's recipe, does not get past the finish either
    r = await _finish(team, alice, "AAAA:9999999999.0:" + "0" * 64, thief, "AAAA")
    assert (r.status_code, r.json()["error"]) == (403, "proof_required"), r.text
    # alice has no passkey to prove herself with, and a made-up passkey proof is refused
    r = await team.client.post("/api/passkeys/proof-options", json={}, headers=alice)
    assert (r.status_code, r.json()["error"]) == (409, "no_passkey")
    r = await _start(team, alice, passkey=as_response(thief.assertion(b"x" * 32)), proof_state="AAAA:1.0:00")
    assert (r.status_code, r.json()["error"]) == (403, "proof_refused"), r.text
    assert await _mine(team, "alice") == []
    assert await _refusals(team) == [("alice", "proof_required")] * 5 + [("alice", "proof_refused")]
    # with her password she registers
    r = await _register(team, alice, SoftAuthenticator(RP, reviewer="alice"), password=PASSWORDS["alice"])
    assert r.status_code == 200 and r.json()["reviewer"] == "alice", r.text
    assert len(await _mine(team, "alice")) == 1


async def test_a_wrong_password_is_refused_audited_and_counts_toward_the_login_lockout(team: Team) -> None:
    alice = await _session(team, "alice")
    for _ in range(MAX_FAILED_PER_ACCOUNT):
        r = await _start(team, alice, password="guess-guess-guess")
        assert (r.status_code, r.json()["error"]) == (403, "wrong_password"), r.text
    failed = [e for e in await team.store.audit_events() if e.event == "login_failed"]
    assert [(e.actor, e.detail["why"]) for e in failed] == [("alice", "wrong password to register a passkey")] * 5
    assert await _refusals(team) == [("alice", "wrong_password")] * MAX_FAILED_PER_ACCOUNT
    # the account is now locked: at login, and for registering, even with the right password
    assert (await _login(team, "alice")).status_code == 429
    r = await _start(team, alice, password=PASSWORDS["alice"])
    assert (r.status_code, r.json()["error"]) == (429, "rate_limited"), r.text
    assert await _mine(team, "alice") == []
    # failed logins count toward a registration's lockout the same way (bob: his own count)
    bob = await _session(team, "bob")
    for _ in range(MAX_FAILED_PER_ACCOUNT):
        assert (await _login(team, "bob", "not-bobs-password")).status_code == 401
    r = await _start(team, bob, password=PASSWORDS["bob"])
    assert (r.status_code, r.json()["error"]) == (429, "rate_limited"), r.text
    # the window moves on
    team.clock.advance(901)
    assert (
        await _register(team, alice, SoftAuthenticator(RP, reviewer="alice"), password=PASSWORDS["alice"])
    ).status_code == 200


async def test_a_proof_of_one_account_registers_nothing_on_another(team: Team) -> None:
    alice, bob = await _session(team, "alice"), await _session(team, "bob")
    key = SoftAuthenticator(RP, reviewer="alice")
    assert (await _register(team, alice, key, password=PASSWORDS["alice"])).status_code == 200
    thief = SoftAuthenticator(RP, reviewer="bob")
    # alice's password in bob's session is a wrong password for bob
    r = await _start(team, bob, password=PASSWORDS["alice"])
    assert (r.status_code, r.json()["error"]) == (403, "wrong_password"), r.text
    # a registration state alice proved for, finished in bob's session
    start = (await _start(team, alice, password=PASSWORDS["alice"])).json()
    r = await _finish(team, bob, start["state"], thief, start["options"]["challenge"])
    assert (r.status_code, r.json()["error"]) == (403, "proof_required"), r.text
    # alice's passkey proving bob, over a challenge sealed for bob's session, and over one sealed for alice's
    got = (await team.client.post("/api/passkeys/proof-options", json={}, headers=alice)).json()
    r = await _start(team, bob, passkey=as_response(key.assertion(unb64(got["options"]["challenge"]))),
                     proof_state=got["proof_state"])  # fmt: skip
    assert (r.status_code, r.json()["error"]) == (403, "proof_refused"), r.text
    r = await team.client.post("/api/passkeys/proof-options", json={}, headers=bob)
    assert (r.status_code, r.json()["error"]) == (409, "no_passkey")
    assert await _mine(team, "bob") == []
    assert ("bob", "wrong_password") in await _refusals(team)


async def test_a_proof_opens_one_registration_once(team: Team) -> None:
    alice = await _session(team, "alice")
    first, second, thief = (SoftAuthenticator(RP, reviewer="alice") for _ in range(3))
    start = (await _start(team, alice, password=PASSWORDS["alice"])).json()
    early = (await _start(team, alice, password=PASSWORDS["alice"])).json()  # issued before the registration
    r = await _finish(team, alice, start["state"], first, start["options"]["challenge"])
    assert r.status_code == 200, r.text
    # the spent state, and the one issued before it, register nothing more
    for state in (start, early):
        r = await _finish(team, alice, state["state"], thief, state["options"]["challenge"])
        assert (r.status_code, r.json()["error"]) == (403, "proof_required"), r.text
    # a state from another of alice's sessions (the thief's cookie) is not this session's
    other = await _session(team, "alice")
    fresh = (await _start(team, alice, password=PASSWORDS["alice"])).json()
    r = await _finish(team, other, fresh["state"], thief, fresh["options"]["challenge"])
    assert (r.status_code, r.json()["error"]) == (403, "proof_required"), r.text
    # a state outlives its five minutes for nothing
    team.clock.advance(301)
    r = await _finish(team, alice, fresh["state"], thief, fresh["options"]["challenge"])
    assert (r.status_code, r.json()["error"]) == (403, "proof_required"), r.text
    assert len(await _mine(team, "alice")) == 1

    # a passkey proof is spent by its sign count: the same assertion again is refused
    proof = await _passkey_proof(team, alice, first)
    assert (await _register(team, alice, second, **proof)).status_code == 200
    r = await _start(team, alice, **proof)
    assert (r.status_code, r.json()["error"]) == (403, "proof_refused"), r.text
    # an assertion over anything but the sealed challenge (an approval's, say) proves nothing
    got = (await team.client.post("/api/passkeys/proof-options", json={}, headers=alice)).json()
    approval = first.assertion(challenge_for("0123456789abcdef0123456789", "d" * 64))
    r = await _start(team, alice, passkey=as_response(approval), proof_state=got["proof_state"])
    assert (r.status_code, r.json()["error"]) == (403, "proof_refused"), r.text
    # nor does a proof_state from another session, nor an expired one
    mine_elsewhere = await _passkey_proof(team, other, first)
    r = await _start(team, alice, **mine_elsewhere)
    assert (r.status_code, r.json()["error"]) == (403, "proof_refused"), r.text
    late = await _passkey_proof(team, alice, second)
    team.clock.advance(301)
    r = await _start(team, alice, **late)
    assert (r.status_code, r.json()["error"]) == (403, "proof_refused"), r.text
    assert len(await _mine(team, "alice")) == 2
