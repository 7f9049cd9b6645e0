"""Upstream names: wrap's default name, and rules that cannot silently miss the upstream a process serves.

Real processes where it matters: ``mcp-gatekeeper wrap`` in front of the real ``server-filesystem``, reading a
real ``.env``; ``check-config`` and ``doctor`` as a user runs them.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import anyio
import mcp.types as types
import pytest
from harness import ROOT, cli, gatekeeper, gk_env, npm_bin, wrap_params
from mcp import StdioServerParameters

from mcp_gatekeeper.cli import main
from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.names import (
    did_you_mean,
    holding_unreached,
    name_for_command,
    name_for_url,
    targeted_names,
    unreached,
)
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store

pytestmark = pytest.mark.anyio

FILESYSTEM = npm_bin("mcp-server-filesystem")
SECRET = "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI-do-not-leak\n"

FS_RULES = """
[ui]
autostart = false
[[rules]]
name = "no-secrets"
upstream = "fs"
tool = "*"
when = { path = { regex = '(^|/)\\.env$' } }
gate = "deny"
reason = "files holding credentials are off limits"
[[rules]]
name = "reads"
upstream = "fs"
tool = ["read_*", "list_*"]
gate = "allow"
"""


# ---------------------------------------------------------------------------------------------- default names


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["npx", "-y", "@modelcontextprotocol/server-filesystem", "/home/me/work"], "filesystem"),
        (["npx.cmd", "-y", "@modelcontextprotocol/server-everything@2025.1.1"], "everything"),
        (["uvx", "mcp-server-git"], "git"),
        (["/home/me/.venv/bin/mcp-server-time", "--local-timezone=UTC"], "time"),
        (["python3.11", "-m", "mcp_server_time"], "time"),
        (["docker", "run", "-i", "--rm", "mcp/filesystem:latest"], "filesystem"),
        (["github-mcp-server", "stdio"], "github"),
        (["node", "build/index.js"], "index"),
        (["srv"], "srv"),
        (["docker", "run", "-i", "--rm", "-e", "TOKEN=x", "ghcr.io/acme/notes-mcp:1"], "notes"),
        (["uvx", "--from", "mcp-server-git==2025.1", "mcp-server-git"], "git"),
        (["env", "TZ=UTC", "mcp-server-time"], "time"),
        (["./my server!.py"], "my-server"),
    ],
)
def test_wrap_derives_a_predictable_name_from_the_command(command: list[str], name: str) -> None:
    assert name_for_command(command) == name


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://mcp.linear.app/mcp", "linear"),
        ("https://billing.internal.example/mcp", "billing"),
        ("http://127.0.0.1:8080/notes/mcp", "notes"),
        ("http://localhost:3000/sse", "remote"),
    ],
)
def test_wrap_derives_a_name_from_a_url(url: str, name: str) -> None:
    assert name_for_url(url) == name


# ---------------------------------------------------------------------------------------------- the check


def test_an_upstream_no_rule_names_is_found_with_a_suggestion() -> None:
    config = parse_config(FS_RULES)
    (problem,) = unreached(config, ["filesystem"])
    assert (problem.upstream, problem.targeted, problem.suggestion, problem.mode) == (
        "filesystem",
        ("fs",),
        "fs",
        "hold",
    )
    assert "'fs'" in problem.message() and "Did you mean 'fs'?" in problem.message()
    assert unreached(config, ["fs"]) == []


def test_spelling_and_abbreviations_are_suggested_unrelated_names_are_not() -> None:
    assert did_you_mean("gti", ["git", "time"]) == "git"
    assert did_you_mean("filesystem", ["fs"]) == "fs"
    assert did_you_mean("fs", ["filesystem", "billing"]) == "filesystem"
    assert did_you_mean("time", ["billing", "orderdesk"]) is None
    assert did_you_mean("files", ["file*"]) is None  # a glob is not a name to suggest


def test_a_config_shared_by_several_servers_is_not_a_mistake() -> None:
    config = parse_config(
        '[[rules]]\nupstream = "git"\ngate = "allow"\n[[rules]]\nupstream = ["time", "clock"]\ngate = "allow"\n'
    )
    assert targeted_names(config) == ["git", "time", "clock"]
    assert unreached(config, ["git"]) == [] and unreached(config, ["time"]) == []  # rules for others are fine
    assert [p.upstream for p in unreached(config, ["git", "fetch"])] == ["fetch"]


def test_wildcard_rules_name_nothing_and_globs_count_as_names() -> None:
    assert unreached(parse_config('[[rules]]\ntool = "write_*"\ngate = "hard"\n'), ["anything"]) == []
    assert unreached(parse_config('[[rules]]\nupstream = ["*", "x"]\ngate = "hard"\n'), ["y"]) == []
    config = parse_config('[[rules]]\nupstream = "git*"\ngate = "allow"\n')
    assert unreached(config, ["git-work"]) == []
    assert [p.upstream for p in unreached(config, ["Git"])] == ["Git"]  # names are case-sensitive, as rules are
    assert unreached(parse_config(""), ["x"]) == []


def test_hold_mode_holds_what_no_rule_matches_and_keeps_wildcard_denies() -> None:
    """The guard comes last: an unreached upstream's calls that a wildcard rule decides keep that decision (a
    wildcard deny stays a deny), and everything else is held instead of falling to the built-in default."""
    config = parse_config(FS_RULES + '[[rules]]\nname = "never-rm"\ntool = "delete_*"\ngate = "deny"\nreason = "no"\n')
    guarded = Policy(holding_unreached(config, unreached(config, ["filesystem"])))
    read_env = guarded.evaluate("filesystem", "read_text_file", {"path": "/w/.env"}, None)
    assert (read_env.action, read_env.rule) == ("hold", "unmatched-upstream")
    assert Policy(config).evaluate("filesystem", "read_text_file", {"path": "/w/.env"}, None).action == "allow"
    assert guarded.evaluate("filesystem", "delete_file", {}, None).action == "deny"
    assert guarded.evaluate("fs", "read_text_file", {"path": "/w/.env"}, None).action == "deny"  # fs untouched


def test_warn_mode_changes_nothing_but_is_still_reported() -> None:
    config = parse_config(FS_RULES + '[security]\nunmatched_upstream = "warn"\n')
    problems = unreached(config, ["filesystem"])
    assert [p.mode for p in problems] == ["warn"] and "built-in default policy" in problems[0].message()
    assert holding_unreached(config, problems) is config


def test_unmatched_upstream_accepts_only_hold_or_warn() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config('[security]\nunmatched_upstream = "allow"\n')
    assert any("security.unmatched_upstream" in p for p in e.value.problems)


# ---------------------------------------------------------------------------------------------- check-config


def test_check_config_with_a_name_no_rule_uses_exits_1_naming_the_rules_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(FS_RULES)
    assert main(["check-config", "--config", str(cfg), "--name", "filesystem"]) == 1
    err = capsys.readouterr().err
    assert "upstream 'filesystem' matches none of the rules' upstream names ('fs')" in err
    assert "Did you mean 'fs'?" in err
    assert main(["check-config", "--config", str(cfg), "--name", "fs"]) == 0
    assert main(["check-config", "--config", str(cfg), "--name", "fs", "--name", "gti"]) == 1
    assert "'gti'" in capsys.readouterr().err


def test_check_config_without_a_name_checks_the_upstreams_run_would_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text('[upstreams.git]\ncommand = "uvx"\n[[rules]]\nupstream = "gti"\ntool = "git_*"\ngate = "allow"\n')
    assert main(["check-config", "--config", str(cfg)]) == 1
    assert "Did you mean 'gti'?" in capsys.readouterr().err


def test_explain_shows_what_a_process_serving_that_name_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(FS_RULES)
    env = json.dumps({"path": "/w/.env"})
    assert main(["explain", "--config", str(cfg), "--upstream", "filesystem", "read_text_file", "--args", env]) == 0
    out = capsys.readouterr().out
    assert out.startswith("note: upstream 'filesystem' matches none of the rules' upstream names ('fs')")
    assert "filesystem/read_text_file -> HOLD" in out and "rule: unmatched-upstream" in out
    assert main(["explain", "--config", str(cfg), "--upstream", "fs", "read_text_file", "--args", env, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["action"], shown["rule"], shown["problems"]) == ("deny", "no-secrets", [])


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.toml")), ids=lambda p: p.name)
def test_the_shipped_configs_use_the_names_their_servers_are_started_with(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--config", str(path)]) == 0, capsys.readouterr().err
    text = path.read_text()
    started = re.search(r"--name (\S+)", text)
    if started:  # the command line in the file's comment
        assert main(["check-config", "--config", str(path), "--name", started.group(1)]) == 0


def test_the_readme_snippet_and_the_filesystem_example_agree() -> None:
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r'"args": \["wrap", "--name", "([^"]+)"', readme)
    assert snippet is not None
    assert targeted_names(parse_config((ROOT / "config" / "filesystem.toml").read_text())) == [snippet.group(1)]


# ---------------------------------------------------------------------------------------------- real wrap

WARNING = re.compile(r"WARNING: upstream '([^']+)' matches none of the rules' upstream names \('fs'\)")
needs_fs = pytest.mark.skipif(FILESYSTEM is None, reason="node or @modelcontextprotocol/server-filesystem missing")


def _workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text(SECRET)
    (work / "hello.txt").write_text("hello\n")
    return work


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.npm
@needs_fs
async def test_with_the_rules_name_the_env_file_is_denied(home: Path, tmp_path: Path) -> None:
    """The control: started as the rules say (``--name fs``), no warning, and ``.env`` is refused."""
    work = _workdir(tmp_path)
    cfg = tmp_path / "gk.toml"
    cfg.write_text(FS_RULES)
    assert FILESYSTEM is not None
    with anyio.fail_after(60):
        async with gatekeeper(wrap_params(home, cfg, "fs", [FILESYSTEM, str(work)])) as (client, watcher):
            denied = await client.call_tool("read_text_file", {"path": str(work / ".env")})
            hello = await client.call_tool("read_text_file", {"path": str(work / "hello.txt")})
    assert denied.is_error and SECRET.strip() not in _text(denied)
    assert "hello" in _text(hello)
    assert not any("WARNING" in line for line in watcher.lines)


@pytest.mark.npm
@needs_fs
@pytest.mark.parametrize("name", ["filesystem", None], ids=["--name filesystem", "no --name"])
async def test_a_mismatched_name_is_loud_and_the_env_file_is_held_not_read(
    home: Path, tmp_path: Path, name: str | None
) -> None:
    """Started as the README's client snippet starts it (``--name filesystem``), or with no ``--name`` (the name
    then comes from the command: ``mcp-server-filesystem`` → ``filesystem``), under rules for ``fs``: a warning on
    stderr, the problem in the store for the page, and ``.env`` is held for a human instead of read."""
    work = _workdir(tmp_path)
    cfg = tmp_path / "gk.toml"
    cfg.write_text(FS_RULES)
    assert FILESYSTEM is not None
    if name is not None:
        params = wrap_params(home, cfg, name, [FILESYSTEM, str(work)])
    else:
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "mcp_gatekeeper", "wrap", "--config", str(cfg), "--", FILESYSTEM, str(work)],
            env=gk_env(home),
            cwd=str(ROOT),
        )
    results: list[types.CallToolResult] = []
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, watcher):
            warned = await watcher.wait_for(WARNING)
            assert warned.group(1) == "filesystem"

            async def read_env() -> None:
                results.append(await client.call_tool("read_text_file", {"path": str(work / ".env")}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_env)
                held = await watcher.held()  # not read: held for a human
                _, out, _ = await cli(home, "show", held, "--json")
                shown = json.loads(out)
                assert (shown["upstream"], shown["rule"], shown["state"]) == (
                    "filesystem",
                    "unmatched-upstream",
                    "pending",
                )
                await cli(home, "reject", held, "--reason", "fix the name")
            _, audit, _ = await cli(home, "audit", "--json")
    assert results[0].is_error and SECRET.strip() not in _text(results[0])
    (noted,) = [e for e in json.loads(audit) if e["event"] == "config_problem"]
    assert noted["detail"]["upstream"] == "filesystem" and noted["detail"]["suggestion"] == "fs"
    assert "Did you mean 'fs'?" in "".join(watcher.lines)


@pytest.mark.npm
@needs_fs
async def test_warn_mode_says_so_and_lets_the_default_policy_decide(home: Path, tmp_path: Path) -> None:
    """``unmatched_upstream = "warn"``: the default policy decides (a read passes) but never silently."""
    work = _workdir(tmp_path)
    cfg = tmp_path / "gk.toml"
    cfg.write_text(FS_RULES + '[security]\nunmatched_upstream = "warn"\n')
    assert FILESYSTEM is not None
    with anyio.fail_after(60):
        async with gatekeeper(wrap_params(home, cfg, "filesystem", [FILESYSTEM, str(work)])) as (client, watcher):
            await watcher.wait_for(WARNING)
            read = await client.call_tool("read_text_file", {"path": str(work / "hello.txt")})
    assert "hello" in _text(read)
    assert any("built-in default policy" in line for line in watcher.lines)


# ---------------------------------------------------------------------------------------------- doctor


async def test_doctor_lists_a_gated_server_whose_name_no_rule_uses(tmp_path: Path) -> None:
    home_dir = tmp_path / "home"
    claude = home_dir / ".config" / "Claude"
    claude.mkdir(parents=True)
    cfg = tmp_path / "gk.toml"
    cfg.write_text(FS_RULES)
    servers = {
        "filesystem": {
            "command": "/opt/mcp-gatekeeper",
            "args": ["wrap", "--config", str(cfg), "--name", "filesystem", "--", "npx", "-y", "x", "/w"],
        },
        "fs": {"command": "/opt/mcp-gatekeeper", "args": ["wrap", "--config", str(cfg), "--name", "fs", "--", "srv"]},
        "derived": {
            "command": "/opt/mcp-gatekeeper",
            "args": ["wrap", "--config", str(cfg), "--", "uvx", "mcp-server-git"],
        },
    }
    (claude / "claude_desktop_config.json").write_text(json.dumps({"mcpServers": servers}))
    gk_home = tmp_path / "gk-home"
    env = gk_env(gk_home, HOME=str(home_dir), XDG_CONFIG_HOME=str(home_dir / ".config"))
    argv = [sys.executable, "-m", "mcp_gatekeeper", "doctor", "--config", str(cfg), "--project", str(tmp_path)]
    (running,) = unreached(parse_config(FS_RULES), ["files"])
    with anyio.fail_after(60):
        async with Store.open(gk_home / "gatekeeper.db", SystemClock()) as store:  # a gatekeeper that is running
            await store.register_instance("wrap files")
            await store.note_problem(running.to_json())
            proc = await anyio.run_process(argv, env=env, check=False, cwd=str(ROOT))
    out = proc.stdout.decode()
    assert proc.returncode == 1, out
    fails = [line for line in out.splitlines() if line.startswith("client claude-desktop") and "FAIL" in line]
    assert len(fails) == 2, out
    assert "server 'filesystem' (served as 'filesystem')" in fails[0] and "Did you mean 'fs'?" in fails[0]
    assert "server 'derived' (served as 'git')" in fails[1] and "('fs')" in fails[1]
    (live,) = [line for line in out.splitlines() if line.startswith("running gatekeeper")]
    assert "FAIL" in live and "upstream 'files' matches none" in live
