"""The page's passkey API (mcp_gatekeeper/webpasskeys.py) through the ASGI app, with a software authenticator:
registering (sessions only, a sealed state that expires and cannot be edited, the page's origin), and approving a
``confirm = "passkey"`` refund with an assertion over it. The browser: tests/reliability/test_passkeys_browser.py.
"""

from __future__ import annotations

import copy
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest
from softauthn import SoftAuthenticator, unb64

from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.config import validate_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import Approved, State
from mcp_gatekeeper.passkeys import RelyingParty, challenge_for
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.signatures import DecisionKeys
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.web import build_app
from mcp_gatekeeper.webauth import load_or_create_token

from .conftest import CONFIG, PORT, Harness, RecordingNotifier, new_call, refund_args

pytestmark = pytest.mark.anyio

LOCAL = f"http://localhost:{PORT}"
RP = RelyingParty.from_url(LOCAL)


@pytest.fixture
async def ph(tmp_path: Any) -> AsyncIterator[Harness]:
    """The web harness with ``[ui] public_url`` set and the refunds rule asking for a passkey."""
    config = copy.deepcopy(CONFIG)
    config["ui"] = {**config.get("ui", {}), "public_url": LOCAL}
    config["rules"][0]["confirm"] = "passkey"
    clock = FakeClock()
    policy = Policy(validate_config(config))
    home = tmp_path / "home"
    token = load_or_create_token(home)
    notifier = RecordingNotifier()
    async with Store.open(home / "gatekeeper.db", clock) as store:
        await store.register_instance("test")
        gate = Gate(store, policy, clock, notifier=notifier, keys=DecisionKeys.for_home(home))
        app = build_app(store=store, gate=gate, policy=policy, token=token, port=PORT, clock=clock)
        async with (
            gate.running(),
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=LOCAL) as client,
            anyio.create_task_group() as tg,
        ):
            yield Harness(home, store, gate, policy, clock, app, token, notifier, tg, client)
            tg.cancel_scope.cancel()


async def _browser(h: Harness) -> dict[str, str]:
    return {**await h.login(), "Sec-Fetch-Site": "same-origin", "Origin": LOCAL}


async def _register(h: Harness, auth: SoftAuthenticator, headers: dict[str, str], **kw: Any) -> httpx2.Response:
    start = await h.client.post("/api/passkeys/register/options", json={}, headers=headers)
    assert start.status_code == 200, start.text
    body = start.json()
    assert body["options"]["rp"]["id"] == "localhost"
    credential = auth.registration(body["options"]["challenge"], **kw)
    return await h.client.post("/api/passkeys/register", json={"state": body["state"], "credential": credential},
                               headers=headers)  # fmt: skip


async def test_register_then_approve_a_passkey_call_with_an_assertion_over_it(ph: Harness) -> None:
    headers = await _browser(ph)
    auth = SoftAuthenticator(RP)
    r = await _register(ph, auth, headers)
    assert r.status_code == 200, r.text
    assert r.json()["reviewer"].startswith("web:")  # the session's reviewer, whatever the browser claims
    listed = (await ph.client.get("/api/passkeys", headers=headers)).json()
    assert listed["passkeys"] == [{"credential_id": r.json()["credential_id"]}]
    assert (await _register(ph, auth, headers)).status_code == 409  # the same authenticator again

    rec, holder = await ph.hold(new_call(ph.policy))
    card = (await ph.client.get(f"/api/calls/{rec.id}", headers=headers)).json()
    assert card["confirm"] == "passkey"
    no_key = await ph.client.post(
        f"/api/calls/{rec.id}/approve", json={"args_digest": rec.args_digest}, headers=headers
    )
    assert (no_key.status_code, no_key.json()["error"]) == (403, "passkey_refused")
    options = (await ph.client.post(f"/api/calls/{rec.id}/passkey-options", json={}, headers=headers)).json()["options"]
    challenge = unb64(options["challenge"])
    assert challenge == challenge_for(rec.id, rec.args_digest)  # derived from the call, never random
    assert [c["id"] for c in options["allowCredentials"]] == [r.json()["credential_id"]]
    stored = auth.assertion(challenge)
    response = {"id": stored["credential_id"], "response": {"authenticatorData": stored["authenticator_data"],
                "clientDataJSON": stored["client_data_json"], "signature": stored["signature"]}}  # fmt: skip
    ok = await ph.client.post(f"/api/calls/{rec.id}/approve", json={"args_digest": rec.args_digest,
                              "passkey": response}, headers=headers)  # fmt: skip
    assert ok.status_code == 200, ok.text
    assert isinstance(await holder.outcome(), Approved)
    assert await ph.gate.verify_approval(rec.id) is None


async def test_registration_is_for_browser_sessions_with_a_fresh_untouched_state(ph: Harness) -> None:
    r = await ph.client.post("/api/passkeys/register/options", json={}, headers=ph.bearer)
    assert (r.status_code, r.json()["error"]) == (403, "session_required")  # the token (a script) never registers
    headers = await _browser(ph)
    auth = SoftAuthenticator(RP)
    assert (await _register(ph, auth, headers, origin="https://evil.example")).status_code == 403
    start = (await ph.client.post("/api/passkeys/register/options", json={}, headers=headers)).json()
    text, expires, mac = start["state"].split(":", 2)
    credential = auth.registration(start["options"]["challenge"])
    for state in (f"{text}:{float(expires) + 3600!r}:{mac}", f"{text[::-1]}:{expires}:{mac}", "nonsense"):
        r = await ph.client.post("/api/passkeys/register", json={"state": state, "credential": credential},
                                 headers=headers)  # fmt: skip
        assert (r.status_code, r.json()["error"]) == (422, "bad_state"), state
    assert isinstance(ph.clock, FakeClock)
    ph.clock.advance(301)  # the state lived five minutes
    r = await ph.client.post("/api/passkeys/register", json={"state": start["state"], "credential": credential},
                             headers=headers)  # fmt: skip
    assert (r.status_code, r.json()["error"]) == (422, "bad_state")
    assert (await ph.client.get("/api/passkeys", headers=headers)).json()["passkeys"] == []


async def test_without_a_public_url_passkeys_are_off(harness: Harness) -> None:
    headers = await harness.browser_headers()
    r = await harness.client.post("/api/passkeys/register/options", json={}, headers=headers)
    assert (r.status_code, r.json()["error"]) == (409, "passkeys_off")


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
async def test_a_signing_key_others_can_read_decides_nothing_through_the_page(ph: Harness) -> None:
    DecisionKeys.for_home(ph.home).signer()  # made (0600) ...
    (ph.home / "decision-key").chmod(0o644)  # ... then opened to everyone
    rec, holder = await ph.hold(new_call(ph.policy, arguments=refund_args(order_id="1")))
    r = await ph.client.post(f"/api/calls/{rec.id}/reject", json={}, headers=ph.bearer)
    assert (r.status_code, r.json()["error"]) == (503, "signing_key_unusable")
    assert "chmod 600" in r.json()["message"]
    assert (await ph.store.get(rec.id)).state == State.PENDING and not holder.done.is_set()
