"""Push to a phone: an ntfy-compatible channel (``[[notify.ntfy]]``): one HTTP POST to a topic URL per event.

The body is the call in plain words (its rule's summary, secrets masked, or the tool's name) and never the
arguments; the headers give ntfy the title, a priority from the call's risk, and the call's signed short link
as the notification's click target and its one action. Any ntfy server works (ntfy.sh or your own); with
``token`` the request carries ``Authorization: Bearer <token>``. The topic URL is a secret of sorts on a
public server: pick a long, unguessable topic, or run your own server with access control.
"""

from __future__ import annotations

import httpx2

from mcp_gatekeeper.config import NtfyChannel, expand_env
from mcp_gatekeeper.errors import NotifierError
from mcp_gatekeeper.models import CallRecord
from mcp_gatekeeper.notify import printable
from mcp_gatekeeper.webredact import redact

PRIORITY = {"low": "2", "medium": "3", "high": "4", "critical": "5"}
"""ntfy's priorities (1 min … 5 urgent) by the call's risk; an escalation or an alert is always urgent."""
_TITLE = {
    "held": "Call waiting for approval",
    "escalated": "Call STILL waiting for approval",
    "review_due": "Call ran; review it",
    "rolled_back": "Call rolled back",
    "rollback_failed": "ROLLBACK FAILED: act now",
}
_TAGS = {"held": "hourglass", "escalated": "rotating_light", "rollback_failed": "rotating_light"}


def _hidden(_secret: str) -> str:
    return "hidden"


def push_text(call: CallRecord) -> str:
    """What the notification says: plain words (secret-looking spans masked), the tool, the risk; no arguments."""
    what = printable(str(redact(call.summary, _hidden))) if call.summary else f"{call.tool} on {call.upstream}"
    rule = f", rule {call.rule}" if call.rule else ""
    return f"{what}\n{call.risk} risk{rule} · {printable(call.upstream)}/{printable(call.tool)} · call {call.id[:8]}"


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def ntfy_request(event: str, call: CallRecord, url: str | None, token: str | None) -> tuple[dict[str, str], bytes]:
    """The headers and body of the POST for ``event`` about ``call`` (tests assert them exactly)."""
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "Title": _ascii(f"{_TITLE.get(event, event)} [{call.risk}]"),
        "Priority": "5" if event in ("escalated", "rollback_failed") else PRIORITY.get(call.risk, "3"),
        "Tags": _TAGS.get(event, "information_source"),
    }
    if url:
        headers["Click"] = url
        headers["Actions"] = f"view, Open card, {url}, clear=true"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers, push_text(call).encode("utf-8")


class NtfySender:
    """One ntfy topic as a notification channel."""

    def __init__(self, config: NtfyChannel, http: httpx2.AsyncClient) -> None:
        self.name = config.name
        self._config = config
        self._http = http

    async def send(self, event: str, call: CallRecord, text: str, url: str | None) -> None:
        token = expand_env(self._config.token) if self._config.token else None
        headers, body = ntfy_request(event, call, url, token)
        try:
            response = await self._http.post(
                expand_env(self._config.url), content=body, headers=headers, timeout=self._config.timeout
            )
        except httpx2.HTTPError as e:
            raise NotifierError(f"ntfy {self.name}: {type(e).__name__}") from None
        if response.status_code >= 300:
            raise NotifierError(f"ntfy {self.name}: HTTP {response.status_code}")
