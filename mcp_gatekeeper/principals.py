"""Who a client is: the principal a call belongs to, and bearer tokens for agents over HTTP.

A call belongs to a *principal* (plus the upstream it was made to), never to the process that answered it.
An identical retry attaches to a held call, and ``gatekeeper_status`` answers for it, only within the
same principal and upstream.

- **stdio** (``wrap``, ``run``): ``stdio:<OS user>/<clientInfo name>``. The client is the parent process
  of this one, running as the same OS user; its ``clientInfo`` name is what it says it is. A stdio client
  cannot prove more than that: another program of the same user could claim the same name (but it could
  also read the database, so nothing weaker than the OS user's own boundary is given away).
- **Streamable HTTP** (``run --http``): ``agent:<name>``, the agent whose bearer token the request
  carried (``[[agents]]`` in the config, or the generated ``agent-token`` file in the data home). With
  ``[http] allow_unauthenticated_loopback = true`` (an explicit, loudly logged opt-out) requests carry no
  token and the principal is ``unauthenticated/<clientInfo name>``.

Tokens are compared as SHA-256 digests in constant time, against every configured agent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_gatekeeper.config import AgentConfig
from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.hostos import publish_new_token, secret_protection

AGENT_SCOPE_KEY = "mcp_gatekeeper.agent"
"""The ASGI scope key the bearer check sets to the authenticated agent's name."""
TOKEN_FILE = "agent-token"  # noqa: S105 -- a file name, not a secret
"""The generated token (mode 0600) in the data home, for agent ``DEFAULT_AGENT`` when none is configured."""
DEFAULT_AGENT = "local"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def stdio_principal(user: str, client_name: str | None) -> str:
    return f"stdio:{user}/{client_name or 'unknown'}"


def agent_principal(agent: str) -> str:
    return f"agent:{agent}"


def unauthenticated_principal(client_name: str | None) -> str:
    return f"unauthenticated/{client_name or 'unknown'}"


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class AgentTokens:
    """The agents allowed over HTTP, each by the SHA-256 of its token."""

    agents: tuple[tuple[str, bytes], ...]
    generated: Path | None = None
    """The token file this process generated (or found) in the data home, when no agent is configured."""

    @classmethod
    def load(cls, agents: list[AgentConfig], home: Path) -> AgentTokens:
        """The configured agents' token digests; with none configured, the home's ``agent-token`` (created 0600)."""
        if not agents:
            path = home / TOKEN_FILE
            return cls(((DEFAULT_AGENT, token_digest(_read_or_create(path))),), generated=path)
        loaded: list[tuple[str, bytes]] = []
        problems: list[str] = []
        for i, agent in enumerate(agents):
            if agent.token_sha256 is not None:
                loaded.append((agent.name, bytes.fromhex(agent.token_sha256)))
                continue
            assert agent.token_file is not None  # the config requires exactly one of the two
            try:
                loaded.append((agent.name, token_digest(_read_private(Path(agent.token_file).expanduser()))))
            except ConfigError as e:
                problems.extend(f"agents[{i}].token_file: {p}" for p in e.problems)
        if problems:
            raise ConfigError(problems)
        return cls(tuple(loaded))

    def match(self, token: str) -> str | None:
        """The agent this token belongs to, or None. Every agent is compared (constant time per agent)."""
        given = token_digest(token)
        found: str | None = None
        for name, expected in self.agents:
            if hmac.compare_digest(given, expected) and found is None:
                found = name
        return found


def _read_private(path: Path) -> str:
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError([f"cannot read {path}: {e.strerror or e}"]) from None
    # Windows ignores modes: there the file is private through the user profile's ACL (see hostos)
    if secret_protection() == "mode 0600" and st.st_mode & 0o077:
        raise ConfigError([f"{path} is readable by other users (mode {st.st_mode & 0o777:o}); chmod 600 it"])
    if len(text) < 16:
        raise ConfigError([f"{path}: the token is shorter than 16 characters"])
    return text


def _read_or_create(path: Path) -> str:
    """Read the generated token, or create it (atomically: see :func:`hostos.publish_new_token`)."""
    if path.exists():
        return _read_private(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    publish_new_token(path)
    return _read_private(path)


class BearerCheck:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>`` of a known agent, else 401.

    On success the agent's name is put in the scope under :data:`AGENT_SCOPE_KEY` (a value a client cannot
    set: it is not a header). A handshake-era session belongs to the agent that opened it: another agent's
    request naming it gets the answer for an unknown session (404). Lifespan events pass through.
    """

    MAX_SESSIONS = 10_000

    def __init__(self, app: ASGIApp, tokens: AgentTokens) -> None:
        self.app = app
        self.tokens = tokens
        self._session_agent: dict[str, str] = {}
        """Handshake-era session id → the agent that opened it: another agent cannot use the session."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.pop(AGENT_SCOPE_KEY, None)
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # the MCP endpoint speaks plain HTTP only
            await send({"type": "websocket.close", "code": 1008})
            return
        agent = None
        session = None
        for key, value in scope.get("headers") or ():
            name = key.lower()
            if name == b"authorization" and agent is None:
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    agent = self.tokens.match(token.strip()) or ""
            elif name == b"mcp-session-id":
                session = value.decode("latin-1")
        if not agent:
            await _unauthorized(send)
            return
        if session is not None and self._session_agent.get(session, agent) != agent:
            await _respond(send, 404, {"error": "not_found", "message": "no such session"})  # as an unknown one
            return
        scope[AGENT_SCOPE_KEY] = agent

        async def send_noting_sessions(message: Message) -> None:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers") or ():
                    if key.lower() == b"mcp-session-id":
                        self._remember(value.decode("latin-1"), agent)
            await send(message)

        await self.app(scope, receive, send_noting_sessions)

    def _remember(self, session: str, agent: str) -> None:
        if session not in self._session_agent and len(self._session_agent) >= self.MAX_SESSIONS:
            del self._session_agent[next(iter(self._session_agent))]  # the oldest
        self._session_agent.setdefault(session, agent)


async def _unauthorized(send: Send) -> None:
    await _respond(
        send,
        401,
        {"error": "unauthorized", "message": "send Authorization: Bearer <agent token> (see the README)"},
        [(b"www-authenticate", b'Bearer realm="mcp-gatekeeper"')],
    )


async def _respond(
    send: Send, status: int, payload: dict[str, str], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
