"""Run mcp-gatekeeper as if the ``otel`` extra were not installed: every import of the OpenTelemetry SDK fails.

    python tests/without_otel.py imports        # import every module but mcp_gatekeeper.otel; report attempts
    python tests/without_otel.py cli ARGS...    # mcp_gatekeeper.cli.main(ARGS) with OpenTelemetry blocked

The extra is ``opentelemetry-sdk`` (the API, ``opentelemetry-api``, is a dependency of the MCP SDK and always
there). Each attempt to import ``opentelemetry.sdk`` or an exporter package is recorded and refused with
``ModuleNotFoundError``, as on a machine without the extra. ``imports`` prints JSON: the modules that failed
to import and every attempt to reach the SDK (there must be none: telemetry off costs no import). ``cli``
prints the attempts, and whether ``mcp_gatekeeper.otel`` was loaded, on stderr's last line.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import json
import pkgutil
import sys
import traceback
import types
from collections.abc import Sequence

BLOCKED = ("opentelemetry.sdk", "opentelemetry.exporter")
attempts: list[str] = []


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.startswith(BLOCKED):
            attempts.append(fullname)
            raise ModuleNotFoundError(f"No module named {fullname!r} (the otel extra is not installed)", name=fullname)
        return None


def install() -> None:
    for name in [m for m in sys.modules if m.startswith(BLOCKED)]:
        del sys.modules[name]
    sys.meta_path.insert(0, _Block())


def import_everything() -> int:
    import mcp_gatekeeper

    failures = {}
    for info in pkgutil.walk_packages(mcp_gatekeeper.__path__, "mcp_gatekeeper."):
        if info.name in ("mcp_gatekeeper.__main__", "mcp_gatekeeper.otel"):
            continue  # __main__ runs the command line; otel is the extra's own module
        try:
            importlib.import_module(info.name)
        except BaseException as e:
            failures[info.name] = "".join(traceback.format_exception_only(e)).strip()
    print(json.dumps({"failures": failures, "attempts": attempts}))
    return 1 if failures or attempts else 0


def main(argv: list[str]) -> int:
    install()
    mode, rest = argv[0], argv[1:]
    if mode == "imports":
        return import_everything()
    if mode == "cli":
        from mcp_gatekeeper.cli import main as cli_main

        code = cli_main(rest)
        print(json.dumps({"attempts": attempts, "otel_module": "mcp_gatekeeper.otel" in sys.modules}), file=sys.stderr)
        return code
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
