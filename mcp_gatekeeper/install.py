"""Put mcp-gatekeeper in front of the MCP servers a client is configured with, and take it out again.

``install`` rewrites each server entry of a client's config file so that the client starts
``<gatekeeper> wrap --name NAME -- <original command and args>`` (or ``--url URL`` for a remote
server). ``uninstall`` puts the original entries back.

How the file is edited: it is parsed by a small JSON/JSONC parser that remembers where every value
sits in the text, and only the text of the changed server entries is replaced. Everything else
(key order, formatting, comments, ``${...}`` strings, unknown keys, the trailing newline) stays
byte-for-byte as it was. A comment *inside* an entry that must change is never dropped: the edit is
refused with a message saying what to do.

What was replaced is kept in a sidecar record, ``$MCP_GATEKEEPER_HOME/installs.json`` (mode 0600:
entries may hold secrets), never inside the client's file (clients may reject unknown keys). The
record holds each original entry's exact text and the file's bytes from before the first install,
so that uninstalling from a file nobody else touched gives back the identical bytes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO

from pydantic import BaseModel, ConfigDict, ValidationError

from mcp_gatekeeper import hostos, names
from mcp_gatekeeper.errors import ConfigError, GatekeeperError

CLIENTS: tuple[str, ...] = ("claude-desktop", "claude-code", "cursor", "vscode")

Transport = Literal["stdio", "http", "sse"]


@dataclass(frozen=True)
class ServerStatus:
    """One server entry of a client config file, as ``doctor`` reports it.

    ``command`` is what the client runs (for a gated entry: the gatekeeper executable) and
    ``exe_exists`` whether it can be found (``None`` for remote entries). ``transport`` and ``url``
    describe the upstream, also for gated entries. ``location`` is the JSON path of the entry, which
    tells apart same-named servers of different projects in ``~/.claude.json``.
    """

    name: str
    gated: bool
    transport: Transport
    command: str | None
    url: str | None
    exe_exists: bool | None
    location: tuple[str, ...] = ()
    served_as: str | None = None
    """For a gated entry: the upstream name the gatekeeper serves it as (``--name``, else wrap's default)."""
    config: str | None = None
    """For a gated entry: its ``--config`` file, if the entry names one."""


@dataclass(frozen=True)
class _Client:
    title: str  # as the user knows the application
    servers_key: str  # top-level key holding the server entries
    jsonc: bool  # comments and trailing commas allowed
    nested_projects: bool  # ~/.claude.json also holds servers under projects -> PATH -> mcpServers


_CLIENTS: dict[str, _Client] = {
    "claude-desktop": _Client("Claude Desktop", "mcpServers", jsonc=False, nested_projects=False),
    "claude-code": _Client("Claude Code", "mcpServers", jsonc=False, nested_projects=True),
    "cursor": _Client("Cursor", "mcpServers", jsonc=True, nested_projects=False),
    "vscode": _Client("VS Code", "servers", jsonc=True, nested_projects=False),
}


def _client(name: str) -> _Client:
    try:
        return _CLIENTS[name]
    except KeyError:
        raise GatekeeperError(f"unknown client {name!r}: choose one of {', '.join(CLIENTS)}") from None


# --------------------------------------------------------------------------- where the files are


def client_config_files(
    client: str,
    project: Path | None = None,
    *,
    platform: str = hostos.HOST,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> tuple[list[Path], list[Path]]:
    """(project-scope files, user-scope files) the client reads on ``platform``, existing or not.

    Claude Desktop: ``~/Library/Application Support/Claude/claude_desktop_config.json`` (macOS),
    ``%APPDATA%\\Claude\\claude_desktop_config.json`` (Windows), ``~/.config/Claude/...`` (Linux builds);
    VS Code: ``User/mcp.json`` in the same settings directory under ``Code``; Cursor and Claude Code: in the
    home directory (``%USERPROFILE%`` on Windows) on every platform.
    """
    _client(client)
    home = Path.home() if home is None else home
    settings = hostos.app_settings_dir(platform, env, home)
    if client == "claude-desktop":
        return [], [settings / "Claude" / "claude_desktop_config.json"]
    if client == "claude-code":
        return ([project / ".mcp.json"] if project else []), [home / ".claude.json"]
    if client == "cursor":
        return ([project / ".cursor" / "mcp.json"] if project else []), [home / ".cursor" / "mcp.json"]
    return ([project / ".vscode" / "mcp.json"] if project else []), [settings / "Code" / "User" / "mcp.json"]


def find_config_files(client: str, *, project: Path | None = None) -> list[Path]:
    """The client's config files that exist: the project's (if ``project`` is given) then the user's."""
    _client(client)
    project_files, user_files = client_config_files(client, project)
    return [p for p in project_files + user_files if p.is_file()]


def _target_file(client: str, config_path: Path | None, project: Path | None) -> Path:
    if config_path is not None:
        return config_path
    project_files, user_files = client_config_files(client, project)
    return (project_files or user_files)[0]


# --------------------------------------------------------------------------- JSON / JSONC with positions


@dataclass(frozen=True)
class _Node:
    """A parsed value and where its text is: ``text[start:end]``. Objects keep their members in order."""

    value: object
    start: int
    end: int
    members: tuple[_Member, ...] = ()

    def get(self, key: str) -> _Node | None:
        found = None
        for member in self.members:  # the last duplicate wins, as in JSON.parse
            if member.key == key:
                found = member.node
        return found


@dataclass(frozen=True)
class _Member:
    key: str
    key_start: int  # where the key's opening quote is
    node: _Node


class _SyntaxProblem(Exception):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_STRING_DECODER = json.JSONDecoder()  # used on '"' only: strict, no control characters
_LITERALS: tuple[tuple[str, object], ...] = (("true", True), ("false", False), ("null", None))


class _Parser:
    """Recursive descent over JSON, or JSONC (``//`` and ``/* */`` comments, trailing commas)."""

    def __init__(self, text: str, *, jsonc: bool) -> None:
        self.text = text
        self.jsonc = jsonc
        self.pos = 1 if text.startswith("\ufeff") else 0
        self.comments: list[tuple[int, int]] = []

    def error(self, message: str, pos: int | None = None) -> _SyntaxProblem:
        return _SyntaxProblem(message, self.pos if pos is None else pos)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_space(self) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif text.startswith(("//", "/*"), self.pos):
                if not self.jsonc:
                    raise self.error("comments are not allowed in this JSON file")
                if text.startswith("//", self.pos):
                    end = text.find("\n", self.pos)
                    end = len(text) if end < 0 else end
                else:
                    end = text.find("*/", self.pos + 2)
                    if end < 0:
                        raise self.error("unterminated /* comment")
                    end += 2
                self.comments.append((self.pos, end))
                self.pos = end
            else:
                return

    def document(self) -> _Node:
        self.skip_space()
        if self.pos >= len(self.text):
            raise self.error("the file is empty")
        try:
            node = self.value()
        except RecursionError:
            raise self.error("values are nested too deeply") from None
        self.skip_space()
        if self.pos < len(self.text):
            raise self.error("unexpected text after the end of the JSON value")
        return node

    def value(self) -> _Node:
        self.skip_space()
        start, char = self.pos, self.peek()
        if char == "{":
            return self.object()
        if char == "[":
            return self.array()
        if char == '"':
            return _Node(self.string(), start, self.pos)
        number = _NUMBER.match(self.text, self.pos)
        if number:
            self.pos = number.end()
            literal = number.group()
            if literal.lstrip("-").isdigit():
                return _Node(int(literal), start, self.pos)
            parsed = float(literal)
            if math.isinf(parsed):
                raise self.error(f"number {literal} is out of range", start)
            return _Node(parsed, start, self.pos)
        for word, literal_value in _LITERALS:
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return _Node(literal_value, start, self.pos)
        raise self.error(f"unexpected character {char!r}" if char else "unexpected end of file")

    def string(self) -> str:
        try:
            value, self.pos = _STRING_DECODER.raw_decode(self.text, self.pos)
        except json.JSONDecodeError as exc:
            raise self.error(exc.msg, exc.pos) from None
        return str(value)

    def object(self) -> _Node:
        start = self.pos
        self.pos += 1
        members: list[_Member] = []
        self.skip_space()
        if self.peek() == "}":
            self.pos += 1
            return _Node({}, start, self.pos)
        while True:
            self.skip_space()
            if self.peek() != '"':
                raise self.error("expected a property name in double quotes")
            key_start = self.pos
            key = self.string()
            self.skip_space()
            if self.peek() != ":":
                raise self.error(f"expected ':' after property name {key!r}")
            self.pos += 1
            members.append(_Member(key, key_start, self.value()))
            if self.after_item("}"):
                break
        return _Node({m.key: m.node.value for m in members}, start, self.pos, tuple(members))

    def array(self) -> _Node:
        start = self.pos
        self.pos += 1
        items: list[object] = []
        self.skip_space()
        if self.peek() == "]":
            self.pos += 1
            return _Node(items, start, self.pos)
        while True:
            items.append(self.value().value)
            if self.after_item("]"):
                break
        return _Node(items, start, self.pos)

    def after_item(self, close: str) -> bool:
        """Consume ``,`` or the closing bracket; True when the container is closed."""
        self.skip_space()
        char = self.peek()
        if char == close:
            self.pos += 1
            return True
        if char != ",":
            raise self.error(f"expected ',' or {close!r}")
        self.pos += 1
        self.skip_space()
        if self.jsonc and self.peek() == close:  # trailing comma
            self.pos += 1
            return True
        return False


def _line_column(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


@dataclass(frozen=True)
class _Style:
    """How the file is laid out, so that new text looks like the old."""

    indent: str | None  # one level: "  ", "    ", "\t"; None for a one-line file
    newline: str


def _detect_style(text: str) -> _Style:
    newline = "\r\n" if "\r\n" in text else "\n"
    if "\n" not in text.strip():
        return _Style(None, newline)
    indents = re.findall(r"^([ \t]*)[^\s/*]", text, re.MULTILINE)  # skips comment lines, which may be odd
    if sum(i.startswith("\t") for i in indents) > sum(i.startswith(" ") for i in indents):
        return _Style("\t", newline)
    steps = Counter(b - a for a, b in itertools.pairwise(len(i) for i in indents) if b > a)
    return _Style(" " * (steps.most_common(1)[0][0] if steps else 2), newline)


def _dump(value: object, style: _Style, prefix: str) -> str:
    """``value`` as JSON text laid out in ``style``; ``prefix`` is the indentation of its first line."""
    if isinstance(value, dict) and value:
        items = [
            f"{json.dumps(k, ensure_ascii=False)}: {_dump(v, style, prefix + (style.indent or ''))}"
            for k, v in value.items()
        ]
        return _join(items, "{", "}", style, prefix)
    if isinstance(value, list) and value:
        return _join([_dump(v, style, prefix + (style.indent or "")) for v in value], "[", "]", style, prefix)
    return json.dumps(value, ensure_ascii=False)


def _join(items: list[str], open_: str, close: str, style: _Style, prefix: str) -> str:
    if style.indent is None:
        return open_ + ", ".join(items) + close
    inner = style.newline + prefix + style.indent
    return open_ + inner + ("," + inner).join(items) + style.newline + prefix + close


def _line_indent(text: str, pos: int) -> str:
    line_start = text.rfind("\n", 0, pos) + 1
    match = re.compile(r"[ \t]*").match(text, line_start, pos)
    return match.group() if match else ""


# --------------------------------------------------------------------------- documents and their entries


@dataclass(frozen=True)
class _Document:
    path: Path
    raw: bytes
    text: str
    root: _Node
    comments: tuple[tuple[int, int], ...]
    style: _Style


@dataclass(frozen=True)
class _Entry:
    name: str
    location: tuple[str, ...]  # keys from the top of the file to the entry
    node: _Node

    @property
    def key(self) -> str:
        return json.dumps(list(self.location))


def _parse(path: Path, raw: bytes, *, jsonc: bool) -> _Document:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"byte {exc.start}: the file is not UTF-8 text"], source=str(path)) from None
    parser = _Parser(text, jsonc=jsonc)
    try:
        root = parser.document()
    except _SyntaxProblem as exc:
        line, column = _line_column(text, exc.pos)
        raise ConfigError([f"line {line}, column {column}: {exc.message}"], source=str(path)) from None
    return _Document(path, raw, text, root, tuple(parser.comments), _detect_style(text))


def _read(path: Path, *, jsonc: bool) -> _Document:
    real = path.resolve()  # edit the target of a symlink, keep the link
    try:
        raw = real.read_bytes()
    except OSError as exc:
        raise GatekeeperError(f"cannot read {path}: {exc.strerror}") from None
    return _parse(real, raw, jsonc=jsonc)


def _entries(doc: _Document, servers_key: str, *, nested_projects: bool) -> list[_Entry]:
    """Every server entry of the file; raises ConfigError naming each misplaced value."""
    root = doc.root
    if not isinstance(root.value, dict):
        raise ConfigError(["the top level is not a JSON object"], source=str(doc.path))
    maps: list[tuple[tuple[str, ...], _Node]] = []
    top = root.get(servers_key)
    if top is not None:
        maps.append(((servers_key,), top))
    projects = root.get("projects") if nested_projects else None
    if projects is not None:
        for project in projects.members:
            servers = project.node.get("mcpServers")
            if servers is not None:
                maps.append((("projects", project.key, "mcpServers"), servers))
    problems: list[str] = []
    found: list[_Entry] = []
    for location, servers in maps:
        where = ".".join(location)
        if not isinstance(servers.value, dict):
            problems.append(f"'{where}' is not an object")
            continue
        seen: set[str] = set()
        for member in servers.members:
            if member.key in seen:
                problems.append(f"'{where}' names server '{member.key}' twice")
            seen.add(member.key)
            found.append(_Entry(member.key, (*location, member.key), member.node))
    if problems:
        raise ConfigError(problems, source=str(doc.path))
    return found


def _splice(text: str, edits: Sequence[tuple[int, int, str]]) -> str:
    parts: list[str] = []
    last = 0
    for start, end, new in sorted(edits):
        parts += [text[last:start], new]
        last = end
    parts.append(text[last:])
    return "".join(parts)


class _CommentInTheWay(Exception):
    """Rewriting an entry would delete the comment that starts at ``pos``."""

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


def _rewrite(doc: _Document, obj: _Node, new: dict[str, object]) -> str:
    """The text of the object ``obj`` changed into ``new``, touching only the members that change.

    Unchanged members keep their text, comments and spacing; new members are laid out like their
    neighbours. ``new`` lists kept keys in their old order. Raises _CommentInTheWay rather than
    delete a comment.
    """
    text = doc.text
    compact = _Style(None, doc.style.newline)
    style = _Style(doc.style.indent or "  ", doc.style.newline) if "\n" in text[obj.start : obj.end] else compact
    kept = [m for m in obj.members if m.key in new]
    edits: list[tuple[int, int, str]] = []
    if not kept:  # nothing to line up with: lay out the whole object
        edits.append((obj.start, obj.end, _dump(new, style, _line_indent(text, obj.start))))
    else:
        edits += _removals(obj.members, new)
        for m in kept:
            if new[m.key] != m.node.value:
                value_style = style if "\n" in text[m.node.start : m.node.end] else compact
                indent = _line_indent(text, m.key_start)
                edits.append((m.node.start, m.node.end, _dump(new[m.key], value_style, indent)))
        edits += _insertions(text, new, {m.key: m for m in obj.members}, style)
    for start, end, _ in edits:
        for comment_start, _ in doc.comments:
            if start <= comment_start < end:
                raise _CommentInTheWay(comment_start)
    return _splice(text[obj.start : obj.end], [(s - obj.start, e - obj.start, t) for s, e, t in edits])


def _removals(members: Sequence[_Member], new: dict[str, object]) -> list[tuple[int, int, str]]:
    """Edits deleting each run of members absent from ``new``, with the comma that joined it."""
    edits = []
    i = 0
    while i < len(members):
        if members[i].key in new:
            i += 1
            continue
        j = i
        while j + 1 < len(members) and members[j + 1].key not in new:
            j += 1
        if i > 0:  # from the end of the kept member before the run
            edits.append((members[i - 1].node.end, members[j].node.end, ""))
        else:  # up to the kept member after the run (there is one: the caller checked)
            edits.append((members[0].key_start, members[j + 1].key_start, ""))
        i = j + 1
    return edits


def _insertions(
    text: str, new: dict[str, object], old: dict[str, _Member], style: _Style
) -> list[tuple[int, int, str]]:
    """Edits adding the keys of ``new`` that ``old`` lacks, each group after its predecessor."""
    edits = []
    anchor: _Member | None = None
    pending: list[str] = []
    for key in [*new, None]:
        if key is not None and key not in old:
            pending.append(key)
            continue
        if pending:
            neighbour = anchor or old[str(key)]
            line_start = text.rfind("\n", 0, neighbour.key_start) + 1
            indent = _line_indent(text, neighbour.key_start)
            own_line = style.indent is not None and not text[line_start : neighbour.key_start].strip()
            sep = style.newline + indent if own_line else " "
            items = [f"{json.dumps(k, ensure_ascii=False)}: {_dump(new[k], style, indent)}" for k in pending]
            if anchor is not None:
                edits.append((anchor.node.end, anchor.node.end, "," + sep + ("," + sep).join(items)))
            else:
                edits.append((neighbour.key_start, neighbour.key_start, ("," + sep).join(items) + "," + sep))
            pending = []
        if key is not None:
            anchor = old[key]
    return edits


# --------------------------------------------------------------------------- server entries


_GATEKEEPER_EXE = re.compile(r"mcp[-_]gatekeeper(?:\.exe|\.cmd|\.bat)?", re.IGNORECASE)
_OTHER_GATE = re.compile(r"proxy|gateway|\bgate\b|gatekeeper|guard|firewall|mcp-remote", re.IGNORECASE)
_REMOTE_TYPES = ("http", "sse", "streamable-http", "streamableHttp")


def _basename(command: str) -> str:
    return re.split(r"[\\/]", command)[-1]


def _str_list(value: object) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    return None


def _wrap_args(entry: dict[str, object]) -> list[str] | None:
    """The arguments after ``wrap`` when the entry already runs mcp-gatekeeper, else None."""
    command, args = entry.get("command"), _str_list(entry.get("args", []))
    if not isinstance(command, str) or args is None:
        return None
    if _GATEKEEPER_EXE.fullmatch(_basename(command)) and args[:1] == ["wrap"]:
        return args[1:]
    if args[:3] == ["-m", "mcp_gatekeeper", "wrap"]:
        return args[3:]
    return None


def _option(args: list[str], name: str) -> str | None:
    before_command = args[: args.index("--")] if "--" in args else args
    for i, arg in enumerate(before_command[:-1]):
        if arg == name:
            return before_command[i + 1]
    return None


def _is_remote(entry: dict[str, object]) -> bool:
    kind = entry.get("type", entry.get("transport"))
    return kind in _REMOTE_TYPES or ("url" in entry and "command" not in entry)


def _remote_transport(entry: dict[str, object]) -> Literal["http", "sse"]:
    kind = entry.get("type", entry.get("transport"))
    url = entry.get("url")
    if kind == "sse" or (kind is None and isinstance(url, str) and url.rstrip("/").endswith("/sse")):
        return "sse"
    return "http"


def _other_wrapper(command: str, args: list[str]) -> str | None:
    """The name of another proxy/gate the entry already runs through, if it looks like one."""
    for token in [command, *args]:
        if token.startswith("-"):
            continue
        name = _basename(token).split("@")[0] or _basename(token)  # drop an npm-style @version
        if _OTHER_GATE.search(name) and not _GATEKEEPER_EXE.fullmatch(name):
            return name
    return None


@dataclass(frozen=True)
class _Wrapped:
    entry: dict[str, object]
    summary: str
    notes: tuple[str, ...] = ()


Resolver = Callable[[str], str | None]


def _absolute_command(name: str, command: str, resolve: Resolver) -> tuple[str, str | None]:
    """The upstream command as an absolute path where it can be found now, and a note saying what was done.

    Clients start servers with their own environment: Claude Desktop on macOS with a short ``PATH``, and a
    bare ``npx`` does not run on Windows (it is ``npx.cmd``). A command with a ``${...}`` placeholder, a
    relative path or an absolute path is left as written.
    """
    if "$" in command or os.path.isabs(command) or "/" in command or "\\" in command:
        return command, None
    found = resolve(command)
    if found is None:
        return command, f"note: '{name}': '{command}' is not on this PATH; left as written (the client must find it)"
    return found, f"note: '{name}': '{command}' is written as {found} (clients may start servers with another PATH)"


def _wrap(name: str, entry: dict[str, object], exe: str, resolve: Resolver = hostos.resolve_command) -> _Wrapped | str:
    """The gated version of ``entry``, or why it is left alone."""
    if _wrap_args(entry) is not None:
        return "already gated by mcp-gatekeeper; left as is"
    if _is_remote(entry):
        return _wrap_remote(name, entry, exe)
    command, args = entry.get("command"), _str_list(entry.get("args", []))
    if not isinstance(command, str) or args is None:
        return "neither a 'command' with string 'args' nor a 'url'; left as is"
    upstream, resolved_note = _absolute_command(name, command, resolve)
    new_args = ["wrap", "--name", name, "--", upstream, *args]
    wrapped: dict[str, object] = {}
    for key, value in entry.items():
        if key == "command":
            wrapped[key] = exe
            if "args" not in entry:
                wrapped["args"] = new_args
        else:
            wrapped[key] = new_args if key == "args" else value
    other = _other_wrapper(command, args)
    notes = [f"note: '{name}' already runs through another tool ({other}); gating it as well"] if other else []
    if resolved_note:
        notes.append(resolved_note)
    return _Wrapped(wrapped, f"stdio: {shlex.join([command, *args])}", tuple(notes))


def _wrap_remote(name: str, entry: dict[str, object], exe: str) -> _Wrapped | str:
    url, headers = entry.get("url"), entry.get("headers", {})
    if not isinstance(url, str):
        return "remote entry without a string 'url'; left as is"
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        return "'headers' is not an object of strings; left as is"
    transport = _remote_transport(entry)
    args = ["wrap", "--name", name, "--url", url]
    if transport == "sse":
        args += ["--transport", "sse"]
    existing_env = entry.get("env")
    env: dict[str, object] = dict(existing_env) if isinstance(existing_env, dict) else {}
    for key, value in headers.items():
        var = _header_variable(key, env)
        env[var] = value
        args += ["--header-env", f"{key}={var}"]
    wrapped: dict[str, object] = {}
    for key, value in entry.items():
        if key in ("type", "transport"):
            wrapped[key] = "stdio"
        elif key == "url":
            wrapped["command"] = exe
            wrapped["args"] = args
        elif key == "headers" or (key == "env" and headers):
            if headers:
                wrapped["env"] = env  # a secret in the environment, never on the command line `ps` shows
        else:
            wrapped[key] = value
    notes = []
    if transport == "sse" and entry.get("type", entry.get("transport")) is None:
        notes.append(f"note: '{name}': the URL ends in /sse, so the SSE transport is assumed")
    if headers:
        notes.append(
            f"note: '{name}': its headers reach the gatekeeper in its environment (the entry's env), not its command line"
        )
    else:
        notes.append(f"note: '{name}': a sign-in (OAuth) the client did for this server is not carried over")
    return _Wrapped(wrapped, f"{transport}: {url}", tuple(notes))


def _header_variable(header: str, taken: Mapping[str, object]) -> str:
    """The environment variable that carries ``header``'s value: ``MCP_GATEKEEPER_HEADER_AUTHORIZATION``."""
    base = "MCP_GATEKEEPER_HEADER_" + (re.sub(r"[^A-Z0-9]+", "_", header.upper()).strip("_") or "X")
    var, n = base, 2
    while var in taken:
        var, n = f"{base}_{n}", n + 1
    return var


_MISSING = object()


def _merge(
    original: dict[str, object], wrapped: dict[str, object], current: dict[str, object]
) -> tuple[dict[str, object], list[str]]:
    """Undo our change to an entry edited since: keep the user's later edits to keys we did not touch.

    Returns the merged entry and the keys both we and the user changed (a conflict: nothing merged).
    """
    ours = {k for k in (*original, *wrapped) if original.get(k, _MISSING) != wrapped.get(k, _MISSING)}
    conflicts = sorted(k for k in ours if current.get(k, _MISSING) != wrapped.get(k, _MISSING))
    merged: dict[str, object] = {}
    for key, value in original.items():
        if key in ours:
            merged[key] = value
        elif key in current:
            merged[key] = current[key]
    for key, value in current.items():
        if key not in original and key not in wrapped:
            merged[key] = value
    return merged, conflicts


def _unwrap_unrecorded(entry: dict[str, object]) -> dict[str, object] | None:
    """Rebuild a stdio entry from our own command line when there is no record of the original."""
    args = _wrap_args(entry)
    if args is None or "--" not in args or len(args) <= args.index("--") + 1:
        return None
    upstream = args[args.index("--") + 1 :]
    restored = dict(entry)
    restored["command"] = upstream[0]
    if upstream[1:]:
        restored["args"] = upstream[1:]
    else:
        restored.pop("args", None)
    return restored


def _command_exists(command: str) -> bool:
    if os.path.isabs(command):
        return os.path.isfile(command) and os.access(command, os.X_OK)
    return hostos.resolve_command(command) is not None


def _status(entry: _Entry) -> ServerStatus:
    value = entry.node.value if isinstance(entry.node.value, dict) else {}
    command = value.get("command")
    args = _wrap_args(value)
    if args is not None:
        url = _option(args, "--url")
        transport: Transport = "stdio" if url is None else ("sse" if _option(args, "--transport") == "sse" else "http")
        upstream = args[args.index("--") + 1 :] if "--" in args else []
        served_as = _option(args, "--name") or (
            names.name_for_url(url) if url is not None else names.name_for_command(upstream) if upstream else None
        )
        return ServerStatus(
            entry.name,
            True,
            transport,
            str(command),
            url,
            _command_exists(str(command)),
            entry.location,
            served_as=names.clean_name(served_as) if served_as else None,
            config=_option(args, "--config"),
        )
    if _is_remote(value):
        url = value.get("url")
        return ServerStatus(
            entry.name,
            False,
            _remote_transport(value),
            None,
            url if isinstance(url, str) else None,
            None,
            entry.location,
        )
    if isinstance(command, str):
        return ServerStatus(entry.name, False, "stdio", command, None, _command_exists(command), entry.location)
    return ServerStatus(entry.name, False, "stdio", None, None, None, entry.location)


def inspect_servers(path: Path) -> list[ServerStatus]:
    """Every server entry of a client config file (any client's format), gated or not.

    Raises ConfigError naming the file, line and column for an invalid file.
    """
    doc = _read(path, jsonc=True)
    key = "servers" if doc.root.get("servers") is not None and doc.root.get("mcpServers") is None else "mcpServers"
    return [_status(e) for e in _entries(doc, key, nested_projects=True)]


# --------------------------------------------------------------------------- the install record


class _EntryRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    location: list[str]
    original: str  # the entry's exact text before install
    wrapped: str  # the entry's text as we wrote it
    indent: str  # indentation of the entry's first line, to know when ``original`` fits back verbatim
    newline: str


class _FileRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client: str
    original_b64: str | None  # the file before the first install; dropped once others edit the file
    installed_sha256: str  # of the bytes we last wrote
    entries: dict[str, _EntryRecord]  # by JSON-encoded location


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    files: dict[str, _FileRecord] = {}


def _record_path() -> Path:
    """In the gatekeeper home: ``$MCP_GATEKEEPER_HOME``, else the user state dir (as the store finds it)."""
    return hostos.locate_home().path / "installs.json"


def _load_record() -> _Record:
    path = _record_path()
    try:
        return _Record.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return _Record()
    except OSError as exc:
        raise GatekeeperError(f"cannot read the install record {path}: {exc.strerror}") from None
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(problems, source=str(path)) from None


def _save_record(record: _Record) -> None:
    path = _record_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomic(path, record.model_dump_json(indent=2).encode() + b"\n", mode=0o600)
    except OSError as exc:
        raise GatekeeperError(f"cannot write the install record {path}: {exc.strerror}") from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- writing


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data`` in one step: temp file in the same directory, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if not hostos.is_windows():  # a directory cannot be opened for fsync on Windows
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _backup(doc: _Document) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = doc.path.with_name(f"{doc.path.name}.gatekeeper-backup-{stamp}")
    mode = doc.path.stat().st_mode & 0o7777
    for n in range(1, 1000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as handle:
            handle.write(doc.raw)
        os.chmod(candidate, mode)
        return candidate
    raise GatekeeperError(f"cannot pick a backup name next to {doc.path}: too many backups this second")


def _print_diff(doc: _Document, new_text: str, label: str, out: TextIO) -> None:
    diff = difflib.unified_diff(
        doc.text.splitlines(keepends=True),
        new_text.splitlines(keepends=True),
        fromfile=f"{doc.path} (current)",
        tofile=f"{doc.path} ({label})",
    )
    for line in diff:
        out.write(line.rstrip("\r\n") + "\n")


def _ensure_unchanged(doc: _Document) -> None:
    """Refuse to overwrite what someone else (often the client itself) wrote since we read the file."""
    try:
        unchanged = doc.path.read_bytes() == doc.raw
    except OSError:
        unchanged = False
    if not unchanged:
        raise GatekeeperError(f"{doc.path} changed while mcp-gatekeeper was editing it; nothing was written: run again")


def _commit(doc: _Document, new: bytes, out: TextIO) -> None:
    """Back the file up next to itself, then replace it (same mode) with ``new``."""
    _ensure_unchanged(doc)
    try:
        backup = _backup(doc)
        out.write(f"Backed up {doc.path} to {backup}\n")
        _ensure_unchanged(doc)
        _write_atomic(doc.path, new, mode=doc.path.stat().st_mode & 0o7777)
    except OSError as exc:
        raise GatekeeperError(f"cannot write {exc.filename or doc.path}: {exc.strerror}") from None


# --------------------------------------------------------------------------- install / uninstall


def _resolve_executable(executable: str) -> str:
    found = executable if os.path.isabs(executable) else hostos.resolve_command(executable)
    if found is None:
        raise GatekeeperError(f"gatekeeper executable {executable!r} is not on PATH")
    if not (os.path.isfile(found) and os.access(found, os.X_OK)):
        raise GatekeeperError(f"gatekeeper executable '{found}' does not exist or is not executable")
    return os.path.abspath(found)


def _open(
    client: _Client, client_name: str, config_path: Path | None, project: Path | None, out: TextIO
) -> tuple[_Document, list[_Entry]] | int:
    path = _target_file(client_name, config_path, project)
    if not path.is_file():
        out.write(
            f"No {client.title} config file at {path}"
            + ("" if path.exists() else " (it does not exist)")
            + ". Pass --config-path FILE to name another one.\n"
        )
        return 1
    try:
        doc = _read(path, jsonc=client.jsonc)
        return doc, _entries(doc, client.servers_key, nested_projects=client.nested_projects)
    except ConfigError as exc:
        out.write(f"{exc}\nNothing was written.\n")
        return 2


def _select(entries: list[_Entry], only: Sequence[str] | None, doc: _Document, out: TextIO) -> list[_Entry] | None:
    if only is None:
        return entries
    unknown = sorted(set(only) - {e.name for e in entries})
    if unknown:
        names = ", ".join(sorted({e.name for e in entries})) or "none"
        out.write(
            f"No server named {', '.join(map(repr, unknown))} in {doc.path} (servers: {names}). Nothing was written.\n"
        )
        return None
    return [e for e in entries if e.name in only]


def _claude_scope(doc: _Document, entry: _Entry) -> list[str]:
    if entry.location[0] == "projects":
        return ["--scope", "local"]
    if doc.path.name == ".mcp.json":
        return ["--scope", "project"]
    return ["--scope", "user"] if doc.path.name == ".claude.json" else []


def _claude_code_commands(doc: _Document, changed: list[tuple[_Entry, _Wrapped]], out: TextIO) -> None:
    out.write("Equivalent claude CLI commands (run `claude mcp remove NAME` first if you use them instead):\n")
    for entry, wrapped in changed:
        value = wrapped.entry
        env = value.get("env")
        env_flags = [flag for k, v in env.items() for flag in ("-e", f"{k}={v}")] if isinstance(env, dict) else []
        command = [str(value["command"]), *(_str_list(value.get("args")) or [])]
        line = shlex.join(["claude", "mcp", "add", entry.name, *_claude_scope(doc, entry), *env_flags, "--", *command])
        prefix = f"cd {shlex.quote(entry.location[1])} && " if entry.location[0] == "projects" else ""
        out.write(f"  {prefix}{line}\n")


def install(
    client: str,
    *,
    executable: str,
    config_path: Path | None = None,
    project: Path | None = None,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    out: TextIO,
) -> int:
    """Gate the client's servers. Exit code: 0 changed (or would, with ``dry_run``), 1 nothing to do or
    no file, 2 the file is invalid or cannot be edited safely."""
    spec = _client(client)
    exe = _resolve_executable(executable)
    opened = _open(spec, client, config_path, project, out)
    if isinstance(opened, int):
        return opened
    doc, entries = opened
    out.write(f"{spec.title} config: {doc.path}\n")
    if client == "claude-desktop" and hostos.HOST in ("darwin", "win32"):
        out.write(f"The gatekeeper's log (its stderr) will be in {hostos.client_log_hint()}\n")
    if not entries:
        out.write(f"No MCP servers are configured in {doc.path}; nothing to do.\n")
        return 1
    selected = _select(entries, only, doc, out)
    if selected is None:
        return 1
    changed: list[tuple[_Entry, _Wrapped, str]] = []  # with the entry's new text
    for entry in selected:
        result = (
            _wrap(entry.name, entry.node.value, exe)
            if isinstance(entry.node.value, dict)
            else ("not a JSON object; left as is")
        )
        if isinstance(result, str):
            out.write(f"  {entry.name}: {result}\n")
            continue
        out.write(f"  {entry.name}: gating {result.summary}\n")
        out.writelines(f"  {note}\n" for note in result.notes)
        try:
            changed.append((entry, result, _rewrite(doc, entry.node, result.entry)))
        except _CommentInTheWay as exc:
            out.write(
                f"Server '{entry.name}' in {doc.path}: the comment on line {_line_column(doc.text, exc.pos)[0]} "
                "is in a part of the entry that must change, and mcp-gatekeeper does not drop comments. "
                f'Move the comment above "{entry.name}" or delete it, then run install again. '
                "Nothing was written.\n"
            )
            return 2
    if not changed:
        out.write("Nothing to change: every selected server is already gated or cannot be gated.\n")
        return 1
    new_text = _splice(doc.text, [(e.node.start, e.node.end, text) for e, _, text in changed])
    _print_diff(doc, new_text, "after install", out)
    if dry_run:
        out.write(f"Dry run: {doc.path} was not changed.\n")
        return 0
    new_bytes = new_text.encode("utf-8")
    record = _load_record()
    key = str(doc.path)
    previous = record.files.get(key)
    if previous is None:
        original_b64: str | None = base64.b64encode(doc.raw).decode()
        kept: dict[str, _EntryRecord] = {}
    else:
        untouched = _sha256(doc.raw) == previous.installed_sha256
        original_b64, kept = (previous.original_b64 if untouched else None), dict(previous.entries)
    for entry, _, text in changed:
        kept[entry.key] = _EntryRecord(
            name=entry.name,
            location=list(entry.location),
            original=doc.text[entry.node.start : entry.node.end],
            wrapped=text,
            indent=_line_indent(doc.text, entry.node.start),
            newline=doc.style.newline,
        )
    record.files[key] = _FileRecord(
        client=client, original_b64=original_b64, installed_sha256=_sha256(new_bytes), entries=kept
    )
    _ensure_unchanged(doc)
    _save_record(record)  # first: it holds the originals should the next step fail half-way
    _commit(doc, new_bytes, out)
    out.write(
        f"Updated {doc.path}: {len(changed)} server(s) now run through mcp-gatekeeper: "
        f"{', '.join(e.name for e, _, _ in changed)}.\n"
    )
    if client == "claude-code":
        _claude_code_commands(doc, [(e, w) for e, w, _ in changed], out)
    out.write(f"Restart {spec.title} to apply.\n")
    return 0


def _restore_text(doc: _Document, entry: _Entry, rec: _EntryRecord, original: dict[str, object]) -> str:
    """The original text when it fits where the entry now stands, else the current text edited back."""
    if rec.indent == _line_indent(doc.text, entry.node.start) and rec.newline == doc.style.newline:
        return rec.original
    return _rewrite(doc, entry.node, original)


def _parse_value(text: str) -> object:
    return _Parser(text, jsonc=True).document().value


def uninstall(
    client: str,
    *,
    config_path: Path | None = None,
    project: Path | None = None,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    out: TextIO,
) -> int:
    """Put back the entries ``install`` replaced. Exit code as for :func:`install`."""
    spec = _client(client)
    opened = _open(spec, client, config_path, project, out)
    if isinstance(opened, int):
        return opened
    doc, entries = opened
    out.write(f"{spec.title} config: {doc.path}\n")
    record = _load_record()
    key = str(doc.path)
    file_record = record.files.get(key)
    recorded = dict(file_record.entries) if file_record else {}
    by_key = {e.key: e for e in entries}
    # Without any record (it was lost), rebuild our entries from their command lines. With one, an
    # unrecorded gated entry was gated before install and stays so.
    unrecorded = [] if file_record else [e for e in entries if _still_ours(e)]
    if only is not None:
        known = {r.name for r in recorded.values()} | {e.name for e in unrecorded}
        unknown = sorted(set(only) - known)
        if unknown:
            out.write(
                f"No server named {', '.join(map(repr, unknown))} was installed in {doc.path} "
                f"(installed: {', '.join(sorted(known)) or 'none'}). Nothing was written.\n"
            )
            return 1
        recorded = {k: r for k, r in recorded.items() if r.name in only}
        unrecorded = [e for e in unrecorded if e.name in only]
    if not recorded and not unrecorded:
        out.write(f"mcp-gatekeeper is not installed in {doc.path}; nothing to do.\n")
        return 1
    untouched = file_record is not None and _sha256(doc.raw) == file_record.installed_sha256
    everything = file_record is not None and len(recorded) == len(file_record.entries) and not unrecorded
    forget: set[str] = set()
    if untouched and everything and file_record is not None and file_record.original_b64 is not None:
        new_bytes = base64.b64decode(file_record.original_b64)
        forget = set(recorded)
        out.write("Restoring the file exactly as it was before install.\n")
    else:
        if file_record is not None and not untouched:
            out.write(f"{doc.path} was changed since install: restoring only the gatekeeper's entries.\n")
        edits: list[tuple[int, int, str]] = []
        for rkey, rec in recorded.items():
            edit = _restore_recorded(doc, by_key.get(rkey), rec, out)
            if edit is not None:
                edits.append(edit)
            if edit is not None or by_key.get(rkey) is None or not _still_ours(by_key[rkey]):
                forget.add(rkey)
        for entry in unrecorded:
            restored = _unwrap_unrecorded(entry.node.value) if isinstance(entry.node.value, dict) else None
            if restored is None:
                out.write(
                    f"  {entry.name}: gated by mcp-gatekeeper but not recorded and not a stdio wrap; edit it by hand.\n"
                )
                continue
            try:
                edits.append((entry.node.start, entry.node.end, _rewrite(doc, entry.node, restored)))
            except _CommentInTheWay as exc:
                out.write(f"  {entry.name}: {_comment_message(doc, exc)}\n")
                continue
            out.write(f"  {entry.name}: no install record; rebuilt from its gatekeeper command line\n")
        new_bytes = _splice(doc.text, edits).encode("utf-8")
    if new_bytes == doc.raw:
        out.write(f"Nothing to change in {doc.path}.\n")
        if forget and not dry_run:
            _update_record(record, key, forget, untouched, new_bytes)
        return 1
    _print_diff(doc, new_bytes.decode("utf-8"), "after uninstall", out)
    if dry_run:
        out.write(f"Dry run: {doc.path} was not changed.\n")
        return 0
    _commit(doc, new_bytes, out)
    _update_record(record, key, forget, untouched, new_bytes)
    out.write(f"Updated {doc.path}: mcp-gatekeeper removed.\nRestart {spec.title} to apply.\n")
    return 0


def _still_ours(entry: _Entry) -> bool:
    return isinstance(entry.node.value, dict) and _wrap_args(entry.node.value) is not None


def _restore_recorded(
    doc: _Document, entry: _Entry | None, rec: _EntryRecord, out: TextIO
) -> tuple[int, int, str] | None:
    """The edit that puts one recorded entry back, or None (with the reason printed)."""
    if entry is None:
        out.write(f"  {rec.name}: no longer in the file; forgetting it\n")
        return None
    current = entry.node.value
    original, wrapped = _parse_value(rec.original), _parse_value(rec.wrapped)
    if not isinstance(original, dict) or not isinstance(wrapped, dict):
        out.write(f"  {rec.name}: the install record of this entry is damaged; left as is\n")
        return None
    if not isinstance(current, dict) or _wrap_args(current) is None:
        out.write(f"  {rec.name}: no longer runs through mcp-gatekeeper (edited since); left as is\n")
        return None
    merged, conflicts = _merge(original, wrapped, current)
    if conflicts:
        out.write(
            f"  {rec.name}: '{', '.join(conflicts)}' changed since install; left as is. "
            f"The original entry was: {json.dumps(original, ensure_ascii=False)}\n"
        )
        return None
    try:
        if current == wrapped:
            text, how = _restore_text(doc, entry, rec, original), "restoring the original entry"
        else:
            text, how = _rewrite(doc, entry.node, merged), "restoring the original entry, keeping later edits"
    except _CommentInTheWay as exc:
        out.write(f"  {rec.name}: {_comment_message(doc, exc)}\n")
        return None
    out.write(f"  {rec.name}: {how}\n")
    return entry.node.start, entry.node.end, text


def _comment_message(doc: _Document, exc: _CommentInTheWay) -> str:
    line = _line_column(doc.text, exc.pos)[0]
    return f"left as is: the comment on line {line} would be lost; move or delete it and run uninstall again"


def _update_record(record: _Record, key: str, forget: set[str], untouched: bool, new_bytes: bytes) -> None:
    file_record = record.files.get(key)
    if file_record is None:
        return
    remaining = {k: r for k, r in file_record.entries.items() if k not in forget}
    if remaining:
        record.files[key] = _FileRecord(
            client=file_record.client,
            original_b64=file_record.original_b64 if untouched else None,
            installed_sha256=_sha256(new_bytes),
            entries=remaining,
        )
    else:
        del record.files[key]
    _save_record(record)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments shared by ``install`` and ``uninstall``."""
    parser.add_argument("client", choices=CLIENTS, help="the MCP client whose config file to edit")
    parser.add_argument(
        "--config-path",
        type=Path,
        default=None,
        metavar="FILE",
        help="edit this config file instead of the client's usual one",
    )
    parser.add_argument(
        "--project",
        type=Path,
        default=None,
        metavar="DIR",
        help="edit the project's config file (.mcp.json, .cursor/mcp.json, .vscode/mcp.json)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        default=None,
        metavar="NAME",
        help="only these servers (by name)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the change, write nothing")
