"""bench/load.py at a tiny scale on both backends: 3 ``run --http`` gatekeepers, 40 held calls, 2 reviewers
deciding at once through ``serve``. Its invariants, not its timings: nothing ran twice, nothing was lost, every
client got the answer its decision called for. Without PostgreSQL the PostgreSQL case skips (in CI: fails)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.anyio

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load() -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("load")


def _assert_invariants(r: dict[str, Any], calls: int) -> None:
    assert r["problems"] == [], r["problems"]
    assert r["calls"] == r["in_store"] == calls
    assert r["double_executions"] == 0 and r["unknown_executions"] == 0
    assert r["lost"] == 0 and r["unanswered"] == 0 and r["wrong_answers"] == 0
    assert r["other_decision_errors"] == 0
    # every decision kind came up, and each call ended where its decision sends it
    assert set(r["decisions"]) == {"approve", "reject", "modify"}
    rejected = r["decisions"]["reject"]
    assert r["states"] == {"forwarded": calls - rejected, "rejected": rejected}
    assert r["executions"] == calls - rejected == r["decision_to_upstream_ms"]["n"]
    assert r["instances"] == 3


async def _run(backend: str, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    load = _load()
    params = load.Params(gatekeepers=3, calls=40, reviewers=2, inflight=10, backends=(backend,), timeout=600.0, **kw)
    results: dict[str, dict[str, Any]] = await load.run(params, lambda _msg: None)
    return results[backend]


async def test_load_harness_on_sqlite(tmp_path: Path) -> None:
    _assert_invariants(await _run("sqlite", tmp_path), 40)


async def test_load_harness_on_postgres(tmp_path: Path, pg_admin_dsn: str) -> None:
    _assert_invariants(await _run("postgres", tmp_path, pg_admin_url=pg_admin_dsn), 40)


def test_the_load_section_survives_a_rewrite_of_the_readme(tmp_path: Path) -> None:
    _load()
    common, report = importlib.import_module("_common"), importlib.import_module("report")
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nfigures\n")
    common.splice_load(readme, "## Load\n\nfirst-load-figures\n")
    common.splice_load(readme, "## Load\n\nsecond-load-figures\n")
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nfigures\n")
    assert "second-load-figures" in text and "first-load-figures" not in text and text.count(common.LOAD_BEGIN) == 1
    # bench/run.py rewrites README.md (here: from the published results.json) and keeps load.md's section
    (tmp_path / "load.md").write_text("## Team mode under load\n\nkept\n")
    (tmp_path / "results.json").write_text((common.BENCH / "results.json").read_text())
    meta, results = report.load(tmp_path)
    report.write(tmp_path, meta, results)
    rewritten = readme.read_text()
    assert "kept" in rewritten and rewritten.count(common.LOAD_BEGIN) == 1 and "second-load-figures" not in rewritten
