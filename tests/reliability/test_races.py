"""B1: two approvers at once → exactly one wins and the call runs once. B3: approval vs expiry at the deadline.

Every test runs on both backends (``backing``): a real SQLite file, and a PostgreSQL database where the holders use
the gatekeeper role and the deciders the approver role. The in-process variants run the real proxy (SDK client →
gatekeeper Server → feature upstream); the deciders are separate Store connections and Gates in their own threads and event loops, released
together by a barrier, as two processes would be. The cross-process variants race real CLI processes against a
real ``wrap`` process, released together by closing one pipe they all wait on.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import mcp.types as types
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from harness import ROOT
from relkit import (
    PY,
    Backing,
    call_row,
    cli,
    events_of,
    query,
    received,
    stack,
    text,
    wrap,
    write_config,
)

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.errors import AlreadyDecidedError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import CallRecord, Decision
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.store import Store

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

B1_ITERATIONS = 500
B1_CLI_ITERATIONS = 40
B3_ROUNDS, B3_CALLS_PER_ROUND = 3, 100
B3_CLI_LANES, B3_CLI_ROUNDS = 4, 4

NOTES_HELD = """
[ui]
autostart = false
[[waiting.clients]]
name = "*"  # the test client waits as long as it takes (no pending-and-retry answer on a slow machine)
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
"""

NOTES_HELD_1S = NOTES_HELD + 'timeout = "1s"\n'


class Decider:
    """An approver with its own thread, event loop, Store connection and Gate (as another process would have)."""

    def __init__(self, name: str, location: str, policy: Policy, barrier: threading.Barrier) -> None:
        self.name, self.location, self.policy, self.barrier = name, location, policy, barrier
        self.jobs: queue.Queue[tuple[str, Decision] | None] = queue.Queue()
        self.results: queue.Queue[CallRecord | BaseException] = queue.Queue()
        self.thread = threading.Thread(target=anyio.run, args=(self._main,), name=f"decider-{name}", daemon=True)

    async def _main(self) -> None:
        try:
            async with Store.open(self.location, SystemClock()) as store:
                gate = Gate(store, self.policy, store.clock)
                while (job := self.jobs.get()) is not None:  # this loop has nothing else to run while it waits
                    call_id, decision = job
                    self.barrier.wait(timeout=30)  # both deciders leave the barrier together
                    try:
                        self.results.put(await gate.decide(call_id, decision))
                    except Exception as e:
                        self.results.put(e)
        except BaseException as e:
            self.results.put(e)
            raise

    async def result(self) -> CallRecord | BaseException:
        return await anyio.to_thread.run_sync(lambda: self.results.get(timeout=30))


def decision(kind: str, who: str, rec: CallRecord) -> Decision:
    if kind == "approve":
        return Decision(approve=True, decided_by=who, channel="test", args_digest=rec.args_digest)
    if kind == "reject":
        return Decision(approve=False, decided_by=who, channel="test", reason=f"{who} says no")
    assert kind == "modify"
    edited = {**rec.arguments, "content": f"edited by {who}"}
    return Decision(approve=True, decided_by=who, channel="test", arguments=edited, args_digest=rec.args_digest)


PAIRS = (("approve", "approve"), ("approve", "reject"), ("approve", "modify"), ("reject", "modify"))


async def test_b1_double_decision_x500_exactly_one_wins_and_runs_once(tmp_path: Path, backing: Backing) -> None:
    rng = random.Random(int(os.environ.get("GK_SEED", "1")))
    wins = {"b": 0, "c": 0}
    approved_runs = 0
    with anyio.fail_after(300):
        async with stack(tmp_path, NOTES_HELD, backing) as s:
            barrier = threading.Barrier(2)
            b, c = (Decider(n, backing.approver, s.policy, barrier) for n in "bc")
            b.thread.start()
            c.thread.start()
            try:
                for i in range(B1_ITERATIONS):
                    path = f"/b1/{i}"
                    kinds = list(PAIRS[i % len(PAIRS)])
                    rng.shuffle(kinds)
                    held = s.notifier.expect(path)
                    results: list[types.CallToolResult] = []
                    async with anyio.create_task_group() as tg:

                        async def call(p: str = path, out: list[types.CallToolResult] = results) -> None:
                            out.append(await s.client.call_tool("write_note", {"path": p, "content": "original"}))

                        tg.start_soon(call)
                        await held.wait()
                        rec = s.notifier.calls[path]
                        assert s.received(path) == []  # nothing runs while held
                        b.jobs.put((rec.id, decision(kinds[0], "b", rec)))
                        c.jobs.put((rec.id, decision(kinds[1], "c", rec)))
                        outcome = {"b": await b.result(), "c": await c.result()}
                    winners = [k for k, v in outcome.items() if isinstance(v, CallRecord)]
                    losers = [v for v in outcome.values() if not isinstance(v, CallRecord)]
                    assert len(winners) == 1, f"iteration {i}: {outcome}"  # I4: exactly one winner
                    assert len(losers) == 1 and isinstance(losers[0], AlreadyDecidedError), outcome
                    assert losers[0].why == "decided"
                    who = winners[0]
                    wins[who] += 1
                    kind = kinds[0] if who == "b" else kinds[1]
                    row = await s.store.get(rec.id)
                    assert row.decided_by == who
                    (result,) = results
                    if kind == "reject":  # I5: the reply is the winner's decision
                        assert result.is_error and f"{who} says no" in text(result)
                        assert s.received(path) == [] and row.state == "rejected"
                    else:
                        expected = {"path": path, "content": "original" if kind == "approve" else f"edited by {who}"}
                        assert not result.is_error, text(result)
                        assert s.received(path) == [expected]  # I2: forwarded exactly once
                        assert row.state == "forwarded"
                        approved_runs += 1
            finally:
                b.jobs.put(None)
                c.jobs.put(None)
                await anyio.to_thread.run_sync(b.thread.join, 30)
                await anyio.to_thread.run_sync(c.thread.join, 30)
            ran = [x for x in s.upstream.state.calls if x["tool"] == "write_note"]
            twice = await s.store.engine.read(
                "SELECT call_id FROM audit WHERE event IN ('approved', 'rejected') GROUP BY call_id HAVING COUNT(*) > 1"
            )
            ok, _, msg = await s.store.verify_audit()
    print(f"B1 in-process ({backing.name}): {B1_ITERATIONS} races, wins {wins}, {approved_runs} approved and run once")
    assert len(ran) == approved_runs and len({x["arguments"]["path"] for x in ran}) == approved_runs
    assert twice == []  # one decision event per call
    assert ok, msg
    assert wins["b"] > 0 and wins["c"] > 0  # the race was real: each side won some


# ---------------------------------------------------------------------------------------------- cross-process CLI

CLI_LOOP = """
import json, sys, time
from mcp_gatekeeper.cli import main
while line := sys.stdin.readline():
    job = json.loads(line)
    print("armed", flush=True)
    if job["at"] is None:
        sys.stdin.readline()  # "go": released together with the other approver
    else:
        time.sleep(max(0.0, job["at"] - time.time()))  # fired at a chosen moment
    rc = main(job["argv"])
    print(f"rc {rc}", flush=True)
    print("--end--", file=sys.stderr, flush=True)
"""


@dataclass
class CliLoop:
    """A CLI process running ``mcp_gatekeeper.cli.main`` once per job (imported once, so races stay tight).

    Each job is exactly what ``mcp-gatekeeper ARGV`` does: open the store, decide, print, exit code.
    """

    proc: anyio.abc.Process
    out: BufferedByteReceiveStream
    err: BufferedByteReceiveStream

    @classmethod
    async def start(cls, env: dict[str, str]) -> CliLoop:
        proc = await anyio.open_process([PY, "-c", CLI_LOOP], env=env, cwd=str(ROOT), start_new_session=True)
        assert proc.stdout is not None and proc.stderr is not None
        return cls(proc, BufferedByteReceiveStream(proc.stdout), BufferedByteReceiveStream(proc.stderr))

    async def arm(self, argv: list[str], at: float | None = None) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send(json.dumps({"argv": argv, "at": at}).encode() + b"\n")
        assert await self.out.receive_until(b"\n", 1000) == b"armed"

    async def go(self) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send(b"go\n")

    async def result(self) -> tuple[int, str]:
        while not (line := (await self.out.receive_until(b"\n", 1_000_000)).decode()).startswith("rc "):
            pass  # what the command printed on stdout
        err = (await self.err.receive_until(b"--end--\n", 1_000_000)).decode()
        return int(line.removeprefix("rc ")), err

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@contextlib.asynccontextmanager
async def cli_loops(env: dict[str, str], n: int) -> AsyncIterator[list[CliLoop]]:
    """``n`` CLI processes with ``env`` (on PostgreSQL: the approver role's store)."""
    loops: list[CliLoop] = []
    try:
        for _ in range(n):
            loops.append(await CliLoop.start(env))
        yield loops
    finally:
        for loop in loops:
            loop.kill()
            with anyio.CancelScope(shield=True):
                await loop.proc.wait()


async def test_b1_cross_process_two_cli_approvers_race(home: Path, tmp_path: Path, backing: Backing) -> None:
    cfg = write_config(tmp_path / "gk.toml", NOTES_HELD)
    db = backing.view
    log = tmp_path / "calls.jsonl"
    results: dict[str, types.CallToolResult] = {}
    done: dict[str, anyio.Event] = {f"/x/{i}": anyio.Event() for i in range(B1_CLI_ITERATIONS)}
    wins = [0, 0]
    with anyio.fail_after(300):
        async with (
            cli_loops(backing.approver_env(home), 2) as racers,
            wrap(home, cfg, "feat", log, store=backing) as gk,
            anyio.create_task_group() as calls,
        ):

            async def call(path: str) -> None:
                results[path] = await gk.client.call_tool("write_note", {"path": path, "content": "c"})
                done[path].set()

            for path in done:
                calls.start_soon(call, path)
            held = [await gk.watcher.held() for _ in done]
            ids = {json.loads(call_row(db, cid)["arguments"])["path"]: cid for cid in held}
            for n, path in enumerate(done):
                verbs = ["approve", "approve"] if n % 2 == 0 else ["approve", "reject"]
                if n % 4 >= 2:
                    verbs.reverse()
                for racer, verb in zip(racers, verbs, strict=True):
                    extra = ["--reason", f"racer says no to {path}"] if verb == "reject" else []
                    await racer.arm([verb, ids[path], "--config", str(cfg), *extra])
                for racer in racers:  # both armed: release them back to back
                    await racer.go()
                outcome = [await r.result() for r in racers]
                await done[path].wait()
                ok = [k for k, (rc, _) in enumerate(outcome) if rc == 0]
                refused = [(rc, err) for rc, err in outcome if rc != 0]
                assert len(ok) == 1 and len(refused) == 1, outcome  # I4: one winner
                assert refused[0][0] == 1 and "already" in refused[0][1], refused
                wins[ok[0]] += 1
                row = call_row(db, ids[path])
                assert row["decided_by"].startswith("cli:") and row["channel"] == "cli"
                if verbs[ok[0]] == "approve":  # I2 and I5: the winner's decision, run once
                    assert row["state"] == "forwarded" and not results[path].is_error
                    assert received(log, "write_note").count({"path": path, "content": "c"}) == 1
                else:
                    assert row["state"] == "rejected" and results[path].is_error
                    assert f"racer says no to {path}" in text(results[path])
                    assert {"path": path, "content": "c"} not in received(log, "write_note")
                events = events_of(db, row["id"])
                assert events.count("approved") + events.count("rejected") == 1
    paths_run = [a["path"] for a in received(log, "write_note")]
    assert len(paths_run) == len(set(paths_run))  # I2 across the whole run
    print(f"B1 cross-process ({backing.name}): {B1_CLI_ITERATIONS} races between two CLI processes, wins {wins}")
    rc, out, _ = await cli(home, "audit", "--verify", config=cfg, env=backing.approver_env(home))
    assert rc == 0, out


# ---------------------------------------------------------------------------------------------- B3: approval vs expiry


async def test_b3_approval_at_the_deadline_either_runs_once_or_expires_never_both(
    tmp_path: Path, backing: Backing
) -> None:
    rng = random.Random(int(os.environ.get("GK_SEED", "3")))
    outcomes: list[tuple[str, str, bool, types.CallToolResult]] = []
    refusals: list[str] = []
    with anyio.fail_after(240):
        async with stack(tmp_path, NOTES_HELD_1S, backing) as s, Store.open(backing.approver, SystemClock()) as other:
            approver = Gate(other, s.policy, other.clock)  # another connection, as the CLI or the page would use

            async def one(path: str) -> None:
                held = s.notifier.expect(path)
                result: list[types.CallToolResult] = []
                won: list[bool] = []
                async with anyio.create_task_group() as tg:

                    async def call() -> None:
                        result.append(await s.client.call_tool("write_note", {"path": path, "content": "c"}))

                    tg.start_soon(call)
                    await held.wait()
                    rec = s.notifier.calls[path]
                    # the behaviour under test: an approval fired right at the deadline (±40 ms)
                    await anyio.sleep(max(0.0, (rec.deadline_at or 0) + rng.uniform(-0.04, 0.04) - time.time()))
                    try:
                        await approver.decide(
                            rec.id, Decision(approve=True, decided_by="t", channel="test", args_digest=rec.args_digest)
                        )
                        won.append(True)
                    except AlreadyDecidedError as e:
                        refusals.append(e.why)
                        won.append(False)
                outcomes.append((path, rec.id, won[0], result[0]))

            for r in range(B3_ROUNDS):
                async with anyio.create_task_group() as tg:
                    for i in range(B3_CALLS_PER_ROUND):
                        tg.start_soon(one, f"/b3/{r}/{i}")

            counts = {"forwarded": 0, "expired": 0}
            for path, cid, approved, result in outcomes:
                row = await s.store.get(cid)
                assert row.state in counts, (path, row.state)
                counts[row.state] += 1
                if approved:  # approved before the deadline: it ran, once, and the client got its result
                    assert row.state == "forwarded", (path, row.state)
                    assert not result.is_error and "wrote" in text(result)
                    assert s.received(path) == [{"path": path, "content": "c"}]
                else:  # expired: never ran, the client heard so, and a late approval is refused
                    assert row.state == "expired", (path, row.state)
                    assert result.is_error and "not approved in time" in text(result)
                    assert s.received(path) == []
                    with pytest.raises(AlreadyDecidedError):
                        await approver.decide(cid, Decision(approve=True, decided_by="late", channel="test"))
            ok, _, msg = await s.store.verify_audit()
    print(f"B3 in-process ({backing.name}): {len(outcomes)} approvals at the deadline: {counts}")
    assert len(outcomes) == B3_ROUNDS * B3_CALLS_PER_ROUND
    assert set(refusals) <= {"expired", "decided"}, refusals  # late: past the deadline, or already expired
    assert ok, msg


async def test_b3_cross_process_cli_approval_at_the_deadline(home: Path, tmp_path: Path, backing: Backing) -> None:
    rng = random.Random(int(os.environ.get("GK_SEED", "5")))
    cfg = write_config(tmp_path / "gk.toml", NOTES_HELD_1S)
    db = backing.view
    log = tmp_path / "calls.jsonl"
    results: dict[str, types.CallToolResult] = {}
    verdicts: list[tuple[str, str, int, str]] = []
    with anyio.fail_after(240):
        async with (
            cli_loops(backing.approver_env(home), B3_CLI_LANES) as approvers,
            wrap(home, cfg, "feat", log, store=backing) as gk,
        ):
            for r in range(B3_CLI_ROUNDS):
                async with anyio.create_task_group() as tg:

                    async def call(path: str) -> None:
                        results[path] = await gk.client.call_tool("write_note", {"path": path, "content": "c"})

                    for lane in range(B3_CLI_LANES):
                        tg.start_soon(call, f"/b3x/{r}/{lane}")
                    for approver in approvers:
                        cid = await gk.watcher.held()
                        row = call_row(db, cid)
                        at = row["deadline_at"] + rng.uniform(-0.25, 0.05)  # the CLI needs ~0.1 s to open the store
                        await approver.arm(["approve", cid, "--config", str(cfg)], at=at)
                        verdicts.append((cid, json.loads(row["arguments"])["path"], -1, ""))
                    for k, approver in enumerate(approvers):
                        rc, err = await approver.result()
                        i = len(verdicts) - B3_CLI_LANES + k
                        verdicts[i] = (*verdicts[i][:2], rc, err)
    counts = {"forwarded": 0, "expired": 0}
    for cid, path, rc, err in verdicts:
        row = call_row(db, cid)
        assert row["state"] in counts, row["state"]
        counts[row["state"]] += 1
        if rc == 0:  # approved in time: ran once, the client got the result
            assert row["state"] == "forwarded" and not results[path].is_error
            assert received(log, "write_note").count({"path": path, "content": "c"}) == 1
        else:  # refused: expired, never ran, the client heard so
            assert rc == 1 and ("expired" in err or "already" in err), err
            assert row["state"] == "expired" and results[path].is_error
            assert "not approved in time" in text(results[path])
            assert {"path": path, "content": "c"} not in received(log, "write_note")
    print(f"B3 cross-process ({backing.name}): {len(verdicts)} CLI approvals at the deadline: {counts}")
    assert len(verdicts) == B3_CLI_LANES * B3_CLI_ROUNDS
    assert query(db, "SELECT id FROM calls WHERE state IN ('pending', 'approved', 'forwarding')") == []
    rc, out, _ = await cli(home, "audit", "--verify", config=cfg, env=backing.approver_env(home))
    assert rc == 0, out
