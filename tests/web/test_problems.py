"""``GET /api/problems``: set-up problems of the running gatekeeper processes, for the page's banner."""

from __future__ import annotations

import pytest

from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.names import unreached
from mcp_gatekeeper.store import Store

from .conftest import Harness

pytestmark = pytest.mark.anyio

RULES_FOR_FS = '[[rules]]\nupstream = "fs"\ntool = "read_*"\ngate = "allow"\n'


async def test_another_process_s_unreached_upstream_shows_while_it_runs(harness: Harness) -> None:
    r = await harness.client.get("/api/problems", headers=harness.bearer)
    assert r.status_code == 200 and r.json() == {"problems": []}
    (problem,) = unreached(parse_config(RULES_FOR_FS), ["filesystem"])
    async with Store.open(harness.home / "gatekeeper.db", harness.clock) as other:  # a wrap process of its own
        await other.register_instance("wrap filesystem")
        await other.note_problem(problem.to_json())
        r = await harness.client.get("/api/problems", headers=harness.bearer)
        (shown,) = r.json()["problems"]
        assert (shown["kind"], shown["upstream"], shown["targeted"], shown["suggestion"], shown["mode"]) == (
            "unmatched_upstream",
            "filesystem",
            ["fs"],
            "fs",
            "hold",
        )
        assert shown["noted_by"] == f"instance:{other.instance_id}" and "Did you mean 'fs'?" in shown["message"]
    r = await harness.client.get("/api/problems", headers=harness.bearer)
    assert r.json() == {"problems": []}  # that process stopped: no banner, the audit keeps the record
    assert [e.event for e in await harness.store.audit_events()].count("config_problem") == 1


async def test_problems_need_a_login(harness: Harness) -> None:
    r = await harness.client.get("/api/problems")
    assert r.status_code == 401
