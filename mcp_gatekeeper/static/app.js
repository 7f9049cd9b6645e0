// mcp-gatekeeper approval page. Vanilla JS, no build step, no inline code (CSP: script-src 'self').
// Every value that came from a tool, an argument, an upstream or an agent is put on the page with
// textContent (never innerHTML), and invisible / bidi / control characters become visible badges.
"use strict";

(() => {
  // Shared with gates.js (reviews, leases, tools): helpers, plus hooks run on every live update and tick.
  const GK = (window.GK = { listeners: [], tickers: [] });

  // ------------------------------------------------------------------ DOM helpers

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") el.className = v;
        else if (k === "text") el.textContent = String(v);
        else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
        else if (k === "value") el.value = v;
        else if (k === "checked") el.checked = !!v;
        else if (k === "disabled") el.disabled = !!v;
        else el.setAttribute(k, v === true ? "" : String(v));
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) el.setAttribute(k, String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const $ = (sel, root) => (root || document).querySelector(sel);

  // ------------------------------------------------------------------ suspicious characters

  function charName(cp) {
    const names = { 0x0a: "LF", 0x0d: "CR", 0x09: "TAB", 0x1b: "ESC", 0x00: "NUL", 0x07: "BEL", 0x08: "BS", 0x7f: "DEL" };
    return names[cp];
  }

  function isSuspicious(cp) {
    return (
      (cp < 0x20 && cp !== 0x0a && cp !== 0x09) ||
      (cp >= 0x7f && cp <= 0x9f) ||
      cp === 0x00ad || cp === 0x034f || cp === 0x061c || cp === 0x115f || cp === 0x1160 || cp === 0x180e ||
      (cp >= 0x200b && cp <= 0x200f) ||
      (cp >= 0x2028 && cp <= 0x202e) ||
      (cp >= 0x2060 && cp <= 0x206f) ||
      cp === 0x3164 || cp === 0xfeff || cp === 0xffa0 ||
      (cp >= 0xfff9 && cp <= 0xfffb) ||
      (cp >= 0xe0000 && cp <= 0xe007f) ||
      (cp >= 0xe0100 && cp <= 0xe01ef)
    );
  }

  function badgeLabel(cp) {
    const hex = cp.toString(16).toUpperCase().padStart(4, "0");
    const nm = charName(cp);
    return nm ? `⟨${nm} U+${hex}⟩` : `⟨U+${hex}⟩`;
  }

  // Counts suspicious characters in any JSON value (for the card warning).
  function countSuspicious(value) {
    let n = 0;
    const stack = [value];
    while (stack.length) {
      const v = stack.pop();
      if (typeof v === "string") {
        for (const ch of v) if (isSuspicious(ch.codePointAt(0))) n++;
      } else if (Array.isArray(v)) stack.push(...v);
      else if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) stack.push(k, x);
    }
    return n;
  }

  // A text node sequence with badges for suspicious characters. `jsonEscapes` renders \n and \t as
  // visible escapes (inside JSON strings). Never uses innerHTML.
  function safeText(str, jsonEscapes) {
    const frag = document.createDocumentFragment();
    let buf = "";
    const flush = () => {
      if (buf) frag.appendChild(document.createTextNode(buf));
      buf = "";
    };
    for (const ch of String(str)) {
      const cp = ch.codePointAt(0);
      if (isSuspicious(cp)) {
        flush();
        frag.appendChild(h("span", { class: "uc", title: "invisible or control character", text: badgeLabel(cp) }));
      } else if (jsonEscapes && (ch === "\n" || ch === "\t" || ch === '"' || ch === "\\")) {
        flush();
        const esc = { "\n": "\\n", "\t": "\\t", '"': '\\"', "\\": "\\\\" }[ch];
        frag.appendChild(h("span", { class: "esc", text: esc }));
      } else buf += ch;
    }
    flush();
    return frag;
  }

  // A string with masked secret spans ([start, end) in UTF-16 units). Past `truncAt` characters the
  // middle is folded behind a button that shows it in place: every character stays readable.
  const TRUNC_AT = 4000;
  const KEEP = 1200;
  function richString(str, hits, jsonEscapes, ctx, truncAt) {
    const limit = truncAt || TRUNC_AT;
    const frag = document.createDocumentFragment();
    const pieces = [];
    let pos = 0;
    for (const hit of (hits || []).slice().sort((a, b) => a.start - b.start)) {
      if (hit.start < pos) continue;
      pieces.push({ text: str.slice(pos, hit.start) });
      pieces.push({ text: str.slice(hit.start, hit.end), secret: hit.kind });
      pos = hit.end;
    }
    pieces.push({ text: str.slice(pos) });
    const total = str.length;
    let offset = 0;
    for (const p of pieces) {
      const start = offset;
      offset += p.text.length;
      if (p.secret) {
        if (ctx) ctx.secrets.push(p.secret);
        const btn = h("button", { type: "button", class: "masked", title: "Secret-looking value: click to reveal" },
          "•••••• ", p.secret);
        btn.addEventListener("click", () => btn.replaceWith(safeText(p.text, jsonEscapes)), { once: true });
        frag.appendChild(btn);
        continue;
      }
      if (total > limit) {
        // keep the head and the tail of the whole string, hide the middle
        const headEnd = KEEP;
        const tailStart = total - KEEP;
        const keepHead = p.text.slice(0, Math.max(0, headEnd - start));
        const keepTail = p.text.slice(Math.max(0, tailStart - start));
        if (keepHead.length + keepTail.length < p.text.length) {
          frag.appendChild(safeText(keepHead, jsonEscapes));
          const middle = p.text.slice(keepHead.length, p.text.length - keepTail.length);
          const fold = h("button", { type: "button", class: "trunc", title: "Show the folded middle of this text" },
            `⟨ ${middle.length.toLocaleString()} more characters of ${total.toLocaleString()}: show them ⟩`);
          fold.addEventListener("click", () => fold.replaceWith(safeText(middle, jsonEscapes)), { once: true });
          frag.appendChild(fold);
          if (ctx) ctx.truncated = true;
          frag.appendChild(safeText(keepTail, jsonEscapes));
          continue;
        }
      }
      frag.appendChild(safeText(p.text, jsonEscapes));
    }
    return frag;
  }

  // A call's summary in a list: its secret-looking spans masked (exactly those), the rest as text.
  // `headline` (the server's): the rule's summary, or the tool and its salient arguments in plain words.
  function summaryView(c, fallback) {
    if (c.headline) return richString(c.headline, c.headline_secrets || [], false, null);
    return c.summary ? richString(c.summary, c.summary_secrets || [], false, null) : safeText(fallback);
  }

  // Plain text with each secret span replaced (for places that take no markup, such as notifications).
  function maskedText(str, hits) {
    let out = "", pos = 0;
    for (const hit of (hits || []).slice().sort((a, b) => a.start - b.start)) {
      if (hit.start < pos) continue;
      out += `${str.slice(pos, hit.start)}•••••• ${hit.kind}`;
      pos = hit.end;
    }
    return out + str.slice(pos);
  }

  // ------------------------------------------------------------------ JSON view

  function samePath(a, b) {
    return a.length === b.length && a.every((x, i) => String(x) === String(b[i]));
  }

  // `exact`: whole numbers a browser rounds ([{path, exact}] from the server), shown with their real digits.
  function jsonView(value, secretHits, ctx, exact) {
    const pre = h("pre", { class: "json" });
    const hitsAt = (path) => (secretHits || []).filter((x) => samePath(x.path, path));
    const exactAt = (path) => (exact || []).find((x) => samePath(x.path, path));
    const walk = (v, path, indent) => {
      const pad = "  ".repeat(indent);
      if (v === null || typeof v === "boolean") return h("span", { class: "j-lit", text: String(v) });
      if (typeof v === "number") {
        const x = exactAt(path);
        return x ? h("span", { class: "j-num exact", title: "Exact value (too large for the browser's numbers)" }, safeText(x.exact)) : h("span", { class: "j-num", text: String(v) });
      }
      if (typeof v === "string" && v.includes("\n")) {
        // multi-line text reads as text: its real line breaks, wrapped, scrollable, every character there
        const lines = v.split("\n").length;
        return h("span", { class: "j-str j-text" },
          h("span", { class: "j-note", text: `text · ${lines} lines · ${v.length.toLocaleString()} characters` }),
          h("span", { class: "j-block", tabindex: "0", role: "region", "aria-label": `Text of ${path.join(".") || "the value"}` },
            richString(v, hitsAt(path), false, ctx, 200000)));
      }
      if (typeof v === "string") {
        return h("span", { class: "j-str" }, '"', richString(v, hitsAt(path), true, ctx), '"');
      }
      const isArr = Array.isArray(v);
      const entries = isArr ? v.map((x, i) => [i, x]) : Object.entries(v);
      if (!entries.length) return h("span", { class: "j-punc", text: isArr ? "[]" : "{}" });
      const out = [h("span", { class: "j-punc", text: isArr ? "[" : "{" }), "\n"];
      entries.forEach(([k, x], i) => {
        out.push(pad + "  ");
        if (!isArr) out.push(h("span", { class: "j-key" }, '"', safeText(k, true), '"'), h("span", { class: "j-punc", text: ": " }));
        out.push(walk(x, path.concat([k]), indent + 1));
        if (i < entries.length - 1) out.push(h("span", { class: "j-punc", text: "," }));
        out.push("\n");
      });
      out.push(pad, h("span", { class: "j-punc", text: isArr ? "]" : "}" }));
      return h("span", null, out);
    };
    pre.appendChild(walk(value, [], 0));
    return pre;
  }

  // ------------------------------------------------------------------ tiny JSON Schema check (the server re-checks)

  function typeOf(v) {
    if (v === null) return "null";
    if (Array.isArray(v)) return "array";
    if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
    return typeof v;
  }

  function typeMatches(v, t) {
    const actual = typeOf(v);
    return actual === t || (t === "number" && actual === "integer");
  }

  function validate(schema, value, path, errors) {
    if (!schema || typeof schema !== "object") return errors;
    const at = path.length ? path.join(".") : "(arguments)";
    if (schema.type) {
      const types = Array.isArray(schema.type) ? schema.type : [schema.type];
      if (!types.some((t) => typeMatches(value, t))) {
        errors.push(`${at}: expected ${types.join(" or ")}, got ${typeOf(value)}`);
        return errors;
      }
    }
    if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) {
      errors.push(`${at}: must be one of ${schema.enum.map((e) => JSON.stringify(e)).join(", ")}`);
    }
    if ("const" in schema && JSON.stringify(schema.const) !== JSON.stringify(value)) errors.push(`${at}: must be ${JSON.stringify(schema.const)}`);
    if (typeof value === "number") {
      if (typeof schema.minimum === "number" && value < schema.minimum) errors.push(`${at}: must be ≥ ${schema.minimum}`);
      if (typeof schema.maximum === "number" && value > schema.maximum) errors.push(`${at}: must be ≤ ${schema.maximum}`);
      if (typeof schema.exclusiveMinimum === "number" && value <= schema.exclusiveMinimum) errors.push(`${at}: must be > ${schema.exclusiveMinimum}`);
      if (typeof schema.exclusiveMaximum === "number" && value >= schema.exclusiveMaximum) errors.push(`${at}: must be < ${schema.exclusiveMaximum}`);
    }
    if (typeof value === "string") {
      const n = [...value].length;
      if (typeof schema.minLength === "number" && n < schema.minLength) errors.push(`${at}: at least ${schema.minLength} characters`);
      if (typeof schema.maxLength === "number" && n > schema.maxLength) errors.push(`${at}: at most ${schema.maxLength} characters`);
      if (typeof schema.pattern === "string") {
        try {
          if (!new RegExp(schema.pattern, "u").test(value)) errors.push(`${at}: must match ${schema.pattern}`);
        } catch (_) { /* the server checks patterns JS cannot compile */ }
      }
    }
    if (Array.isArray(value)) {
      if (typeof schema.minItems === "number" && value.length < schema.minItems) errors.push(`${at}: at least ${schema.minItems} items`);
      if (typeof schema.maxItems === "number" && value.length > schema.maxItems) errors.push(`${at}: at most ${schema.maxItems} items`);
      if (schema.items && typeof schema.items === "object") value.forEach((x, i) => validate(schema.items, x, path.concat([i]), errors));
    }
    if (typeOf(value) === "object") {
      for (const r of schema.required || []) if (!(r in value)) errors.push(`${at}: '${r}' is required`);
      const props = schema.properties || {};
      for (const [k, x] of Object.entries(value)) {
        if (props[k]) validate(props[k], x, path.concat([k]), errors);
        else if (schema.additionalProperties === false) errors.push(`${at}: '${k}' is not allowed by the tool's schema`);
        else if (schema.additionalProperties && typeof schema.additionalProperties === "object") validate(schema.additionalProperties, x, path.concat([k]), errors);
      }
    }
    return errors;
  }

  // ------------------------------------------------------------------ diff

  // Each leaf under a path that names it unambiguously: `a.b` is key b inside a, `["a.b"]` the key "a.b",
  // `a[0]` an array item (so {"a.b": 1} and {"a": {"b": 1}}, or [1] and {"0": 1}, never compare equal).
  function flatten(v, path, out) {
    if (Array.isArray(v) && v.length) v.forEach((x, i) => flatten(x, `${path}[${i}]`, out));
    else if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) {
      for (const [k, x] of Object.entries(v)) flatten(x, /^[A-Za-z_$][A-Za-z0-9_$-]*$/.test(k) ? (path ? `${path}.${k}` : k) : `${path}[${JSON.stringify(k)}]`, out);
    } else out.set(path, JSON.stringify(v));
    return out;
  }

  function diffList(before, after) {
    const a = flatten(before, "", new Map());
    const b = flatten(after, "", new Map());
    const items = [];
    for (const [k, v] of a) {
      if (!b.has(k)) items.push({ path: k, was: v, now: null });
      else if (b.get(k) !== v) items.push({ path: k, was: v, now: b.get(k) });
    }
    for (const [k, v] of b) if (!a.has(k)) items.push({ path: k, was: null, now: v });
    return items;
  }

  // Two long values that differ in a small part: that part with some context, the unchanged rest elided
  // ("…"), never cutting a character in half. Short values are shown whole.
  const DIFF_WHOLE = 160;
  const DIFF_CONTEXT = 40;
  function clipPair(was, now) {
    if (was === null || now === null || (was.length <= DIFF_WHOLE && now.length <= DIFF_WHOLE)) return [was, now];
    let p = 0;
    while (p < was.length && p < now.length && was[p] === now[p]) p++;
    let q = 0;
    while (q < was.length - p && q < now.length - p && was[was.length - 1 - q] === now[now.length - 1 - q]) q++;
    let start = Math.max(0, p - DIFF_CONTEXT);
    let tail = Math.max(0, q - DIFF_CONTEXT);
    const low = (x, i) => i > 0 && i < x.length && x.charCodeAt(i) >= 0xdc00 && x.charCodeAt(i) <= 0xdfff;
    while (low(was, start) || low(now, start)) start--;
    while (low(was, was.length - tail) || low(now, now.length - tail)) tail--;
    const cut = (x) => `${start ? "…" : ""}${x.slice(start, x.length - tail)}${tail ? "…" : ""}`;
    return [cut(was), cut(now)];
  }

  function diffView(items) {
    return h("ul", { class: "diff", "aria-label": "What changed" },
      items.map((d) => {
        const [was, now] = clipPair(d.was, d.now);
        return h("li", null,
          h("span", { class: "path" }, safeText(d.path || "(arguments)")), "  ",
          was !== null ? h("span", { class: "was" }, safeText(was)) : h("span", { class: "muted", text: "(added)" }),
          "  →  ",
          now !== null ? h("span", { class: "now" }, safeText(now)) : h("span", { class: "muted", text: "(removed)" }));
      }));
  }

  // ------------------------------------------------------------------ formatting

  function dur(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const sgn = seconds < 0 ? "-" : "";
    let t = Math.abs(Math.round(seconds));
    if (t < 60) return `${sgn}${t}s`;
    const d = Math.floor(t / 86400); t -= d * 86400;
    const hh = Math.floor(t / 3600); t -= hh * 3600;
    const m = Math.floor(t / 60); const sec = t - m * 60;
    if (d) return `${sgn}${d}d ${hh}h`;
    if (hh) return `${sgn}${hh}h ${m}m`;
    return `${sgn}${m}m ${String(sec).padStart(2, "0")}s`;
  }
  const fmtTime = (ts) => (ts ? new Date(ts * 1000).toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "–");
  const fmtBytes = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1048576).toFixed(2)} MB`);
  const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`);
  const shortId = (id) => id.slice(0, 8);

  function icon(ch) {
    return h("span", { class: "ico", "aria-hidden": "true", text: ch });
  }

  function riskChip(risk) {
    return h("span", { class: `chip risk-${risk}`, title: "Risk level" }, safeText(risk));
  }
  const STATE_MARK = { rolled_back: "↺ ", rollback_failed: "✗ ", rolling_back: "↺ ", confirmed: "✓ ", under_review: "◔ " };
  function stateChip(state, modified) {
    return h("span", null,
      h("span", { class: `chip st-${state}` }, STATE_MARK[state] || "", safeText(state.replace("_", " "))),
      modified ? [" ", h("span", { class: "chip modified", text: "modified" })] : null);
  }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
    }
  }

  // The session's page key: the cookie alone opens nothing (a page on another port of this host receives the
  // cookie too, never this origin's localStorage). It arrives once, in the login redirect's fragment.
  const KEY_ITEM = "gk-page-key";
  function takePageKey() {
    // `&call=<id>`: the login followed a notification's short link (/c/…): open that call's card
    const m = /^#key=([A-Za-z0-9_-]{20,100})(?:&call=([0-9a-f]{26}))?$/.exec(location.hash);
    if (!m) return;
    localStorage.setItem(KEY_ITEM, m[1]);
    history.replaceState(null, "", location.pathname + (m[2] ? `#/call/${m[2]}` : "#/queue"));
  }
  function pageKey() { return localStorage.getItem(KEY_ITEM) || ""; }
  function keyed(path) { return `${path}${path.includes("?") ? "&" : "?"}key=${encodeURIComponent(pageKey())}`; }

  async function api(path, opts) {
    const init = { credentials: "same-origin", headers: { Accept: "application/json", "X-Gatekeeper-Key": pageKey() }, ...(opts || {}) };
    if (init.json !== undefined) {
      init.method = init.method || "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(init.json);
      delete init.json;
    }
    const r = await fetch(path, init);
    let body = null;
    try { body = await r.json(); } catch (_) { body = null; }
    if (!r.ok) {
      if (r.status === 401) showLogin();
      throw new ApiError(r.status, body);
    }
    return body;
  }

  // ------------------------------------------------------------------ app state

  const state = {
    me: null,
    offset: 0, // server clock minus local clock, seconds
    pending: [],
    reviews: [], // audit-gated calls under review or unreviewed
    rollbackFailed: [], // failed reviews whose undo failed: a human must act
    quarantined: [], // tools whose definition changed since it was pinned
    known: null, // ids seen so far (for "new call" alerts)
    selected: null,
    view: "queue",
    card: null, // the open card's controller
  };
  const serverNow = () => Date.now() / 1000 + state.offset;

  function toast(msg, bad) {
    const t = $("#toast");
    t.textContent = msg;
    t.className = bad ? "toast bad" : "toast";
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 6000 : 3000);
  }

  function setTitle() {
    const n = state.pending.length;
    document.title = n ? `(${n}) mcp-gatekeeper` : "mcp-gatekeeper";
    const counts = [["#nav-count", n], ["#nav-review", state.reviews.length + state.rollbackFailed.length], ["#nav-tools", state.quarantined.length]];
    for (const [sel, k] of counts) {
      const c = $(sel);
      c.textContent = String(k);
      c.hidden = k === 0;
    }
    $("#nav-review").classList.toggle("alarm", state.rollbackFailed.length > 0);
  }

  function showLogin(why) {
    if (source) { source.close(); source = null; }
    if (document.body.dataset.mode === "team") { location.assign(why ? "/login?ended=1" : "/login"); return; }
    const app = $("#app");
    $("#whoami").textContent = "";
    app.replaceChildren(h("div", { class: "login-box" },
      h("h1", { text: "Log in to review held calls" }),
      why ? h("p", { class: "signed-out-why", text: why }) : null,
      h("p", null, "Run ", h("code", { text: "mcp-gatekeeper login" }), " in a terminal and open the one-time link it prints. It works whichever gatekeeper process serves this page."),
      h("p", { text: "Scripts can use the API with Authorization: Bearer and the token in the gatekeeper's data directory (ui-token)." })));
    $("#live").className = "live off";
    $("#live").textContent = "signed out";
  }

  // ------------------------------------------------------------------ live updates (SSE)

  let source = null;
  function connect() {
    if (source) source.close();
    source = new EventSource(keyed("/api/events"));
    const live = $("#live");
    source.addEventListener("open", () => { live.className = "live on"; live.textContent = "live"; });
    source.addEventListener("error", () => { live.className = "live off"; live.textContent = "reconnecting"; });
    source.addEventListener("store_error", () => { live.className = "live off"; live.textContent = "store unavailable"; });
    source.addEventListener("signed_out", () => showLogin("This session has ended (logged out, revoked, or expired)."));
    source.addEventListener("change", (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch (_) { return; }
      live.className = "live on";
      live.textContent = "live";
      state.offset = data.now - Date.now() / 1000;
      const fresh = state.known ? data.pending.filter((c) => !state.known.has(c.id)) : [];
      state.known = new Set([...(state.known || []), ...data.pending.map((c) => c.id)]);
      if (data.team) for (const c of data.pending) { c.host = data.team.hosts[c.id] || null; c.approvals = data.team.approvals[c.id] || null; }
      state.pending = data.pending;
      state.reviews = data.reviews || [];
      state.rollbackFailed = data.rollback_failed || [];
      state.quarantined = data.quarantined || [];
      state.problems = data.problems || [];
      setTitle();
      if (fresh.length) alertNew(fresh);
      if (state.view === "queue") { renderBanners(); renderQueueList(); }
      const card = state.card;
      if (card && card.pending) {
        const mine = data.pending.find((c) => c.id === card.id);
        if (!mine) card.refresh();
        else card.escalated(mine.escalation || 0, mine.deadline_at);
      } else if (card && card.reviewable && !state.reviews.some((c) => c.id === card.id)) card.refresh();
      for (const fn of [...GK.listeners]) fn(data); // a copy: a listener may remove itself
    });
  }

  function alertNew(calls) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    for (const c of calls.slice(0, 3)) {
      try {
        const n = new Notification(`Held (${c.risk}): ${c.upstream} · ${c.tool}`, { body: c.headline ? maskedText(c.headline, c.headline_secrets) : c.summary ? maskedText(c.summary, c.summary_secrets) : "A tool call is waiting for your decision", tag: c.id });
        n.onclick = () => { window.focus(); location.hash = `#/queue/${c.id}`; };
      } catch (_) { /* notifications unavailable */ }
    }
  }

  function setupNotifyButton() {
    const b = $("#notify-btn");
    if (!("Notification" in window) || Notification.permission !== "default") return;
    b.hidden = false;
    b.addEventListener("click", async () => {
      try { await Notification.requestPermission(); } catch (_) { /* ignored */ }
      b.hidden = Notification.permission !== "default";
    });
  }

  // ------------------------------------------------------------------ queue view

  let queueRoot = null;
  // ------------------------------------------------------------------ queue: search, filters, bulk, next

  // what the reviewer narrowed the queue to, the calls picked for a bulk decision, and "open the next call"
  const queueUi = { text: "", risk: "", who: "", group: "", picked: new Set(), next: false, decidedHere: null, order: [] };
  try { queueUi.next = localStorage.getItem("gk-open-next") === "1"; } catch (_) { /* storage off: default */ }

  function visiblePending() {
    const t = queueUi.text.trim().toLowerCase();
    const shown = state.pending.filter((c) => (!queueUi.risk || c.risk === queueUi.risk)
      && (!queueUi.who || `host:${c.host || ""}` === queueUi.who || `agent:${c.principal || ""}` === queueUi.who)
      && (!t || `${c.upstream} ${c.tool} ${c.summary || ""} ${c.risk} ${c.id} ${c.principal || ""} ${c.host || ""}`.toLowerCase().includes(t)));
    // team mode: group by the gatekeeper's host or the agent (oldest first within a group)
    const key = (c) => (queueUi.group === "host" ? c.host : queueUi.group === "agent" ? c.principal : "") || "";
    return queueUi.group ? shown.map((c, i) => [c, i]).sort((a, b) => key(a[0]).localeCompare(key(b[0])) || a[1] - b[1]).map((x) => x[0]) : shown;
  }

  // the card tells the queue it decided a call here: with "open the next" on, the queue moves on
  GK.decidedHere = (id) => {
    queueUi.decidedHere = id;
    queueUi.picked.delete(id);
    if (!state.pending.some((c) => c.id === id)) renderQueueList();
  };

  function queueTools() {
    const search = h("input", { type: "search", class: "qsearch", placeholder: "Search: tool, upstream, summary…", "aria-label": "Search held calls", value: queueUi.text });
    search.addEventListener("input", () => { queueUi.text = search.value; renderQueueList(); });
    const risk = h("select", { class: "qrisk", "aria-label": "Risk" }, h("option", { value: "", text: "any risk" }),
      ["critical", "high", "medium", "low"].map((r) => h("option", { value: r, text: r })));
    risk.value = queueUi.risk;
    risk.addEventListener("change", () => { queueUi.risk = risk.value; renderQueueList(); });
    const next = h("input", { type: "checkbox", class: "qnext", checked: queueUi.next });
    next.addEventListener("change", () => {
      queueUi.next = next.checked;
      try { localStorage.setItem("gk-open-next", next.checked ? "1" : "0"); } catch (_) { /* not remembered */ }
    });
    const like = h("button", { type: "button", class: "btn small ghost qlike", title: "Pick every listed call to the same tool as the open one", text: "Pick similar" });
    like.addEventListener("click", () => {
      const open = state.pending.find((c) => c.id === state.selected);
      if (!open) return;
      for (const c of visiblePending()) if (c.upstream === open.upstream && c.tool === open.tool) queueUi.picked.add(c.id);
      renderQueueList();
    });
    return h("div", { class: "qtools" }, h("div", { class: "qfilter" }, search, risk, GK.whoFilters ? GK.whoFilters(queueUi, state.pending, renderQueueList) : null),
      h("div", { class: "qopts" }, h("label", { class: "check" }, next, " open the next call after a decision"), like));
  }

  function renderBulk() {
    if (!queueRoot) return;
    const picked = state.pending.filter((c) => queueUi.picked.has(c.id));
    queueRoot.bulk.hidden = !picked.length;
    if (!picked.length) { queueRoot.bulk.replaceChildren(); return; }
    const reason = h("input", { type: "text", class: "reason", placeholder: "Reason for a rejection (the agent reads it)", maxlength: "2000", "aria-label": "Reason for the bulk rejection" });
    const approve = h("button", { type: "button", class: "btn approve small bulk-approve", text: `Review ${picked.length} to approve…` });
    const reject = h("button", { type: "button", class: "btn reject small bulk-reject", text: `Reject ${picked.length}` });
    const clear = h("button", { type: "button", class: "btn ghost small", text: "Clear" });
    clear.addEventListener("click", () => { queueUi.picked.clear(); renderQueueList(); });
    approve.addEventListener("click", () => reviewBulk(picked).catch((e) => toast(e.message, true)));
    reject.addEventListener("click", () => bulkDecide(picked.map((c) => c.id), "reject", reason.value.trim()).catch((e) => toast(e.message, true)));
    queueRoot.bulk.replaceChildren(h("div", { class: "bulk-head" }, h("b", { text: `${picked.length} picked` }), approve, reject, clear), reason);
  }

  // Bulk approval shows every picked call's full arguments first (identical ones grouped); each call is then
  // approved on its own, checked against the digest of the arguments shown here, and audited as usual.
  async function reviewBulk(picked) {
    const records = await Promise.all(picked.map((c) => api(`/api/calls/${encodeURIComponent(c.id)}`)));
    const open = records.filter((r) => r.state === "pending");
    const critical = open.filter((r) => r.risk === "critical");
    const ok = open.filter((r) => r.risk !== "critical");
    const groups = new Map();
    for (const r of ok) {
      const key = `${r.upstream}\u0000${r.tool}\u0000${r.args_digest}`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(r);
    }
    const confirm = h("button", { type: "button", class: "btn approve bulk-confirm", text: `Approve these ${ok.length} call${ok.length === 1 ? "" : "s"}`, disabled: !ok.length });
    const cancel = h("button", { type: "button", class: "btn ghost", text: "Cancel" });
    const sheet = h("section", { class: "panel card bulk-review", "aria-label": "Bulk approval" },
      h("div", { class: "card-head" }, h("h2", { class: "card-title", text: `Approve ${ok.length} call${ok.length === 1 ? "" : "s"}, each on its own` }),
        h("p", { class: "muted", text: "Each is approved exactly as shown here (checked against its digest), and recorded as its own decision." })),
      h("div", { class: "card-body" },
        critical.length ? h("div", { class: "warning bad" }, icon("!"), h("span", { text: `${critical.length} critical call${critical.length > 1 ? "s are" : " is"} left out: decide those one by one.` })) : null,
        [...groups.values()].map((rs) => h("div", { class: "bulk-group" },
          h("div", { class: "qtop" }, riskChip(rs[0].risk), h("span", { class: "where" }, safeText(`${rs[0].upstream} · ${rs[0].tool}`)),
            rs.length > 1 ? h("span", { class: "chip", text: `${rs.length} identical` }) : null),
          h("div", { class: "qsummary" }, summaryView(rs[0], rs[0].tool)),
          jsonView(rs[0].arguments, (rs[0].secrets || {}).arguments, { secrets: [], truncated: false })))),
      h("div", { class: "actions" }, confirm, cancel));
    cancel.addEventListener("click", () => { state.card = null; openCard(state.selected, queueRoot.cardSlot); });
    confirm.addEventListener("click", () => {
      confirm.disabled = true;
      bulkDecide(ok.map((r) => r.id), "approve", "", Object.fromEntries(ok.map((r) => [r.id, r.args_digest]))).catch((e) => toast(e.message, true));
    });
    state.card = { id: state.selected };  // live updates leave the sheet in place (no shortcut acts on it)
    queueRoot.cardSlot.replaceChildren(sheet);
  }

  async function bulkDecide(ids, verb, reason, digests) {
    let done = 0;
    const refused = [];
    for (const id of ids) {
      let digest = digests && digests[id];
      if (!digest) digest = (await api(`/api/calls/${encodeURIComponent(id)}`)).args_digest;
      const payload = { args_digest: digest };
      if (reason) payload.reason = reason;
      try {
        await api(`/api/calls/${encodeURIComponent(id)}/${verb}`, { json: payload });
        done += 1;
        queueUi.picked.delete(id);
      } catch (e) {
        refused.push(`${id.slice(0, 8)}: ${e.message}`);
      }
    }
    toast(`${verb === "approve" ? "Approved" : "Rejected"} ${done}${refused.length ? `; refused ${refused.length} (${refused.join("; ")})` : ""}`, refused.length > 0);
    state.card = null;
    renderQueueList();
  }

  // The URL names the call the card shows: `#/queue/<id>` opens that call (even before the live list has
  // arrived, and even if it is no longer waiting); choosing another call rewrites the URL in place.
  function renderQueue(selectedId) {
    state.view = "queue";
    if (selectedId) state.selected = selectedId;
    else if (!state.pending.some((c) => c.id === state.selected)) state.selected = null;
    queueRoot = {
      banners: h("div", { class: "banners" }),
      list: h("ul", { class: "qlist", role: "listbox", "aria-label": "Held calls, oldest first" }),
      cardSlot: h("div", { class: "card-slot" }),
      count: h("span", { class: "hint" }),
      bulk: h("div", { class: "bulk", hidden: true }),
    };
    $("#app").replaceChildren(queueRoot.banners, h("div", { class: "queue-layout" },
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", { text: "Waiting" }), queueRoot.count),
        queueTools(), queueRoot.bulk,
        queueRoot.list),
      queueRoot.cardSlot));
    renderBanners();
    renderQueueList();
  }

  function renderBanners() {
    if (queueRoot) queueRoot.banners.replaceChildren(...GK.banners());
  }

  function renderQueueList() {
    if (!queueRoot) return;
    const list = visiblePending();
    const all = state.pending.length;
    for (const id of [...queueUi.picked]) if (!state.pending.some((c) => c.id === id)) queueUi.picked.delete(id);
    const shown = list.length === all ? `${all} held` : `${list.length} of ${all} held`;
    queueRoot.count.replaceChildren(all ? `${shown} · oldest first · ` : "", h("kbd", { text: "?" }), " keys");
    if (!list.length) {
      queueRoot.list.replaceChildren(all
        ? h("li", { class: "empty" }, h("div", { text: "No held call matches the search." }))
        : h("li", { class: "empty" }, h("div", { class: "big", text: "✓" }), h("div", { text: "Nothing is waiting. New held calls appear here live." })));
    } else {
      queueRoot.list.replaceChildren(...list.map((c) => {
        const pick = h("input", { type: "checkbox", class: "qpick", checked: queueUi.picked.has(c.id), "aria-label": "Pick for a bulk decision" });
        pick.addEventListener("click", (e) => e.stopPropagation());
        pick.addEventListener("change", () => { if (pick.checked) queueUi.picked.add(c.id); else queueUi.picked.delete(c.id); renderBulk(); });
        const li = h("li", { class: `qitem risk-${c.risk}`, role: "option", tabindex: "0", "data-id": c.id },
          h("div", { class: "qtop" }, pick, riskChip(c.risk), c.escalation ? h("span", { class: "chip escalated", title: `Escalated (step ${c.escalation})`, text: "escalated" }) : null,
            c.quarantined ? h("span", { class: "chip risk-critical", title: "Held because the tool's definition changed since it was pinned", text: "quarantined" }) : null,
            h("span", { class: "where" }, safeText(`${c.upstream} · ${c.tool}`))),
          h("div", { class: "qsummary" }, summaryView(c, `${c.tool} on ${c.upstream}`)),
          c.principal || c.host ? h("div", { class: "who muted mono", title: "The client identity (principal) this call belongs to, and the host of its gatekeeper" }, safeText([c.principal, c.host ? `on ${c.host}` : null].filter(Boolean).join(" "))) : null,
          c.approvals && c.approvals.count ? h("div", { class: "qapprovals muted", text: `approved by ${c.approvals.by.join(", ")}` }) : null,
          h("div", { class: "qtimes" },
            h("span", { class: "waited", "data-since": c.created_at }),
            h("span", { class: "left", "data-deadline": c.deadline_at || "" })),
          h("div", { class: "bar", "data-from": c.created_at, "data-to": c.deadline_at || "" }, h("span")));
        li.addEventListener("click", () => select(c.id));
        li.addEventListener("keydown", (e) => { if (e.key === "Enter") select(c.id); });
        return li;
      }));
    }
    if (queueUi.next && queueUi.decidedHere && queueUi.decidedHere === state.selected && !list.some((c) => c.id === state.selected)) {
      // decided here with "open the next call" on: the call that followed it, else the oldest
      const after = queueUi.order.slice(queueUi.order.indexOf(state.selected) + 1).find((id) => list.some((c) => c.id === id));
      state.selected = after || (list.length ? list[0].id : null);
      queueUi.decidedHere = null;
    }
    queueUi.order = list.map((c) => c.id);
    if (!state.selected && list.length) state.selected = list[0].id;
    if (state.selected) queueHash(state.selected);
    renderBulk();
    markSelected();
    tick();
    if (state.selected && (!state.card || state.card.id !== state.selected)) openCard(state.selected, queueRoot.cardSlot);
    if (!state.selected && !state.card) queueRoot.cardSlot.replaceChildren();
  }

  function markSelected() {
    if (!queueRoot) return;
    for (const li of queueRoot.list.querySelectorAll(".qitem")) li.classList.toggle("sel", li.dataset.id === state.selected);
  }

  // Only ever rewrites a queue URL: a hash naming another view (just typed, its hashchange not yet
  // handled) is left alone.
  function queueHash(id) {
    const want = `#/queue/${encodeURIComponent(id)}`;
    const onQueue = /^(#\/?)?(queue(\/.*)?)?$/.test(location.hash);
    if (state.view === "queue" && onQueue && location.hash !== want) history.replaceState(null, "", want);
  }

  function select(id) {
    // choosing the call already drawn keeps its card: drawing it again would throw away an open confirmation
    // or an edit in progress (and a confirmation opened by `a` in between would vanish under the reviewer)
    const drawn = state.selected === id && state.card && state.card.id === id && state.card.approve;
    state.selected = id;
    queueHash(id);
    markSelected();
    if (queueRoot && !drawn) openCard(id, queueRoot.cardSlot);
    if (window.innerWidth <= 900 && queueRoot) queueRoot.cardSlot.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function move(delta) {
    const ids = visiblePending().map((c) => c.id);
    if (!ids.length) return;
    let i = ids.indexOf(state.selected);
    i = i < 0 ? 0 : Math.min(ids.length - 1, Math.max(0, i + delta));
    select(ids[i]);
    const li = queueRoot && queueRoot.list.querySelector(`[data-id="${ids[i]}"]`);
    if (li) li.scrollIntoView({ block: "nearest" });
  }

  function tick() {
    const now = serverNow();
    for (const el of document.querySelectorAll("[data-since]")) el.textContent = `waiting ${dur(now - Number(el.dataset.since))}`;
    for (const el of document.querySelectorAll("[data-deadline]")) {
      const d = Number(el.dataset.deadline);
      if (!d) { el.textContent = ""; continue; }
      const left = d - now;
      el.textContent = left > 0 ? `${dur(left)} left` : "expiring";
      el.classList.toggle("soon", left < 60);
    }
    for (const el of document.querySelectorAll(".bar[data-to]")) {
      const from = Number(el.dataset.from);
      const to = Number(el.dataset.to);
      if (!to) continue;
      const frac = Math.max(0, Math.min(1, (to - now) / Math.max(1, to - from)));
      el.firstChild.style.width = `${(frac * 100).toFixed(1)}%`;
      el.classList.toggle("soon", to - now < 60);
    }
    for (const el of document.querySelectorAll("[data-left-of]")) {
      const left = Number(el.dataset.leftOf) - now;
      el.replaceChildren("safe default (reject) in ", h("b", { text: left > 0 ? dur(left) : "now" }));
      el.classList.toggle("soon", left < 60);
    }
    for (const el of document.querySelectorAll("[data-waited-of]")) {
      el.replaceChildren("waiting ", h("b", { text: dur(now - Number(el.dataset.waitedOf)) }));
    }
    for (const fn of GK.tickers) fn(now);
  }

  // ------------------------------------------------------------------ decision card

  // The editor has a field per top-level argument when every value is a string, number or boolean (and
  // the schema's properties are such too); anything nested is edited as JSON. Returns [key, schema] pairs.
  function formFields(schema, args) {
    const props = schema && schema.properties && typeof schema.properties === "object" ? schema.properties : {};
    const simple = (p) => p && typeof p === "object" && (["string", "number", "integer", "boolean"].includes(p.type) || Array.isArray(p.enum));
    for (const [k, v] of Object.entries(args)) {
      if (v === null || typeof v === "object" || k === "__proto__") return null;
      if (Object.prototype.hasOwnProperty.call(props, k) && !simple(props[k])) return null;
    }
    const out = Object.entries(props).filter(([, p]) => simple(p));
    for (const [k, v] of Object.entries(args)) {
      if (!Object.prototype.hasOwnProperty.call(props, k)) out.push([k, { type: typeof v === "number" ? "number" : typeof v }]);
    }
    return out;
  }

  // JSON text with every invisible, bidi or control character written as a \uXXXX escape: the text
  // parses back to exactly the same value, and nothing in it hides.
  function escapeSuspicious(text) {
    let out = "";
    for (const ch of text) {
      const cp = ch.codePointAt(0);
      if (!isSuspicious(cp)) { out += ch; continue; }
      for (let i = 0; i < ch.length; i++) out += `\\u${ch.charCodeAt(i).toString(16).toUpperCase().padStart(4, "0")}`;
    }
    return out;
  }

  // How a field's text reads with its hidden characters shown (under the field, whenever it has any).
  function showsAs(value) {
    const n = typeof value === "string" ? countSuspicious(value) : 0;
    return n ? h("div", { class: "shows-as", role: "note" }, icon("!"), h("span", null, `${n} hidden character${n > 1 ? "s" : ""}; it reads: `), h("code", null, safeText(value))) : "";
  }

  function finiteNumbers(v) {
    if (typeof v === "number") return Number.isFinite(v);
    if (v && typeof v === "object") return Object.values(v).every(finiteNumbers);
    return true;
  }

  const isMultiline = (v) => typeof v === "string" && (v.includes("\n") || v.includes("\r") || v.length > 100);

  function buildEditor(call, onChange) {
    const original = call.arguments;
    const schema = call.input_schema || { type: "object" };
    let fieldList = formFields(schema, original);
    let formMode = fieldList !== null;
    const errorsBox = h("ul", { class: "errors", hidden: true });
    const warnBox = h("div");
    const diffBox = h("div");
    const bodySlot = h("div");
    let current = JSON.parse(JSON.stringify(original));
    let parseError = null;
    let first = null;
    // secret-looking values stay masked in the editor too, until the reviewer asks to see them
    const secretHits = ((call.secrets || {}).arguments || []);
    const secretOf = (key) => secretHits.find((x) => x.path.length === 1 && String(x.path[0]) === key);
    let jsonRevealed = !secretHits.length;

    const update = () => {
      const errs = parseError ? [parseError] : validate(schema, current, [], []);
      if (!parseError && !finiteNumbers(current)) errs.unshift("A number is too large for JSON (it would be sent as null).");
      errorsBox.replaceChildren(...errs.slice(0, 8).map((e) => h("li", null, safeText(e))));
      errorsBox.hidden = !errs.length;
      const n = countSuspicious(current);
      warnBox.replaceChildren(n ? h("div", { class: "warning bad", role: "alert" }, icon("!"), h("span", null,
        `These arguments hold ${n} invisible, bidirectional or control character${n > 1 ? "s" : ""}. `,
        formMode ? "Each field that has one shows below it how it really reads." : "They are written as \\uXXXX escapes.")) : "");
      const d = parseError ? [] : diffList(original, current);
      diffBox.replaceChildren(d.length ? diffView(d) : h("p", { class: "muted", text: "No changes yet." }));
      onChange({ valid: !errs.length, changed: d.length > 0, value: current, diff: d });
    };

    function formBody() {
      const body = h("div", { class: "form-grid" });
      const req = new Set(schema.required || []);
      const ids = new Set();
      for (const [key, prop] of fieldList) {
        // one id per field even for names that differ only in characters an id cannot hold ("a.b", "a_b")
        let id = `f-${key.replace(/[^A-Za-z0-9_-]/g, "_")}`;
        for (let n = 2; ids.has(id); n++) id = `f-${key.replace(/[^A-Za-z0-9_-]/g, "_")}-${n}`;
        ids.add(id);
        const val = current[key];
        const note = h("div", { class: "shows-slot" }, showsAs(val));
        let input;
        const set = (v) => {
          if (v === undefined) delete current[key];
          else current[key] = v;
          note.replaceChildren(showsAs(v));
          update();
        };
        if (Array.isArray(prop.enum)) {
          input = h("select", { id },
            h("option", { value: "", text: "(not set)" }),
            prop.enum.map((e, i) => h("option", { value: String(i) }, safeText(typeof e === "string" ? e : JSON.stringify(e)))));
          const idx = prop.enum.findIndex((e) => JSON.stringify(e) === JSON.stringify(val));
          input.value = idx >= 0 ? String(idx) : "";
          input.addEventListener("change", () => set(input.value === "" ? undefined : prop.enum[Number(input.value)]));
        } else if (prop.type === "boolean") {
          input = h("input", { id, type: "checkbox", checked: val === true });
          input.addEventListener("change", () => set(input.checked));
        } else if ((prop.type === "number" || prop.type === "integer") && (val === undefined || typeof val === "number")) {
          input = h("input", { id, type: "number", step: prop.type === "integer" ? "1" : "any", value: val === undefined ? "" : String(val) });
          input.addEventListener("input", () => set(input.value === "" ? undefined : Number(input.value)));
        } else if (isMultiline(val)) {
          // long or multi-line text: a text area showing all of it (an <input> would drop its line breaks)
          const lines = String(val).split("\n").length;
          input = h("textarea", { id, class: "long", rows: String(Math.min(24, Math.max(4, lines + 1))), spellcheck: "false" });
          input.value = val;
          input.addEventListener("input", () => set(input.value));
        } else {
          const str = val === undefined ? "" : String(val);
          input = h("input", { id, type: "text", value: str, spellcheck: "false", autocomplete: "off" });
          input.addEventListener("input", () => set(input.value === "" && val === undefined ? undefined : input.value));
        }
        if (countSuspicious(val)) input.classList.add("suspicious");
        const hit = typeof val === "string" ? secretOf(key) : null;
        if (hit) {
          // masked until revealed: nothing of the value is on the page, and an untouched field keeps it as held
          const reveal = h("button", { type: "button", class: "masked reveal", id, title: "Secret-looking value: click to reveal and edit" }, "•••••• ", hit.kind, " — reveal to edit");
          input.removeAttribute("id");
          const holder = h("div", { class: "field" }, reveal, note);
          reveal.addEventListener("click", () => { input.id = id; holder.replaceChildren(input, note); input.focus(); }, { once: true });
          first = first || reveal;
          body.append(h("label", { for: id, class: req.has(key) ? "req mono" : "mono" }, safeText(key)), holder);
          if (prop.description) body.append(h("div", { class: "desc" }, safeText(prop.description)));
          continue;
        }
        first = first || input;
        body.append(h("label", { for: id, class: req.has(key) ? "req mono" : "mono" }, safeText(key)), h("div", { class: "field" }, input, note));
        if (prop.description) body.append(h("div", { class: "desc" }, safeText(prop.description)));
      }
      return body;
    }

    function jsonBody() {
      if (!jsonRevealed) {
        const n = secretHits.length;
        const reveal = h("button", { type: "button", class: "masked reveal", title: "Show the arguments as JSON, secrets included" },
          `•••••• The arguments hold ${n} secret-looking value${n > 1 ? "s" : ""}: reveal them to edit as JSON`);
        reveal.addEventListener("click", () => { jsonRevealed = true; draw(); first && first.focus(); }, { once: true });
        first = reveal;
        return reveal;
      }
      const body = h("textarea", { rows: "14", spellcheck: "false", class: "json-edit", "aria-label": "Arguments as JSON" });
      body.value = escapeSuspicious(JSON.stringify(current, null, 2));
      body.addEventListener("input", () => {
        try {
          const v = JSON.parse(body.value);
          if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error("the arguments must be a JSON object");
          current = v;
          parseError = null;
        } catch (e) {
          parseError = `Not valid JSON: ${e.message}`;
        }
        update();
      });
      first = body;
      return body;
    }

    const modeBtn = h("button", { type: "button", class: "btn small ghost mode" });
    const draw = () => {
      first = null;
      bodySlot.replaceChildren(formMode ? formBody() : jsonBody());
      modeBtn.textContent = formMode ? "Edit as JSON" : "Edit as fields";
      modeBtn.hidden = fieldList === null || (!formMode && parseError !== null);
      update();
    };
    modeBtn.addEventListener("click", () => {
      if (!formMode && (parseError || formFields(schema, current) === null)) { toast("These arguments cannot be shown as fields; keep editing them as JSON.", true); return; }
      if (!formMode) fieldList = formFields(schema, current);
      formMode = !formMode;
      draw();
    });
    const el = h("div", { class: "editor" },
      h("div", { class: "section-head" }, h("h3", { text: "Edit arguments" }), h("span", { class: "tools" }, modeBtn)),
      warnBox, bodySlot, errorsBox, h("h3", { text: "What changed" }), diffBox);
    draw();
    return { el, focus: () => first && first.focus() };
  }

  // The first sentence of a tool's description (up to 200 characters), for the card's plain words.
  function firstSentence(text) {
    const flat = String(text).split(/\s+/).join(" ").trim();
    const m = /^(.{8,200}?[.!?])(\s|$)/.exec(flat);
    const out = m ? m[1] : flat;
    return out.length > 200 ? `${out.slice(0, 199)}…` : out;
  }

  // The tool's definition as its upstream gave it: in the upstream's own words (they can be wrong, or
  // written to steer the agent), with hidden characters as badges.
  function toolDefinition(call) {
    const t = call.tool_definition;
    if (!t) return h("details", { class: "tooldef" }, h("summary", { text: "The tool's definition" }), h("p", { class: "muted", text: "Not known: the gatekeeper has not seen this tool listed by its upstream." }));
    const ann = t.annotations && typeof t.annotations === "object" ? Object.entries(t.annotations) : [];
    return h("details", { class: "tooldef", open: !call.summary ? true : undefined },
      h("summary", null, "The tool's definition, from upstream ", h("code", null, safeText(call.upstream)),
        t.as_called ? null : h("span", { class: "chip neutral", title: "The call was made under another (or an unknown) version of the definition", text: "current version" })),
      t.title ? h("p", null, h("b", null, safeText(t.title))) : null,
      h("div", { class: "desc-text" }, t.description ? richString(String(t.description), [], false, null, 20000) : h("span", { class: "muted", text: "The tool has no description." })),
      ann.length ? h("div", { class: "ann" }, ann.map(([k, v]) => h("span", { class: "chip neutral" }, safeText(`${k}: ${JSON.stringify(v)}`)))) : null,
      t.input_schema ? [h("h3", { text: "Input schema" }), jsonView(t.input_schema, [], null)] : null);
  }

  function fact(title, ...content) {
    return h("div", { class: "fact" }, h("h3", { text: title }), ...content);
  }

  const REVIEWABLE = ["under_review", "unreviewed"];

  // How deliberate an approval must be, in proportion to what it risks: 0 one action; 1 a second,
  // separate confirmation (high risk, or not reversible); 2 typing the tool's name (critical risk).
  function confirmLevel(call) {
    if (call.risk === "critical") return 2;
    if (call.risk === "high" || (call.effects && call.effects.reversible === false)) return 1;
    return 0;
  }

  // What a failed review does, in words (the rule's compensation, or nothing).
  function undoWords(call) {
    const rv = call.review || {};
    if (rv.compensate) return ["Fail it and ", h("code", null, safeText(rv.compensate.tool)), " runs on ", h("code", null, safeText(rv.compensate.upstream)), " to undo it (retried with backoff; you are alerted if every attempt fails)."];
    if (rv.irreversible_ok) return ["Nothing can undo it: its rule accepts that it is irreversible. Failing it records that it needs a human (rollback failed)."];
    return ["Its rule is no longer in the policy, so it is not known how to undo it."];
  }

  function renderCard(call, slot, opts) {
    const pending = call.state === "pending";
    const reviewable = REVIEWABLE.includes(call.state);
    const audited = call.gate === "audit";
    const rv = call.review || null;
    const q = call.quarantine || null;
    const ctx = { secrets: [], truncated: false };
    const sec = call.secrets || {};
    const strHits = (field) => (sec[field] || []).filter((x) => x.path.length === 0);
    const argsView = jsonView(call.arguments, sec.arguments, ctx, call.inexact_numbers);
    const tdef = call.tool_definition || null;
    const susp = countSuspicious([call.arguments, call.headline, call.tool, call.upstream, call.agent_reason, call.modified_arguments, tdef && tdef.description, tdef && tdef.title]);
    const code = (v) => h("code", null, safeText(v));

    const warnings = [];
    if (call.state === "rollback_failed") {
      warnings.push(h("div", { class: "warning crit", role: "alert" }, icon("!"), h("span", null, h("b", { text: "Rollback failed: a human must undo this call by hand. " }),
        rv && rv.compensate ? ["The compensation ", code(rv.compensate.tool), " on ", code(rv.compensate.upstream), ` did not succeed${rv.attempts ? ` (${rv.attempts} attempt${rv.attempts > 1 ? "s" : ""})` : ""}.`]
          : "No compensation is configured for its rule, so nothing undid it.",
        call.error ? [" Last error: ", richString(call.error, strHits("error"), false, ctx)] : "")));
    } else if (call.state === "rolled_back") {
      warnings.push(h("div", { class: "warning ok" }, icon("↺"), h("span", null, h("b", { text: "Rolled back. " }), "The review failed and the compensation undid the call", rv && rv.compensate ? [" (", code(rv.compensate.tool), ")"] : "", ".")));
    } else if (call.state === "review_failed" || call.state === "rolling_back") {
      warnings.push(h("div", { class: "warning" }, icon("↺"), h("span", null, h("b", { text: call.state === "rolling_back" ? "Undoing it now. " : "Review failed; undo pending. " }),
        "The compensation runs in the gatekeeper process connected to ", code(call.upstream), ".", call.error ? [" Last attempt: ", richString(call.error, strHits("error"), false, ctx)] : "")));
    }
    if (reviewable) {
      warnings.push(h("div", { class: `warning ${rv && !rv.compensate ? "bad" : "info"}` }, icon("i"), h("span", null, h("b", { text: "This call already ran (audit gate). " }),
        rv && rv.compensate ? "Confirm it if it was right, or fail it to undo it." : "Confirm it if it was right. Failing it cannot undo it.")));
    }
    if (q) {
      warnings.push(h("div", { class: "warning bad", role: "alert" }, icon("!"), h("span", null, h("b", { text: "Held because the tool's definition changed since it was pinned. " }),
        "A changed description or schema can steer the agent. Check the change below before approving. ",
        q.still_quarantined ? h("a", { href: "#/tools", text: "Review the tool →" }) : h("span", { class: "muted", text: "(it has been re-pinned since)" }))));
    }
    const escSlot = h("div", { class: "esc-slot" });
    if (susp) warnings.push(h("div", { class: "warning bad", role: "alert" }, icon("!"), h("span", null, `Contains ${susp} invisible, bidirectional or control character${susp > 1 ? "s" : ""}, shown as ⟨U+…⟩ badges. What you see may not be what runs.`)));
    if (ctx.secrets.length) warnings.push(h("div", { class: "warning" }, icon("*"), h("span", null, `Masked ${ctx.secrets.length} secret-looking value${ctx.secrets.length > 1 ? "s" : ""} (${[...new Set(ctx.secrets)].join(", ")}) going to upstream `, h("code", null, safeText(call.upstream)), ". Click to reveal.")));
    if (ctx.truncated || call.args_bytes > 200000) warnings.push(h("div", { class: "warning" }, icon("…"), h("span", null, `Large arguments (${fmtBytes(call.args_bytes)}): very long values are folded in the middle; click ⟨ … show them ⟩ to read the rest.`)));
    const inexact = call.inexact_numbers || [];
    if (inexact.length) warnings.push(h("div", { class: "warning bad", role: "alert" }, icon("!"), h("span", null,
      `${inexact.length > 1 ? `${inexact.length} numbers` : "A number"} too large for this page to show exactly: `,
      inexact.slice(0, 5).map((x, i) => [i ? ", " : "", h("code", null, safeText(x.path.join(".") || "(arguments)")), " is ", h("b", null, safeText(x.exact))]),
      ". The arguments below show the exact digits; editing is off for this call.")));
    if (pending && call.effects && call.effects.reversible === false) warnings.push(h("div", { class: "warning bad" }, icon("!"), h("span", { text: "Not reversible: once approved, this cannot be undone." })));

    const effects = call.effects || {};
    const agentReason = call.agent_reason
      ? h("p", null, "“", richString(call.agent_reason, strHits("agent_reason"), false, ctx), "”")
      : h("p", { class: "muted", text: "The agent gave no reason." });
    const conf = typeof call.agent_confidence === "number"
      ? h("span", { class: "confidence" }, "confidence", h("span", { class: "bar" }, h("span", { "data-w": call.agent_confidence })), h("b", { text: pct(call.agent_confidence) }))
      : null;
    const client = call.client || {};
    const clientName = [client.name, client.version].filter(Boolean).join(" ");

    let clock;
    if (pending) clock = h("div", { class: "clock" }, h("span", { "data-waited-of": call.created_at }), call.deadline_at ? h("span", { "data-left-of": call.deadline_at }) : null);
    else if (audited) {
      clock = h("div", { class: "clock" }, h("span", null, "ran ", h("b", { text: fmtTime(call.created_at) })),
        call.state === "under_review" && call.deadline_at ? h("span", { "data-review-left-of": call.deadline_at })
          : call.state === "unreviewed" ? h("span", null, "window closed ", h("b", { text: fmtTime(call.deadline_at) }), " · kept, flagged unreviewed; you can still review it") : null);
    } else clock = h("div", { class: "clock" }, h("span", null, "held ", h("b", { text: fmtTime(call.created_at) })));

    const head = h("div", { class: "card-head" },
      h("div", { class: "card-meta" }, riskChip(call.risk), stateChip(call.state, call.modified_arguments !== null),
        h("span", { class: "mono" }, safeText(call.upstream)), "·", h("span", { class: "mono" }, safeText(call.tool)),
        call.rule ? ["·", h("span", null, "rule ", h("span", { class: "mono" }, safeText(call.rule)))] : ["·", h("span", { text: "no rule (defaults)" })],
        h("span", { class: "muted mono", title: call.id, text: `#${shortId(call.id)}` })),
      h("div", { class: "card-title" }, call.headline ? richString(call.headline, call.headline_secrets || [], false, ctx) : safeText(`${call.tool} on ${call.upstream}`)),
      GK.teamBanner ? GK.teamBanner(call) : null,
      call.held_summary ? h("div", { class: "held-as" }, "Held as “", richString(call.held_summary, strHits("held_summary"), false, ctx), "”; the title above is what ran, with the reviewer's changes.") : null,
      !call.summary && tdef && tdef.description ? h("div", { class: "tool-says" }, h("span", { class: "lbl", text: "The tool says it does: " }), safeText(firstSentence(tdef.description))) : null,
      clock,
      h("div", { class: "warnings" }, warnings, escSlot));

    const reversibleChip = h("span", { class: effects.reversible === false ? "chip risk-high" : effects.reversible === true ? "chip risk-low" : "chip neutral",
      text: effects.reversible === true ? "reversible" : effects.reversible === false ? "not reversible" : "reversibility unknown" });
    const whatHappens = audited && !reviewable ? null : audited
      ? h("div", { class: "fact what" }, h("div", { class: "section-head" }, h("h3", { text: "What a review does" }),
          h("span", { class: rv && rv.compensate ? "chip risk-low" : "chip risk-high", text: rv && rv.compensate ? "can be undone" : "cannot be undone" })),
        h("div", { class: "effects" },
          h("div", { class: "effect if-approve" }, h("span", { class: "lbl", text: "If confirmed" }), "It stays as it is; the audit log records who confirmed it."),
          h("div", { class: "effect if-reject" }, h("span", { class: "lbl", text: "If failed" }), undoWords(call))),
        rv ? h("p", { class: "sub muted" }, rv.on_timeout === "rollback" ? "If nobody reviews it in its window, it is rolled back." : "If nobody reviews it in its window, it is kept and flagged unreviewed.") : null)
      : h("div", { class: "fact what" }, h("div", { class: "section-head" }, h("h3", { text: "What happens" }), reversibleChip),
        h("div", { class: "effects" },
          h("div", { class: "effect if-approve" }, h("span", { class: "lbl", text: "If approved" }), safeText(effects.approve || `${call.tool} runs on ${call.upstream} with the arguments below.`)),
          h("div", { class: "effect if-reject" }, h("span", { class: "lbl", text: "If rejected" }), safeText(effects.reject || "Nothing runs; the agent is told it was rejected, with your reason."))));
    const reasons = (call.reasons || []).map((r, i) => (i === 0 && q ? q.message : r));
    const facts = h("div", { class: "facts" },
      fact("Why the agent wants it", agentReason, conf,
        h("p", { class: "sub" }, "via ", h("b", null, safeText(clientName || "unknown client")), " → upstream ", h("code", null, safeText(call.upstream))),
        h("p", { class: "sub principal" }, "as ", h("code", { title: "The client identity (principal) this call belongs to: an authenticated HTTP agent, or the OS user and client name on stdio" }, safeText(client.principal || "no principal recorded")))),
      reasons.length ? fact(audited ? "Why it needs review" : "Why it was held", h("ul", { class: "hint-list" }, reasons.map((r) => h("li", null, safeText(r))))) : null,
      GK.shadowFact ? GK.shadowFact(call) : null);

    const editorSlot = h("div");
    const leaseSlot = h("div");
    const argsHead = h("div", { class: "section-head" }, h("h3", { text: audited ? "Arguments (what ran)" : "Arguments" }),
      h("span", { class: "tools" }, fmtBytes(call.args_bytes || 0), " · digest ", h("code", { text: call.args_digest.slice(0, 12) })));

    const body = h("div", { class: "card-body" }, whatHappens, facts,
      q ? h("div", { class: "quarantine-diff" }, h("div", { class: "section-head" }, h("h3", { text: "What changed in the tool's definition" })), GK.unifiedDiff(q.diff)) : null,
      h("div", null, argsHead, argsView), editorSlot, leaseSlot, toolDefinition(call));
    if (call.modified_arguments) {
      body.append(h("div", null, h("div", { class: "section-head" }, h("h3", { text: "Modified arguments (what ran)" })),
        jsonView(call.modified_arguments, sec.modified_arguments, ctx), h("div", { class: "stack-v" }, diffView(diffList(call.arguments, call.modified_arguments)))));
    }
    if (audited && !(opts && opts.full)) {
      body.append(h("div", null, h("div", { class: "section-head" }, h("h3", { text: "What it returned" })), GK.resultView(call.result, sec.result, ctx)));
    }

    const card = h("article", { class: `panel card${call.state === "rollback_failed" ? " alarm" : ""}`, "aria-label": "Decision card" }, head, body);
    let ctrl = { id: call.id, pending, reviewable, refresh: () => openCard(call.id, slot, opts), escalated: () => {} };

    if (pending) {
      let editor = null;
      let leaseEd = null;
      let editState = { valid: true, changed: false, value: null, diff: [] };
      let armed = null; // the open confirmation: what it approves
      const level = confirmLevel(call);
      const approveBtn = h("button", { type: "button", class: "btn approve", title: level ? "Approve: asks you to confirm (a)" : "Approve as shown (a)" }, level ? "Approve… " : "Approve ", h("kbd", { text: "a" }));
      const modifyBtn = h("button", { type: "button", class: "btn modify", title: "Edit the arguments, then approve (e)" }, "Edit ", h("kbd", { text: "e" }));
      const offer = call.lease_offer || {};
      const leaseBtn = offer.offered
        ? h("button", { type: "button", class: "btn similar", title: "Approve, and let similar calls run without asking for a while" }, "Allow similar…")
        : null;
      const reason = h("input", { type: "text", class: "reason", placeholder: "Reason (optional; the agent reads it)", maxlength: "2000", "aria-label": "Reason" });
      const rejectBtn = h("button", { type: "button", class: "btn reject", title: "Reject (r)" }, "Reject ", h("kbd", { text: "r" }));
      const confirmSlot = h("div", { class: "confirm-slot" });
      const busy = (b) => { for (const x of [approveBtn, modifyBtn, rejectBtn, leaseBtn]) if (x) x.disabled = b; };

      const send = async (kind, args, lease) => {
        // team mode: a quorum's round may approve a reviewer's edit; what you approve is what the card shows
        const proposal = call.team && call.team.approvals && call.team.approvals.count ? call.team.approvals.proposal_digest : null;
        const payload = { args_digest: proposal || call.args_digest };
        if (reason.value.trim()) payload.reason = reason.value.trim();
        if (args) payload.arguments = args;
        if (lease) payload.lease = lease;
        busy(true);
        try {
          if (kind !== "reject" && call.confirm === "passkey") payload.passkey = await GK.passkeyAssertion(call, args);
          const res = await api(`/api/calls/${encodeURIComponent(call.id)}/${kind === "reject" ? "reject" : "approve"}`, { json: payload });
          if (res && res.decided === false && res.approvals) {
            toast(`Your approval counts: ${res.approvals.count} of ${res.approvals.needed}; another reviewer must approve`);
          } else if (lease) {
            const ends = [lease.seconds ? `for ${dur(lease.seconds)}` : null, lease.calls ? `for ${lease.calls} call${lease.calls > 1 ? "s" : ""}` : null].filter(Boolean).join(" or ");
            toast(`Approved${args ? " with your changes" : ""}; similar calls are allowed ${ends}`);
          } else toast(kind === "reject" ? "Rejected" : args ? "Approved with your changes" : "Approved");
          state.known && state.known.add(call.id);
          openCard(call.id, slot, opts);
          if (GK.decidedHere) GK.decidedHere(call.id);
        } catch (e) {
          busy(false);
          if (e.status === 409) {
            toast(e.body.error === "stale_digest" ? "The arguments changed since you looked. Review again." : `Too late: ${e.message}`, true);
            openCard(call.id, slot, opts);
          } else if (e.status === 422) {
            toast(`${e.body.error === "lease_refused" || e.body.error === "bad_lease" ? "No lease" : "Refused"}: ${e.message}`, true);
          } else toast(e.message, true);
        }
      };

      const disarm = () => { armed = null; confirmSlot.replaceChildren(); };

      // Every approval sends what is on screen: the edited arguments if the editor holds a change (after
      // you confirm the diff), never silently the original; an edit that does not check out refuses.
      const requestApprove = (lease) => {
        const edited = !!editor && editState.changed;
        if (editor && !editState.valid) {
          toast("Your edit has errors: fix it, or discard it, before approving.", true);
          return;
        }
        if (!edited && !level) { send("approve", null, lease || null); return; }
        if (armed && armed.lease === lease) { armed.focus(); return; } // a second `a` never confirms
        const args = edited ? JSON.parse(JSON.stringify(editState.value)) : null;
        const diff = edited ? editState.diff : [];
        // the word to type: the tool's name without characters nobody can type (or "approve" if that leaves nothing)
        const word = [...call.tool].filter((ch) => !isSuspicious(ch.codePointAt(0))).join("") || "approve";
        const typed = level >= 2 ? h("input", { type: "text", class: "type-confirm mono", spellcheck: "false", autocomplete: "off", "aria-label": `Type ${word} to confirm` }) : null;
        const yes = h("button", { type: "button", class: "btn approve confirm-yes", disabled: !!typed },
          args ? "Approve with these changes" : "Yes, approve", lease ? " & allow similar" : "");
        const no = h("button", { type: "button", class: "btn ghost", text: "Cancel" });
        const ok = () => !typed || typed.value === word;
        if (typed) {
          typed.addEventListener("input", () => { yes.disabled = !ok(); });
          typed.addEventListener("keydown", (e) => { if (e.key === "Enter" && ok()) { e.preventDefault(); yes.click(); } });
        }
        yes.addEventListener("click", () => { if (!ok()) return; disarm(); send("approve", args, lease || null); });
        no.addEventListener("click", disarm);
        const irreversible = call.effects && call.effects.reversible === false;
        confirmSlot.replaceChildren(h("div", { class: `confirm-approve level-${level}`, role: "alertdialog", "aria-label": "Confirm the approval" },
          h("h3", null, args ? "Approve with your changes?" : "Approve this call?"),
          args ? [h("p", null, "The upstream receives the edited arguments:"), diffView(diff)] : h("p", null, "The upstream receives the arguments exactly as shown above."),
          level ? h("p", { class: "why-confirm" }, `Risk ${call.risk}${irreversible ? ", not reversible" : ""}: `,
            safeText(call.effects && call.effects.approve ? call.effects.approve : `${call.tool} runs on ${call.upstream}.`)) : null,
          lease ? h("p", null, "Later calls that fit the lease below run without asking until it ends.") : null,
          typed ? h("label", { class: "typed" }, "Type ", h("code", null, safeText(word)), " to confirm ", typed) : null,
          h("div", { class: "confirm-buttons" }, yes, no)));
        armed = { lease, focus: () => (typed || yes).focus() };
        armed.focus();
      };

      approveBtn.addEventListener("click", () => requestApprove(null));
      rejectBtn.addEventListener("click", () => send("reject", null, null));
      reason.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send("reject", null, null); } });
      const discard = () => {
        editor = null;
        editState = { valid: true, changed: false, value: null, diff: [] };
        editorSlot.replaceChildren();
        modifyBtn.replaceChildren("Edit ", h("kbd", { text: "e" }));
        modifyBtn.title = "Edit the arguments, then approve (e)";
        approveBtn.replaceChildren(level ? "Approve… " : "Approve ", h("kbd", { text: "a" }));
        disarm();
      };
      // Edit opens the editor; with it open, the same button discards the edit (back to the call as held)
      // and the green button approves what the editor shows.
      modifyBtn.addEventListener("click", () => {
        if (editor) { discard(); return; }
        if (inexact.length) { toast("This call has numbers the page cannot show exactly: approve or reject it as held.", true); return; }
        editor = buildEditor(call, (st) => {
          editState = st;
          approveBtn.replaceChildren(st.changed ? "Approve with changes… " : level ? "Approve… " : "Approve ", h("kbd", { text: "a" }));
          if (armed) { disarm(); if (st.changed) toast("You changed the edit: approve again to confirm the new diff.", true); }
        });
        editorSlot.replaceChildren(editor.el);
        modifyBtn.replaceChildren("Discard edit");
        modifyBtn.title = "Close the editor: approving then sends the call as held";
        editor.focus();
      });
      // the lease confirmed is the lease sent: changing it closes an open confirmation
      for (const ev of ["input", "change"]) leaseSlot.addEventListener(ev, () => { if (armed && armed.lease) disarm(); });
      if (leaseBtn) {
        leaseBtn.addEventListener("click", () => {
          if (!leaseEd) {
            leaseEd = GK.leaseEditor(call);
            leaseSlot.replaceChildren(leaseEd.el);
            leaseBtn.replaceChildren("Approve & allow similar");
            leaseBtn.classList.add("armed");
            leaseEd.focus();
            return;
          }
          const v = leaseEd.value();
          if (v.error) { toast(v.error, true); return; }
          requestApprove(v.lease);
        });
      }
      const whyNot = !offer.offered && offer.why_not
        ? h("p", { class: "why-not muted small" }, "“Allow similar…” is not offered: ", safeText(offer.why_not))
        : null;
      const actions = h("div", { class: "actions" }, approveBtn, modifyBtn, leaseBtn, reason, rejectBtn);
      card.append(confirmSlot, actions);
      if (whyNot) card.append(whyNot);
      let escLevel = call.escalation || 0;
      let deadline = call.deadline_at;
      const showEscalation = () => {
        escSlot.replaceChildren(escLevel
          ? h("div", { class: "warning" }, icon("↑"), h("span", null, h("b", { text: `Escalated (step ${escLevel}). ` }), "Nobody decided in time, so more people were alerted; the time left may have been shortened."))
          : "");
      };
      showEscalation();
      ctrl = {
        ...ctrl, approve: () => { if (!approveBtn.disabled) requestApprove(null); }, reject: () => reason.focus(),
        edit: () => { if (!editor) modifyBtn.click(); else editor.focus(); },
        escalated: (lv, dl) => {
          if (lv !== escLevel) { escLevel = lv; showEscalation(); }
          if (dl && dl !== deadline) {
            deadline = dl;
            for (const el of card.querySelectorAll("[data-left-of]")) el.dataset.leftOf = String(dl);
            tick();
          }
        },
      };
    } else if (reviewable) {
      const confirmBtn = h("button", { type: "button", class: "btn approve confirm", title: "Confirm: it was right (c)" }, "Confirm ", h("kbd", { text: "c" }));
      const note = h("input", { type: "text", class: "reason", placeholder: "Note (optional; kept in the audit log)", maxlength: "2000", "aria-label": "Review note" });
      const failBtn = h("button", { type: "button", class: "btn reject fail", title: rv && rv.compensate ? "Fail the review: the compensation undoes the call" : "Fail the review (it cannot be undone)" },
        rv && rv.compensate ? "Fail & undo" : "Fail");
      const review = async (outcome) => {
        confirmBtn.disabled = failBtn.disabled = true;
        const payload = { outcome };
        if (note.value.trim()) payload.reason = note.value.trim();
        try {
          await api(`/api/calls/${encodeURIComponent(call.id)}/review`, { json: payload });
          toast(outcome === "confirm" ? "Confirmed" : rv && rv.compensate ? "Review failed: undoing the call" : "Review failed: recorded for a human to undo");
          openCard(call.id, slot, opts);
        } catch (e) {
          confirmBtn.disabled = failBtn.disabled = false;
          if (e.status === 409) { toast(`Already reviewed: ${e.message}`, true); openCard(call.id, slot, opts); } else toast(e.message, true);
        }
      };
      confirmBtn.addEventListener("click", () => review("confirm"));
      failBtn.addEventListener("click", () => review("fail"));
      card.append(h("div", { class: "actions" }, confirmBtn, note, failBtn));
      ctrl = { ...ctrl, confirm: () => review("confirm") };
    } else {
      const who = call.decided_by ? ["by ", h("code", null, safeText(call.decided_by))] : null;
      card.append(h("div", { class: `decided-banner${call.state === "rollback_failed" ? " alarm" : ""}` }, stateChip(call.state, call.modified_arguments !== null), " ", who,
        call.decided_at ? ` at ${fmtTime(call.decided_at)}` : "",
        call.reason ? [" — “", richString(call.reason, strHits("reason"), false, ctx), "”"] : ""));
    }

    if (opts && opts.full) card.append(fullRecord(call, ctx));
    slot.replaceChildren(card);
    for (const el of card.querySelectorAll(".confidence .bar > span")) el.style.width = `${Math.round(Number(el.dataset.w) * 100)}%`;
    tick();
    state.card = ctrl;
    return ctrl;
  }

  function fullRecord(call, ctx) {
    const sec = call.secrets || {};
    const timings = h("dl", { class: "kv" },
      h("dt", { text: "held" }), h("dd", { text: fmtTime(call.created_at) }),
      h("dt", { text: "deadline" }), h("dd", { text: fmtTime(call.deadline_at) }),
      h("dt", { text: "decided" }), h("dd", { text: call.decided_at ? `${fmtTime(call.decided_at)} (after ${dur(call.decided_at - call.created_at)})` : "–" }),
      h("dt", { text: "finished" }), h("dd", { text: fmtTime(call.finished_at) }),
      h("dt", { text: "channel" }), h("dd", null, safeText(call.channel || "–")),
      h("dt", { text: "wait strategy" }), h("dd", null, safeText(call.wait_strategy || "–")),
      h("dt", { text: "gate" }), h("dd", null, safeText(call.gate)),
      h("dt", { text: "call id" }), h("dd", { class: "mono", text: call.id }));
    const outcome = call.error
      ? h("div", null, h("h3", { text: "Error" }), h("pre", { class: "json" }, richString(call.error, (sec.error || []), false, ctx)))
      : call.result
        ? h("div", null, h("h3", { text: "Result" }), jsonView(call.result, sec.result, ctx))
        : h("p", { class: "muted", text: "No result recorded." });
    const auditSlot = h("div", null, h("p", { class: "muted", text: "Loading audit events…" }));
    api(`/api/audit?call_id=${encodeURIComponent(call.id)}`).then((a) => {
      auditSlot.replaceChildren(
        h("div", { class: "section-head" }, h("h3", { text: "Audit events" }),
          h("span", { class: a.chain.ok ? "chain-ok" : "chain-bad" }, a.chain.ok ? "✓ " : "✗ ", safeText(a.chain.message))),
        h("ul", { class: "timeline" }, a.events.map((e) => h("li", null,
          h("span", { class: "t", text: fmtTime(e.at) }), h("span", { class: "ev" }, safeText(e.event)),
          h("span", null, safeText(`${e.actor || ""}${e.channel ? " via " + e.channel : ""}`), " ",
            h("code", { class: "muted", title: e.hash, text: `#${e.seq} ${e.hash.slice(0, 10)}` }))))));
    }).catch((e) => auditSlot.replaceChildren(h("p", { class: "muted" }, safeText(e.message))));
    return h("div", { class: "card-body" }, h("div", { class: "facts" }, fact("Timings", timings), fact("Outcome", outcome)), auditSlot);
  }

  // Only the latest call asked of a slot is drawn there: a slow answer for a call chosen earlier never
  // replaces the card of the one chosen since (and never becomes the card that `a` approves).
  async function openCard(id, slot, opts) {
    const ticket = (openCard.seq = (openCard.seq || 0) + 1);
    slot.dataset.ticket = String(ticket);
    if (state.card && state.card.id !== id) state.card = null; // keys act on nothing until it is drawn
    const current = () => slot.dataset.ticket === String(ticket);
    try {
      const call = await api(`/api/calls/${encodeURIComponent(id)}`);
      if (!current()) return null;
      state.offset = call.now - Date.now() / 1000;
      if (call.id !== id) {
        // a link by id prefix (`#/queue/7f3a`): from now on the selection and the URL name the whole id
        if (state.view === "queue" && state.selected === id) { state.selected = call.id; queueHash(call.id); markSelected(); }
        if (state.view === "review" && state.reviewSelected === id) state.reviewSelected = call.id;
      }
      return renderCard(call, slot, opts);
    } catch (e) {
      if (!current()) return null;
      if (e.status !== 401) slot.replaceChildren(h("div", { class: "panel empty" }, safeText(e.status === 404 ? "No such call." : e.message)));
      state.card = null;
      return null;
    }
  }

  // ------------------------------------------------------------------ history

  const STATES = ["pending", "approved", "rejected", "expired", "cancelled", "orphaned", "forwarding", "forwarded", "failed", "outcome_unknown", "allowed", "denied",
    "under_review", "confirmed", "unreviewed", "review_failed", "rolling_back", "rolled_back", "rollback_failed"];
  function renderHistory() {
    state.view = "history";
    const f = {
      state: h("select", { "aria-label": "State" }, h("option", { value: "", text: "All states" }), STATES.map((x) => h("option", { value: x, text: x.replace("_", " ") }))),
      upstream: h("input", { type: "text", placeholder: "Upstream", "aria-label": "Upstream" }),
      tool: h("input", { type: "text", placeholder: "Tool", "aria-label": "Tool" }),
      decided_by: h("input", { type: "text", placeholder: "Reviewer", "aria-label": "Reviewer" }),
      q: h("input", { type: "search", class: "q", placeholder: "Search summary, arguments, reason…", "aria-label": "Search" }),
    };
    const exportLink = h("a", { class: "btn small ghost", href: keyed("/api/audit?export=1"), download: "mcp-gatekeeper-audit.json", text: "Export audit" });
    const tbody = h("tbody");
    const more = h("div", { class: "more" });
    let cursor = null;
    let quick = "";
    const load = async (append) => {
      const p = new URLSearchParams();
      for (const [k, el] of Object.entries(f)) if (el.value.trim()) p.set(k, el.value.trim());
      if (quick.includes(",") && !f.state.value) p.set("state", quick);
      p.set("limit", "50");
      if (append && cursor) p.set("cursor", cursor);
      const data = await api(`/api/calls?${p}`);
      cursor = data.next_cursor;
      const rows = data.calls.map((c) => {
        const tr = h("tr", { tabindex: "0", class: c.state === "rollback_failed" ? "alarm" : c.state === "rolled_back" ? "undone" : null },
          h("td", { class: "num", text: fmtTime(c.created_at) }),
          h("td", null, stateChip(c.state, c.modified_arguments !== null)),
          h("td", { class: "hide-sm" }, riskChip(c.risk)),
          h("td", { class: "mono hide-sm" }, safeText(`${c.upstream} · ${c.tool}`)),
          h("td", { class: "sum" }, summaryView(c, c.tool)),
          h("td", { class: "mono hide-sm" }, safeText(c.decided_by || "")),
          h("td", { class: "num hide-sm", text: c.decided_at ? dur(c.decided_at - c.created_at) : "" }));
        const go = () => { location.hash = `#/call/${c.id}`; };
        tr.addEventListener("click", go);
        tr.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
        return tr;
      });
      if (append) tbody.append(...rows);
      else tbody.replaceChildren(...rows);
      if (!append && !rows.length) tbody.replaceChildren(h("tr", null, h("td", { colspan: "7", class: "empty", text: "No calls match." })));
      more.replaceChildren(cursor ? h("button", { type: "button", class: "btn small", onclick: () => load(true), text: "Load more" }) : "");
    };
    let t = null;
    for (const el of Object.values(f)) el.addEventListener("input", () => { quick = ""; clearTimeout(t); t = setTimeout(() => load(false), 200); });
    $("#app").replaceChildren(h("section", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", { text: "History" }), exportLink),
      h("div", { class: "filters" }, f.state, f.upstream, f.tool, f.decided_by, f.q),
      h("div", { class: "quick" }, "Show: ", [["", "everything"], ["rollback_failed", "rollback failed"], ["rolled_back", "rolled back"], ["under_review,unreviewed", "needs review"], ["expired", "timed out"]].map(([v, label]) => {
        const b = h("button", { type: "button", class: `btn small ghost${v === "rollback_failed" ? " crit" : ""}`, text: label });
        b.addEventListener("click", () => { f.state.value = v.includes(",") ? "" : v; quick = v; load(false).catch((e) => toast(e.message, true)); });
        return b;
      })),
      h("div", { class: "table-wrap" }, h("table", { class: "grid" },
        h("thead", null, h("tr", null, ["When", "State", "Risk", "Upstream · tool", "Summary", "Reviewer", "Took"].map((x, i) => h("th", { class: i === 2 || i === 3 || i >= 5 ? "hide-sm" : null, text: x })))),
        tbody)),
      more));
    load(false).catch((e) => toast(e.message, true));
  }

  function renderCallPage(id) {
    state.view = "call";
    const slot = h("div");
    $("#app").replaceChildren(h("div", { class: "page-head" }, h("a", { href: "#/history", text: "← History" })), slot);
    openCard(id, slot, { full: true });
  }

  // ------------------------------------------------------------------ stats

  const OUT = ["approved", "modified", "rejected", "expired", "cancelled", "pending"];
  function legend(keys) {
    return h("div", { class: "legend" }, keys.map((k) => h("span", null, h("i", { class: `fill-${k}` }), k)));
  }

  // a chart's width in its own units ≈ the CSS pixels it is drawn in, so 12-unit axis text is 12 px on a phone too
  function chartWidth(widest) {
    const room = ($("#app") && $("#app").clientWidth) || widest;
    return Math.max(280, Math.min(widest, room - 48));
  }

  function stackedBars(series, bucketSeconds) {
    const W = chartWidth(1000), H = 240, pad = { l: 34, r: 8, t: 10, b: 24 };
    const max = Math.max(1, ...series.map((b) => OUT.reduce((a, k) => a + b[k], 0)));
    const bw = (W - pad.l - pad.r) / series.length;
    const y = (v) => ((H - pad.t - pad.b) * v) / max;
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Decisions over time" });
    for (const frac of [0, 0.5, 1]) {
      const yy = H - pad.b - (H - pad.t - pad.b) * frac;
      svg.append(s("line", { x1: pad.l, x2: W - pad.r, y1: yy, y2: yy, class: "grid-line" }),
        s("text", { x: pad.l - 6, y: yy + 3, "text-anchor": "end", class: "axis" }, String(Math.round(max * frac))));
    }
    const every = Math.ceil(series.length / Math.max(2, Math.min(8, Math.floor((W - pad.l - pad.r) / 56))));
    series.forEach((b, i) => {
      // each bar is one of the viewer's calendar days (or clock hours): the server cut them in this time zone
      const d = new Date(b.start * 1000);
      const label = bucketSeconds < 86400 ? `${d.getHours()}:00` : `${d.getMonth() + 1}/${d.getDate()}`;
      const day = bucketSeconds < 86400 ? `${d.getMonth() + 1}/${d.getDate()} ${label}` : label;
      let acc = 0;
      for (const k of OUT) {
        if (!b[k]) continue;
        const hgt = y(b[k]);
        svg.append(s("rect", { x: pad.l + i * bw + bw * 0.15, width: Math.max(1, bw * 0.7), y: H - pad.b - y(acc) - hgt, height: hgt, rx: 1.5, class: `fill-${k}`, "data-bucket": String(i) },
          s("title", null, `${day} · ${k}: ${b[k]}`)));
        acc += b[k];
      }
      if (i % every === 0 || i === series.length - 1) {
        const last = i === series.length - 1;
        if (!last && series.length - 1 - i < every / 2) return;  // leave room for the last bar's label
        svg.append(s("text", { x: pad.l + i * bw + bw / 2, y: H - 6, "text-anchor": "middle", class: "axis" }, last && bucketSeconds >= 86400 ? "today" : label));
      }
    });
    return svg;
  }

  function columnChart(items, cls) {
    const W = chartWidth(640);
    const narrow = (W - 20) / items.length < 72;  // labels like "30 s–1 min" need ~70 px: stagger them in two rows
    const H = narrow ? 214 : 200, pad = { l: 10, r: 10, t: 22, b: narrow ? 40 : 26 };
    const max = Math.max(1, ...items.map((x) => x.count));
    const bw = (W - pad.l - pad.r) / items.length;
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Time to decision" });
    svg.append(s("line", { x1: pad.l, x2: W - pad.r, y1: H - pad.b, y2: H - pad.b, class: "grid-line" }));
    items.forEach((x, i) => {
      const hgt = ((H - pad.t - pad.b) * x.count) / max;
      svg.append(s("rect", { x: pad.l + i * bw + bw * 0.12, width: bw * 0.76, y: H - pad.b - hgt, height: Math.max(0, hgt), rx: 3, class: cls }, s("title", null, `${x.label}: ${x.count}`)),
        s("text", { x: pad.l + i * bw + bw / 2, y: H - 8 - (narrow && i % 2 === 0 ? 14 : 0), "text-anchor": "middle", class: "axis" }, x.label),
        x.count ? s("text", { x: pad.l + i * bw + bw / 2, y: H - pad.b - hgt - 4, "text-anchor": "middle", class: "axis" }, String(x.count)) : null);
    });
    return svg;
  }

  function stackRow(name, counts, keys) {
    const total = keys.reduce((a, k) => a + (counts[k] || 0), 0);
    const bar = h("div", { class: "stack" }, keys.map((k) => (counts[k] ? h("span", { class: `fill-${k}`, title: `${k}: ${counts[k]}`, "data-w": counts[k] / Math.max(1, total) }) : null)));
    return h("div", { class: "hbar-row" }, h("span", { class: "name", title: name }, safeText(name)), bar, h("span", { class: "num muted", text: String(total) }));
  }

  async function renderStats() {
    state.view = "stats";
    const days = h("select", { "aria-label": "Period" }, [1, 7, 14, 30, 90].map((d) => h("option", { value: String(d), text: d === 1 ? "Last 24 hours" : `Last ${d} days` })));
    days.value = String(renderStats.days || 14);
    const body = h("div", null, h("p", { class: "muted", text: "Loading…" }));
    // the weekly review (mcp_gatekeeper.review): server-rendered HTML under this page's CSP, in its own tab
    const weekly = h("a", { class: "btn small ghost", href: keyed("/api/weekly-review?days=7"), target: "_blank", rel: "noopener", text: "Weekly review" });
    $("#app").replaceChildren(h("div", { class: "page-head" }, h("div", null, h("h1", { text: "Stats" }), h("div", { class: "sub", text: "How held calls are decided, and whether reviewers are still reading." })), weekly, days), body);
    days.addEventListener("change", () => { renderStats.days = Number(days.value); renderStats(); });
    let st;
    // calendar days in the viewer's time zone: its IANA name, and today's offset for a server without tz data
    const zone = encodeURIComponent(Intl.DateTimeFormat().resolvedOptions().timeZone || "");
    try { st = await api(`/api/stats?days=${days.value}&tz=${zone}&utc_offset=${-new Date().getTimezoneOffset()}`); } catch (e) { body.replaceChildren(h("p", { class: "muted" }, safeText(e.message))); return; }
    const t = st.totals;
    const held = OUT.reduce((a, k) => a + t[k], 0);
    const decided = held - t.pending;
    const rate = (k) => (decided ? t[k] / decided : null);
    const ttd = st.time_to_decision;
    const kpi = (v, l, cls) => h("div", { class: `panel kpi ${cls || ""}` }, h("span", { class: "v", text: v }), h("span", { class: "l", text: l }));
    const fat = st.fatigue;
    const signals = h("div", null,
      h("div", { class: `signal ${fat.fast_share > 0.2 ? "alert" : ""}` }, h("span", { class: "v", text: `${fat.fast_decisions}` }),
        h("span", null, `decisions faster than ${fat.fast_threshold_seconds} s (${pct(fat.fast_share)} of ${fat.decisions})`)),
      h("div", { class: `signal ${fat.longest_approval_run >= 10 ? "alert" : ""}` }, h("span", { class: "v", text: `${fat.longest_approval_run}` }),
        h("span", { text: "longest run of approvals in a row (one reviewer)" })),
      fat.reviewers.slice(0, 6).map((r) => h("div", { class: "signal" }, h("span", { class: "v", text: String(r.decisions) }),
        h("span", null, h("code", null, safeText(r.reviewer)), ` — ${r.fast} fast, current run ${r.current_approval_run}, longest ${r.longest_approval_run}`))));
    const hints = st.rule_hints;
    const hintList = (items, empty) => (items.length
      ? h("ul", { class: "hint-list" }, items.map((x) => h("li", null, h("code", null, safeText(x.rule)), ` (${x.decisions} decisions)`)))
      : h("p", { class: "muted", text: empty }));
    const usageMax = Math.max(1, ...st.usage.map((u) => u.total));
    const tm = st.timeouts;
    const timeoutRows = st.per_rule.filter((r) => r.finished > 0).map((r) => h("div", { class: `hbar-row timeout${r.miscalibrated ? " flag" : ""}` },
      h("span", { class: "name", title: r.rule }, safeText(r.rule)),
      h("div", { class: "stack", title: `${r.expired} of ${r.finished} held calls timed out` }, h("span", { class: "fill-expired", "data-w": r.timeout_rate || 0 })),
      h("span", { class: "num", text: `${r.miscalibrated ? "⚑ " : ""}${pct(r.timeout_rate)}` })));
    const timeouts = h("section", { class: "panel chart" }, h("h2", { text: "Timeouts per rule" }),
      h("p", { class: "muted small", text: `Share of each rule's held calls that nobody decided in time. Flagged (⚑) at ${pct(tm.flag_rate)} or more over ${tm.min_calls}+ calls.` }),
      timeoutRows.length ? timeoutRows : h("p", { class: "muted", text: "No finished held calls yet." }),
      tm.miscalibrated.length
        ? h("div", { class: "warning bad" }, icon("⚑"), h("span", null, h("b", { text: "Miscalibrated: " }), tm.miscalibrated.map((r, i) => [i ? "; " : "", h("code", null, safeText(r.rule)), ` ${r.expired} of ${r.finished} timed out`]),
          ". Lengthen the timeout, add an escalation step, or send its alerts to someone who watches them."))
        : null);
    const esc = st.escalations;
    const escalations = h("section", { class: "panel chart" }, h("h2", { text: "Escalations" }),
      h("div", { class: "signal" }, h("span", { class: "v", text: String(esc.calls) }), h("span", { text: "held calls escalated (nobody decided within the first step)" })),
      h("div", { class: "signal" }, h("span", { class: "v", text: String(esc.events) }), h("span", null, "escalation steps fired",
        esc.by_level.length ? ` (${esc.by_level.map((x) => `step ${x.level}: ${x.count}`).join(", ")})` : "")),
      h("div", { class: "signal" }, h("span", { class: "v", text: String(esc.deadline_shortened) }), h("span", { text: "steps that shortened the time left" })),
      esc.calls ? [h("h3", { text: "How escalated calls ended" }), legend(OUT), stackRow("escalated calls", esc.outcomes, OUT)] : null);
    const rvw = st.reviews;
    const REVIEW_KEYS = ["confirmed", "under_review", "unreviewed", "review_failed", "rolling_back", "rolled_back", "rollback_failed"];
    const reviewTotal = REVIEW_KEYS.reduce((a, k) => a + (rvw[k] || 0), 0);
    const reviews = h("section", { class: "panel chart" }, h("h2", { text: "Audit reviews" }),
      reviewTotal
        ? h("div", { class: "review-counts" }, REVIEW_KEYS.map((k) => h("div", { class: `rc${k === "rollback_failed" && rvw[k] ? " alarm" : ""}` }, h("span", { class: "v", text: String(rvw[k] || 0) }), stateChip(k))))
        : h("p", { class: "muted", text: "No audit-gated calls in this period." }));
    body.replaceChildren(
      h("div", { class: "kpis" },
        kpi(String(held), "held calls"),
        kpi(pct(rate("approved")), "approved as is", "dot-approved"),
        kpi(pct(rate("modified")), "approved with changes", "dot-modified"),
        kpi(pct(rate("rejected")), "rejected", "dot-rejected"),
        kpi(pct(rate("expired")), "timed out", "dot-expired"),
        kpi(dur(ttd.median), "median time to decide"),
        kpi(dur(ttd.p90), "p90 time to decide")),
      h("div", { class: "charts" },
        h("section", { class: "panel chart wide" }, h("h2", { text: "Outcomes over time" }), legend(OUT), stackedBars(st.series, st.bucket_seconds)),
        h("section", { class: "panel chart" }, h("h2", { text: "Time to decision" }), h("div", { class: "muted", text: `${ttd.count} decisions · median ${dur(ttd.median)} · p90 ${dur(ttd.p90)}` }), columnChart(ttd.histogram, "fill-accent")),
        h("section", { class: "panel chart" }, h("h2", { text: "Reviewer fatigue" }), signals),
        h("section", { class: "panel chart" }, h("h2", { text: "Outcomes per rule" }), legend(OUT),
          st.per_rule.length ? st.per_rule.map((r) => stackRow(r.rule, r, OUT)) : h("p", { class: "muted", text: "No held calls yet." })),
        h("section", { class: "panel chart" }, h("h2", { text: "Calls per upstream and tool" }),
          st.usage.length ? st.usage.map((u) => h("div", { class: "hbar-row" }, h("span", { class: "name", title: `${u.upstream} · ${u.tool}` }, safeText(`${u.upstream} · ${u.tool}`)),
            h("div", { class: "stack" }, h("span", { class: "fill-accent", "data-w": u.total / usageMax })), h("span", { class: "num muted", text: String(u.total) }))) : h("p", { class: "muted", text: "No calls yet." })),
        timeouts, escalations, reviews,
        h("section", { class: "panel chart" }, h("h2", { text: "Never rejected: candidates to relax" }), hintList(hints.never_rejected, "None yet (needs 5+ decisions per rule).")),
        h("section", { class: "panel chart" }, h("h2", { text: "Always rejected: candidates to deny" }), hintList(hints.always_rejected, "None."))));
    for (const el of body.querySelectorAll(".stack > span[data-w]")) el.style.width = `${(Number(el.dataset.w) * 100).toFixed(1)}%`;
  }

  // ------------------------------------------------------------------ rules

  async function renderRules() {
    state.view = "rules";
    let data;
    try { data = await api("/api/rules"); } catch (e) { return; }
    const line = (label, ...v) => h("div", { class: "line" }, `${label} `, ...v);
    const code = (v) => h("code", null, safeText(typeof v === "string" ? v : JSON.stringify(v)));
    const rules = data.rules.map((r, i) => h("div", { class: "rule" },
      h("div", { class: "top" }, h("span", { class: "idx", text: `#${i}` }), h("span", { class: "name" }, safeText(r.name || `rules[${i}]`)),
        h("span", { class: `chip ${r.gate === "deny" ? "risk-high" : r.gate === "allow" ? "risk-low" : "neutral"}`, text: r.gate }), r.risk ? riskChip(r.risk) : null),
      line("match", code(r.upstream), " / ", code(r.tool), Object.keys(r.when || {}).length ? [" when ", code(r.when)] : null),
      r.summary ? line("summary", code(r.summary)) : null,
      r.effects && (r.effects.approve || r.effects.reject) ? line("effects", safeText(`approve: ${r.effects.approve || "–"} · reject: ${r.effects.reject || "–"}${r.effects.reversible === false ? " · not reversible" : ""}`)) : null,
      r.timeout ? line("timeout", code(dur(r.timeout)), " then reject") : null,
      r.reason ? line("reason", safeText(r.reason)) : null));
    const d = data.defaults;
    const defaults = h("div", { class: "rule" }, h("div", { class: "top" }, h("span", { class: "name", text: "When no rule matches" })),
      line("read-like tool names pass; write-like and unknown ones are held (unknown:", code(d.unknown), ")"),
      line("default timeout", code(dur(d.timeout)), " then reject (never approve)"));

    const up = h("input", { type: "text", value: data.upstreams[0] || "", list: "up-list", "aria-label": "Upstream" });
    const tool = h("input", { type: "text", placeholder: "issue_refund", "aria-label": "Tool" });
    const args = h("textarea", { rows: "6", spellcheck: "false", "aria-label": "Arguments (JSON)" });
    args.value = "{}";
    const ann = h("input", { type: "text", placeholder: '{"destructiveHint": true}', "aria-label": "Annotations (JSON)" });
    const out = h("div");
    const run = async () => {
      let a, an;
      try { a = JSON.parse(args.value || "{}"); an = ann.value.trim() ? JSON.parse(ann.value) : undefined; } catch (e) { out.replaceChildren(h("p", { class: "errors" }, safeText(e.message))); return; }
      try {
        const v = await api("/api/explain", { json: { upstream: up.value, tool: tool.value, arguments: a, annotations: an } });
        out.replaceChildren(h("div", { class: "verdict" },
          h("div", { class: "top" }, h("span", { class: `chip ${v.action === "deny" ? "risk-high" : v.action === "allow" ? "risk-low" : "risk-medium"}`, text: v.action }), " ", riskChip(v.risk), " ", v.rule ? code(v.rule) : h("span", { class: "muted", text: "no rule" })),
          v.summary ? h("div", null, safeText(v.summary)) : null,
          h("ul", null, v.reasons.map((r) => h("li", null, safeText(r)))),
          v.deny_reason ? h("div", { class: "muted" }, safeText(v.deny_reason)) : null));
      } catch (e) { out.replaceChildren(h("p", { class: "errors" }, safeText(e.message))); }
    };
    $("#app").replaceChildren(h("div", { class: "page-head" }, h("div", null, h("h1", { text: "Rules" }), h("div", { class: "sub", text: "The active policy (read-only). Rules are tried in order; the first match decides." }))),
      h("div", { class: "rules-layout" },
        h("section", { class: "panel" }, rules, defaults),
        h("section", { class: "panel testbox" }, h("h2", { text: "Test a call" }),
          h("datalist", { id: "up-list" }, data.upstreams.map((u) => h("option", { value: u }))),
          h("label", null, "Upstream", up), h("label", null, "Tool", tool), h("label", null, "Arguments (JSON)", args), h("label", null, "Annotations (JSON, optional)", ann),
          h("button", { type: "button", class: "btn modify", onclick: run, text: "Explain" }), out)));
  }

  // ------------------------------------------------------------------ router and keys

  function route() {
    const parts = location.hash.replace(/^#\/?/, "").split("/");
    const view = parts[0] || "queue";
    state.card = null;
    queueRoot = null;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === (view === "call" ? "history" : view));
    if (view === "history") renderHistory();
    else if (view === "review") GK.renderReview(parts[1]);
    else if (view === "leases") GK.renderLeases();
    else if (view === "tools") GK.renderTools();
    else if (view === "stats") renderStats();
    else if (view === "rules") renderRules();
    else if (view === "sessions") GK.renderSessions();
    else if (view === "calibrate") GK.renderCalibrate();
    else if (view === "call" && parts[1]) renderCallPage(parts[1]);
    else renderQueue(parts[1]);
  }

  function showHelp() {
    const close = () => overlay.remove();
    const overlay = h("div", { class: "help", onclick: (e) => { if (e.target === overlay) close(); } },
      h("div", { class: "panel" }, h("h2", { text: "Keyboard shortcuts" }),
        h("dl", null,
          h("dt", null, h("kbd", { text: "j" }), " ", h("kbd", { text: "k" })), h("dd", { text: "next / previous held call" }),
          h("dt", null, h("kbd", { text: "a" })), h("dd", { text: "approve what is shown (edited, high-risk, irreversible or critical calls: opens a confirmation, which a key never answers)" }),
          h("dt", null, h("kbd", { text: "e" })), h("dd", { text: "edit the arguments" }),
          h("dt", null, h("kbd", { text: "r" })), h("dd", { text: "reject: type a reason, Enter" }),
          h("dt", null, h("kbd", { text: "c" })), h("dd", { text: "confirm the call under review (Review)" }),
          h("dt", null, h("kbd", { text: "Esc" })), h("dd", { text: "leave a field / close" })),
        h("button", { type: "button", class: "btn small", onclick: close, text: "Close" })));
    document.body.append(overlay);
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName);
    if (e.key === "Escape") { if (typing) e.target.blur(); const o = $(".help"); if (o) o.remove(); return; }
    if (typing) return;
    if (state.view === "review") {
      if (e.key === "j") GK.reviewMove(1);
      else if (e.key === "k") GK.reviewMove(-1);
      else if (e.key === "c" && state.card && state.card.confirm && state.card.id === state.reviewSelected) state.card.confirm();
      else if (e.key === "?") showHelp();
      return;
    }
    if (state.view !== "queue") return;
    if (e.key === "j") move(1);
    else if (e.key === "k") move(-1);
    else if (e.key === "a" && state.card && state.card.approve && state.card.id === state.selected) { e.preventDefault(); state.card.approve(); }
    else if (e.key === "r" && state.card && state.card.reject) { e.preventDefault(); state.card.reject(); }
    else if (e.key === "e" && state.card && state.card.edit) { e.preventDefault(); state.card.edit(); }
    else if (e.key === "?") showHelp();
  });

  async function start() {
    takePageKey();
    try {
      state.me = await api("/api/session");
    } catch (e) {
      if (e.status !== 401) toast(e.message, true);
      return;
    }
    state.offset = state.me.now - Date.now() / 1000;
    $("#whoami").replaceChildren(h("a", { href: "#/sessions", title: "Sessions: who is signed in; log out" }, safeText(state.me.reviewer)));
    setupNotifyButton();
    window.addEventListener("hashchange", route);
    route();
    connect();
    setInterval(tick, 1000);
  }

  Object.assign(GK, { showLogin, KEY_ITEM, h, s, $, safeText, richString, summaryView, jsonView, api, toast, dur, fmtTime, pct, shortId, icon, riskChip, stateChip, state, serverNow, openCard, tick, fact });
  // gates.js (loaded after this file) adds its views before the page starts
  document.addEventListener("DOMContentLoaded", start);
})();
