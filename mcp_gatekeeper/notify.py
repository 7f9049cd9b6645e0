"""Telling a human that a call is waiting: the ``Notifier`` protocol and its channels.

Channels: a line on stderr (with a bell on a terminal), a desktop notification (``notify-send`` on
Linux, ``osascript`` on macOS, a PowerShell toast on Windows), a JSON webhook signed with HMAC-SHA256,
and a Slack-compatible incoming webhook. A failing channel is logged and never blocks or decides a hold.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO

import anyio
import httpx2

from mcp_gatekeeper import hostos
from mcp_gatekeeper.config import NotifyConfig, WebhookChannel, expand_env
from mcp_gatekeeper.models import CallRecord

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Gatekeeper-Signature"


class Notifier(Protocol):
    async def held(self, call: CallRecord) -> None:
        """A call is now waiting for a decision."""
        ...


class Channel(Protocol):
    name: str

    async def send(self, event: str, call: CallRecord, text: str, url: str | None) -> None: ...


def describe(event: str, call: CallRecord) -> str:
    what = call.summary or f"{call.upstream}/{call.tool}"
    verb = {
        "held": "waiting for approval",
        "escalated": "STILL waiting for approval (escalated)",
        "rollback_failed": "ROLLBACK FAILED — needs a human",
        "rolled_back": "rolled back after a failed review",
        "review_due": "ran and needs a review",
    }.get(event, event)
    return f"[{call.risk}] {printable(what)} — {verb} (call {call.id[:8]})"


class StderrChannel:
    """One line on stderr (the terminal that started the gatekeeper), with a bell if it is a terminal."""

    name = "stderr"

    def __init__(self, stream: TextIO | None = None, command: str | None = None) -> None:
        self._stream = stream or sys.stderr
        self._command = command or hostos.self_command()
        """How this gatekeeper is typed at another terminal, so each hint runs as printed."""

    async def send(self, event: str, call: CallRecord, text: str, url: str | None) -> None:
        bell = "\a" if self._stream.isatty() else ""
        tag = {
            "held": "HELD", "escalated": "ESCALATED", "rollback_failed": "ROLLBACK FAILED", "rolled_back": "ROLLED BACK",
            "review_due": "REVIEW",
        }.get(event, event.upper())  # fmt: skip
        what = printable(call.summary or f"{call.upstream}/{call.tool}")
        me, short = self._command, call.id[:8]
        if event in ("held", "escalated"):
            hint = f"approve: {me} approve {short}  reject: {me} reject {short} --reason 'why'"
        elif event == "review_due":
            hint = f"confirm: {me} review {short} --confirm  undo: {me} review {short} --fail"
        else:
            hint = f"see: {me} show {short}"
        self._stream.write(
            f"{bell}mcp-gatekeeper: {tag} {call.id[:8]} [{call.risk}] {what} — {hint}{'  ' + url if url else ''}\n"
        )
        self._stream.flush()


class DesktopChannel:
    """A desktop notification: ``notify-send`` (Linux, when installed), ``osascript`` (macOS), a toast through
    PowerShell (Windows); the command comes from :func:`mcp_gatekeeper.hostos.notification_command`."""

    name = "desktop"

    def __init__(self, platform: str = hostos.HOST) -> None:
        self.platform = platform

    async def send(self, event: str, call: CallRecord, text: str, url: str | None) -> None:
        body = text + (f"\n{url}" if url else "")
        argv = hostos.notification_command(hostos.APP, body, self.platform)
        if argv is None:
            log.info("no desktop notifier on this machine (on Linux: install notify-send)")
            return
        with anyio.fail_after(5):
            await anyio.run_process(argv, check=True, env=hostos.notification_env(hostos.APP, body, self.platform))


class WebhookSender:
    """A webhook: JSON (signed with HMAC-SHA256 when a secret is set) or a Slack incoming-webhook message."""

    def __init__(self, config: WebhookChannel, http: httpx2.AsyncClient) -> None:
        self.name = config.name
        self._config = config
        self._http = http

    def body(self, event: str, call: CallRecord, text: str, url: str | None) -> dict[str, Any]:
        if self._config.format == "slack":
            link = f" <{url}|Open the card>" if url else ""
            return {
                "text": f"mcp-gatekeeper: {text}{link}",
                "blocks": [
                    {
                        "type": "section",
                        "text": {"type": "mrkdwn", "text": f"*mcp-gatekeeper* — {_slack_escape(text)}{link}"},
                    },
                    {
                        "type": "context",
                        "elements": [
                            {
                                "type": "mrkdwn",
                                "text": f"risk *{call.risk}* · {_slack_escape(call.upstream)}/{_slack_escape(call.tool)} · rule {_slack_escape(call.rule or 'default')}",
                            }
                        ],
                    },
                ],
            }
        return {
            "event": event,
            "text": text,
            "url": url,
            "call": {
                "id": call.id,
                "state": call.state.value,
                "upstream": call.upstream,
                "tool": call.tool,
                "risk": call.risk,
                "rule": call.rule,
                "summary": call.summary,
                "args_digest": call.args_digest,
                "created_at": call.created_at,
                "deadline_at": call.deadline_at,
            },
        }

    async def send(self, event: str, call: CallRecord, text: str, url: str | None) -> None:
        payload = json.dumps(self.body(event, call, text, url), sort_keys=True, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        headers.update({k: expand_env(v) for k, v in self._config.headers.items()})
        if self._config.secret and self._config.format == "json":
            key = expand_env(self._config.secret).encode()
            headers[SIGNATURE_HEADER] = "sha256=" + hmac.new(key, payload, hashlib.sha256).hexdigest()
        response = await self._http.post(
            expand_env(self._config.url), content=payload, headers=headers, timeout=self._config.timeout
        )
        response.raise_for_status()


def verify_signature(secret: str, body: bytes, header: str) -> bool:
    """For receivers (and tests): does ``X-Gatekeeper-Signature`` match the body?"""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


class Notifications:
    """The configured channels; ``held``/``escalated``/``alert`` fan out, each channel isolated from the others."""

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        on_hold: Sequence[str] | None = None,
        card_url: Callable[[str], str | None] | None = None,
    ) -> None:
        self.channels = {c.name: c for c in channels}
        self._on_hold = list(on_hold) if on_hold is not None else list(self.channels)
        self._card_url = card_url
        self.failures = 0

    @classmethod
    def from_config(
        cls,
        config: NotifyConfig,
        *,
        http: httpx2.AsyncClient,
        card_url: Callable[[str], str | None] | None = None,
        extra: Sequence[Channel] = (),
    ) -> Notifications:
        """The configured channels; ``extra`` are those built elsewhere (Slack, ntfy: see ``serve``)."""
        channels: list[Channel] = []
        if config.stderr:
            channels.append(StderrChannel())
        if config.desktop:
            channels.append(DesktopChannel())
        channels.extend(WebhookSender(w, http) for w in config.webhooks)
        channels.extend(extra)
        return cls(channels, on_hold=config.on_hold, card_url=card_url)

    async def held(self, call: CallRecord) -> None:
        await self.send("held", call, self._on_hold)

    async def escalated(self, call: CallRecord, channels: Sequence[str]) -> None:
        await self.send("escalated", call, channels or self._on_hold)

    async def alert(self, event: str, call: CallRecord) -> None:
        await self.send(event, call, list(self.channels))

    async def send(self, event: str, call: CallRecord, names: Sequence[str]) -> None:
        text = describe(event, call)
        url = self._card_url(call.id) if self._card_url else None
        for name in names:
            channel = self.channels.get(name)
            if channel is None:
                continue
            try:
                await channel.send(event, call, text, url)
            except Exception as e:  # a notifier must never decide or block a hold
                self.failures += 1
                log.warning("notifier %s failed for call %s (%s): %s", name, call.id[:8], event, _short(e))


def printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)


def _slack_escape(text: str) -> str:
    return printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) < 300 else text[:300] + "…"
