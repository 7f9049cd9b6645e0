"""The few methods of Slack's Web API the gatekeeper uses, over an injected ``httpx2.AsyncClient``.

The bot token goes only into the ``Authorization`` header; it is never logged or put in an error message.
Every failure (network, HTTP status, ``"ok": false``, a 429 with ``Retry-After``) is a
:class:`~mcp_gatekeeper.errors.NotifierError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2

from mcp_gatekeeper.errors import NotifierError


@dataclass(frozen=True, slots=True)
class Posted:
    """Where a message went: Slack's channel id and the message's timestamp (its id within the channel)."""

    channel: str
    ts: str


def _retry_after(response: httpx2.Response) -> float | None:
    raw = response.headers.get("retry-after", "")
    try:
        return max(0.0, min(float(raw), 3600.0))
    except ValueError:
        return None


class SlackWebAPI:
    def __init__(self, http: httpx2.AsyncClient, *, api_url: str, token: str, timeout: float) -> None:
        self._http = http
        self._api = api_url.rstrip("/")
        self._token = token
        self._timeout = timeout

    async def call(self, method: str, body: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """POST ``body`` (JSON) to ``method``; Slack's answer, or :class:`NotifierError`."""
        try:
            response = await self._http.post(
                f"{self._api}/{method}",
                json=body,
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=min(timeout, self._timeout) if timeout is not None else self._timeout,
            )
        except httpx2.HTTPError as e:
            raise NotifierError(f"slack {method}: {type(e).__name__}") from None
        if response.status_code == 429:
            wait = _retry_after(response)
            raise NotifierError(f"slack {method}: rate limited (retry after {wait} s)", retry_after=wait)
        if response.status_code != 200:
            raise NotifierError(f"slack {method}: HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            raise NotifierError(f"slack {method}: the answer is not JSON") from None
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            error = answer.get("error") if isinstance(answer, dict) else None
            raise NotifierError(f"slack {method}: {str(error)[:100] if error else 'not ok'}")
        return answer

    async def post_message(self, channel: str, text: str, blocks: list[dict[str, Any]]) -> Posted:
        answer = await self.call(
            "chat.postMessage", {"channel": channel, "text": text, "blocks": blocks, "unfurl_links": False}
        )
        ts, where = answer.get("ts"), answer.get("channel", channel)
        if not isinstance(ts, str) or not isinstance(where, str):
            raise NotifierError("slack chat.postMessage: the answer has no channel and ts")
        return Posted(where, ts)

    async def update(self, posted: Posted, text: str, blocks: list[dict[str, Any]]) -> None:
        await self.call("chat.update", {"channel": posted.channel, "ts": posted.ts, "text": text, "blocks": blocks})

    async def reply(self, posted: Posted, text: str) -> None:
        """A reply in the message's thread (an escalation)."""
        await self.call("chat.postMessage", {"channel": posted.channel, "thread_ts": posted.ts, "text": text})

    async def tell(self, channel: str, user: str, text: str) -> None:
        """A message only ``user`` sees (why their click decided nothing)."""
        await self.call("chat.postEphemeral", {"channel": channel, "user": user, "text": text})

    async def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        """Open a dialog (a modal) for the user whose click brought ``trigger_id``. Asked while Slack waits for
        the click's answer (three seconds), so it gets two at most."""
        await self.call("views.open", {"trigger_id": trigger_id, "view": view}, timeout=2.0)
