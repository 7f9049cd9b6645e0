// mcp-gatekeeper approval page: who is signed in (the Sessions view), logging out, and ending sessions.
// Loaded after app.js, whose helpers it uses through window.GK. Every value (user agents included) reaches
// the page through textContent (safeText).
"use strict";

(() => {
  const GK = window.GK;
  const { h, $, safeText, api, toast, fmtTime, state } = GK;

  function browserName(ua) {
    if (!ua) return "unknown browser";
    const m = /(Edg|Firefox|Chrome|Chromium|Safari|curl|HeadlessChrome)\/([\d.]+)/.exec(ua);
    return m ? `${m[1]} ${m[2].split(".")[0]}` : ua.slice(0, 60);
  }

  async function logout() {
    try { await api("/api/logout", { json: {} }); } catch (_) { /* signed out either way */ }
    localStorage.removeItem(GK.KEY_ITEM);
    GK.showLogin("You are signed out. This session has ended on every gatekeeper process.");
  }

  async function renderSessions() {
    state.view = "sessions";
    const body = h("div", null, h("p", { class: "muted pad", text: "Loading…" }));
    $("#app").replaceChildren(h("div", { class: "page-head" },
      h("div", null, h("h1", { text: "Sessions" }),
        h("div", { class: "sub", text: "Browsers signed in to this approval page. A session ends after an hour without use, after 12 hours in any case, at logout, or when you end it here or with mcp-gatekeeper sessions --revoke ID." })),
      h("button", { type: "button", class: "btn small reject", id: "logout-btn", onclick: logout, text: "Log out" })),
    h("section", { class: "panel" }, body));
    let data;
    try { data = await api("/api/sessions"); } catch (e) { body.replaceChildren(h("p", { class: "muted pad" }, safeText(e.message))); return; }
    if (!data.sessions.length) {
      body.replaceChildren(h("p", { class: "muted pad", text: "No browser is signed in (scripts use the bearer token)." }));
      return;
    }
    const rows = data.sessions.map((x) => {
      const end = h("button", { type: "button", class: "btn small reject", "data-session": x.id, text: x.current ? "End (log out)" : "End" });
      end.addEventListener("click", async () => {
        end.disabled = true;
        try {
          await api(`/api/sessions/${encodeURIComponent(x.id)}/revoke`, { json: {} });
          if (x.current) { GK.showLogin("You ended this session."); return; }
          toast("Session ended: that browser must log in again");
        } catch (e) { toast(e.status === 409 ? "That session has already ended" : e.message, true); }
        renderSessions();
      });
      return h("tr", { class: x.current ? "session-row current" : "session-row", "data-session": x.id },
        h("td", null, h("code", null, safeText(x.reviewer)), x.current ? h("span", { class: "chip", text: "this browser" }) : null),
        h("td", { title: x.user_agent || "" }, safeText(browserName(x.user_agent))),
        h("td", null, h("code", null, safeText(x.host))),
        h("td", { text: fmtTime(x.created_at) }),
        h("td", { text: fmtTime(x.last_seen_at) }),
        h("td", { text: fmtTime(x.expires_at) }),
        h("td", { class: "act" }, end));
    });
    body.replaceChildren(h("div", { class: "table-wrap" }, h("table", { class: "grid sessions" },
      h("thead", null, h("tr", null, ["Reviewer", "Browser", "Page", "Signed in", "Last seen", "Ends", ""].map((t) => h("th", { text: t })))),
      h("tbody", null, rows))));
  }

  Object.assign(GK, { renderSessions, logout });
})();
