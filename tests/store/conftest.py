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

BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres")]


@dataclass
class BackendUnderTest:
    name: str
    location: str
    """What :meth:`Store.open` is given; a child process opens the same database with it."""
    admin: str | None = None
    """PostgreSQL: the superuser's URL of the same database (for :meth:`raw`)."""

    def open(self, clock: Clock) -> AbstractAsyncContextManager[Store]:
        return Store.open(self.location, clock)

    def raw(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) outside the store, committed at once: an attacker's or an
        operator's direct access to the database (PostgreSQL: a superuser's, with the schema's triggers off)."""
        if self.admin is not None:
            import psycopg

            from mcp_gatekeeper.store.pg_schema import SCHEMA
            from mcp_gatekeeper.store.postgres import to_postgres

            with psycopg.connect(self.admin, autocommit=True, options=f"-c search_path={SCHEMA}") as db:
                db.execute("SET session_replication_role = replica")
                cur = db.execute(to_postgres(sql).encode(), tuple(params))
                return [tuple(r) for r in cur.fetchall()] if cur.description else []
        with closing(sqlite3.connect(self.location, isolation_level=None)) as db:
            return [tuple(r) for r in db.execute(sql, tuple(params)).fetchall()]


def _postgres(admin: str) -> BackendUnderTest:
    """A fresh database set up by ``db init``; the store connects as a login role holding exactly the
    gatekeeper's and the approver's privileges (so the contract also runs through the grants and guards)."""
    import secrets

    import anyio
    import pgcluster
    import psycopg

    from mcp_gatekeeper.clock import SystemClock
    from mcp_gatekeeper.store.pg_schema import Roles
    from mcp_gatekeeper.store.postgres import init_database

    tag = secrets.token_hex(4)
    roles = Roles(gatekeeper=f"gk_{tag}", approver=f"ap_{tag}", owner=f"own_{tag}")
    anyio.run(lambda: init_database(admin, SystemClock(), roles=roles))
    password = secrets.token_urlsafe(12)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"CREATE ROLE both_{tag} LOGIN PASSWORD '{password}' IN ROLE {roles.gatekeeper}, {roles.approver}")
        c.execute(f"GRANT CONNECT ON DATABASE {pgcluster.urlsplit(admin).path.lstrip('/')} TO both_{tag}")
    return BackendUnderTest("postgres", pgcluster.with_credentials(admin, user=f"both_{tag}", password=password), admin)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendUnderTest]:
    if request.param == "sqlite":
        yield BackendUnderTest("sqlite", str(tmp_path / "gk.db"))
    elif request.param == "postgres":
        yield _postgres(request.getfixturevalue("pg_admin_dsn"))
    else:  # pragma: no cover - a backend listed without its set-up
        raise AssertionError(f"no set-up for the {request.param} backend")
