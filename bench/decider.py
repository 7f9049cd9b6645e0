"""A separate decider process for the decision-latency benchmark (a human at another terminal, minus typing).

    MCP_GATEKEEPER_HOME=... python bench/decider.py CONFIG

Opens the shared store, then for every call-id prefix read from stdin approves it through ``Gate.decide``
(the same compare-and-set the CLI and the page use) and prints one JSON line:
``{"id", "start", "commit", "done"}`` (``time.time()`` seconds). ``commit`` is when the hand-off that ran the
decision's ``COMMIT`` returned (bench/_common.instrument_commits: bench-only instrumentation of this process's
own connection; nothing in the product is changed).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import anyio
from _common import instrument_commits

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import load_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import Decision
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.serve import db_path
from mcp_gatekeeper.store import Store, default_home


async def main() -> None:
    config = load_config(sys.argv[1] if len(sys.argv) > 1 else None)
    clock = SystemClock()
    async with Store.open(db_path(default_home()), clock) as store:
        gate = Gate(store, Policy(config), clock)
        commits = await instrument_commits(store.engine.connection)
        print(json.dumps({"ready": True}), flush=True)
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            prefix = line.strip()
            if not prefix:
                continue
            start = time.time()
            commits.clear()
            out: dict[str, Any] = {"id": prefix, "start": start}
            try:
                rec = await store.find(prefix)
                await gate.decide(
                    rec.id, Decision(approve=True, decided_by="bench", channel="bench", args_digest=rec.args_digest)
                )
                out["commit"] = commits[-1] if commits else None
            except Exception as e:
                out["error"] = f"{type(e).__name__}: {e}"
            out["done"] = time.time()
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    anyio.run(main)
