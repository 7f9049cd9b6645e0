"""Slack's request signature (v0): ``X-Slack-Signature: v0=<hex HMAC-SHA256>`` over ``v0:{timestamp}:{raw body}``
keyed with the app's signing secret, and ``X-Slack-Request-Timestamp`` within :data:`WINDOW` seconds of now.

Replays inside the window are the caller's to refuse (the store remembers every signature it accepted).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

WINDOW = 300.0
"""Seconds a request's timestamp may be off from now (either way): Slack's own recommendation."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request is Slack's, and if not why (said in the log, never to the sender)."""

    ok: bool
    why: str = ""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` value Slack sends for ``body`` at ``timestamp``."""
    base = b"v0:" + timestamp.encode("ascii") + b":" + body
    return "v0=" + hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()


def verify(secret: str, *, timestamp: str | None, signature: str | None, body: bytes, now: float) -> Verdict:
    """Check a request: both headers present, a timestamp inside the window, the signature matching."""
    if not secret:
        return Verdict(False, "no signing secret is configured")
    if not timestamp or not signature:
        return Verdict(False, "the Slack signature headers are missing")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return Verdict(False, "the request timestamp is not a number of seconds")
    if abs(now - int(timestamp)) > WINDOW:
        return Verdict(False, "the request timestamp is outside the five-minute window")
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace")):
        return Verdict(False, "the signature does not match")
    return Verdict(True)
