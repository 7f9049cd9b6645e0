"""Every difference between the operating systems the gatekeeper runs on (Linux, macOS, Windows), in one place.

Each function takes the platform (a ``sys.platform`` value: ``"linux"``, ``"darwin"``, ``"win32"``) as a
parameter that defaults to this machine's, so every branch can be exercised on any machine; nothing here
reads ``sys.platform`` anywhere else. What differs:

- **The lanes.** The stdio fast lane, the non-blocking stdin/stdout pipes and the raw upstream lane rely on
  ``fcntl``, pipes the event loop can poll and process groups: POSIX only. On Windows every message takes
  the SDK's path (its stdio transport for the client, its ``stdio_client`` for upstreams).
  ``$MCP_GATEKEEPER_LANES=sdk`` chooses that path on POSIX too (to rule the lanes out when diagnosing).
- **Liveness of a process** by pid: ``psutil.pid_exists``. Never ``os.kill(pid, 0)``: on Windows that
  *terminates* the process.
- **Ending an upstream's process tree**: the SDK's own code; a process group (SIGTERM, then SIGKILL) on
  POSIX, the Job Object the SDK put the server in on Windows.
- **Finding a command**: ``shutil.which``, with ``PATHEXT`` on Windows (``npx`` is ``npx.cmd`` there).
- **Where files live**: ``platformdirs``; an existing database in the old Linux-style location is used
  (and said so) rather than silently starting a second one.
- **Desktop notifications**: ``notify-send`` (Linux), ``osascript`` (macOS), a PowerShell toast (Windows).
- **Secret files**: mode 0600 on POSIX; on Windows file modes mean nothing and the user profile's ACL
  (only the user, SYSTEM and administrators) is what protects them.
"""

from __future__ import annotations

import contextlib
import logging
import ntpath
import os
import posixpath
import secrets
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import anyio.abc
import psutil
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.os.win32.utilities import terminate_windows_process_tree
from platformdirs.api import PlatformDirsABC
from platformdirs.macos import MacOS
from platformdirs.unix import Unix
from platformdirs.windows import Windows

log = logging.getLogger(__name__)

HOST: Final[str] = sys.platform
"""This machine's platform (the default of every ``platform`` parameter)."""
APP: Final = "mcp-gatekeeper"
DB_FILE: Final = "gatekeeper.db"
CONFIG_FILE: Final = "config.toml"
LANES_ENV: Final = "MCP_GATEKEEPER_LANES"
HOME_ENV: Final = "MCP_GATEKEEPER_HOME"
DEFAULT_PATHEXT: Final = ".COM;.EXE;.BAT;.CMD"
"""Windows' own default, used when ``PATHEXT`` is unset."""
_RUNNABLE: Final = frozenset({".com", ".exe", ".bat", ".cmd"})
"""The ``PATHEXT`` extensions a process can be started from (not ``.js``, ``.py``, ``.ps1``...: those need
their interpreter named)."""


def is_windows(platform: str = HOST) -> bool:
    return platform == "win32"


# ----------------------------------------------------------------------------------------------- the lanes


def fast_lanes(platform: str = HOST, env: Mapping[str, str] | None = None) -> bool:
    """Whether the POSIX-only stdio fast lane, non-blocking pipes and raw upstream lane may be used.

    Never on Windows. ``$MCP_GATEKEEPER_LANES=sdk`` turns them off elsewhere too; any other value than
    ``sdk``, ``auto`` or empty is reported and treated as ``auto``.
    """
    env = os.environ if env is None else env
    choice = env.get(LANES_ENV, "").strip().lower()
    if choice not in ("", "auto", "sdk"):
        log.warning("$%s=%r is not 'sdk' or 'auto'; using 'auto'", LANES_ENV, env.get(LANES_ENV))
    return not is_windows(platform) and choice != "sdk"


# ----------------------------------------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (a zombie counts as alive, as before).

    ``psutil.pid_exists`` opens the process on Windows and probes with signal 0 on POSIX; this module never
    calls ``os.kill(pid, 0)`` itself, because on Windows ``os.kill`` with any other signal than the two
    console events terminates the process.
    """
    if pid <= 0:  # 0 and negative numbers name groups or "every process" to kill(2), never one process
        return False
    return psutil.pid_exists(pid)


@dataclass(frozen=True)
class TerminationPlan:
    """How an upstream server's process tree is started and ended on a platform (what the SDK does)."""

    new_process_group: bool
    """Spawned as the leader of a new session/process group (``start_new_session``)."""
    steps: tuple[str, ...]
    """What happens at shutdown, in order, after stdin is closed and the grace period passed."""
    graceful: bool
    """Whether the tree is asked to exit before it is killed."""


def os_user() -> str:
    """The account this process really runs as: from its real uid (POSIX) or its access token (Windows).

    Not ``getpass.getuser()``, which believes ``$LOGNAME``/``$USER``/``%USERNAME%``: any program can set those
    for a child, and the name is recorded as who made or decided a call.
    """
    try:
        name = psutil.Process().username()
    except (psutil.Error, KeyError, OSError, ImportError):  # a uid with no passwd entry (containers), or no pwd module
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return str(name)


def termination_plan(platform: str = HOST) -> TerminationPlan:
    if is_windows(platform):
        return TerminationPlan(
            new_process_group=False,
            steps=("TerminateJobObject (every process in the server's Job Object)", "TerminateProcess (the server)"),
            graceful=False,
        )
    return TerminationPlan(
        new_process_group=True,
        steps=("SIGTERM to the process group", "wait for the group to exit", "SIGKILL to what is left of the group"),
        graceful=True,
    )


async def terminate_tree(process: anyio.abc.Process, grace: float, platform: str = HOST) -> None:
    """End ``process`` and its descendants as :func:`termination_plan` says, through the SDK's own code."""
    if is_windows(platform):
        await terminate_windows_process_tree(process)
    else:
        await terminate_posix_process_tree(process, grace)


# ----------------------------------------------------------------------------------------------- commands


def resolve_command(
    command: str,
    *,
    platform: str = HOST,
    path: str | None = None,
    pathext: str | None = None,
) -> str | None:
    """The absolute path ``command`` runs as, or None when it is not found.

    ``path`` is the search path in the platform's own syntax (``;``-separated on Windows), ``$PATH`` when
    None. POSIX: ``shutil.which``. Windows: a bare name is tried with each ``PATHEXT`` extension in order
    that ``CreateProcess`` can start (``npx`` finds ``npx.cmd``; the extension-less ``npx`` shell script npm
    also installs, or an ``npx.ps1``, cannot be started), directory by directory. That branch walks ``PATH`` itself because ``shutil.which`` on Windows
    searches the current directory first, where a project could plant an ``npx.cmd``.
    """
    if not command:
        return None
    search = os.environ.get("PATH", "") if path is None else path
    if not is_windows(platform):
        found = shutil.which(command, path=search)
        return os.path.abspath(found) if found else None
    listed = [e.strip().lower() for e in (pathext or os.environ.get("PATHEXT") or DEFAULT_PATHEXT).split(";")]
    exts = [e for e in listed if e in _RUNNABLE]
    has_ext = ntpath.splitext(command)[1].lower() in _RUNNABLE
    names = [command] if has_ext else [command + e for e in exts]
    if ntpath.dirname(command):  # a path: checked as given, never searched for
        dirs: list[str | None] = [None]
    else:
        dirs = [d for d in search.split(";") if d.strip()]
    for directory in dirs:
        for name in names:
            candidate = name if directory is None else os.path.join(directory.strip().strip('"'), name)
            if os.path.isfile(candidate):
                return candidate
    return None


def with_command_dir(command: str, env: Mapping[str, str], platform: str = HOST) -> dict[str, str]:
    """``env`` for a child started as ``command``, with the command's own directory at the *end* of ``PATH``
    when ``command`` is an absolute path whose directory is not on it yet.

    Claude Desktop on macOS starts servers with a short ``PATH`` (``/usr/bin:/bin:/usr/sbin:/sbin``), so
    ``/opt/homebrew/bin/npx`` starts but its ``#!/usr/bin/env node`` does not find ``node``, which sits
    beside it (Homebrew, nvm, the Node installer alike). Appended, never prepended: nothing already on
    ``PATH`` is shadowed.
    """
    out = dict(env)
    pathmod = ntpath if is_windows(platform) else posixpath
    if not pathmod.isabs(command):
        return out
    directory = pathmod.dirname(command)
    sep = ";" if is_windows(platform) else ":"
    key = next((k for k in out if k.upper() == "PATH"), "PATH") if is_windows(platform) else "PATH"
    entries = [e for e in out.get(key, "").split(sep) if e]
    norm = (lambda p: pathmod.normcase(pathmod.normpath(p))) if is_windows(platform) else pathmod.normpath
    if directory and norm(directory) not in {norm(e) for e in entries}:
        out[key] = sep.join([*entries, directory])
    return out


# ----------------------------------------------------------------------------------------------- where files live


def _dirs(platform: str) -> PlatformDirsABC:
    kind: type[PlatformDirsABC] = Windows if is_windows(platform) else MacOS if platform == "darwin" else Unix
    return kind(appname=APP, appauthor=False, roaming=False)


def _legacy_home() -> Path:
    """Where every platform kept its data before this module: ``$XDG_STATE_HOME`` or ``~/.local/state``."""
    state = os.environ.get("XDG_STATE_HOME")
    return (Path(state) if state else Path.home() / ".local" / "state") / APP


@dataclass(frozen=True)
class Located:
    """A location, and what the user should be told about how it was chosen (None: nothing)."""

    path: Path
    note: str | None = None


def locate_home(platform: str = HOST) -> Located:
    """The data home: ``$MCP_GATEKEEPER_HOME``; else the platform's user state dir, unless only the old
    location (``~/.local/state/mcp-gatekeeper``, used on every platform before) holds a database.

    Reads the environment (as platformdirs does: ``$XDG_STATE_HOME``, ``$HOME``, Windows' known folders).
    """
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Located(Path(explicit).expanduser())
    return _usual_home(platform)


def _usual_home(platform: str) -> Located:
    """The data home when ``$MCP_GATEKEEPER_HOME`` is not set."""
    current = Path(_dirs(platform).user_state_dir)
    legacy = _legacy_home()
    if legacy == current:
        return Located(current)
    has_current, has_legacy = (current / DB_FILE).is_file(), (legacy / DB_FILE).is_file()
    if has_legacy and not has_current:
        return Located(
            legacy,
            f"using the existing database in {legacy} (the usual place on this platform is {current}; "
            "to move it there, stop every client that runs mcp-gatekeeper and move the whole folder)",
        )
    if has_legacy:
        return Located(current, f"{legacy} also holds a gatekeeper database; it is not used (only {current} is)")
    return Located(current)


def locate_config(platform: str = HOST) -> Located:
    """The user's config file (which may not exist): the platform's user config dir, unless only the old
    location ``~/.config/mcp-gatekeeper/config.toml`` has one."""
    current = Path(_dirs(platform).user_config_dir) / CONFIG_FILE
    legacy = Path.home() / ".config" / APP / CONFIG_FILE
    if legacy != current and legacy.is_file() and not current.is_file():
        return Located(legacy, f"using the config file {legacy} (the usual place on this platform is {current})")
    return Located(current)


def config_dirs(platform: str = HOST) -> tuple[Path, ...]:
    """Every folder the user's config file may be looked for in (the platform's and the old ``~/.config`` one),
    whether it exists yet or not."""
    return tuple(dict.fromkeys([Path(_dirs(platform).user_config_dir), Path.home() / ".config" / APP]))


def app_settings_dir(platform: str = HOST, env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """Where desktop applications (Claude Desktop, VS Code) keep per-user settings on ``platform``.

    macOS ``~/Library/Application Support``; Windows ``%APPDATA%`` (the roaming AppData); elsewhere
    ``$XDG_CONFIG_HOME`` or ``~/.config``.
    """
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    if platform == "darwin":
        return home / "Library" / "Application Support"
    if is_windows(platform):
        appdata = env.get("APPDATA")
        return Path(appdata) if appdata else home / "AppData" / "Roaming"
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config")


def client_log_hint(platform: str = HOST, env: Mapping[str, str] | None = None, home: Path | None = None) -> str:
    """Where Claude Desktop writes what an MCP server prints on stderr (so: the gatekeeper's log)."""
    home = Path.home() if home is None else home
    if platform == "darwin":
        return str(home / "Library" / "Logs" / "Claude" / "mcp-server-NAME.log")
    if is_windows(platform):
        return str(app_settings_dir(platform, env, home) / "Claude" / "logs" / "mcp-server-NAME.log")
    return "the client's own log (Claude Desktop does not run on Linux)"


def self_command(
    *,
    argv0: str | None = None,
    executable: str | None = None,
    env: Mapping[str, str] | None = None,
    platform: str = HOST,
    path: str | None = None,
    with_home: bool = True,
) -> str:
    """How a person at another terminal types this running gatekeeper, so a printed hint works as printed.

    ``mcp-gatekeeper`` when that name on ``PATH`` is this very script; else the script's absolute path (a
    venv's ``bin`` that is not on ``PATH``, as after ``.ci/demo``); else, when started as ``python -m
    mcp_gatekeeper``, that interpreter and ``-m``. When ``$MCP_GATEKEEPER_HOME`` points somewhere other than
    the usual data home, a POSIX shell is given the same setting in front (a plain terminal would otherwise
    open a different queue); Windows shells have no such prefix, so there the hint is the command alone.
    Defaults: ``sys.argv[0]``, ``sys.executable``, ``os.environ``. ``with_home=False``: the command alone (for a
    client config's ``command``, where the home belongs in its ``env``).
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    env = os.environ if env is None else env
    windows = is_windows(platform)
    flavour = ntpath if windows else posixpath

    def quote(word: str) -> str:
        if windows:
            return f'"{word}"' if any(c in word for c in ' \t&()^;,=%!"') else word
        return shlex.quote(word)

    base = flavour.basename(argv0).lower()
    for suffix in (".exe", "-script.py", ".py"):
        base = base.removesuffix(suffix)
    if base == APP and argv0:
        script = os.path.abspath(argv0) if platform == HOST else argv0
        on_path = resolve_command(APP, platform=platform, path=env.get("PATH", "") if path is None else path)
        command = APP if on_path is not None and _same_file(on_path, script, platform) else quote(script)
    else:
        command = f"{quote(executable)} -m mcp_gatekeeper"
    home = env.get(HOME_ENV)
    if with_home and home and not windows and Path(home).expanduser() != _usual_home(platform).path:
        command = f"{HOME_ENV}={shlex.quote(home)} {command}"
    return command


def _same_file(a: str, b: str, platform: str) -> bool:
    flavour = ntpath if is_windows(platform) else posixpath
    if flavour.normcase(flavour.normpath(a)) == flavour.normcase(flavour.normpath(b)):
        return True
    return platform == HOST and os.path.realpath(a) == os.path.realpath(b)  # pipx links the script into ~/.local/bin


# ----------------------------------------------------------------------------------------------- notifications


def notification_command(title: str, body: str, platform: str = HOST) -> list[str] | None:
    """The command that shows a desktop notification on ``platform``, or None when there is none.

    Linux: ``notify-send`` if installed; macOS: ``osascript`` (always there); Windows: a toast through
    PowerShell's WinRT bridge. Title and body travel as data, never as script text: ``osascript`` gets them
    as ``on run argv`` arguments, PowerShell as environment variables (see :func:`notification_env`).
    """
    if platform == "darwin":
        script = ("on run argv", "display notification (item 2 of argv) with title (item 1 of argv)", "end run")
        exe = resolve_command("osascript", platform=platform) or "/usr/bin/osascript"
        return [exe, *(arg for line in script for arg in ("-e", line)), title, body]
    if is_windows(platform):
        exe = resolve_command("powershell", platform=platform) or "powershell.exe"
        return [exe, "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-Command", _TOAST_SCRIPT]
    notify_send = resolve_command("notify-send", platform=platform)
    return (
        [notify_send, f"--app-name={APP}", "--", title, body] if notify_send else None
    )  # "--": a body may start with "-"


def notification_env(title: str, body: str, platform: str = HOST) -> dict[str, str] | None:
    """Extra environment for :func:`notification_command` (Windows' toast reads title and body from it)."""
    if is_windows(platform):
        return {**os.environ, "GK_TOAST_TITLE": title, "GK_TOAST_BODY": body}
    return None


_TOAST_SCRIPT: Final = (
    "$ErrorActionPreference = 'Stop';"
    "[void][Windows.UI.Notifications.ToastNotificationManager, Windows.UI.Notifications, ContentType = WindowsRuntime];"
    "$t = [Windows.UI.Notifications.ToastNotificationManager]::GetTemplateContent("
    "[Windows.UI.Notifications.ToastTemplateType]::ToastText02);"
    "$n = $t.GetElementsByTagName('text');"
    "[void]$n.Item(0).AppendChild($t.CreateTextNode($env:GK_TOAST_TITLE));"
    "[void]$n.Item(1).AppendChild($t.CreateTextNode($env:GK_TOAST_BODY));"
    "$id = '{1AC14E77-02E7-4E5D-B744-2EB1AE5198B7}\\WindowsPowerShell\\v1.0\\powershell.exe';"
    "[Windows.UI.Notifications.ToastNotificationManager]::CreateToastNotifier($id).Show("
    "[Windows.UI.Notifications.ToastNotification]::new($t))"
)
"""A toast shown as Windows PowerShell (an app id every Windows has), title and body from the environment."""


# ----------------------------------------------------------------------------------------------- secret files

SecretProtection = Literal["mode 0600", "user profile ACL"]


def secret_protection(platform: str = HOST) -> SecretProtection:
    """What keeps the home's secret files (``ui-token``, ``state-key``, ``installs.json``) private.

    POSIX: they are created with mode 0600 in a 0700 directory. Windows ignores those modes; the files are
    private because the data home is inside the user's profile, whose ACL grants access only to the user,
    SYSTEM and administrators. A ``$MCP_GATEKEEPER_HOME`` outside the profile gets no such protection.
    """
    return "user profile ACL" if is_windows(platform) else "mode 0600"


def publish_new_token(path: Path) -> None:
    """Put a fresh random token at ``path`` unless one is already there (mode 0600): :func:`publish_new_secret`."""
    publish_new_secret(path, secrets.token_urlsafe(32) + "\n")


def publish_new_secret(path: Path, content: str) -> None:
    """Put ``content`` at ``path`` unless a file is already there (mode 0600).

    Written to a private temp file, fsynced, then hard-linked into place: two processes starting together
    agree on one secret (the one that lost the link uses the winner's), and nobody reads a half-written file.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race: its token stands
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
