"""``mcp-gatekeeper doctor``: check the whole set-up and print a table.

Each known client config found and which of its servers are gated or still run directly (an ungated
path around the gate), the database and its integrity, the approval page's port, the installed
executable, and each configured upstream's protocol era and capabilities (connects, lists tools).
"""

from __future__ import annotations

import argparse
import shutil
import socket
from pathlib import Path

import anyio
from mcp import Client

from mcp_gatekeeper import hostos, install, names
from mcp_gatekeeper.config import GatekeeperConfig, load_config, resolve_config_path
from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.serve import describe_location, open_runtime, store_location
from mcp_gatekeeper.store import default_home
from mcp_gatekeeper.upstream import Upstream, UpstreamHooks

OK, WARN, FAIL = "ok", "WARN", "FAIL"


def _port_state(host: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect((host, port))
        except OSError:
            return "free (no approval page is being served)"
        return "in use (an approval page is probably being served)"


def run_doctor(args: argparse.Namespace) -> int:
    rows: list[tuple[str, str, str]] = []
    project = Path(args.project) if getattr(args, "project", None) else Path.cwd()

    exe = shutil.which("mcp-gatekeeper")
    rows.append(
        (
            "executable",
            OK if exe else WARN,
            exe
            or f"mcp-gatekeeper is not on PATH; clients need its absolute path, and this one is: {hostos.self_command(with_home=False)}",
        )
    )

    for client in install.CLIENTS:
        files = install.find_config_files(client, project=project)
        if not files:
            rows.append((f"client {client}", "-", "no config file found"))
        for f in files:
            try:
                servers = install.inspect_servers(f)
            except Exception as e:
                rows.append((f"client {client}", FAIL, f"{f}: cannot read ({e})"))
                continue
            direct = [s.name for s in servers if not s.gated]
            gated = [s.name for s in servers if s.gated]
            missing_exe = [s.name for s in servers if s.gated and s.exe_exists is False]
            status = WARN if direct or missing_exe else OK
            detail = f"{f}: gated {', '.join(gated) or '-'}; DIRECT (ungated) {', '.join(direct) or '-'}"
            if missing_exe:
                detail += f"; gatekeeper path missing for {', '.join(missing_exe)}"
            rows.append((f"client {client}", status, detail))
            for server in servers:
                if server.gated and server.served_as:
                    rows.extend(_name_rows(f"client {client}", server, getattr(args, "config", None)))

    try:
        config = load_config(getattr(args, "config", None))
    except Exception as e:
        rows.append(("config", FAIL, str(e)))
        _print(rows)
        return 2
    rows.append(("config", OK, _config_line(config, resolve_config_path(getattr(args, "config", None)))))
    home = default_home()
    rows.append(("ui port", "-", f"{config.ui.host}:{config.ui.port} {_port_state(config.ui.host, config.ui.port)}"))

    try:  # [store] url or $MCP_GATEKEEPER_STORE, as every command opens it
        location, _key = store_location(config, home)
        db = describe_location(config, home)
    except ConfigError as e:
        location, db = "", "the store"
        rows.append(("database", FAIL, str(e)))
    missing = "://" not in location and not Path(location).exists()

    async def checks() -> None:
        if not location:
            pass
        elif missing:
            rows.append(("database", "-", f"{db} does not exist yet (created on first use)"))
        else:
            try:
                async with open_runtime(config, home=home, register=False) as rt:
                    integrity = await rt.store.integrity_check()
                    ok, _n, msg = await rt.store.verify_audit()
                    counts = await rt.store.counts()
                    running = await rt.store.live_problems()
                rows.append(
                    ("database", OK if integrity == "ok" else FAIL, f"{db}: integrity {integrity}; {_counts(counts)}")
                )
                rows.append(("audit chain", OK if ok else FAIL, msg))
                for event in running:
                    rows.append(("running gatekeeper", FAIL, str(event.detail.get("message", event.detail))))
            except Exception as e:
                rows.append(("database", FAIL, f"{db}: {e}"))
        for name, cfg in config.upstreams.items():
            up = Upstream(name, cfg, UpstreamHooks())
            try:
                with anyio.fail_after(args.timeout):
                    async with up.running():
                        client: Client = await up.connect()
                        tools = await up.refresh_tools()
                        caps = client.server_capabilities
                        families = [
                            f
                            for f in ("tools", "resources", "prompts", "completions", "logging")
                            if caps and getattr(caps, f)
                        ]
                        rows.append(
                            (
                                f"upstream {name}",
                                OK,
                                f"{cfg.kind}, protocol {client.protocol_version}, {len(tools)} tools, capabilities: {', '.join(families)}",
                            )
                        )
                        up.mark_broken()
            except Exception as e:
                rows.append((f"upstream {name}", FAIL, f"{cfg.kind}: {e}"))

    anyio.run(checks)
    _print(rows)
    return 1 if any(r[1] == FAIL for r in rows) else 0


def _config_line(config: GatekeeperConfig, path: Path | None) -> str:
    """Which file, what it holds, and whether the built-in default decides (no rules, or none for a call)."""
    where = str(path) if path is not None else "no config file (built-in defaults)"
    line = f"{where}: {len(config.upstreams)} upstream(s), "
    if not config.rules:
        return (
            line + "no rules, so the built-in default decides every call (reads pass, the rest is held; see `explain`)"
        )
    return line + f"{len(config.rules)} rule(s); a call no rule matches gets the built-in default"


def _counts(counts: dict[str, int]) -> str:
    """``{'allowed': 3, 'pending': 1}`` as words: ``4 calls: 3 allowed, 1 pending``."""
    if not counts:
        return "no calls yet"
    total = sum(counts.values())
    each = ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{total} call{'' if total == 1 else 's'}: {each}"


def _name_rows(what: str, server: install.ServerStatus, fallback: str | None) -> list[tuple[str, str, str]]:
    """Whether the rules of the config a gated entry runs with reach the name it is served as."""
    try:
        config = load_config(server.config or fallback)
    except Exception as e:
        return [(what, FAIL, f"server {server.name!r}: its config cannot be loaded ({e})")]
    return [
        (what, FAIL, f"server {server.name!r} (served as {server.served_as!r}): {problem.message()}")
        for problem in names.unreached(config, [server.served_as or server.name])
    ]


def _print(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for what, status, detail in rows:
        print(f"{what:<{width}}  {status:<4}  {detail}")
