"""Who may use the approval page, and from where: the ui-token, login codes, session cookies, Host/Origin.

Everything here is stateless except the single-use record of login codes, so any gatekeeper process that
shares the data home can mint a login URL, and a session survives a restart of the page's process:

* the **ui-token** (``$home/ui-token``, mode 0600) is the one secret; scripts send it as a bearer token;
* a **login code** is ``expiry.nonce.HMAC(token, "login|expiry|nonce")``: short-lived, and the serving
  process refuses a nonce it has already seen;
* a **session cookie** is ``sid.issued.HMAC(token, "session|sid|issued")``; the reviewer is ``web:<sid>``.

Nothing in this module logs a token, a code or a cookie.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TOKEN_FILE = "ui-token"  # noqa: S105 - a file name, not a secret
LOGIN_TTL = 600.0
"""Seconds a login URL stays valid (and single use)."""
SESSION_TTL = 30 * 86400.0
"""Seconds a session cookie is honoured after login."""
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
        tmp = home / f".{TOKEN_FILE}.{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process won the race: use its token
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError(f"cannot read or create {path}")


def _mac(token: str, *parts: str) -> str:
    msg = "|".join(parts).encode("utf-8")
    return hmac.new(token.encode("utf-8"), msg, hashlib.sha256).hexdigest()[:40]


def keyed_hash(token: str, value: str) -> str:
    """``hmac-sha256:<hex>`` of ``value`` keyed with the ui-token (secrets in the audit export)."""
    mac = hmac.new(token.encode("utf-8"), b"secret|" + value.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"hmac-sha256:{mac}"


# ---------------------------------------------------------------------------------------------- login codes


def mint_login_code(token: str, *, now: float | None = None, ttl: float = LOGIN_TTL) -> str:
    """A fresh one-time login code, valid for ``ttl`` seconds."""
    expiry = str(int((time.time() if now is None else now) + ttl))
    nonce = secrets.token_hex(12)
    return f"{expiry}.{nonce}.{_mac(token, 'login', expiry, nonce)}"


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::", "localhost", "127.0.0.1"):  # noqa: S104 - we only map it to loopback
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def login_url(host: str, port: int, token: str, *, now: float | None = None) -> str:
    """``http://127.0.0.1:PORT/login?token=<one-time login code>`` (the ui-token itself never appears)."""
    return f"http://{_url_host(host)}:{port}/login?token={mint_login_code(token, now=now)}"


class LoginCodes:
    """Checks login codes and remembers used nonces (until they expire) so each code works once."""

    def __init__(self, token: str) -> None:
        self._token = token
        self._used: dict[str, float] = {}

    def redeem(self, code: str, now: float) -> bool:
        parts = code.split(".")
        if len(parts) != 3 or len(code) > 200:
            return False
        expiry, nonce, mac = parts
        if not expiry.isdigit() or not hmac.compare_digest(mac, _mac(self._token, "login", expiry, nonce)):
            return False
        exp = float(expiry)
        if now >= exp or exp - now > LOGIN_TTL + 60:
            return False
        for old in [n for n, e in self._used.items() if e <= now]:
            del self._used[old]
        if nonce in self._used:
            return False
        self._used[nonce] = exp
        return True


# ---------------------------------------------------------------------------------------------- sessions


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a browser session (``web:<sid>``) or a script holding the token."""

    kind: str  # "session" | "bearer"
    reviewer: str


def mint_session(token: str, now: float) -> str:
    sid = secrets.token_hex(4)
    issued = str(int(now))
    return f"{sid}.{issued}.{_mac(token, 'session', sid, issued)}"


def check_session(token: str, value: str, now: float) -> Principal | None:
    parts = value.split(".")
    if len(parts) != 3:
        return None
    sid, issued, mac = parts
    if not issued.isdigit() or not hmac.compare_digest(mac, _mac(token, "session", sid, issued)):
        return None
    if not 0 <= now - float(issued) <= SESSION_TTL:
        return None
    return Principal("session", f"web:{sid}")


def check_bearer(token: str, header: str | None) -> Principal | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        return None
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "token"
    return Principal("bearer", f"api:{user}")


def cookie_name(port: int) -> str:
    """Cookies ignore ports, so the name carries it: two pages on one host never clobber each other."""
    return f"gk_session_{port}"


def session_cookie_header(port: int, value: str) -> str:
    """The ``Set-Cookie`` value, every attribute explicit (``SameSite=Strict`` is not a browser default)."""
    return f"{cookie_name(port)}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(SESSION_TTL)}"


def clear_cookie_header(port: int) -> str:
    return f"{cookie_name(port)}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"


# ---------------------------------------------------------------------------------------------- Host / Origin


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(port: int, extra_host: str | None = None) -> frozenset[str]:
    """The Host header values we answer (anything else is a DNS-rebinding attempt: 421)."""
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    if extra_host and not is_loopback(extra_host):
        hosts.add(f"{_url_host(extra_host)}:{port}")
    return frozenset(hosts)


def same_origin_ok(headers: Mapping[str, str], host: str, *, bearer: bool) -> bool:
    """May this request change state? (the CSRF rule of the threat model, §1.4 #1)

    ``Sec-Fetch-Site`` present: only ``same-origin``. Absent: an ``Origin`` must equal ``http://<Host>``.
    Neither header: only a bearer-token request (a script or curl; browsers always send one of them).
    """
    origin = headers.get("origin")
    if origin is not None and origin != f"http://{host}":
        return False
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    return origin is not None or bearer
