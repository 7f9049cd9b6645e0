"""The built-in ``protect-own-files`` rule: no tool call may name the gatekeeper's own files.

The agent must not read the ui-token (it approves calls), the database or the key, nor change the config.
The composition root says which files those are (``serve.own_files``); this module only compares. Pure.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_gatekeeper import paths


@dataclass(frozen=True, slots=True)
class OwnFiles:
    """The gatekeeper's own files, which no tool call may name (see :meth:`Policy.evaluate`).

    ``dirs`` (the data home, also through its resolved symlinks) protect everything inside them; ``files``
    (database, ``-wal``/``-shm``, token and key files, the config file, and their resolved targets) protect
    themselves. Absolute paths, given by the composition root (``serve.own_files``)."""

    dirs: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


SELF_PROTECTION_RULE = "protect-own-files"
_TOKEN_SPLIT = re.compile(r"[\s'\"=;|&<>(),`]+")
_TOKEN_SCAN_LIMIT = 4096
_ALNUM = re.compile(r"[^\W_]")


def _strings(value: Any) -> Iterator[str]:
    """Every string in the arguments, at any depth, object keys included, and inside a string that holds a
    JSON object or array (a typed upstream parses it back: see ``predicates._readings``)."""
    if isinstance(value, str):
        yield value
        if value.lstrip()[:1] in ("{", "["):
            try:
                parsed = json.loads(value)
            except (ValueError, RecursionError):
                return
            if isinstance(parsed, dict | list):
                yield from _strings(parsed)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


class OwnFilesCheck:
    """The built-in rule ahead of every user rule: a call that names the gatekeeper's own files is denied.

    Each path is compared as spelled and ignoring case (on macOS and Windows ``UI-Token`` is ``ui-token``)."""

    def __init__(self, own: OwnFiles, home: str, *, fold: bool = False) -> None:
        self.home, self.fold = home, fold
        norm = (
            [paths.normalise_config(d, home=home) for d in own.dirs],
            [paths.normalise_config(f, home=home) for f in own.files],
        )
        dirs, files = ([p.casefold() for p in ps] if fold else ps for ps in norm)
        self.dirs, self.files = tuple(dict.fromkeys(dirs)), tuple(dict.fromkeys(files))
        self.dir_parts = [d.strip("/").split("/") for d in self.dirs]
        self.file_parts = [f.strip("/").split("/") for f in self.files]
        self.folded = None if fold else OwnFilesCheck(own, home, fold=True)
        every = [p.casefold().strip("/").split("/") for p in (*self.dirs, *self.files)]
        last = sorted({parts[-1] for parts in every if parts[-1]} | {"~", "%"})
        names = sorted({n for parts in every for n in parts if n and not n.endswith(":")})
        self.last_names = re.compile("|".join(map(re.escape, last)))
        self.all_names = re.compile("|".join(map(re.escape, names)) or r"(?!)")
        absolute = sorted({p.casefold().rstrip("/") for p in (*self.dirs, *self.files) if p.strip("/")}, key=len)
        self.inside_text = re.compile(
            "(?:" + "|".join(map(re.escape, reversed(absolute))) + r")(?![^/\\\s'\"`;|&<>()])" if absolute else r"(?!)"
        )

    def _may_name(self, f: str, *, ancestors: bool) -> bool:
        """A cheap first look at ``f`` (a string in NFC, case-folded): normalising never invents a name (except
        ``~`` and ``%``-escapes), so a string naming a protected path contains that path's last name, and a
        folder holding one contains one of its names (or is the root)."""
        if self.last_names.search(f):
            return True
        return ancestors and (self.all_names.search(f) is not None or not _ALNUM.search(f))

    def hit(self, arguments: Mapping[str, Any], *, ancestors: bool) -> str | None:
        """The first argument string naming a protected file (``ancestors``: or a folder holding one)."""
        assert self.folded is not None
        for s in _strings(arguments):
            f = (s if s.isascii() else unicodedata.normalize("NFC", s)).casefold()
            if not self._may_name(f, ancestors=ancestors):
                continue
            candidates = [s]
            if len(s) <= _TOKEN_SCAN_LIMIT and "\n" not in s:
                candidates.extend(t for t in _TOKEN_SPLIT.split(s) if t and t != s)
                if self.inside_text.search(f):  # `cat${IFS}/…/ui-token`: no word split finds it
                    return s
            for c in candidates:
                for form in paths.interpretations(c, home=self.home) or ():
                    if self._names(form, ancestors=ancestors) or self.folded._names(
                        form.casefold(), ancestors=ancestors
                    ):
                        return s
        return None

    def _names(self, form: str, *, ancestors: bool) -> bool:
        protected = self.dirs + self.files
        if form.startswith("/") or form[1:3] == ":/":
            if any(paths.is_under(form, p) for p in self.dirs) or form in self.files:
                return True
            return ancestors and any(paths.is_under(p, form) for p in protected)
        parts = [p for p in form.split("/") if p != ".."]  # climbing out first: judge where it lands
        # a relative path resolves against a folder we cannot know. Caught: it begins with the last two names
        # of a protected folder (``state/mcp-gatekeeper/...``), or with its last name followed by one of its
        # files (``mcp-gatekeeper/ui-token``: a project that happens to be called mcp-gatekeeper is left
        # alone), or it is the tail (two names or more) of a protected file.
        for folder, dp in zip(self.dirs, self.dir_parts, strict=True):
            for k in range(1, min(len(parts), len(dp)) + 1):
                if parts[:k] != dp[-k:]:
                    continue
                if k >= 2 or (len(parts) > 1 and "/".join([folder.rstrip("/"), *parts[1:]]) in self.files):
                    return True
        return any(len(parts) >= 2 and fp[-len(parts) :] == parts for fp in self.file_parts)
