"""A WebAuthn authenticator in software (P-256), for tests that need passkeys without a browser.

It signs whatever it is asked to, with any origin and RP id: what an attacker's script could do, and what a
browser's authenticator does when the page asks. The browser itself: tests/reliability/test_passkeys_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from mcp_gatekeeper.passkeys import Credential, RelyingParty


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftAuthenticator:
    rp: RelyingParty
    reviewer: str = "web:ann"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    credential_id: bytes = field(default_factory=lambda: os.urandom(16))
    count: int = 0

    def cose(self) -> bytes:
        n = self.key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: n.x.to_bytes(32, "big"), -3: n.y.to_bytes(32, "big")})

    def credential(self, sign_count: int = 0) -> Credential:
        return Credential(b64(self.credential_id), self.reviewer, self.cose(), sign_count)

    def _auth_data(self, rp_id: str, flags: int, count: int, attested: bytes = b"") -> bytes:
        return hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + count.to_bytes(4, "big") + attested

    def registration(self, challenge: str, *, origin: str | None = None) -> dict[str, object]:
        """A ``navigator.credentials.create`` response (attestation ``none``) to the base64url ``challenge``."""
        client = json.dumps(
            {"type": "webauthn.create", "challenge": challenge, "origin": origin or self.rp.origin}
        ).encode()
        attested = bytes(16) + len(self.credential_id).to_bytes(2, "big") + self.credential_id + self.cose()
        auth = self._auth_data(self.rp.rp_id, 0x01 | 0x04 | 0x40, 0, attested)
        att = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth})
        cid = b64(self.credential_id)
        return {"id": cid, "rawId": cid, "type": "public-key",
                "response": {"clientDataJSON": b64(client), "attestationObject": b64(att)}}  # fmt: skip

    def assertion(
        self, challenge: bytes, *, origin: str | None = None, rp_id: str | None = None, uv: bool = True,
        count: int | None = None,
    ) -> dict[str, str]:  # fmt: skip
        """An assertion over ``challenge`` as the decision stores it (credential id, authenticatorData, ...)."""
        if count is None:
            self.count += 1
            count = self.count
        client = json.dumps({"type": "webauthn.get", "challenge": b64(challenge), "origin": origin or self.rp.origin})
        auth = self._auth_data(rp_id or self.rp.rp_id, 0x01 | (0x04 if uv else 0), count)
        sig = self.key.sign(auth + hashlib.sha256(client.encode()).digest(), ec.ECDSA(hashes.SHA256()))
        return {"credential_id": b64(self.credential_id), "authenticator_data": b64(auth),
                "client_data_json": b64(client.encode()), "signature": b64(sig)}  # fmt: skip


def as_response(stored: dict[str, str]) -> dict[str, object]:
    """A stored assertion in the shape the browser sends (``navigator.credentials.get``'s response)."""
    return {"id": stored["credential_id"], "rawId": stored["credential_id"], "type": "public-key",
            "response": {"authenticatorData": stored["authenticator_data"], "clientDataJSON": stored["client_data_json"],
                         "signature": stored["signature"]}}  # fmt: skip
