"""The page's passkey API: register a passkey for the signed-in reviewer, and the options of approving a call.

Registration is stateless across processes: the random challenge goes to the browser with an expiry and a MAC
under the page's token (:meth:`WebState.hash_secret`), and comes back with the authenticator's response.

On the approval service (a reviewer account's session) a session alone registers nothing: a stolen cookie would
otherwise add the thief's passkey and approve ``confirm = "passkey"`` calls. ``register/options`` needs a fresh
proof of the account in its body: ``password`` (checked as at login, under the login's throttle: a wrong one is
counted toward the lockout and audited), or ``passkey`` with ``proof_state``, an assertion by one of the
account's passkeys over the random challenge ``POST /api/passkeys/proof-options`` sealed. Without one it is 403
``proof_required`` (audited). The registration state it then gives is sealed to the session, the account and
the account's passkeys at that moment: it registers one passkey, once (a registration changes the set, voiding
it and every other state issued before), within :data:`REGISTRATION_TTL`.
Approving a ``confirm = "passkey"`` call needs ``navigator.credentials.get`` over :func:`challenge_for` the call
and the arguments to run (``POST /api/calls/{id}/passkey-options`` gives the options); the assertion goes into
the approve request's ``passkey`` field and is checked by the gate, here and again by the holder.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_gatekeeper.models import digest
from mcp_gatekeeper.passkeys import (
    Credential,
    PasskeyError,
    RelyingParty,
    assertion_of,
    assertion_options,
    options_over,
    registration_options,
    verify_over,
    verify_registration,
)
from mcp_gatekeeper.webhttp import Problem, json_body, principal, web_state
from mcp_gatekeeper.webteam import check_password, client_address

REGISTRATION_TTL = 300.0
"""Seconds a registration's challenge stays good."""


def _rp(request: Request) -> RelyingParty:
    url = web_state(request).policy.config.passkey_url
    if url is None:
        raise Problem(
            409,
            "passkeys_off",
            "passkeys need [ui] public_url (the page's public URL) in the config",
        )
    return RelyingParty.from_url(url)


def _session_reviewer(request: Request) -> str:
    who = principal(request)
    if who.kind != "session":
        raise Problem(403, "session_required", "passkeys are registered and used from a signed-in browser")
    return who.reviewer


def _mac(request: Request, reviewer: str, challenge: str, expires: float, existing: list[Credential]) -> str:
    """The seal of a registration state: this reviewer, this session, and the passkeys they have now."""
    ids = hashlib.sha256("|".join(sorted(c.credential_id for c in existing)).encode()).hexdigest()
    session = principal(request).session or ""
    return web_state(request).hash_secret(f"passkey-registration|{reviewer}|{session}|{ids}|{challenge}|{expires!r}")


def _proof_mac(request: Request, reviewer: str, challenge: str, expires: float) -> str:
    session = principal(request).session or ""
    return web_state(request).hash_secret(f"passkey-proof|{reviewer}|{session}|{challenge}|{expires!r}")


async def _refuse(request: Request, reviewer: str, status: int, code: str, message: str) -> Problem:
    """A refused registration: audited, and the 403 (or 429) that says why."""
    await web_state(request).store.passkeys.note_refused(reviewer, channel="web", why=code, message=message)
    return Problem(status, code, message)


async def _prove_account(request: Request, rp: RelyingParty, account: str, body: dict[str, object]) -> None:
    """The fresh proof of ``account`` a registration needs on the approval service (raises the refusal)."""
    st = web_state(request)
    password, assertion = body.get("password"), body.get("passkey")
    if isinstance(password, str) and password:
        checked, _ = await check_password(
            st, account, password, address=client_address(request, st), why="wrong password to register a passkey"
        )  # fmt: skip
        if checked == "rate_limited":
            raise await _refuse(request, account, 429, "rate_limited",
                                "too many failed logins: wait, or ask an admin to reset the password")  # fmt: skip
        if checked is not None:
            raise await _refuse(request, account, 403, "wrong_password", "wrong password: a passkey was not registered")
        return
    if assertion is None:
        raise await _refuse(request, account, 403, "proof_required",
                            "registering a passkey needs your password (or one of your passkeys) again")  # fmt: skip
    try:
        text, expires_text, mac = str(body.get("proof_state", "")).split(":", 2)
        expires = float(expires_text)
        challenge = base64.urlsafe_b64decode(text)
    except ValueError:
        raise await _refuse(
            request, account, 403, "proof_refused", "the passkey proof's state is not one this page gave"
        ) from None
    if not hmac.compare_digest(mac, _proof_mac(request, account, text, expires)) or st.clock.now() > expires:
        raise await _refuse(request, account, 403, "proof_refused",
                            "the passkey proof is not this session's, or it expired; start again")  # fmt: skip
    try:
        stored = assertion_of(assertion)
        credential = await st.store.passkeys.get(stored["credential_id"])
        if credential is None or credential.reviewer != account:
            raise PasskeyError(f"that passkey is not one of {account}'s")
        count = verify_over(rp, stored, credential, challenge=challenge, stored_count=False)
        if not await st.store.passkeys.advance(credential.credential_id, seen=credential.sign_count, new=count):
            raise PasskeyError("the passkey's sign count moved meanwhile: start again")
    except PasskeyError as e:
        raise await _refuse(request, account, 403, "proof_refused", str(e)) from e


async def list_passkeys(request: Request) -> Response:
    reviewer = principal(request).reviewer
    mine = await web_state(request).store.passkeys.of_reviewer(reviewer)
    return JSONResponse({"reviewer": reviewer, "passkeys": [{"credential_id": c.credential_id} for c in mine]})


async def proof_options(request: Request) -> Response:
    """The ``navigator.credentials.get`` options of proving the account with one of its passkeys (a random
    challenge, sealed to this session), before registering another."""
    st, rp, reviewer = web_state(request), _rp(request), _session_reviewer(request)
    mine = [c.credential_id for c in await st.store.passkeys.of_reviewer(reviewer)]
    if not mine:
        raise Problem(409, "no_passkey", f"{reviewer} has no passkey: give your password instead")
    challenge = secrets.token_bytes(32)
    text = base64.urlsafe_b64encode(challenge).decode()
    expires = st.clock.now() + REGISTRATION_TTL
    return JSONResponse({
        "options": options_over(rp, challenge, mine),
        "proof_state": f"{text}:{expires!r}:{_proof_mac(request, reviewer, text, expires)}",
    })  # fmt: skip


async def registration_start(request: Request) -> Response:
    st, rp, reviewer = web_state(request), _rp(request), _session_reviewer(request)
    if principal(request).account is not None:  # the approval service: a session alone registers nothing
        await _prove_account(request, rp, reviewer, await json_body(request, 64 * 1024))
    existing = await st.store.passkeys.of_reviewer(reviewer)
    options, challenge = registration_options(rp, reviewer, [c.credential_id for c in existing])
    text = base64.urlsafe_b64encode(challenge).decode()
    expires = st.clock.now() + REGISTRATION_TTL
    mac = _mac(request, reviewer, text, expires, existing)
    return JSONResponse({"options": options, "state": f"{text}:{expires!r}:{mac}"})


async def registration_finish(request: Request) -> Response:
    st, rp, reviewer = web_state(request), _rp(request), _session_reviewer(request)
    body = await json_body(request, 64 * 1024)
    try:
        text, expires_text, mac = str(body.get("state", "")).split(":", 2)
        expires = float(expires_text)
        challenge = base64.urlsafe_b64decode(text)
    except ValueError as e:
        raise Problem(422, "bad_state", "the registration state is not one this page gave") from e
    existing = await st.store.passkeys.of_reviewer(reviewer)
    if not hmac.compare_digest(mac, _mac(request, reviewer, text, expires, existing)) or st.clock.now() > expires:
        why = "the registration state is not this session's, was spent, or expired; start again"
        if principal(request).account is not None:
            raise await _refuse(request, reviewer, 403, "proof_required", f"{why} (with your password)")
        raise Problem(422, "bad_state", why)
    credential = verify_registration(rp, reviewer, body.get("credential"), challenge)
    if not await st.store.passkeys.add(credential, channel=principal(request).channel):
        raise Problem(409, "already_registered", "this passkey is registered already")
    return JSONResponse({"credential_id": credential.credential_id, "reviewer": reviewer})


async def approval_options(request: Request) -> Response:
    """The options of approving a call with these arguments (the held ones, or the edit in ``arguments``)."""
    st, rp, reviewer = web_state(request), _rp(request), _session_reviewer(request)
    body = await json_body(request, st.body_cap)
    rec = await st.store.find(request.path_params["call_id"])
    arguments = body.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise Problem(422, "bad_request", "arguments must be a JSON object")
    # a quorum's step approves its round's proposal (the held arguments, or an earlier reviewer's edit), and an
    # edit starts the next round: the challenge names the round, so an assertion counts in its own round only
    tally = await st.store.approvals.tally(rec.id)
    to_run = tally.proposal_digest if arguments is None or digest(arguments) == rec.args_digest else digest(arguments)
    round_ = tally.next_round(to_run)
    mine = [c.credential_id for c in await st.store.passkeys.of_reviewer(reviewer)]
    if not mine:
        raise Problem(409, "no_passkey", f"{reviewer} has no passkey: register one (Sessions) first")
    return JSONResponse({"options": assertion_options(rp, rec.id, to_run, mine, round_=round_), "round": round_})


def routes() -> list[Route]:
    return [
        Route("/api/passkeys", list_passkeys, methods=["GET"]),
        Route("/api/passkeys/proof-options", proof_options, methods=["POST"]),
        Route("/api/passkeys/register/options", registration_start, methods=["POST"]),
        Route("/api/passkeys/register", registration_finish, methods=["POST"]),
        Route("/api/calls/{call_id}/passkey-options", approval_options, methods=["POST"]),
    ]
