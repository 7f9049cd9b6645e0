"""Passkeys (WebAuthn): a reviewer's approval of a ``confirm = "passkey"`` call is an assertion over exactly it.

The WebAuthn challenge of an approval is not random: it is :func:`challenge_for` the call id, the digest of the
arguments that will run and the decision, so the authenticator's signature covers what was approved. The page
(the web layer) verifies the assertion when the reviewer approves; the gatekeeper that holds the call verifies it
again, against the reviewer's stored credential public key, before forwarding: an assertion for another call, or
arguments changed after it, never runs. Replay across calls is impossible (the challenge names the call); a
sign count that goes backwards (a cloned authenticator) is refused.

The relying party is the approval page's public URL (``[ui] public_url``): its host is the RP id, the URL
(scheme, host, port) the origin. WebAuthn needs a secure context: ``https://``, or ``http://localhost``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.utils import CryptographyDeprecationWarning

from mcp_gatekeeper.errors import GatekeeperError


def _lib() -> Any:
    """The ``webauthn`` package, imported on first use (it pulls in pyOpenSSL: not every gatekeeper start needs it)."""
    with warnings.catch_warnings():
        # pyOpenSSL names the deprecated DSA classes at import time; nothing here uses DSA
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        import webauthn
        import webauthn.helpers.exceptions
        import webauthn.helpers.structs
    return webauthn


CHALLENGE_DOMAIN = "mcp-gatekeeper decision v1"
ASSERTION_FIELDS = ("credential_id", "authenticator_data", "client_data_json", "signature")


class PasskeyError(GatekeeperError):
    """A passkey registration or assertion that must not be trusted; the message says why."""


@dataclass(frozen=True, slots=True)
class RelyingParty:
    """Who the passkeys are for: the approval page's public URL."""

    rp_id: str
    origin: str

    @classmethod
    def from_url(cls, url: str) -> RelyingParty:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"public_url {url!r}: expected https://host[:port] (or http://localhost:port)")
        if parts.scheme == "http" and parts.hostname != "localhost":
            raise ValueError(f"public_url {url!r}: passkeys need https:// (plain http only on localhost)")
        return cls(rp_id=parts.hostname, origin=f"{parts.scheme}://{parts.netloc}")


@dataclass(frozen=True, slots=True)
class Credential:
    """A reviewer's registered passkey."""

    credential_id: str
    """base64url, as the browser names it."""
    reviewer: str
    public_key: bytes
    """COSE-encoded, as the authenticator gave it at registration."""
    sign_count: int


def challenge_for(call_id: str, args_digest: str, decision: str = "approved", *, round_: int = 0) -> bytes:
    """The WebAuthn challenge of deciding ``call_id``: SHA-256 over what is decided (never random).

    ``round_``: a quorum step's round of approvals (each edit starts the next, see
    :mod:`mcp_gatekeeper.store.approvals`), so an assertion given in one round never counts in another; round 0
    (the call's own arguments, and every single decision) keeps the plain challenge."""
    text = f"{CHALLENGE_DOMAIN}|{call_id}|{args_digest}|{decision}" + (f"|round={round_}" if round_ else "")
    return hashlib.sha256(text.encode()).digest()


def registration_options(rp: RelyingParty, reviewer: str, existing: list[str]) -> tuple[dict[str, Any], bytes]:
    """The ``navigator.credentials.create`` options for ``reviewer`` and the random challenge to check later."""
    webauthn = _lib()
    structs = webauthn.helpers.structs
    challenge = secrets.token_bytes(32)
    options = webauthn.generate_registration_options(
        rp_id=rp.rp_id,
        rp_name="mcp-gatekeeper",
        user_name=reviewer,
        user_id=hashlib.sha256(reviewer.encode()).digest()[:16],
        challenge=challenge,
        authenticator_selection=structs.AuthenticatorSelectionCriteria(
            resident_key=structs.ResidentKeyRequirement.PREFERRED,
            user_verification=structs.UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[
            structs.PublicKeyCredentialDescriptor(id=webauthn.base64url_to_bytes(c)) for c in existing
        ],
    )
    return json.loads(webauthn.options_to_json(options)), challenge


def verify_registration(rp: RelyingParty, reviewer: str, response: Any, challenge: bytes) -> Credential:
    """The credential a ``navigator.credentials.create`` response registers (raises :class:`PasskeyError`)."""
    webauthn = _lib()
    try:
        verified = webauthn.verify_registration_response(
            credential=response, expected_challenge=challenge, expected_rp_id=rp.rp_id, expected_origin=rp.origin,
            require_user_verification=True,
        )  # fmt: skip
    except (webauthn.helpers.exceptions.InvalidRegistrationResponse, ValueError, KeyError, TypeError) as e:
        raise PasskeyError(f"the passkey registration was refused: {e}") from e
    return Credential(
        credential_id=webauthn.helpers.bytes_to_base64url(verified.credential_id),
        reviewer=reviewer,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
    )


def assertion_options(
    rp: RelyingParty, call_id: str, args_digest: str, credentials: list[str], *, round_: int = 0
) -> dict[str, Any]:
    """The ``navigator.credentials.get`` options of approving ``call_id`` with these arguments (in ``round_``)."""
    return options_over(rp, challenge_for(call_id, args_digest, round_=round_), credentials)


def options_over(rp: RelyingParty, challenge: bytes, credentials: list[str]) -> dict[str, Any]:
    """The ``navigator.credentials.get`` options of an assertion over ``challenge`` by one of ``credentials``."""
    webauthn = _lib()
    structs = webauthn.helpers.structs
    options = webauthn.generate_authentication_options(
        rp_id=rp.rp_id,
        challenge=challenge,
        allow_credentials=[
            structs.PublicKeyCredentialDescriptor(id=webauthn.base64url_to_bytes(c)) for c in credentials
        ],
        user_verification=structs.UserVerificationRequirement.REQUIRED,
    )
    parsed: dict[str, Any] = json.loads(webauthn.options_to_json(options))
    return parsed


def assertion_of(response: Any) -> dict[str, str]:
    """The four values of a ``navigator.credentials.get`` response stored with the decision (base64url each)."""
    try:
        inner = response["response"]
        found = {
            "credential_id": response["id"],
            "authenticator_data": inner["authenticatorData"],
            "client_data_json": inner["clientDataJSON"],
            "signature": inner["signature"],
        }
    except (KeyError, TypeError) as e:
        raise PasskeyError("the passkey assertion is incomplete") from e
    if not all(isinstance(v, str) and v for v in found.values()):
        raise PasskeyError("the passkey assertion is malformed")
    return found


def verify_assertion(
    rp: RelyingParty, assertion: Any, credential: Credential, *, call_id: str, args_digest: str, stored_count: bool,
    round_: int = 0,
) -> int:  # fmt: skip
    """Check a stored assertion over approving ``call_id`` with ``args_digest`` (in quorum round ``round_``);
    return its sign count.

    ``stored_count``: the assertion was already accepted and its count recorded (the holder's re-check), so its
    count cannot exceed the credential's (later assertions may have raised it since); otherwise (the page,
    accepting it now) it must exceed the recorded count unless both are 0 (authenticators without a counter).
    """
    return verify_over(
        rp, assertion, credential, challenge=challenge_for(call_id, args_digest, round_=round_),
        stored_count=stored_count,
    )  # fmt: skip


def verify_over(
    rp: RelyingParty, assertion: Any, credential: Credential, *, challenge: bytes, stored_count: bool
) -> int:
    """Check an assertion (the stored shape) over ``challenge``; return its sign count (see :func:`verify_assertion`).

    Also the proof of the account before a new passkey is registered: an assertion over the random challenge the
    page sealed for that registration."""
    webauthn = _lib()
    if not isinstance(assertion, dict) or any(not isinstance(assertion.get(k), str) for k in ASSERTION_FIELDS):
        raise PasskeyError("the decision carries no passkey assertion")
    if assertion["credential_id"] != credential.credential_id:
        raise PasskeyError("the passkey assertion names another credential")
    response = {
        "id": assertion["credential_id"],
        "rawId": assertion["credential_id"],
        "type": "public-key",
        "response": {
            "authenticatorData": assertion["authenticator_data"],
            "clientDataJSON": assertion["client_data_json"],
            "signature": assertion["signature"],
        },
    }
    try:
        verified = webauthn.verify_authentication_response(
            credential=response, expected_challenge=challenge, expected_rp_id=rp.rp_id,
            expected_origin=rp.origin, credential_public_key=credential.public_key, credential_current_sign_count=0,
            require_user_verification=True,
        )  # fmt: skip
    except (webauthn.helpers.exceptions.InvalidAuthenticationResponse, ValueError, KeyError, TypeError) as e:
        raise PasskeyError(f"the passkey assertion does not match what it was asked for: {e}") from e
    count: int = verified.new_sign_count
    if stored_count:
        if count > credential.sign_count:
            raise PasskeyError("the passkey assertion's sign count was never recorded: it was not accepted by the page")
    elif (count or credential.sign_count) and count <= credential.sign_count:
        raise PasskeyError(
            f"the passkey's sign count went backwards ({count} after {credential.sign_count}): a cloned authenticator?"
        )
    return count
