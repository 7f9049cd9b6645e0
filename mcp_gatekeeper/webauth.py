"""Who may use the approval page, and from where: the ui-token, login codes, sessions, Host/Origin.

* the **ui-token** (``$home/ui-token``, mode 0600) is the one secret for scripts: they send it as a bearer
  token (their decisions are recorded with channel ``api``);
* a **login code** is a random one-time code kept (hashed) in the store, so any process serving the page
  accepts a code any other process printed (``mcp-gatekeeper login``), and only once;
* a **session** is a row in the store, so a logout or a revocation (page or CLI) ends it in every process.
  It takes two secrets, and the store keeps only their hashes: the cookie (``<id>.<secret>``, HttpOnly)
  and a **page key** the page's script keeps in ``localStorage`` and sends as ``X-Gatekeeper-Key``.
  Browsers send a cookie to every port of a host, so a page on another local port receives the cookie;
  ``localStorage`` belongs to one origin (scheme, host and port), so that page never sees the key, and the
  cookie replayed alone (from a script, with any header forged) opens nothing. The key reaches the script
  in the fragment of the login redirect (``/#key=…``: never sent to a server, never in a Referer).
  A session is honoured only under the ``Host`` (name and port) it was opened on, so another gatekeeper
  page on another port refuses it too. It expires after :data:`SESSION_IDLE` seconds without use (each
  use slides that forward) and after :data:`SESSION_MAX` seconds in any case.

Nothing in this module logs a token, a code or a cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mcp_gatekeeper import hostos
from mcp_gatekeeper.models import WebSession
from mcp_gatekeeper.store import Store

TOKEN_FILE = "ui-token"  # noqa: S105 - a file name, not a secret
LOGIN_TTL = 600.0
"""Seconds a login URL stays valid (and single use)."""
SESSION_IDLE = 3600.0
"""Seconds a session lives without being used; every use slides this forward."""
SESSION_MAX = 12 * 3600.0
"""Seconds a session lives at most, however much it is used: then the reviewer logs in again."""
RENEW_EVERY = 60.0
"""A session's last use is written at most this often (a page polls; the store is not written per request)."""
KEY_HEADER = "x-gatekeeper-key"
"""The request header that carries a session's page key (the live stream, an EventSource, sends ``?key=``)."""
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# ---------------------------------------------------------------------------------------------- the token


def load_or_create_token(home: Path) -> str:
    """The shared ui-token: read ``$home/ui-token``, or create it (mode 0600) on first start.

    Creation is atomic (write a private temp file, then hard-link it into place), so two processes
    starting together agree on one token.
    """
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home / TOKEN_FILE
    for _ in range(3):
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            text = ""
        if text:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            return text
        hostos.publish_new_token(path)
    raise OSError(f"cannot read or create {path}")


def keyed_hash(token: str, value: str) -> str:
    """``hmac-sha256:<hex>`` of ``value`` keyed with the ui-token (secrets in the audit export)."""
    mac = hmac.new(token.encode("utf-8"), b"secret|" + value.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"hmac-sha256:{mac}"


# ---------------------------------------------------------------------------------------------- login codes


def reviewer_label() -> str:
    """Who this process runs as (the real OS account, not ``$USER``): the label of the sessions its login
    links open, and the name under which its bearer-token decisions are recorded."""
    return hostos.os_user()


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::", "localhost", "127.0.0.1"):  # noqa: S104 - we only map it to loopback
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def page_url(host: str, port: int) -> str:
    """``http://127.0.0.1:PORT`` for a page bound to ``host``: what a serving process records in the store."""
    return f"http://{_url_host(host)}:{port}"


async def mint_login_url(store: Store, base_url: str, *, label: str | None = None, ttl: float = LOGIN_TTL) -> str:
    """``<base_url>/login?token=<code>``: a fresh one-time login code, kept (hashed) in the store.

    The ui-token itself never appears in a URL. ``label`` names the reviewer the session will stand for
    (default: the OS user of this process).
    """
    code = secrets.token_urlsafe(24)
    await store.add_login_code(_hash(code), label=label or reviewer_label(), expires_at=store.clock.now() + ttl)
    return f"{base_url}/login?token={code}"


def _well_formed(value: str, most: int) -> bool:
    return 0 < len(value) <= most and value.isascii() and all(c.isalnum() or c in "-_" for c in value)


async def open_session(
    store: Store, code: str, *, host: str, user_agent: str | None
) -> tuple[WebSession, str, str] | None:
    """Spend a login code for a new session bound to ``host``: ``(session, cookie value, page key)`` or ``None``."""
    if not _well_formed(code, 100):
        return None
    now = store.clock.now()
    sid, secret, key = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    template = WebSession(
        id=sid, label="", host=host, user_agent=(user_agent or "")[:300] or None, created_at=now,
        last_seen_at=now, expires_at=now + SESSION_IDLE, ends_at=now + SESSION_MAX, ended_at=None,
        ended_by=None, ended_why=None,
    )  # fmt: skip
    session = await store.redeem_login_code(_hash(code), template, secret_hash=_hash(secret), key_hash=_hash(key))
    return (session, f"{sid}.{secret}", key) if session is not None else None


# ---------------------------------------------------------------------------------------------- sessions


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a browser session (``web:<label>``, its id in ``session``) or a script with the token."""

    kind: str  # "session" | "bearer"
    reviewer: str
    session: str | None = None
    account: str | None = None
    """Team mode: the reviewer account the session stands for (``reviewer`` is then its name)."""

    @property
    def channel(self) -> str:
        """The channel its decisions are recorded under: ``web`` for the page, ``api`` for the bearer token."""
        return "web" if self.kind == "session" else "api"


async def check_session(store: Store, value: str, key: str | None, *, host: str) -> Principal | None:
    """The session a cookie value names, if its page key matches, it is alive, and it was opened under this
    ``host``; slides its expiry. The cookie without its key is refused: see the module's docstring."""
    sid, _, secret = value.partition(".")
    if not key or not _well_formed(sid, 32) or not _well_formed(secret, 100) or not _well_formed(key, 100):
        return None
    found = await store.session_hashes(sid)
    if found is None:
        return None
    session, secret_hash, key_hash = found
    if not (hmac.compare_digest(secret_hash, _hash(secret)) & hmac.compare_digest(key_hash, _hash(key))):
        return None
    return await _honoured(store, session, host)


async def still_signed_in(store: Store, who: Principal, *, host: str) -> bool:
    """For a long request (the live stream): is its session still alive? (A bearer token always is.)"""
    if who.session is None:
        return True
    session = await store.web_session(who.session)
    return session is not None and await _honoured(store, session, host) is not None


async def _honoured(store: Store, session: WebSession, host: str) -> Principal | None:
    now = store.clock.now()
    if not session.alive(now) or session.host != host:
        return None
    if now - session.last_seen_at >= RENEW_EVERY:
        await store.touch_session(session.id, expires_at=now + SESSION_IDLE)
    return Principal("session", session.reviewer, session.id, session.account)


def check_bearer(token: str, header: str | None) -> Principal | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        return None
    return Principal("bearer", f"api:{reviewer_label()}")


def cookie_name(port: int) -> str:
    """Cookies ignore ports, so the name carries it: two pages on one host never clobber each other."""
    return f"gk_session_{port}"


def session_cookie_header(port: int, value: str, *, secure: bool = False) -> str:
    """The ``Set-Cookie`` value, every attribute explicit (``SameSite=Strict`` is not a browser default);
    ``secure``: the page is served over HTTPS (team mode behind its TLS proxy), so the cookie never travels
    over plain HTTP.

    The browser may keep it for :data:`SESSION_MAX`; whether it still opens anything is the store's say.
    """
    flag = "; Secure" if secure else ""
    return f"{cookie_name(port)}={value}; Path=/; HttpOnly; SameSite=Strict{flag}; Max-Age={int(SESSION_MAX)}"


def clear_cookie_header(port: int, *, secure: bool = False) -> str:
    flag = "; Secure" if secure else ""
    return f"{cookie_name(port)}=; Path=/; HttpOnly; SameSite=Strict{flag}; Max-Age=0"


# ---------------------------------------------------------------------------------------------- Host / Origin


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(port: int, extra_host: str | None = None, public_url: str | None = None) -> frozenset[str]:
    """The Host header values we answer (anything else is a DNS-rebinding attempt: 421); ``public_url`` adds the
    host a reverse proxy passes through (``[ui] public_url``)."""
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    if extra_host and not is_loopback(extra_host):
        hosts.add(f"{_url_host(extra_host)}:{port}")
    if public_url:
        hosts.add(public_origin(public_url).partition("://")[2])
    return frozenset(hosts)


def public_origin(public_url: str) -> str:
    """``https://gk.example.com`` of ``https://gk.example.com/`` (the Origin its pages send)."""
    return public_url.rstrip("/").lower()


def same_origin_ok(
    headers: Mapping[str, str], host: str, *, bearer: bool, public: str | None = None, scheme: str = "http"
) -> bool:
    """May this request change state? (the CSRF rule of the threat model, §1.4 #1)

    ``Sec-Fetch-Site`` present: only ``same-origin``. Absent: an ``Origin`` must equal ``<scheme>://<Host>``
    (``https`` for the approval service behind its TLS proxy) (or the
    ``public`` origin of ``[ui] public_url``, the page as a reverse proxy serves it).
    Neither header: only a bearer-token request (a script or curl; browsers always send one of them).
    """
    origin = headers.get("origin")
    site = headers.get("sec-fetch-site")
    # a form posted by a page whose referrer policy is no-referrer (ours) carries ``Origin: null``; the browser's
    # own Sec-Fetch-Site still says where it came from (a sandboxed frame elsewhere says cross-site)
    if origin == "null" and site == "same-origin":
        origin = None
    if origin is not None and origin != f"{scheme}://{host}" and (public is None or origin != public):
        return False
    if site is not None:
        return site == "same-origin"
    return origin is not None or bearer


async def open_account_session(
    store: Store, account: str, *, host: str, user_agent: str | None, password_hash: str | None = None
) -> tuple[WebSession, str, str] | None:
    """Team mode: a new session for ``account`` (its password already checked against ``password_hash``) bound to
    ``host``: ``(session, cookie value, page key)``, or ``None`` if the account is gone or its password changed
    since it was checked (a ``passwd`` ends every session, this one included)."""
    now = store.clock.now()
    sid, secret, key = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    template = WebSession(
        id=sid, label=account, host=host, user_agent=(user_agent or "")[:300] or None, created_at=now,
        last_seen_at=now, expires_at=now + SESSION_IDLE, ends_at=now + SESSION_MAX, ended_at=None,
        ended_by=None, ended_why=None, account=account,
    )  # fmt: skip
    session = await store.sessions.open_for_account(
        template, secret_hash=_hash(secret), key_hash=_hash(key), password_hash=password_hash
    )
    return (session, f"{sid}.{secret}", key) if session is not None else None
