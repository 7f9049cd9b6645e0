"""The stdio transport to an upstream server: the SDK's framing for its ``Client``, plus a raw lane.

It gives the SDK's ``Client`` the two streams it wants (parsed messages in, messages out), exactly as the
SDK's own ``stdio_client`` does: the server is spawned in its own process group, its stderr goes to our
stderr, and on the way out its stdin is closed, it gets two seconds to exit, then the group is
terminated. On top of that, :meth:`StdioChild.request` sends a request as one JSON line of our own,
with a string id (``"gk-<n>"``) the SDK never uses, and takes the matching reply off stdout before the SDK
parses it. A ``tools/call`` then costs one ``json.dumps`` and one ``json.loads`` instead of the SDK client's
request model, its serialisation, the parse of the reply into pydantic models and the dispatcher's
bookkeeping. Everything else the server sends (its own requests, notifications, replies to the SDK's
requests, and anything malformed) goes to the SDK untouched.

POSIX only (a process group per server): on Windows, and with ``$MCP_GATEKEEPER_LANES=sdk``,
:mod:`mcp_gatekeeper.upstream` uses the SDK's own ``stdio_client`` instead (see
:func:`mcp_gatekeeper.hostos.fast_lanes`); the tree is ended through :func:`mcp_gatekeeper.hostos.terminate_tree`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio
import anyio.abc
import mcp.types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import MCPError
from mcp.shared.message import SessionMessage

from mcp_gatekeeper import hostos
from mcp_gatekeeper.errors import UpstreamError

EXIT_GRACE = 2.0
"""Seconds a server gets to exit after its stdin is closed, and again after SIGTERM, before SIGKILL."""
_RAW_PREFIX = "gk-"
_RAW_MARKER = b'"gk-'


@dataclass
class _Waiter:
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: dict[str, Any] | None = None


class StdioChild:
    """One upstream server process. Use :meth:`connect` (an async context manager) for the SDK's streams."""

    def __init__(
        self, command: str, args: list[str], *, env: Mapping[str, str], cwd: str | None, errlog: TextIO
    ) -> None:
        self.command = command
        self.args = args
        self.env = dict(env)
        self.cwd = cwd
        self.errlog = errlog
        self._process: anyio.abc.Process | None = None
        self._waiting: dict[str, _Waiter] = {}
        self._ids = itertools.count(1)
        self._write_lock = anyio.Lock(fast_acquire=True)  # uncontended: no trip round the event loop
        self._closed = False

    @contextlib.asynccontextmanager
    async def connect(
        self,
    ) -> AsyncIterator[
        tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
    ]:
        process = await anyio.open_process(
            [self.command, *self.args],
            env=self.env,
            cwd=self.cwd,
            stderr=self.errlog,
            start_new_session=hostos.termination_plan().new_process_group,  # its group is what _stop ends
        )
        self._process = process
        to_sdk, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        to_server, from_sdk = anyio.create_memory_object_stream[SessionMessage](0)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read, process, to_sdk)
                tg.start_soon(self._write_sdk, from_sdk)
                try:
                    yield from_server, to_server
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._stop(process)
                    tg.cancel_scope.cancel()
        finally:
            self._closed = True
            self._fail_waiters()
            for stream in (to_sdk, from_server, to_server, from_sdk):
                stream.close()

    # ------------------------------------------------------------------ the raw lane

    async def request(self, method: str, params: dict[str, Any], *, timeout: float | None) -> dict[str, Any]:
        """Send one request as raw JSON; its raw result. The server's JSON-RPC error raises ``MCPError``
        (``REQUEST_TIMEOUT`` after ``timeout`` seconds, when the server is also told to cancel); a server
        that is gone raises ``UpstreamError``. A cancelled caller cancels the request on the server too."""
        if self._closed or self._process is None:
            raise UpstreamError("the upstream process is not running")
        rid = f"{_RAW_PREFIX}{next(self._ids)}"
        waiter = self._waiting[rid] = _Waiter()
        try:
            await self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            try:
                with anyio.fail_after(timeout):
                    await waiter.done.wait()
            except TimeoutError:
                await self._cancel(rid, f"timed out after {timeout:g} s")
                raise MCPError(code=types.REQUEST_TIMEOUT, message=f"timed out after {timeout:g} s") from None
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_GRACE):
                    await self._cancel(rid, "the client cancelled the call")
                raise
        finally:
            self._waiting.pop(rid, None)
        reply = waiter.reply
        if reply is None:
            raise UpstreamError("the upstream closed the connection")
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            code = error.get("code")
            raise MCPError(
                code=code if isinstance(code, int) and not isinstance(code, bool) else types.INTERNAL_ERROR,
                message=str(error.get("message", "")),
                data=error.get("data"),
            )
        result = reply.get("result")
        if not isinstance(result, dict):
            raise MCPError(code=types.INTERNAL_ERROR, message="the upstream's reply has no result object")
        return result

    async def _cancel(self, rid: str, reason: str) -> None:
        with contextlib.suppress(Exception):  # best effort: the server may be gone
            await self._send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                              "params": {"requestId": rid, "reason": reason}})  # fmt: skip

    async def _send(self, message: Mapping[str, Any]) -> None:
        await self._write((json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n").encode())

    async def _write(self, data: bytes) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise UpstreamError("the upstream process is not running")
        try:
            async with self._write_lock:  # one whole line at a time, whoever writes it
                await process.stdin.send(data)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as e:
            raise UpstreamError(f"cannot write to the upstream process ({type(e).__name__})") from e

    def _take(self, line: bytes) -> bool:
        """A reply to one of our raw requests: hand it to its waiter (the SDK never sees it)."""
        try:
            msg = json.loads(line)
        except ValueError:
            return False
        if not isinstance(msg, dict) or "method" in msg:
            return False
        rid = msg.get("id")
        waiter = self._waiting.get(rid) if isinstance(rid, str) else None
        if waiter is None:
            return False
        waiter.reply = msg
        waiter.done.set()
        return True

    def _fail_waiters(self) -> None:
        for waiter in self._waiting.values():
            waiter.done.set()  # reply None: the connection is gone

    # ------------------------------------------------------------------ the SDK's side

    async def _read(
        self, process: anyio.abc.Process, to_sdk: MemoryObjectSendStream[SessionMessage | Exception]
    ) -> None:
        assert process.stdout is not None
        buffer = b""
        try:
            async with to_sdk:
                async for chunk in process.stdout:
                    buffer += chunk
                    if b"\n" not in buffer:
                        continue
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if not line.strip() or (_RAW_MARKER in line and self._take(line)):
                            continue
                        await to_sdk.send(_parse(line))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            pass  # the process went away, or our own shutdown closed the streams
        finally:
            self._closed = True
            self._fail_waiters()

    async def _write_sdk(self, from_sdk: MemoryObjectReceiveStream[SessionMessage]) -> None:
        try:
            async with from_sdk:
                async for session_message in from_sdk:
                    text = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await self._write((text + "\n").encode())
        except (UpstreamError, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the reader sees the end of the connection and closes the SDK's stream

    async def _stop(self, process: anyio.abc.Process) -> None:
        """Close stdin, give the server EXIT_GRACE seconds, then terminate (and kill) its process group."""
        if process.stdin is not None:
            with contextlib.suppress(Exception):
                await process.stdin.aclose()
        if not await _exited(process):
            await hostos.terminate_tree(process, EXIT_GRACE)  # POSIX: SIGTERM the group, SIGKILL what is left
            await _exited(process)
        if process.stdout is not None:
            with contextlib.suppress(Exception):
                await process.stdout.aclose()


async def _exited(process: anyio.abc.Process) -> bool:
    """Whether the process ended within EXIT_GRACE seconds. Its return code is polled: ``process.wait()``
    also waits for the pipes' EOF, so a grandchild that inherited them would make it look hung."""
    with anyio.move_on_after(EXIT_GRACE):
        while process.returncode is None:  # noqa: ASYNC110  # polled on purpose, see the docstring
            await anyio.sleep(0.01)
    return process.returncode is not None


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as e:
        return e
