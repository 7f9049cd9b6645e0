"""The Block Kit messages: one per held call (what, risk, rule, arguments; Approve / Reject / Open), and the
same message once the call is decided (the outcome and who decided, no buttons).

Everything from the call is shown as plain text or inside a code block with ``&``, ``<`` and ``>`` escaped,
so nothing in a tool's arguments can mention a channel, link somewhere or format the message. Secret-looking
values are masked (the page's own detector) and the arguments are cut to :data:`ARGS_CHARS` characters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mcp_gatekeeper.models import CallRecord, State
from mcp_gatekeeper.notify import printable
from mcp_gatekeeper.webhttp import plain_headline
from mcp_gatekeeper.webredact import redact

APPROVE = "gk_approve"
REJECT = "gk_reject"
OPEN = "gk_open"
REJECT_VIEW = "gk_reject_reason"
REASON_BLOCK = "reason"
REASON_INPUT = "text"
ARGS_CHARS = 2500
"""Arguments longer than this (as indented JSON) are cut; the page shows them whole."""
HEADER_CHARS = 150
"""Slack's limit for a header block's text."""


@dataclass(frozen=True, slots=True)
class ButtonValue:
    """What an Approve or Reject button carries: the call and the digest of the arguments the message shows."""

    call_id: str
    args_digest: str

    def encode(self) -> str:
        return json.dumps({"c": self.call_id, "d": self.args_digest}, separators=(",", ":"))

    @classmethod
    def decode(cls, text: Any) -> ButtonValue | None:
        try:
            data = json.loads(text) if isinstance(text, str) and len(text) < 500 else None
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str) or not isinstance(data.get("d"), str):
            return None
        return cls(data["c"], data["d"])


def escape(text: str) -> str:
    """Text for Slack's mrkdwn: control characters (line breaks kept) shown as escapes, ``& < >`` as entities
    (no mentions, no links)."""
    shown = "\n".join(printable(line) for line in text.split("\n"))
    return shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _hidden(_secret: str) -> str:
    return "hidden"


def headline(call: CallRecord) -> str:
    """The call in plain words (its rule's summary, else the tool and its salient arguments), secrets masked."""
    words = call.summary or plain_headline(call.tool, call.upstream, call.forward_arguments, call.input_schema)
    return printable(str(redact(words, _hidden)))


def arguments_text(arguments: dict[str, Any]) -> str:
    """The arguments as indented JSON, secrets masked, cut to :data:`ARGS_CHARS`, safe inside a code block."""
    text = json.dumps(redact(arguments, _hidden), indent=2, ensure_ascii=False, sort_keys=True)
    if len(text) > ARGS_CHARS:
        text = text[: ARGS_CHARS - 1] + f"…\n(cut: {len(text) - ARGS_CHARS + 1} more characters on the page)"
    # a backtick could close the code block: shown as a look-alike (the page shows the exact text)
    return escape(text).replace("`", "\u02cb")


def _plain(text: str, limit: int) -> dict[str, Any]:
    # plain text is not read as mrkdwn; angle brackets are still shown as look-alikes, so that no client
    # that does read them finds a mention or a link
    text = text.replace("<", "\u2039").replace(">", "\u203a")
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return {"type": "plain_text", "text": text, "emoji": False}


def _facts(call: CallRecord) -> dict[str, Any]:
    return {
        "type": "section",
        "fields": [
            {"type": "mrkdwn", "text": f"*Risk*\n{escape(call.risk)}"},
            {"type": "mrkdwn", "text": f"*Rule*\n{escape(call.rule or 'built-in default')}"},
            {"type": "mrkdwn", "text": f"*Tool*\n{escape(call.upstream)} / {escape(call.tool)}"},
            {"type": "mrkdwn", "text": f"*Call*\n{call.id[:8]}"},
        ],
    }


def _arguments(call: CallRecord) -> dict[str, Any]:
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": f"*Arguments*\n```{arguments_text(call.arguments)}```"},
    }


def fallback_text(call: CallRecord) -> str:
    """The notification's text (phones and screen readers show it instead of the blocks; Slack reads it as
    mrkdwn, so it is escaped too)."""
    return escape(f"[{call.risk}] {headline(call)}: waiting for approval")


def held_blocks(call: CallRecord, link: str | None, *, decide_here: bool = True) -> list[dict[str, Any]]:
    """The message for a held call, with its buttons. A risky call's Approve asks Slack to confirm first.
    ``decide_here=False`` (a rule that asks for a passkey): only "Open in page", where the reviewer gives it."""
    if not decide_here:
        return _page_only_blocks(call, link)
    value = ButtonValue(call.id, call.args_digest).encode()
    approve: dict[str, Any] = {
        "type": "button", "action_id": APPROVE, "style": "primary", "value": value, "text": _plain("Approve", 75),
    }  # fmt: skip
    if call.risk in ("high", "critical"):
        approve["confirm"] = {
            "title": _plain("Approve this call?", 100),
            "text": {"type": "mrkdwn", "text": f"*{escape(headline(call))}*\nIt runs as shown, once."},
            "confirm": _plain("Approve", 30),
            "deny": _plain("Back", 30),
        }
    buttons: list[dict[str, Any]] = [
        approve,
        {"type": "button", "action_id": REJECT, "style": "danger", "value": value, "text": _plain("Reject", 75)},
    ]
    if link:
        buttons.append({"type": "button", "action_id": OPEN, "url": link, "text": _plain("Open in page", 75)})
    return [
        {"type": "header", "text": _plain(headline(call), HEADER_CHARS)},
        _facts(call),
        _arguments(call),
        {"type": "actions", "block_id": f"gk_{call.id[:12]}", "elements": buttons},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": "Approve runs the call once, with exactly these arguments."}],
        },
    ]


def _page_only_blocks(call: CallRecord, link: str | None) -> list[dict[str, Any]]:
    opened = [{"type": "button", "action_id": OPEN, "url": link, "text": _plain("Open in page", 75)}] if link else []
    return [
        {"type": "header", "text": _plain(headline(call), HEADER_CHARS)},
        _facts(call),
        _arguments(call),
        *([{"type": "actions", "block_id": f"gk_{call.id[:12]}", "elements": opened}] if opened else []),
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": "This call needs the reviewer's passkey: decide it in the page."}],
        },
    ]


_APPROVED = frozenset({State.APPROVED, State.FORWARDING, State.FORWARDED, State.FAILED, State.OUTCOME_UNKNOWN})


def outcome_words(call: CallRecord) -> str:
    """``Approved by slack:alice (slack)``, ``Expired: no decision in time…``, with the reviewer's reason if any."""
    state = State(call.state)
    if state == State.EXPIRED:
        return "Expired: no decision in time, so it was rejected"
    if state in (State.CANCELLED, State.ORPHANED):
        return "Withdrawn: the agent's request ended before a decision"
    word = "Approved" if state in _APPROVED else "Rejected" if state == State.REJECTED else state.value.capitalize()
    who = f" by {call.decided_by}" if call.decided_by else ""
    via = f" ({call.channel})" if call.channel else ""
    edited = ", with edited arguments" if call.modified_arguments is not None else ""
    reason = f": {call.reason}" if call.reason else ""
    return f"{word}{who}{via}{edited}{reason}"


def decided_blocks(call: CallRecord, link: str | None) -> list[dict[str, Any]]:
    """The message once the call is decided: the outcome instead of the buttons."""
    state = State(call.state)
    mark = ":white_check_mark:" if state in _APPROVED else ":no_entry:" if state == State.REJECTED else ":hourglass:"
    context = [{"type": "mrkdwn", "text": f"{mark} *{escape(outcome_words(call))}*"}]
    if link:
        context.append({"type": "mrkdwn", "text": f"<{link}|Open in page>"})
    return [
        {"type": "header", "text": _plain(headline(call), HEADER_CHARS)},
        _facts(call),
        _arguments(call),
        {"type": "context", "elements": context},
    ]


def reject_view(call: CallRecord, private_metadata: str) -> dict[str, Any]:
    """The dialog Reject opens: the call, and an optional reason for the agent. ``private_metadata`` names the
    button and message it came from (its submission is checked like the click)."""
    return {
        "type": "modal",
        "callback_id": REJECT_VIEW,
        "private_metadata": private_metadata,
        "title": _plain("Reject the call", 24),
        "submit": _plain("Reject", 24),
        "close": _plain("Back", 24),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{escape(headline(call))}*\nNothing runs."}},
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "optional": True,
                "label": _plain("Reason (the agent reads it)", 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "max_length": 2000,
                },
            },
        ],
    }
