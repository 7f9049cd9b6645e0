"""Install into / uninstall from MCP client config files: golden files, edge cases, one real client run."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import shutil
import stat
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.install import (
    CLIENTS,
    ServerStatus,
    add_arguments,
    find_config_files,
    inspect_servers,
    install,
    uninstall,
)

GOLDEN = Path(__file__).parent / "golden" / "install"
BACKUP_NAME = re.compile(r"\.gatekeeper-backup-\d{8}T\d{6}Z(-\d+)?$")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="paths below are the macOS/Linux ones")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HOME and gatekeeper home, so nothing real is read or written."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MCP_GATEKEEPER_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no upstream command resolves: entries keep them as written
    return home


@pytest.fixture
def record_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "installs.json"


@pytest.fixture
def exe(tmp_path: Path) -> str:
    """Stands in for the installed gatekeeper executable (install checks that it exists)."""
    path = tmp_path / "bin" / "mcp-gatekeeper"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def _app_dir(home: Path) -> Path:
    return home / "Library" / "Application Support" if sys.platform == "darwin" else home / ".config"


def _desktop_config(home: Path) -> Path:
    return _app_dir(home) / "Claude" / "claude_desktop_config.json"


def _place(case: str, home: Path) -> tuple[str, Path, Path | None]:
    """(client, the file's default location, project) for a golden case."""
    project = home / "proj"
    return {
        "claude-desktop": ("claude-desktop", _desktop_config(home), None),
        "claude-code": ("claude-code", project / ".mcp.json", project),
        "claude-code-user": ("claude-code", home / ".claude.json", None),
        "cursor": ("cursor", home / ".cursor" / "mcp.json", None),
        "vscode": ("vscode", project / ".vscode" / "mcp.json", project),
    }[case]


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _backups(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name + ".gatekeeper-backup-"))


def _run(fn: object, *args: object, **kwargs: object) -> tuple[int, str]:
    out = io.StringIO()
    code = fn(*args, out=out, **kwargs)  # type: ignore[operator]
    return code, out.getvalue()


# --------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("case", ["claude-desktop", "claude-code", "claude-code-user", "cursor", "vscode"])
def test_golden_install_twice_then_uninstall(case: str, home: Path, exe: str, record_file: Path) -> None:
    client, path, project = _place(case, home)
    original = (GOLDEN / case / "input.json").read_bytes()
    expected = (GOLDEN / case / "expected.json").read_bytes().replace(b"@EXE@", exe.encode())
    _write(path, original)

    code, output = _run(install, client, executable=exe, project=project)
    assert code == 0, output
    assert path.read_bytes() == expected
    if client in ("claude-desktop", "claude-code"):  # strict JSON clients get strict JSON
        json.loads(expected)
    backups = _backups(path)
    assert len(backups) == 1
    assert BACKUP_NAME.search(backups[0].name)
    assert backups[0].read_bytes() == original
    assert record_file.is_file()

    code, output = _run(install, client, executable=exe, project=project)
    assert code == 1
    assert path.read_bytes() == expected
    assert "already gated" in output
    assert len(_backups(path)) == 1  # nothing written, so nothing backed up

    code, output = _run(uninstall, client, project=project)
    assert code == 0, output
    assert path.read_bytes() == original
    assert json.loads(record_file.read_text())["files"] == {}


def test_golden_entries_run_the_gatekeeper_with_the_original_command(home: Path, exe: str) -> None:
    client, path, project = _place("claude-code", home)
    _write(path, (GOLDEN / "claude-code" / "input.json").read_bytes())
    assert _run(install, client, executable=exe, project=project)[0] == 0
    servers = json.loads(path.read_text())["mcpServers"]
    assert servers["db"] == {
        "type": "stdio",
        "command": exe,
        "args": [
            "wrap",
            "--name",
            "db",
            "--",
            "${HOME}/bin/db-server",
            "--dsn",
            "${DATABASE_URL:-postgres://localhost/dev}",
        ],
        "env": {"TOKEN": "${DB_TOKEN}"},
    }
    assert servers["linear"] == {
        "type": "stdio",
        "command": exe,
        "args": [
            "wrap", "--name", "linear", "--url", "https://mcp.linear.app/mcp",
            "--header-env", "Authorization=MCP_GATEKEEPER_HEADER_AUTHORIZATION",
            "--header-env", "X-Team=MCP_GATEKEEPER_HEADER_X_TEAM",
        ],
        "env": {"MCP_GATEKEEPER_HEADER_AUTHORIZATION": "Bearer ${LINEAR_TOKEN}", "MCP_GATEKEEPER_HEADER_X_TEAM": "core"},
    }  # fmt: skip
    assert servers["events"]["args"] == [
        "wrap", "--name", "events", "--url", "https://example.com/events/sse", "--transport", "sse",
    ]  # fmt: skip


# --------------------------------------------------------------------------- JSONC (VS Code)


def test_vscode_comments_inputs_and_input_variables_survive(home: Path, exe: str) -> None:
    client, path, project = _place("vscode", home)
    original = (GOLDEN / "vscode" / "input.json").read_text()
    _write(path, original)
    assert _run(install, client, executable=exe, project=project)[0] == 0
    after = path.read_text()
    inputs_block = original[original.index('\t"inputs"') : original.index('\t"servers"')]
    assert inputs_block in after
    for comment in (
        "// VS Code MCP servers for this workspace",
        "// shown in the prompt",
        "/* the time server, run from the workspace */",
        "// a trailing comma follows the last server",
    ):
        assert after.count(comment) == 1
    assert '"env": {"API_KEY": "${input:api_key}"}' in after
    assert '"MCP_GATEKEEPER_HEADER_AUTHORIZATION": "Bearer ${input:api_key}"' in after
    assert '"cwd": "${workspaceFolder}"' in after


def test_vscode_comment_in_a_part_that_must_change_is_refused(home: Path, exe: str, record_file: Path) -> None:
    text = (
        "{\n"
        '  "servers": {\n'
        '    "time": {\n'
        '      "type": "stdio",\n'
        '      "command": "uvx",\n'
        '      "args": [\n'
        '        "mcp-server-time" // the package\n'
        "      ]\n"
        "    }\n"
        "  }\n"
        "}\n"
    )
    path = _write(home / "proj" / ".vscode" / "mcp.json", text)
    code, output = _run(install, "vscode", executable=exe, project=home / "proj")
    assert code == 2
    assert "line 7" in output
    assert path.read_text() == text
    assert _backups(path) == []
    assert not record_file.exists()


def test_vscode_comment_inside_an_entry_but_outside_the_change_is_kept(home: Path, exe: str) -> None:
    text = (
        "{\n"
        '  "servers": {\n'
        '    "time": {\n'
        "      // started by uvx\n"
        '      "type": "stdio",\n'
        '      "command": "uvx", /* from PyPI */\n'
        '      "args": ["mcp-server-time"],\n'
        '      "env": {"TZ": "UTC"} // keep\n'
        "    },\n"
        "  }\n"
        "}"
    )
    path = _write(home / "proj" / ".vscode" / "mcp.json", text)
    assert _run(install, "vscode", executable=exe, project=home / "proj")[0] == 0
    after = path.read_text()
    assert after == text.replace('"uvx", /*', f'"{exe}", /*').replace(
        '["mcp-server-time"]', '["wrap", "--name", "time", "--", "uvx", "mcp-server-time"]'
    )
    assert _run(uninstall, "vscode", project=home / "proj")[0] == 0
    assert path.read_text() == text


# --------------------------------------------------------------------------- entries of every kind


def test_entry_already_wrapped_is_left_alone(home: Path, exe: str) -> None:
    text = json.dumps(
        {"mcpServers": {"time": {"command": exe, "args": ["wrap", "--name", "time", "--", "uvx", "x"]}}}, indent=2
    )
    path = _write(_desktop_config(home), text)
    code, output = _run(install, "claude-desktop", executable=exe)
    assert code == 1
    assert "already gated" in output
    assert path.read_text() == text
    assert _backups(path) == []


def test_entry_behind_another_tool_is_wrapped_with_a_note(home: Path, exe: str) -> None:
    entry = {"command": "mcp-proxy", "args": ["--sse-port", "8080", "uvx", "srv"], "zz": {"kept": True}}
    path = _write(_desktop_config(home), json.dumps({"mcpServers": {"p": entry}}, indent=2))
    code, output = _run(install, "claude-desktop", executable=exe)
    assert code == 0
    assert "another tool (mcp-proxy)" in output
    assert json.loads(path.read_text())["mcpServers"]["p"] == {
        "command": exe,
        "args": ["wrap", "--name", "p", "--", "mcp-proxy", "--sse-port", "8080", "uvx", "srv"],
        "zz": {"kept": True},
    }


def test_remote_entry_with_headers(home: Path, exe: str) -> None:
    path = _write(
        home / ".cursor" / "mcp.json",
        '{"mcpServers": {"r": {"url": "https://h.example/mcp", "headers": {"X-Key": "k"}, "timeout": 5}}}\n',
    )
    assert _run(install, "cursor", executable=exe)[0] == 0
    assert path.read_text() == (
        f'{{"mcpServers": {{"r": {{"command": "{exe}", "args": ["wrap", "--name", "r", "--url", '
        '"https://h.example/mcp", "--header-env", "X-Key=MCP_GATEKEEPER_HEADER_X_KEY"], '
        '"env": {"MCP_GATEKEEPER_HEADER_X_KEY": "k"}, "timeout": 5}}}\n'
    )
    [status] = inspect_servers(path)
    assert status == ServerStatus(
        name="r",
        gated=True,
        transport="http",
        command=exe,
        url="https://h.example/mcp",
        exe_exists=True,
        location=("mcpServers", "r"),
        served_as="r",  # the name rules must use: install writes the server's key as --name
    )


def test_unknown_keys_and_their_order_are_kept(home: Path, exe: str) -> None:
    doc = {
        "zeta": 1,
        "mcpServers": {"s": {"disabled": False, "command": "srv", "timeout": 2.5e3, "args": ["a"], "x": [None]}},
        "alpha": {"nested": [1, 2]},
    }
    path = _write(_desktop_config(home), json.dumps(doc, indent=4))
    assert _run(install, "claude-desktop", executable=exe)[0] == 0
    after = json.loads(path.read_text())
    assert list(after) == ["zeta", "mcpServers", "alpha"]
    assert after["alpha"] == {"nested": [1, 2]}
    entry = after["mcpServers"]["s"]
    assert list(entry) == ["disabled", "command", "timeout", "args", "x"]
    assert entry["args"] == ["wrap", "--name", "s", "--", "srv", "a"]
    assert (entry["disabled"], entry["timeout"], entry["x"]) == (False, 2500.0, [None])


def test_only_wraps_just_the_named_servers_and_uninstall_still_restores_bytes(home: Path, exe: str) -> None:
    original = (GOLDEN / "claude-desktop" / "input.json").read_bytes()
    path = _write(_desktop_config(home), original)
    assert _run(install, "claude-desktop", executable=exe, only=["noargs"])[0] == 0
    servers = json.loads(path.read_text())["mcpServers"]
    assert servers["time"]["command"] == "python3"
    assert servers["noargs"]["command"] == exe
    assert _run(install, "claude-desktop", executable=exe, only=["time"])[0] == 0
    assert path.read_bytes() == (GOLDEN / "claude-desktop" / "expected.json").read_bytes().replace(
        b"@EXE@", exe.encode()
    )
    assert _run(uninstall, "claude-desktop", only=["time"])[0] == 0
    assert json.loads(path.read_text())["mcpServers"]["time"]["command"] == "python3"
    assert json.loads(path.read_text())["mcpServers"]["noargs"]["command"] == exe
    assert _run(uninstall, "claude-desktop")[0] == 0
    assert path.read_bytes() == original


def test_only_with_an_unknown_name_writes_nothing(home: Path, exe: str) -> None:
    original = (GOLDEN / "claude-desktop" / "input.json").read_bytes()
    path = _write(_desktop_config(home), original)
    code, output = _run(install, "claude-desktop", executable=exe, only=["time", "tmie"])
    assert code == 1
    assert "'tmie'" in output
    assert path.read_bytes() == original


# --------------------------------------------------------------------------- dry run, errors, files


def test_dry_run_prints_the_diff_and_writes_nothing(home: Path, exe: str, record_file: Path) -> None:
    original = (GOLDEN / "cursor" / "input.json").read_bytes()
    path = _write(home / ".cursor" / "mcp.json", original)
    code, output = _run(install, "cursor", executable=exe, dry_run=True)
    assert code == 0
    assert f'+            "command": "{exe}",' in output.splitlines()
    assert path.read_bytes() == original
    assert _backups(path) == []
    assert not record_file.exists()

    assert _run(install, "cursor", executable=exe)[0] == 0
    installed = path.read_bytes()
    code, output = _run(uninstall, "cursor", dry_run=True)
    assert code == 0
    assert '-        "browser": {"command": ' in output
    assert path.read_bytes() == installed
    assert len(_backups(path)) == 1


def test_invalid_json_names_file_line_and_column_and_writes_nothing(home: Path, exe: str, record_file: Path) -> None:
    text = '{\n  "mcpServers": {\n    "a": {"command": "x" "args": []}\n  }\n}\n'
    path = _write(_desktop_config(home), text)
    code, output = _run(install, "claude-desktop", executable=exe)
    assert code == 2
    column = text.splitlines()[2].index('"args"') + 1
    assert str(path) in output
    assert f"line 3, column {column}" in output
    assert path.read_text() == text
    assert _backups(path) == []
    assert not record_file.exists()
    assert _run(uninstall, "claude-desktop")[0] == 2
    with pytest.raises(ConfigError) as info:
        inspect_servers(path)
    assert info.value.source == str(path)


def test_comments_are_invalid_in_a_strict_json_client_file(home: Path, exe: str) -> None:
    text = '{\n  // mine\n  "mcpServers": {}\n}\n'
    path = _write(_desktop_config(home), text)
    code, output = _run(install, "claude-desktop", executable=exe)
    assert code == 2
    assert "line 2, column 3" in output
    assert path.read_text() == text


def test_missing_file_is_named_and_nothing_is_created(home: Path, exe: str) -> None:
    code, output = _run(install, "cursor", executable=exe)
    assert code == 1
    assert str(home / ".cursor" / "mcp.json") in output
    assert not (home / ".cursor").exists()
    assert _run(uninstall, "cursor")[0] == 1


def test_config_path_overrides_the_default_location(home: Path, exe: str, tmp_path: Path) -> None:
    path = _write(tmp_path / "elsewhere.json", '{"mcpServers": {"a": {"command": "srv"}}}')
    assert _run(install, "claude-desktop", executable=exe, config_path=path)[0] == 0
    assert json.loads(path.read_text())["mcpServers"]["a"]["command"] == exe
    assert not _desktop_config(home).exists()


def test_file_mode_is_preserved_and_the_record_is_private(home: Path, exe: str, record_file: Path) -> None:
    path = _write(_desktop_config(home), '{"mcpServers": {"a": {"command": "srv", "env": {"KEY": "secret"}}}}')
    path.chmod(0o640)
    assert _run(install, "claude-desktop", executable=exe)[0] == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(_backups(path)[0].stat().st_mode) == 0o640
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_symlinked_config_stays_a_symlink(home: Path, exe: str, tmp_path: Path) -> None:
    original = b'{"mcpServers": {"a": {"command": "srv"}}}\n'
    target = _write(tmp_path / "dotfiles" / "claude.json", original)
    link = _desktop_config(home)
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    assert _run(install, "claude-desktop", executable=exe)[0] == 0
    assert link.is_symlink()
    assert json.loads(target.read_text())["mcpServers"]["a"]["command"] == exe
    assert _run(uninstall, "claude-desktop")[0] == 0
    assert target.read_bytes() == original


def test_crlf_file_keeps_crlf(home: Path, exe: str) -> None:
    original = b'{\r\n  "mcpServers": {\r\n    "a": {\r\n      "url": "https://x.example/mcp"\r\n    }\r\n  }\r\n}\r\n'
    path = _write(_desktop_config(home), original)
    assert _run(install, "claude-desktop", executable=exe)[0] == 0
    after = path.read_bytes()
    assert re.search(rb"(?<!\r)\n", after) is None
    assert json.loads(after)["mcpServers"]["a"]["args"] == ["wrap", "--name", "a", "--url", "https://x.example/mcp"]
    assert _run(uninstall, "claude-desktop")[0] == 0
    assert path.read_bytes() == original


def test_a_bare_executable_name_is_written_as_an_absolute_path(
    home: Path, exe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(Path(exe).parent))
    path = _write(_desktop_config(home), '{"mcpServers": {"a": {"command": "srv"}}}')
    assert _run(install, "claude-desktop", executable="mcp-gatekeeper")[0] == 0
    assert json.loads(path.read_text())["mcpServers"]["a"]["command"] == exe


def test_upstream_commands_are_written_as_absolute_paths(
    home: Path, exe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients start servers with their own PATH (Claude Desktop on macOS: a short one): a command found now
    is written absolute, with a note; one not found, or written with a placeholder or a path, stays as is."""
    nodebin = tmp_path / "nodebin"
    nodebin.mkdir()
    npx = nodebin / "npx"
    npx.write_text("#!/bin/sh\nexit 0\n")
    npx.chmod(0o755)
    monkeypatch.setenv("PATH", str(nodebin))
    servers = {
        "fs": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/w"]},
        "gone": {"command": "not-installed"},
        "var": {"command": "${HOME}/bin/npx"},
        "rel": {"command": "./npx"},
    }
    path = _write(_desktop_config(home), json.dumps({"mcpServers": servers}))
    code, output = _run(install, "claude-desktop", executable=exe)
    assert code == 0, output
    got = json.loads(path.read_text())["mcpServers"]
    assert got["fs"]["args"] == [
        "wrap",
        "--name",
        "fs",
        "--",
        str(npx),
        "-y",
        "@modelcontextprotocol/server-filesystem",
        "/w",
    ]
    assert got["gone"]["args"] == ["wrap", "--name", "gone", "--", "not-installed"]
    assert got["var"]["args"][-1] == "${HOME}/bin/npx" and got["rel"]["args"][-1] == "./npx"
    assert f"'npx' is written as {npx}" in output and "'not-installed' is not on this PATH" in output
    # uninstall gives back exactly what the user wrote, bare names included
    assert _run(uninstall, "claude-desktop")[0] == 0
    assert json.loads(path.read_text())["mcpServers"] == servers


def test_on_windows_npx_becomes_npx_cmd_and_a_planted_one_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_gatekeeper import hostos
    from mcp_gatekeeper.install import _wrap

    nodejs, project = tmp_path / "nodejs", tmp_path / "project"
    for folder in (nodejs, project):
        folder.mkdir()
        (folder / "npx.cmd").write_text("@echo off\n")
    (nodejs / "npx").write_text("#!/bin/sh\n")  # npm's sh script: not runnable on Windows
    monkeypatch.chdir(project)  # cmd.exe would find .\npx.cmd first

    def resolve(command: str) -> str | None:
        return hostos.resolve_command(command, platform="win32", path=str(nodejs), pathext=".EXE;.CMD")

    wrapped = _wrap("fs", {"command": "npx", "args": ["-y", "pkg"]}, "C:/gk/mcp-gatekeeper.exe", resolve)
    assert not isinstance(wrapped, str)
    assert wrapped.entry == {
        "command": "C:/gk/mcp-gatekeeper.exe",
        "args": ["wrap", "--name", "fs", "--", str(nodejs / "npx.cmd"), "-y", "pkg"],
    }


def test_remote_entry_whose_removed_keys_come_first(home: Path, exe: str) -> None:
    text = (
        "{\n"
        '  "mcpServers": {\n'
        '    "r": {\n'
        '      "url": "https://r.example/mcp",\n'
        '      "headers": {"A": "1"},\n'
        '      "type": "http",\n'
        '      "timeout": 30\n'
        "    }\n"
        "  }\n"
        "}\n"
    )
    path = _write(home / "proj" / ".mcp.json", text)
    assert _run(install, "claude-code", executable=exe, project=home / "proj")[0] == 0
    assert path.read_text() == (
        "{\n"
        '  "mcpServers": {\n'
        '    "r": {\n'
        f'      "command": "{exe}",\n'
        '      "args": [\n'
        '        "wrap",\n'
        '        "--name",\n'
        '        "r",\n'
        '        "--url",\n'
        '        "https://r.example/mcp",\n'
        '        "--header-env",\n'
        '        "A=MCP_GATEKEEPER_HEADER_A"\n'
        "      ],\n"
        '      "env": {\n'
        '        "MCP_GATEKEEPER_HEADER_A": "1"\n'
        "      },\n"
        '      "type": "stdio",\n'
        '      "timeout": 30\n'
        "    }\n"
        "  }\n"
        "}\n"
    )
    assert _run(uninstall, "claude-code", project=home / "proj")[0] == 0
    assert path.read_text() == text


def test_indentation_is_the_common_step_not_an_odd_line(home: Path, exe: str) -> None:
    text = '{\n  "mcpServers": {\n    "a": {\n      "command": "srv",\n       "cwd": "/w"\n    }\n  }\n}\n'
    path = _write(_desktop_config(home), text)
    assert _run(install, "claude-desktop", executable=exe)[0] == 0
    assert '      "args": [\n        "wrap",\n' in path.read_text()


def test_invalid_server_maps_are_named(home: Path, exe: str) -> None:
    path = _write(_desktop_config(home), '{"mcpServers": {"a": {"command": "x"}, "a": {"command": "y"}}}')
    code, output = _run(install, "claude-desktop", executable=exe)
    assert code == 2
    assert "names server 'a' twice" in output
    path.write_text('{"mcpServers": []}')
    code, output = _run(install, "claude-desktop", executable=exe)
    assert code == 2
    assert "'mcpServers' is not an object" in output
    assert path.read_text() == '{"mcpServers": []}'


@pytest.mark.parametrize("xdg", [True, False])
def test_record_lives_in_the_gatekeeper_home(
    home: Path, exe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xdg: bool
) -> None:
    monkeypatch.delenv("MCP_GATEKEEPER_HOME")
    if xdg:
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    else:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    _write(_desktop_config(home), '{"mcpServers": {"a": {"command": "srv"}}}')
    assert _run(install, "claude-desktop", executable=exe)[0] == 0
    state = tmp_path / "xdg-state" if xdg else home / ".local" / "state"
    record = json.loads((state / "mcp-gatekeeper" / "installs.json").read_text())
    [entries] = [f["entries"] for f in record["files"].values()]
    assert [e["original"] for e in entries.values()] == ['{"command": "srv"}']


# --------------------------------------------------------------------------- uninstall after other edits


def test_uninstall_after_other_edits_restores_only_our_entries(home: Path, exe: str) -> None:
    original = (GOLDEN / "claude-desktop" / "input.json").read_text()
    path = _write(_desktop_config(home), original)
    assert _run(install, "claude-desktop", executable=exe)[0] == 0
    path.write_text(path.read_text().replace('"Ctrl+Space"', '"Alt+Space"'))
    code, output = _run(uninstall, "claude-desktop")
    assert code == 0
    assert "changed since install" in output
    assert path.read_text() == original.replace('"Ctrl+Space"', '"Alt+Space"')


def test_uninstall_after_the_client_reformatted_the_file(home: Path, exe: str) -> None:
    original = (GOLDEN / "claude-desktop" / "input.json").read_text()
    path = _write(_desktop_config(home), original)
    assert _run(install, "claude-desktop", executable=exe)[0] == 0
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4, ensure_ascii=False))
    assert _run(uninstall, "claude-desktop")[0] == 0
    after = path.read_text()
    assert json.loads(after) == json.loads(original)
    assert after == json.dumps(json.loads(original), indent=4, ensure_ascii=False)


def test_uninstall_keeps_later_edits_to_a_wrapped_entry(home: Path, exe: str) -> None:
    path = _write(
        _desktop_config(home),
        '{\n  "mcpServers": {\n    "a": {\n      "command": "srv",\n      "env": {}\n    }\n  }\n}\n',
    )
    assert _run(install, "claude-desktop", executable=exe)[0] == 0
    path.write_text(path.read_text().replace('"env": {}', '"env": {"TOKEN": "t"}'))
    assert _run(uninstall, "claude-desktop")[0] == 0
    assert json.loads(path.read_text()) == {"mcpServers": {"a": {"command": "srv", "env": {"TOKEN": "t"}}}}


def test_uninstall_without_a_record_rebuilds_stdio_entries_from_the_command_line(
    home: Path, exe: str, record_file: Path
) -> None:
    path = _write(_desktop_config(home), '{"mcpServers": {"a": {"command": "srv", "args": ["-v"], "cwd": "/w"}}}')
    assert _run(install, "claude-desktop", executable=exe)[0] == 0
    record_file.unlink()
    code, output = _run(uninstall, "claude-desktop")
    assert code == 0, output
    assert json.loads(path.read_text()) == {"mcpServers": {"a": {"command": "srv", "args": ["-v"], "cwd": "/w"}}}


def test_uninstall_when_not_installed_changes_nothing(home: Path) -> None:
    original = (GOLDEN / "cursor" / "input.json").read_bytes()
    path = _write(home / ".cursor" / "mcp.json", original)
    code, output = _run(uninstall, "cursor")
    assert code == 1
    assert "not installed" in output
    assert path.read_bytes() == original


# --------------------------------------------------------------------------- messages, doctor, argparse


def test_messages_name_the_client_to_restart_and_claude_code_commands(home: Path, exe: str) -> None:
    client, path, project = _place("claude-code", home)
    _write(path, (GOLDEN / "claude-code" / "input.json").read_bytes())
    code, output = _run(install, client, executable=exe, project=project)
    assert code == 0
    lines = output.splitlines()
    assert lines[-1] == "Restart Claude Code to apply."
    expected = shlex.join(
        ["claude", "mcp", "add", "db", "--scope", "project", "-e", "TOKEN=${DB_TOKEN}", "--", exe, "wrap",
         "--name", "db", "--", "${HOME}/bin/db-server", "--dsn", "${DATABASE_URL:-postgres://localhost/dev}"]
    )  # fmt: skip
    assert f"  {expected}" in lines

    _write(_desktop_config(home), '{"mcpServers": {"a": {"command": "srv"}}}')
    assert _run(install, "claude-desktop", executable=exe)[1].splitlines()[-1] == "Restart Claude Desktop to apply."


def test_find_config_files_lists_existing_files_project_first(home: Path) -> None:
    project = home / "proj"
    assert find_config_files("cursor", project=project) == []
    user = _write(home / ".cursor" / "mcp.json", "{}")
    assert find_config_files("cursor", project=project) == [user]
    local = _write(project / ".cursor" / "mcp.json", "{}")
    assert find_config_files("cursor", project=project) == [local, user]
    assert find_config_files("cursor") == [user]
    vscode_user = _write(_app_dir(home) / "Code" / "User" / "mcp.json", "{}")
    assert find_config_files("vscode") == [vscode_user]
    claude_user = _write(home / ".claude.json", "{}")
    assert find_config_files("claude-code", project=project) == [claude_user]


def test_inspect_servers_tells_gated_from_direct(home: Path, exe: str) -> None:
    path = _write(
        home / ".claude.json",
        json.dumps(
            {
                "mcpServers": {
                    "gated": {"command": exe, "args": ["wrap", "--name", "gated", "--", "srv"]},
                    "direct": {"command": "no-such-command-here", "args": []},
                    "remote": {"type": "sse", "url": "https://r.example/sse"},
                },
                "projects": {"/p": {"mcpServers": {"gated": {"command": "/nope/mcp-gatekeeper", "args": ["wrap"]}}}},
            }
        ),
    )
    assert inspect_servers(path) == [
        ServerStatus("gated", True, "stdio", exe, None, True, ("mcpServers", "gated"), served_as="gated"),
        ServerStatus("direct", False, "stdio", "no-such-command-here", None, False, ("mcpServers", "direct")),
        ServerStatus("remote", False, "sse", None, "https://r.example/sse", None, ("mcpServers", "remote")),
        ServerStatus(
            "gated", True, "stdio", "/nope/mcp-gatekeeper", None, False, ("projects", "/p", "mcpServers", "gated")
        ),
    ]


def test_add_arguments() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["cursor", "--only", "a", "b", "--dry-run", "--config-path", "x.json", "--project", "p"])
    assert (args.client, args.only, args.dry_run, args.config_path, args.project) == (
        "cursor",
        ["a", "b"],
        True,
        Path("x.json"),
        Path("p"),
    )
    defaults = parser.parse_args(["vscode"])
    assert (defaults.only, defaults.dry_run, defaults.config_path, defaults.project) == (None, False, None, None)
    assert CLIENTS == ("claude-desktop", "claude-code", "cursor", "vscode")
    with pytest.raises(SystemExit):
        parser.parse_args(["windsurf"])


# --------------------------------------------------------------------------- end to end


def _gatekeeper_executable() -> str | None:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("mcp-gatekeeper", path=search)


@pytest.mark.anyio
async def test_end_to_end_a_client_runs_the_installed_entry(home: Path) -> None:
    executable = _gatekeeper_executable()
    if executable is None:
        pytest.skip("the mcp-gatekeeper executable is not installed (pip install -e .)")
    path = _write(
        _desktop_config(home),
        json.dumps({"mcpServers": {"time": {"command": sys.executable, "args": ["-m", "mcp_server_time"]}}}, indent=2),
    )
    assert _run(install, "claude-desktop", executable=executable)[0] == 0
    entry = json.loads(path.read_text())["mcpServers"]["time"]
    assert entry["command"] == executable
    assert entry["args"] == ["wrap", "--name", "time", "--", sys.executable, "-m", "mcp_server_time"]
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env=entry.get("env"))
    with anyio.fail_after(30):
        async with Client(stdio_client(params), mode="legacy") as client:
            with anyio.fail_after(30):
                tools = await client.list_tools()
            [name] = [t.name for t in tools.tools if t.name.endswith("get_current_time")]
            with anyio.fail_after(30):
                result = await client.call_tool(name, {"timezone": "UTC"})
    assert not result.is_error
    assert result.structured_content is not None
    assert result.structured_content["timezone"] == "UTC"


def test_remote_headers_go_to_env_never_to_args_even_when_names_collide(home: Path, exe: str) -> None:
    headers = {"X-Key": "secret-one", "X_Key": "secret-two", "Authorization": "Bearer secret-three"}
    path = _write(
        home / ".cursor" / "mcp.json",
        json.dumps({"mcpServers": {"r": {"url": "https://h.example/mcp", "headers": headers, "env": {"KEEP": "1"}}}}),
    )
    assert _run(install, "cursor", executable=exe)[0] == 0
    entry = json.loads(path.read_text())["mcpServers"]["r"]
    assert not any("secret" in a for a in entry["args"])  # nothing a `ps` listing would show
    pairs = [entry["args"][i + 1] for i, a in enumerate(entry["args"]) if a == "--header-env"]
    named = dict(p.split("=", 1) for p in pairs)
    assert {k: entry["env"][v] for k, v in named.items()} == headers
    assert entry["env"]["KEEP"] == "1" and len(set(named.values())) == 3
    assert _run(uninstall, "cursor")[0] == 0
    assert json.loads(path.read_text())["mcpServers"]["r"]["headers"] == headers
