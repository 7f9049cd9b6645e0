"""The approval page and its JSON API (Starlette), behind one security middleware.

Every request passes :class:`~mcp_gatekeeper.webguard.Guard` first: the Host allowlist (421), then for ``/api/*`` the session
cookie or bearer token (401) and, for every state change, the same-origin rule (403); every response
gets the CSP and the other hardening headers. Handlers are thin: they parse, call the gate or the
store, and map the error tree to statuses (404, 409, 422, 503) in one place.

This module has the calls (queue, card, decisions), the live event stream, stats, audit and rules; the
reviews, leases and pins are in :mod:`mcp_gatekeeper.webgates`; what both share (state, request
parsing, refusals) is in :mod:`mcp_gatekeeper.webhttp`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mcp_gatekeeper import webpasskeys, webteam
from mcp_gatekeeper.calibrate.suggest import suggestions
from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.errors import (
    AlreadyDecidedError,
    CallNotFoundError,
    ConfigError,
    InvalidModificationError,
    NotAllowedError,
    StoreError,
)
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.links import LINK_PREFIX, Links
from mcp_gatekeeper.models import CallRecord, Decision, State
from mcp_gatekeeper.passkeys import PasskeyError
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.reports import audit_export, resolve_zone, stats
from mcp_gatekeeper.review.render import html_document
from mcp_gatekeeper.review.weekly import weekly_review
from mcp_gatekeeper.signatures import SigningKeyError
from mcp_gatekeeper.slack.interactions import PATH as SLACK_PATH
from mcp_gatekeeper.slack.interactions import SlackDesk
from mcp_gatekeeper.slack.interactions import interactions as slack_interactions
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.webauth import (
    clear_cookie_header,
    is_loopback,
    load_or_create_token,
    mint_login_url,
    open_session,
    page_url,
    session_cookie_header,
    still_signed_in,
)
from mcp_gatekeeper.webcalibrate import calibrate
from mcp_gatekeeper.webgates import (
    call_detail,
    check_lease,
    gates_snapshot,
    lease_request,
    list_leases,
    list_pins,
    repin,
    review,
    revoke_lease,
)
from mcp_gatekeeper.webguard import CSP, Guard
from mcp_gatekeeper.webhttp import (
    HEADLINE_ARGS_CAP,
    Problem,
    TeamSite,
    WebState,
    call_json,
    int_param,
    json_body,
    principal,
    reason_of,
    row_headline,
    summary_secrets,
    web_state,
)

__all__ = ["CSP", "build_app", "load_or_create_token", "mint_login_url", "page_url", "serve"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
SSE_POLL = 0.075
SSE_KEEPALIVE = 15.0
SESSION_RECHECK = 5.0
"""Seconds between checks that the live stream's session is still alive (and renewals of it)."""


# ---------------------------------------------------------------------------------------------- helpers


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def _cursor(rec: CallRecord) -> str:
    return base64.urlsafe_b64encode(json.dumps([rec.created_at, rec.id]).encode()).decode().rstrip("=")


def _parse_cursor(text: str) -> tuple[float, str]:
    try:
        created, cid = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return float(created), str(cid)
    except (ValueError, TypeError) as e:
        raise Problem(400, "bad_cursor", "the cursor is not one this API returned") from e


# ---------------------------------------------------------------------------------------------- handlers


async def _index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


async def _login(request: Request) -> Response:
    st = web_state(request)
    opened = await open_session(
        st.store,
        request.query_params.get("token", ""),
        host=request.headers["host"],  # the guard let only an allowed Host through
        user_agent=request.headers.get("user-agent"),
    )
    if opened is None:
        return FileResponse(STATIC_DIR / "login-failed.html", status_code=401, media_type="text/html; charset=utf-8")
    # the page key travels in the fragment: the page's script keeps it (localStorage, this origin only)
    wanted = request.cookies.get(_next_cookie(st.port), "")
    then = f"&call={wanted}" if len(wanted) == 26 and all(c in "0123456789abcdef" for c in wanted) else ""
    resp = RedirectResponse(f"/#key={opened[2]}{then}", status_code=303)
    resp.headers.append("set-cookie", session_cookie_header(st.port, opened[1]))
    if wanted:
        resp.headers.append("set-cookie", f"{_next_cookie(st.port)}=; Path=/login; HttpOnly; SameSite=Lax; Max-Age=0")
    return resp


def _next_cookie(port: int) -> str:
    return f"gk_next_{port}"


async def _short_link(request: Request) -> Response:
    """``/c/<short id>.<mac>``: a notification's link. It opens nothing by itself: a valid one sends the browser
    to the call's card (the page asks for a login first if there is no session) and remembers the call for the
    next login (a plain pointer in a cookie, no credential); any other is refused without saying why."""
    st, links = web_state(request), request.app.state.links
    parsed = Links.parse(request.path_params["token"]) if links is not None else None
    rec = None
    if parsed is not None:
        with contextlib.suppress(CallNotFoundError):
            rec = await st.store.find(parsed[0])
    if rec is None or parsed is None or not links.verify(rec.id, parsed[1]):
        return PlainTextResponse("This link is not valid.", status_code=404, headers={"cache-control": "no-store"})
    resp = RedirectResponse(f"/#/call/{rec.id}", status_code=303, headers={"cache-control": "no-store"})
    resp.headers.append(
        "set-cookie", f"{_next_cookie(st.port)}={rec.id}; Path=/login; HttpOnly; SameSite=Lax; Max-Age=900"
    )
    return resp


async def _logout(request: Request) -> Response:
    st, p = web_state(request), principal(request)
    if p.session is not None:
        await st.store.end_sessions([p.session], by=p.reviewer, channel=p.channel, why="logged out")
        st.changes.notify()
    resp = JSONResponse({"ok": True})
    resp.headers.append("set-cookie", clear_cookie_header(st.port, secure=st.secure_cookies))
    return resp


async def _session(request: Request) -> Response:
    st, p = web_state(request), principal(request)
    return JSONResponse(
        {"reviewer": p.reviewer, "kind": p.kind, "channel": p.channel, "session": p.session, "now": st.clock.now()}
    )


async def _list_sessions(request: Request) -> Response:
    st, p = web_state(request), principal(request)
    now = st.clock.now()
    sessions = await st.store.web_sessions(alive_only=True)
    return JSONResponse({"sessions": [{**x.to_json(now), "current": x.id == p.session} for x in sessions], "now": now})


async def _revoke_session(request: Request) -> Response:
    st, p = web_state(request), principal(request)
    sid = request.path_params["session_id"]
    if await st.store.web_session(sid) is None:
        raise CallNotFoundError(f"no session {sid!r}")
    ended = await st.store.end_sessions([sid], by=p.reviewer, channel=p.channel, why="revoked on the page")
    if not ended:
        raise AlreadyDecidedError(f"session {sid} has already ended", why="decided")
    st.changes.notify()
    resp = JSONResponse({"ended": ended})
    if sid == p.session:
        resp.headers.append("set-cookie", clear_cookie_header(st.port))
    return resp


async def _list_calls(request: Request) -> Response:
    st = web_state(request)
    q = request.query_params
    states = [s for raw in q.getlist("state") for s in raw.split(",") if s]
    valid = {s.value for s in State}
    if bad := [s for s in states if s not in valid]:
        raise Problem(400, "bad_parameter", f"unknown state(s) {bad}; use {sorted(valid)}")
    order = q.get("order") or ("asc" if states == ["pending"] else "desc")
    if order not in ("asc", "desc"):
        raise Problem(400, "bad_parameter", "order must be asc or desc")
    limit = int_param(request, "limit", 50, 1, 500)
    cursor = q.get("cursor")
    calls = await st.store.list_calls(
        states=states or None,
        upstream=q.get("upstream") or None,
        tool=q.get("tool") or None,
        decided_by=q.get("decided_by") or q.get("reviewer") or None,
        text=q.get("q") or None,
        limit=limit + 1,
        before=_parse_cursor(cursor) if cursor else None,
        oldest_first=order == "asc",
    )
    more = len(calls) > limit
    calls = calls[:limit]
    return JSONResponse(
        {
            "calls": [call_json(c, detail=False, policy=st.policy) for c in calls],
            "next_cursor": _cursor(calls[-1]) if more else None,
            "counts": await st.store.counts(),
            "now": st.clock.now(),
        }
    )


async def _get_call(request: Request) -> Response:
    st = web_state(request)
    rec = await st.store.find(request.path_params["call_id"])
    return JSONResponse({**await call_detail(st, rec), "now": st.clock.now()})


async def _decide(request: Request, *, approve: bool) -> Response:
    st = web_state(request)
    body = await json_body(request, st.body_cap)
    reason = reason_of(body)
    digest_seen = body.get("args_digest")
    if digest_seen is not None and not isinstance(digest_seen, str):
        raise Problem(422, "bad_digest", "args_digest must be a string")
    arguments = body.get("arguments")
    if approve:
        if not digest_seen:
            raise Problem(422, "digest_required", "args_digest (of the arguments you reviewed) is required to approve")
        if "arguments" in body and not isinstance(arguments, dict):
            raise InvalidModificationError("arguments must be a JSON object")
    elif "arguments" in body:
        raise InvalidModificationError("arguments can only be given with an approval")
    elif "lease" in body:
        raise Problem(422, "bad_lease", "a lease can only be given with an approval")
    who = principal(request)
    decision = Decision(
        approve=approve,
        decided_by=who.reviewer,
        channel=who.channel,
        reason=reason,
        arguments=arguments if approve and "arguments" in body else None,
        args_digest=digest_seen or None,
        lease=lease_request(body) if approve else None,
        evidence={"session": who.session} if who.session else None,
        passkey=body.get("passkey") if approve else None,
    )
    call_id = request.path_params["call_id"]
    if decision.lease is not None:
        check_lease(st, await st.store.find(call_id), decision)
    rec = await st.gate.decide(call_id, decision)
    st.changes.notify()
    return JSONResponse(await call_detail(st, rec))


async def _approve(request: Request) -> Response:
    return await _decide(request, approve=True)


async def _reject(request: Request) -> Response:
    return await _decide(request, approve=False)


async def live_snapshot(st: WebState) -> dict[str, Any]:
    """What the live view shows: the pending queue (with escalation levels) and the other things to act on."""
    pending = await st.store.queries.pending_queue(arguments_cap=HEADLINE_ARGS_CAP)
    return {
        "pending": [
            {
                "id": r.id,
                "created_at": r.created_at,
                "deadline_at": r.deadline_at,
                "risk": r.risk,
                "upstream": r.upstream,
                "tool": r.tool,
                "summary": r.summary,
                "escalation": r.escalation,
                "principal": r.principal,
                "quarantined": r.quarantined,
                "summary_secrets": summary_secrets(r.summary),
                **row_headline(r.tool, r.upstream, r.summary, r.short_arguments, r.input_schema),
            }
            for r in pending
        ],
        **await gates_snapshot(st),
        **({"team": await _team_extras(st, [r.id for r in pending])} if st.team is not None else {}),
        "problems": await _problems_of(st),
        "counts": await st.store.counts(),
        "now": st.clock.now(),
    }


async def _team_extras(st: WebState, ids: list[str]) -> dict[str, Any]:
    """Team mode: the host of each pending call's gatekeeper, and who has approved it so far."""
    tallies = await st.store.approvals.tallies(ids)
    return {
        "hosts": await st.store.queries.hosts_of(ids),
        "approvals": {cid: {"count": t.count, "by": list(t.approvers)} for cid, t in tallies.items()},
    }


async def _problems_of(st: WebState) -> list[dict[str, Any]]:
    """Set-up problems of the running gatekeeper processes (e.g. an upstream no rule reaches)."""
    return [{**e.detail, "at": e.at, "noted_by": e.actor} for e in await st.store.live_problems()]


async def _problems(request: Request) -> Response:
    return JSONResponse({"problems": await _problems_of(web_state(request))})


async def _events(request: Request) -> Response:
    st, who, host = web_state(request), principal(request), request.headers["host"]

    async def stream() -> AsyncIterator[str]:
        last: Any = None
        idle = 0.0
        since_check = 0.0
        yield "retry: 2000\n\n"
        while not st.closing:
            try:
                marker = await st.store.queries.last_audit_seq()
                # a logout or revocation (any process) is an audit event: the stream of that session ends at once
                if marker != last or since_check >= SESSION_RECHECK:
                    since_check = 0.0
                    if not await still_signed_in(st.store, who, host=host):
                        yield f"event: signed_out\ndata: {json.dumps({'message': 'this session has ended'})}\n\n"
                        return
                if marker != last:
                    snapshot = await live_snapshot(st)
                    last = marker
                    yield f"event: change\ndata: {json.dumps({'seq': marker, **snapshot})}\n\n"
                    idle = 0.0
            except StoreError:
                yield f"event: store_error\ndata: {json.dumps({'message': 'the store is unavailable'})}\n\n"
            if idle >= SSE_KEEPALIVE:
                yield ": keep-alive\n\n"
                idle = 0.0
            await st.changes.wait(SSE_POLL)
            idle += SSE_POLL
            since_check += SSE_POLL

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"cache-control": "no-store", "x-accel-buffering": "no"}
    )


async def _stats(request: Request) -> Response:
    st = web_state(request)
    days = int_param(request, "days", 14, 1, 365)
    offset = int_param(request, "utc_offset", 0, -1080, 1080) if request.query_params.get("utc_offset") else None
    zone = resolve_zone(request.query_params.get("tz"), offset)
    return JSONResponse(await stats(st.store, now=st.clock.now(), days=float(days), zone=zone))


async def _weekly_review(request: Request) -> Response:
    """The weekly review (the same HTML as ``mcp-gatekeeper report --format html``, its stylesheet linked)."""
    st = web_state(request)
    days = int_param(request, "days", 7, 1, 90)
    now, policy = st.clock.now(), st.policy
    since = now - days * 86400.0
    found = await suggestions(
        st.store, policy.config, since=since, now=now, own_files=policy.own_files, home_dir=policy.home_dir
    )
    review = await weekly_review(st.store, since=since, now=now, suggestions=found)
    return HTMLResponse(html_document(review, stylesheet_href="/static/review.css"))


async def _audit(request: Request) -> Response:
    st = web_state(request)
    q = request.query_params
    if q.get("export") in ("1", "true", "yes"):
        body = await audit_export(st.store, hasher=st.hash_secret, now=st.clock.now())
        return JSONResponse(body, headers={"content-disposition": 'attachment; filename="mcp-gatekeeper-audit.json"'})
    call_id = q.get("call_id")
    if call_id:
        call_id = (await st.store.find(call_id)).id
    limit = int_param(request, "limit", 200, 1, 5000)
    before = int_param(request, "before", 0, 0, 2**62) or None
    events = await st.store.audit_events(call_id=call_id, limit=limit, before_seq=before)
    ok, checked, message = await st.store.verify_audit()
    return JSONResponse(
        {"events": [e.to_json() for e in events], "chain": {"ok": ok, "checked": checked, "message": message}}
    )


async def _rules(request: Request) -> Response:
    cfg = web_state(request).policy.config
    return JSONResponse(
        {
            "rules": [r.model_dump(mode="json") for r in cfg.rules],
            "defaults": cfg.defaults.model_dump(mode="json"),
            "upstreams": sorted(cfg.upstreams),
            "security": cfg.security.model_dump(mode="json"),
        }
    )


async def _explain(request: Request) -> Response:
    st = web_state(request)
    body = await json_body(request, st.body_cap)
    upstream, tool = body.get("upstream"), body.get("tool")
    arguments, annotations = body.get("arguments", {}), body.get("annotations")
    if not isinstance(upstream, str) or not isinstance(tool, str) or not upstream or not tool:
        raise Problem(422, "bad_request", "upstream and tool are required strings")
    if not isinstance(arguments, dict) or (annotations is not None and not isinstance(annotations, dict)):
        raise Problem(422, "bad_request", "arguments and annotations must be JSON objects")
    return JSONResponse(st.policy.evaluate(upstream, tool, arguments, annotations).to_json())


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if request.url.path.startswith("/api/"):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "message": exc.detail}, status_code=exc.status_code, headers=headers)
    return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=headers)


async def _openapi(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "openapi.json", media_type="application/json")


# ---------------------------------------------------------------------------------------------- errors


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return _error(exc.status, exc.code, exc.message, **exc.extra)


async def _on_not_found(request: Request, exc: Exception) -> Response:
    return _error(404, "not_found", str(exc))


async def _on_already_decided(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AlreadyDecidedError)
    return _error(409, exc.why, str(exc), state=exc.state)


async def _on_invalid(request: Request, exc: Exception) -> Response:
    return _error(422, "invalid_modification", str(exc))


async def _on_passkey(request: Request, exc: Exception) -> Response:
    return _error(403, "passkey_refused", str(exc))


async def _on_signing_key(request: Request, exc: Exception) -> Response:
    log.error("cannot sign a decision: %s", exc)
    return _error(503, "signing_key_unusable", f"nothing was decided: {exc}")


async def _on_store(request: Request, exc: Exception) -> Response:
    log.warning("store unavailable for %s %s: %s", request.method, request.url.path, exc)
    return _error(503, "store_unavailable", "the gatekeeper's store is unavailable; try again")


# ---------------------------------------------------------------------------------------------- app and server


def build_app(
    *,
    store: Store,
    gate: Gate,
    policy: Policy,
    token: str,
    port: int,
    clock: Clock,
    links: Links | None = None,
    slack: SlackDesk | None = None,
    team: TeamSite | None = None,
) -> Starlette:
    """The approval page and JSON API. ``serve`` runs it; tests drive it through an ASGI client.

    ``links`` checks the notifications' short links (``/c/…``); ``slack`` answers Slack's buttons;
    ``team``: the approval service (team mode): reviewer accounts only, :mod:`mcp_gatekeeper.webteam`'s routes."""
    state = WebState(store=store, gate=gate, policy=policy, token=token, port=port, clock=clock, team=team)
    routes = [
        *(webteam.routes() if team is not None else []),
        Route("/", _index, methods=["GET"]),
        Route("/login", _login, methods=["GET"]),
        Route(LINK_PREFIX + "{token}", _short_link, methods=["GET"]),
        Route("/api/session", _session, methods=["GET"]),
        Route("/api/logout", _logout, methods=["POST"]),
        Route("/api/sessions", _list_sessions, methods=["GET"]),
        Route("/api/sessions/{session_id}/revoke", _revoke_session, methods=["POST"]),
        Route("/api/calls", _list_calls, methods=["GET"]),
        Route("/api/calls/{call_id}", _get_call, methods=["GET"]),
        Route("/api/calls/{call_id}/approve", _approve, methods=["POST"]),
        Route("/api/calls/{call_id}/reject", _reject, methods=["POST"]),
        Route("/api/calls/{call_id}/review", review, methods=["POST"]),
        Route("/api/leases", list_leases, methods=["GET"]),
        Route("/api/leases/{lease_id}/revoke", revoke_lease, methods=["POST"]),
        Route("/api/pins", list_pins, methods=["GET"]),
        Route("/api/pins/{upstream}/{tool:path}/repin", repin, methods=["POST"]),
        Route("/api/events", _events, methods=["GET"]),
        Route("/api/stats", _stats, methods=["GET"]),
        Route("/api/weekly-review", _weekly_review, methods=["GET"]),
        Route("/api/audit", _audit, methods=["GET"]),
        Route("/api/rules", _rules, methods=["GET"]),
        Route("/api/problems", _problems, methods=["GET"]),
        Route("/api/explain", _explain, methods=["POST"]),
        Route("/api/calibrate", calibrate, methods=["GET"]),
        Route("/api/openapi.json", _openapi, methods=["GET"]),
        *webpasskeys.routes(),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    if slack is not None:
        routes.append(Route(SLACK_PATH, slack_interactions, methods=["POST"]))
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, state=state)],
        exception_handlers={
            HTTPException: _on_http,
            Problem: _on_problem,
            CallNotFoundError: _on_not_found,
            AlreadyDecidedError: _on_already_decided,
            InvalidModificationError: _on_invalid,
            NotAllowedError: webteam.on_not_allowed,
            PasskeyError: _on_passkey,
            SigningKeyError: _on_signing_key,
            StoreError: _on_store,
        },
    )
    app.state.gk = state
    app.state.links = links
    app.state.slack = slack
    return app


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the caller's task group owns the process's lifetime."""

    def capture_signals(self) -> Any:
        return contextlib.nullcontext()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(
    app: Starlette,
    *,
    host: str,
    port: int,
    allow_remote: bool,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Bind ``host:port`` (``OSError`` if taken), report the bound port, then serve until cancelled."""
    if not is_loopback(host):
        if not allow_remote:
            raise ConfigError(
                [f"ui.host: {host!r} is not a loopback address; set ui.allow_remote = true to serve the page on it"]
            )
        log.warning(
            "WARNING: the approval page is listening on %s, reachable from other machines; anyone who gets a"
            " login link or the ui-token can approve calls",
            host,
        )
    sock = _bind(host, port)
    state: WebState = app.state.gk
    bound = int(sock.getsockname()[1])
    state.set_port(bound)
    state.closing = False
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        # the client address is the peer's: uvicorn would otherwise take X-Forwarded-For from any loopback client
        # (every local process), and the login throttle counts by address (webteam.client_address reads the
        # header itself, only from the TLS proxy of a public URL)
        proxy_headers=False,
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = _Server(config)
    finished = anyio.Event()

    async def run() -> None:
        try:
            with anyio.CancelScope(shield=True):
                await server.serve(sockets=[sock])
        finally:
            finished.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            task_status.started(bound)
            try:
                await finished.wait()
            finally:
                state.closing = True
                server.should_exit = True
    finally:
        sock.close()
