"""The platform seam, branch by branch: Linux, macOS and Windows, chosen by parameter (never by patching sys.platform).

What runs for real here: command resolution over real directories, liveness of real processes, the
POSIX termination of a real process group, the desktop channel running a stand-in notifier for each
platform (a script named like the real one, recording what it was given). What cannot run on Linux (the
Windows Job Object, osascript, a Windows toast) is checked as the plan or command each branch produces.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from mcp_gatekeeper import hostos, install, store
from mcp_gatekeeper.models import CallRecord, State
from mcp_gatekeeper.notify import DesktopChannel

PACKAGE = Path(hostos.__file__).parent
PLATFORMS = ("linux", "darwin", "win32")


def _executable(path: Path, body: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


# ----------------------------------------------------------------------------------------------- the lanes


def test_fast_lanes_never_on_windows_and_off_on_request(caplog: pytest.LogCaptureFixture) -> None:
    assert hostos.fast_lanes("linux", {}) and hostos.fast_lanes("darwin", {})
    assert not hostos.fast_lanes("win32", {})
    assert not hostos.fast_lanes("win32", {hostos.LANES_ENV: "auto"})  # nothing turns them on on Windows
    for value in ("sdk", "SDK", " sdk "):
        assert not hostos.fast_lanes("linux", {hostos.LANES_ENV: value})
    assert hostos.fast_lanes("linux", {hostos.LANES_ENV: "auto"})
    with caplog.at_level(logging.WARNING):
        assert hostos.fast_lanes("linux", {hostos.LANES_ENV: "off"})  # unknown: reported, not guessed at
    assert "MCP_GATEKEEPER_LANES" in caplog.text


# ----------------------------------------------------------------------------------------------- processes


def test_pid_alive_for_real_processes() -> None:
    assert hostos.pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: the pid names nothing now
    assert not hostos.pid_alive(child.pid)
    assert not hostos.pid_alive(0) and not hostos.pid_alive(-1)  # kill(2) semantics never leak in
    assert store.instances._pid_alive(os.getpid())  # the store asks hostos, never os.kill


def test_nothing_in_the_package_signals_a_pid_to_probe_it() -> None:
    """On Windows os.kill(pid, 0) terminates the process: no module may call os.kill / killpg itself, under
    any spelling (attribute, from-import, alias); ending processes goes through hostos and the SDK."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("os", "signal", "posix"):
                bad = {a.name for a in node.names} & {"kill", "killpg", "SIGKILL", "*"}
                if bad:
                    offenders.append(f"{path.name}:{node.lineno} from {node.module} import {sorted(bad)}")
            attribute = isinstance(node, ast.Attribute) and node.attr in ("kill", "killpg", "SIGKILL")
            if attribute and isinstance(node.value, ast.Name) and node.value.id in ("os", "signal", "posix"):
                offenders.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
            dynamic = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
            if dynamic and any(isinstance(a, ast.Constant) and a.value in ("kill", "killpg") for a in node.args):
                offenders.append(f"{path.name}:{node.lineno} getattr(..., 'kill')")
    assert offenders == []


def test_termination_plans() -> None:
    posix = hostos.termination_plan("linux")
    assert posix == hostos.termination_plan("darwin")
    assert posix.new_process_group and posix.graceful
    assert posix.steps[0].startswith("SIGTERM") and posix.steps[-1].startswith("SIGKILL")
    windows = hostos.termination_plan("win32")
    assert not windows.new_process_group and not windows.graceful  # Windows has no tree-wide SIGTERM
    assert windows.steps[0].startswith("TerminateJobObject")


@pytest.mark.anyio
async def test_posix_termination_ends_the_whole_process_group() -> None:
    """A server that ignores SIGTERM and has a child: both are gone after terminate_tree."""
    script = "trap '' TERM; sleep 300 & echo $!; wait"
    process = await anyio.open_process(["sh", "-c", script], start_new_session=True)
    assert process.stdout is not None
    with anyio.fail_after(10):
        grandchild = int((await process.stdout.receive()).decode().strip())  # the shell says it once started
    assert hostos.pid_alive(grandchild)
    exited = os.pidfd_open(grandchild)  # readable once the grandchild has exited (a signal is delivered async)
    try:
        with anyio.fail_after(20):
            await hostos.terminate_tree(process, 0.5, platform="linux")
            await process.wait()
            await anyio.wait_readable(exited)
    finally:
        os.close(exited)
    assert process.returncode is not None
    assert not hostos.pid_alive(grandchild) or _is_zombie(grandchild)  # killed (a zombie until init reaps it)
    await process.aclose()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


# ----------------------------------------------------------------------------------------------- commands


def test_windows_resolution_uses_pathext_and_skips_the_extensionless_npm_script(tmp_path: Path) -> None:
    unix_shim, win_shim = tmp_path / "a", tmp_path / "b"
    _executable(unix_shim / "npx")  # the sh script npm also installs: CreateProcess cannot run it
    _executable(win_shim / "npx.cmd")
    path = f"{unix_shim};{win_shim}"
    assert hostos.resolve_command("npx", platform="win32", path=path, pathext=".COM;.EXE;.BAT;.CMD") == str(
        win_shim / "npx.cmd"
    )
    # PATHEXT order decides between extensions in one directory; an explicit extension is taken as given
    _executable(win_shim / "npx.exe")
    assert hostos.resolve_command("npx", platform="win32", path=path, pathext=".EXE;.CMD") == str(win_shim / "npx.exe")
    assert hostos.resolve_command("npx.cmd", platform="win32", path=path, pathext=".EXE;.CMD") == str(
        win_shim / "npx.cmd"
    )
    # quoted PATH entries, as Windows allows
    assert hostos.resolve_command("npx", platform="win32", path=f'"{win_shim}"', pathext=".CMD") == str(
        win_shim / "npx.cmd"
    )
    assert hostos.resolve_command("nothere", platform="win32", path=path, pathext=".CMD") is None
    # only what CreateProcess can start: a script for another interpreter is not the command
    _executable(unix_shim / "tool.ps1")
    _executable(unix_shim / "tool.js")
    assert hostos.resolve_command("tool", platform="win32", path=path, pathext=".JS;.PS1;.CMD") is None
    _executable(win_shim / "tool.bat")
    assert hostos.resolve_command("tool", platform="win32", path=path, pathext=".JS;.PS1;.BAT") == str(
        win_shim / "tool.bat"
    )


def test_windows_resolution_never_searches_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cmd.exe would run .\\npx.cmd first; a client config that says `npx` must not pick up a planted one."""
    planted = tmp_path / "project"
    _executable(planted / "npx.cmd")
    monkeypatch.chdir(planted)
    assert hostos.resolve_command("npx", platform="win32", path="", pathext=".CMD") is None
    real = tmp_path / "nodejs"
    _executable(real / "npx.cmd")
    assert hostos.resolve_command("npx", platform="win32", path=str(real), pathext=".CMD") == str(real / "npx.cmd")


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_posix_resolution_needs_the_execute_bit(tmp_path: Path, platform: str) -> None:
    bindir = tmp_path / "bin"
    _executable(bindir / "tool")
    (bindir / "data").write_text("not a program")
    assert hostos.resolve_command("tool", platform=platform, path=str(bindir)) == str(bindir / "tool")
    assert hostos.resolve_command("data", platform=platform, path=str(bindir)) is None
    assert hostos.resolve_command("tool.cmd", platform=platform, path=str(bindir)) is None  # no PATHEXT here
    assert hostos.resolve_command("", platform=platform, path=str(bindir)) is None


def test_command_dir_joins_path_at_the_end_only_when_missing() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    assert hostos.with_command_dir("/opt/homebrew/bin/npx", env, "darwin")["PATH"] == "/usr/bin:/bin:/opt/homebrew/bin"
    assert hostos.with_command_dir("/usr/bin/python3", env, "darwin")["PATH"] == "/usr/bin:/bin"  # already there
    assert hostos.with_command_dir("npx", env, "darwin")["PATH"] == "/usr/bin:/bin"  # bare: nothing to add
    assert env == {"PATH": "/usr/bin:/bin"}  # the caller's mapping is not changed
    win = {"Path": r"C:\Windows\system32"}  # Windows environment names are case-insensitive
    got = hostos.with_command_dir(r"C:\Program Files\nodejs\npx.cmd", win, "win32")
    assert got == {"Path": r"C:\Windows\system32;C:\Program Files\nodejs"}
    again = hostos.with_command_dir(r"c:\program files\NODEJS\npx.cmd", got, "win32")
    assert again == got


# ----------------------------------------------------------------------------------------------- where files live


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private user home; no gatekeeper or XDG variables."""
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("MCP_GATEKEEPER_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    # platformdirs' own override of the Windows known folder (the shell API is not there on Linux)
    monkeypatch.setenv("WIN_PD_OVERRIDE_LOCAL_APPDATA", WIN_LOCAL)
    monkeypatch.chdir(tmp_path)  # a Windows path is a relative name here: keep it inside the test's directory
    return home


WIN_LOCAL = r"C:\Users\me\AppData\Local"


def _win(*parts: str) -> Path:
    return Path(os.path.join(WIN_LOCAL, *parts))


def test_home_per_platform(user: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hostos.locate_home("linux") == hostos.Located(user / ".local" / "state" / "mcp-gatekeeper")
    assert hostos.locate_home("darwin") == hostos.Located(user / "Library" / "Application Support" / "mcp-gatekeeper")
    assert hostos.locate_home("win32") == hostos.Located(_win("mcp-gatekeeper"))  # local, not roaming
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert hostos.locate_home("linux").path == tmp_path / "state" / "mcp-gatekeeper"
    monkeypatch.setenv("MCP_GATEKEEPER_HOME", str(tmp_path / "explicit"))
    for platform in PLATFORMS:
        assert hostos.locate_home(platform) == hostos.Located(tmp_path / "explicit")


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_an_existing_database_in_the_old_place_is_used_and_said(user: Path, platform: str) -> None:
    legacy = user / ".local" / "state" / "mcp-gatekeeper"
    usual = hostos.locate_home(platform).path
    (legacy / "gatekeeper.db").parent.mkdir(parents=True)
    (legacy / "gatekeeper.db").write_bytes(b"")
    found = hostos.locate_home(platform)
    assert found.path == legacy
    assert found.note is not None and str(legacy) in found.note and str(usual) in found.note
    # once the usual place has one too, it wins, and the old one is named as not in use
    usual.mkdir(parents=True)
    (usual / "gatekeeper.db").write_bytes(b"")
    found = hostos.locate_home(platform)
    assert found.path == usual and found.note is not None and "not used" in found.note


def test_the_store_and_the_install_record_share_one_home(user: Path) -> None:
    assert store.default_home() == hostos.locate_home().path
    assert install._record_path() == hostos.locate_home().path / "installs.json"


def test_config_file_per_platform_and_the_old_linux_path(user: Path, tmp_path: Path) -> None:
    assert hostos.locate_config("linux").path == user / ".config" / "mcp-gatekeeper" / "config.toml"
    mac = user / "Library" / "Application Support" / "mcp-gatekeeper" / "config.toml"
    assert hostos.locate_config("darwin").path == mac
    assert hostos.locate_config("win32").path == _win("mcp-gatekeeper", "config.toml")
    old = user / ".config" / "mcp-gatekeeper" / "config.toml"
    old.parent.mkdir(parents=True)
    old.write_text("")
    found = hostos.locate_config("darwin")
    assert found.path == old and found.note is not None
    mac.parent.mkdir(parents=True)
    mac.write_text("")
    assert hostos.locate_config("darwin").path == mac


def test_client_config_files_per_platform(tmp_path: Path) -> None:
    home = tmp_path / "me"
    appdata = r"C:\Users\me\AppData\Roaming"
    env = {"APPDATA": appdata}

    def user_file(client: str, platform: str) -> Path:
        return install.client_config_files(client, None, platform=platform, env=env, home=home)[1][0]

    assert user_file("claude-desktop", "darwin") == (
        home / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    )
    assert user_file("claude-desktop", "win32") == Path(appdata) / "Claude" / "claude_desktop_config.json"
    assert user_file("claude-desktop", "linux") == home / ".config" / "Claude" / "claude_desktop_config.json"
    assert user_file("vscode", "darwin") == home / "Library" / "Application Support" / "Code" / "User" / "mcp.json"
    assert user_file("vscode", "win32") == Path(appdata) / "Code" / "User" / "mcp.json"
    for platform in PLATFORMS:  # the same relative place in the user's home everywhere
        assert user_file("cursor", platform) == home / ".cursor" / "mcp.json"
        assert user_file("claude-code", platform) == home / ".claude.json"
    # no %APPDATA%: the default roaming AppData under the profile
    no_env = install.client_config_files("claude-desktop", None, platform="win32", env={}, home=home)[1][0]
    assert no_env == home / "AppData" / "Roaming" / "Claude" / "claude_desktop_config.json"


def test_client_log_hints() -> None:
    home = Path("/Users/me")
    assert hostos.client_log_hint("darwin", {}, home) == "/Users/me/Library/Logs/Claude/mcp-server-NAME.log"
    assert hostos.client_log_hint("win32", {"APPDATA": "C:/AppData"}, home).startswith("C:/AppData/Claude/logs")


# ----------------------------------------------------------------------------------------------- notifications

HOSTILE = '-n " & do shell script "touch /tmp/pwned" & " $(touch /tmp/pwned2) `id`'


def test_notification_commands_carry_text_as_data() -> None:
    mac = hostos.notification_command("mcp-gatekeeper", HOSTILE, "darwin")
    assert mac is not None and mac[-2:] == ["mcp-gatekeeper", HOSTILE]
    assert all(HOSTILE not in arg for arg in mac[:-2])  # never spliced into the AppleScript
    win = hostos.notification_command("mcp-gatekeeper", HOSTILE, "win32")
    assert win is not None and all(HOSTILE not in arg for arg in win)  # only in the environment
    env = hostos.notification_env("mcp-gatekeeper", HOSTILE, "win32")
    assert env is not None and env["GK_TOAST_BODY"] == HOSTILE and env["GK_TOAST_TITLE"] == "mcp-gatekeeper"
    assert hostos.notification_env("t", "b", "darwin") is None and hostos.notification_env("t", "b", "linux") is None


RECORDER = """#!{python}
import json, os, sys
with open({log!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "title": os.environ.get("GK_TOAST_TITLE"),
                        "body": os.environ.get("GK_TOAST_BODY")}}) + "\\n")
"""


def _call() -> CallRecord:
    return CallRecord(
        id="c0ffee00" * 4,
        state=State.PENDING,
        upstream="fs",
        tool="delete_file",
        arguments={"path": "/x"},
        args_digest="d",
        gate="hard",
        risk="high",
        created_at=0.0,
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("platform", "program"), [("linux", "notify-send"), ("darwin", "osascript"), ("win32", "powershell.exe")]
)
async def test_desktop_channel_runs_each_platforms_notifier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, platform: str, program: str
) -> None:
    """A stand-in for each platform's notifier on PATH records what it was given: the hostile text arrives
    whole, as one argument (or, on Windows, in the environment), and nothing ran it as script."""
    log = tmp_path / "notified.jsonl"
    bindir = tmp_path / "bin"
    _executable(bindir / program, RECORDER.format(python=sys.executable, log=str(log)))
    sep = ";" if platform == "win32" else os.pathsep
    monkeypatch.setenv("PATH", sep.join([str(bindir), os.environ["PATH"]]) if platform != "win32" else str(bindir))
    monkeypatch.setenv("PATHEXT", ".EXE")
    monkeypatch.chdir(tmp_path)
    with anyio.fail_after(20):
        await DesktopChannel(platform).send("held", _call(), HOSTILE, "http://127.0.0.1:1/c")
    [seen] = [json.loads(line) for line in log.read_text().splitlines()]
    body = HOSTILE + "\nhttp://127.0.0.1:1/c"
    if platform == "win32":
        assert (seen["title"], seen["body"]) == ("mcp-gatekeeper", body)
        assert seen["argv"][:2] == ["-NoProfile", "-NonInteractive"]
    else:
        assert seen["argv"][-2:] == ["mcp-gatekeeper", body]
        if platform == "linux":
            assert seen["argv"][-3] == "--"  # a body starting with "-" is not an option
    assert not Path("/tmp/pwned").exists() and not Path("/tmp/pwned2").exists()


@pytest.mark.anyio
async def test_desktop_channel_without_a_notifier_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.INFO):
        await DesktopChannel("linux").send("held", _call(), "text", None)
    assert "no desktop notifier" in caplog.text


# ----------------------------------------------------------------------------------------------- secret files


def test_secret_protection_is_stated_per_platform() -> None:
    assert hostos.secret_protection("linux") == hostos.secret_protection("darwin") == "mode 0600"
    assert hostos.secret_protection("win32") == "user profile ACL"


@pytest.mark.skipif(sys.platform == "win32", reason="file modes are POSIX")
def test_secret_files_are_0600_on_posix(tmp_path: Path) -> None:
    from mcp_gatekeeper.sealing import load_or_create_key
    from mcp_gatekeeper.webauth import load_or_create_token

    home = tmp_path / "home"
    load_or_create_key(home)
    load_or_create_token(home)
    for name in ("state-key", "ui-token"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_os_user_is_the_real_account_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Who made or decided a call is recorded from the process's real account: a caller that sets
    $USER/$LOGNAME/%USERNAME% for its child cannot decide under another name."""
    real = hostos.os_user()
    for var in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.setenv(var, "someone-else")
    assert hostos.os_user() == real != "someone-else"
    if hasattr(os, "getuid"):
        import pwd  # POSIX-only, and this branch runs only there

        assert real == pwd.getpwuid(os.getuid()).pw_name
