"""Each security rule of the page has a test here: Host, Origin/Sec-Fetch-Site, cookie, CSP, login, token."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from mcp_gatekeeper.models import State
from mcp_gatekeeper.web import CSP, mint_login_url
from mcp_gatekeeper.webauth import load_or_create_token

from .conftest import BASE, PORT, Harness

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("host", "status"),
    [
        (f"127.0.0.1:{PORT}", 200),
        (f"localhost:{PORT}", 200),
        (f"[::1]:{PORT}", 200),
        (f"evil.test:{PORT}", 421),  # DNS rebinding: the name resolves to us, the Host says otherwise
        ("127.0.0.1:9999", 421),
        ("127.0.0.1", 421),
        ("localhost", 421),
        (f"127.0.0.2:{PORT}", 421),
        ("", 421),
    ],
)
async def test_host_allowlist(harness: Harness, host: str, status: int) -> None:
    for path in ("/api/calls", "/", "/static/app.js"):
        r = await harness.client.get(path, headers={**harness.bearer, "Host": host})
        assert r.status_code == status, (path, r.text)
        assert r.headers["content-security-policy"] == CSP


async def test_rebound_host_cannot_login_or_decide(harness: Harness) -> None:
    rec, _ = await harness.hold()
    evil = {"Host": f"evil.test:{PORT}", "Origin": f"http://evil.test:{PORT}"}
    code = await harness.login_code()
    r = await harness.client.get(f"/login?token={code}", headers=evil)
    assert r.status_code == 421
    assert "set-cookie" not in r.headers
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve", headers={**evil, **harness.bearer}, json={"args_digest": rec.args_digest}
    )
    assert r.status_code == 421
    assert (await harness.store.get(rec.id)).state == State.PENDING


# (Sec-Fetch-Site, Origin, credential) -> expected status for a state change
MATRIX = [
    ("same-origin", BASE, "cookie", 200),
    ("same-origin", None, "cookie", 200),
    (None, BASE, "cookie", 200),  # an older browser: no Sec-Fetch-Site, exact Origin match
    ("same-site", f"http://127.0.0.1:{PORT + 1}", "cookie", 403),  # another local port is same-site, not same-origin
    ("same-site", None, "cookie", 403),
    ("cross-site", "http://evil.test", "cookie", 403),
    ("none", None, "cookie", 403),
    ("same-origin", "http://evil.test", "cookie", 403),  # headers that disagree are refused
    (None, "http://evil.test", "cookie", 403),
    (None, "null", "cookie", 403),
    (None, f"http://localhost:{PORT}", "cookie", 403),  # Origin must match the Host it was sent to
    (None, None, "cookie", 403),  # a cookie alone is not enough: browsers always send one of the headers
    (None, None, "bearer", 200),  # a script or curl with the token
    ("cross-site", "http://evil.test", "bearer", 403),
    (None, "http://evil.test", "bearer", 403),
    (None, None, "none", 401),
    ("same-origin", BASE, "none", 401),
    ("same-origin", BASE, "forged-cookie", 401),
    # the cookie reaches pages on other ports; the page key (this origin's localStorage) does not
    ("same-origin", BASE, "cookie-without-key", 401),
    ("same-origin", BASE, "cookie-with-another-sessions-key", 401),
    ("same-origin", BASE, "wrong-bearer", 401),
]


@pytest.mark.parametrize(("site", "origin", "cred", "status"), MATRIX)
async def test_state_change_origin_matrix(
    harness: Harness, site: str | None, origin: str | None, cred: str, status: int
) -> None:
    rec, holder = await harness.hold()
    headers: dict[str, str] = {}
    if cred == "cookie":
        headers.update(await harness.login())
    elif cred == "bearer":
        headers.update(harness.bearer)
    elif cred == "cookie-without-key":
        headers["Cookie"] = (await harness.login())["Cookie"]
    elif cred == "cookie-with-another-sessions-key":
        headers.update(
            {
                "Cookie": (await harness.login())["Cookie"],
                "X-Gatekeeper-Key": (await harness.login())["X-Gatekeeper-Key"],
            }
        )
    elif cred == "forged-cookie":
        headers["Cookie"] = f"gk_session_{PORT}=abcd1234ef56.{'A' * 43}"
    elif cred == "wrong-bearer":
        headers["Authorization"] = "Bearer not-the-token"
    if site is not None:
        headers["Sec-Fetch-Site"] = site
    if origin is not None:
        headers["Origin"] = origin
    r = await harness.client.post(f"/api/calls/{rec.id}/reject", headers=headers, json={"reason": "matrix"})
    assert r.status_code == status, r.text
    row = await harness.store.get(rec.id)
    assert row.state == (State.REJECTED if status == 200 else State.PENDING)
    assert holder.done.is_set() is False or status == 200


async def test_form_post_is_refused(harness: Harness) -> None:
    """A classic CSRF form (urlencoded, cross-site) never decides, even with the cookie attached."""
    rec, _ = await harness.hold()
    session = await harness.login()
    for site in ("cross-site", "same-site"):
        r = await harness.client.post(
            f"/api/calls/{rec.id}/approve",
            headers={**session, "Sec-Fetch-Site": site, "content-type": "application/x-www-form-urlencoded"},
            content=f"args_digest={rec.args_digest}",
        )
        assert r.status_code == 403
    assert (await harness.store.get(rec.id)).state == State.PENDING


async def test_login_sets_strict_httponly_cookie_and_clean_redirect(harness: Harness) -> None:
    code = await harness.login_code()
    r = await harness.client.get(f"/login?token={code}")
    assert r.status_code == 303
    # a clean URL: the page key rides in the fragment (never sent to a server), the code is gone
    location, _, key = r.headers["location"].partition("#key=")
    assert location == "/" and len(key) >= 40 and code not in key and harness.token not in key
    cookie = r.headers["set-cookie"]
    attrs = [a.strip() for a in cookie.split(";")]
    assert attrs[0].startswith(f"gk_session_{PORT}=")
    assert "HttpOnly" in attrs
    assert "SameSite=Strict" in attrs
    assert "Path=/" in attrs
    assert harness.token not in cookie
    assert code not in cookie
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    me = await harness.client.get("/api/session", headers={"Cookie": attrs[0], "X-Gatekeeper-Key": key})
    assert me.status_code == 200
    assert me.json()["reviewer"].startswith("web:")


async def test_login_code_is_single_use(harness: Harness) -> None:
    code = await harness.login_code()
    first = await harness.client.get(f"/login?token={code}")
    assert first.status_code == 303
    second = await harness.client.get(f"/login?token={code}")
    assert second.status_code == 401
    assert "set-cookie" not in second.headers


async def test_login_code_expires_and_cannot_be_forged(harness: Harness) -> None:
    code = await harness.login_code()
    harness.clock.advance(601)  # type: ignore[attr-defined]
    assert (await harness.client.get(f"/login?token={code}")).status_code == 401
    forged = code[:-4] + ("AAAA" if not code.endswith("AAAA") else "BBBB")
    assert (await harness.client.get(f"/login?token={forged}")).status_code == 401
    # the ui-token itself is not a login code (it must never travel in a URL)
    assert (await harness.client.get(f"/login?token={harness.token}")).status_code == 401


async def test_session_survives_a_new_app_process(harness: Harness) -> None:
    """Sessions live in the store: a page restarted on the same home (or another process) accepts them."""
    from mcp_gatekeeper.web import build_app

    session = await harness.login()
    import httpx2

    app2 = build_app(
        store=harness.store,
        gate=harness.gate,
        policy=harness.policy,
        token=harness.token,
        port=PORT,
        clock=harness.clock,
    )
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app2), base_url=BASE) as c:
        assert (await c.get("/api/session", headers=session)).status_code == 200


async def test_get_never_changes_state(harness: Harness) -> None:
    rec, _ = await harness.hold()
    h = harness.bearer
    for path in (
        f"/api/calls/{rec.id}/approve",
        f"/api/calls/{rec.id}/reject",
        f"/api/calls/{rec.id}/approve?args_digest={rec.args_digest}",
    ):
        r = await harness.client.get(path, headers=h)
        assert r.status_code == 405
    await harness.client.get(f"/api/calls/{rec.id}?approve=1", headers=h)
    await harness.client.get(f"/api/calls?state=pending&approve={rec.id}", headers=h)
    assert (await harness.store.get(rec.id)).state == State.PENDING
    assert [e.event for e in await harness.store.audit_events(call_id=rec.id)] == ["held"]


async def test_headers_on_every_response(harness: Harness) -> None:
    for path, headers in (
        ("/", {}),
        ("/static/app.js", {}),
        ("/api/calls", harness.bearer),
        ("/api/calls", {}),  # 401 too
        ("/login?token=x", {}),
    ):
        r = await harness.client.get(path, headers=headers)
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    page = await harness.client.get("/")
    assert "<script>" not in page.text  # no inline script: only <script src=...>
    assert "style=" not in page.text
    assert (await harness.client.get("/static/app.js")).headers["content-type"].startswith("text/javascript")


async def test_token_file_is_private_and_stable(tmp_path: Path) -> None:
    home = tmp_path / "h"
    token = load_or_create_token(home)
    mode = stat.S_IMODE((home / "ui-token").stat().st_mode)
    assert mode == 0o600
    assert load_or_create_token(home) == token
    assert len(token) >= 40


async def test_login_url_carries_a_code_not_the_token(harness: Harness) -> None:
    url = await mint_login_url(harness.store, f"http://127.0.0.1:{PORT}")
    assert url.startswith(f"http://127.0.0.1:{PORT}/login?token=")
    assert harness.token not in url
    r = await harness.client.get(url.removeprefix(f"http://127.0.0.1:{PORT}"))
    assert r.status_code == 303


async def test_token_never_logged(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec, _ = await harness.hold()
    code = await harness.login_code()
    await harness.client.get(f"/login?token={code}")
    await harness.client.post(f"/api/calls/{rec.id}/approve", headers=harness.bearer, json={"args_digest": "bad"})
    await harness.client.get("/api/calls", headers={"Authorization": "Bearer wrong"})
    # the test's own HTTP client logs the URLs it requests; everything else must not
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx2"))
    assert harness.token not in ours
    assert code not in ours
    export = await harness.client.get("/api/audit?export=1", headers=harness.bearer)
    assert harness.token not in export.text
