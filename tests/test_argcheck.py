"""The schema step on its own: drafts, unusable schemas, the form of the errors, the cache, odd numbers."""

from __future__ import annotations

import json
import math

from mcp_gatekeeper.argcheck import MAX_ERRORS, SchemaChecks, compile_schema, non_finite


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
