"""Sealed ``requestState`` for 2026-07-28 ``InputRequiredResult`` rounds.

The client echoes ``requestState`` back verbatim, so it is attacker-controlled: it is HMAC-SHA256 sealed
with a per-home secret, bound to the call id and the arguments' digest, short-lived, and carries a nonce
the store accepts only once. A tampered, expired, replayed or cross-call state is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = "state-key"


class SealError(ValueError):
    """A requestState that must not be trusted; the message says why."""


def load_or_create_key(home: Path) -> bytes:
    """The per-home sealing key (mode 0600), created on first use; shared by every process of the home."""
    path = home / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return bytes.fromhex(key)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class SealedState:
    call_id: str
    args_digest: str
    expires_at: float
    nonce: str


def seal(key: bytes, *, call_id: str, args_digest: str, expires_at: float) -> str:
    body = json.dumps(
        {"v": 1, "c": call_id, "d": args_digest, "e": expires_at, "n": secrets.token_hex(16)},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return f"gk1.{_b64(body)}.{_b64(mac)}"


def unseal(key: bytes, token: str, *, now: float, args_digest: str) -> SealedState:
    """Check a state the client sent back; raise :class:`SealError` unless it is ours, fresh and for these arguments."""
    try:
        prefix, body_b64, mac_b64 = token.split(".")
        if prefix != "gk1":
            raise SealError("not a gatekeeper requestState")
        body, mac = _unb64(body_b64), _unb64(mac_b64)
    except (ValueError, TypeError) as e:
        raise SealError("malformed requestState") from e
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise SealError("requestState failed its integrity check (tampered or not ours)")
    data = json.loads(body)
    state = SealedState(
        call_id=str(data["c"]), args_digest=str(data["d"]), expires_at=float(data["e"]), nonce=str(data["n"])
    )
    if now >= state.expires_at:
        raise SealError("requestState expired; call the tool again")
    if not hmac.compare_digest(state.args_digest, args_digest):
        raise SealError("requestState belongs to a different call or different arguments")
    return state
