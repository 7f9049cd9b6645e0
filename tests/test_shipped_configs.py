"""Every shipped config in ``config/`` covers every tool of the real server it is written for.

The servers are started for real and their tools listed; the check works on what they say, not on a list
copied into this file, so a tool a new server version adds fails the test until the config names it.

**Covered** means, precisely:

* with harmless arguments built from the tool's own input schema, the call is decided by a rule of the config
  whose ``tool`` pattern names the tool (not a catch-all ``*`` and not the built-in default); and a tool the
  server does not annotate ``readOnlyHint: true`` is not allowed by a rule without conditions (it is held,
  denied, or allowed only inside a ``when`` such as the demo's ``amount <= 25``);
* every argument that can name a file (a string, or a list of strings, called ``path``, ``paths``, ``*_path``,
  ``file(s)``, ``source``, ``destination``) is **secret-proof**: putting a credentials file in it (one of
  :data:`SECRET_FILES`, absolute or relative, alone or as one element of the list) gets the call denied.
  An argument that names a folder (``*_path`` of a repository, ``dir``) is checked with the credentials
  folders (:data:`SECRET_DIRS`).
"""

from __future__ import annotations

import fnmatch
import re
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness import ROOT, npm_bin, peer_bin
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_gatekeeper.config import RuleConfig, load_config, parse_config
from mcp_gatekeeper.policy import Policy

pytestmark = pytest.mark.anyio

CONFIG_DIR = ROOT / "config"
WORK = "/home/me/work"
SECRET_FILES = [
    ".env", ".env.local", "config/.env.production", "deploy/server.pem", "tls/private.key", ".ssh/id_rsa",
    "id_ed25519", ".ssh/config", ".aws/credentials", ".git-credentials", ".netrc", ".npmrc", ".pypirc",
    ".ENV", ".Ssh/ID_RSA",  # the same files on a case-insensitive disk (macOS, Windows)
    ".config/gh/hosts.yml", ".pgpass", ".vault-token", ".envrc", "certs/client.p12", ".azure/accessTokens.json",
    ".config/gcloud/application_default_credentials.json",  # tokens an attacker's pass found readable
]  # fmt: skip
SECRET_DIRS = [".ssh", ".aws", ".gnupg"]
_FILE_ARG = re.compile(r"^(path|paths|file|files|source|destination|target_file|filename)$", re.IGNORECASE)
_DIR_ARG = re.compile(r"(^|_)(repo_path|dir|directory|folder|root)$", re.IGNORECASE)


def _servers(tmp: Path) -> dict[str, dict[str, list[str | None]]]:
    """Which real server(s) each shipped config is written for, by upstream name."""
    root = tmp / "root"
    root.mkdir(exist_ok=True)
    return {
        "filesystem.toml": {"filesystem": [npm_bin("mcp-server-filesystem"), str(root)]},
        "multi-upstream.toml": {"git": [peer_bin("mcp-server-git")], "time": [peer_bin("mcp-server-time")]},
        "orderdesk-demo.toml": {
            "orderdesk": [sys.executable, "-m", "mcp_gatekeeper.orderdesk", "--state", str(tmp / "desk.json")]
        },
    }


NO_REAL_SERVER = {
    "minimal.toml": "no upstream: the built-in default policy only",
    "payments.toml": "a sketch for a billing server that does not exist as a package",
}


async def list_tools(command: list[str | None]) -> list[dict[str, Any]]:
    """The real server's tools: name, input schema, annotations (as the wire spells them)."""
    if command[0] is None:
        pytest.fail(f"the server for this config is not installed (run .ci/setup): {command}")
    argv = [str(c) for c in command]
    params = StdioServerParameters(command=argv[0], args=argv[1:])
    with anyio.fail_after(60):
        async with Client(stdio_client(params), mode="legacy") as client:
            listed = await client.list_tools()
    return [t.model_dump(by_alias=True, exclude_none=True) for t in listed.tools]


def _sample(schema: dict[str, Any]) -> Any:
    """A harmless value of the schema's type."""
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        return _sample(next(s for s in schema["anyOf"] if s.get("type") != "null"))
    kind = schema.get("type")
    return {"string": "x", "number": 1, "integer": 1, "boolean": False, "array": [], "object": {}}.get(kind, "x")


def _path_args(tool: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Arguments that can name a file or folder: name -> (``file`` | ``dir``, is it a list)."""
    out: dict[str, tuple[str, bool]] = {}
    for name, schema in (tool.get("inputSchema", {}).get("properties") or {}).items():
        kind = "dir" if _DIR_ARG.search(name) else "file" if _FILE_ARG.match(name) else None
        if kind is None:
            continue
        if schema.get("type") == "string":
            out[name] = (kind, False)
        elif schema.get("type") == "array" and schema.get("items", {}).get("type") == "string":
            out[name] = (kind, True)
    return out


def _harmless(tool: dict[str, Any]) -> dict[str, Any]:
    props = tool.get("inputSchema", {}).get("properties") or {}
    args = {name: _sample(schema) for name, schema in props.items()}
    for name, (kind, is_list) in _path_args(tool).items():
        value = WORK if kind == "dir" else f"{WORK}/src/notes.txt"
        args[name] = [value] if is_list else value
    return args


def _names_tool(rule: RuleConfig | None, tool: str) -> bool:
    if rule is None:
        return False
    patterns = [rule.tool] if isinstance(rule.tool, str) else rule.tool
    return any(p != "*" and fnmatch.fnmatchcase(tool, p) for p in patterns)


def coverage_gaps(policy: Policy, upstream: str, tools: list[dict[str, Any]]) -> list[str]:
    """What is not covered (see the module docstring), one line per gap."""
    gaps: list[str] = []
    for tool in tools:
        name = tool["name"]
        annotations = tool.get("annotations") or {}
        base = _harmless(tool)
        verdict = policy.evaluate(upstream, name, base, annotations)
        if not _names_tool(verdict.rule_config, name):
            gaps.append(f"{upstream}/{name}: no rule names it (decided by {verdict.rule or 'the built-in default'})")
        elif annotations.get("readOnlyHint") is not True and verdict.action == "allow" and not verdict.rule_config.when:
            gaps.append(f"{upstream}/{name}: may change things but rule {verdict.rule} allows it unconditionally")
        for arg, (kind, is_list) in _path_args(tool).items():
            secrets = SECRET_DIRS if kind == "dir" else SECRET_FILES
            for secret in secrets:
                for spelled in (f"{WORK}/{secret}", secret, f"{WORK}/src/../{secret}"):
                    value = [base[arg][0], spelled] if is_list else spelled
                    got = policy.evaluate(upstream, name, {**base, arg: value}, annotations)
                    if got.action != "deny":
                        gaps.append(f"{upstream}/{name}: {arg}={value!r} is not denied ({got.action}, {got.rule})")
    return gaps


def test_every_shipped_config_is_checked_against_a_server_or_says_why_not(tmp_path: Path) -> None:
    shipped = {p.name for p in CONFIG_DIR.glob("*.toml")}
    assert shipped == set(_servers(tmp_path)) | set(NO_REAL_SERVER)


@pytest.mark.npm
@pytest.mark.parametrize("config_name", ["filesystem.toml", "multi-upstream.toml", "orderdesk-demo.toml"])
async def test_shipped_config_covers_every_tool_of_its_real_server(config_name: str, tmp_path: Path) -> None:
    policy = Policy(load_config(CONFIG_DIR / config_name))
    gaps: list[str] = []
    for upstream, command in _servers(tmp_path)[config_name].items():
        tools = await list_tools(command)
        assert tools, f"{upstream} listed no tools"
        gaps += coverage_gaps(policy, upstream, tools)
    assert gaps == []


@pytest.mark.npm
async def test_the_check_catches_the_gaps_issue_11_found(tmp_path: Path) -> None:
    # the filesystem config as it was: secrets looked only at `path`, and several tools went unnamed
    before = parse_config(
        """
[[rules]]
name = "no-secrets"
upstream = "fs"
when = { path = { regex = '(^|/)(\\.env|\\.ssh|id_rsa|\\.aws)(/|$)' } }
gate = "deny"
[[rules]]
name = "reads"
upstream = "fs"
tool = ["read_*", "list_*", "search_files", "get_file_info", "directory_tree"]
gate = "allow"
[[rules]]
name = "writes"
upstream = "fs"
tool = ["write_file", "edit_file", "create_directory", "move_file"]
gate = "hard"
"""
    )
    tools = await list_tools(_servers(tmp_path)["filesystem.toml"]["filesystem"])
    gaps = "\n".join(coverage_gaps(Policy(before), "fs", tools))
    assert "read_multiple_files: paths=" in gaps  # {"paths": [..., ".env"]} passed under `reads`
    assert "move_file: destination=" in gaps and "move_file: source=" in gaps
    assert "'/home/me/work/.env.local' is not denied" in gaps


def test_git_show_of_a_committed_secret_is_denied() -> None:
    policy = Policy(load_config(CONFIG_DIR / "multi-upstream.toml"))
    for revision in ("HEAD:.env", "main:config/.env.local", "abc123:deploy/server.pem"):
        args = {"repo_path": WORK, "revision": revision}
        assert policy.evaluate("git", "git_show", args).action == "deny", revision
    assert policy.evaluate("git", "git_show", {"repo_path": WORK, "revision": "HEAD~2"}).action == "allow"


def test_the_filesystem_config_holds_every_escape_from_src_at_high_risk() -> None:
    policy = Policy(load_config(CONFIG_DIR / "filesystem.toml"))
    src = f"{WORK}/src"
    cases = [
        ("write_file", {"path": f"{src}/../.git/hooks/pre-commit", "content": "x"}, "other-writes"),
        ("edit_file", {"path": f"{src}/./../../.bashrc", "edits": []}, "other-writes"),
        ("create_directory", {"path": f"{src}/a/../../.git/hooks"}, "other-writes"),
        ("move_file", {"source": f"{src}/a.py", "destination": f"{src}/../.git/hooks/pre-commit"}, "other-moves"),
        ("move_file", {"source": f"{src}/../.git/config", "destination": f"{src}/config"}, "other-moves"),
        ("write_file", {"path": f"{src}\\..\\..\\.bashrc", "content": "x"}, "other-writes"),
    ]
    for tool, args, rule in cases:
        verdict = policy.evaluate("filesystem", tool, args)
        assert (verdict.action, verdict.rule, verdict.risk) == ("hold", rule, "high"), (tool, args)
    inside = policy.evaluate("filesystem", "move_file", {"source": f"{src}/a.py", "destination": f"{src}/b/a.py"})
    assert inside.rule == "moves-in-src"
