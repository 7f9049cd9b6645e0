"""Team mode through real processes: ``users add`` makes the accounts, ``serve`` is the approval service, a
``wrap`` process holds an agent's call to a real upstream; reviewers decide over HTTP as their browsers would.
The store file is all the processes share."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from harness import FEATURE_SERVER, ROOT, StderrWatcher, call_log, gatekeeper, gk_env, wrap_params

pytestmark = pytest.mark.anyio

SERVING = re.compile(r"approval service: (http://127\.0\.0\.1:\d+)/login")
CONFIG = """
[ui]
autostart = false
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
risk = "critical"
reviewers = ["ops"]
approvals = 2
"""
PASSWORD = "a-long-enough-password"


def _add(home: Path, cfg: Path, name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gatekeeper", "users", "add", name, "--group", "ops", "--password-stdin",
         "--config", str(cfg)],
        input=PASSWORD + "\n", capture_output=True, text=True, env=gk_env(home), cwd=str(ROOT), check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


async def _session(client: httpx2.AsyncClient, base: str, name: str) -> dict[str, str]:
    r = await client.post("/login", data={"username": name, "password": PASSWORD}, headers={"Origin": base})
    assert r.status_code == 303, r.text
    return {"Cookie": r.headers["set-cookie"].split(";")[0], "X-Gatekeeper-Key": r.headers["location"].partition("#key=")[2],
            "Origin": base}  # fmt: skip


async def test_concurrent_final_approvals_forward_the_call_exactly_once(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(CONFIG)
    for name in ("alice", "bob", "carol"):
        _add(home, cfg, name)
    log = tmp_path / "calls.jsonl"
    service_err = StderrWatcher()
    params = wrap_params(home, cfg, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)])
    try:
        with anyio.fail_after(90):
            async with (
                await anyio.open_process(
                    [sys.executable, "-m", "mcp_gatekeeper", "serve", "--port", "0", "--config", str(cfg)],
                    env=gk_env(home), cwd=str(ROOT), stderr=service_err.file,
                ) as service,
                gatekeeper(params) as (client, watcher),
                anyio.create_task_group() as tg,
            ):  # fmt: skip
                base = (await service_err.wait_for(SERVING)).group(1)
                results: list[object] = []
                answered = anyio.Event()

                async def call() -> None:
                    results.append(await client.call_tool("write_note", {"path": "/srv/motd", "content": "hello"}))
                    answered.set()

                tg.start_soon(call)
                prefix = await watcher.held()
                async with httpx2.AsyncClient(base_url=base) as http:
                    carol, alice, bob = [await _session(http, base, n) for n in ("carol", "alice", "bob")]
                    pending = (await http.get("/api/calls?state=pending", headers=carol)).json()["calls"]
                    call_id, args_digest = pending[0]["id"], pending[0]["args_digest"]
                    assert call_id.startswith(prefix)
                    first = await http.post(
                        f"/api/calls/{call_id}/approve", json={"args_digest": args_digest}, headers=carol
                    )
                    assert first.status_code == 200 and first.json()["decided"] is False
                    statuses: list[int] = []

                    async def approve(who: dict[str, str]) -> None:
                        r = await http.post(
                            f"/api/calls/{call_id}/approve", json={"args_digest": args_digest}, headers=who
                        )
                        statuses.append(r.status_code)

                    async with anyio.create_task_group() as race:  # alice and bob both bring the final approval
                        race.start_soon(approve, alice)
                        race.start_soon(approve, bob)
                    # the one that came second either counted too (and found the call approved) or came too late
                    assert sorted(statuses) in ([200, 200], [200, 409])
                    with anyio.fail_after(30):
                        await answered.wait()  # the agent's answer arrives from the wrap process
                    shown = (await http.get(f"/api/calls/{call_id}", headers=carol)).json()
                    assert shown["decided_by"] in ("alice", "bob")
                    audit = (await http.get(f"/api/audit?call_id={call_id}", headers=carol)).json()["events"]
                service.terminate()
                tg.cancel_scope.cancel()
    finally:
        service_err.close()
    assert [c["arguments"] for c in call_log(log) if c["tool"] == "write_note"] == [
        {"path": "/srv/motd", "content": "hello"}
    ]
    assert not results[0].is_error  # type: ignore[attr-defined]
    events = [e["event"] for e in audit]
    assert events.count("approval_given") in (2, 3) and events.count("approved") == 1, json.dumps(events)
