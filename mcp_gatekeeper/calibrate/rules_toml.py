"""A policy rule written as TOML a human can paste into the config, checked by reading it back.

Strings are TOML basic strings (control characters escaped); tool and upstream names are written as globs
that match only themselves (``*``, ``?`` and ``[`` bracketed). :func:`rule_toml` raises ``ValueError`` when
the text would not read back as the same rule (a lone surrogate, a non-finite number).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def literal_glob(name: str) -> str:
    """A glob that matches ``name`` and nothing else."""
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in name)


def _string(text: str) -> str:
    out = ['"']
    for ch in text:
        o = ord(ch)
        if 0xD800 <= o <= 0xDFFF:
            raise ValueError("a lone surrogate cannot be written in TOML")
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _key(key: str) -> str:
    return key if _BARE.match(key) else _string(key)


def value(v: Any) -> str:
    """One TOML value (inline tables and arrays for nested values)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("a non-finite number cannot be written in a rule")
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(str(k))} = {value(x)}" for k, x in v.items()) + " }" if v else "{}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if v is None:
        raise ValueError("TOML has no null")
    raise ValueError(f"cannot write {type(v).__name__} in TOML")


def comment(text: str) -> str:
    """A ``#`` comment line with every control character made visible."""
    return "# " + "".join(ch if ch == "\t" or (ord(ch) >= 0x20 and ord(ch) != 0x7F) else "?" for ch in text)


def rule_toml(rule: Mapping[str, Any], notes: Sequence[str] = ()) -> str:
    """``[[rules]]`` with ``rule``'s keys in order, after ``notes`` as comments; read back to be sure."""
    lines = [comment(n) for n in notes]
    lines.append("[[rules]]")
    lines.extend(f"{_key(k)} = {value(v)}" for k, v in rule.items())
    text = "\n".join(lines) + "\n"
    back = tomllib.loads(text)["rules"][0]
    if back != dict(rule):
        raise ValueError("the rule does not read back as written")
    return text


def masked(text: str, mask: Callable[[str, Any], Any]) -> str:
    """``text`` (one ``[[rules]]`` written by :func:`rule_toml`) with each ``when`` operand passed through
    ``mask(argument name, operand)``, rewritten only if something changed (its comments kept)."""
    rule = tomllib.loads(text)["rules"][0]
    when = rule.get("when")
    if not isinstance(when, dict):
        return text
    out: dict[str, Any] = {}
    for key, pred in when.items():
        name = key.rsplit(".", 1)[-1].split("[", 1)[0]
        if isinstance(pred, dict):
            out[key] = {op: mask(name, arg) for op, arg in pred.items()}
        else:
            out[key] = mask(name, pred)
    if out == when:
        return text
    notes = [line[2:] for line in text.splitlines() if line.startswith("# ")]
    return rule_toml({**rule, "when": out}, notes)
