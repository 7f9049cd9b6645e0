"""A local stand-in for an HTTP service the gatekeeper notifies (Slack's Web API, an ntfy server): a real
HTTP server on 127.0.0.1 that records every request and answers as told (Slack-like answers by default)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import uvicorn


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, dict[str, str], bytes]


@dataclass
class StandIn:
    """Records requests; ``script`` answers the next requests in order, then Slack-like answers."""

    requests: list[Seen] = field(default_factory=list)
    answers: list[bytes] = field(default_factory=list)
    """The body of the answer to each request, in order."""
    script: list[Reply] = field(default_factory=list)
    url: str = ""
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def slack(self, path: str) -> list[Seen]:
        """The requests made to one Web API method (``chat.update``)."""
        return [r for r in self.requests if r.path == f"/api/{path}"]

    async def wait_for(self, ready: Callable[[StandIn], bool]) -> None:
        """Until ``ready(self)`` (the caller bounds this with ``anyio.fail_after``)."""
        while not ready(self):
            await self._changed.wait()

    def _answer(self, seen: Seen) -> Reply:
        if self.script:
            return self.script.pop(0)
        if seen.path.startswith("/api/"):
            out: dict[str, Any] = {"ok": True}
            if seen.path == "/api/chat.postMessage":
                out |= {"channel": seen.json()["channel"], "ts": f"1700000000.{len(self.requests):06d}"}
            return 200, {"content-type": "application/json"}, json.dumps(out).encode()
        return 200, {"content-type": "application/json"}, b'{"id":"ok"}'

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        seen = Seen(scope["method"], scope["path"], headers, body)
        self.requests.append(seen)
        status, reply_headers, reply = self._answer(seen)
        self.answers.append(reply)
        self._changed.set()
        self._changed = anyio.Event()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in reply_headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": reply})


@asynccontextmanager
async def serving(standin: StandIn) -> AsyncIterator[StandIn]:
    """Serve ``standin`` on 127.0.0.1 (a free port) for the duration; ``standin.url`` is its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    standin.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(
        uvicorn.Config(standin.app, log_config=None, access_log=False, lifespan="off", interface="asgi3")
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: server.serve(sockets=[sock]))
            while not server.started:
                await anyio.lowlevel.checkpoint()
            try:
                yield standin
            finally:
                server.should_exit = True
    finally:
        sock.close()
