"""End to end over real processes: the SDK client → ``mcp-gatekeeper wrap`` → ``mcp-server-git`` (PyPI).

Decisions come from a second process (the CLI), as a human at another terminal would make them.
The repository itself is the witness: a rejected commit does not exist, an approved one does, and a
modified one carries the reviewer's message.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import anyio
import pytest
from harness import cli, gatekeeper, peer_bin, wrap_params

pytestmark = pytest.mark.anyio

GIT_SERVER = peer_bin("mcp-server-git")
needs_git_server = pytest.mark.skipif(GIT_SERVER is None, reason="mcp-server-git not installed (run .ci/setup)")

CONFIG = """
[ui]
autostart = false

[[rules]]
name = "git-reads-and-staging"
upstream = "git"
tool = ["git_status", "git_log", "git_diff*", "git_show", "git_add"]
gate = "allow"

[[rules]]
name = "commits"
upstream = "git"
tool = "git_commit"
gate = "hard"
summary = "Commit in {repo_path}: {message}"
effects = { approve = "A commit is created on the current branch.", reject = "Nothing is committed." }
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def commits(repo: Path) -> list[str]:
    proc = subprocess.run(["git", "-C", str(repo), "log", "--format=%s"], capture_output=True, text=True)
    return proc.stdout.splitlines() if proc.returncode == 0 else []


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    git(r, "config", "user.email", "agent@example.com")
    git(r, "config", "user.name", "Agent")
    return r


@needs_git_server
async def test_git_commit_rejected_approved_and_modified(home: Path, tmp_path: Path, repo: Path) -> None:
    config = tmp_path / "gk.toml"
    config.write_text(CONFIG)
    assert GIT_SERVER is not None
    params = wrap_params(home, config, "git", [GIT_SERVER])
    latencies: list[float] = []
    with anyio.fail_after(90):
        async with gatekeeper(params) as (client, watcher):
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"git_commit", "git_add", "git_status"} <= names

            async def commit_through_gate(file: str, message: str, decide: list[str]) -> tuple[bool, str]:
                (repo / file).write_text(f"content of {file}\n")
                added = await client.call_tool("git_add", {"repo_path": str(repo), "files": [file]})
                assert not added.is_error, added.content
                result: dict[str, object] = {}

                async def call() -> None:
                    r = await client.call_tool("git_commit", {"repo_path": str(repo), "message": message})
                    result["r"] = r
                    result["t"] = time.time()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    held = await watcher.held()
                    assert message not in commits(repo)  # nothing ran while held
                    await cli(home, *decide[:1], held, *decide[1:])
                r = result["r"]
                text = " ".join(getattr(c, "text", "") for c in r.content)  # type: ignore[attr-defined]
                _, out, _ = await cli(home, "show", held, "--json")
                row = json.loads(out)
                if row.get("decided_at"):
                    latencies.append(float(result["t"]) - row["decided_at"])  # type: ignore[arg-type]
                return bool(r.is_error), text  # type: ignore[attr-defined]

            # 1. rejected: the agent reads the reason; the repo has no commit
            is_error, text = await commit_through_gate("a.txt", "add a", ["reject", "--reason", "not on main please"])
            assert is_error
            assert "not on main please" in text
            assert commits(repo) == []

            # 2. approved: the commit exists, with the agent's message
            is_error, text = await commit_through_gate("a.txt", "add a (approved)", ["approve"])
            assert not is_error, text
            assert commits(repo) == ["add a (approved)"]

            # 3. modified, then approved: the commit carries the reviewer's message
            reviewer_args = json.dumps({"repo_path": str(repo), "message": "docs: add b (reviewed)"})
            is_error, text = await commit_through_gate("b.txt", "stuff", ["approve", "--args", reviewer_args])
            assert not is_error, text
            assert commits(repo) == ["docs: add b (reviewed)", "add a (approved)"]
            assert "changed the arguments" in text

    # the decision log holds all three decisions and its chain verifies
    _, out, _ = await cli(home, "audit", "--json", "--limit", "1000")
    log = json.loads(out)
    events = [e["event"] for e in log]
    assert events.count("rejected") == 1
    assert events.count("allowed") == 3  # the three git_add calls
    approved = {e["call_id"] for e in log if e["event"] == "approved"}
    forwarded = {e["call_id"] for e in log if e["event"] == "forwarded"}
    rejected = {e["call_id"] for e in log if e["event"] == "rejected"}
    assert len(approved) == 2 and approved <= forwarded  # every approved call ran, once
    assert not rejected & forwarded  # the rejected one never ran
    rc, out, _ = await cli(home, "audit", "--verify")
    assert rc == 0 and "intact" in out
    print(
        "\n[figure] decision (CLI in another process, committed) → result at the agent, mcp-server-git: "
        + ", ".join(f"{x * 1000:.0f} ms" for x in latencies)
    )
