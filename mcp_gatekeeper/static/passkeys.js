// mcp-gatekeeper approval page: passkeys (WebAuthn). Registering one (the Sessions view), and the assertion an
// approval of a `confirm = "passkey"` call needs: its challenge is derived by the server from the call id and
// the digest of the arguments to run, so the authenticator signs exactly what is approved.
"use strict";

(() => {
  const GK = window.GK;
  const { h, $, api, toast } = GK;

  const fromB64 = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4)), (c) => c.charCodeAt(0));
  const toB64 = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const descriptors = (list) => (list || []).map((c) => ({ ...c, id: fromB64(c.id) }));

  // `proof`: on the approval service, a fresh proof of the account ({password} or {passkey, proof_state}); a
  // session alone registers nothing there (a stolen cookie must not add the thief's passkey).
  async function register(proof) {
    const start = await api("/api/passkeys/register/options", { json: proof || {} });
    const o = start.options;
    const cred = await navigator.credentials.create({ publicKey: {
      ...o, challenge: fromB64(o.challenge), user: { ...o.user, id: fromB64(o.user.id) }, excludeCredentials: descriptors(o.excludeCredentials),
    } });
    const r = cred.response;
    const credential = { id: cred.id, rawId: toB64(cred.rawId), type: cred.type, response: {
      clientDataJSON: toB64(r.clientDataJSON), attestationObject: toB64(r.attestationObject),
      transports: r.getTransports ? r.getTransports() : [] }, clientExtensionResults: {} };
    const done = await api("/api/passkeys/register", { json: { state: start.state, credential } });
    toast("Passkey registered");
    return done;
  }

  // A proof of the account by one of its passkeys: an assertion over a random challenge sealed to this session.
  async function passkeyProof() {
    const got = await api("/api/passkeys/proof-options", { json: {} });
    const o = got.options;
    const a = await navigator.credentials.get({ publicKey: { ...o, challenge: fromB64(o.challenge), allowCredentials: descriptors(o.allowCredentials) } });
    const r = a.response;
    return { proof_state: got.proof_state, passkey: { id: a.id, rawId: toB64(a.rawId), type: a.type, response: {
      authenticatorData: toB64(r.authenticatorData), clientDataJSON: toB64(r.clientDataJSON), signature: toB64(r.signature) } } };
  }

  // The registration dialog of the approval service: the password again, or one of the account's passkeys.
  async function registerWithProof() {
    const mine = ((await api("/api/passkeys")).passkeys || []).length > 0;
    const password = h("input", { type: "password", id: "passkey-password", autocomplete: "current-password", maxlength: "1024", required: true });
    const why = h("p", { class: "signed-out-why", role: "alert", id: "passkey-proof-error", hidden: true });
    const dialog = h("dialog", { id: "passkey-proof", "aria-label": "Confirm it is you" });
    const fail = (e) => { why.textContent = e.message; why.hidden = false; };
    const run = (proof) => register(proof).then(() => dialog.close(), fail);
    const form = h("form", { method: "dialog" },
      h("p", { text: "Registering a passkey lets it approve calls: enter your password again." }),
      h("label", {}, "Password ", password), why,
      h("div", { class: "actions" },
        h("button", { type: "submit", class: "btn approve small", id: "passkey-proof-ok", text: "Register a passkey" }),
        mine ? h("button", { type: "button", class: "btn ghost small", id: "passkey-proof-key", text: "Use one of my passkeys instead",
          onclick: () => passkeyProof().then(run, fail) }) : null,
        h("button", { type: "button", class: "btn ghost small", text: "Cancel", onclick: () => dialog.close() })));
    form.addEventListener("submit", (ev) => { ev.preventDefault(); run({ password: password.value }); });
    dialog.append(form);
    dialog.addEventListener("close", () => dialog.remove());
    document.body.append(dialog);
    dialog.showModal();
    password.focus();
  }

  // The `passkey` field of an approve request for `call` (with `args` when the reviewer edited them).
  async function assertion(call, args) {
    const o = (await api(`/api/calls/${encodeURIComponent(call.id)}/passkey-options`, { json: args ? { arguments: args } : {} })).options;
    const got = await navigator.credentials.get({ publicKey: { ...o, challenge: fromB64(o.challenge), allowCredentials: descriptors(o.allowCredentials) } });
    const r = got.response;
    return { id: got.id, rawId: toB64(got.rawId), type: got.type, response: {
      authenticatorData: toB64(r.authenticatorData), clientDataJSON: toB64(r.clientDataJSON), signature: toB64(r.signature),
      userHandle: r.userHandle ? toB64(r.userHandle) : null } };
  }
  GK.passkeyAssertion = assertion;
  GK.registerPasskey = register;

  // a "Register a passkey" button beside who is signed in
  const slot = $(".session");
  if (slot && window.PublicKeyCredential) {
    const btn = h("button", { type: "button", class: "btn ghost small", id: "passkey-register", text: "Register a passkey" });
    const team = document.body.dataset.mode === "team";
    btn.addEventListener("click", () => (team ? registerWithProof() : register()).catch((e) => toast(`Passkey not registered: ${e.message}`, true)));
    slot.append(btn);
  }
})();
