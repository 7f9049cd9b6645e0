// mcp-gatekeeper approval service (team mode): the approvals a call has and needs, whether you may decide
// it, and the queue's filter and grouping by host and agent. Loaded after app.js, whose helpers it uses
// through window.GK; does nothing on the local page (no data-mode="team"). Every value reaches the page
// through textContent (safeText, h).
"use strict";

(() => {
  const GK = window.GK;
  if (document.body.dataset.mode !== "team") return;
  const { h, safeText } = GK;

  // "1 of 2 approvals, by alice" on the card, a reviewer's edit that the current round approves, and why
  // the signed-in reviewer cannot decide this call (groups, their own agent's call, approved already)
  GK.teamBanner = (call) => {
    const t = call.team;
    if (!t || call.state !== "pending") return null;
    const a = t.approvals;
    const needed = a.needed;
    const line = needed > 1
      ? (a.count ? `${a.count} of ${needed} approvals, by ${a.by.join(", ")}` : `Needs ${needed} approvals from different reviewers; none yet`)
      : null;
    const groups = t.requirements.groups.length ? `Decided by the group(s) ${t.requirements.groups.map((g) => g.join(" or ")).join(" and ")}` : null;
    const you = t.you.refusal ? `You cannot decide this call: ${t.you.refusal.message}`
      : t.you.approved ? "You approved this call; another reviewer must approve it too." : null;
    return h("div", { class: "team-approvals", id: "team-approvals" },
      line ? h("div", { class: "approvals-count", text: line }) : null,
      a.edited && a.count ? h("div", { class: "approvals-edit" },
        h("span", { text: `${a.by[0]} approved other arguments; approving now approves these:` }),
        h("pre", { class: "mono" }, safeText(JSON.stringify(a.arguments, null, 2)))) : null,
      groups ? h("div", { class: "muted", text: groups }) : null,
      t.host ? h("div", { class: "muted mono", text: `from ${t.principal || "an unknown agent"} on ${t.host}` }) : null,
      you ? h("div", { class: "approvals-you", role: "note", text: you }) : null);
  };

  // the hosts and agents of the calls now waiting (and the one chosen, even if its calls are gone)
  function whoOptions(pending, chosen) {
    const hosts = [...new Set(pending.map((c) => c.host).filter(Boolean))].sort();
    const agents = [...new Set(pending.map((c) => c.principal).filter(Boolean))].sort();
    const values = [...hosts.map((x) => `host:${x}`), ...agents.map((x) => `agent:${x}`)];
    if (chosen && !values.includes(chosen)) values.push(chosen);
    return [h("option", { value: "", text: "any host or agent" }),
      ...values.map((v) => h("option", { value: v, text: v.replace(":", " ") }))];
  }

  // filter by the gatekeeper's host or the agent, and group the queue by either
  GK.whoFilters = (ui, pending, rerender) => {
    const who = h("select", { class: "qwho", "aria-label": "Host or agent" }, whoOptions(pending, ui.who));
    who.value = ui.who;
    // every live change may bring calls from another machine or agent
    const refresh = (data) => {
      if (!who.isConnected) { GK.listeners.splice(GK.listeners.indexOf(refresh), 1); return; } // the queue was rebuilt
      who.replaceChildren(...whoOptions(data.pending, ui.who));
      who.value = ui.who;
    };
    GK.listeners.push(refresh);
    who.addEventListener("change", () => { ui.who = who.value; rerender(); });
    const group = h("select", { class: "qgroup", "aria-label": "Group by" }, h("option", { value: "", text: "no grouping" }),
      h("option", { value: "host", text: "group by host" }), h("option", { value: "agent", text: "group by agent" }));
    group.value = ui.group;
    group.addEventListener("change", () => { ui.group = group.value; rerender(); });
    return [who, group];
  };
})();
