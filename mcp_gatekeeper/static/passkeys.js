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

  async function register() {
    const start = await api("/api/passkeys/register/options", { json: {} });
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
    btn.addEventListener("click", () => register().catch((e) => toast(`Passkey not registered: ${e.message}`, true)));
    slot.append(btn);
  }
})();
