"""Time as a parameter: the real clock, and a fake one that tests move by hand.

Deadlines are waited on with the monotonic clock; the wall clock is stored (for other processes, for
display and for restarts). ``FakeClock`` is the built-in testing mode: ``advance()`` moves both clocks
and wakes whoever waits on a deadline that has passed, so tests never sleep.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (stored, shown, compared across processes)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (deadlines inside one process)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``monotonic() >= deadline``."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            await anyio.sleep(delay)


class FakeClock:
    """A clock that only moves when told to. ``advance(seconds)`` wakes sleepers whose deadline passed."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0
        self._changed = anyio.Event()

    def now(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds
        self._changed.set()
        self._changed = anyio.Event()

    async def sleep_until(self, deadline: float) -> None:
        while self._mono < deadline:
            await self._changed.wait()
