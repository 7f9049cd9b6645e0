"""The security middleware in front of every request to the approval page (threat model §1.4 #1, #2, #12, #13).

In order: the Host allowlist (421, DNS rebinding); for ``/api/*`` the bearer token, or the session cookie
with its page key (a live session of the store, opened under this very Host; see ``webauth``) (401); for
every state change the same-origin rule (403, CSRF). Every response, refusals included, gets the CSP and
the other hardening headers; API and login responses are never cached.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol
from urllib.parse import parse_qs

from starlette.requests import cookie_parser

from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.errors import StoreError
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.webauth import (
    KEY_HEADER,
    UNSAFE_METHODS,
    Principal,
    check_bearer,
    check_session,
    cookie_name,
    same_origin_ok,
)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)

SIGNED_ELSEWHERE = frozenset({"/slack/interactions"})
"""State changes that carry no cookie, page key or Origin because they are authenticated by another party's
signature, checked by their handler (Slack's v0 signature): the same-origin rule is not theirs. The Host
allowlist still is."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class GuardState(Protocol):
    """What the guard reads from the app's state (its port and allowlist change once ``serve`` binds)."""

    token: str
    port: int
    hosts: frozenset[str]
    public: str | None
    clock: Clock
    store: Store
    scheme: str
    """``https`` when the page is served behind a TLS proxy (team mode's public URL), else ``http``."""
    accounts_only: bool
    """Team mode: only sessions of reviewer accounts; no bearer token, no login-link session."""


def _json_bytes(status: int, code: str, message: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = json.dumps({"error": code, "message": message}).encode()
    return body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


_KEY_IN_QUERY = ("/api/events", "/api/audit", "/api/weekly-review")
"""Reads a browser makes without a script's headers (an EventSource, a download link, the weekly review opened
in a tab): the key may be ``?key=``."""


def _query_key(scope: Scope, path: str) -> str | None:
    if scope["method"] != "GET" or path not in _KEY_IN_QUERY:
        return None
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("key")
    return values[0] if values else None


class Guard:
    """Host allowlist, authentication, same-origin rule for state changes, and the hardening headers."""

    def __init__(self, app: ASGIApp, state: GuardState) -> None:
        self.app, self.st = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        api = path.startswith("/api/")

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(_SECURITY_HEADERS)
                if api or path == "/login":
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            headers[k.decode("latin-1").lower()] = v.decode("latin-1")
        host = headers.get("host", "")
        if host not in self.st.hosts:
            await self._refuse(send_hardened, 421, "misdirected", f"this page answers only on {sorted(self.st.hosts)}")
            return
        method: str = scope["method"]
        try:
            principal = await self._authenticate(headers, host, _query_key(scope, path)) if api else None
        except StoreError:
            await self._refuse(send_hardened, 503, "store_unavailable", "the gatekeeper's store is unavailable")
            return
        if self.st.accounts_only and principal is not None and principal.account is None:
            principal = None
        if (
            method in UNSAFE_METHODS
            and not (path in SIGNED_ELSEWHERE and not api)
            and not same_origin_ok(
                headers,
                host,
                bearer=principal is not None and principal.kind == "bearer",
                public=self.st.public,
                scheme=self.st.scheme,
            )
        ):
            if principal is None and api and "origin" not in headers and "sec-fetch-site" not in headers:
                await self._refuse(
                    send_hardened, 401, "unauthorized", "log in, or send 'Authorization: Bearer <ui-token>'"
                )
            else:
                await self._refuse(send_hardened, 403, "cross_origin", "state changes are accepted only from this page")
            return
        if api and principal is None:
            await self._refuse(send_hardened, 401, "unauthorized", "log in, or send 'Authorization: Bearer <ui-token>'")
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send_hardened)

    async def _authenticate(self, headers: dict[str, str], host: str, query_key: str | None) -> Principal | None:
        bearer = None if self.st.accounts_only else check_bearer(self.st.token, headers.get("authorization"))
        if bearer is not None:
            return bearer
        value = cookie_parser(headers.get("cookie", "")).get(cookie_name(self.st.port))
        key = headers.get(KEY_HEADER) or query_key
        return await check_session(self.st.store, value, key, host=host) if value else None

    @staticmethod
    async def _refuse(send: Send, status: int, code: str, message: str) -> None:
        body, headers = _json_bytes(status, code, message)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
