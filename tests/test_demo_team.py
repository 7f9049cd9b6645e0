"""``mcp-gatekeeper demo --team``, as a user runs it: real processes on a throwaway PostgreSQL cluster and on a
shared SQLite store. ``--auto`` exits 0 only if each order desk received exactly what the reviewers decided;
Ctrl-C leaves nothing behind (processes, cluster, temp dir)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from harness import ROOT, gk_env

from mcp_gatekeeper import devcluster

pytestmark = pytest.mark.anyio

CHECK = re.compile(r"^check: (ok|FAILED): (.*)$", re.M)
EXPECTED_CHECKS = [
    "alice approves the refund: 1 of 2, it waits",
    "the refund has not run yet",
    "alice cannot count twice",
    "bob approves: 2 of 2, the refund runs",
    "alice may not decide her own agent's deletion",
    "bob rejects the deletion",
    "both agents got their answers",
    "the laptop's order desk received the read and the refund, once",
    "the CI runner's order desk received the read and no deletion",
]


def _demo(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mcp_gatekeeper", "demo", "--team", *args]


def _run_auto(home: Path, backend: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _demo(home, "--auto", "--backend", backend), capture_output=True, text=True, env=gk_env(home), cwd=str(ROOT),
        timeout=300, check=False,
    )  # fmt: skip


def _assert_all_checks_passed(out: str) -> None:
    checks = CHECK.findall(out)
    assert [status for status, _ in checks] == ["ok"] * len(EXPECTED_CHECKS), out
    for (_, said), expected in zip(checks, EXPECTED_CHECKS, strict=True):
        assert said.startswith(expected), (said, expected)


def test_team_demo_auto_on_postgres(home: Path) -> None:
    why = devcluster.why_unavailable()  # the demo starts its own cluster ($GATEKEEPER_TEST_PG is not for it)
    if why is not None:
        pytest.skip(why)
    done = _run_auto(home, "postgres")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "a throwaway PostgreSQL cluster" in done.stdout
    assert "(PostgreSQL store)" in done.stdout
    _assert_all_checks_passed(done.stdout)
    assert "every upstream received exactly what was decided" in done.stdout


def test_team_demo_auto_on_shared_sqlite(home: Path) -> None:
    done = _run_auto(home, "sqlite")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "using a shared SQLite store, not PostgreSQL" in done.stderr  # said on stderr
    assert "(SQLite store)" in done.stdout
    _assert_all_checks_passed(done.stdout)


def test_team_demo_flags_need_team(home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gatekeeper", "demo", "--auto"], capture_output=True, text=True, env=gk_env(home),
        cwd=str(ROOT), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "--team" in done.stderr


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_ctrl_c_stops_every_process_and_removes_everything(home: Path) -> None:
    """Interactive: the demo waits for the reviewers; Ctrl-C ends the service, both gatekeepers, the cluster (when
    PostgreSQL is installed) and deletes the temp dir."""
    backend = "postgres" if devcluster.why_unavailable() is None else "sqlite"
    out = b""
    waiting = re.compile(rb"agent (laptop|ci-runner): \xe2\x80\xa6 waiting for human approval")
    with anyio.fail_after(240):
        async with await anyio.open_process(
            _demo(home, "--backend", backend), env=gk_env(home), cwd=str(ROOT), stderr=subprocess.DEVNULL
        ) as demo:
            assert demo.stdout is not None
            async for chunk in demo.stdout:
                out += chunk
                if {m.group(1) for m in waiting.finditer(out)} == {b"laptop", b"ci-runner"}:
                    break
            demo.send_signal(signal.SIGINT)
            rc = await demo.wait()
    text = out.decode()
    assert rc == 130, text
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text)]
    assert len(ports) >= 3, text  # the service and both gatekeepers (and the cluster, on PostgreSQL)
    assert all(_refused(p) for p in ports), text
    root = re.search(r"and order desks: (\S+) \(removed at the end\)", text)
    assert root is not None and Path(root.group(1)).name.startswith("gk-team-demo-"), text
    assert not Path(root.group(1)).exists()
    assert "Decide on the page" in text and "reviewer alice" in text and "reviewer bob" in text
