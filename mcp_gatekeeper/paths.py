"""What a path argument names, worked out lexically (never by touching the disk).

An agent can spell one file many ways: ``src/../.git/hooks/pre-commit``, ``/w//src/./a``, ``~/x``,
``file:///w/a%2Eenv``, ``C:\\w\\a``, ``" /w/a"`` (server-filesystem trims spaces and quotes). A policy that
compares the raw string is talked around by the spelling, so path predicates compare
:func:`interpretations`: every normalised form a server might act on. A caller quantifies over them the way
it quantifies over list elements: a deny needs *one* interpretation to match, an allow needs *all*.

Normal form: ``/`` separators, no ``.`` or empty segments, ``..`` folded lexically (clamped at the root of an
absolute path, kept at the front of a relative one), no trailing ``/``, ``~`` expanded, a drive letter kept
upper-case in front (``C:/Users/me``). ``..`` is folded before any symlink is resolved, as Node's
``path.resolve`` (and so server-filesystem) does.

Two more readings a server acts on without the spelling showing it: a name that is not ASCII also stands for
its NFC form (server-filesystem opens ``cafe\u0301`` as the ``café`` on disk when no file is spelled exactly
so; macOS file systems do the same), Linux's magic links name other paths: ``/proc/self/root/x`` is
``/x``, and ``/proc/self/cwd/x`` or ``/dev/fd/3/x`` is ``x`` relative to a folder we cannot know; and Windows
opens ``.aws./credentials`` and ``a.pem::$DATA`` as ``.aws/credentials`` and ``a.pem``. Paths written in a
config are compared in NFC too (:func:`normalise_config`).
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

_DRIVE = re.compile(r"^([A-Za-z]):(?=/|$)")
_URI_DRIVE = re.compile(r"^/[A-Za-z]:(?=/|$)")
_QUOTES = re.compile(r"^[\"']|[\"']$")
_NEEDS_READINGS = re.compile(r"^[\s\"']|[\s\"']$|\\|(?:^|/)(?:proc|dev)/|[^\x00-\x7f]|[. ](?:/|$)|::")
_PROC_ROOT = re.compile(r"^/proc/[^/]+(?:/task/[^/]+)?/root(?=/|$)")
"""A process's root directory (``/proc/self/root``): what follows is an absolute path."""
_PROC_RELATIVE = re.compile(r"^/(?:proc/[^/]+(?:/task/[^/]+)?/(?:cwd|fd/[^/]+)|dev/fd/[^/]+)/")
"""A process's working or an open directory (``/proc/self/cwd``, ``/dev/fd/3``): what follows is relative."""


_SEG = r"(?!\.\.?(?:/|$))[^/]+"
_ALREADY_NORMAL = re.compile(rf"^(?!~)(?![A-Za-z]:)/?{_SEG}(?:/{_SEG})*$")
"""A spelling with nothing to fold: no ``~``, drive, ``.``/``..`` or empty segment, no trailing ``/``."""


def normalise(path: str, *, home: str) -> str:
    """One spelling in normal form (see the module docstring); ``""`` becomes ``"."``."""
    if _ALREADY_NORMAL.match(path):
        return path
    if path == "~" or path.startswith("~/"):
        path = home.rstrip("/") + "/" + path[2:]
    drive = ""
    if m := _DRIVE.match(path):
        drive, path = m.group(1).upper() + ":", path[2:] or "/"
    absolute = path.startswith("/")
    parts: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg != "..":
            parts.append(seg)
        elif parts and parts[-1] != "..":
            parts.pop()
        elif not absolute:
            parts.append("..")
        # an absolute path's ".." at the root stays at the root
    if absolute:
        return drive + "/" + "/".join(parts)
    return drive + ("/".join(parts) or ".")


def normalise_config(path: str, *, home: str) -> str:
    """A path written in a config (a root, a pattern, a protected file) in normal form and NFC."""
    return normalise(unicodedata.normalize("NFC", path), home=home)


_WINDOWS_TAIL = re.compile(r"(?:::\$data)?[. ]*$", re.IGNORECASE)


def _windows(form: str) -> str:
    """What Windows opens for normal-form ``form``: each name without its trailing dots and spaces, and
    without a ``::$DATA`` stream suffix (``.aws./credentials`` is ``.aws/credentials``, ``a.pem::$DATA`` is
    ``a.pem``)."""
    names = []
    for seg in form.split("/"):
        if seg in ("", ".", ".."):
            names.append(seg)
        else:  # a name of dots and spaces only (".. ", "..."): read as the climb it may be, never as a name
            names.append(_WINDOWS_TAIL.sub("", seg) or (".." if seg.count(".") >= 2 else "."))
    return normalise("/".join(names), home="/")


def _aliases(form: str) -> list[str]:
    """Other normal forms that name what normal-form ``form`` names: its NFC form, what a magic link is, what
    Windows opens."""
    out = []
    if not form.isascii() and (nfc := unicodedata.normalize("NFC", form)) != form:
        out.append(nfc)
    for f in (form, *out):
        if (win := _windows(f)) != f:
            out.append(win)
    for f in (form, *out):
        if m := _PROC_ROOT.match(f):
            out.append(f[m.end() :] or "/")
        elif m := _PROC_RELATIVE.match(f):
            out.append(f[m.end() :])
    return out


def _from_file_uri(value: str) -> str | None:
    """The path of a ``file:`` URI (percent-decoded; a remote host kept as ``//host/...``), else None."""
    if value[:5].lower() != "file:":
        return None
    rest = re.split(r"[?#]", value[5:], maxsplit=1)[0]
    if rest.startswith("//"):
        host, _, tail = rest[2:].partition("/")
        rest = "/" + tail if host.lower() in ("", "localhost") else f"//{host}/{tail}"
    path = unquote(rest)
    return path[1:] if _URI_DRIVE.match(path) else path


def interpretations(value: object, *, home: str) -> tuple[str, ...] | None:
    """Every normal form ``value`` may name (the literal spelling first), or None if it cannot be a path."""
    if not isinstance(value, str) or "\x00" in value:
        return None
    if not _NEEDS_READINGS.search(value) and value[:5].lower() != "file:":
        return (normalise(value, home=home),)
    spellings = [value]
    trimmed = _QUOTES.sub("", value.strip())
    if trimmed != value:
        spellings.append(trimmed)
    for s in list(spellings):
        if "\\" in s:
            spellings.append(s.replace("\\", "/"))
    for s in list(spellings):
        if (uri := _from_file_uri(s)) is not None:
            spellings.append(uri)
            if "\\" in uri:
                spellings.append(uri.replace("\\", "/"))
    forms = [normalise(s, home=home) for s in spellings]
    return tuple(dict.fromkeys([*forms, *(a for f in forms for a in _aliases(f))]))


def is_under(path: str, root: str) -> bool:
    """Is normal-form ``path`` the normal-form ``root`` or inside it? Relative and absolute never mix, and a
    relative path that climbs out (``../x``) is under no relative root but its own."""
    if root.endswith("/"):  # "/" or "C:/"
        return path.startswith(root)
    if root == ".":
        return not (path.startswith(("/", "../")) or _DRIVE.match(path) or path == "..")
    return path == root or path.startswith(root + "/")


def parent(path: str) -> str:
    """The directory holding normal-form ``path`` (a root is its own parent)."""
    head, sep, _ = path.rpartition("/")
    if not sep:
        return "."
    return head + "/" if head == "" or head.endswith(":") else head


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob: ``*`` and ``?`` stay inside one segment, ``[...]`` never matches ``/``, ``**`` crosses ``/``
    (``a/**/b`` also matches ``a/b``; ``**/x`` matches ``x`` at any depth)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i) and (i == 0 or pattern[i - 1] == "/"):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := _class_end(pattern, i)) > 0:
            body = pattern[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            escaped = body.replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[")
            out.append(f"(?!/)[{'^' if negate else ''}{escaped}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("(?s:" + "".join(out) + r")\Z")


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the class opened at ``start`` (a ``]`` first in the class is literal), or -1."""
    j = start + 1
    if j < len(pattern) and pattern[j] in "!^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    return pattern.find("]", j)
