"""Secrets in arguments: find what looks like a key or token, so the card masks it and the export hashes it.

Two kinds of evidence (threat model §1.4 #11, H4):

* a **pattern** anywhere in a string: AWS access key ids, ``sk-...``, ``ghp_...``/``github_pat_...``,
  Slack tokens, JWTs, ``Bearer ...``, PEM private keys; only the matching span is secret;
* a **key name** like password / secret / token / api_key holding a long, high-entropy string: the
  whole value is secret.

Spans are reported in UTF-16 code units as well, because that is how the page's JavaScript counts.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("API secret key (sk-…)", re.compile(r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_-]{20,}")),
    ("GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})")),
    ("Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("JSON Web Token", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("Bearer credential", re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{12,}")),
    (
        "private key (PEM)",
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S),
    ),
)
_SECRET_KEY = re.compile(
    r"(?i)(pass(word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
    r"|auth(orization)?|credential|session[_-]?id|cookie)"
)
_PASSWORD_KEY = re.compile(r"(?i)^(pass(word|wd|phrase)?|pwd)$")


@dataclass(frozen=True, slots=True)
class SecretHit:
    """A secret at ``path`` (keys and list indexes from the arguments' root), in ``[start, end)``."""

    path: tuple[str | int, ...]
    kind: str
    start: int
    end: int
    start16: int
    end16: int

    def to_json(self) -> dict[str, Any]:
        return {"path": list(self.path), "kind": self.kind, "start": self.start16, "end": self.end16}


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _u16(text: str, index: int) -> int:
    return len(text[:index].encode("utf-16-le")) // 2


def _scan_string(path: tuple[str | int, ...], key: str | None, value: str) -> list[SecretHit]:
    hits: list[SecretHit] = []
    taken: list[tuple[int, int]] = []
    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(value):
            s, e = m.span()
            if any(s < te and ts < e for ts, te in taken):
                continue
            taken.append((s, e))
            hits.append(SecretHit(path, kind, s, e, _u16(value, s), _u16(value, e)))
    if hits or key is None or not value:
        return sorted(hits, key=lambda h: h.start)
    if (_PASSWORD_KEY.match(key) and len(value) >= 4) or (
        _SECRET_KEY.search(key) and len(value) >= 12 and entropy(value) >= 3.0
    ):
        return [SecretHit(path, f"value of '{key}'", 0, len(value), 0, _u16(value, len(value)))]
    return []


def find_secrets(value: Any, path: tuple[str | int, ...] = (), key: str | None = None) -> list[SecretHit]:
    """Every secret-looking string inside a JSON value (depth-first, keys in order)."""
    out: list[SecretHit] = []
    stack: list[tuple[Any, tuple[str | int, ...], str | None]] = [(value, path, key)]
    while stack:
        v, p, k = stack.pop()
        if isinstance(v, str):
            out.extend(_scan_string(p, k, v))
        elif isinstance(v, dict):
            stack.extend((child, (*p, str(ck)), str(ck)) for ck, child in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((child, (*p, i), k) for i, child in reversed(list(enumerate(v))))
    return out


def redact(value: Any, hasher: Callable[[str], str]) -> Any:
    """A copy of ``value`` with every secret span replaced by ``hasher(secret)`` (an HMAC in the export)."""
    if isinstance(value, str):
        hits = _scan_string((), None, value)
        return _replace(value, hits, hasher)
    return _redact(value, None, hasher)


def _replace(text: str, hits: list[SecretHit], hasher: Callable[[str], str]) -> str:
    out, pos = [], 0
    for h in hits:
        out.append(text[pos : h.start])
        out.append(f"⟦{h.kind}: {hasher(text[h.start : h.end])}⟧")
        pos = h.end
    out.append(text[pos:])
    return "".join(out)


def _redact(value: Any, key: str | None, hasher: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return _replace(value, _scan_string((), key, value), hasher)
    if isinstance(value, dict):
        return {k: _redact(v, str(k), hasher) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key, hasher) for v in value]
    return value
