"""Telemetry off costs nothing: without the ``otel`` extra (every import of the OpenTelemetry SDK refused, in a
subprocess through ``tests/without_otel.py``) the package imports and proxies calls without ever reaching for it, and a
config that turns telemetry on is refused at start with the extra's name (fails closed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from harness import ROOT, gk_env, raw_wrap
from mcp.client.stdio import StdioServerParameters

from mcp_gatekeeper.proxy import Proxy
from mcp_gatekeeper.telemetry import NO_TELEMETRY

pytestmark = pytest.mark.anyio

LAUNCHER = ROOT / "tests" / "without_otel.py"
RAW_SERVER = ROOT / "tests" / "upstreams" / "raw_server.py"


async def _without_otel(home: Path, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    import anyio

    proc = await anyio.run_process(
        [sys.executable, str(LAUNCHER), *args], input=stdin, env=gk_env(home), cwd=str(ROOT), check=False
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


async def test_every_module_imports_and_none_reaches_for_opentelemetry(home: Path) -> None:
    rc, out, err = await _without_otel(home, "imports")
    report = json.loads(out)
    assert (rc, report["failures"], report["attempts"]) == (0, {}, []), err


async def test_a_wrap_without_the_extra_serves_calls_and_never_imports_it(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text('[ui]\nautostart = false\n[[rules]]\nname = "echo-ok"\ntool = "echo"\ngate = "allow"\n')
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(LAUNCHER), "cli", "wrap", "--config", str(cfg), "--name", "raw", "--", sys.executable,
              str(RAW_SERVER), "--log", str(tmp_path / "up.log")],
        env=gk_env(home), cwd=str(ROOT),
    )  # fmt: skip
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    async with raw_wrap(params) as c:
        reply = await c.request(
            1, "tools/call", {"name": "echo", "arguments": {"x": 1}, "_meta": {"traceparent": traceparent}}
        )
        assert "result" in reply and not reply["result"].get("isError")
    assert json.loads(c.watcher.lines[-1]) == {"attempts": [], "otel_module": False}


async def test_turning_telemetry_on_without_the_extra_is_refused_at_start(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text("[ui]\nautostart = false\n[telemetry]\nenabled = true\n")
    rc, _out, err = await _without_otel(
        home, "cli", "wrap", "--config", str(cfg), "--name", "raw", "--", sys.executable, str(RAW_SERVER), stdin=b""
    )
    assert rc == 2
    assert "telemetry.enabled" in err and "mcp-gatekeeper-proxy[otel]" in err
    assert json.loads(err.strip().splitlines()[-1])["attempts"] == ["opentelemetry.sdk"]


def test_the_proxy_defaults_to_no_telemetry() -> None:
    assert Proxy.__init__.__kwdefaults__ is None or "telemetry" in Proxy.__init__.__kwdefaults__
    assert not NO_TELEMETRY.enabled
