"""Envelopes derived from approved calls: tight, in the config's own predicates, and never wider than needed."""

from __future__ import annotations

import tomllib

import pytest

from mcp_gatekeeper.calibrate.envelope import NoEnvelope, derive
from mcp_gatekeeper.calibrate.rules_toml import literal_glob, masked, rule_toml
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.policy import Policy

POLICY = Policy(parse_config(""), home_dir="/home/me")


def test_paths_numbers_lists_and_text() -> None:
    approved = [
        {
            "path": "/w/src/a.py",
            "n": 3,
            "tags": ["x", "y"],
            "files": ["/w/docs/a.md"],
            "body": f"text {i}",
            "opt": {"mode": "fast"},
        }
        for i in range(8)
    ] + [
        {
            "path": "/w/src/sub/b.py",
            "n": 9,
            "tags": ["z"],
            "files": ["/w/docs/b.md", "/w/src/c.py"],
            "body": "t",
            "opt": {"mode": "slow"},
        }
    ]
    when = derive(approved, POLICY)
    assert when == {
        "path": {"under": "/w/src"},  # /w/src/sub is inside /w/src
        "n": {"gte": 3, "lte": 9},
        "tags[*]": {"in": ["x", "y", "z"]},
        "files[*]": {"under": ["/w/docs", "/w/src"]},
        "opt.mode": {"in": ["fast", "slow"]},
    }  # body: free text stays open


def test_a_path_that_climbs_out_is_bounded_where_it_lands() -> None:
    assert derive([{"path": "/w/src/../.git/hooks/pre-commit"}], POLICY) == {"path": {"under": "/w/.git/hooks"}}


@pytest.mark.parametrize(
    "approved",
    [
        [{"path": f"/d{i}/x"} for i in range(6)],  # too many folders
        [{"path": "/x"}],  # a file at the root: no folder bounds it
        [{"path": "/w/a/x"}, {"path": "plain"}],  # a path and not a path
        [{"a.b": 1}],  # a name a when key cannot say
    ],
)
def test_no_envelope(approved: list[dict[str, object]]) -> None:
    with pytest.raises(NoEnvelope):
        derive(approved, POLICY)


def test_urls_are_values_not_paths() -> None:
    assert derive([{"url": "https://example.com/a"}], POLICY) == {"url": {"in": ["https://example.com/a"]}}


def test_the_toml_reads_back_and_names_only_its_tool() -> None:
    tool = 'we*ird[na]me?"\n'
    text = rule_toml(
        {"tool": literal_glob(tool), "when": {"x": {"in": ["\u202e", "a\\b"]}}, "gate": "allow"},
        ["note\nwith a newline"],
    )
    rule = tomllib.loads(text)["rules"][0]
    policy = Policy(parse_config(text))
    assert policy.evaluate("u", tool, {"x": "a\\b"}).action == "allow"
    assert policy.evaluate("u", "weXirdnme?", {"x": "a\\b"}).action != "allow"
    assert rule["when"]["x"]["in"] == ["\u202e", "a\\b"]
    assert text.count("\n# ") == 0 and text.startswith("# note?with a newline\n")
    with pytest.raises(ValueError, match="surrogate"):
        rule_toml({"tool": "t", "when": {"x": "\ud800"}, "gate": "allow"})
    hidden = masked(text, lambda name, value: "***" if name == "x" else value)
    assert tomllib.loads(hidden)["rules"][0]["when"] == {"x": {"in": "***"}}
    assert hidden.startswith("# note?with a newline\n")
