"""Connections to upstream MCP servers: stdio, Streamable HTTP, legacy SSE (and in-process in tests).

Each connection lives in its own task (the SDK's ``Client`` must be entered and left in one task).
A crashed stdio upstream is restarted on the next call. Requests are sent as raw dicts so nothing the
upstream says is dropped or re-shaped. Connection failures become :class:`UpstreamError`; an upstream's
own JSON-RPC error (``MCPError``) passes through unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import anyio
import httpx2
import mcp.types as types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client import ClientRequestContext, IncomingMessage
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.dispatcher import ProgressFnT
from pydantic import TypeAdapter

from mcp_gatekeeper import hostos
from mcp_gatekeeper.config import UpstreamConfig, expand_env
from mcp_gatekeeper.errors import UpstreamError
from mcp_gatekeeper.upstream_stdio import StdioChild

log = logging.getLogger(__name__)

RAW: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


class RawRequest(types.Request[dict[str, Any], str]):
    """A request whose params are sent exactly as given."""


ProgressFn = ProgressFnT


@dataclass
class UpstreamHooks:
    """What the proxy wants to hear from an upstream (set before connecting)."""

    on_notification: Callable[[str, Any], Awaitable[None]] | None = None
    """``(upstream name, typed ServerNotification)`` for list_changed, resources/updated, log messages."""
    on_elicit: Callable[[str, types.ElicitRequestParams], Awaitable[types.ElicitResult | types.ErrorData]] | None = None
    on_sample: (
        Callable[[str, types.CreateMessageRequestParams], Awaitable[types.CreateMessageResult | types.ErrorData]] | None
    ) = None
    on_roots: Callable[[str], Awaitable[types.ListRootsResult | types.ErrorData]] | None = None


class Upstream:
    """One upstream server. Use :meth:`running` (async context manager) to own its connection task."""

    def __init__(
        self,
        name: str,
        config: UpstreamConfig | None,
        hooks: UpstreamHooks,
        *,
        target: Any = None,
        errlog: TextIO | None = None,
    ) -> None:
        self.name = name
        self.config = config or UpstreamConfig(command="true")
        self._target = target  # in-process Server (tests) instead of the config's transport
        self._hooks = hooks
        self._errlog = errlog or sys.stderr
        self._client: Client | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._closing: anyio.Event | None = None
        self._lock = anyio.Lock()
        self._stdio: StdioChild | None = None
        """The stdio connection's raw lane (tools/call without progress), while connected over stdio."""
        self.generation = 0
        self.tools: dict[str, dict[str, Any]] = {}
        """The latest tool definitions by name (raw dicts as the upstream sent them)."""

    # ------------------------------------------------------------------ lifecycle

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Upstream]:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                if self._closing is not None:
                    self._closing.set()
                tg.cancel_scope.cancel()
                self._tg = None

    @property
    def client(self) -> Client:
        if self._client is None:
            raise UpstreamError(f"upstream {self.name!r} is not connected")
        return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def connect(self) -> Client:
        """Connect (or reconnect after a crash). Safe to call concurrently."""
        async with self._lock:
            if self._client is not None:
                return self._client
            if self._tg is None:
                raise UpstreamError(f"upstream {self.name!r} is not running")
            try:
                with anyio.fail_after(self.config.connect_timeout):
                    client = await self._tg.start(self._run_connection)
            except TimeoutError:
                raise UpstreamError(
                    f"upstream {self.name!r} did not answer the MCP handshake within {self.config.connect_timeout:g} s"
                ) from None
            except UpstreamError:
                raise
            except Exception as e:
                raise UpstreamError(f"cannot connect to upstream {self.name!r}: {_describe(e)}") from e
            assert isinstance(client, Client)
            self.generation += 1
            return client

    async def _run_connection(self, *, task_status: anyio.abc.TaskStatus[Client]) -> None:
        closing = self._closing = anyio.Event()
        started = False
        try:
            target = self._target if self._target is not None else self._transport()
            async with Client(
                target,
                mode=self.config.mode if self._target is None else "legacy",
                cache=None,
                read_timeout_seconds=None,
                message_handler=self._on_message,
                elicitation_callback=self._on_elicit,
                sampling_callback=self._on_sample,
                list_roots_callback=self._on_roots,
            ) as client:
                self._client = client
                started = True
                task_status.started(client)
                await closing.wait()
        except Exception as e:
            if not started:
                raise UpstreamError(f"cannot connect to upstream {self.name!r}: {_describe(e)}") from e
            log.warning("upstream %s connection ended: %s", self.name, _describe(e))
        finally:
            self._client = None

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[Any]:
        cfg = self.config
        kind = cfg.kind
        if kind == "stdio":
            assert cfg.command is not None
            env = dict(os.environ)
            env.update({k: expand_env(v) for k, v in cfg.env.items()})
            env = hostos.with_command_dir(cfg.command, env)  # a script's interpreter beside it (macOS short PATH)
            if not hostos.fast_lanes():  # Windows: the SDK's transport knows its process trees; no raw lane there
                params = StdioServerParameters(command=cfg.command, args=list(cfg.args), env=env, cwd=cfg.cwd)
                log.info("upstream %s: the SDK's stdio_client (no raw lane)", self.name)
                async with stdio_client(params, errlog=self._errlog) as streams:
                    yield streams
                return
            child = StdioChild(cfg.command, list(cfg.args), env=env, cwd=cfg.cwd, errlog=self._errlog)
            async with child.connect() as streams:
                self._stdio = child
                try:
                    yield streams
                finally:
                    if self._stdio is child:  # a reconnection may already have put its own in place
                        self._stdio = None
            return
        assert cfg.url is not None
        headers = {k: expand_env(v) for k, v in cfg.headers.items()}
        if kind == "sse":
            async with sse_client(cfg.url, headers=headers, timeout=cfg.connect_timeout) as streams:
                yield streams
            return
        http: httpx2.AsyncClient = create_mcp_http_client(headers=headers)
        async with http, streamable_http_client(cfg.url, http_client=http) as streams:
            yield streams

    def mark_broken(self) -> None:
        """The connection is dead (crashed child, closed stream): the next call reconnects."""
        if self._closing is not None:
            self._closing.set()
        self._client = None

    # ------------------------------------------------------------------ requests

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        progress: ProgressFn | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send ``method`` with raw ``params``; the raw result dict, or MCPError / UpstreamError.

        Over stdio, a ``tools/call`` without a progress callback takes the connection's raw lane (one JSON
        line each way, see :mod:`mcp_gatekeeper.upstream_stdio`); everything else goes through the SDK.
        """
        client = self._client or await self.connect()
        stdio = self._stdio
        if stdio is not None and progress is None and method == "tools/call":
            try:
                return await stdio.request(method, params or {}, timeout=timeout)
            except UpstreamError as e:
                self.mark_broken()
                raise UpstreamError(f"upstream {self.name!r} is gone: {e}") from e
        try:
            return await client.session.send_request(  # type: ignore[type-var]  # a TypeAdapter of dict is accepted at run time; the bound only reflects the model path
                RawRequest(method=method, params=params or {}),
                RAW,
                request_read_timeout_seconds=timeout,
                progress_callback=progress,
            )
        except MCPError as e:
            if e.code == types.CONNECTION_CLOSED:
                self.mark_broken()
                raise UpstreamError(f"upstream {self.name!r} closed the connection: {e.message}") from e
            raise
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream) as e:
            self.mark_broken()
            raise UpstreamError(f"upstream {self.name!r} is gone ({type(e).__name__})") from e

    async def notify(self, notification: types.ClientNotification) -> None:
        if self._client is not None:
            await self._client.session.send_notification(notification)

    async def list_all(self, method: str, key: str) -> list[dict[str, Any]]:
        """Every page of a list method, merged."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(1000):
            result = await self.request(method, {"cursor": cursor} if cursor else {})
            items.extend(result.get(key) or [])
            cursor = result.get("nextCursor")
            if not cursor:
                return items
        raise UpstreamError(f"upstream {self.name!r} returned more than 1000 pages for {method}")

    async def refresh_tools(self) -> dict[str, dict[str, Any]]:
        tools = await self.list_all("tools/list", "tools")
        self.tools = {t["name"]: t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)}
        return self.tools

    # ------------------------------------------------------------------ upstream → us

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            log.warning("upstream %s sent something that is not MCP: %s", self.name, _describe(message))
            return
        if isinstance(message, types.ProgressNotification):
            return  # already routed to the per-request progress callback
        if self._hooks.on_notification is not None:
            await self._hooks.on_notification(self.name, message)

    async def _on_elicit(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        if self._hooks.on_elicit is None:
            return types.ErrorData(
                code=types.INVALID_REQUEST, message="the gatekeeper's client cannot answer elicitation"
            )
        return await self._hooks.on_elicit(self.name, params)

    async def _on_sample(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.ErrorData:
        if self._hooks.on_sample is None:
            return types.ErrorData(code=types.INVALID_REQUEST, message="the gatekeeper's client cannot sample")
        return await self._hooks.on_sample(self.name, params)

    async def _on_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        if self._hooks.on_roots is None:
            return types.ErrorData(code=types.INVALID_REQUEST, message="the gatekeeper's client has no roots")
        return await self._hooks.on_roots(self.name)


def _describe(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(_describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
