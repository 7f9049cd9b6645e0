// mcp-gatekeeper approval page: the Calibrate view (suggested rules with their evidence and replay, and shadow
// verdicts against what humans decided). Loaded after app.js, whose helpers it uses through window.GK. Every
// value from the store (tool names, rule names, TOML) reaches the page through textContent (safeText).
// Nothing here changes a rule: a human copies the TOML into the config.
"use strict";

(() => {
  const GK = window.GK;
  const { h, $, safeText, api, toast, dur, pct, fmtTime, state } = GK;

  const THEN = { approved: "approved unchanged", modified: "approved with edits", rejected: "rejected", expired: "timed out",
    undecided: "never decided", ran: "ran without a human", denied: "denied" };
  const SHADOW = { allow: "would have passed", hold: "would have held", deny: "would have denied",
    refuse_invalid: "would have refused (schema)", audit: "would have run under audit review", error: "shadow error" };

  function evidenceView(ev) {
    const rows = [
      ["Calls", `${ev.calls} (${ev.held} held)`],
      ["Decisions", String(ev.decisions)],
      ["Approved unchanged", pct(ev.approved_unchanged_rate)],
      ["Modified", pct(ev.modified_rate)],
      ["Rejected", pct(ev.rejected_rate)],
      ["Timed out (of held)", pct(ev.timed_out_rate)],
      ["Time to decide", ev.decide_p50 === null ? "–" : `${dur(ev.decide_p50)} median, ${dur(ev.decide_p90)} p90`],
    ];
    return h("dl", { class: "evidence" },
      rows.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]),
      h("dt", { text: "Reviewers" }),
      h("dd", null, ev.reviewers.length ? ev.reviewers.map((r, i) => [i ? ", " : "", h("code", null, safeText(r.reviewer)), ` (${r.decisions})`]) : "–"));
  }

  function replayView(rp) {
    return h("div", { class: `replay ${rp.exit_code ? "alert" : ""}` },
      h("h4", { text: rp.exit_code ? "Replay: it would have let run a call a human rejected" : "Replay over the same calls" }),
      h("ul", { class: "hint-list" }, rp.summary.map((line) => h("li", null, safeText(line)))));
  }

  function suggestionCard(x) {
    const copy = x.masked ? h("span", { class: "muted", text: "Secret-looking values are masked; run mcp-gatekeeper suggest --reveal in a terminal to copy it." })
      : h("button", { type: "button", class: "btn small", text: "Copy TOML", onclick: async () => {
        try { await navigator.clipboard.writeText(x.toml); toast("Copied: paste it into the config, then run check-config and replay"); } catch (_) { toast("Could not copy; select the text instead", true); }
      } });
    return h("article", { class: "panel suggestion", "data-kind": x.kind, "data-tool": x.tool },
      h("div", { class: "section-head" }, h("h3", null, safeText(x.title)),
        h("span", { class: `chip ${x.kind === "deny" ? "risk-high" : x.kind === "allow" ? "risk-low" : "neutral"}`, text: x.kind })),
      h("p", { class: "sub" }, h("code", null, safeText(`${x.upstream}/${x.tool}`)), " · held by ", h("code", null, safeText(x.rule || "the built-in default"))),
      evidenceView(x.evidence),
      replayView(x.replay),
      h("div", { class: "section-head" }, h("h4", null, "Paste it ", safeText(x.placement)), copy),
      h("pre", { class: "toml" }, safeText(x.toml)));
  }

  function shadowView(sh) {
    if (!sh.calls) return h("p", { class: "muted pad", text: "No shadow verdicts recorded in this period. Mark a rule shadow = true, or name a whole candidate under [shadow] policy, to see what it would do." });
    const thens = Object.keys(THEN);
    const head = h("tr", null, h("th", { text: "Shadow policy" }), thens.map((t) => h("th", { text: THEN[t] })));
    const body = Object.entries(sh.counts).map(([action, by]) => h("tr", { "data-shadow": action },
      h("td", { text: SHADOW[action] || action }), thens.map((t) => h("td", { class: "num", text: String(by[t] || 0) }))));
    const list = (items, title) => (items.length ? h("div", null, h("h4", { text: title }),
      h("ul", { class: "hint-list" }, items.map((d) => h("li", null, h("a", { href: `#/call/${encodeURIComponent(d.id)}` }, safeText(d.id.slice(0, 12))),
        " ", safeText(`${d.upstream}/${d.tool}`), ` ${fmtTime(d.created_at)}: ${SHADOW[d.shadow] || d.shadow}, ${THEN[d.then]}`)))) : null);
    return h("div", null, h("div", { class: "table-wrap" }, h("table", { class: "grid shadow-table" }, h("thead", null, head), h("tbody", null, body))),
      list(sh.passed_rejected, "The shadow would have let these run; a human rejected them"),
      list(sh.stopped_approved, "The shadow would have stopped these; they ran or a human approved them"));
  }

  async function renderCalibrate() {
    state.view = "calibrate";
    const days = h("select", { "aria-label": "Period" }, [7, 14, 30, 90].map((d) => h("option", { value: String(d), text: `Last ${d} days` })));
    days.value = String(renderCalibrate.days || 30);
    days.addEventListener("change", () => { renderCalibrate.days = Number(days.value); renderCalibrate(); });
    const body = h("div", null, h("p", { class: "muted pad", text: "Replaying…" }));
    $("#app").replaceChildren(h("div", { class: "page-head" },
      h("div", null, h("h1", { text: "Calibrate" }),
        h("div", { class: "sub", text: "What humans decided, turned into rules to consider. Nothing changes by itself: copy a rule into the config, then check it with mcp-gatekeeper check-config and mcp-gatekeeper replay --config FILE." })),
      days), body);
    let data;
    try { data = await api(`/api/calibrate?days=${encodeURIComponent(days.value)}`); } catch (e) { body.replaceChildren(h("p", { class: "muted pad" }, safeText(e.message))); return; }
    if (state.view !== "calibrate") return;
    const t = data.thresholds;
    const none = h("p", { class: "muted pad", text: `No suggestions yet. An allow rule needs ${t.allow_min_decisions} decisions with ${pct(t.allow_min_unchanged)} approved unchanged; a deny, ${t.deny_min_decisions} decisions all rejected; a longer timeout, ${t.timeout_min_held} held calls with ${pct(t.timeout_min_rate)} timed out.` });
    body.replaceChildren(
      h("section", { class: "calibrate-suggestions" }, h("h2", { text: "Suggestions" }), data.suggestions.length ? data.suggestions.map(suggestionCard) : none),
      h("section", { class: "panel calibrate-shadow" }, h("h2", { text: "Shadow verdicts against human decisions" }), shadowView(data.shadow)));
  }

  function shadowFact(call) {
    if (!call.shadow) return null;
    const sh = call.shadow;
    return GK.fact("Shadow policy", h("p", { class: "shadow-verdict", "data-shadow": sh.action },
      h("b", { text: SHADOW[sh.action] || sh.action }), sh.rule ? [" (rule ", h("code", null, safeText(sh.rule)), ")"] : null),
      sh.reason ? h("p", { class: "sub" }, safeText(sh.reason)) : null,
      h("p", { class: "sub muted", text: "Recorded beside the call; the active policy decided." }));
  }

  Object.assign(GK, { renderCalibrate, shadowFact });
})();
