"""The decision card: one self-contained HTML view (inline script and style, no network) and the data it shows.

The view speaks the MCP Apps bridge by hand (JSON-RPC over ``postMessage`` to its parent, the host): it sends
``ui/initialize`` and ``ui/notifications/initialized``, renders from ``ui/notifications/tool-result`` (the held
call's "pending" answer), and its buttons send ``tools/call`` for ``gatekeeper_decide`` through the host.
It shows what the approval page's card shows: the action in plain words, why it was held, what happens either
way, and the exact arguments (editable when a click here decides). When the rule keeps the page and the CLI
authoritative (``in_chat = "show"``), it shows the call's status and a link to the page instead of buttons.

Everything it renders is set as text (``textContent``), never as markup. Its own CSP forbids any fetch.
"""

from __future__ import annotations

import json
from typing import Any

from mcp_gatekeeper.apps import CARD_KEY, DECIDE_TOOL, NONCE_META_KEY
from mcp_gatekeeper.models import CallRecord
from mcp_gatekeeper.webhttp import inexact_numbers, plain_headline

APPROVE_DEFAULT = "{tool} runs once on {upstream} with the arguments below (your edit, if you make one)."
REJECT_DEFAULT = "Nothing runs; the agent is told it was rejected, with your reason."


def card_data(rec: CallRecord, *, now: float, can_decide: bool, page_url: str | None, cli: str) -> dict[str, Any]:
    """What the card shows for one held call (``structuredContent[CARD_KEY]``; never the nonce)."""
    effects = rec.effects or {}
    return {
        "kind": "held_call",
        "call_id": rec.id,
        "state": rec.state.value,
        "tool": rec.tool,
        "upstream": rec.upstream,
        "risk": rec.risk,
        "headline": rec.summary or plain_headline(rec.tool, rec.upstream, rec.arguments, rec.input_schema),
        "why": list(rec.reasons),
        "agent_reason": rec.agent_reason,
        "effects": {
            "approve": effects.get("approve") or APPROVE_DEFAULT.format(tool=rec.tool, upstream=rec.upstream),
            "reject": effects.get("reject") or REJECT_DEFAULT,
        },
        "arguments": rec.arguments,
        "arguments_json": json.dumps(rec.arguments, indent=2, ensure_ascii=False, sort_keys=True),
        "inexact_numbers": inexact_numbers(rec.arguments),
        "args_digest": rec.args_digest,
        "schema": rec.input_schema,
        "seconds_left": max(0, int((rec.deadline_at or now) - now)),
        "can_decide": can_decide,
        "page_url": page_url,
        "cli": cli,
        "decide_tool": DECIDE_TOOL,
    }


_CSS = """
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#5b636e;--bg:#fff;--line:#d8dde3;--ok:#1a7f37;--no:#b42318;
--chip:#eef1f4;--hi:#fff4e5;--hiline:#f0b45c}
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ed;--muted:#9aa4ae;--bg:#16191d;--line:#343a41;--chip:#262b31;
--hi:#2e2412;--hiline:#8a6424}}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);
background:var(--bg)}main{padding:14px 16px;max-width:760px}header{display:flex;gap:8px;align-items:center;
font-size:12px;color:var(--muted)}h1{font-size:17px;margin:6px 0 10px;overflow-wrap:anywhere}h2{font-size:12px;
text-transform:uppercase;letter-spacing:.04em;color:var(--muted);margin:12px 0 4px}.chip{padding:1px 8px;
border-radius:10px;background:var(--chip);font-weight:600}.risk-high,.risk-critical{background:#fde8e7;color:#8f1d14}
.risk-medium{background:var(--hi);color:#7a4b00}ul{margin:0;padding-left:18px}.effects{display:grid;gap:6px}
.effect{border:1px solid var(--line);border-radius:8px;padding:6px 10px}.effect b{display:block;font-size:12px}
textarea{width:100%;min-height:120px;font:12.5px/1.4 ui-monospace,Menlo,Consolas,monospace;border:1px solid
var(--line);border-radius:8px;padding:8px;background:var(--bg);color:var(--fg)}textarea.edited{border-color:
var(--hiline);background:var(--hi)}input{width:100%;padding:6px 8px;border:1px solid var(--line);border-radius:8px;
background:var(--bg);color:var(--fg)}.row{display:flex;gap:8px;margin-top:12px;flex-wrap:wrap}button{font:inherit;
font-weight:600;padding:7px 16px;border-radius:8px;border:1px solid var(--line);cursor:pointer;background:var(--chip);
color:var(--fg)}button.approve{background:var(--ok);border-color:var(--ok);color:#fff}button.reject{color:var(--no)}
button:disabled{opacity:.5;cursor:default}.status{margin-top:10px;min-height:1.4em}.status.error{color:var(--no)}
.status.done{color:var(--ok);font-weight:600}.muted{color:var(--muted)}code{font:12.5px ui-monospace,monospace}
details{margin-top:6px}pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px;margin:4px 0}
"""

_JS = r"""
"use strict";
const PROTOCOL = "2026-01-26";
let nextId = 1, hostCaps = {}, data = null, nonce = null, busy = false;
const waiting = new Map();
const $ = (id) => document.getElementById(id);
function post(msg) { window.parent.postMessage(msg, "*"); }
function request(method, params) {
  const id = nextId++;
  post({ jsonrpc: "2.0", id, method, params });
  return new Promise((resolve, reject) => waiting.set(id, { resolve, reject }));
}
function notify(method, params) { post({ jsonrpc: "2.0", method, params: params || {} }); }
function el(tag, attrs, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") n.textContent = v; else if (k === "class") n.className = v; else n.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) n.append(k);
  return n;
}
function status(text, kind) { const s = $("status"); s.textContent = text; s.className = "status " + (kind || ""); }
function size() {
  const r = document.documentElement.getBoundingClientRect();
  notify("ui/notifications/size-changed", { width: Math.ceil(r.width), height: Math.ceil(r.height) });
}
function render(result) {
  const root = $("card");
  root.replaceChildren();
  const sc = result && result.structuredContent;
  data = sc && typeof sc === "object" ? sc.__KEY__ : null;
  const meta = (result && result._meta && result._meta["__NONCE_KEY__"]) || {};
  nonce = typeof meta.nonce === "string" ? meta.nonce : null;
  if (!data || data.kind !== "held_call") {
    root.append(el("p", { class: "muted", text: "mcp-gatekeeper: no decision is waiting on this call." }));
    size();
    return;
  }
  const canDecide = data.can_decide === true && nonce !== null && data.state === "pending";
  root.append(
    el("header", {}, el("span", { text: "mcp-gatekeeper · held for your approval" }),
      el("span", { class: "chip risk-" + data.risk, text: "risk " + data.risk }),
      el("span", { class: "muted", text: "call " + data.call_id.slice(0, 8) })),
    el("h1", { id: "headline", text: data.headline }),
    el("h2", { text: "Why it was held" }),
    el("ul", {}, ...(data.why || []).map((r) => el("li", { text: r })),
      data.agent_reason ? el("li", { text: "The agent says: " + data.agent_reason }) : null),
    el("h2", { text: "What happens" }),
    el("div", { class: "effects" },
      el("div", { class: "effect" }, el("b", { text: "If approved" }), data.effects.approve),
      el("div", { class: "effect" }, el("b", { text: "If rejected" }), data.effects.reject)),
    el("h2", { text: "Exact arguments" + (canDecide ? " (you can edit them)" : "") }));
  const args = el("textarea", { id: "args", spellcheck: "false", "aria-label": "arguments (JSON)" });
  args.value = data.arguments_json;
  args.readOnly = !canDecide;
  args.addEventListener("input", () => args.classList.toggle("edited", args.value !== data.arguments_json));
  root.append(args);
  if ((data.inexact_numbers || []).length) {
    root.append(el("p", { class: "status error", text: "Some whole numbers here are too large to edit exactly in a browser; decide on the approval page instead." }));
  }
  if (data.schema) {
    root.append(el("details", {}, el("summary", { class: "muted", text: "the tool's input schema" }),
      el("pre", { text: JSON.stringify(data.schema, null, 2) })));
  }
  if (canDecide) {
    root.append(el("h2", { text: "Your reason (the agent reads it)" }),
      el("input", { id: "reason", type: "text", maxlength: "500" }),
      el("div", { class: "row" },
        el("button", { id: "approve", class: "approve", text: "Approve" }),
        el("button", { id: "reject", class: "reject", text: "Reject" })));
    $("approve").addEventListener("click", () => decide("approve"));
    $("reject").addEventListener("click", () => decide("reject"));
  } else {
    const left = Math.floor(data.seconds_left / 60) + " min " + (data.seconds_left % 60) + " s";
    root.append(el("p", { id: "waiting", text: data.state === "pending"
      ? "Waiting for a decision on the approval page or the command line (" + left + " left). " +
        (data.risk === "critical" ? "A critical call is never decided with a click in the chat." : "Decisions in the chat do not count for this rule.")
      : "This call is " + data.state + "." }));
    const row = el("div", { class: "row" });
    if (data.page_url) {
      const open = el("button", { id: "open-page", text: "Open the approval page" });
      open.addEventListener("click", () => request("ui/open-link", { url: data.page_url }).catch(() => {}));
      row.append(open);
    }
    row.append(el("code", { text: data.cli }));
    root.append(row);
  }
  root.append(el("div", { id: "status", class: "status" }));
  size();
}
let armed = null;
async function decide(decision) {
  if (busy) return;
  // as on the page: a high-risk approval needs a second, separate click
  if (decision === "approve" && data.risk === "high" && armed !== "approve") {
    armed = "approve";
    $("approve").textContent = "Click again to approve";
    status("High risk: check the arguments, then click again to approve.");
    return;
  }
  armed = null;
  if (data.risk === "high") $("approve").textContent = "Approve";
  const text = $("args").value;
  const call = { call_id: data.call_id, nonce, args_digest: data.args_digest, decision };
  const reason = $("reason").value.trim();
  if (reason) call.reason = reason;
  if (decision === "approve" && text !== data.arguments_json) {
    try { call.arguments = JSON.parse(text); } catch (e) { status("The arguments are not valid JSON: " + e.message, "error"); return; }
    if (!call.arguments || typeof call.arguments !== "object" || Array.isArray(call.arguments)) {
      status("The arguments must be a JSON object.", "error"); return;
    }
  }
  busy = true;
  for (const b of document.querySelectorAll("button")) b.disabled = true;
  status(decision === "approve" ? "Approving…" : "Rejecting…");
  let result;
  try {
    result = await request("tools/call", { name: "__TOOL__", arguments: call });
  } catch (e) {
    result = { isError: true, content: [{ type: "text", text: String((e && e.message) || e) }] };
  }
  busy = false;
  const words = (result.content || []).filter((c) => c.type === "text").map((c) => c.text).join(" ");
  if (result.isError) {
    status(words || "The gatekeeper refused this decision.", "error");
    const spent = result.structuredContent && result.structuredContent.nonce_spent;
    if (!spent) for (const b of document.querySelectorAll("button")) b.disabled = false;
    size();
    return;
  }
  status(words, "done");
  $("args").readOnly = true;
  size();
  if (hostCaps.message) {
    const said = decision === "approve" ? "I approved" : "I rejected";
    request("ui/message", { role: "user", content: [{ type: "text",
      text: said + " the held call " + data.call_id.slice(0, 8) + " (" + data.tool + ") in the gatekeeper card. Retry the identical call to get its result." }] }).catch(() => {});
  }
}
window.addEventListener("message", (event) => {
  if (event.source !== window.parent) return;
  const m = event.data;
  if (!m || m.jsonrpc !== "2.0") return;
  if (m.method === undefined && m.id !== undefined) {
    const w = waiting.get(m.id);
    if (!w) return;
    waiting.delete(m.id);
    if (m.error) w.reject(new Error(m.error.message || "error")); else w.resolve(m.result);
    return;
  }
  if (m.method === "ui/notifications/tool-result") render(m.params);
  else if (m.method === "ui/notifications/tool-input" && !data) status("Waiting for the gatekeeper's answer…");
  else if (m.id !== undefined && (m.method === "ui/resource-teardown" || m.method === "ping")) post({ jsonrpc: "2.0", id: m.id, result: {} });
  else if (m.id !== undefined) post({ jsonrpc: "2.0", id: m.id, error: { code: -32601, message: "not supported by this view" } });
});
request("ui/initialize", { appInfo: { name: "mcp-gatekeeper decision card", version: "1" }, appCapabilities: {}, protocolVersion: PROTOCOL })
  .then((r) => { hostCaps = (r && r.hostCapabilities) || {}; notify("ui/notifications/initialized"); size(); })
  .catch(() => status("This host did not start the card.", "error"));
"""

_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'none'"


def card_html() -> str:
    """The view, whole: no external script, style, font or image."""
    js = _JS.replace("__KEY__", CARD_KEY).replace("__NONCE_KEY__", NONCE_META_KEY).replace("__TOOL__", DECIDE_TOOL)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>mcp-gatekeeper decision</title><style>{_CSS}</style></head>"
        "<body><main id=card><p class=muted>mcp-gatekeeper: waiting for the call…</p><div id=status></div></main>"
        f"<script>{_JS_WRAP.format(js=js)}</script></body></html>"
    )


_JS_WRAP = "(function(){{{js}}})();"
