// mcp-gatekeeper approval page: reviews of audit-gated calls, leases, and quarantined tool definitions.
// Loaded after app.js, whose helpers it uses through window.GK. The same rule holds here: every value
// from a tool, an upstream, an argument or an agent reaches the page through textContent (safeText).
"use strict";

(() => {
  const GK = window.GK;
  const { h, $, safeText, richString, summaryView, jsonView, api, toast, dur, fmtTime, riskChip, stateChip, icon, state, serverNow } = GK;

  // ------------------------------------------------------------------ unified diff of a tool definition

  function unifiedDiff(lines) {
    const pre = h("pre", { class: "unidiff", "aria-label": "Changes to the tool's definition" });
    for (const line of lines || []) {
      let cls = "ctx";
      if (line.startsWith("+++") || line.startsWith("---")) cls = "meta";
      else if (line.startsWith("@@")) cls = "hunk";
      else if (line.startsWith("+")) cls = "add";
      else if (line.startsWith("-")) cls = "del";
      else if (line.startsWith("…")) cls = "meta";
      pre.append(h("span", { class: `dl ${cls}` }, safeText(line || " ")));
    }
    if (!pre.childNodes.length) pre.append(h("span", { class: "dl meta", text: "(no textual difference)" }));
    return pre;
  }

  // ------------------------------------------------------------------ what a call returned

  function resultView(result, hits, ctx) {
    if (!result) return h("p", { class: "muted", text: "No result recorded." });
    const at = (path) => (hits || []).filter((x) => x.path.length === path.length && x.path.every((p, i) => String(p) === String(path[i])));
    const parts = [];
    if (result.isError) parts.push(h("div", { class: "warning bad" }, icon("!"), h("span", { text: "The tool reported an error." })));
    (Array.isArray(result.content) ? result.content : []).forEach((item, i) => {
      if (item && item.type === "text" && typeof item.text === "string") {
        parts.push(h("pre", { class: "result-text" }, richString(item.text, at(["content", i, "text"]), false, ctx)));
      } else parts.push(jsonView(item, (hits || []).filter((x) => String(x.path[0]) === "content" && String(x.path[1]) === String(i)).map((x) => ({ ...x, path: x.path.slice(2) })), ctx));
    });
    if (result.structuredContent !== undefined && result.structuredContent !== null) {
      parts.push(h("div", { class: "muted small", text: "structured content" }),
        jsonView(result.structuredContent, (hits || []).filter((x) => x.path[0] === "structuredContent").map((x) => ({ ...x, path: x.path.slice(1) })), ctx));
    }
    if (!parts.length) parts.push(jsonView(result, hits, ctx));
    return h("div", { class: "stack-v" }, parts);
  }

  // ------------------------------------------------------------------ lease envelopes

  const OPS = { eq: "=", ne: "≠", gt: ">", gte: "≥", lt: "<", lte: "≤", glob: "matches", not_glob: "does not match", regex: "matches regex", in: "is one of", not_in: "is not one of", exists: "exists:", len_gt: "length >", len_gte: "length ≥", len_lt: "length <", len_lte: "length ≤", under: "is inside", not_under: "is not inside", path_glob: "is a path matching", not_path_glob: "is a path not matching", path_regex: "is a path matching regex" };

  // One readable line per predicate: `amount ≤ 750`, `path matches "./src/*"`; secrets masked.
  function describeEnvelope(envelope, hits) {
    const keys = Object.keys(envelope || {});
    if (!keys.length) return h("span", { class: "chip risk-high", title: "Every call of this tool is allowed while the lease lasts" }, "any arguments");
    const out = h("ul", { class: "env" });
    for (const path of keys) {
      const pred = envelope[path];
      const preds = pred && typeof pred === "object" && !Array.isArray(pred) ? Object.entries(pred) : [["eq", pred]];
      for (const [op, arg] of preds) {
        const mine = (hits || []).filter((x) => x.path[0] === path && (x.path.length === 1 || String(x.path[1]) === op));
        let shown;
        if (typeof arg === "string") shown = h("code", null, '"', richString(arg, mine.filter((x) => x.path.length <= 2), false, null), '"');
        else if (mine.length) {
          shown = h("button", { type: "button", class: "masked", title: "Contains a secret-looking value: click to reveal" }, "•••••• ", mine[0].kind);
          shown.addEventListener("click", () => shown.replaceWith(h("code", null, safeText(JSON.stringify(arg)))), { once: true });
        } else shown = h("code", null, safeText(JSON.stringify(arg)));
        out.append(h("li", null, h("code", { class: "path" }, safeText(path)), ` ${OPS[op] || op} `, shown));
      }
    }
    return out;
  }

  const globEscape = (s) => s.replace(/[[*?]/g, (c) => `[${c}]`);

  // A sensible pattern for a string that is not a file path: its origin for URLs, else the value itself.
  // (File paths get `under` their folder as the server normalised it: lease_offer.paths.)
  function defaultPattern(v) {
    const url = /^([a-z][a-z0-9+.-]*:\/\/[^/]+\/)/i.exec(v);
    if (url) return `${globEscape(url[1])}*`;
    const slash = v.lastIndexOf("/");
    if (slash > 0) return `${globEscape(v.slice(0, slash + 1))}*`;
    return `${globEscape(v)}*`;
  }
  const pathLike = (v) => /^[a-z][a-z0-9+.-]*:\/\/[^/]/i.test(v); // a URL with a host: its origin

  function leaves(value, path, out) {
    if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
      for (const [k, v] of Object.entries(value)) leaves(v, path.concat([k]), out);
    } else out.push({ path, value });
    return out;
  }

  const DURATIONS = [["900", "15 minutes"], ["3600", "1 hour"], ["28800", "8 hours"], ["86400", "24 hours"], ["604800", "7 days"], ["", "no time limit"]];

  // The "Approve & allow similar…" panel: one row per argument (same / pattern / up to / any), the
  // envelope as editable JSON, and the bounds. value() is {lease} or {error}.
  function leaseEditor(call) {
    const rows = leaves(call.arguments || {}, [], []);
    const folders = (call.lease_offer && call.lease_offer.paths) || {};
    const envBox = h("textarea", { rows: "6", spellcheck: "false", class: "env-json", "aria-label": "Envelope (JSON predicates on the arguments)" });
    const note = h("div", { class: "lease-note" });
    const controls = [];
    const table = h("div", { class: "lease-grid" });
    for (const row of rows) {
      const key = row.path.join(".");
      const v = row.value;
      const dotted = row.path.some((p) => String(p).includes("."));
      const folder = typeof v === "string" && Object.prototype.hasOwnProperty.call(folders, key) ? folders[key] : null;
      const opts = folder !== null ? [["under", "inside folder"], ["same", "is exactly"], ["any", "any value"]]
        : typeof v === "string" ? [["same", "is exactly"], ["glob", "matches"], ["any", "any value"]]
        : typeof v === "number" ? [["lte", "up to (≤)"], ["same", "is exactly"], ["any", "any value"]]
          : [["same", "is exactly"], ["any", "any value"]];
      const sel = h("select", { "aria-label": `Rule for ${key}`, disabled: dotted }, opts.map(([val, label]) => h("option", { value: val, text: label })));
      sel.value = dotted ? "any" : folder !== null ? "under" : typeof v === "string" ? (pathLike(v) ? "glob" : "same") : opts[0][0];
      const pat = h("input", { type: "text", class: "mono", "aria-label": `Pattern for ${key}`, spellcheck: "false",
        value: folder !== null ? folder : typeof v === "string" ? defaultPattern(v) : "" });
      const shown = h("span", { class: "mono val" }, safeText(typeof v === "string" ? `"${v.length > 60 ? v.slice(0, 57) + "…" : v}"` : JSON.stringify(v)));
      const cell = h("div", { class: "lease-val" });
      const sync = () => { cell.replaceChildren(sel.value === "glob" || sel.value === "under" ? pat : sel.value === "any" ? h("span", { class: "muted", text: "not checked" }) : shown); };
      sel.addEventListener("change", () => { sync(); regenerate(); });
      pat.addEventListener("input", regenerate);
      sync();
      controls.push({ key, v, sel, pat });
      table.append(h("code", { class: "lease-key", title: dotted ? "A name with a dot cannot be matched by path" : key }, safeText(key)), sel, cell);
    }
    function regenerate() {
      const env = Object.create(null); // an argument named "__proto__" stays a key, never a prototype
      for (const c of controls) {
        if (c.sel.value === "same") env[c.key] = { eq: c.v };
        else if (c.sel.value === "lte") env[c.key] = { lte: c.v };
        else if (c.sel.value === "glob") env[c.key] = { glob: c.pat.value };
        else if (c.sel.value === "under") env[c.key] = { under: c.pat.value };
      }
      const lines = Object.entries(env).map(([k, v]) => `  ${JSON.stringify(k)}: ${JSON.stringify(v, null, 1).replace(/\n\s*/g, " ")}`);
      envBox.value = lines.length ? `{\n${lines.join(",\n")}\n}` : "{}";
      envBox.rows = Math.min(12, Math.max(3, lines.length + 2));
      check();
    }
    const seconds = h("select", { "aria-label": "For how long" }, DURATIONS.map(([val, label]) => h("option", { value: val, text: label })));
    seconds.value = "3600";
    const calls = h("input", { type: "number", min: "1", step: "1", value: "10", "aria-label": "At most this many calls", class: "calls" });
    const errors = h("ul", { class: "errors", hidden: true });
    let current = { error: "not ready" };
    function check() {
      const errs = [];
      let env = null;
      try {
        env = JSON.parse(envBox.value || "{}");
        if (!env || typeof env !== "object" || Array.isArray(env)) throw new Error("the envelope must be a JSON object");
      } catch (e) { errs.push(`Envelope: ${e.message}`); }
      const n = calls.value.trim() === "" ? null : Number(calls.value);
      if (n !== null && !(Number.isInteger(n) && n > 0)) errs.push("The number of calls must be a whole number above zero (or empty).");
      const secs = seconds.value === "" ? null : Number(seconds.value);
      if (secs === null && n === null) errs.push("Give the lease an end: a duration, a number of calls, or both.");
      errors.replaceChildren(...errs.map((e) => h("li", null, safeText(e))));
      errors.hidden = !errs.length;
      const anyArgs = env && !Array.isArray(env) && typeof env === "object" && !Object.keys(env).length;
      note.replaceChildren(anyArgs
        ? h("div", { class: "warning bad" }, icon("!"), h("span", { text: "No argument is checked: every call of this tool runs without asking while the lease lasts." }))
        : "");
      current = errs.length ? { error: errs[0] } : { lease: { envelope: env, ...(secs !== null ? { seconds: secs } : {}), ...(n !== null ? { calls: n } : {}) } };
    }
    envBox.addEventListener("input", check);
    seconds.addEventListener("change", check);
    calls.addEventListener("input", check);
    regenerate();
    const el = h("div", { class: "editor lease-editor" },
      h("div", { class: "section-head" }, h("h3", { text: "Approve and allow similar calls" })),
      h("p", { class: "muted small" }, "Later calls of ", h("code", null, safeText(`${call.upstream} · ${call.tool}`)),
        " whose arguments fit these checks run without asking, until the lease ends. Revoke it any time under ", h("a", { href: "#/leases", text: "Leases" }), "."),
      rows.length ? table : h("p", { class: "muted", text: "This call has no arguments." }),
      h("label", null, "Envelope (JSON, edit freely)", envBox),
      h("div", { class: "lease-bounds" }, h("label", null, "For ", seconds), h("label", null, "at most ", calls, " calls"), h("span", { class: "muted small", text: "whichever ends first" })),
      note, errors);
    return { el, value: () => current, focus: () => (controls[0] ? controls[0].sel : envBox).focus() };
  }

  // ------------------------------------------------------------------ Review view (audit-gated calls)

  let reviewRoot = null;

  function reviewItem(c, failed) {
    const li = h("li", { class: `qitem ${failed ? "risk-critical failed" : `risk-${c.risk}`}`, role: "option", tabindex: "0", "data-id": c.id },
      h("div", { class: "qtop" }, stateChip(c.state), h("span", { class: "where" }, safeText(`${c.upstream} · ${c.tool}`))),
      h("div", { class: "qsummary" }, summaryView(c, `${c.tool} on ${c.upstream}`)),
      h("div", { class: "qtimes" },
        h("span", { class: "ran", "data-ran": c.created_at }),
        c.state === "under_review" ? h("span", { class: "left", "data-deadline": c.deadline_at || "" }) : h("span", { class: "muted", text: failed ? "undo by hand" : "window closed" })),
      c.state === "under_review" ? h("div", { class: "bar", "data-from": c.created_at, "data-to": c.deadline_at || "" }, h("span")) : null);
    li.addEventListener("click", () => reviewSelect(c.id));
    li.addEventListener("keydown", (e) => { if (e.key === "Enter") reviewSelect(c.id); });
    return li;
  }

  function renderReview(selectedId) {
    state.view = "review";
    if (selectedId) state.reviewSelected = selectedId;
    reviewRoot = { failed: h("div"), list: h("ul", { class: "qlist", role: "listbox", "aria-label": "Calls to review" }), cardSlot: h("div", { class: "card-slot" }), count: h("span", { class: "hint" }) };
    $("#app").replaceChildren(h("div", { class: "queue-layout" },
      h("div", { class: "stack-v" }, reviewRoot.failed,
        h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", { text: "Needs review" }), reviewRoot.count), reviewRoot.list)),
      reviewRoot.cardSlot));
    renderReviewList();
  }

  function renderReviewList() {
    if (!reviewRoot || state.view !== "review") return;
    const list = state.reviews || [];
    const failed = state.rollbackFailed || [];
    reviewRoot.count.textContent = list.length ? `${list.length} · soonest window first` : "";
    reviewRoot.failed.replaceChildren(failed.length
      ? h("section", { class: "panel alarm", role: "alert" },
        h("div", { class: "panel-head" }, h("h2", null, icon("!"), " Rollback failed"), h("span", { class: "hint", text: `${failed.length} · undo by hand` })),
        h("ul", { class: "qlist" }, failed.map((c) => reviewItem(c, true))))
      : "");
    reviewRoot.list.replaceChildren(...(list.length ? list.map((c) => reviewItem(c, false))
      : [h("li", { class: "empty" }, h("div", { class: "big", text: "✓" }), h("div", { text: "Nothing to review. Calls that ran under an audit gate appear here." }))]));
    const ids = [...failed, ...list].map((c) => c.id);
    if (!state.reviewSelected || (!ids.includes(state.reviewSelected) && !(state.card && state.card.id === state.reviewSelected))) {
      state.reviewSelected = list.length ? list[0].id : failed.length ? failed[0].id : null;
    }
    for (const li of document.querySelectorAll("#app .qitem")) li.classList.toggle("sel", li.dataset.id === state.reviewSelected);
    GK.tick();
    if (state.reviewSelected && (!state.card || state.card.id !== state.reviewSelected)) GK.openCard(state.reviewSelected, reviewRoot.cardSlot);
    if (!state.reviewSelected) { reviewRoot.cardSlot.replaceChildren(); state.card = null; }
  }

  function reviewSelect(id) {
    state.reviewSelected = id;
    for (const li of document.querySelectorAll("#app .qitem")) li.classList.toggle("sel", li.dataset.id === id);
    if (reviewRoot) GK.openCard(id, reviewRoot.cardSlot);
    if (window.innerWidth <= 900 && reviewRoot) reviewRoot.cardSlot.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function reviewMove(delta) {
    const ids = [...(state.rollbackFailed || []), ...(state.reviews || [])].map((c) => c.id);
    if (!ids.length) return;
    let i = ids.indexOf(state.reviewSelected);
    i = i < 0 ? 0 : Math.min(ids.length - 1, Math.max(0, i + delta));
    reviewSelect(ids[i]);
  }

  // ------------------------------------------------------------------ Leases view

  async function renderLeases() {
    state.view = "leases";
    const past = h("input", { type: "checkbox", id: "show-past", checked: !!renderLeases.past });
    const body = h("div", null, h("p", { class: "muted pad", text: "Loading…" }));
    $("#app").replaceChildren(h("div", { class: "page-head" },
      h("div", null, h("h1", { text: "Leases" }), h("div", { class: "sub", text: "Approvals that also allow similar calls, for a while or for a number of calls. Revoking one takes effect at the next call." })),
      h("label", { class: "toggle", for: "show-past" }, past, " Show expired, used-up and revoked")), h("section", { class: "panel" }, body));
    past.addEventListener("change", () => { renderLeases.past = past.checked; renderLeases(); });
    let data;
    try { data = await api(`/api/leases${renderLeases.past ? "?all=1" : ""}`); } catch (e) { body.replaceChildren(h("p", { class: "muted pad" }, safeText(e.message))); return; }
    state.offset = data.now - Date.now() / 1000;
    if (!data.leases.length) {
      body.replaceChildren(h("div", { class: "empty" }, h("div", { class: "big", text: "∅" }),
        h("div", { text: renderLeases.past ? "No leases yet." : "No active leases. Approve a held call with “Allow similar…” to create one." })));
      return;
    }
    const order = (x) => (x.status === "active" ? 0 : 1);
    const rows = data.leases.slice().sort((a, b) => order(a) - order(b) || b.created_at - a.created_at).map((x) => {
      const limits = [];
      if (x.status === "revoked") limits.push(h("div", { text: `revoked ${fmtTime(x.revoked_at)}` }));
      else if (x.status === "expired") limits.push(h("div", { text: `expired ${fmtTime(x.expires_at)}` }));
      else if (x.status === "used_up") limits.push(h("div", { text: "all calls used" }));
      else {
        if (x.expires_at !== null) limits.push(h("div", { "data-expires": x.expires_at }));
        if (x.calls_left !== null) limits.push(h("div", { text: `${x.calls_left} call${x.calls_left === 1 ? "" : "s"} left` }));
      }
      const revoke = x.status === "active"
        ? h("button", { type: "button", class: "btn small reject revoke", "data-lease": x.id, text: "Revoke" })
        : null;
      if (revoke) {
        revoke.addEventListener("click", async () => {
          revoke.disabled = true;
          try {
            await api(`/api/leases/${encodeURIComponent(x.id)}/revoke`, { json: {} });
            toast("Lease revoked: similar calls are held again");
          } catch (e) { toast(e.status === 409 ? "Already revoked" : e.message, true); }
          renderLeases();
        });
      }
      return h("tr", { class: `lease st-${x.status}`, "data-lease": x.id },
        h("td", { class: "tool" }, h("div", { class: "mono" }, safeText(`${x.upstream} · ${x.tool}`)),
          x.tool_changed && x.status === "active" ? h("span", { class: "chip risk-high", title: "The tool's definition changed since this lease was granted (or it is quarantined): the lease does not apply", text: "not in effect: tool changed" }) : null),
        h("td", null, describeEnvelope(x.envelope, x.secrets)),
        h("td", { class: "num" }, limits.length ? limits : h("span", { class: "muted", text: "–" })),
        h("td", { class: "num", text: String(x.used) }),
        h("td", null, h("div", null, h("code", null, safeText(x.created_by))), h("div", { class: "muted small", text: fmtTime(x.created_at) }),
          x.source_call ? h("a", { class: "small", href: `#/call/${x.source_call}` }, safeText(x.source_summary || `call #${x.source_call.slice(0, 8)}`)) : null),
        h("td", null, h("span", { class: `chip lease-${x.status}`, text: x.status.replace("_", " ") }),
          x.revoked_by ? h("div", { class: "muted small" }, "by ", safeText(x.revoked_by)) : null),
        h("td", { class: "act" }, revoke));
    });
    body.replaceChildren(h("div", { class: "table-wrap" }, h("table", { class: "grid leases" },
      h("thead", null, h("tr", null, ["Tool", "Allows calls where", "Ends", "Used", "Granted", "Status", ""].map((t) => h("th", { text: t })))),
      h("tbody", null, rows))));
    GK.tick();
  }

  // ------------------------------------------------------------------ Tools view (pins and quarantine)

  async function renderTools() {
    state.view = "tools";
    const body = h("div", { class: "stack-v" }, h("p", { class: "muted", text: "Loading…" }));
    $("#app").replaceChildren(h("div", { class: "page-head" },
      h("div", null, h("h1", { text: "Tools" }), h("div", { class: "sub", text: "Each tool's definition is pinned when first seen. If an upstream changes it, the tool is quarantined: every call is held until someone accepts the new definition." }))), body);
    let data;
    try { data = await api("/api/pins"); } catch (e) { body.replaceChildren(h("p", { class: "muted" }, safeText(e.message))); return; }
    const bad = data.pins.filter((p) => p.quarantined);
    const cards = bad.map((p) => {
      const repin = h("button", { type: "button", class: "btn repin", text: "Re-pin…" });
      const confirmNote = h("span", { class: "muted small" });
      let armed = false;
      repin.addEventListener("click", async () => {
        if (!armed) {
          armed = true;
          repin.textContent = "Trust the new definition";
          repin.classList.add("armed");
          confirmNote.textContent = "Only if you trust this change: its calls stop being held for it (rules still apply). Click again to re-pin.";
          return;
        }
        repin.disabled = true;
        try {
          await api(`/api/pins/${encodeURIComponent(p.upstream)}/${encodeURIComponent(p.tool)}/repin`, { json: {} });
          toast(`Re-pinned ${p.upstream} · ${p.tool}`);
        } catch (e) { toast(e.status === 409 ? "Someone re-pinned it already" : e.message, true); }
        renderTools();
      });
      return h("section", { class: "panel quarantine", "data-tool": `${p.upstream}/${p.tool}` },
        h("div", { class: "panel-head" },
          h("div", { class: "qhead" }, h("span", { class: "chip risk-critical", text: "quarantined" }), h("span", { class: "mono" }, safeText(`${p.upstream} · ${p.tool}`))),
          h("span", { class: "hint", text: `changed ${fmtTime(p.changed_at)}` })),
        h("div", { class: "card-body" },
          h("div", { class: "warning bad" }, icon("!"), h("span", null,
            "The upstream now describes this tool differently from when it was pinned. A changed description can steer the agent (tool poisoning). ",
            p.held ? h("b", { text: `${p.held} call${p.held > 1 ? "s are" : " is"} held because of it.` }) : "Its calls are held until you decide.")),
          h("div", null, h("div", { class: "section-head" }, h("h3", { text: "What changed" }),
            h("span", { class: "tools" }, "pinned ", h("code", { text: p.hash.slice(0, 12) }), " → now ", h("code", { text: (p.pending_hash || "").slice(0, 12) }))), unifiedDiff(p.diff)),
          h("div", { class: "repin-row" }, repin, confirmNote, p.held ? h("a", { href: "#/queue", text: "Decide the held calls →" }) : null)));
    });
    const good = data.pins.filter((p) => !p.quarantined);
    const table = h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", { text: `Pinned tools (${good.length})` })),
      good.length ? h("div", { class: "table-wrap" }, h("table", { class: "grid" },
        h("thead", null, h("tr", null, ["Upstream · tool", "Definition", "Pinned", "By"].map((t) => h("th", { text: t })))),
        h("tbody", null, good.map((p) => h("tr", { class: "static" },
          h("td", { class: "mono" }, safeText(`${p.upstream} · ${p.tool}`)), h("td", null, h("code", { title: p.hash, text: p.hash.slice(0, 12) })),
          h("td", { class: "num", text: fmtTime(p.pinned_at) }), h("td", null, h("code", null, safeText(p.pinned_by))))))))
        : h("p", { class: "muted pad", text: "No tools pinned yet: they are pinned when an upstream first lists them." }));
    body.replaceChildren(...(cards.length ? cards : [h("div", { class: "panel empty" }, h("div", { class: "big", text: "✓" }), h("div", { text: "No tool is quarantined." }))]), table);
  }

  // ------------------------------------------------------------------ banners on the queue

  function banners() {
    const out = [];
    const q = state.quarantined || [];
    const failed = state.rollbackFailed || [];
    const reviews = state.reviews || [];
    for (const p of state.problems || []) {
      // a running gatekeeper serves an upstream that none of its config's rules name
      out.push(h("div", { class: "banner crit problem", role: "alert" }, icon("!"),
        h("span", null, h("b", { text: "Rules do not reach upstream " }), h("code", null, safeText(p.upstream || "?")), h("b", { text: ". " }),
          safeText(p.message || ""))));
    }
    if (failed.length) {
      out.push(h("a", { class: "banner crit", href: "#/review", role: "alert" }, icon("!"),
        h("span", null, h("b", { text: `Rollback failed for ${failed.length} call${failed.length > 1 ? "s" : ""}.` }), " A call that failed its review could not be undone automatically: a human must undo it."), h("span", { class: "go", text: "See →" })));
    }
    if (q.length) {
      out.push(h("a", { class: "banner bad", href: "#/tools" }, icon("!"),
        h("span", null, h("b", { text: `${q.length} tool${q.length > 1 ? "s" : ""} quarantined: ` }),
          q.slice(0, 3).map((p, i) => [i ? ", " : "", h("code", null, safeText(`${p.upstream} · ${p.tool}`))]), q.length > 3 ? ", …" : "",
          ". The definition changed since it was pinned; every call to it is held."), h("span", { class: "go", text: "Review →" })));
    }
    if (reviews.length) {
      out.push(h("a", { class: "banner info", href: "#/review" }, icon("i"),
        h("span", null, h("b", { text: `${reviews.length} call${reviews.length > 1 ? "s" : ""} ran and need${reviews.length > 1 ? "" : "s"} review.` }), " Confirm each, or fail it to undo it."), h("span", { class: "go", text: "Review →" })));
    }
    return out;
  }

  // ------------------------------------------------------------------ live updates and ticks

  GK.listeners.push(() => {
    if (state.view === "review") renderReviewList();
  });

  GK.tickers.push((now) => {
    for (const el of document.querySelectorAll("[data-ran]")) el.textContent = `ran ${dur(now - Number(el.dataset.ran))} ago`;
    for (const el of document.querySelectorAll("[data-expires]")) {
      const left = Number(el.dataset.expires) - now;
      el.textContent = left > 0 ? `in ${dur(left)}` : "ended";
    }
    for (const el of document.querySelectorAll("[data-review-left-of]")) {
      const left = Number(el.dataset.reviewLeftOf) - now;
      el.replaceChildren("review window closes in ", h("b", { text: left > 0 ? dur(left) : "now" }));
      el.classList.toggle("soon", left < 300);
    }
  });

  Object.assign(GK, { unifiedDiff, resultView, leaseEditor, describeEnvelope, renderReview, renderLeases, renderTools, reviewMove, banners, serverNow });
})();
