"""A real SQLite store at a fixed time for the calibration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.store import Store

from .seeding import NOW


@pytest.fixture
async def store(home: Path) -> AsyncIterator[Store]:
    async with Store.open(home / "gatekeeper.db", FakeClock(NOW)) as s:
        yield s
