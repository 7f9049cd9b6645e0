"""The approval service's own routes (team mode): password login, decisions by named reviewers, approvals.

In team mode (``mcp-gatekeeper serve``) the page is used by reviewer accounts only: the guard refuses the
ui-token and login-link sessions (:attr:`WebState.accounts_only`), and these routes come before the page's
own, replacing its login, its decisions and its session revocation:

- ``GET /login`` a form; ``POST /login`` checks the name and password (scrypt, off the event loop) and opens
  a session bound to the account and to this ``Host``. Failed attempts are counted per account and per
  client address: :data:`MAX_FAILED_PER_ACCOUNT` (or :data:`MAX_FAILED_PER_ADDRESS`) failures within
  :data:`LOGIN_WINDOW` seconds refuse every further attempt (429) until the window has moved on, whether
  the password is right or not. Behind the TLS proxy the client address is the last ``X-Forwarded-For``
  entry (the one the proxy added) when the request comes from loopback.
- ``POST /api/calls/{id}/approve|reject`` go through :class:`~mcp_gatekeeper.team.TeamDesk` (groups, no
  self-review, quorum); a refusal is 403 with its ``error`` code and the reason, and is audited.
- ``POST /api/calls/{id}/review`` (confirming or failing a call an audit gate ran) is a decision too: the same
  groups and no-self-review, refused and audited alike;
- ``POST /api/pins/.../repin`` (ending a tool's quarantine) is an admin's step;
- ``GET /api/calls/{id}`` adds ``team``: the call's requirements, its current round of approvals, and
  whether (and why not) the signed-in reviewer may decide it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mcp_gatekeeper import accounts
from mcp_gatekeeper.accounts import Reviewer
from mcp_gatekeeper.errors import AlreadyDecidedError, CallNotFoundError, NotAllowedError
from mcp_gatekeeper.team import TeamDesk, refusal, requirements
from mcp_gatekeeper.webauth import clear_cookie_header, is_loopback, open_account_session, session_cookie_header
from mcp_gatekeeper.webgates import call_detail, repin, review
from mcp_gatekeeper.webhttp import Problem, WebState, json_body, principal, reason_of, web_state

MAX_FAILED_PER_ACCOUNT = 5
MAX_FAILED_PER_ADDRESS = 20
LOGIN_WINDOW = 900.0
"""Seconds over which failed logins are counted (15 minutes)."""
_LOGIN_BODY_CAP = 4096
STATIC_DIR = Path(__file__).parent / "static"

_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer"><title>Log in - mcp-gatekeeper</title>
<link rel="icon" href="/static/icon.svg" type="image/svg+xml"><link rel="stylesheet" href="/static/app.css"></head>
<body><main class="login-box team-login"><h1>Log in to review held calls</h1>{message}
<form method="post" action="/login">
<label>Reviewer name <input type="text" name="username" id="username" autocomplete="username" required maxlength="63"
 autocapitalize="none" spellcheck="false" value="{username}"></label>
<label>Password <input type="password" name="password" id="password" autocomplete="current-password" required
 maxlength="1024"></label>
<button type="submit" class="btn approve" id="login-btn">Log in</button>
</form><p class="muted">Accounts are made by an admin with <code>mcp-gatekeeper users add NAME</code>.</p></main></body></html>
"""


def login_page(message: str | None = None, *, username: str = "", status: int = 200) -> HTMLResponse:
    note = f'<p class="signed-out-why" role="alert">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(_FORM.format(message=note, username=html.escape(username)), status_code=status)


def client_address(request: Request, st: WebState) -> str:
    peer = request.client.host if request.client else "unknown"
    if st.team is not None and st.team.public_host and is_loopback(peer):
        forwarded = request.headers.get("x-forwarded-for", "")
        last = forwarded.split(",")[-1].strip()
        if last:
            return last[:64]
    return peer


async def _login_form(request: Request) -> Response:
    ended = request.query_params.get("ended")
    return login_page("Your session has ended: log in again." if ended else None)


async def check_password(
    st: WebState, account: str, password: str, *, address: str, why: str
) -> tuple[str | None, str | None]:
    """Check ``account``'s password under the login throttle: ``(None, its stored hash)`` if right, else
    ``("rate_limited", None)`` (too many failures, for the account or from ``address``, within
    :data:`LOGIN_WINDOW`) or ``("wrong_password", None)``. Every failure is counted toward the lockout and
    audited (``login_failed``, with ``why``)."""
    by_account, by_address = await st.store.reviewers.failed_logins(
        account=account, address=address, since=st.clock.now() - LOGIN_WINDOW
    )
    if by_account >= MAX_FAILED_PER_ACCOUNT or by_address >= MAX_FAILED_PER_ADDRESS:
        await st.store.reviewers.note_login(account=account, address=address, ok=False, why="rate_limited")
        return "rate_limited", None
    stored = await st.store.reviewers.password_hash(account)
    ok = await anyio.to_thread.run_sync(accounts.verify_password, password[: accounts.MAX_PASSWORD], stored)
    if not ok:
        await st.store.reviewers.note_login(account=account, address=address, ok=False, why=why)
        return "wrong_password", None
    return None, stored


async def _login(request: Request) -> Response:
    st = web_state(request)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return login_page("Send the form.", status=415)
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _LOGIN_BODY_CAP:
            return login_page("That is too long.", status=413)
    fields = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=4)
    username = (fields.get("username") or [""])[0].strip().lower()
    password = (fields.get("password") or [""])[0]
    if not username or not password:
        return login_page("Enter your reviewer name and password.", username=username, status=400)
    address = client_address(request, st)
    account = username[:64]
    checked, stored = await check_password(st, account, password, address=address, why="bad name or password")
    if checked == "rate_limited":
        minutes = int(LOGIN_WINDOW // 60)
        return login_page(
            f"Too many failed logins: wait up to {minutes} minutes, or ask an admin to reset the password.",
            username=username, status=429,
        )  # fmt: skip
    if checked == "wrong_password":
        return login_page("Wrong reviewer name or password.", username=username, status=401)
    opened = await open_account_session(
        st.store, account, host=request.headers["host"], user_agent=request.headers.get("user-agent"),
        password_hash=stored,
    )  # fmt: skip
    if opened is None:  # removed, or its password changed, between the check and the session
        return login_page("Wrong reviewer name or password.", username=username, status=401)
    await st.store.reviewers.note_login(account=account, address=address, ok=True)
    st.changes.notify()
    resp = RedirectResponse(f"/#key={opened[2]}", status_code=303)
    resp.headers.append("set-cookie", session_cookie_header(st.port, opened[1], secure=st.secure_cookies))
    return resp


async def _index(request: Request) -> Response:
    text = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    text = text.replace("<body>", '<body data-mode="team">', 1)
    return HTMLResponse(text)


async def reviewer_of(request: Request) -> Reviewer:
    """The signed-in reviewer's account (401 if it was removed since the session opened)."""
    st, p = web_state(request), principal(request)
    found = await st.store.reviewers.get(p.account) if p.account else None
    if found is None:
        raise Problem(401, "unauthorized", "this account no longer exists")
    return found


async def team_info(st: WebState, request: Request, call_id: str) -> dict[str, Any]:
    reviewer = await reviewer_of(request)
    rec = await st.store.find(call_id)
    tally = await st.store.approvals.tally(rec.id)
    req = requirements(st.policy, rec, *([tally.arguments] if tally.arguments is not None else []))
    principal_of = await st.store.principal_of(rec.id)
    refused = refusal(req, principal_of, reviewer)
    hosts = await st.store.queries.hosts_of([rec.id])
    return {
        "requirements": req.to_json(),
        "approvals": tally.to_json(req.approvals),
        "you": {
            "name": reviewer.name,
            "may_decide": refused is None,
            "refusal": {"error": refused[0], "message": refused[1]} if refused else None,
            "approved": reviewer.name in tally.approvers,
        },
        "principal": principal_of,
        "host": hosts.get(rec.id),
    }


async def _get_call(request: Request) -> Response:
    st = web_state(request)
    rec = await st.store.find(request.path_params["call_id"])
    detail = await call_detail(st, rec)
    detail["lease_offer"] = None  # the service decides each call on its own
    return JSONResponse({**detail, "team": await team_info(st, request, rec.id), "now": st.clock.now()})


async def _decide(request: Request, *, approve: bool) -> Response:
    st, who = web_state(request), principal(request)
    reviewer = await reviewer_of(request)
    body = await json_body(request, st.body_cap)
    reason = reason_of(body)
    if "lease" in body:
        raise Problem(422, "bad_lease", "the approval service offers no leases: each call is decided on its own")
    desk = TeamDesk(st.store, st.gate, st.policy)
    call_id = request.path_params["call_id"]
    if not approve:
        if "arguments" in body:
            raise Problem(422, "invalid_modification", "arguments can only be given with an approval")
        rec = await desk.reject(call_id, reviewer, session=who.session, reason=reason)
        st.changes.notify()
        return JSONResponse({**await call_detail(st, rec), "decided": True})
    seen = body.get("args_digest")
    if not isinstance(seen, str) or not seen:
        raise Problem(422, "digest_required", "args_digest (of the arguments you reviewed) is required to approve")
    arguments = body.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise Problem(422, "invalid_modification", "arguments must be a JSON object")
    step = await desk.approve(
        call_id, reviewer, seen_digest=seen, arguments=arguments, session=who.session, reason=reason,
        passkey=body.get("passkey"),  # `confirm = "passkey"`: the approver's own assertion, for their step
    )  # fmt: skip
    st.changes.notify()
    return JSONResponse(
        {**await call_detail(st, step.call), "decided": step.decided, "approvals": step.tally.to_json(step.needed)}
    )


async def _approve(request: Request) -> Response:
    return await _decide(request, approve=True)


async def _reject(request: Request) -> Response:
    return await _decide(request, approve=False)


async def _session(request: Request) -> Response:
    st, p = web_state(request), principal(request)
    reviewer = await reviewer_of(request)
    return JSONResponse(
        {"reviewer": p.reviewer, "kind": p.kind, "channel": p.channel, "session": p.session, "now": st.clock.now(),
         "account": reviewer.to_json(), "team": True}
    )  # fmt: skip


async def _list_sessions(request: Request) -> Response:
    """A reviewer sees their own live sessions; an admin sees everyone's (whom they may end)."""
    st, p = web_state(request), principal(request)
    reviewer = await reviewer_of(request)
    now = st.clock.now()
    sessions = [x for x in await st.store.web_sessions(alive_only=True) if reviewer.admin or x.account == reviewer.name]
    return JSONResponse({"sessions": [{**x.to_json(now), "current": x.id == p.session} for x in sessions], "now": now})


async def _revoke_session(request: Request) -> Response:
    """A reviewer ends their own sessions; an admin ends anyone's."""
    st, p = web_state(request), principal(request)
    reviewer = await reviewer_of(request)
    sid = request.path_params["session_id"]
    target = await st.store.web_session(sid)
    if target is None:
        raise CallNotFoundError(f"no session {sid!r}")
    if target.account != reviewer.name and not reviewer.admin:
        raise NotAllowedError("only an admin ends another reviewer's session", why="not_admin")
    ended = await st.store.end_sessions([sid], by=p.reviewer, channel=p.channel, why="revoked on the page")
    if not ended:
        raise AlreadyDecidedError(f"session {sid} has already ended", why="decided")
    st.changes.notify()
    resp = JSONResponse({"ended": ended})
    if sid == p.session:
        resp.headers.append("set-cookie", clear_cookie_header(st.port, secure=st.secure_cookies))
    return resp


async def _review(request: Request) -> Response:
    """Confirming or failing a call that already ran (an audit gate) is a decision: the desk's groups and
    no-self-review apply, as for a held call."""
    st = web_state(request)
    rec = await st.store.find(request.path_params["call_id"])
    await TeamDesk(st.store, st.gate, st.policy).check_reviewer(rec, await reviewer_of(request))
    return await review(request)


async def _repin(request: Request) -> Response:
    """Accepting a changed tool definition ends its quarantine for every gatekeeper: an admin's step."""
    if not (await reviewer_of(request)).admin:
        raise NotAllowedError("only an admin accepts a changed tool definition", why="not_admin")
    return await repin(request)


async def on_not_allowed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NotAllowedError)
    status = 429 if exc.why == "rate_limited" else 403
    return JSONResponse({"error": exc.why, "message": str(exc)}, status_code=status)


def routes() -> list[Route]:
    """The team routes; the app puts them before its own, so they replace the local page's."""
    return [
        Route("/", _index, methods=["GET"]),
        Route("/login", _login_form, methods=["GET"]),
        Route("/login", _login, methods=["POST"]),
        Route("/api/session", _session, methods=["GET"]),
        Route("/api/sessions", _list_sessions, methods=["GET"]),
        Route("/api/sessions/{session_id}/revoke", _revoke_session, methods=["POST"]),
        Route("/api/calls/{call_id}", _get_call, methods=["GET"]),
        Route("/api/calls/{call_id}/approve", _approve, methods=["POST"]),
        Route("/api/calls/{call_id}/reject", _reject, methods=["POST"]),
        Route("/api/calls/{call_id}/review", _review, methods=["POST"]),
        Route("/api/pins/{upstream}/{tool:path}/repin", _repin, methods=["POST"]),
    ]
