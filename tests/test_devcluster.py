"""The throwaway PostgreSQL server of ``demo --team`` and the tests (mcp_gatekeeper/devcluster.py): a clear
refusal where it cannot run, and nothing left behind once stopped."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from mcp_gatekeeper import cli, devcluster, teamdemo
from mcp_gatekeeper.errors import DevClusterError


def test_without_postgresql_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devcluster, "bin_dir", lambda: None)
    assert "apt-get install postgresql" in (devcluster.why_unavailable() or "")
    with pytest.raises(DevClusterError, match="PostgreSQL is not installed"):
        devcluster.start_cluster()


def test_as_root_without_a_postgres_user_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devcluster, "bin_dir", lambda: Path("/usr/lib/postgresql/15/bin"))
    monkeypatch.setattr(devcluster, "_as_root", lambda: True)
    monkeypatch.setattr(devcluster, "_postgres_user", lambda: None)
    with pytest.raises(DevClusterError, match="no 'postgres' OS user"):
        devcluster.start_cluster()


def test_on_windows_it_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    assert "Linux and macOS only" in (devcluster.why_unavailable() or "")


def test_demo_team_on_postgres_without_postgresql_exits_3_naming_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    """``--backend postgres`` insists (no silent SQLite); ``auto`` falls back, saying so on stderr."""
    monkeypatch.setattr(devcluster, "why_unavailable", lambda: "PostgreSQL is not installed (test)")
    assert teamdemo._postgres_unavailable() == "PostgreSQL is not installed (test)"
    assert cli.main(["demo", "--team", "--auto", "--backend", "postgres"]) == 3
    err = capsys.readouterr().err
    assert "--backend postgres: PostgreSQL is not installed (test)" in err


def test_a_cluster_stopped_leaves_no_server_and_no_files() -> None:
    if why := devcluster.why_unavailable():
        pytest.skip(why)
    with devcluster.start_cluster() as cluster:
        assert cluster.owned and cluster.data_dir is not None and cluster.dsn.startswith("postgresql://postgres:")
        data_dir, port = cluster.data_dir, cluster.port
        assert (data_dir / "data" / "PG_VERSION").exists()
    assert not data_dir.exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    cluster.stop()  # twice is harmless
