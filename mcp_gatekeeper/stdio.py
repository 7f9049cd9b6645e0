"""Serving MCP on this process's stdin/stdout without a thread hop per line.

The SDK's ``stdio_server`` reads and writes through ``anyio.wrap_file``: every line in and every write and
flush out is handed to a worker thread, which costs more than everything else an allowed call does here.
When stdin and stdout are pipes (as MCP clients start servers), this module gives the SDK the same two
streams backed by non-blocking pipes on the event loop instead. The wire is moved to private descriptors
first, and fd 0 / fd 1 are pointed at ``/dev/null`` / stderr while serving, so a stray ``print`` or a
child process cannot corrupt the protocol — the same guarantee the SDK gives. Anything else (a regular
file, a terminal, another event loop) falls back to the SDK's own transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
import sys
from collections.abc import AsyncIterator
from typing import Any, cast

from mcp.server.stdio import stdio_server

LINE_LIMIT = 256 * 1024 * 1024
"""Longest accepted line (the SDK's own transport has no limit; one message per line)."""


class _Lines:
    """``async for line in stdin`` over a non-blocking pipe."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        try:
            line = await self._reader.readline()
        except ValueError:  # a line longer than LINE_LIMIT: skip it, the client gets no answer (as on the SDK path)
            return "\n"
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _Out:
    """``await stdout.write(text)`` / ``await stdout.flush()`` over a non-blocking pipe."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@contextlib.asynccontextmanager
async def serve_stdio_streams() -> AsyncIterator[tuple[Any, Any]]:
    """The (read, write) streams ``Server.run`` wants, for this process's stdin and stdout."""
    if sys.platform == "win32" or not (_is_pipe(0) and _is_pipe(1)) or not _on_asyncio():
        async with stdio_server() as streams:
            yield streams
        return
    wire_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    saved_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    saved_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # stray output goes to stderr, never onto the wire
    loop = asyncio.get_running_loop()
    writer_transport: asyncio.WriteTransport | None = None
    read_transport: asyncio.ReadTransport | None = None
    try:
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
        )
        writer_transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(), os.fdopen(wire_out, "wb", buffering=0)
        )
        writer = asyncio.StreamWriter(writer_transport, cast(Any, protocol), None, loop)
        # the SDK transport drives the two streams; it only needs `async for` and write/flush
        async with stdio_server(stdin=cast(Any, _Lines(reader)), stdout=cast(Any, _Out(writer))) as streams:
            yield streams
    finally:
        for transport in (read_transport, writer_transport):
            if transport is not None:
                transport.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)
