"""The README's team-mode "set-up from zero", run as written: the commands of its marked block and its
``gatekeeper.toml``, with only the placeholders replaced (the database's address, the port, each password piped
with ``--password-stdin``, the keys and URLs earlier steps print, the upstream's path), against a throwaway
PostgreSQL database. Then a real client's call through the gatekeeper is held, decided by a reviewer signed in
to the service through its public address (the test plays the TLS reverse proxy: ``Host: gk.example.com``), and
runs once. A command the block gains that this test does not know fails it: the README cannot drift."""

from __future__ import annotations

import json
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from harness import ROOT, StderrWatcher, gatekeeper, gk_env, npm_bin
from mcp import StdioServerParameters

from mcp_gatekeeper.devcluster import free_port

pytestmark = pytest.mark.anyio

MARK = "<!-- team-setup-from-zero"
PUBLIC = "https://gk.example.com"
SERVING = re.compile(r"approval service: https://gk\.example\.com/login \(listening on 127\.0\.0\.1:(\d+)\)")
ROLE_URL = re.compile(r"^role (\w+): (postgresql://\S+)$", re.M)
README_DB = "db.internal:5432/gatekeeper"


def readme_blocks() -> tuple[str, str]:
    """The marked bash block and the toml block after it."""
    after = (ROOT / "README.md").read_text(encoding="utf-8").split(MARK, 1)[1]
    bash = re.search(r"```bash\n(.*?)```", after, re.S)
    toml = re.search(r"```toml\n(.*?)```", after, re.S)
    assert bash is not None and toml is not None, "README: the team set-up block or its gatekeeper.toml is gone"
    assert after.index("```bash") < after.index("```toml")
    return bash.group(1), toml.group(1)


def test_the_block_is_what_the_readme_says() -> None:
    bash, toml = readme_blocks()
    words = [shlex.split(line, comments=True) for line in bash.splitlines()]
    verbs = [" ".join(w[:2]) for w in words if w]
    assert verbs == [
        "mcp-gatekeeper db", "export MCP_GATEKEEPER_STORE=postgresql://approver:APPROVER_PASSWORD@db.internal:5432/gatekeeper",
        "mcp-gatekeeper users", "mcp-gatekeeper users", "mcp-gatekeeper keys", "mcp-gatekeeper serve",
        "mcp-gatekeeper wrap",
    ]  # fmt: skip
    assert "GATEKEEPER_PASSWORD@db.internal:5432/gatekeeper" in toml and "ed25519:SERVICE_PUBLIC_KEY" in toml


async def test_the_readmes_team_setup_from_zero_decides_a_call(
    pg_admin_dsn: str, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filesystem = npm_bin("mcp-server-filesystem")
    if filesystem is None:
        pytest.skip("mcp-server-filesystem is not installed (.ci/setup installs it)")
    bash, toml = readme_blocks()
    admin = re.match(r"postgresql://([^@]+)@([^/]+)/(\w+)", pg_admin_dsn)
    assert admin is not None
    port = free_port()
    shared = tmp_path / "shared"
    shared.mkdir()
    config_home = tmp_path / "xdg"  # no user config file anywhere: each command reads only what the README gives
    config_home.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    homes = {side: tmp_path / side for side in ("admin", "service", "agent")}
    for h in homes.values():
        h.mkdir()
    found: dict[str, str] = {}  # what earlier steps printed: role URLs, the service's key
    exported: dict[str, str] = {}
    passwords: dict[str, str] = {}

    def placeholders(text: str) -> str:
        text = text.replace("admin:ADMIN_PASSWORD@" + README_DB, f"{admin.group(1)}@{admin.group(2)}/{admin.group(3)}")
        for role in ("approver", "gatekeeper"):
            if role in found:
                text = text.replace(f"postgresql://{role}:{role.upper()}_PASSWORD@{README_DB}", found[role])
        if "key" in found:
            text = text.replace("ed25519:SERVICE_PUBLIC_KEY", found["key"])
        return text

    def env(side: str) -> dict[str, str]:
        return gk_env(homes[side], XDG_CONFIG_HOME=str(config_home), **(exported if side == "service" else {}))

    def run(side: str, args: list[str], stdin: str | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "mcp_gatekeeper", *args], input=stdin, capture_output=True, text=True,
            env=env(side), cwd=str(tmp_path), timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        return done.stdout

    service_err = StderrWatcher()
    try:
        with anyio.fail_after(240):
            async with anyio.create_task_group() as tg:
                service: anyio.abc.Process | None = None
                wrap: list[str] | None = None
                for line in bash.splitlines():
                    words = shlex.split(placeholders(line), comments=True)
                    if not words:
                        continue
                    if words[0] == "export":
                        key, _, value = words[1].partition("=")
                        exported[key] = value
                        continue
                    assert words[0] == "mcp-gatekeeper", f"README: a command this test does not know: {line}"
                    args = words[1:]
                    if args[:2] == ["db", "init"]:
                        out = run("admin", args)
                        found.update(ROLE_URL.findall(out))
                        assert set(found) == {"gatekeeper", "approver"}, out
                        assert exported == {}
                    elif args[:2] == ["users", "add"]:
                        passwords[args[2]] = secrets.token_urlsafe(16)
                        run("service", [*args, "--password-stdin"], stdin=passwords[args[2]] + "\n")
                    elif args[:2] == ["keys", "show"]:
                        found["key"] = run("service", args).strip()
                        assert found["key"].startswith("ed25519:")
                    elif args[0] == "serve":
                        args = ["0" if a == "8766" else a for a in args]  # a free port, found in its output
                        service = await anyio.open_process(
                            [sys.executable, "-m", "mcp_gatekeeper", *args], env=env("service"), cwd=str(tmp_path),
                            stderr=service_err.file,
                        )  # fmt: skip
                        port = int((await service_err.wait_for(SERVING)).group(1))
                    elif args[0] == "wrap":
                        upstream = args.index("--")
                        assert args[upstream + 1 :] == [
                            "npx",
                            "-y",
                            "@modelcontextprotocol/server-filesystem",
                            "/srv/shared",
                        ]
                        wrap = [*args[:upstream], "--", filesystem, str(shared)]
                    else:
                        raise AssertionError(f"README: a command this test does not know: {line}")
                assert service is not None and wrap is not None
                config = tmp_path / "gatekeeper.toml"
                config.write_text(placeholders(toml), encoding="utf-8")
                wrap = [str(config) if a == "gatekeeper.toml" else a for a in wrap]
                params = StdioServerParameters(
                    command=sys.executable, args=["-m", "mcp_gatekeeper", *wrap], env=env("agent"), cwd=str(tmp_path)
                )
                answered = anyio.Event()
                results: list[object] = []
                async with gatekeeper(params) as (client, watcher):

                    async def agent() -> None:
                        args = {"path": str(shared / "notes.txt"), "content": "decided by a reviewer"}
                        results.append(await client.call_tool("write_file", args))
                        answered.set()

                    tg.start_soon(agent)
                    prefix = await watcher.held()
                    held_line = next(line for line in watcher.lines if f"HELD {prefix}" in line)
                    # [ui] public_url: the notification names the call's card on the service (a short link, signed
                    # with this home's key, would be refused there)
                    assert f"{PUBLIC}/#/call/" in held_line, held_line
                    assert not (shared / "notes.txt").exists()
                    via_proxy = {"Host": "gk.example.com", "X-Forwarded-For": "203.0.113.7"}
                    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=via_proxy) as http:
                        r = await http.post(
                            "/login", data={"username": "alice", "password": passwords["alice"]},
                            headers={"Origin": PUBLIC},
                        )  # fmt: skip
                        assert r.status_code == 303, r.text
                        assert "secure" in r.headers["set-cookie"].lower()
                        alice = {"Cookie": r.headers["set-cookie"].split(";")[0], "Origin": PUBLIC,
                                 "X-Gatekeeper-Key": r.headers["location"].partition("#key=")[2]}  # fmt: skip
                        pending = (await http.get("/api/calls?state=pending", headers=alice)).json()["calls"]
                        call = next(c for c in pending if c["id"].startswith(prefix))
                        r = await http.post(
                            f"/api/calls/{call['id']}/approve", json={"args_digest": call["args_digest"]}, headers=alice
                        )
                        assert r.status_code == 200 and r.json()["decided"] is True, r.text
                        await answered.wait()
                        shown = (await http.get(f"/api/calls/{call['id']}", headers=alice)).json()
                        audit = (await http.get(f"/api/audit?call_id={call['id']}", headers=alice)).json()["events"]
                service.terminate()
                tg.cancel_scope.cancel()
    finally:
        service_err.close()
    assert not results[0].is_error, results[0]  # type: ignore[attr-defined]
    assert (shared / "notes.txt").read_text() == "decided by a reviewer"
    assert shown["state"] == "forwarded" and shown["decided_by"] == "alice", json.dumps(shown)[:500]
    events = [e["event"] for e in audit]
    assert events.count("approved") == 1 and events.count("forwarded") == 1, events
