"""Sessions of the approval page, tried as an attacker would: replayed, moved to another port, kept too long.

Sessions are rows of the store (a real SQLite file); the page is driven through an ASGI client (an httpx2
client, as curl would send the same bytes). Real processes and a real browser: ``tests/test_sessions_e2e.py``.
"""

from __future__ import annotations

import anyio
import anyio.to_thread
import httpx2
import pytest

from mcp_gatekeeper.cli import main
from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.models import State
from mcp_gatekeeper.web import build_app
from mcp_gatekeeper.webauth import RENEW_EVERY, SESSION_IDLE, SESSION_MAX, reviewer_label

from .conftest import BASE, PORT, Harness

pytestmark = pytest.mark.anyio

ME = f"web:{reviewer_label()}"


def _fake(harness: Harness) -> FakeClock:
    assert isinstance(harness.clock, FakeClock)
    return harness.clock


Session = dict[str, str]


async def _me(harness: Harness, session: Session, **headers: str) -> int:
    return (await harness.client.get("/api/session", headers={**session, **headers})).status_code


def _browser(session: Session) -> dict[str, str]:
    return {**session, "Sec-Fetch-Site": "same-origin", "Origin": BASE}


def _replayed(session: Session, *, with_key: bool = False) -> dict[str, str]:
    """A replay from a script: a copied cookie (and, when the attacker has it, the key) plus forged headers."""
    stolen = session if with_key else {"Cookie": session["Cookie"]}
    return {**stolen, "Origin": BASE, "Sec-Fetch-Site": "same-origin", "User-Agent": "curl/8.5.0"}


def _sid(session: Session) -> str:
    return session["Cookie"].partition("=")[2].partition(".")[0]


async def test_the_cookie_alone_opens_nothing(harness: Harness) -> None:
    """What a page on another local port receives (browsers send cookies to every port), replayed with curl."""
    rec, _ = await harness.hold()
    session = await harness.login()
    assert await _me(harness, session) == 200
    for path in ("/api/session", "/api/calls", "/api/events", "/api/audit?export=1", "/api/sessions"):
        assert (await harness.client.get(path, headers=_replayed(session))).status_code == 401, path
    for key in ("", "x", session["X-Gatekeeper-Key"][:-1], session["X-Gatekeeper-Key"] + "A"):
        r = await harness.client.get("/api/session", headers={**_replayed(session), "X-Gatekeeper-Key": key})
        assert r.status_code == 401, key
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve", headers=_replayed(session), json={"args_digest": rec.args_digest}
    )
    assert r.status_code == 401
    # the key in the query is for reads a browser makes without script headers (the live stream, the export)
    key = session["X-Gatekeeper-Key"]
    query = {"Cookie": session["Cookie"]}
    assert (await harness.client.get(f"/api/audit?export=1&key={key}", headers=query)).status_code == 200
    assert (await harness.client.get(f"/api/calls?key={key}", headers=query)).status_code == 401
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve?key={key}", headers=_browser(query), json={"args_digest": rec.args_digest}
    )
    assert r.status_code == 401
    assert (await harness.store.get(rec.id)).state == State.PENDING


async def test_a_session_replayed_after_logout_is_refused(harness: Harness) -> None:
    rec, _ = await harness.hold()
    session = await harness.login()
    r = await harness.client.post("/api/logout", headers=_browser(session), json={})
    assert r.status_code == 200 and "Max-Age=0" in r.headers["set-cookie"]
    # the browser forgets the cookie; an attacker who copied cookie and key replays both
    for path in ("/api/session", "/api/calls", "/api/events"):
        assert (await harness.client.get(path, headers=_replayed(session, with_key=True))).status_code == 401, path
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve", headers=_replayed(session, with_key=True), json={"args_digest": rec.args_digest}
    )
    assert r.status_code == 401
    assert (await harness.store.get(rec.id)).state == State.PENDING
    (ended,) = [e for e in await harness.store.audit_events() if e.event == "session_ended"]
    assert (ended.actor, ended.channel, ended.detail["why"]) == (ME, "web", "logged out")


async def test_a_cookie_sent_to_another_ports_page_is_refused(harness: Harness) -> None:
    """Browsers send a cookie to every port of a host; another gatekeeper page (same store) refuses it."""
    session = await harness.login()
    value = session["Cookie"].partition("=")[2]
    other_port = PORT + 1
    other = build_app(
        store=harness.store, gate=harness.gate, policy=harness.policy, token=harness.token, port=other_port,
        clock=harness.clock,
    )  # fmt: skip
    other_base = f"http://127.0.0.1:{other_port}"
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=other), base_url=other_base) as c:
        for name in (f"gk_session_{PORT}", f"gk_session_{other_port}"):  # as sent, and renamed for that page
            sent = {**session, "Cookie": f"{name}={value}", "Origin": other_base}
            r = await c.get("/api/session", headers=sent)
            assert r.status_code == 401, name
    # the same page under another of its own names is another cookie jar too: localhost is not 127.0.0.1
    assert await _me(harness, session, Host=f"localhost:{PORT}") == 401
    assert await _me(harness, session) == 200  # and where it was opened it still works


async def test_a_session_expires_when_unused_slides_while_used_and_ends_in_any_case(harness: Harness) -> None:
    clock = _fake(harness)
    idle = await harness.login()
    clock.advance(SESSION_IDLE + 1)
    assert await _me(harness, idle) == 401

    used = await harness.login()
    start = clock.now()
    while clock.now() - start < SESSION_MAX - SESSION_IDLE / 2:
        clock.advance(SESSION_IDLE * 0.9)  # each use, just before the idle expiry, slides it forward
        assert await _me(harness, used) == 200, clock.now() - start
    clock.advance(SESSION_IDLE * 0.9)  # past its end: however much it is used, it is over
    assert await _me(harness, used) == 401


async def test_uses_within_a_minute_do_not_write_the_store(harness: Harness) -> None:
    clock = _fake(harness)
    session = await harness.login()
    (row,) = await harness.store.web_sessions()
    clock.advance(RENEW_EVERY / 2)
    assert await _me(harness, session) == 200
    (again,) = await harness.store.web_sessions()
    assert again.last_seen_at == row.last_seen_at
    clock.advance(RENEW_EVERY)
    assert await _me(harness, session) == 200
    (later,) = await harness.store.web_sessions()
    assert later.last_seen_at == clock.now() and later.expires_at == clock.now() + SESSION_IDLE


@pytest.mark.parametrize(
    "forged",
    [
        "{sid}.{secret}x",  # the secret changed
        "{sid}.",  # no secret
        "{sid}",
        "{other}.{secret}",  # someone else's id
        "../{sid}.{secret}",
        "{sid}.{secret}.1800000000",  # the old signed format
    ],
)
async def test_a_forged_cookie_opens_nothing(harness: Harness, forged: str) -> None:
    session = await harness.login()
    name, _, value = session["Cookie"].partition("=")
    sid, _, secret = value.partition(".")
    cookie = f"{name}={forged.format(sid=sid, secret=secret, other='0' * len(sid))}"
    assert await _me(harness, {**session, "Cookie": cookie}) == 401


async def test_login_codes_work_once_in_whichever_process_serves_the_page(harness: Harness) -> None:
    code = await harness.login_code()
    second = build_app(
        store=harness.store, gate=harness.gate, policy=harness.policy, token=harness.token, port=PORT,
        clock=harness.clock,
    )  # fmt: skip
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=second), base_url=BASE) as c:
        assert (await c.get(f"/login?token={code}")).status_code == 303
    r = await harness.client.get(f"/login?token={code}")
    assert r.status_code == 401 and "set-cookie" not in r.headers
    assert "mcp-gatekeeper login" in r.text and "mcp-gatekeeper ui" not in r.text


async def test_sessions_are_listed_and_one_ends_another(harness: Harness) -> None:
    mine = await harness.login(**{"User-Agent": "Mozilla/5.0 Chrome/130.0"})
    theirs = await harness.login(**{"User-Agent": "curl/8.5.0"})
    listed = (await harness.client.get("/api/sessions", headers=mine)).json()["sessions"]
    assert {(s["user_agent"], s["current"], s["reviewer"], s["host"]) for s in listed} == {
        ("Mozilla/5.0 Chrome/130.0", True, ME, f"127.0.0.1:{PORT}"),
        ("curl/8.5.0", False, ME, f"127.0.0.1:{PORT}"),
    }
    other = next(s["id"] for s in listed if not s["current"])
    # a page on another port (same-site) cannot end a session: state changes only from this page
    r = await harness.client.post(
        f"/api/sessions/{other}/revoke",
        headers={**mine, "Sec-Fetch-Site": "same-site", "Origin": f"http://127.0.0.1:{PORT + 1}"},
        json={},
    )
    assert r.status_code == 403 and await _me(harness, theirs) == 200
    r = await harness.client.post(f"/api/sessions/{other}/revoke", headers=_browser(mine), json={})
    assert r.status_code == 200 and r.json()["ended"] == [other]
    assert await _me(harness, theirs) == 401 and await _me(harness, mine) == 200
    again = await harness.client.post(f"/api/sessions/{other}/revoke", headers=_browser(mine), json={})
    assert again.status_code == 409
    missing = await harness.client.post("/api/sessions/nope/revoke", headers=_browser(mine), json={})
    assert missing.status_code == 404


async def _cli(*argv: str) -> int:
    """``main(argv)`` on a worker thread: it runs its own event loop, as the command does in its own process."""
    return await anyio.to_thread.run_sync(main, list(argv))


async def test_the_cli_ends_sessions(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MCP_GATEKEEPER_HOME", str(harness.home))
    monkeypatch.delenv("MCP_GATEKEEPER_CONFIG", raising=False)
    first, second, third = await harness.login(), await harness.login(), await harness.login()
    sid = _sid(first)
    assert await _cli("sessions") == 0
    listing = capsys.readouterr().out
    assert sid in listing and ME in listing
    assert await _cli("sessions", "--revoke", sid) == 0
    assert await _me(harness, first) == 401 and await _me(harness, second) == 200
    assert await _cli("sessions", "--revoke", sid) == 1  # already ended
    assert await _cli("sessions", "--revoke", "nosuchsession") == 1
    assert await _cli("sessions", "--all") == 0
    assert await _me(harness, second) == 401 and await _me(harness, third) == 401
    ended = [e for e in await harness.store.audit_events() if e.event == "session_ended"]
    assert [(e.channel, e.detail["why"]) for e in ended] == [("cli", "revoked from the CLI")] * 3
    assert all(e.actor == f"cli:{reviewer_label()}" for e in ended)


async def test_who_decided_is_readable_and_the_channel_true(harness: Harness) -> None:
    by_page, _ = await harness.hold()
    by_script, _ = await harness.hold()
    session = await harness.login()
    sid = _sid(session)
    r = await harness.client.post(f"/api/calls/{by_page.id}/reject", headers=_browser(session), json={"reason": "no"})
    assert r.status_code == 200
    r = await harness.client.post(f"/api/calls/{by_script.id}/reject", headers=harness.bearer, json={"reason": "no"})
    assert r.status_code == 200
    page_row, script_row = await harness.store.get(by_page.id), await harness.store.get(by_script.id)
    assert (page_row.decided_by, page_row.channel) == (ME, "web")
    assert (script_row.decided_by, script_row.channel) == (f"api:{reviewer_label()}", "api")
    (page_event,) = [e for e in await harness.store.audit_events(call_id=by_page.id) if e.event == "rejected"]
    (script_event,) = [e for e in await harness.store.audit_events(call_id=by_script.id) if e.event == "rejected"]
    assert (page_event.actor, page_event.channel, page_event.detail["evidence"]) == (ME, "web", {"session": sid})
    assert (script_event.actor, script_event.channel) == (f"api:{reviewer_label()}", "api")
    (started,) = [e for e in await harness.store.audit_events() if e.event == "session_started"]
    assert (started.actor, started.detail["session"], started.detail["host"]) == (ME, sid, f"127.0.0.1:{PORT}")
    ok, _, _ = await harness.store.verify_audit()
    assert ok


async def test_sessions_long_over_are_forgotten_but_stay_in_the_audit_log(harness: Harness) -> None:
    clock = _fake(harness)
    old = await harness.login()
    clock.advance(31 * 86400)
    await harness.login()
    ids = [s.id for s in await harness.store.web_sessions(alive_only=False)]
    assert len(ids) == 1 and _sid(old) not in ids
    assert [e.event for e in await harness.store.audit_events()].count("session_started") == 2
