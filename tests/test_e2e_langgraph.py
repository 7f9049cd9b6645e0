"""Issue 11 case 7 with a real per-call-session agent: LangGraph + ``langchain-mcp-adapters`` through ``wrap``.

The adapters' ``MultiServerMCPClient(...).get_tools()`` (their README's first example) opens a new session,
so a new ``mcp-gatekeeper wrap`` process, for every tool call. The client's budget here is shorter than the
reviewer: the first call is answered "pending, retry the identical call" and its process exits; the agent
(tests/clients/langgraph_agent.py, a scripted chat model in the pinned LangGraph venv) retries from a new
process; the reviewer decides the call the agent was told about, with the real CLI, only after the first
process is gone. One hold, at most one execution, and the agent ends with the reviewer's outcome.

Witnesses: the upstream (server-filesystem's ``edit_file`` is not idempotent, so a second run would show
in the file; feature_server logs every call it receives), the store's rows, and the agent's own output.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness import FEATURE_SERVER, HELD, ROOT, StderrWatcher, call_log, cli, gk_env, langgraph_python, npm_bin

AGENT = ROOT / "tests" / "clients" / "langgraph_agent.py"
GATEKEEPER = Path(sys.executable).with_name("mcp-gatekeeper")
LANGGRAPH_PYTHON = langgraph_python()
FILESYSTEM = npm_bin("mcp-server-filesystem")

# A skip here is a failure in CI (tests/conftest.py): there the venv must have been built by .ci/setup.
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        LANGGRAPH_PYTHON is None, reason="the LangGraph venv .peers/langgraph-venv is missing (run .ci/setup)"
    ),
    pytest.mark.skipif(
        not GATEKEEPER.exists(), reason="the mcp-gatekeeper executable is not installed (pip install -e .)"
    ),
]
RETRY = "retry the identical call"
TOLD_ID = re.compile(r"\(call ([0-9a-f]{12})")

# The adapters open an mcp 1.x ClientSession without a clientInfo of their own: its default name is "mcp".
# A 2 s budget (answered 1 s in) stands for Claude Desktop's 60 s against a reviewer who takes minutes.
CONFIG = """
[ui]
autostart = false
[waiting]
margin = "1s"
[[waiting.clients]]
name = "mcp"
budget = "2s"
[[waiting.clients]]
name = "other-agent"
budget = "2s"
[[rules]]
tool = ["edit_file", "write_note"]
gate = "hard"
"""

Reviewer = Callable[[str], Awaitable[None]]


def calls_of(db: Path, tool: str) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT id, state, arguments, modified_arguments FROM calls WHERE tool = ? ORDER BY created_at", (tool,)
        ).fetchall()
    return [dict(r) for r in rows]


def holder_pid(db: Path, call_prefix: str) -> int:
    with sqlite3.connect(db) as conn:
        (pid,) = conn.execute(
            "SELECT i.pid FROM calls c JOIN instances i ON i.id = c.instance_id WHERE c.id LIKE ?", (call_prefix + "%",)
        ).fetchone()
    return int(pid)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists (Linux; this file runs there)
    except ProcessLookupError:
        return True
    return False


async def _lines(stream: Any) -> AsyncIterator[dict[str, Any]]:
    buf = b""
    async for chunk in stream:
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


async def run_agent(
    home: Path, tmp_path: Path, *, server: str, upstream: list[str], tool: str, arguments: dict[str, Any],
    reviewer: Reviewer, client_name: str | None = None,
) -> tuple[str, list[dict[str, Any]], list[str]]:  # fmt: skip
    """Run the agent to its end; ``reviewer(call id)`` decides once the agent was told to retry.

    Returns the id of the call the agent was told about, the agent's output lines and the stderr lines.
    """
    assert LANGGRAPH_PYTHON is not None
    cfg = tmp_path / "gk.toml"
    cfg.write_text(CONFIG)
    db = home / "gatekeeper.db"
    spec = {
        "server": server,
        "command": str(GATEKEEPER),
        "args": ["wrap", "--config", str(cfg), "--name", server, "--", *upstream],
        "env": {"MCP_GATEKEEPER_HOME": str(home), "PATH": os.environ.get("PATH", "")},
        "tool": tool,
        "arguments": arguments,
        "max_calls": 30,
        "client_name": client_name,
    }
    watcher = StderrWatcher()
    events: list[dict[str, Any]] = []
    try:
        with anyio.fail_after(150):
            argv = [LANGGRAPH_PYTHON, str(AGENT), json.dumps(spec)]
            async with await anyio.open_process(argv, env=gk_env(home), stderr=watcher.file, cwd=str(ROOT)) as proc:
                assert proc.stdout is not None
                out = _lines(proc.stdout)
                held = await watcher.held()  # the first call is held by the first wrap process
                first_holder = holder_pid(db, held)
                first = await out.__anext__()
                events.append(first)
                assert first["event"] == "tool_result" and RETRY in first["text"], first
                told = TOLD_ID.search(first["text"])
                assert told is not None and told.group(1).startswith(held), first["text"]
                # the agent has its answer only once the adapters closed that session: its wrap process is gone
                assert process_gone(first_holder)
                await reviewer(told.group(1))
                async for event in out:
                    events.append(event)
                assert await proc.wait() == 0
    finally:
        watcher.close()
    assert events[-1]["event"] == "final", events
    return told.group(1), events, watcher.lines


@pytest.mark.npm
@pytest.mark.skipif(FILESYSTEM is None, reason="node or server-filesystem missing (run .ci/setup)")
async def test_langgraph_agent_gets_the_approved_result_after_its_first_process_exited(
    home: Path, tmp_path: Path
) -> None:
    assert FILESYSTEM is not None
    work = tmp_path / "work"
    work.mkdir()
    target = work / "counter.txt"
    target.write_text("count: 0\n")
    # not idempotent: a second run would find "count: 0" again and append the note twice
    edit = {"path": str(target), "edits": [{"oldText": "count: 0", "newText": "count: 0 (approved once)"}]}

    async def approve(call_id: str) -> None:
        assert target.read_text() == "count: 0\n"  # nothing ran before the decision
        await cli(home, "approve", call_id)

    told, events, stderr = await run_agent(
        home, tmp_path, server="fs", upstream=[FILESYSTEM, str(work)], tool="edit_file", arguments=edit,
        reviewer=approve,
    )  # fmt: skip

    assert target.read_text() == "count: 0 (approved once)\n"  # the upstream ran it exactly once
    (row,) = calls_of(home / "gatekeeper.db", "edit_file")  # one hold: retries attached to it
    assert row["id"].startswith(told) and row["state"] == "forwarded"
    assert json.loads(row["arguments"]) == edit
    assert len([line for line in stderr if HELD.search(line)]) == 1
    final = events[-1]
    assert "+count: 0 (approved once)" in final["answer"]  # the upstream's real diff reached the agent


@pytest.mark.parametrize("decision", ["modify", "reject"])
async def test_langgraph_agent_gets_the_reviewers_edit_or_rejection(home: Path, tmp_path: Path, decision: str) -> None:
    log = tmp_path / "upstream-calls.jsonl"
    asked = {"path": "/notes/plan.txt", "content": "draft from the agent"}
    edited = {"path": "/notes/plan.txt", "content": "reviewed"}
    reason = "not during the freeze; ask again on Monday"

    async def decide(call_id: str) -> None:
        assert all(c["tool"] != "write_note" for c in call_log(log))  # nothing ran before the decision
        if decision == "modify":
            await cli(home, "approve", call_id, "--args", json.dumps(edited))
        else:
            await cli(home, "reject", call_id, "--reason", reason)

    told, events, stderr = await run_agent(
        home, tmp_path, server="notes", upstream=[sys.executable, str(FEATURE_SERVER), "--call-log", str(log)],
        tool="write_note", arguments=asked, reviewer=decide,
    )  # fmt: skip

    ran = [c["arguments"] for c in call_log(log) if c["tool"] == "write_note"]
    (row,) = calls_of(home / "gatekeeper.db", "write_note")  # one hold
    assert row["id"].startswith(told)
    assert len([line for line in stderr if HELD.search(line)]) == 1
    answer = events[-1]["answer"]
    if decision == "modify":
        assert ran == [edited]  # exactly once, with the reviewer's arguments
        assert row["state"] == "forwarded" and json.loads(row["modified_arguments"]) == edited
        assert f"wrote {len(edited['content'])} characters to /notes/plan.txt" in answer
        assert "changed the arguments" in answer
    else:
        assert ran == []  # nothing ran
        assert row["state"] == "rejected"
        assert reason in answer


async def test_another_agent_sending_the_identical_call_gets_its_own_hold_not_the_approved_result(
    home: Path, tmp_path: Path
) -> None:
    """The attacker's way round: replay an approved call's exact arguments under another client identity."""
    log = tmp_path / "upstream-calls.jsonl"
    upstream = [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)]
    note = {"path": "/notes/refund.txt", "content": "refund order 1001"}
    reason = "this agent was not asked to do that"

    async def approve(call_id: str) -> None:
        await cli(home, "approve", call_id)

    async def reject(call_id: str) -> None:
        await cli(home, "reject", call_id, "--reason", reason)

    first, events, _ = await run_agent(
        home, tmp_path, server="notes", upstream=upstream, tool="write_note", arguments=note, reviewer=approve
    )
    assert "wrote 17 characters to /notes/refund.txt" in events[-1]["answer"]
    # same upstream, tool and arguments, well inside retry_grace, from another client: a new hold of its own
    second, events, _ = await run_agent(
        home, tmp_path, server="notes", upstream=upstream, tool="write_note", arguments=note, reviewer=reject,
        client_name="other-agent",
    )  # fmt: skip
    assert second != first
    assert reason in events[-1]["answer"] and "wrote" not in events[-1]["answer"]
    assert [c["arguments"] for c in call_log(log) if c["tool"] == "write_note"] == [note]  # ran once, for the first
    rows = calls_of(home / "gatekeeper.db", "write_note")
    assert [(r["id"][:12], r["state"]) for r in rows] == [(first, "forwarded"), (second, "rejected")]
