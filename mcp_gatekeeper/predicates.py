"""``when`` predicates: one operator on the value(s) a key reaches in a call's arguments.

A key is a dotted path (``customer.email``, ``items.0.sku``) that may reach into lists (``paths[*]``,
``edits[*].path``). An operator answers True, False, or :class:`Unreadable` when the value is not of the kind
it needs (a number, a string, a path, a list): the policy refuses such a call rather than guess. Path
operators compare normalised paths (``paths.py``); numbers compare as exact decimals, never booleans, NaN or
infinities. Pure: no I/O.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from mcp_gatekeeper import paths
from mcp_gatekeeper.config import EACH, NUMBER_OPS, PATH_OPS, parse_when_key

MISSING = object()


class Unreadable:
    """A value a predicate cannot read as what its operator needs (a number, a string, a path, a list)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def lookup(arguments: Any, path: str) -> Any:
    """The value at a dotted path (``customer.email``, ``items.0.sku``), or ``MISSING``."""
    return _step(arguments, path.split("."))


def _step(value: Any, steps: Sequence[str]) -> Any:
    for part in steps:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


def _json_text(value: str) -> Any:
    """The object or array a string holds as JSON text (``"{\\"amount\\": 5}"``), else ``MISSING``."""
    if value.lstrip()[:1] not in ("{", "["):
        return MISSING
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return MISSING
    return parsed if isinstance(parsed, dict | list) else MISSING


def _readings(value: Any, steps: Sequence[str]) -> list[Any]:
    """What a dotted path reaches: like :func:`lookup`, but a string met on the way that holds a JSON object
    or array is read both ways: as the string (the path is ``MISSING`` in it) and as what it holds. Typed
    upstreams parse such a string back (MCPServer does for any argument not typed ``str``, even where the
    schema's ``anyOf`` lets a string through), so the policy must see what they will act on."""
    for i, part in enumerate(steps):
        if isinstance(value, str) and (parsed := _json_text(value)) is not MISSING:
            return [MISSING, *_readings(parsed, steps[i:])]
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return [MISSING]
    return [value]


def _elements(arguments: Any, steps: Sequence[str]) -> list[Any] | Unreadable:
    """The values a ``when`` key reaches, every reading of it (:func:`_readings`): without ``[*]`` one value
    (maybe ``MISSING``) per reading, else every element."""
    if EACH not in steps:
        return _readings(arguments, steps)
    at = steps.index(EACH)
    out: list[Any] = []
    for head in _readings(arguments, steps[:at]):
        if head is MISSING:
            out.append(MISSING)
            continue
        if not isinstance(head, list):
            return Unreadable(f"{'.'.join(steps[:at])} is {_kind(head)}, not a list")
        for item in head:
            got = _elements(item, steps[at + 1 :])
            if isinstance(got, Unreadable):
                return got
            out.extend(got)
    return out


def _kind(value: Any) -> str:
    return "missing" if value is MISSING else "null" if value is None else type(value).__name__


def _number(value: Any) -> Decimal | None:
    """A finite number (or numeric string) as an exact Decimal; booleans, NaN and infinities are not numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        d = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``, lists and objects compare element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


_NEGATIVE = frozenset(["ne", "not_in", "not_glob", "not_under", "not_path_glob"])
_NUMBER_CMP = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


class Predicate:
    """One operator on one ``when`` key. ``test`` answers True, False or :class:`Unreadable`.

    With ``[*]`` in the key the operator is tried on every element, and ``quantifier`` says whether one
    (``any``) or every (``all``) element must satisfy it; a list with no element satisfies neither. A path
    operator tries every normal form of each value (``paths.interpretations``) under the same quantifier,
    each both as spelled and ignoring case (``.ENV`` is ``.env`` on macOS and Windows): a deny or hold needs
    one reading to match, an allow needs all of them."""

    __slots__ = ("folded", "home", "key", "number", "op", "operand", "quantifier", "regex", "roots", "steps")

    def __init__(self, key: str, op: str, operand: Any, *, quantifier: str, home: str) -> None:
        explicit, self.steps = parse_when_key(key)
        self.key, self.op, self.operand, self.home = key, op, operand, home
        self.quantifier = explicit or quantifier
        self.regex: re.Pattern[str] | None = None
        self.folded: re.Pattern[str] | None = None  # the same pattern, ignoring case (path operators)
        self.roots: tuple[str, ...] = ()
        self.number = _number(operand) if op in NUMBER_OPS else None
        if op in ("glob", "not_glob"):
            self.regex = re.compile(fnmatch.translate(str(operand)))
        elif op in ("regex", "path_regex"):
            self.regex = re.compile(str(operand))
            self.folded = re.compile(str(operand), re.IGNORECASE) if op == "path_regex" else None
        elif op in ("under", "not_under", "path_glob", "not_path_glob"):
            self.roots = tuple(_config_path(r, home) for r in ([operand] if isinstance(operand, str) else operand))
            if op in ("path_glob", "not_path_glob"):
                self.regex = re.compile("|".join(f"(?:{paths.glob_regex(r).pattern})" for r in self.roots))
                self.folded = re.compile(self.regex.pattern, re.IGNORECASE)

    def test(self, arguments: Mapping[str, Any]) -> bool | Unreadable:
        values = _elements(arguments, self.steps)
        if isinstance(values, Unreadable):
            return values
        results: list[bool] = []
        for value in values:
            got = self._one(value)
            if isinstance(got, Unreadable):
                return got
            results.extend(got)
        if not results:
            return False
        return any(results) if self.quantifier == "any" else all(results)

    def holds(self, arguments: Mapping[str, Any]) -> bool:
        """True only when the predicate is satisfied (an unreadable value does not satisfy it)."""
        return self.test(arguments) is True

    def _one(self, value: Any) -> list[bool] | Unreadable:
        op = self.op
        if op == "exists":
            return [(value is not MISSING) == bool(self.operand)]
        if value is MISSING:
            return [op in _NEGATIVE]
        if op in ("eq", "ne"):
            return [_equal(value, self.operand) == (op == "eq")]
        if op in ("in", "not_in"):
            return [any(_equal(value, x) for x in self.operand) == (op == "in")]
        if op in _NUMBER_CMP:
            a = _number(value)
            if a is None or self.number is None:
                return Unreadable(f"{self.key} is {_shown(value)}, not a finite number")
            return [bool(_NUMBER_CMP[op](a, self.number))]
        if op.startswith("len_"):
            if not isinstance(value, list | str | Mapping) or self.number is None:
                return Unreadable(f"{self.key} is {_kind(value)}, which has no length")
            return [bool(_NUMBER_CMP[op[4:]](Decimal(len(value)), self.number))]
        if op in PATH_OPS:
            forms = paths.interpretations(value, home=self.home)
            if forms is None:
                return Unreadable(f"{self.key} is {_kind(value)}, not a path")
            # A case-blind match includes the exact one, so of the two readings of each form only one can
            # decide the quantifier: the case-blind one where a match counts towards it (a positive operator
            # under "any", a negated one under "all"), the exact one otherwise.
            folded = (self.quantifier == "any") == (self.op not in _NEGATIVE)
            return [self._path(f, folded) for f in forms]
        if not isinstance(value, str):
            return Unreadable(f"{self.key} is {_kind(value)}, not a string")
        assert self.regex is not None
        if op == "regex":
            return [self.regex.search(value) is not None]
        return [(self.regex.match(value) is not None) == (op == "glob")]

    def _path(self, form: str, folded: bool) -> bool:
        op = self.op
        if op in ("under", "not_under"):
            if folded:
                inside = any(paths.is_under(form.casefold(), r.casefold()) for r in self.roots)
            else:
                inside = any(paths.is_under(form, r) for r in self.roots)
            return inside == (op == "under")
        regex = self.folded if folded else self.regex
        assert regex is not None
        if op == "path_regex":
            return regex.search(form) is not None
        return (regex.match(form) is not None) == (op == "path_glob")

    def describe(self) -> str:
        each = f"{self.quantifier} of " if EACH in self.steps else ""
        return f"{each}{self.key.removeprefix('any:').removeprefix('all:')} {self.op} {self.operand!r}"


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) and len(value) <= 40 else _kind(value)


def _config_path(value: str, home: str) -> str:
    """A path written in the config, in normal form (``C:\\x`` written the Windows way is accepted)."""
    return paths.normalise_config(value.replace("\\", "/") if re.match(r"^[A-Za-z]:\\", value) else value, home=home)


def quantifier_for(gate: str) -> str:
    """Over list elements: a rule that can let a call run unreviewed needs every element (``all``); a rule
    that only denies or holds needs one (``any``)."""
    return "all" if gate in ("allow", "audit", "soft") else "any"


def compile_when(when: Mapping[str, Any], *, quantifier: str, home: str) -> list[Predicate]:
    out: list[Predicate] = []
    for key, pred in when.items():
        if isinstance(pred, dict):
            out.extend(Predicate(key, op, arg, quantifier=quantifier, home=home) for op, arg in pred.items())
        else:
            out.append(Predicate(key, "eq", pred, quantifier=quantifier, home=home))
    return out
