"""Serving MCP on this process's stdin/stdout without a thread hop per line.

The SDK's ``stdio_server`` reads and writes through ``anyio.wrap_file``: every line in and every write and
flush out is handed to a worker thread, which costs more than everything else an allowed call does here.
When stdin and stdout are pipes (as MCP clients start servers), this module gives the SDK the same two
streams backed by non-blocking pipes on the event loop instead. The wire is moved to private descriptors
first, and fd 0 / fd 1 are pointed at ``/dev/null`` / stderr while serving, so a stray ``print`` or a
child process cannot corrupt the protocol — the same guarantee the SDK gives. Anything else (a regular
file, a terminal, another event loop) falls back to the SDK's own transport.

POSIX only: on Windows (and with ``$MCP_GATEKEEPER_LANES=sdk``, see :func:`mcp_gatekeeper.hostos.fast_lanes`)
the SDK's own transport always serves, and no tap is made.

A *tap* may take lines before the SDK sees them (the fast lane of :mod:`mcp_gatekeeper.fastlane`): it is
made from the :class:`LineOut` the SDK writes through, so its own replies share the one ordered wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from mcp.server.stdio import stdio_server

from mcp_gatekeeper import hostos

log = logging.getLogger(__name__)

LINE_LIMIT = 256 * 1024 * 1024
"""Longest accepted line (the SDK's own transport has no limit; one message per line)."""


Tap = Callable[[str], bool]
"""Offered every incoming line; True means it took the line and the SDK never sees it."""


class _Lines:
    """``async for line in stdin`` over a non-blocking pipe (lines a tap takes are skipped)."""

    def __init__(self, reader: asyncio.StreamReader, tap: Tap | None) -> None:
        self._reader = reader
        self._tap = tap

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while True:
            try:
                line = await self._reader.readline()
            except ValueError:  # a line longer than LINE_LIMIT: skipped, the client gets no answer (as on the SDK path)
                return "\n"
            if not line:
                raise StopAsyncIteration
            text = line.decode("utf-8", errors="replace")
            if self._tap is None or not self._tap(text):
                return text


class LineOut:
    """``await stdout.write(text)`` / ``await stdout.flush()`` over a non-blocking pipe.

    A ``write`` puts the whole text in the transport's buffer at once, so writers that each write whole
    lines (the SDK's, and a tap's) never interleave within a line.
    """

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


def _private_copy(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered 3 or above (0-2 are about to be pointed elsewhere)."""
    if sys.platform != "win32":
        import fcntl  # POSIX-only: imported where it is used, so that this module imports on Windows

        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    raise OSError("no fcntl on Windows: serve_stdio_streams uses the SDK's transport there")


@contextlib.asynccontextmanager
async def serve_stdio_streams(make_tap: Callable[[LineOut], Tap] | None = None) -> AsyncIterator[tuple[Any, Any]]:
    """The (read, write) streams ``Server.run`` wants, for this process's stdin and stdout.

    ``make_tap`` is called once with the output, before the first line is read (not on the SDK fallback).
    """
    if not hostos.fast_lanes():
        why = "Windows" if hostos.is_windows() else f"${hostos.LANES_ENV}=sdk"
    elif not (_is_pipe(0) and _is_pipe(1)):
        why = "stdin/stdout are not pipes"
    elif not _on_asyncio():
        why = "not on asyncio"
    else:
        log.info("stdio: non-blocking pipes, with the fast lane")
        async with _pipe_streams(make_tap) as streams:
            yield streams
        return
    log.info("stdio: the SDK's transport (%s)", why)
    async with stdio_server() as streams:
        yield streams


@contextlib.asynccontextmanager
async def _pipe_streams(make_tap: Callable[[LineOut], Tap] | None) -> AsyncIterator[tuple[Any, Any]]:
    wire_in = _private_copy(0)
    wire_out = _private_copy(1)
    saved_in = _private_copy(0)
    saved_out = _private_copy(1)
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
        out = LineOut(writer)
        lines = _Lines(reader, make_tap(out) if make_tap is not None else None)
        # the SDK transport drives the two streams; it only needs `async for` and write/flush
        async with stdio_server(stdin=cast(Any, lines), stdout=cast(Any, out)) as streams:
            yield streams
    finally:
        for transport in (read_transport, writer_transport):
            if transport is not None:
                transport.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)
