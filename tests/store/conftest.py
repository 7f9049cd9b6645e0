"""The backends the store contract runs against (``backend`` fixture): SQLite today.

A backend under test says where its database is (what :meth:`Store.open` takes, in this process or another),
and gives the tests another process's direct access to that database, for tampering and for checking
behind the store's back. Adding a backend: a ``pytest.param`` in ``BACKENDS`` and a branch in ``backend``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.store import Store

BACKENDS = [pytest.param("sqlite", id="sqlite")]


@dataclass
class BackendUnderTest:
    name: str
    location: str
    """What :meth:`Store.open` is given; a child process opens the same database with it."""

    def open(self, clock: Clock) -> AbstractAsyncContextManager[Store]:
        return Store.open(self.location, clock)

    def raw(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) outside the store, committed at once: an attacker's or an
        operator's direct access to the database."""
        with closing(sqlite3.connect(self.location, isolation_level=None)) as db:
            return [tuple(r) for r in db.execute(sql, tuple(params)).fetchall()]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendUnderTest]:
    if request.param == "sqlite":
        yield BackendUnderTest("sqlite", str(tmp_path / "gk.db"))
    else:  # pragma: no cover - a backend listed without its set-up
        raise AssertionError(f"no set-up for the {request.param} backend")
