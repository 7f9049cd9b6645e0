"""The CLI and the first ten minutes: closed pipes, commands that run as printed, words instead of dicts,
config problems in file order with a suggestion, header secrets out of ``ps``, honest default word lists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil
import pytest
from harness import FEATURE_SERVER, ROOT, call_log, gatekeeper, gk_env, npm_bin, peer_bin, wrap_params
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_gatekeeper import hostos
from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import GatekeeperConfig, parse_config
from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.models import NewCall, State
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.serve import db_path
from mcp_gatekeeper.store import Store

GK = [sys.executable, "-m", "mcp_gatekeeper"]


def _hold(home: Path, **fields: Any) -> str:
    """A held call recorded in the home's real database; its id."""

    async def go() -> str:
        async with Store.open(db_path(home), SystemClock()) as store:
            new = NewCall(
                **{
                    "upstream": "shop",
                    "tool": "issue_refund",
                    "arguments": {"order_id": "A-17", "amount": 40},
                    "gate": "hard",
                    "risk": "high",
                    "rule": "refunds",
                    **fields,
                }
            )
            return (await store.insert_call(new, state=State.PENDING, deadline_at=SystemClock().now() + 600)).id

    return anyio.run(go)


# --------------------------------------------------------------------------- a reader that goes away


@pytest.mark.parametrize("command", ["audit", "show", "explain"])
def test_a_closed_pipe_ends_quietly(home: Path, command: str) -> None:
    """``audit | head -c 1``: a real pipe whose reader closes after one byte; no traceback, a quiet exit."""
    big = "y" * 300_000  # more than a pipe buffer holds, so the writer is still writing when the reader leaves
    call = _hold(home, arguments={"path": "/tmp/x", "content": big}, summary="write " + big)
    for i in range(400):
        _hold(home, arguments={"i": i})
    args = {
        "audit": ["audit", "--limit", "100000"],
        "show": ["show", call],
        "explain": ["explain", "write_file", "--args", json.dumps({"path": "/tmp/x"}), "--annotations", "{}"],
    }[command]
    if command == "explain":  # a long summary makes explain's output large too
        config = home / "long.toml"
        config.write_text(
            f'[ui]\nautostart = false\n[[rules]]\ntool = "write_file"\ngate = "hard"\nsummary = "{big}"\n'
        )
        args += ["--config", str(config)]
    writer = subprocess.Popen([*GK, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=gk_env(home), cwd=ROOT)
    assert writer.stdout is not None and writer.stderr is not None
    first = writer.stdout.read(1)
    writer.stdout.close()
    err = writer.stderr.read().decode()
    rc = writer.wait(timeout=60)
    assert first, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert rc in (0, 141), err


# --------------------------------------------------------------------------- commands that run as printed


def test_self_command_forms(tmp_path: Path) -> None:
    venv_bin = str(tmp_path / "venv" / "bin")
    script = f"{venv_bin}/mcp-gatekeeper"
    Path(venv_bin).mkdir(parents=True)
    Path(script).write_text("#!/bin/sh\n")
    Path(script).chmod(0o755)
    # the script, found on PATH as this very file: its bare name
    assert hostos.self_command(argv0=script, env={"PATH": venv_bin}, platform="linux") == "mcp-gatekeeper"
    # not on PATH (as after .ci/demo), or PATH names a different one: the absolute path
    assert hostos.self_command(argv0=script, env={"PATH": "/usr/bin"}, platform="linux") == script
    # python -m mcp_gatekeeper: that interpreter
    got = hostos.self_command(
        argv0="/x/mcp_gatekeeper/__main__.py", executable="/my py/python", env={}, platform="linux"
    )
    assert got == "'/my py/python' -m mcp_gatekeeper"
    # a data home other than the usual one travels with the command (a plain terminal would open another queue)
    got = hostos.self_command(
        argv0=script, env={"PATH": venv_bin, "MCP_GATEKEEPER_HOME": "/srv/gk home"}, platform="linux"
    )
    assert got == "MCP_GATEKEEPER_HOME='/srv/gk home' mcp-gatekeeper"
    alone = hostos.self_command(
        argv0=script, env={"PATH": venv_bin, "MCP_GATEKEEPER_HOME": "/srv/gk home"}, platform="linux", with_home=False
    )
    assert alone == "mcp-gatekeeper"  # for a client config's command: the home goes in its env block
    # Windows: quoted when the path has a space; no POSIX-only prefix
    win = r"C:\Program Files\gk\Scripts\mcp-gatekeeper.exe"
    got = hostos.self_command(argv0=win, env={"PATH": "", "MCP_GATEKEEPER_HOME": r"D:\gk"}, platform="win32")
    assert got == f'"{win}"'


def test_printed_hints_run_as_printed(home: Path, tmp_path: Path) -> None:
    """`pending`'s hint, run exactly as printed through a shell from a directory where nothing is on PATH."""
    _hold(home)
    out = subprocess.run(
        [*GK, "pending"], env=gk_env(home), cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    hint = out.strip().splitlines()[-1]
    command = hint.split("Decide: ", 1)[1].split("  or  ", 1)[0].replace("ID", out.split()[0])
    env = gk_env(home, PATH="/usr/bin:/bin")  # mcp-gatekeeper is not on this PATH
    # shell=True on purpose: the printed line is run the way a person pastes it into a shell
    done = subprocess.run(command, shell=True, env=env, cwd=tmp_path, capture_output=True, text=True, check=False)  # noqa: S602
    assert done.returncode == 0, (command, done.stderr)
    shown = subprocess.run([*GK, "show", out.split()[0]], env=gk_env(home), cwd=ROOT, capture_output=True, text=True)
    assert "approved" in shown.stdout


# --------------------------------------------------------------------------- show, doctor, check-config


def test_show_keeps_labels_apart_from_values(home: Path) -> None:
    call = _hold(home, effects={"approve": "Money goes back to the card", "reject": "Nothing happens"})
    out = subprocess.run([*GK, "show", call], env=gk_env(home), cwd=ROOT, capture_output=True, text=True).stdout
    lines = out.splitlines()
    assert "if approved  Money goes back to the card" in lines
    assert "if rejected  Nothing happens" in lines
    for line in lines:  # every label stands in its column with at least one space before its value
        if line[:1].strip():
            assert line[12] == " " and line[13] != " ", line


def test_doctor_speaks_words_and_names_the_built_in_default(home: Path, tmp_path: Path) -> None:
    _hold(home)
    config = tmp_path / "c.toml"
    config.write_text("[ui]\nautostart = false\nport = 1\n")
    argv = [*GK, "doctor", "--config", str(config), "--project", str(tmp_path)]
    out = subprocess.run(argv, env=gk_env(home, HOME=str(tmp_path)), cwd=ROOT, capture_output=True, text=True).stdout
    database = next(line for line in out.splitlines() if line.startswith("database"))
    assert "{" not in database and "1 call: 1 pending" in database
    config_line = next(line for line in out.splitlines() if line.startswith("config"))
    assert "no rules, so the built-in default decides every call" in config_line and str(config) in config_line


def test_check_config_problems_in_file_order_with_did_you_mean() -> None:
    text = '[ui]\nprot = 8765\n\n[[rules]]\ntool = "x"\ngat = "hold"\n\n[upstreams.a]\ncomand = "x"\n\n[defaults]\nunknwn = "hold"\nzzzzqq = 1\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="c.toml")
    problems = caught.value.problems
    lines = [int(p.split(":")[0].removeprefix("line ")) for p in problems]
    assert lines == sorted(lines)
    assert "ui.prot: unknown key; did you mean 'port'?" in problems[0]
    assert any("rules[0].gat: unknown key; did you mean 'gate'?" in p for p in problems)
    assert any("upstreams.a.comand: unknown key; did you mean 'command'?" in p for p in problems)
    assert any("defaults.unknwn: unknown key; did you mean 'unknown'?" in p for p in problems)
    far = next(p for p in problems if "zzzzqq" in p)
    assert "did you mean" not in far  # nothing close: no guess


# --------------------------------------------------------------------------- the default word lists, honestly


def _real_servers(tmp_path: Path) -> dict[str, list[str] | None]:
    git, time_server = peer_bin("mcp-server-git"), peer_bin("mcp-server-time")
    fs, everything = npm_bin("mcp-server-filesystem"), npm_bin("mcp-server-everything")
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    return {
        "git": [git, "--repository", str(tmp_path / "repo")] if git else None,
        "time": [time_server] if time_server else None,
        "filesystem": [fs, str(tmp_path)] if fs else None,
        "everything": [everything] if everything else None,
    }


@pytest.mark.npm
@pytest.mark.anyio
async def test_default_verdicts_agree_with_the_real_servers_annotations(tmp_path: Path) -> None:
    """Every tool of mcp-server-git, -time, server-filesystem and server-everything, with its own annotations:
    a tool the server calls read-only is never held for a word in its name, and every tool it says changes
    something is held. The one exception is a name that says nothing (``trigger-long-running-operation``):
    an annotation alone never lets an unknown kind of tool pass."""
    servers = _real_servers(tmp_path)
    missing = [name for name, cmd in servers.items() if cmd is None]
    if missing:
        pytest.skip(f"peers missing: {', '.join(missing)} (run .ci/setup)")
    policy = Policy(GatekeeperConfig())
    seen: dict[str, tuple[str, str]] = {}
    with anyio.fail_after(120):
        for name, cmd in servers.items():
            assert cmd is not None
            params = StdioServerParameters(command=cmd[0], args=cmd[1:])
            with open(os.devnull, "w") as quiet:
                async with Client(stdio_client(params, errlog=quiet)) as client:
                    for tool in (await client.list_tools()).tools:
                        ann = tool.annotations.model_dump(exclude_none=True, by_alias=True) if tool.annotations else {}
                        verdict = policy.evaluate(name, tool.name, {}, ann)
                        seen[f"{name}/{tool.name}"] = (verdict.action, "; ".join(verdict.reasons))
                        if ann.get("readOnlyHint") is True and not ann.get("destructiveHint"):
                            unknown = "neither a read nor a write" in verdict.reasons[0]
                            assert verdict.action == "allow" or unknown, (tool.name, verdict.reasons)
                        if ann.get("readOnlyHint") is False or ann.get("destructiveHint") is True:
                            assert verdict.action == "hold", (tool.name, verdict.reasons)
    # the case that started it: git_branch lists branches, and explain says why it passes
    action, why = seen["git/git_branch"]
    assert action == "allow" and "branch names a thing here" in why and "readOnlyHint" in why
    assert seen["git/git_create_branch"][0] == "hold"
    assert seen["everything/get-annotated-message"][0] == "allow"
    assert seen["everything/simulate-research-query"][0] == "hold"  # readOnlyHint false beats "query"
    assert len(seen) >= 35


@pytest.mark.parametrize(
    ("tool", "annotations", "hold"),
    [
        ("git_branch", None, True),  # no read word, no annotation: branch may be the verb
        ("branch", {"readOnlyHint": True}, False),
        ("delete_branch", {"readOnlyHint": True}, True),  # a real write word is never excused
        ("git_branch", {"readOnlyHint": True, "destructiveHint": True}, True),
        ("git_branch", {"readOnlyHint": "true"}, True),  # only a real `true` counts
        ("list_branch_and_push", {"readOnlyHint": True}, True),
        ("get_message", None, False),
        ("message_user", None, True),
        ("message_user", {"readOnlyHint": False}, True),
        ("getOrder", None, False),  # camelCase splits the same way
        ("order_pizza", None, True),
        ("read_file", {"readOnlyHint": False}, True),  # an explicit "it changes something" tightens a read name
        ("frobnicate", {"readOnlyHint": True}, True),  # an unknown kind of tool is never loosened by an annotation
    ],
)
def test_nouns_and_read_only_hints_cannot_be_used_to_slip_a_write_through(
    tool: str, annotations: dict[str, Any] | None, hold: bool
) -> None:
    verdict = Policy(GatekeeperConfig()).evaluate("up", tool, {}, annotations)
    assert verdict.hold is hold, verdict.reasons


def test_a_write_like_word_is_never_read_as_a_noun() -> None:
    config = parse_config('[defaults]\nwrite_like = ["branch"]\n')
    assert Policy(config).evaluate("git", "git_branch", {}, {"readOnlyHint": True}).hold is True


def test_explain_says_why_a_noun_passes(home: Path) -> None:
    out = subprocess.run(
        [*GK, "explain", "git_branch", "--upstream", "git", "--annotations", '{"readOnlyHint": true}'],
        env=gk_env(home),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "-> ALLOW" in out and "branch names a thing here, not an action" in out


def _plain_terminal_env() -> dict[str, str]:
    """A terminal that knows nothing of the gatekeeper: no data home setting, no venv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_GATEKEEPER")}
    env["PATH"] = "/usr/bin:/bin"
    return env


@pytest.mark.anyio
async def test_the_held_line_approves_as_printed(home: Path, tmp_path: Path, no_ui_config: Path) -> None:
    """A real wrap holds a write; the command its HELD line prints, pasted into a plain shell, approves it."""
    log = tmp_path / "calls.jsonl"
    params = wrap_params(home, no_ui_config, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)])
    held_line = re.compile(r"HELD ([0-9a-f]{8}) .*approve: (.+ approve \1)  reject: (.+ reject \1 --reason 'why')")
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, watcher), anyio.create_task_group() as tg:
            results: list[Any] = []

            async def call() -> None:
                results.append(await client.call_tool("write_note", {"path": "/tmp/n", "content": "hi"}))

            tg.start_soon(call)
            m = await watcher.wait_for(held_line)
            approve = m.group(2)
            assert "mcp_gatekeeper" in approve or "mcp-gatekeeper" in approve
            done = await anyio.run_process(
                approve, env=_plain_terminal_env(), cwd=str(tmp_path), check=False
            )  # a str runs through the shell, as pasted
            assert done.returncode == 0, (approve, done.stderr.decode())
    assert not results[0].is_error
    assert [c["arguments"] for c in call_log(log) if c["tool"] == "write_note"] == [{"path": "/tmp/n", "content": "hi"}]


# --------------------------------------------------------------------------- header secrets stay out of `ps`


@pytest.mark.anyio
async def test_header_env_sends_the_secret_without_putting_it_on_the_command_line(home: Path) -> None:
    """What `install` writes for a remote server: the real wrap sends the bearer token it read from its
    environment, and no process's command line (what `ps` shows every local user) contains it."""
    secret = "Bearer sk-live-0123456789abcdef"
    got: list[bytes] = []
    arrived = anyio.Event()

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            with anyio.move_on_after(10):
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
            got.append(data)
            arrived.set()
            await stream.send(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio's typed attribute, not Django's QuerySet.extra
    argv = [*GK, "wrap", "--name", "remote", "--url", f"http://127.0.0.1:{port}/mcp"]
    argv += ["--header-env", "Authorization=MCP_GATEKEEPER_HEADER_AUTHORIZATION"]
    env = gk_env(home, MCP_GATEKEEPER_HEADER_AUTHORIZATION=secret)
    config = home / "no-ui.toml"
    config.write_text("[ui]\nautostart = false\n")
    env["MCP_GATEKEEPER_CONFIG"] = str(config)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        async with await anyio.open_process(argv, env=env, cwd=ROOT) as proc:
            try:
                with anyio.fail_after(30):
                    await arrived.wait()
                cmdlines = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
                assert any("--header-env" in c for c in cmdlines)  # the wrap is there to be looked at
                assert not any("sk-live-0123456789abcdef" in c for c in cmdlines)
            finally:
                proc.kill()
        tg.cancel_scope.cancel()
    assert b"authorization: " + secret.lower().encode() in got[0].lower()


@pytest.mark.parametrize("bad", ["Authorization", "Authorization=", "=VAR", "Authorization=1BAD", "A=B C"])
def test_header_env_refuses_what_is_not_name_equals_variable(home: Path, bad: str) -> None:
    argv = [*GK, "wrap", "--url", "http://127.0.0.1:9/mcp", "--header-env", bad]
    done = subprocess.run(argv, env=gk_env(home), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--header-env" in done.stderr


def test_header_env_with_an_unset_variable_is_an_error_not_an_empty_secret(home: Path) -> None:
    config = home / "no-ui.toml"
    config.write_text("[ui]\nautostart = false\n")
    argv = [*GK, "wrap", "--config", str(config), "--url", "http://127.0.0.1:9/mcp"]
    argv += ["--header-env", "Authorization=GK_TEST_SURELY_UNSET"]
    env = gk_env(home)
    env.pop("GK_TEST_SURELY_UNSET", None)
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.PIPE)
    assert done.returncode != 0 and "GK_TEST_SURELY_UNSET" in done.stderr
