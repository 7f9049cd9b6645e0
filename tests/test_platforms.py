"""What a Windows machine would do, shown on this one: the package without POSIX-only modules, and `wrap`
serving every message on the SDK's path (the only one Windows has).

Each run is a subprocess started through ``tests/without_posix.py``, which makes ``fcntl``, ``termios``,
``pty``, ``resource``, ``grp``, ``pwd`` and ``tty`` unimportable (and ``os.killpg`` & co. absent) inside
that process only; ``sys.platform`` is left alone. The seam's own branches are in ``test_hostos.py``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path

import anyio
import mcp.server.stdio
import psutil
import pytest
from harness import FEATURE_SERVER, ROOT, call_log, gatekeeper, gk_env, wrap_params
from mcp import StdioServerParameters

LAUNCHER = ROOT / "tests" / "without_posix.py"
POSIX_ONLY = ("fcntl", "termios", "pty", "resource", "grp", "pwd", "tty")


async def _without_posix(home: Path, *args: str) -> tuple[int, str, str]:
    proc = await anyio.run_process([sys.executable, str(LAUNCHER), *args], env=gk_env(home), check=False, cwd=str(ROOT))
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@pytest.mark.anyio
async def test_every_module_imports_without_the_posix_only_modules(home: Path) -> None:
    rc, out, err = await _without_posix(home, "imports")
    report = json.loads(out)
    assert (rc, report["failures"]) == (0, {}), err
    package = {p.stem for p in (ROOT / "mcp_gatekeeper").glob("*.py")} - {"__init__", "__main__"}
    assert {m.removeprefix("mcp_gatekeeper.") for m in report["modules"]} >= package


@pytest.mark.anyio
@pytest.mark.parametrize("name", POSIX_ONLY)
async def test_the_block_holds_for_every_way_of_importing(home: Path, name: str) -> None:
    rc, out, err = await _without_posix(home, "probe", name)
    assert (rc, json.loads(out)) == (0, {"got": []}), err


@pytest.mark.anyio
async def test_the_probe_would_see_a_module_that_is_there(home: Path) -> None:
    rc, out, _ = await _without_posix(home, "probe", "json")
    assert rc == 1 and len(json.loads(out)["got"]) == 4


def test_the_allowed_posix_imports_really_never_run_on_windows() -> None:
    """The launcher lets two third-party imports through; each is one Windows never reaches."""
    sdk = Path(mcp.server.stdio.__file__).read_text().splitlines()
    at = next(i for i, line in enumerate(sdk) if line.strip().startswith("import fcntl"))
    assert 'sys.platform != "win32"' in sdk[at - 1]
    ps = Path(psutil.__file__).read_text()
    assert re.search(r"if LINUX:\n(?:\s+#.*\n|\s+\w+ = .*\n|\s*\n)*\s+from \. import _pslinux as _psplatform", ps)
    assert re.search(r"elif WINDOWS:\n\s+from \. import _pswindows as _psplatform", ps)


@pytest.mark.anyio
async def test_the_command_line_runs_without_the_posix_only_modules(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text('[ui]\nautostart = false\n[[rules]]\ntool = "delete_*"\ngate = "hard"\n')
    rc, out, err = await _without_posix(home, "cli", "--help")
    assert rc == 0 and "usage: mcp-gatekeeper" in out, err
    rc, out, err = await _without_posix(home, "cli", "check-config", "--config", str(cfg))
    assert rc == 0 and out.startswith("ok:"), err
    rc, out, err = await _without_posix(
        home, "cli", "explain", "delete_file", "--upstream", "fs", "--args", '{"path": "/x"}', "--config", str(cfg)
    )
    assert rc == 0 and "HOLD" in out and "rules[0]" in out, err
    rc, out, err = await _without_posix(home, "cli", "pending", "--config", str(cfg))
    assert rc == 0 and "no calls are waiting" in out, err
    assert (home / "gatekeeper.db").is_file()  # the store was opened (and made) in the temp home
    assert "Traceback" not in err


@pytest.mark.anyio
@pytest.mark.parametrize("lanes", ["sdk", "auto"])
async def test_wrap_end_to_end_on_the_sdk_path_as_on_windows(home: Path, tmp_path: Path, lanes: str) -> None:
    """`wrap` with the lanes off (as on Windows; and without the POSIX-only modules) gives the client and
    the store exactly what it gives with them on: an allowed call, a held call approved from the CLI."""
    cfg = tmp_path / "gk.toml"
    cfg.write_text('[ui]\nautostart = false\n[[rules]]\ntool = "echo"\ngate = "allow"\n')
    log = tmp_path / "calls.jsonl"
    upstream = [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)]
    if lanes == "sdk":
        params = StdioServerParameters(
            command=sys.executable,
            args=[
                str(LAUNCHER),
                "--keep-calls",
                "cli",
                "-v",
                "wrap",
                "--name",
                "feat",
                "--config",
                str(cfg),
                "--",
                *upstream,
            ],
            env=gk_env(home, MCP_GATEKEEPER_LANES="sdk"),
            cwd=str(ROOT),
        )
    else:
        base = wrap_params(home, cfg, "feat", upstream)
        params = StdioServerParameters(
            command=base.command, args=["-m", "mcp_gatekeeper", "-v", *base.args[2:]], env=base.env, cwd=base.cwd
        )
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, watcher):
            echoed = await client.call_tool("echo", {"text": "through"})
            assert echoed.structured_content == {"text": "through"} and not echoed.is_error
            out: list[str] = []
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    result = await client.call_tool("write_note", {"path": "/tmp/p", "content": lanes})
                    out.append("error" if result.is_error else "ok")

                tg.start_soon(call)
                held = await watcher.held()
                rc, _, err = await _without_posix(home, "cli", "approve", held, "--config", str(cfg))
                assert rc == 0, err
            assert out == ["ok"]
            lines = "".join(watcher.lines)
    if lanes == "sdk":
        assert "stdio: the SDK's transport ($MCP_GATEKEEPER_LANES=sdk)" in lines
        assert "upstream feat: the SDK's stdio_client (no raw lane)" in lines
        assert "fast lane" not in lines.replace("with the fast lane", "")
    else:
        assert "stdio: non-blocking pipes, with the fast lane" in lines
        assert "stdio_client" not in lines
    with sqlite3.connect(home / "gatekeeper.db") as db:
        states = db.execute("SELECT tool, state FROM calls ORDER BY created_at").fetchall()
    assert states == [("echo", "forwarded"), ("write_note", "forwarded")]
    assert [(c["tool"], c["arguments"]) for c in call_log(log)] == [
        ("echo", {"text": "through"}),
        ("write_note", {"path": "/tmp/p", "content": lanes}),
    ]
