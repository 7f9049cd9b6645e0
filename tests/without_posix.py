"""Run mcp-gatekeeper with the POSIX-only parts of Python taken away, as far as they can be on Linux.

    python tests/without_posix.py imports                 # import every module of the package; report failures
    python tests/without_posix.py cli ARGS...             # mcp_gatekeeper.cli.main(ARGS)
    python tests/without_posix.py --keep-calls cli ARGS...  # same, but os.killpg & co. stay (for `wrap`)
    python tests/without_posix.py probe NAME              # every way of importing NAME (to show the block holds)

``fcntl``, ``termios``, ``pty``, ``resource``, ``grp``, ``pwd`` and ``tty`` do not exist on Windows. Here
every import of them raises ``ModuleNotFoundError`` (through ``import`` statements, ``__import__`` and
``importlib.import_module`` alike), as on Windows: the standard library's own optional imports then take
their Windows branch. The exceptions (``GUARDED``) are imports that never run on Windows: the MCP SDK's
transport imports ``fcntl`` only under ``if sys.platform != "win32"``, and psutil's Linux backend is
replaced by its Windows one there (the tests check both reasons still hold).

Unless ``--keep-calls`` is given, the POSIX-only ``os.killpg``, ``os.getpgid`` and ``signal.SIGKILL`` are
removed too (not ``os.getuid``: Linux backends of dependencies import it, their Windows ones do not).
``sys.platform`` is left alone.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import pkgutil
import signal
import sys
import threading
import traceback
import types
from collections.abc import Mapping, Sequence
from typing import Any

POSIX_ONLY = frozenset({"fcntl", "termios", "pty", "resource", "grp", "pwd", "tty"})
GUARDED = {
    "mcp.server.stdio": frozenset({"fcntl"}),  # under `if sys.platform != "win32"`
    "psutil._pslinux": frozenset({"resource"}),  # psutil's Linux backend; on Windows it loads _pswindows instead
}
"""Importer -> POSIX-only modules it may import, because on Windows that import never runs (tests check why)."""
POSIX_CALLS = {os: ("killpg", "getpgid"), signal: ("SIGKILL",)}

_real_import = builtins.__import__
_allowing = threading.local()


def _blocked(name: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"No module named {name!r} (POSIX-only: not on Windows)", name=name)


def _import(
    name: str,
    globals: Mapping[str, Any] | None = None,
    locals: Mapping[str, Any] | None = None,
    fromlist: Sequence[str] = (),
    level: int = 0,
) -> types.ModuleType:
    top = name.partition(".")[0]
    if level != 0 or top not in POSIX_ONLY:
        return _real_import(name, globals, locals, fromlist, level)
    importer = (globals or {}).get("__name__", "?")
    if top not in GUARDED.get(importer, frozenset()):
        raise _blocked(name)
    _allowing.on = True
    try:
        return _real_import(name, globals, locals, fromlist, level)
    finally:
        _allowing.on = False
        sys.modules.pop(top, None)  # never cached for anyone else: importlib.import_module asks the finder again


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in POSIX_ONLY and not getattr(_allowing, "on", False):
            raise _blocked(fullname)
        return None


def install(*, keep_calls: bool) -> None:
    for name in POSIX_ONLY:
        sys.modules.pop(name, None)
    builtins.__import__ = _import
    sys.meta_path.insert(0, _Finder())
    if not keep_calls:
        for module, names in POSIX_CALLS.items():
            for attr in names:
                if hasattr(module, attr):
                    delattr(module, attr)


def import_everything() -> int:
    import mcp_gatekeeper

    failures = {}
    for info in pkgutil.walk_packages(mcp_gatekeeper.__path__, "mcp_gatekeeper."):
        if info.name == "mcp_gatekeeper.__main__":
            continue  # runs the command line on import; `cli` is what it imports
        try:
            importlib.import_module(info.name)
        except BaseException as e:
            failures[info.name] = "".join(traceback.format_exception_only(e)).strip()
    print(
        json.dumps({"failures": failures, "modules": sorted(m for m in sys.modules if m.startswith("mcp_gatekeeper."))})
    )
    return 1 if failures else 0


def probe(name: str) -> int:
    """Try every way of importing ``name``; print which of them got the module (none should)."""
    ways = {
        "import statement": lambda: __import__(name),
        "from-import": lambda: __import__(name, {"__name__": "mcp_gatekeeper.x"}, None, ["x"], 0),
        "importlib.import_module": lambda: importlib.import_module(name),
        "importlib.util.find_spec": lambda: importlib.util.find_spec(name),
    }
    got = []
    for way, attempt in ways.items():
        try:
            if attempt() is not None:
                got.append(way)
        except ImportError:
            pass
    print(json.dumps({"got": got}))
    return 1 if got else 0


def main(argv: list[str]) -> int:
    keep_calls = bool(argv) and argv[0] == "--keep-calls"
    if keep_calls:
        argv = argv[1:]
    install(keep_calls=keep_calls)
    mode, rest = argv[0], argv[1:]
    if mode == "imports":
        return import_everything()
    if mode == "probe":
        return probe(rest[0])
    if mode == "cli":
        from mcp_gatekeeper.cli import main as cli_main

        try:
            return cli_main(rest)
        except SystemExit as e:  # --help
            return e.code if isinstance(e.code, int) else 1
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
