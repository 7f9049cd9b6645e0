"""Fixtures of the fault and attack suite (``pytest -m reliability tests/reliability``).

Every test here drives real processes (``mcp-gatekeeper wrap``/``run``/``ui``, the CLI, Chromium) against a
real SQLite file in a private data home, and asserts the invariants of the threat model (§3) on outcomes:
what the upstream's call log received, what the store holds, what the client got.

Tests marked ``slow`` run only with ``GK_SLOW=1``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
for _p in (str(TESTS), str(HERE)):  # `harness` (tests/) and `relkit` (this directory)
    if _p not in sys.path:
        sys.path.insert(0, _p)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes longer than a minute; runs only with GK_SLOW=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("GK_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set GK_SLOW=1 to run it")
    for item in items:
        if item.get_closest_marker("slow") is not None and HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private data home (database, ui-token) for this test only."""
    h = tmp_path / "gk-home"
    h.mkdir()
    monkeypatch.setenv("MCP_GATEKEEPER_HOME", str(h))
    monkeypatch.delenv("MCP_GATEKEEPER_CONFIG", raising=False)
    return h


BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres")]


@pytest.fixture(params=BACKENDS)
def backing(request: pytest.FixtureRequest, home: Path) -> Any:
    """Where this test's store is (a ``relkit.Backing``): the home's SQLite file, or a fresh database of the
    session's PostgreSQL server (``pg_admin_dsn``: one server, a database per test) set up by ``db init``."""
    import anyio
    import relkit

    if request.param == "sqlite":
        return relkit.sqlite_backing(relkit.db_of(home))
    admin = request.getfixturevalue("pg_admin_dsn")
    return anyio.run(relkit.postgres_backing, admin)
