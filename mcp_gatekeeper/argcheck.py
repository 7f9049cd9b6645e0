"""A call's arguments against its tool's ``inputSchema``, before policy sees them.

The policy reads the arguments as JSON values; an upstream built on a typed framework reads them through its
own model, and some frameworks parse a *string* back into an object or a number. A deny rule on
``payment.amount`` is blind to ``{"payment": "{\\"amount\\": 1000000}"}``, but the upstream pays. So the
arguments must match the schema the upstream published, exactly as sent: a string where the schema wants an
object, array or number is a mismatch and is never re-parsed here. Numbers that JSON cannot carry (``1e400``
parses to infinity, ``NaN``) are refused whatever the schema says.

Validators are compiled once per tool definition (keyed by its definition hash). A schema that is not a valid
JSON Schema, or names a ``$schema`` draft we do not know, never lets a call through: it is a problem too.

The schema is the upstream's, so its regular expressions are too: ``pattern``, ``patternProperties`` (and the
``additionalProperties`` that depends on them) are matched with the ``regex`` module under a time limit
(:data:`PATTERN_TIMEOUT`) instead of ``re``, which holds the GIL for as long as a catastrophic pattern
backtracks and would stall every call of the process. A pattern that runs out of time is a ``bad_schema``
problem: the call is refused (or held), never let through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal

import jsonschema
import jsonschema.validators
import regex
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator

MAX_ERRORS = 5
"""Validation errors listed in a refusal (the model fixes the first few and tries again)."""
MAX_MESSAGE = 300
"""Characters of one error message kept (jsonschema's messages quote the offending value)."""
MAX_CACHED = 4096
"""Compiled validators kept; the cache starts over beyond this (a server with more tools is unusual)."""

PATTERN_TIMEOUT = 0.05
"""Seconds one regular expression of the upstream's schema may take on one value before the call is refused."""

ProblemKind = Literal["invalid", "non_finite", "bad_schema"]


@dataclass(frozen=True, slots=True)
class ArgumentProblem:
    """Why a call's arguments cannot be checked or do not pass: each error as ``path: message``."""

    kind: ProblemKind
    errors: tuple[str, ...]

    @property
    def reason(self) -> str:
        listed = "; ".join(self.errors)
        if self.kind == "non_finite":
            return f"the arguments contain numbers JSON cannot carry (infinite or NaN): {listed}"
        if self.kind == "bad_schema":
            return f"the tool's inputSchema is not a usable JSON Schema, so its arguments cannot be checked: {listed}"
        return (
            f"the arguments do not match the tool's inputSchema: {listed}. Send each value with the type the"
            " schema gives (an object as a JSON object, not as a string)"
        )


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _message(err: ValidationError) -> str:
    """jsonschema's message, but in JSON terms for a wrong type (``true``, not ``True``; what was sent)."""
    if err.validator == "type":
        want = err.validator_value
        wanted = " or ".join(map(str, want)) if isinstance(want, list) else str(want)
        try:
            sent = json.dumps(err.instance, ensure_ascii=False, allow_nan=False)
        except ValueError:
            sent = repr(err.instance)
        return _clip(f"expected {wanted}, got {_json_type(err.instance)} {sent}")
    return _clip(err.message)


def non_finite_paths(value: Any, path: str = "$") -> Iterator[str]:
    """JSON paths of every infinite or NaN number in ``value``."""
    if isinstance(value, float):
        if not math.isfinite(value):
            yield path
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from non_finite_paths(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from non_finite_paths(v, f"{path}[{i}]")


def non_finite(arguments: Mapping[str, Any]) -> ArgumentProblem:
    """The refusal of arguments that contain infinite or NaN numbers."""
    paths = list(non_finite_paths(arguments))
    shown = tuple(f"{p}: not a finite number" for p in paths[:MAX_ERRORS]) or ("$: not a finite number",)
    return ArgumentProblem("non_finite", shown)


def _search(pattern: str, text: str) -> bool:
    """``re.search`` semantics, with a time limit (``TimeoutError`` past it; the caller refuses the call)."""
    return regex.search(pattern, text, timeout=PATTERN_TIMEOUT) is not None


def _extra_properties(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> Iterable[str]:
    properties = schema.get("properties", {})
    patterns = "|".join(schema.get("patternProperties", {}))
    return [name for name in instance if name not in properties and not (patterns and _search(patterns, name))]


def _pattern(validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if _search(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(
    validator: Any, allowed: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = sorted(_extra_properties(instance, schema))
    if validator.is_type(allowed, "object"):
        for name in extras:
            yield from validator.descend(instance[name], allowed, path=name)
    elif not allowed and extras:
        yield ValidationError(f"additional properties are not allowed ({', '.join(map(repr, extras))} unexpected)")


_GUARDED_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


def _guarded(cls: type[Validator]) -> type[Validator]:
    """``cls`` with the upstream's regular expressions matched under a time limit (see the module's docstring)."""
    if not all(k in cls.VALIDATORS for k in _GUARDED_KEYWORDS):
        return cls  # drafts before patternProperties: none are in use by MCP servers; jsonschema's own then
    # keyword functions receive the validator instance (typed Any: the Validator protocol omits ``descend``)
    extended: type[Validator] = jsonschema.validators.extend(cls, _GUARDED_KEYWORDS)  # type: ignore[no-untyped-call]  # jsonschema's extend() is unannotated
    return extended


def compile_schema(schema: Any) -> Validator | ArgumentProblem:
    """A validator for ``schema`` (draft from ``$schema``, 2020-12 when absent), or why there can be none."""
    if not isinstance(schema, Mapping):
        return ArgumentProblem("bad_schema", (f"$: inputSchema is {type(schema).__name__}, not an object",))
    schema = dict(schema)
    if "$schema" in schema:
        found: Any = jsonschema.validators.validator_for(schema, default=None)  # type: ignore[arg-type]  # None for an unknown $schema (documented; the stubs omit it)
        if found is None:
            return ArgumentProblem("bad_schema", (f"$schema: unknown draft {_clip(repr(schema['$schema']))}",))
        cls: type[Validator] = found
    else:
        cls = jsonschema.Draft202012Validator
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        where = e.json_path if e.json_path != "$" else "inputSchema"
        return ArgumentProblem("bad_schema", (f"{where}: {_clip(e.message)}",))
    validator: Validator = _guarded(cls)(schema)
    return validator


Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "deprecated", "readOnly",
                          "writeOnly"})  # fmt: skip
_FAST_DRAFTS = frozenset(
    {
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-07/schema",
        "http://json-schema.org/draft-06/schema#",
        "http://json-schema.org/draft-06/schema",
    }
)
"""Drafts whose meaning of the keywords below is the same (draft 4 differs: 1.0 is not an integer there)."""
_TYPE_TESTS: dict[str, Check] = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _always(value: Any) -> bool:
    return True


def _never(value: Any) -> bool:
    return False


def fast_check(schema: Any, *, root: bool = True) -> Check | None:
    """A plain-Python test for the common shape of tool schemas (``type``, ``properties``, ``required``,
    ``additionalProperties: false``, ``items``), or None when the schema uses anything else.

    It only ever answers *valid* for the validator: when it says False (or there is none), jsonschema decides
    and words the errors. So it must never accept what jsonschema would refuse; the test suite checks that on
    generated schemas and values.
    """
    if schema is True:
        return _always
    if schema is False:
        return _never
    if not isinstance(schema, Mapping):
        return None
    types: list[Check] = []
    props: dict[str, Check] = {}
    required: tuple[str, ...] = ()
    closed = False
    items: Check | None = None
    for key, value in schema.items():
        if key in _ANNOTATIONS or (root and key == "$schema" and value in _FAST_DRAFTS):
            continue
        if key == "type":
            names = value if isinstance(value, list) else [value]
            if not names or not all(isinstance(n, str) and n in _TYPE_TESTS for n in names):
                return None
            types = [_TYPE_TESTS[n] for n in names]
        elif key == "properties" and isinstance(value, Mapping):
            for name, sub in value.items():
                compiled = fast_check(sub, root=False)
                if compiled is None:
                    return None
                props[name] = compiled
        elif key == "required" and isinstance(value, list) and all(isinstance(n, str) for n in value):
            required = tuple(value)
        elif key == "additionalProperties" and isinstance(value, bool):
            closed = not value
        elif key == "items" and isinstance(value, bool | Mapping):
            items = fast_check(value, root=False)
            if items is None:
                return None
        else:
            return None

    def check(value: Any) -> bool:
        if types and not any(t(value) for t in types):
            return False
        if isinstance(value, dict):
            for name in required:
                if name not in value:
                    return False
            if props or closed:
                for name, sub in value.items():
                    test = props.get(name)
                    if test is None:
                        if closed:
                            return False
                    elif not test(sub):
                        return False
        elif items is not None and isinstance(value, list):
            return all(items(v) for v in value)
        return True

    return check


class SchemaChecks:
    """Compiled ``inputSchema`` validators, one per tool definition hash."""

    def __init__(self) -> None:
        self._compiled: dict[str, tuple[Validator | ArgumentProblem, Check | None]] = {}

    def _compile(self, tool_hash: str, schema: Any) -> tuple[Validator | ArgumentProblem, Check | None]:
        hit = self._compiled.get(tool_hash)
        if hit is None:
            validator = compile_schema(schema)
            hit = (validator, None if isinstance(validator, ArgumentProblem) else fast_check(schema))
            if len(self._compiled) >= MAX_CACHED:
                self._compiled.clear()
            self._compiled[tool_hash] = hit
        return hit

    def validator(self, tool_hash: str, schema: Any) -> Validator | ArgumentProblem:
        return self._compile(tool_hash, schema)[0]

    def check(self, tool_hash: str, schema: Any, arguments: Mapping[str, Any]) -> ArgumentProblem | None:
        """None when ``arguments`` match ``schema``; otherwise what is wrong, in a form the model can act on."""
        validator, fast = self._compile(tool_hash, schema)
        if isinstance(validator, ArgumentProblem):
            return validator
        if fast is not None and fast(arguments):
            return None
        try:
            first = next(validator.iter_errors(arguments), None)
            if first is None:
                return None
            errors: list[ValidationError] = list(islice(validator.iter_errors(arguments), MAX_ERRORS * 4))
        except Exception as exc:  # an unresolvable $ref, a pathological pattern: the schema cannot be applied
            return ArgumentProblem("bad_schema", (f"$: the schema could not be applied ({type(exc).__name__})",))
        seen: dict[str, None] = {}
        for err in sorted(errors, key=lambda err: (len(err.absolute_path), err.json_path)):
            seen.setdefault(f"{err.json_path}: {_message(err)}")
        return ArgumentProblem("invalid", tuple(seen)[:MAX_ERRORS])
