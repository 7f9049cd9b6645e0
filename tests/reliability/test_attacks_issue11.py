"""An attacker's pass over issue 11's fixes, with the shipped configs and real upstreams behind real ``wrap``.

Each test is one family of attacks. Those that got through are fixed and their tests keep them out; those
that did not get through stay as guards. The witnesses are what the client got back (the secret's text never
in it), the files on disk and the decision log.

Got through, now fixed:

* a non-ASCII name spelled in NFD (``Donne\\u0301es``): server-filesystem opens it as the NFC folder on disk,
  and the policy compared the spelling only (the gatekeeper's own files, a user's ``under`` deny rule);
* Linux's magic links (``/proc/self/root/...``, ``/proc/self/cwd/...``) name the gatekeeper's files under a
  server rooted at ``/``;
* credentials files ``config/filesystem.toml`` did not name (the GitHub CLI token, ``.pgpass``, ...).

Did not get through (guards): other spellings of ``.env`` and other tools that print it, git revisions
that name a committed secret, and a list or a string where the schema wants the other.
"""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness import ROOT, cli, gatekeeper, npm_bin, peer_bin, wrap_params

pytestmark = [pytest.mark.reliability, pytest.mark.anyio, pytest.mark.npm]

FILESYSTEM = npm_bin("mcp-server-filesystem")


def _fs() -> str:
    if FILESYSTEM is None:
        pytest.fail("node or server-filesystem missing (run .ci/setup)")
    return FILESYSTEM


def _text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def _nfd(path: Path | str) -> str:
    return unicodedata.normalize("NFD", str(path))


def _shipped(name: str, tmp_path: Path, work: Path | None = None) -> Path:
    """A shipped config (``config/NAME``) without the page, pointed at ``work`` instead of /home/me/work."""
    text = (ROOT / "config" / name).read_text()
    if work is not None:
        text = text.replace("/home/me/work", str(work))
    cfg = tmp_path / name
    cfg.write_text(text + "\n[ui]\nautostart = false\n")
    return cfg


async def _events(home: Path) -> list[str]:
    _, out, _ = await cli(home, "audit", "--json", "--limit", "1000")
    return [e["event"] for e in json.loads(out)]


async def test_an_nfd_spelling_names_the_nfc_folder_on_disk(tmp_path: Path) -> None:
    user = tmp_path / "user"
    gk_home = user / unicodedata.normalize("NFC", "Données")  # the gatekeeper's home, in a folder with an accent
    private = user / unicodedata.normalize("NFC", "Privé")
    public = user / unicodedata.normalize("NFC", "Café")
    for d in (gk_home, private, public):
        d.mkdir(parents=True)
    (private / "payroll.txt").write_text("salary 123456\n")
    (public / "menu.txt").write_text("espresso\n")
    cfg = tmp_path / "gk.toml"
    cfg.write_text(
        "[ui]\nautostart = false\n"
        f'[[rules]]\nname = "private"\nupstream = "fs"\ntool = "*"\nwhen = {{ path = {{ under = "{private}" }} }}\n'
        'gate = "deny"\n'
        '[[rules]]\nname = "reads"\nupstream = "fs"\ntool = ["read_text_file", "list_directory"]\ngate = "allow"\n',
        encoding="utf-8",
    )
    params = wrap_params(gk_home, cfg, "fs", [_fs(), str(user)])
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, _watcher):
            assert (gk_home / "gatekeeper.db").exists()
            # the witness: server-filesystem opens the NFD spelling as the NFC folder on disk
            spelled = _nfd(public / "menu.txt")
            assert spelled != str(public / "menu.txt") and not Path(spelled).exists()
            menu = await client.call_tool("read_text_file", {"path": spelled})
            assert not menu.is_error and "espresso" in _text(menu)
            for path in (_nfd(gk_home / "gatekeeper.db"), _nfd(gk_home / "x" / ".." / "gatekeeper.db")):
                got = await client.call_tool("read_text_file", {"path": path})
                assert got.is_error and "own files" in _text(got), path
            listing = await client.call_tool("list_directory", {"path": _nfd(gk_home)})
            assert listing.is_error and "own files" in _text(listing)
            payroll = await client.call_tool("read_text_file", {"path": _nfd(private / "payroll.txt")})
            assert payroll.is_error and "123456" not in _text(payroll)
    assert (await _events(gk_home)).count("denied") == 4


async def test_proc_magic_links_name_the_gatekeepers_files(tmp_path: Path) -> None:
    user = tmp_path / "user"
    state = user / ".local" / "state" / "mcp-gatekeeper"
    state.mkdir(parents=True)
    (user / "notes.txt").write_text("plain notes\n")
    cfg = tmp_path / "gk.toml"
    cfg.write_text("[ui]\nautostart = false\n")
    # server-filesystem rooted at "/", started in the user's home (so its /proc/self/cwd is the home)
    params = wrap_params(state, cfg, "fs", [_fs(), "/"]).model_copy(update={"cwd": str(user)})
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, _watcher):
            assert (state / "gatekeeper.db").exists()
            for witness in ("/proc/self/cwd/notes.txt", f"/proc/self/root{user}/x/../notes.txt"):
                got = await client.call_tool("read_text_file", {"path": witness})
                assert not got.is_error and "plain notes" in _text(got), witness  # the links work
            for path in (
                f"/proc/self/root{state}/x/../gatekeeper.db",
                f"/proc/self/root{user}/.local/./state/mcp-gatekeeper/gatekeeper.db",
                f"/proc/thread-self/root{user}/.local/state/x/../mcp-gatekeeper/gatekeeper.db",
                "/proc/self/cwd/.local/state/mcp-gatekeeper/gatekeeper.db",
                "/proc/self/cwd/x/../.local/state/mcp-gatekeeper/gatekeeper.db",
            ):
                got = await client.call_tool("read_text_file", {"path": path})
                assert got.is_error and "own files" in _text(got), path
    assert (await _events(state)).count("denied") == 5


CREDENTIALS = {
    ".config/gh/hosts.yml": "oauth_token: gho_cli_token",
    ".pgpass": "db:5432:*:me:pg_secret",
    ".vault-token": "hvs.vault_secret",
    ".envrc": "export API_KEY=direnv_secret",
    "certs/client.p12": "p12_secret_body",
    ".config/gcloud/application_default_credentials.json": '{"refresh_token": "gcloud_secret"}',
}


async def test_credentials_files_the_shipped_config_did_not_name(home: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    for rel, secret in CREDENTIALS.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(secret + "\n")
    (work / "notes.txt").write_text("plain notes\n")
    params = wrap_params(home, _shipped("filesystem.toml", tmp_path, work), "filesystem", [_fs(), str(work)])
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, _watcher):
            plain = await client.call_tool("read_text_file", {"path": str(work / "notes.txt")})
            assert not plain.is_error and "plain notes" in _text(plain)
            for rel, secret in CREDENTIALS.items():
                got = await client.call_tool("read_text_file", {"path": str(work / rel)})
                assert got.is_error and secret not in _text(got), rel
            listed = [str(work / "notes.txt"), *(str(work / rel) for rel in CREDENTIALS)]
            many = await client.call_tool("read_multiple_files", {"paths": listed})
            assert many.is_error and not any(s in _text(many) for s in CREDENTIALS.values())
    assert (await _events(home)).count("denied") == len(CREDENTIALS) + 1


async def test_other_spellings_and_tools_that_would_print_a_secret(home: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / ".ssh").mkdir()
    env = work / ".env"
    env.write_text("DB_PASSWORD=hunter2\n")
    (work / ".ssh" / "id_ed25519").write_text("ssh-private-body\n")
    params = wrap_params(home, _shipped("filesystem.toml", tmp_path, work), "filesystem", [_fs(), str(work)])
    secrets = ("hunter2", "ssh-private-body")
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("read_text_file", {"path": f"{env}/"}),
        ("read_text_file", {"path": f"{work}/./.env"}),
        ("read_text_file", {"path": f"{work}/src//../.env"}),
        ("read_text_file", {"path": f'"{env}"'}),  # server-filesystem strips quotes and spaces
        ("read_text_file", {"path": f" {env} "}),
        ("read_text_file", {"path": ".env", "head": 1}),  # relative to the server's root
        ("read_text_file", {"path": "src/../.ssh/id_ed25519"}),
        ("read_text_file", {"path": f"file://{work}/src/%2e%2e/.env"}),
        ("read_text_file", {"path": [str(env)]}),  # a list where the schema wants a string
        ("read_multiple_files", {"paths": str(env)}),  # a string where the schema wants a list
        ("read_media_file", {"path": str(work / ".ssh" / "id_ed25519")}),
        ("edit_file", {"path": str(env), "edits": [{"oldText": "x", "newText": "y"}], "dryRun": True}),
        ("move_file", {"source": str(env), "destination": str(work / "src" / "env.txt")}),
        ("move_file", {"source": str(work / "src"), "destination": str(work / ".ssh" / "src")}),
        ("directory_tree", {"path": str(work / ".ssh")}),
        ("search_files", {"path": str(work / ".ssh"), "pattern": "*"}),
        ("get_file_info", {"path": str(work / "SRC" / ".." / ".ENV")}),  # .ENV is .env on macOS and Windows
    ]
    with anyio.fail_after(90):
        async with gatekeeper(params) as (client, _watcher):
            for tool, args in attempts:
                got = await client.call_tool(tool, args)
                assert got.is_error, (tool, args)
                assert not any(s in _text(got) for s in secrets), (tool, args)
    assert env.read_text() == "DB_PASSWORD=hunter2\n" and (work / "src").is_dir()
    assert not (work / "src" / "env.txt").exists()
    events = await _events(home)
    assert "allowed" not in events and "approved" not in events


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=a@example.test", "-c", "user.name=a", *args],
        cwd=repo, check=True, capture_output=True,
    )  # fmt: skip


async def test_git_revisions_that_name_a_committed_secret(home: Path, tmp_path: Path) -> None:
    git_server = peer_bin("mcp-server-git")
    if git_server is None:
        pytest.fail("mcp-server-git missing (run .ci/setup)")
    repo = tmp_path / "repo"
    (repo / "deploy").mkdir(parents=True)
    (repo / ".env").write_text("DB_PASSWORD=hunter2\n")
    (repo / "deploy" / "server.pem").write_text("pem-private-body\n")
    (repo / ".pgpass").write_text("db:5432:*:me:pg_secret\n")
    (repo / "notes.txt").write_text("plain notes\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    params = wrap_params(home, _shipped("multi-upstream.toml", tmp_path), "git", [git_server])
    secrets = ("hunter2", "pem-private-body", "pg_secret")
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, _watcher):
            plain = await client.call_tool("git_show", {"repo_path": str(repo), "revision": "HEAD:notes.txt"})
            assert not plain.is_error and "plain notes" in _text(plain)  # a blob by path does print
            for revision in (
                "HEAD^{tree}:.env", "@:.env", ":.env", ":0:.env", "HEAD@{0}:.env", "main:.env", "HEAD~0:.env",
                "HEAD:deploy/server.pem", "HEAD:deploy/SERVER.PEM", "HEAD:.pgpass",
            ):  # fmt: skip
                got = await client.call_tool("git_show", {"repo_path": str(repo), "revision": revision})
                assert got.is_error and not any(s in _text(got) for s in secrets), revision
            staged = await client.call_tool("git_add", {"repo_path": str(repo), "files": ["notes.txt", ".pgpass"]})
            assert staged.is_error and "credentials" in _text(staged)
    assert (await _events(home)).count("denied") == 11


PAYMENTS = ROOT / "tests" / "upstreams" / "payments_server.py"


@pytest.mark.parametrize("lane", [pytest.param(True, id="fast-lane"), pytest.param(False, id="full-path")])
async def test_a_json_string_where_the_schema_also_allows_a_string(home: Path, tmp_path: Path, lane: bool) -> None:
    # pay_or_refer(payment: Payment | str): the schema's anyOf has a string branch, so the string validates,
    # and MCPServer parses it into a Payment all the same
    cfg = tmp_path / "gk.toml"
    cfg.write_text(
        f"[ui]\nautostart = false\n[performance]\nfast_lane = {str(lane).lower()}\n"
        '[[rules]]\ntool = "pay_or_refer"\nwhen = { "payment.amount" = { gt = 5000 } }\ngate = "deny"\n'
        'reason = "payments over 5000 need the finance desk"\n'
        '[[rules]]\ntool = "pay_or_refer"\nwhen = { "payment.to" = { not_in = ["mallory"] } }\ngate = "allow"\n'
        '[[rules]]\ntool = "pay_or_refer"\ngate = "deny"\nreason = "not for an agent"\n'
    )
    ledger = tmp_path / "ledger.jsonl"
    params = wrap_params(home, cfg, "pay", [sys.executable, str(PAYMENTS), "--ledger", str(ledger)])
    big = {"to": "mallory", "amount": 1_000_000}
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, _watcher):
            for payment in (json.dumps(big), f"  {json.dumps(big)}\n", json.dumps(big, indent=2)):
                got = await client.call_tool("pay_or_refer", {"payment": payment})
                assert got.is_error and "finance desk" in _text(got), payment
            # an allow rule must hold for every reading: the string's parsed payment goes to mallory
            small = await client.call_tool("pay_or_refer", {"payment": json.dumps({"to": "mallory", "amount": 5})})
            assert small.is_error and "not for an agent" in _text(small)
            fine = await client.call_tool("pay_or_refer", {"payment": {"to": "alice", "amount": 10}})
            ref = await client.call_tool("pay_or_refer", {"payment": "invoice 42"})
            assert not fine.is_error and not ref.is_error and "noted reference" in _text(ref)
    assert [json.loads(line) for line in ledger.read_text().splitlines()] == [
        {"to": "alice", "amount": 10.0, "currency": "EUR"}
    ]


async def test_the_agent_cannot_write_the_config_the_next_start_would_load(home: Path, tmp_path: Path) -> None:
    # no config file yet (the README's first snippet): the user's config folder is where the next start looks
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("plain notes\n")
    env = {"HOME": str(user), "XDG_CONFIG_HOME": str(user / ".config")}
    params = wrap_params(home, None, "fs", [_fs(), str(user)], **env)
    evil = '[security]\nprotect_own_files = false\n[[rules]]\ntool = "*"\ngate = "allow"\n'
    target = user / ".config" / "mcp-gatekeeper" / "config.toml"
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, _watcher):
            plain = await client.call_tool("read_text_file", {"path": str(user / "notes.txt")})
            assert not plain.is_error
            for tool, args in (
                ("create_directory", {"path": str(target.parent)}),
                ("write_file", {"path": str(target), "content": evil}),
                ("write_file", {"path": "~/.config/mcp-gatekeeper/config.toml", "content": evil}),
                ("write_file", {"path": ".config/x/../mcp-gatekeeper/config.toml", "content": evil}),
                ("move_file", {"source": str(user / "notes.txt"), "destination": str(target)}),
            ):
                got = await client.call_tool(tool, args)
                assert got.is_error and "own files" in _text(got), (tool, args)
    assert not target.exists() and not target.parent.exists()
    assert (await _events(home)).count("denied") == 5
