"""The stdio fast lane: allowed ``tools/call`` requests served without the SDK's per-message work.

On the full path every request is validated into pydantic models twice, dispatched through a task, the
OpenTelemetry middleware and the result shaper, and serialised back — about as much CPU again as the
gatekeeper's own checks and its record in the store. For the calls that simply pass through, none of that
changes what the client gets: this lane takes their lines off stdin (a :data:`~mcp_gatekeeper.stdio.Tap`),
gets the call's plan from the one planner (:meth:`Proxy.plan_fast <mcp_gatekeeper.proxy.Proxy.plan_fast>`),
and if it is a plan this lane may serve (plain ``allow``), has the one executor carry it out
(:meth:`Proxy.run_fast`), then writes the JSON-RPC reply itself. The lane decides nothing. Everything else — held, denied, audited, leased, quarantined, unknown
tools, progress tokens, the 2026-07-28 era, any other method, anything malformed — goes to the SDK
untouched, so its behaviour is the full path's by construction.

``notifications/cancelled`` for a call in this lane cancels it here (the SDK never saw the request); the
upstream is told, the record says ``outcome_unknown``, and, as the spec asks, no reply is sent. When the
client closes stdin, calls still running end the same way but are answered "Connection closed", as the SDK
answers its own requests then.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import mcp.types as types
from mcp import MCPError
from mcp.server import Server
from mcp.server.models import InitializationOptions

from mcp_gatekeeper.plan import Plan
from mcp_gatekeeper.proxy import Proxy, ProxyState
from mcp_gatekeeper.stdio import LineOut, Tap, serve_stdio_streams

log = logging.getLogger(__name__)

_MARKERS = ('"tools/call"', '"notifications/cancelled"')
_PARAMS = frozenset({"name", "arguments", "_meta"})
"""The only keys of a call's params the lane takes; any other (a task, an extension) is the full path's."""
MAX_DEPTH = 64
"""Deeper arguments go to the full path: its JSON parser's limit decides, not Python's."""
_SURROGATE = re.compile(r"\\u[dD][89abAB]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: Python reads them, the SDK's parser does not


def _shallow(value: Any, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(_shallow(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(_shallow(v, depth + 1) for v in value)
    return True


def _key(request_id: Any) -> tuple[str, Any]:
    """Request ids 1 and "1" are different requests."""
    return type(request_id).__name__, request_id


class FastLane:
    """Use :meth:`running` (an async context manager), then :meth:`serve_stdio`."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.taken = 0
        """How many calls this lane answered (the tests check it took what it should)."""
        self._tg: anyio.abc.TaskGroup | None = None
        self._out: LineOut | None = None
        self._running: dict[tuple[str, Any], anyio.CancelScope] = {}
        self._shut: set[anyio.CancelScope] = set()
        self._active = 0
        self._idle = anyio.Event()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FastLane]:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()  # calls still running end as a cancellation would (outcome_unknown)
                self._tg = None

    async def serve_stdio(self, server: Server[ProxyState], init: InitializationOptions) -> None:
        """Serve the proxy on this process's stdin/stdout, with this lane in front of the SDK."""
        async with serve_stdio_streams(self.tap) as (read, write):
            try:
                await server.run(read, write, init)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._close()  # while stdout is still open

    def tap(self, out: LineOut) -> Tap:
        """The stdio transport's hook: remember where replies go, hand back :meth:`offer`."""
        self._out = out
        return self.offer

    def offer(self, line: str) -> bool:
        """Take ``line`` if it is a call this lane serves (or the cancellation of one); False hands it on."""
        try:
            return self._offer(line)
        except Exception:  # a fault here must not take the server down: the full path handles the line
            log.exception("fast lane: could not look at a line; leaving it to the full path")
            return False

    def _offer(self, line: str) -> bool:
        if self._tg is None or self._out is None or not any(m in line for m in _MARKERS):
            return False
        if "\\u" in line and _SURROGATE.search(line):
            return False  # escaped surrogates: whether they are valid is the SDK's parser's call, not Python's
        try:
            msg = json.loads(line, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            return False
        if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
            return False
        method = msg.get("method")
        params = msg.get("params")
        if method == "notifications/cancelled" and "id" not in msg:
            rid = params.get("requestId") if isinstance(params, dict) else None
            scope = self._running.pop(_key(rid), None)
            if scope is None:
                return False  # not ours: the SDK's own requests are the SDK's to cancel
            scope.cancel()
            return True
        if method != "tools/call" or "id" not in msg or not isinstance(params, dict) or not params.keys() <= _PARAMS:
            return False
        if not _shallow(params):
            return False
        rid = msg["id"]
        if isinstance(rid, bool) or not isinstance(rid, int | str) or _key(rid) in self._running:
            return False
        call = self.proxy.plan_fast(params)
        if call is None:
            return False
        scope = anyio.CancelScope()
        self._running[_key(rid)] = scope  # registered now: a cancellation on the very next line finds it
        self._tg.start_soon(self._serve, rid, call, scope)
        return True

    async def _serve(self, rid: Any, call: Plan, scope: anyio.CancelScope) -> None:
        reply: dict[str, Any] | None = None
        self._active += 1
        try:
            with scope:
                try:
                    result = await self.proxy.run_fast(call, rid)
                    reply = {"jsonrpc": "2.0", "id": rid, "result": result}
                except MCPError as e:  # the upstream's own JSON-RPC error, passed on as the full path does
                    reply = {"jsonrpc": "2.0", "id": rid, "error": e.error.model_dump(by_alias=True, exclude_none=True)}
                except Exception:
                    log.exception("fast lane: call %r failed", rid)
                    reply = {"jsonrpc": "2.0", "id": rid, "error": {"code": types.INTERNAL_ERROR,
                             "message": "mcp-gatekeeper: internal error"}}  # fmt: skip
                finally:
                    if self._running.get(_key(rid)) is scope:
                        del self._running[_key(rid)]
            if reply is None and scope in self._shut:
                # the client closed stdin: answered as the SDK answers its own requests then, so that nobody is
                # left waiting (the record says outcome_unknown)
                reply = {"jsonrpc": "2.0", "id": rid, "error": {"code": types.CONNECTION_CLOSED,
                         "message": "Connection closed"}}  # fmt: skip
            if reply is None:  # cancelled by the client: no reply (the record says outcome_unknown)
                return
            self.taken += 1
            await self._reply(reply)
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _close(self) -> None:
        """Stdin is closed: end the calls still running (each answers "Connection closed") and wait for them."""
        self._shut = set(self._running.values())
        for scope in self._shut:
            scope.cancel()
        if self._active:
            self._idle = anyio.Event()
            with anyio.move_on_after(5):  # bounded: every step of ending a call is (shielded store writes)
                await self._idle.wait()

    async def _reply(self, reply: dict[str, Any]) -> None:
        assert self._out is not None
        try:
            await self._out.write(json.dumps(reply, ensure_ascii=False, separators=(",", ":")) + "\n")
            await self._out.flush()
        except (OSError, RuntimeError) as e:  # the client went away; the call is recorded all the same
            log.debug("fast lane: could not reply to %r: %s", reply.get("id"), e)
