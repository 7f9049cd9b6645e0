from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private data home for the gatekeeper (database, token) so nothing real is touched."""
    h = tmp_path / "gk-home"
    h.mkdir()
    monkeypatch.setenv("MCP_GATEKEEPER_HOME", str(h))
    monkeypatch.delenv("MCP_GATEKEEPER_CONFIG", raising=False)
    return h


@pytest.fixture
def no_ui_config(tmp_path: Path) -> Path:
    """A config that keeps the approval page off (tests that are not about the page)."""
    p = tmp_path / "no-ui.toml"
    p.write_text("[ui]\nautostart = false\n")
    return p
