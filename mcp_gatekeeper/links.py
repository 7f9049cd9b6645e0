"""Signed short links to a call's card: ``<base>/c/<short id>.<mac>``, one in every notification.

The MAC (HMAC-SHA256 under a key derived from the home's sealing key, cut to 96 bits) binds the whole call
id, so a link cannot be edited to point at another call, and a link cannot be made without the key. A link
grants nothing: it only says which card to open. The page still needs a login (a session of the store);
after one, it opens that card.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

LINK_PREFIX = "/c/"
SHORT = 12
"""Hex characters of the call id a link carries (48 bits: enough to find the call, the MAC says which)."""
_LABEL = b"mcp-gatekeeper short link v1"
_TOKEN = re.compile(r"^([0-9a-f]{12})\.([A-Za-z0-9_-]{16})$")


def link_key(sealing_key: bytes) -> bytes:
    """The links' own key, derived from the home's sealing key (one secret file, separate uses)."""
    return hmac.new(sealing_key, _LABEL, hashlib.sha256).digest()


def _mac(key: bytes, call_id: str) -> str:
    tag = hmac.new(key, b"call|" + call_id.encode("ascii", "replace"), hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(tag).decode().rstrip("=")


class Links:
    """Makes and checks the short links of one home; ``base_url`` is where a browser reaches the page."""

    def __init__(self, key: bytes, base_url: str) -> None:
        self._key = key
        self.base_url = base_url.rstrip("/")

    def token(self, call_id: str) -> str:
        return f"{call_id[:SHORT]}.{_mac(self._key, call_id)}"

    def url(self, call_id: str) -> str:
        return f"{self.base_url}{LINK_PREFIX}{self.token(call_id)}"

    def __call__(self, call_id: str) -> str:
        """The link for ``call_id`` (a ``card_url`` function for :class:`~mcp_gatekeeper.notify.Notifications`)."""
        return self.url(call_id)

    @staticmethod
    def parse(token: str) -> tuple[str, str] | None:
        """``(short id, mac)`` of a well-formed token, else ``None``."""
        m = _TOKEN.match(token)
        return (m.group(1), m.group(2)) if m else None

    def verify(self, call_id: str, mac: str) -> bool:
        """Does ``mac`` belong to exactly this call id? (constant-time)"""
        return hmac.compare_digest(_mac(self._key, call_id).encode(), mac.encode("ascii", "replace"))
