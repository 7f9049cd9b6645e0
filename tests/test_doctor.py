"""``mcp-gatekeeper doctor``: the whole set-up in one table, including servers that bypass the gate."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import anyio
import pytest
from harness import FEATURE_SERVER, ROOT, gk_env

pytestmark = pytest.mark.anyio


async def test_doctor_reports_ungated_servers_database_and_upstreams(tmp_path: Path) -> None:
    home_dir = tmp_path / "home"
    claude = home_dir / ".config" / "Claude"
    claude.mkdir(parents=True)
    exe = shutil.which("mcp-gatekeeper") or "/nonexistent/mcp-gatekeeper"
    (claude / "claude_desktop_config.json").write_text(
        json.dumps(
            {
                "mcpServers": {
                    "gated": {"command": exe, "args": ["wrap", "--name", "gated", "--", "uvx", "mcp-server-time"]},
                    "direct-fs": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]},
                }
            }
        )
    )
    cfg = tmp_path / "gk.toml"
    cfg.write_text(
        f'[ui]\nautostart = false\nport = 1\n[upstreams.feat]\ncommand = "{sys.executable}"\nargs = ["{FEATURE_SERVER}"]\n'
    )
    gk_home = tmp_path / "gk-home"
    env = gk_env(gk_home, HOME=str(home_dir), XDG_CONFIG_HOME=str(home_dir / ".config"))
    argv = [sys.executable, "-m", "mcp_gatekeeper", "doctor", "--config", str(cfg), "--project", str(tmp_path)]
    with anyio.fail_after(60):
        # a first run: no database yet; then one after a command created it
        proc = await anyio.run_process(argv, env=env, check=False, cwd=str(ROOT))
        out = proc.stdout.decode()
        assert "does not exist yet" in out
        await anyio.run_process([sys.executable, "-m", "mcp_gatekeeper", "audit", "--verify"], env=env, cwd=str(ROOT))
        proc = await anyio.run_process(argv, env=env, check=False, cwd=str(ROOT))
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    client_line = next(line for line in out.splitlines() if line.startswith("client claude-desktop"))
    assert "WARN" in client_line and "DIRECT (ungated) direct-fs" in client_line and "gated gated" in client_line
    assert any(line.startswith("database") and "integrity ok" in line for line in out.splitlines())
    assert any(line.startswith("audit chain") and "ok" in line for line in out.splitlines())
    upstream = next(line for line in out.splitlines() if line.startswith("upstream feat"))
    assert "ok" in upstream and "protocol 2025-11-25" in upstream and "tools" in upstream
