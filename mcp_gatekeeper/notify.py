"""Telling a human that a call is waiting: the ``Notifier`` protocol and its channels.

A notification failure is logged and never blocks or decides a hold.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Protocol, TextIO

from mcp_gatekeeper.models import CallRecord

log = logging.getLogger(__name__)


class Notifier(Protocol):
    async def held(self, call: CallRecord) -> None:
        """A call is now waiting for a decision."""
        ...


class StderrNotifier:
    """One line on stderr (the terminal that started the gatekeeper), with a bell if it is a terminal."""

    def __init__(self, stream: TextIO | None = None, *, ui_url: str | None = None) -> None:
        self._stream = stream or sys.stderr
        self._ui_url = ui_url

    async def held(self, call: CallRecord) -> None:
        bell = "\a" if self._stream.isatty() else ""
        what = call.summary or f"{call.upstream}/{call.tool}"
        where = f"  {self._ui_url}" if self._ui_url else ""
        self._stream.write(
            f"{bell}mcp-gatekeeper: HELD {call.id[:8]} [{call.risk}] {_printable(what)}"
            f" — decide: mcp-gatekeeper approve|reject {call.id[:8]}{where}\n"
        )
        self._stream.flush()


class MultiNotifier:
    """Fan out to several channels; one failing channel never stops the others or the hold."""

    def __init__(self, channels: Sequence[Notifier]) -> None:
        self._channels = list(channels)

    async def held(self, call: CallRecord) -> None:
        for ch in self._channels:
            try:
                await ch.held(call)
            except Exception:  # a notifier must never decide or block a hold
                log.warning("notifier %s failed for call %s", type(ch).__name__, call.id[:8], exc_info=True)


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)
