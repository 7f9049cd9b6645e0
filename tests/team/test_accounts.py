"""Reviewer accounts: scrypt hashes, linked principals, and the ``users`` commands (passwords never in argv)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ROOT, gk_env

from mcp_gatekeeper import accounts
from mcp_gatekeeper.accounts import Reviewer
from mcp_gatekeeper.cli import build_parser


def test_a_password_hash_is_salted_scrypt_and_checked_exactly() -> None:
    one, two = accounts.hash_password("correct horse battery"), accounts.hash_password("correct horse battery")
    assert one.startswith("scrypt$32768$8$1$") and one != two  # a fresh salt each time
    assert accounts.verify_password("correct horse battery", one)
    assert not accounts.verify_password("correct horse batterY", one)
    assert not accounts.verify_password("", one)
    assert not accounts.verify_password("correct horse battery", None)  # no account: same work, still no
    assert not accounts.verify_password("x", "md5$abc")
    assert not accounts.verify_password("x", "scrypt$nope")


def test_linked_principals_match_exactly_or_by_os_user() -> None:
    r = Reviewer("alice", "reviewer", ("payments",), ("agent:alice-bot", "os:alice"), 0.0, "cli:root", 0.0)
    assert r.linked_to("agent:alice-bot") and r.linked_to("stdio:alice/claude-code")
    for other in ("agent:alice-bot2", "agent:alice", "stdio:alicex/claude", "stdio:bob/alice", None, ""):
        assert not r.linked_to(other)


def test_account_fields_are_checked_and_named() -> None:
    assert accounts.account_problems("alice", "reviewer", ["payments"], ["agent:a"]) == []
    problems = accounts.account_problems("Alice Smith", "root", ["Pay ments"], ["agent: a"])
    assert len(problems) == 4 and problems[0].startswith("name") and problems[1].startswith("role")
    assert accounts.password_problem("short") is not None and accounts.password_problem("x" * 2000) is not None


def _gk(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_gatekeeper", *args], input=stdin, capture_output=True, text=True,
        env=gk_env(home), cwd=str(ROOT), check=False, timeout=60,
    )  # fmt: skip


def test_users_commands_take_the_password_from_stdin_and_audit_every_change(home: Path) -> None:
    added = _gk(home, "users", "add", "alice", "--group", "payments", "--principal", "agent:alice-bot",
                "--password-stdin", stdin="correct horse battery\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert _gk(home, "users", "add", "alice", "--password-stdin", stdin="another long one\n").returncode == 1
    assert _gk(home, "users", "add", "bob", "--password-stdin", stdin="short\n").returncode == 2
    no_tty = _gk(home, "users", "add", "bob")  # no terminal and no --password-stdin: refused, never argv
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    parser = build_parser()
    with pytest.raises(SystemExit):  # there is no way to give it on the command line
        parser.parse_args(["users", "add", "bob", "--password", "hunter2hunter2"])
    assert (
        _gk(home, "users", "add", "bob", "--role", "admin", "--password-stdin", stdin="staple battery ok\n").returncode
        == 0
    )
    listed = json.loads(_gk(home, "users", "list", "--json").stdout)
    assert [(u["name"], u["role"], u["groups"], u["principals"]) for u in listed] == [
        ("alice", "reviewer", ["payments"], ["agent:alice-bot"]),
        ("bob", "admin", [], []),
    ]
    assert "password" not in json.dumps(listed).replace("password_changed_at", "")
    assert _gk(home, "users", "passwd", "alice", "--password-stdin", stdin="a new long password\n").returncode == 0
    assert _gk(home, "users", "passwd", "carol", "--password-stdin", stdin="a new long password\n").returncode == 1
    assert _gk(home, "users", "remove", "bob").returncode == 0
    assert _gk(home, "users", "remove", "bob").returncode == 1
    audit = json.loads(_gk(home, "audit", "--json").stdout)
    assert [e["event"] for e in audit if e["event"].startswith(("account", "password"))] == [
        "account_added", "account_added", "password_changed", "account_removed",
    ]  # fmt: skip
    assert all(e["actor"].startswith("cli:") for e in audit)


EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 - what serve must refuse to bind; nothing binds it here


def test_serve_listens_beyond_loopback_only_behind_an_https_public_url(home: Path) -> None:
    bare = _gk(home, "serve", "--host", EVERY_INTERFACE)
    assert bare.returncode == 2 and "--public-url" in bare.stderr
    for url in ("http://gk.example.com", "https://", "https://gk.example.com/approvals", "https://u:p@gk.example.com"):
        bad = _gk(home, "serve", "--host", EVERY_INTERFACE, "--public-url", url)
        assert bad.returncode == 2 and "--public-url" in bad.stderr, url
    # http://localhost:PORT is this machine alone (passkeys' secure context without a proxy): never beyond loopback
    local = _gk(home, "serve", "--host", EVERY_INTERFACE, "--public-url", "http://localhost:8766")
    assert local.returncode == 2 and "--public-url" in local.stderr


def test_notifications_link_to_the_services_card_when_it_has_a_public_url() -> None:
    from mcp_gatekeeper.config import validate_config
    from mcp_gatekeeper.errors import ConfigError

    cfg = validate_config({"ui": {"public_url": "https://gk.example.com"}})
    assert cfg.card_url("abc") == "https://gk.example.com/#/call/abc"
    for bad in ("https://gk.example.com/path", "https://u@gk.example.com"):
        with pytest.raises(ConfigError, match="public_url"):
            validate_config({"ui": {"public_url": bad}})
