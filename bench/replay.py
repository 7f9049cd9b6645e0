"""Replay throughput: a candidate policy judged against 10,000 and 100,000 recorded calls.

Seeds a real SQLite store (in a temp dir) through ``Store.insert_history`` in one transaction: four tools of a
file server and a mail server, their definitions recorded by hash (so every call is schema-checked as a live
call is), arguments of realistic shapes (paths in a few folders, some climbing out with ``..``, free text),
and what happened to each call (approved, approved with edits, rejected, timed out, ran without a human,
denied). Then runs ``calibrate.replay.replay`` over the whole window with a 40-rule candidate (path
predicates, numbers, lists) and times it end to end: reading the rows in pages, loading the tool
definitions, the schema check, the policy, the comparison. Three rounds per size; the median is quoted.

    .venv/bin/python bench/replay.py                 # 10,000 and 100,000 calls
    .venv/bin/python bench/replay.py --sizes 1000    # a quick look
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from mcp_gatekeeper.calibrate.replay import replay
from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.models import NewCall, State
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.proxy import tooldef_hash
from mcp_gatekeeper.store import Store

_STRING = {"type": "string"}
TOOLS: dict[str, dict[str, Any]] = {
    "write_file": {"name": "write_file", "inputSchema": {"type": "object", "properties": {"path": _STRING, "content": _STRING}, "required": ["path", "content"]}},
    "edit_file": {"name": "edit_file", "inputSchema": {"type": "object", "properties": {"path": _STRING, "edits": {"type": "array", "items": {"type": "object"}}}}},
    "delete_file": {"name": "delete_file", "inputSchema": {"type": "object", "properties": {"path": _STRING}}, "annotations": {"destructiveHint": True}},
    "send_email": {"name": "send_email", "inputSchema": {"type": "object", "properties": {"to": {"type": "array", "items": _STRING}, "subject": _STRING, "body": _STRING, "priority": {"type": "integer"}}}},
}  # fmt: skip
FOLDERS = ["/work/app/src", "/work/app/tests", "/work/app/docs", "/work/app/.git/hooks", "/etc", "/home/me/.ssh"]
FATES = [  # (what happened, weight)
    ((State.FORWARDED, "hard", "web:alice", False), 55),
    ((State.FORWARDED, "hard", "web:bob", True), 5),
    ((State.REJECTED, "hard", "web:bob", False), 10),
    ((State.EXPIRED, "hard", None, False), 5),
    ((State.FORWARDED, "allow", None, False), 20),
    ((State.DENIED, "deny", None, False), 5),
]


def candidate_toml() -> str:
    rules = [
        '[[rules]]\nname = "no-secrets"\ntool = "*"\nwhen = { path = { path_glob = ["/home/*/.ssh/**", "**/.git/hooks/**"] } }\ngate = "deny"\nreason = "never"',
        '[[rules]]\nname = "etc"\ntool = ["write_file", "edit_file", "delete_file"]\nwhen = { path = { under = "/etc" } }\ngate = "deny"',
        '[[rules]]\nname = "src-writes"\ntool = ["write_file", "edit_file"]\nwhen = { path = { under = ["/work/app/src", "/work/app/tests"] } }\ngate = "allow"',
        '[[rules]]\nname = "docs"\ntool = "write_file"\nwhen = { path = { under = "/work/app/docs" }, content = { len_lt = 20000 } }\ngate = "allow"',
        '[[rules]]\nname = "mail-team"\ntool = "send_email"\nwhen = { "to[*]" = { glob = "*@example.com" }, priority = { lte = 3 } }\ngate = "allow"',
        '[[rules]]\nname = "mail"\ntool = "send_email"\ngate = "hard"',
    ]
    for i in range(34):  # other upstreams' rules the candidate carries (names never match these calls)
        rules.append(
            f'[[rules]]\nname = "other-{i}"\nupstream = "svc{i}"\ntool = "op_{i}_*"\nwhen = {{ amount = {{ gt = {i * 10} }} }}\ngate = "hard"'
        )
    return "\n\n".join(rules) + '\n\n[[rules]]\nname = "deletes"\ntool = "delete_file"\ngate = "hard"\n'


def _arguments(tool: str, rng: random.Random) -> dict[str, Any]:
    folder = rng.choice(FOLDERS)
    name = f"f{rng.randrange(10_000)}.py"
    path = f"{folder}/{name}" if rng.random() > 0.05 else f"{folder}/../../etc/{name}"  # some climb out
    if tool == "write_file":
        return {"path": path, "content": "x = 1\n" * rng.randrange(1, 40)}
    if tool == "edit_file":
        return {"path": path, "edits": [{"old": "a", "new": "b"}] * rng.randrange(1, 4)}
    if tool == "delete_file":
        return {"path": path}
    to = [f"user{rng.randrange(50)}@{rng.choice(['example.com', 'example.org'])}" for _ in range(rng.randrange(1, 4))]
    return {"to": to, "subject": "weekly", "body": "hello " * rng.randrange(1, 30), "priority": rng.randrange(1, 6)}


async def seed(store: Store, n: int, *, now: float, repeat: float = 0.0) -> float:
    """``repeat``: the share of calls that repeat an earlier call's arguments exactly (retries, polling)."""
    rng = random.Random(14)
    hashes = {name: tooldef_hash(t) for name, t in TOOLS.items()}
    await store.remember_definitions("fs", {n_: (hashes[n_], t) for n_, t in TOOLS.items() if n_ != "send_email"})
    await store.remember_definitions("mail", {"send_email": (hashes["send_email"], TOOLS["send_email"])})
    fates, weights = zip(*FATES, strict=True)
    rows: list[tuple[NewCall, State, dict[str, Any]]] = []
    for i in range(n):
        if rows and rng.random() < repeat:
            earlier = rng.choice(rows)[0]
            tool, args = earlier.tool, earlier.arguments
        else:
            tool = rng.choice(list(TOOLS))
            args = _arguments(tool, rng)
        state, gate, who, edited = rng.choices(fates, weights)[0]
        created = now - 29 * 86400 + i * (29 * 86400 / n)
        new = NewCall(upstream="mail" if tool == "send_email" else "fs", tool=tool, arguments=args, gate=gate,
                      risk="medium", rule="active", tooldef_hash=hashes[tool])  # fmt: skip
        extra: dict[str, Any] = {"created_at": created}
        if who is not None:
            extra |= {"decided_at": created + rng.uniform(2, 300), "decided_by": who, "channel": "web"}
        if edited:
            extra["modified_arguments"] = {**args, "edited": True}
        rows.append((new, state, extra))
    started = time.perf_counter()
    await store.insert_history(rows)
    return time.perf_counter() - started


async def measure(sizes: list[int], rounds: int, repeat: float) -> list[dict[str, Any]]:
    policy = Policy(parse_config(candidate_toml()))
    out = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            now = time.time()
            async with Store.open(Path(tmp) / "gatekeeper.db", SystemClock()) as store:
                seeded = await seed(store, n, now=now, repeat=repeat)
                times = []
                summary = None
                for _ in range(rounds):
                    started = time.perf_counter()
                    summary = await replay(store, policy, since=now - 30 * 86400, until=now + 1)
                    times.append(time.perf_counter() - started)
                assert summary is not None
                assert summary.replayed == n, summary
                med = statistics.median(times)
                out.append({
                    "calls": n, "repeat": repeat, "seed_s": round(seeded, 2), "replay_s_median": round(med, 3),
                    "replay_s_min": round(min(times), 3), "calls_per_s": round(n / med),
                    "changed": summary.changed, "against_humans": len(summary.against_humans),
                })  # fmt: skip
                print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=float, default=0.0, help="share of calls repeating earlier arguments (default 0)")
    a = ap.parse_args()
    results = anyio.run(measure, a.sizes, a.rounds, a.repeat)
    print("\n| recorded calls | repeated calls | replay (median of rounds) | calls/s | seeding (one transaction) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['calls']:,} | {r['repeat']:.0%} | {r['replay_s_median']:.2f} s | {r['calls_per_s']:,} | {r['seed_s']:.1f} s |"
        )


if __name__ == "__main__":
    main()
