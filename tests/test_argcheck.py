"""The schema step on its own: drafts, unusable schemas, the form of the errors, the cache, odd numbers."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import jsonschema

from mcp_gatekeeper.argcheck import MAX_ERRORS, SchemaChecks, compile_schema, fast_check, non_finite


def test_the_draft_comes_from_dollar_schema_and_defaults_to_2020_12() -> None:
    checks = SchemaChecks()
    # draft-04: exclusiveMaximum is a boolean next to maximum; in 2020-12 it is a number, and `true` is invalid
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "properties": {"n": {"maximum": 5,
              "exclusiveMaximum": True}}}  # fmt: skip
    assert checks.check("d4", draft4, {"n": 5}) is not None
    assert checks.check("d4", draft4, {"n": 4}) is None
    problem = checks.check("d2020", {k: v for k, v in draft4.items() if k != "$schema"}, {"n": 4})
    assert problem is not None and problem.kind == "bad_schema"
    # 2020-12 prefixItems is enforced without a $schema
    tuple_schema = {"type": "array", "prefixItems": [{"type": "integer"}]}
    assert checks.check("t", {"type": "object", "properties": {"t": tuple_schema}}, {"t": ["x"]}) is not None


def test_unusable_schemas_are_problems_not_passes() -> None:
    for schema in ({"type": "objekt"}, {"$schema": "urn:nobody-knows"}, None, [], "object", {"minimum": "1"}):
        problem = compile_schema(schema)
        assert not callable(getattr(problem, "iter_errors", None)), schema
    problem = SchemaChecks().check("r", {"properties": {"a": {"$ref": "http://127.0.0.1:9/s.json"}}}, {"a": 1})
    assert problem is not None and problem.kind == "bad_schema"


def test_errors_name_the_path_and_are_few_and_short() -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(20)}}
    arguments = {f"p{i}": "x" * 5000 for i in range(20)}
    problem = SchemaChecks().check("h", schema, arguments)
    assert problem is not None and problem.kind == "invalid"
    assert len(problem.errors) == MAX_ERRORS
    assert all(e.startswith("$.p") and len(e) < 400 for e in problem.errors)
    assert len(problem.reason) < 3000


def test_a_string_is_never_re_parsed_into_what_the_schema_wants() -> None:
    schema = {"type": "object", "properties": {"o": {"type": "object"}, "a": {"type": "array"},
              "n": {"type": "number"}, "i": {"type": "integer"}}}  # fmt: skip
    checks = SchemaChecks()
    for key, sent in (("o", "{}"), ("a", "[]"), ("n", "1"), ("i", "1"), ("n", True), ("i", False), ("i", 1.5)):
        problem = checks.check("s", schema, {key: sent})
        assert problem is not None and problem.errors[0].startswith(f"$.{key}: "), (key, sent)


def test_validators_are_compiled_once_per_definition_hash() -> None:
    checks = SchemaChecks()
    schema = {"type": "object"}
    first = checks.validator("h1", schema)
    assert checks.validator("h1", {"type": "objekt"}) is first  # the hash names the definition
    assert checks.validator("h2", {"type": "objekt"}) is not first


def test_non_finite_numbers_are_found_wherever_they_are() -> None:
    problem = non_finite({"a": [1, {"b": math.inf}], "c": -math.inf, "d": math.nan, "e": 1.5})
    assert problem.errors == ("$.a[1].b: not a finite number", "$.c: not a finite number", "$.d: not a finite number")
    json.dumps(problem.reason, allow_nan=False)  # the reason itself is plain text


def _schema(rng: random.Random, depth: int) -> Any:
    if depth > 3 or rng.random() < 0.15:
        return rng.choice([True, False, {}, {"type": rng.choice(TYPES)}])
    schema: dict[str, Any] = {}
    if rng.random() < 0.8:
        schema["type"] = rng.choice(TYPES) if rng.random() < 0.7 else rng.sample(TYPES, rng.randint(1, 3))
    if rng.random() < 0.6:
        schema["properties"] = {k: _schema(rng, depth + 1) for k in rng.sample(KEYS, rng.randint(0, 3))}
    if rng.random() < 0.4:
        schema["required"] = rng.sample(KEYS, rng.randint(0, 2))
    if rng.random() < 0.3:
        schema["additionalProperties"] = rng.random() < 0.5
    if rng.random() < 0.3:
        schema["items"] = _schema(rng, depth + 1)
    if rng.random() < 0.2:
        schema["description"] = "annotations are ignored"
    return schema


def _instance(rng: random.Random, depth: int) -> Any:
    kinds = ["str", "int", "float", "whole", "bool", "null", "list", "dict"] if depth < 4 else ["str", "int", "null"]
    kind = rng.choice(kinds)
    if kind == "list":
        return [_instance(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        return {k: _instance(rng, depth + 1) for k in rng.sample(KEYS, rng.randint(0, 3))}
    return {"str": "s", "int": 3, "float": 2.5, "whole": 2.0, "bool": rng.random() < 0.5, "null": None}[kind]


TYPES = ["string", "number", "integer", "boolean", "null", "array", "object"]
KEYS = ["a", "b", "c", "d"]


def test_the_fast_check_never_accepts_what_jsonschema_refuses() -> None:
    """The plain-Python check for common schemas may only ever say "valid" where jsonschema agrees."""
    rng = random.Random(7)
    agreed = compiled = 0
    for _ in range(4000):
        schema = _schema(rng, 0)
        fast = fast_check(schema)
        if fast is None:
            continue
        compiled += 1
        validator = jsonschema.Draft202012Validator(schema)
        for _ in range(5):
            value = _instance(rng, 0)
            expected = validator.is_valid(value)
            assert not fast(value) or expected, (schema, value)
            agreed += fast(value) == expected
    assert compiled > 3000 and agreed == compiled * 5  # on this subset it is not just safe but exact


def test_the_fast_check_declines_what_it_does_not_know() -> None:
    for schema in (
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {}}},
        {"type": "object", "patternProperties": {"^a": {"type": "string"}}, "additionalProperties": False},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "array", "items": [{"type": "string"}]},
        {"type": "string", "minLength": 2},
        {"type": "number", "maximum": 5},
        {"enum": [1, 2]},
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer"},  # 1.0 is not an integer there
        {"type": "object", "properties": {"a": {"$schema": "https://json-schema.org/draft/2020-12/schema"}}},
        {"type": "object", "unevaluatedProperties": False},
    ):
        assert fast_check(schema) is None, schema


def test_a_catastrophic_pattern_in_the_upstreams_schema_is_refused_not_waited_out() -> None:
    """The schema is the upstream's: a pattern that backtracks exponentially must not stall the process
    (``re`` holds the GIL for as long as it runs). It is matched under a time limit and the call is refused."""
    evil = "^(a|a)+$"  # 2^n ways to match n a's: re takes ~10 s on 26 a's and a b (each extra a doubles it)
    value = "a" * 26 + "b"
    for schema in (
        {"type": "object", "properties": {"s": {"type": "string", "pattern": evil}}},
        {"type": "object", "patternProperties": {evil: {"type": "string"}}},
        {"type": "object", "patternProperties": {evil: {}}, "additionalProperties": False},
    ):
        args = {"s": value} if "properties" in schema else {value: "x"}
        problem = SchemaChecks().check("h", schema, args)
        assert problem is not None and problem.kind == "bad_schema", (schema, problem)


def test_the_guarded_regex_keywords_judge_as_jsonschema_does() -> None:
    """pattern, patternProperties and additionalProperties keep their meaning under the time limit."""
    rng = random.Random(7)
    patterns = ["^a", "b$", "^[0-9]+$", "x|y", "^$", "\\d{2}", "^(ab)+$", "[A-Z]"]
    words = ["", "a", "ab", "abab", "12", "x", "Yb", "b", "a1", "Z9", "yy"]
    for _ in range(400):
        pattern = rng.choice(patterns)
        schema: dict[str, Any] = rng.choice(
            [
                {"type": "object", "properties": {"s": {"type": "string", "pattern": pattern}}},
                {"type": "object", "patternProperties": {pattern: {"type": "string"}}},
                {
                    "type": "object",
                    "properties": {"k": {}},
                    "patternProperties": {pattern: {}},
                    "additionalProperties": False,
                },
                {"type": "object", "patternProperties": {pattern: {}}, "additionalProperties": {"type": "integer"}},
            ]
        )
        args: dict[str, Any] = (
            {"s": rng.choice(words)}
            if "properties" in schema and "k" not in schema["properties"]
            else {rng.choice(words): rng.choice(["v", 1]) for _ in range(rng.randint(0, 3))}
        )
        expected = jsonschema.Draft202012Validator(schema).is_valid(args)
        assert (SchemaChecks().check("h", schema, args) is None) == expected, (schema, args)
