"""config.py: shipped files load; bad files fail closed with every problem named by key path and line.

Assertions check the error type and the key facts a reader needs (the path, the line, the offending
name), never whole message texts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from mcp_gatekeeper.config import (
    GatekeeperConfig,
    default_config_path,
    expand_env,
    load_config,
    parse_config,
    parse_duration,
    resolve_config_path,
    validate_config,
)
from mcp_gatekeeper.errors import ConfigError, GatekeeperError
from mcp_gatekeeper.policy import Policy

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [*sorted((REPO / "config").glob("*.toml")), REPO / "mcp_gatekeeper" / "demo.toml"]


def _rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


def line_of(text: str, marker: str) -> int:
    """The 1-based number of the only line of ``text`` that contains ``marker``."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if marker in line]
    assert len(hits) == 1, f"marker {marker!r} must appear on exactly one line, found {hits}"
    return hits[0]


def problems_of(tmp_path: Path, text: str) -> list[str]:
    f = tmp_path / "config.toml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert info.value.source == str(f)
    assert info.value.problems, "a ConfigError must list at least one problem"
    return info.value.problems


def find_problem(problems: list[str], path: str, line: int | set[int] | None = None) -> str:
    """The problem that names ``path`` (and, if given, one of ``line``); fails listing them all."""
    lines = {line} if isinstance(line, int) else line
    for p in problems:
        if path not in p:
            continue
        if lines is None or any(re.search(rf"\bline {n}\b", p) for n in lines):
            return p
    raise AssertionError(f"no problem names {path!r} at line {line}; got: {problems}")


# ---------------------------------------------------------------------------------------------- shipped files


def test_the_config_directory_is_not_empty() -> None:
    assert [p for p in SHIPPED if p.parent.name == "config"], "config/ should ship at least one example"


@pytest.mark.parametrize("path", SHIPPED, ids=_rel)
def test_every_shipped_config_loads_and_compiles(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, GatekeeperConfig)
    Policy(config)  # every rule compiles (globs, regexes, predicates)


# ---------------------------------------------------------------------------------------------- bad files

UNKNOWN_RULE_KEY = """\
# a policy with a typo
[ui]
autostart = false

[[rules]]
name = "refunds"
tool = "issue_refund"
gatte = "hard"
"""

BAD_GATE = """\
[[rules]]
name = "ok"
tool = "read_file"
gate = "allow"

[[rules]]
name = "typo"
tool = "write_file"
gate = "maybe"
"""

BAD_RULE_DURATION = """\
[[rules]]
tool = "deploy"
gate = "hard"
timeout = "5 minutes"
"""

BAD_DEFAULT_DURATION = """\
status_tool = true

[defaults]
unknown = "hard"
timeout = -5
"""

BOTH_COMMAND_AND_URL = """\
[upstreams.files]
command = "npx"

[upstreams.shop]
command = "shop-server"
url = "http://127.0.0.1:9000/mcp"
"""

UNKNOWN_UPSTREAM_KEY = """\
[upstreams.files]
command = "npx"
argz = ["-y", "server-filesystem"]
"""

BAD_OPERATOR = """\
[[rules]]
tool = "issue_refund"
gate = "hard"
when = { amount = { greater = 1000 } }
"""

BAD_REGEX = """\
[[rules]]
tool = "send_email"
gate = "deny"
when = { to = { regex = "(unclosed" } }
"""

ON_TIMEOUT_APPROVE = """\
[[rules]]
tool = "issue_refund"
gate = "hard"
on_timeout = "approve"
"""

BAD_PORT = """\
[ui]
autostart = false
port = 99999
"""

# (id, text, key path the problem must name, marker(s) of the line(s) it may point at, words it must name)
BAD_CASES: list[tuple[str, str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("unknown-rule-key", UNKNOWN_RULE_KEY, "rules[0].gatte", ('gatte = "hard"',), ()),
    ("bad-gate", BAD_GATE, "rules[1].gate", ('gate = "maybe"',), ()),
    ("bad-rule-duration", BAD_RULE_DURATION, "rules[0].timeout", ("timeout =",), ("5 minutes",)),
    ("bad-default-duration", BAD_DEFAULT_DURATION, "defaults.timeout", ("timeout = -5",), ()),
    ("command-and-url", BOTH_COMMAND_AND_URL, "upstreams.shop", ("[upstreams.shop]", "url ="), ()),
    ("unknown-upstream-key", UNKNOWN_UPSTREAM_KEY, "upstreams.files.argz", ("argz =",), ()),
    # a model-level check is reported on the rule: its header or the `when` line are both fine
    ("bad-operator", BAD_OPERATOR, "rules[0]", ("[[rules]]", "when ="), ("greater", "amount")),
    ("bad-regex", BAD_REGEX, "rules[0]", ("[[rules]]", "when ="), ("regex", "to")),
    ("on-timeout-approve", ON_TIMEOUT_APPROVE, "rules[0].on_timeout", ("on_timeout =",), ()),
    ("bad-port", BAD_PORT, "ui.port", ("port =",), ()),
]


@pytest.mark.parametrize(
    ("text", "path", "markers", "words"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_a_bad_field_is_named_by_path_and_line(
    tmp_path: Path, text: str, path: str, markers: tuple[str, ...], words: tuple[str, ...]
) -> None:
    problems = problems_of(tmp_path, text)
    problem = find_problem(problems, path, {line_of(text, m) for m in markers})
    for word in words:
        assert word in problem


def test_unknown_key_on_line_n_names_rules_0_and_line_n(tmp_path: Path) -> None:
    n = line_of(UNKNOWN_RULE_KEY, "gatte")
    assert n == 8
    problems = problems_of(tmp_path, UNKNOWN_RULE_KEY)
    problem = find_problem(problems, "rules[0]", n)
    assert "gatte" in problem
    # the missing required `gate` is reported too, on the same rule
    find_problem(problems, "rules[0].gate")


def test_the_removed_cli_requires_tty_is_refused_naming_key_line_why_and_what_to_do(tmp_path: Path) -> None:
    """A security setting is never silently ignored: even ``= false`` names the line and says why it went."""
    for value in ("true", "false"):
        text = f"[ui]\nport = 8765\n\n[security]\nmax_argument_bytes = 10\ncli_requires_tty = {value}\n"
        problems = problems_of(tmp_path, text)
        (problem,) = problems
        assert problem.startswith("line 6: security.cli_requires_tty: removed:"), problem
        assert "script -qec" in problem and "another OS user" in problem and "Delete the line" in problem


def test_on_timeout_approve_is_refused_even_alone() -> None:
    # Nothing in mcp-gatekeeper approves by default: there is no value of on_timeout that approves.
    with pytest.raises(ConfigError) as info:
        parse_config(ON_TIMEOUT_APPROVE)
    find_problem(info.value.problems, "rules[0].on_timeout")
    assert parse_config(ON_TIMEOUT_APPROVE.replace('"approve"', '"reject"')).rules[0].on_timeout == "reject"


def test_several_errors_are_all_reported_at_once(tmp_path: Path) -> None:
    text = """\
heartbeat_interval = "often"

[defaults]
unknown = "maybe"

[ui]
port = -1

[upstreams.both]
command = "x"
url = "http://127.0.0.1:1/mcp"

[[rules]]
tool = "a"
gate = "hard"

[[rules]]
tool = "b"
gate = "sometimes"
colour = "red"
"""
    problems = problems_of(tmp_path, text)
    find_problem(problems, "heartbeat_interval", line_of(text, "heartbeat_interval"))
    find_problem(problems, "defaults.unknown", line_of(text, 'unknown = "maybe"'))
    find_problem(problems, "ui.port", line_of(text, "port = -1"))
    find_problem(problems, "upstreams.both", {line_of(text, "[upstreams.both]"), line_of(text, "url =")})
    find_problem(problems, "rules[1].gate", line_of(text, 'gate = "sometimes"'))
    find_problem(problems, "rules[1].colour", line_of(text, "colour"))
    assert len(problems) >= 6
    assert not any("rules[0]" in p for p in problems), "the valid rule must not be blamed"


def test_toml_syntax_error_reports_its_line(tmp_path: Path) -> None:
    text = '[ui]\nautostart = false\nport = = 8765\n[[rules]]\ngate = "hard"\n'
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1
    assert re.search(r"\bline 3\b", problems[0]), problems


def test_sub_table_of_a_rule_points_at_its_own_line(tmp_path: Path) -> None:
    text = """\
[[rules]]
tool = "a"
gate = "hard"

[[rules]]
tool = "b"
gate = "hard"

[rules.effects]
approve = 1
"""
    problems = problems_of(tmp_path, text)
    find_problem(problems, "rules[1].effects.approve", line_of(text, "approve = 1"))


def test_bad_upstream_name_is_named_by_path_and_line(tmp_path: Path) -> None:
    text = '[ui]\nautostart = false\n\n[upstreams."a b"]\ncommand = "x"\n'
    problems = problems_of(tmp_path, text)
    find_problem(problems, "upstreams", line_of(text, "[upstreams."))


def test_validate_config_without_text_still_names_paths() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"rules": [{"gate": "allow"}, {"gate": "nope"}]})
    assert isinstance(info.value, GatekeeperError)
    find_problem(info.value.problems, "rules[1].gate")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.source == str(missing)


def test_config_models_are_frozen() -> None:
    config = parse_config('[[rules]]\ntool = "a"\ngate = "hard"\n')
    with pytest.raises(ValueError, match="frozen"):
        config.rules[0].gate = "allow"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        ("1d", 86400.0),
        ("2.5s", 2.5),
        (" 45 ", 45.0),
        ("90", 90.0),
        (12, 12.0),
        (2.5, 2.5),
    ],
)
def test_durations_parse(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["5 minutes", "", "1h30m", "-1s", "s", "10y", 0, -3, "0s", True, False, None, [1]])
def test_bad_durations_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - parse_duration documents ValueError; pydantic wraps it
        parse_duration(value)


def test_durations_in_a_file_become_seconds() -> None:
    config = parse_config(
        'heartbeat_interval = 12\n[defaults]\ntimeout = "250ms"\n'
        '[upstreams.a]\ncommand = "x"\ntimeout = "1h"\n[[rules]]\ntool = "t"\ngate = "hard"\ntimeout = "5m"\n'
    )
    assert config.heartbeat_interval == 12.0
    assert config.defaults.timeout == 0.25
    assert config.upstreams["a"].timeout == 3600.0
    assert config.rules[0].timeout == 300.0


# ---------------------------------------------------------------------------------------------- ${VAR} expansion


def test_expand_env_from_a_mapping() -> None:
    env = {"TOKEN": "s3cret", "HOST": "api.example.com"}
    assert expand_env("Bearer ${TOKEN}", env) == "Bearer s3cret"
    assert expand_env("https://${HOST}/${TOKEN}", env) == "https://api.example.com/s3cret"
    assert expand_env("no vars, $TOKEN stays, so does $", env) == "no vars, $TOKEN stays, so does $"


def test_expand_env_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GK_TEST_SECRET", "from-env")
    assert expand_env("x-${GK_TEST_SECRET}-y") == "x-from-env-y"


def test_expand_env_set_but_empty_is_kept_as_empty() -> None:
    assert expand_env("[${EMPTY}]", {"EMPTY": ""}) == "[]"


def test_expand_env_unset_variable_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GK_TEST_NOT_SET", raising=False)
    with pytest.raises(ConfigError) as info:
        expand_env("Bearer ${GK_TEST_NOT_SET}")
    assert any("GK_TEST_NOT_SET" in p for p in info.value.problems)


# ---------------------------------------------------------------------------------------------- which file


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """An explicit file, an $MCP_GATEKEEPER_CONFIG file and a user file under a private $HOME."""
    home = tmp_path / "home"
    user = home / ".config" / "mcp-gatekeeper" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("status_tool = false\n")
    env = tmp_path / "env.toml"
    env.write_text("heartbeat_interval = 7\n")
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("heartbeat_interval = 3\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MCP_GATEKEEPER_CONFIG", str(env))
    return {"explicit": explicit, "env": env, "user": user}


def test_resolve_explicit_wins(places: dict[str, Path]) -> None:
    assert resolve_config_path(places["explicit"]) == places["explicit"]
    assert resolve_config_path(str(places["explicit"])) == places["explicit"]
    assert load_config(places["explicit"]).heartbeat_interval == 3.0


def test_resolve_env_var_is_next(places: dict[str, Path]) -> None:
    assert resolve_config_path(None) == places["env"]
    assert load_config().heartbeat_interval == 7.0


def test_resolve_user_file_is_next(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_GATEKEEPER_CONFIG")
    assert default_config_path() == places["user"]
    assert resolve_config_path(None) == places["user"]
    assert load_config().status_tool is False


def test_resolve_empty_env_var_counts_as_unset(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_GATEKEEPER_CONFIG", "")
    assert resolve_config_path(None) == places["user"]


def test_resolve_nothing_gives_none_and_defaults(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_GATEKEEPER_CONFIG")
    places["user"].unlink()
    assert resolve_config_path(None) is None
    assert load_config() == GatekeeperConfig()


def test_explicit_path_that_does_not_exist_is_not_silently_skipped(places: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "typo.toml"
    assert resolve_config_path(missing) == missing
    with pytest.raises(ConfigError):
        load_config(missing)
