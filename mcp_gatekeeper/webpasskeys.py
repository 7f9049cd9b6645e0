"""The page's passkey API: register a passkey for the signed-in reviewer, and the options of approving a call.

Registration is stateless across processes: the random challenge goes to the browser with an expiry and a MAC
under the page's token (:meth:`WebState.hash_secret`), and comes back with the authenticator's response.
Approving a ``confirm = "passkey"`` call needs ``navigator.credentials.get`` over :func:`challenge_for` the call
and the arguments to run (``POST /api/calls/{id}/passkey-options`` gives the options); the assertion goes into
the approve request's ``passkey`` field and is checked by the gate, here and again by the holder.
"""

from __future__ import annotations

import base64
import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_gatekeeper.models import digest
from mcp_gatekeeper.passkeys import RelyingParty, assertion_options, registration_options, verify_registration
from mcp_gatekeeper.webhttp import Problem, json_body, principal, web_state

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


def _mac(request: Request, reviewer: str, challenge: str, expires: float) -> str:
    return web_state(request).hash_secret(f"passkey-registration|{reviewer}|{challenge}|{expires!r}")


async def list_passkeys(request: Request) -> Response:
    reviewer = principal(request).reviewer
    mine = await web_state(request).store.passkeys.of_reviewer(reviewer)
    return JSONResponse({"reviewer": reviewer, "passkeys": [{"credential_id": c.credential_id} for c in mine]})


async def registration_start(request: Request) -> Response:
    st, rp, reviewer = web_state(request), _rp(request), _session_reviewer(request)
    existing = [c.credential_id for c in await st.store.passkeys.of_reviewer(reviewer)]
    options, challenge = registration_options(rp, reviewer, existing)
    text = base64.urlsafe_b64encode(challenge).decode()
    expires = st.clock.now() + REGISTRATION_TTL
    return JSONResponse({"options": options, "state": f"{text}:{expires!r}:{_mac(request, reviewer, text, expires)}"})


async def registration_finish(request: Request) -> Response:
    st, rp, reviewer = web_state(request), _rp(request), _session_reviewer(request)
    body = await json_body(request, 64 * 1024)
    try:
        text, expires_text, mac = str(body.get("state", "")).split(":", 2)
        expires = float(expires_text)
        challenge = base64.urlsafe_b64decode(text)
    except ValueError as e:
        raise Problem(422, "bad_state", "the registration state is not one this page gave") from e
    if not hmac.compare_digest(mac, _mac(request, reviewer, text, expires)) or st.clock.now() > expires:
        raise Problem(422, "bad_state", "the registration state is not this reviewer's, or it expired; start again")
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
        Route("/api/passkeys/register/options", registration_start, methods=["POST"]),
        Route("/api/passkeys/register", registration_finish, methods=["POST"]),
        Route("/api/calls/{call_id}/passkey-options", approval_options, methods=["POST"]),
    ]
