"""A small offline preview of Block Kit (the block types and mrkdwn the gatekeeper's messages use), as HTML in
Slack's look, for a screenshot in real Chromium. A preview, not Slack: it renders what the blocks say (header,
fields, mrkdwn with bold, code blocks and links, buttons with their styles, context) the way Slack lays it out."""

from __future__ import annotations

import html
import re
from typing import Any

_CSS = """
body { margin: 0; background: #fff; font: 15px/1.46668 Lato, "Helvetica Neue", Helvetica, Arial, sans-serif; color: #1d1c1d; }
.msg { display: flex; gap: 8px; padding: 8px 20px; width: 640px; }
.avatar { width: 36px; height: 36px; border-radius: 6px; background: #4a154b; color: #fff; font-weight: 700;
  display: flex; align-items: center; justify-content: center; flex: none; font-size: 13px; }
.who { font-weight: 900; } .app { font-size: 10px; background: #e8e8e8; color: #616061; padding: 1px 3px;
  border-radius: 2px; margin-left: 4px; font-weight: 700; vertical-align: 1px; } .time { color: #616061; font-size: 12px; margin-left: 4px; }
.header { font-size: 18px; font-weight: 900; margin: 6px 0 4px; }
.fields { display: grid; grid-template-columns: 1fr 1fr; gap: 6px 16px; margin: 4px 0; }
.section { margin: 4px 0; } pre { margin: 4px 0 0; padding: 8px; border: 1px solid #ddd; border-radius: 4px;
  background: #f8f8f8; font: 12px/1.5 Monaco, Menlo, Consolas, "Courier New", monospace; white-space: pre-wrap; }
.actions { display: flex; gap: 8px; margin: 8px 0 4px; }
.btn { border: 1px solid #ccc; border-radius: 4px; padding: 0 12px; height: 28px; font-weight: 700; font-size: 13px;
  background: #fff; color: #1d1c1d; display: inline-flex; align-items: center; }
.btn.primary { background: #007a5a; border-color: #007a5a; color: #fff; } .btn.danger { color: #e01e5a; border-color: #e01e5a88; }
.context { color: #616061; font-size: 12px; margin-top: 4px; display: flex; gap: 8px; } a { color: #1264a3; text-decoration: none; }
.caption { font: 11px sans-serif; color: #888; padding: 0 20px 8px 64px; }
"""


_EMOJI = {
    ":white_check_mark:": '<span style="color:#fff;background:#2eb67d;border-radius:3px;padding:0 3px">\u2714</span>',
    ":no_entry:": '<span style="color:#e01e5a">\u26d4</span>',
    ":hourglass:": "\u231b",
}
"""Slack's emoji codes the messages use, as glyphs the test machine's fonts have (it has no emoji font)."""


def mrkdwn(text: str) -> str:
    """Slack's mrkdwn (already entity-escaped, as Slack's own is) to HTML."""
    parts = re.split(r"```(.*?)```", text, flags=re.S)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<pre>{part}</pre>")
            continue
        part = re.sub(r"<(https?://[^|>]+)\|([^>]+)>", r'<a href="\1">\2</a>', part)
        part = re.sub(r"\*([^*\n]+)\*", r"<b>\1</b>", part)
        for code, glyph in _EMOJI.items():
            part = part.replace(code, glyph)
        out.append(part.replace("\n", "<br>"))
    return "".join(out)


def _text(obj: dict[str, Any]) -> str:
    return mrkdwn(obj["text"]) if obj["type"] == "mrkdwn" else html.escape(obj["text"])


def block(b: dict[str, Any]) -> str:
    kind = b["type"]
    if kind == "header":
        return f'<div class="header">{_text(b["text"])}</div>'
    if kind == "section" and "fields" in b:
        return '<div class="fields">' + "".join(f"<div>{_text(f)}</div>" for f in b["fields"]) + "</div>"
    if kind == "section":
        return f'<div class="section">{_text(b["text"])}</div>'
    if kind == "actions":
        buttons = "".join(
            f'<span class="btn {e.get("style", "")}">{html.escape(e["text"]["text"])}{" ↗" if "url" in e else ""}</span>'
            for e in b["elements"]
        )
        return f'<div class="actions">{buttons}</div>'
    if kind == "context":
        return '<div class="context">' + "".join(f"<span>{_text(e)}</span>" for e in b["elements"]) + "</div>"
    raise ValueError(f"the preview does not draw {kind!r} blocks")


def page(messages: list[tuple[list[dict[str, Any]], str]]) -> str:
    """An HTML page of bot messages, each ``(blocks, caption)``."""
    body = "".join(
        '<div class="msg"><div class="avatar">GK</div><div><span class="who">mcp-gatekeeper</span>'
        '<span class="app">APP</span><span class="time">10:42 AM</span>'
        + "".join(block(b) for b in blocks)
        + f'</div></div><div class="caption">{html.escape(caption)}</div>'
        for blocks, caption in messages
    )
    return f"<!doctype html><meta charset=utf-8><style>{_CSS}</style><body>{body}</body>"
