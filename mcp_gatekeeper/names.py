"""Upstream names: what ``wrap`` calls an upstream it is not told the name of, and whether rules reach it.

Rules pick upstreams by name (``upstream = "fs"``). A process that serves an upstream under another name
(``wrap --name filesystem``) gets none of those rules and falls to the built-in default policy, where a read
of ``.env`` passes. :func:`unreached` finds that case so it is said out loud (stderr, the page, ``doctor``,
``check-config --name``) and, by default, held (``[security] unmatched_upstream = "hold"``).

What is a mistake and what is not: a config shared by several servers names upstreams this process never
serves, and that is fine. The mistake is an upstream that *no* rule names while the config clearly targets
other names: it gets no rule of its own. Wildcard rules (``upstream = "*"``) apply everywhere and so say
nothing about names; a config whose rules are all wildcards targets no name and is never flagged.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mcp_gatekeeper.config import GatekeeperConfig, RuleConfig

# commands that start the real server rather than being it: their arguments name the server
_LAUNCHER = re.compile(
    r"^(npx|npm|pnpm|pnpx|yarn|bunx|bun|deno|node|nodejs|uvx|uv|pipx|pip|poetry|hatch|env|sh|bash|zsh|cmd|"
    r"exec|docker|podman|python|pythonw|py|python\d+(\.\d+)?)$"
)
_SUBCOMMAND = frozenset({"run", "exec", "dlx", "x", "tool", "-m", "-c", "/c"})
_EXTENSION = re.compile(r"\.(js|mjs|cjs|ts|py|exe|cmd|bat|sh)$", re.I)
_PREFIXES = ("mcp-server-", "server-mcp-", "server-", "mcp-")
_SUFFIXES = ("-mcp-server", "-server-mcp", "-mcp", "-server")
_GENERIC_HOST = frozenset({"mcp", "api", "www", "sse", "app", "server"})


def clean_name(raw: str) -> str:
    """A name rules can use: letters, digits, ``_ . -``; anything else becomes ``-``."""
    name = "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in raw)
    name = re.sub(r"-{2,}", "-", name.replace("__", "_")).strip("-_.")
    return name or "upstream"


def _strip_affixes(word: str) -> str:
    probe = word.lower().replace("_", "-")
    for prefix in _PREFIXES:
        if probe.startswith(prefix) and len(probe) > len(prefix):
            word, probe = word[len(prefix) :], probe[len(prefix) :]
            break
    for suffix in _SUFFIXES:
        if probe.endswith(suffix) and len(probe) > len(suffix):
            word = word[: -len(suffix)]
            break
    return word


def name_for_command(command: Sequence[str]) -> str:
    """The name ``wrap -- CMD ARGS`` uses without ``--name``: the server's package or script, trimmed.

    ``npx -y @modelcontextprotocol/server-filesystem /dir`` → ``filesystem``; ``uvx mcp-server-git`` → ``git``;
    ``python -m mcp_server_time`` → ``time``; ``node build/index.js`` → ``index``. Launchers (npx, uvx, node,
    python, docker run, ...), their options and ``NAME=value`` words are skipped; an npm scope, a version and a file extension are
    dropped; then one ``mcp-server-``/``server-``/``mcp-`` prefix and one ``-mcp``/``-server`` suffix.
    """
    if not command:
        return "upstream"
    chosen = None
    for token in command:
        base = re.split(r"[/\\]", token)[-1]
        bare = _EXTENSION.sub("", base).lower() if base.lower().endswith((".exe", ".cmd", ".bat")) else base.lower()
        if _LAUNCHER.match(bare) or token.startswith("-") or token in _SUBCOMMAND or "=" in token:
            continue  # a launcher, an option, or an assignment (env FOO=1, --from pkg==1.0)
        chosen = token
        break
    if chosen is None:
        chosen = command[0]
    word = chosen
    if "@" in word[1:]:  # an npm version: pkg@1.2.3, @scope/pkg@latest
        word = word[0] + word[1:].split("@", 1)[0]
    word = re.split(r"[/\\]", word.rstrip("/\\"))[-1]  # an npm scope, a path, an image repository
    word = word.split(":", 1)[0]  # an image tag
    word = _EXTENSION.sub("", word)
    return clean_name(_strip_affixes(word))


def name_for_url(url: str) -> str:
    """The name ``wrap --url URL`` uses without ``--name``: the host's distinctive label (``mcp.linear.app`` →
    ``linear``), or for a local address the path's first distinctive segment, else ``remote``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    labels = [x for x in host.split(".") if x]
    local = host in ("localhost", "") or host.replace(".", "").isdigit() or ":" in host
    if not local and len(labels) > 1:
        for label in labels[:-1]:
            if label.lower() not in _GENERIC_HOST:
                return clean_name(label)
    for segment in parts.path.split("/"):
        if segment and segment.lower() not in _GENERIC_HOST:
            return clean_name(_strip_affixes(segment))
    return "remote"


def _patterns(rule: RuleConfig) -> list[str]:
    return [rule.upstream] if isinstance(rule.upstream, str) else list(rule.upstream)


def targeted_names(config: GatekeeperConfig) -> list[str]:
    """The upstream names (or globs) the config's rules are scoped to, in order of first use."""
    out: list[str] = []
    for rule in config.rules:
        pats = _patterns(rule)
        if "*" in pats:
            continue  # a wildcard rule applies to every upstream
        out.extend(p for p in pats if p not in out)
    return out


def _subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(ch in it for ch in short)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """The closest name among ``candidates``: spelling (``gti`` → ``git``) or abbreviation (``fs`` ↔ ``filesystem``)."""
    literal = [c for c in candidates if not set("*?[") & set(c)]
    close = difflib.get_close_matches(name, literal, n=1, cutoff=0.6)
    if close:
        return close[0]
    low = name.lower()
    for c in literal:
        cl = c.lower()
        if (
            len(cl) >= 2
            and len(low) >= 2
            and (cl.startswith(low) or low.startswith(cl) or _subsequence(cl, low) or _subsequence(low, cl))
        ):
            return c
    return None


@dataclass(frozen=True, slots=True)
class Unreached:
    """An upstream this process serves that no scoped rule can apply to."""

    upstream: str
    targeted: tuple[str, ...]
    suggestion: str | None
    mode: str
    """``hold`` (its calls no rule matches are held) or ``warn`` (the built-in default policy applies)."""

    def message(self) -> str:
        names = ", ".join(repr(n) for n in self.targeted)
        what = (
            'its calls that no rule matches are held for a human ([security] unmatched_upstream = "hold")'
            if self.mode == "hold"
            else 'its calls fall to the built-in default policy ([security] unmatched_upstream = "warn")'
        )
        hint = f" Did you mean {self.suggestion!r}?" if self.suggestion else ""
        return (
            f"upstream {self.upstream!r} matches none of the rules' upstream names ({names}); {what}.{hint}"
            f" Start it with --name NAME matching the rules, or add rules for {self.upstream!r}."
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "unmatched_upstream",
            "upstream": self.upstream,
            "targeted": list(self.targeted),
            "suggestion": self.suggestion,
            "mode": self.mode,
            "message": self.message(),
        }


def unreached(config: GatekeeperConfig, served: Iterable[str]) -> list[Unreached]:
    """The served upstreams that get no rule of their own while the config's rules target other names."""
    targeted = targeted_names(config)
    if not targeted:
        return []
    out = []
    for name in served:
        if any(fnmatch.fnmatchcase(name, p) for p in targeted):
            continue
        out.append(Unreached(name, tuple(targeted), did_you_mean(name, targeted), config.security.unmatched_upstream))
    return out


def holding_unreached(config: GatekeeperConfig, problems: Sequence[Unreached]) -> GatekeeperConfig:
    """With ``unmatched_upstream = "hold"``: the config plus a last rule that holds every call to an unreached
    upstream that no rule matched (wildcard rules still apply first: a wildcard deny stays a deny)."""
    names = [p.upstream for p in problems if p.mode == "hold"]
    if not names:
        return config
    guard = RuleConfig(
        name="unmatched-upstream",
        upstream=names,
        gate="hard",
        risk="high",
        summary="No rule in the config targets this upstream's name; held until the name is fixed",
    )
    return config.model_copy(update={"rules": [*config.rules, guard]})
