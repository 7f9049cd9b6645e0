"""The package's imports flow down the layer table of docs/architecture.md (checked by parsing, not importing).

Every ``mcp_gatekeeper`` import counts: module level, inside functions, under ``TYPE_CHECKING``, relative
imports, and ``importlib.import_module("mcp_gatekeeper....")`` with a literal name. A module may import only
from strictly lower layers, except the same-layer pairs listed in ``SAME_LAYER_OK``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "mcp_gatekeeper"
PACKAGE = "mcp_gatekeeper"

LAYERS: dict[str, int] = {
    # 0: values and time, nothing of ours below them
    "__init__": 0,  # the package itself: only __version__
    "errors": 0,
    "models": 0,
    "clock": 0,
    "hostos": 0,  # every difference between Linux, macOS and Windows (third-party imports only)
    "paths": 0,  # pure: what a path argument names, lexically
    "accounts": 0,  # team mode's reviewer accounts as values; scrypt password hashes
    # 1: the config file and pure policy
    "config": 1,
    "devcluster": 1,  # a throwaway PostgreSQL server (demo --team, tests): initdb, pg_ctl, a temp dir
    "argcheck": 1,  # pure: a call's arguments against its tool's inputSchema (jsonschema)
    "policy": 1,
    "predicates": 1,  # pure: one `when` operator on the values a key reaches
    "ownfiles": 1,  # pure: the built-in rule that keeps tool calls off the gatekeeper's own files
    "waiting": 1,  # pure: which way a held call waits, from the client's facts and the config
    "passkeys": 1,  # WebAuthn: the challenge of an approval, registering and checking passkeys (webauthn)
    "signatures": 1,  # Ed25519 signed decisions: the signed statement, key files, the trusted keys
    "names": 1,  # pure: wrap's default upstream name, and whether the config's rules reach an upstream
    # 2: the store and other services over values and config
    "store": 2,  # a package: engine (SQLite), schema, repositories per concept, named queries; all SQL is here
    "notify": 2,
    "principals": 2,  # who a client is (principals on stdio and HTTP) and the agents' bearer-token check
    "sealing": 2,  # HMAC-sealed requestState and its per-home key file
    "links": 2,  # signed short links to a call's card (pure HMAC)
    "telemetry": 2,  # the proxy's telemetry seam (a trace per gated call) and the null telemetry
    "otel": 3,  # OpenTelemetry behind the seam (the `otel` extra; imported by serve only when enabled)
    "upstream_stdio": 2,  # an upstream server process on stdio: the SDK's streams plus a raw lane
    "judgement": 2,  # pure: schema → policy → size limit → pin for one call (planner, shadow and replay share it)
    # 3: holding and deciding; upstream connections
    "gate": 3,
    "team": 3,  # team mode's decisions: reviewer groups, no self-review, quorums (through the gate)
    "upstream": 3,
    "calibrate": 3,  # shadow verdicts, replay of a candidate policy over recorded calls, suggestions (reads the store)
    "stdio": 3,  # serving this process's stdin/stdout on the event loop (no thread per line)
    # 4: the MCP server side and the web side
    "plan": 4,  # one call's Plan, decided once for every transport (gate for leases, upstream for tools)
    "execute": 4,  # carrying out a Plan: record, forward, normalise the result, record the outcome
    "proxy": 4,
    "holding": 4,  # the proxy's per-request waiting (imports gate and MCP types)
    "fastlane": 4,  # allowed tools/call on stdio without the SDK's per-message work (imports proxy and stdio)
    "compensation": 4,  # audit gates: capture before, compensation after a failed review (gate + upstream)
    "web": 4,
    "webauth": 4,
    "webredact": 4,
    "webguard": 4,  # the web app's request guard (imports clock and webauth)
    "reports": 4,  # stats and audit export for the page (named reads of store.queries; masks secrets via webredact)
    "webhttp": 4,  # what the page's handler modules share: WebState, request parsing, refusals
    "webgates": 4,  # the page's API for audit reviews, leases and tool-definition pins
    "apps": 4,  # the decision card in the chat (MCP Apps): its view, nonces and app-only decide tool
    "webcalibrate": 4,  # the page's Calibrate view: suggestions, their replay, shadow verdicts against humans
    "push": 4,  # ntfy-compatible push (masks secrets via webredact)
    "slack": 4,  # decisions from Slack: messages, signature, the endpoint (gate, store, webhttp, webredact)
    "webteam": 4,  # team mode's routes: password login, decisions by named reviewers, approvals
    "review": 4,  # the weekly review report and the review data export (builds on reports; redacts via webredact)
    "webpasskeys": 4,  # the page's passkey API: registration, the options of a passkey-confirmed approval
    # 5: composition and whole-program features
    "serve": 5,
    "doctor": 5,
    "demo": 5,
    "teamdemo": 5,  # demo --team: a throwaway store, the approval service, two gatekeepers, two reviewers
    "install": 5,
    "orderdesk": 5,
    # 6: the command line; 7: `python -m mcp_gatekeeper`
    "cli": 6,
    "cliteam": 6,  # team mode's commands (users, serve); cli adds them to its parser
    "__main__": 7,
}

SAME_LAYER_OK: frozenset[tuple[str, str]] = frozenset(
    {
        ("web", "webauth"),
        ("cli", "cliteam"),
        ("web", "webredact"),
        ("web", "reports"),
        ("web", "webpasskeys"),
        ("webpasskeys", "webhttp"),
        ("webpasskeys", "webteam"),  # a registration's password proof: the login's check and throttle
        ("fastlane", "proxy"),  # the lane serves what Proxy.plan_fast passes, through Proxy.run_fast
        ("fastlane", "plan"),  # and names the Plan it carries
        ("proxy", "plan"),
        ("proxy", "execute"),
        ("execute", "plan"),
        ("execute", "holding"),  # text_result: the one shape of the gatekeeper's own answers
        ("policy", "config"),  # policy compiles the config's rules; architecture.md puts both on layer 1
        ("policy", "predicates"),  # a rule's `when` is a list of predicates
        ("policy", "ownfiles"),  # the built-in rule ahead of the user's rules
        ("predicates", "config"),  # the key syntax and operator names are the config's
        ("waiting", "config"),  # the wait plan reads the [waiting] section
        ("names", "config"),  # the name check reads the rules' upstream patterns and [security]
        ("proxy", "holding"),
        ("proxy", "apps"),  # the card's resource, tags, data and decide tool for MCP Apps clients
        ("apps", "holding"),  # text_result: the one shape of the gatekeeper's own answers
        ("apps", "webhttp"),  # the page's plain-words headline and inexact-number check, shared with the card
        ("proxy", "compensation"),
        ("web", "webguard"),
        ("web", "webhttp"),
        ("web", "webgates"),
        ("web", "webcalibrate"),
        ("webcalibrate", "webhttp"),
        ("webcalibrate", "webredact"),
        ("webgates", "webhttp"),
        ("team", "gate"),  # team mode decides through the gate, after its own checks
        ("web", "webteam"),  # team mode's routes come before the page's own
        ("webteam", "webauth"),
        ("webteam", "webgates"),
        ("webteam", "webhttp"),
        ("webgates", "webredact"),
        ("webhttp", "webauth"),
        ("webhttp", "webredact"),
        ("webguard", "webauth"),
        ("push", "webredact"),  # a push names the call in the page's words, secrets masked the same way
        ("slack", "webredact"),  # the message masks secrets as the card does
        ("slack", "webhttp"),  # plain_headline (the card's words) and the page's live-view nudge
        ("web", "slack"),  # the page serves Slack's interaction endpoint
        ("reports", "webredact"),  # the audit export masks secrets the same way the card does
        ("review", "reports"),  # the weekly review builds on the Stats page's figures
        ("review", "webredact"),  # the review export redacts secrets as the audit export does
        ("web", "review"),  # the page serves the weekly review
        ("doctor", "install"),  # doctor reads the client configs install writes
        ("doctor", "serve"),  # and opens the store the way every command does
        ("demo", "serve"),  # the demo's login links open the store the way every command does (open_store)
    }
)

# Known violations: each is a bug for the lead (a strict xfail turns red once it is fixed).
KNOWN_VIOLATIONS: dict[str, str] = {}

GRAB_BAG_NAMES = ("utils", "util", "helpers")

SQL_OWNER = "store"
"""The one concept that holds SQL and talks to the database driver; every other module asks it named questions."""
SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX|VIEW)|ALTER\s+TABLE"
    r"|DROP\s+(TABLE|INDEX)|PRAGMA|BEGIN\s+IMMEDIATE|COMMIT|json_extract|json_each)\b"
)
DB_DRIVERS = ("sqlite3", "aiosqlite", "psycopg", "psycopg_pool", "asyncpg")


def module_name(path: Path) -> str:
    """``mcp_gatekeeper/store.py`` → ``store``; ``mcp_gatekeeper/store/sqlite.py`` → ``store.sqlite``."""
    rel = path.relative_to(PACKAGE_DIR).with_suffix("")
    parts = rel.parts
    if len(parts) > 1 and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def discover() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in p.parts}


MODULES = discover()
TOP_LEVEL_MODULES = {name.split(".")[0] for name in MODULES}


def concept(dotted: str) -> str:
    """The layer-table entry an imported name belongs to (``mcp_gatekeeper.store.sqlite`` → ``store``)."""
    rest = dotted.removeprefix(PACKAGE).lstrip(".")
    return rest.split(".")[0] if rest else "__init__"


def imports_of(source: str, module: str) -> set[str]:
    """Every concept of ours that ``source`` (the module ``module``) imports, anywhere in the file."""
    is_package = module == "__init__" or (PACKAGE_DIR / module.replace(".", "/")).is_dir()
    package_parts = [PACKAGE, *module.split(".")] if is_package else [PACKAGE, *module.split(".")[:-1]]
    if module == "__init__":
        package_parts = [PACKAGE]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(concept(a.name) for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            if target == PACKAGE:  # `from mcp_gatekeeper import install` names a module, or a package attribute
                for a in node.names:
                    found.add(a.name if a.name in TOP_LEVEL_MODULES else "__init__")
            else:
                found.add(concept(target))
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            arg = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and arg.value.split(".")[0] == PACKAGE
            ):
                found.add(concept(arg.value))
    own = module.split(".")[0]
    found.discard(own)  # a concept split into a sub-package may import its own parts
    return found


def third_party_imports(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
    return found


def _placement_help(names: set[str] | list[str]) -> str:
    return (
        f"new module(s) {sorted(names)}: place each in LAYERS in tests/test_layering.py (and in the module map of "
        "docs/architecture.md) at a layer above everything it imports and below everything that imports it"
    )


# ---------------------------------------------------------------------------------------------- the collector


def test_the_collector_sees_every_kind_of_import() -> None:
    source = """
from __future__ import annotations
import json
import mcp_gatekeeper.models
from mcp_gatekeeper import errors, __version__
from mcp_gatekeeper.clock import Clock
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from mcp_gatekeeper.store import Store
from . import config
from .policy import Policy
import importlib

def late():
    from mcp_gatekeeper.gate import Gate
    import mcp_gatekeeper.upstream as up
    return importlib.import_module("mcp_gatekeeper.proxy")

class K:
    def m(self):
        from mcp_gatekeeper.web import app
"""
    assert imports_of(source, "cli") == {
        "models",
        "errors",
        "__init__",
        "clock",
        "store",
        "config",
        "policy",
        "gate",
        "upstream",
        "proxy",
        "web",
    }


def test_relative_imports_inside_a_sub_package_resolve() -> None:
    assert imports_of("from ..models import State\nfrom . import sqlite\n", "store.postgres") == {"models"}


# ---------------------------------------------------------------------------------------------- the rules


def test_the_package_was_found() -> None:
    assert {"errors", "models", "store", "gate", "cli"} <= TOP_LEVEL_MODULES


def test_every_module_is_placed_in_the_layer_table() -> None:
    unplaced = TOP_LEVEL_MODULES - set(LAYERS)
    assert not unplaced, _placement_help(unplaced)


def _params() -> list[object]:
    params: list[object] = []
    for name in sorted(MODULES):
        top = name.split(".")[0]
        marks = []
        if top in KNOWN_VIOLATIONS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_VIOLATIONS[top]))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.mark.parametrize("module", _params())
def test_imports_flow_down(module: str) -> None:
    own = module.split(".")[0]
    assert own in LAYERS, _placement_help([own])
    layer = LAYERS[own]
    imported = imports_of(MODULES[module].read_text(encoding="utf-8"), module)
    unknown = sorted(imported - set(LAYERS))
    assert not unknown, f"{module} imports {unknown}, which are not in the layer table. " + _placement_help(unknown)
    bad = sorted(
        f"{dep} (layer {LAYERS[dep]})"
        for dep in imported
        if LAYERS[dep] > layer or (LAYERS[dep] == layer and (own, dep) not in SAME_LAYER_OK)
    )
    assert not bad, f"{module} (layer {layer}) may import only from lower layers, but imports {', '.join(bad)}"


def test_same_layer_exceptions_are_really_same_layer_or_lower() -> None:
    for importer, imported in SAME_LAYER_OK:
        assert LAYERS[imported] <= LAYERS[importer], (importer, imported)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_httpx2_not_httpx(module: str) -> None:
    names = third_party_imports(MODULES[module].read_text(encoding="utf-8"))
    banned = sorted(n for n in names if n == "httpx" or n.startswith("httpx."))
    assert not banned, f"{module} imports {banned}: use httpx2"


def sql_in(source: str) -> list[str]:
    """The string literals (f-string parts included) of ``source`` that read as SQL, with their line numbers."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_WORDS.search(node.value):
            found.append(f"line {node.lineno}: {node.value.strip()[:60]!r}")
    return sorted(found, key=lambda x: int(x.split(":")[0].split()[1]))


def test_the_sql_finder_sees_sql_in_every_spelling() -> None:
    source = """
a = "SELECT id FROM calls"
b = f"SELECT {cols} FROM calls WHERE id = ?"
c = ("UPDATE calls SET state = ?" " WHERE id = ?")
d = "insert or ignore into x"  # lower case: not how this code base writes SQL, and prose is full of "select"
e = "INSERT OR IGNORE INTO used_states (nonce) VALUES (?)"
f = "PRAGMA data_version"
"""
    assert [x.split(":")[0] for x in sql_in(source)] == ["line 2", "line 3", "line 4", "line 6", "line 7"]
    assert sql_in('x = "select the rule to apply; delete the lease from the page"') == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.split(".")[0] != SQL_OWNER))
def test_no_sql_outside_the_store(module: str) -> None:
    source = MODULES[module].read_text(encoding="utf-8")
    assert not sql_in(source), f"{module} contains SQL; add a named method to mcp_gatekeeper/store/ instead"
    drivers = sorted(n for n in third_party_imports(source) if n.split(".")[0] in DB_DRIVERS)
    assert not drivers, f"{module} imports the database driver {drivers}; only mcp_gatekeeper/store/ may"


def test_no_grab_bag_modules() -> None:
    bags = sorted(name for name in MODULES if any(part in GRAB_BAG_NAMES for part in name.split(".")))
    assert not bags, f"{bags}: split by concept, never into utils.py (docs/architecture.md)"
