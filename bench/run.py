"""Run every mcp-gatekeeper benchmark and write bench/README.md, bench/results.json and the plots.

    bash bench/run.sh [--quick]                    # installs the bench deps first, then runs this
    .venv/bin/python bench/run.py [--quick] [--only passthrough,startup,decision,policy,scale,profile]

The default run takes about 6-8 minutes on the 2-core reference machine. ``--quick`` is a smoke run of a
minute or two; it writes to bench/.out/quick/ unless ``--out`` says otherwise, so it never overwrites the
published figures.

The team-mode load test is a run of its own (minutes, many processes): ``bench/load.py`` writes bench/load.md,
and every README.md written here keeps that section (between its markers) when a load.md sits beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import anyio

SECTIONS = ("passthrough", "startup", "decision", "policy", "scale", "profile")


def options(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short smoke run (small counts)")
    ap.add_argument("--only", default="", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--no-peers", dest="peers", action="store_false", help="skip the other proxies")
    ap.add_argument("--out", default=None, help="where README.md, results.json and the PNGs go (default bench/)")
    ap.add_argument(
        "--report-only", action="store_true", help="re-write README.md and the plots from results.json (no measuring)"
    )
    a = ap.parse_args(argv)
    q = a.quick
    a.sections = [s for s in (a.only.split(",") if a.only else SECTIONS) if s]
    if bad := set(a.sections) - set(SECTIONS):
        ap.error(f"unknown section(s) {sorted(bad)}")
    a.only = None  # passthrough configuration filter (unused from the command line)
    # counts: default | quick
    # more, shorter rounds: each round's figures are paired with the same round's direct, and the median over
    # rounds shrugs off the odd round that a neighbour on this shared machine slowed down
    a.rounds = 2 if q else 9
    a.calls = 100 if q else 120  # sequential calls per configuration per round (9 x 120 = 1,080)
    a.bursts = 1 if q else 2
    a.concurrency = 200
    a.startup_reps = 3 if q else 8
    a.decisions = 15 if q else 60
    a.cli_decisions = 1 if q else 5
    a.held = 300 if q else 1000
    a.held_decisions = 3 if q else 10
    a.db_sizes = [10_000] if q else [10_000, 100_000]
    a.query_reps = 20 if q else 200
    a.rule_counts = [10, 100, 1000, 10_000]
    a.policy_reps = 500 if q else 3000
    a.profile_calls = 300 if q else 2000
    a.profile_held = 200 if q else 500
    a.component_calls = 200 if q else 1000
    a.component_rounds = 1 if q else 3
    out = Path(a.out) if a.out else (C.OUT / "quick" if q else C.BENCH)
    a.out_dir = out
    return a


def command_line(a: argparse.Namespace) -> str:
    return (
        "bash bench/run.sh"
        + (" --quick" if a.quick else "")
        + (f" --only {','.join(a.sections)}" if a.sections != list(SECTIONS) else "")
    )


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    import decision
    import passthrough
    import policy_bench
    import profile_wrap
    import scale

    def progress(msg: str) -> None:
        print(msg, flush=True)

    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for section in a.sections:
        t = time.perf_counter()
        progress(f"== {section}")
        try:
            if section == "passthrough":
                results[section] = await passthrough.run(a, progress)
            elif section == "startup":
                results[section] = await passthrough.startup(a, progress)
            elif section == "decision":
                results[section] = await decision.run(a, progress)
            elif section == "policy":
                results[section] = policy_bench.run(a, progress)
            elif section == "scale":
                results[section] = await scale.run(a, progress)
            elif section == "profile":
                results[section] = await profile_wrap.run(a, progress)
        except Exception as e:  # a broken section is reported, the others still run
            msg = describe(e)
            traceback.print_exc()
            progress(f"   {section} FAILED: {msg[:500]}")
            results[section] = {"failed": msg[:2000]}
        timings[section] = time.perf_counter() - t
        progress(f"   ({timings[section]:.0f} s)")
    results["_timings_s"] = timings
    return results


def describe(e: BaseException) -> str:
    """The leaf exceptions of a (nested) exception group, or the exception itself."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(C.ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(C.ROOT), "status", "--porcelain", "--untracked-files=no", "mcp_gatekeeper"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return out.stdout.strip() + (" + uncommitted changes in mcp_gatekeeper/" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    a = options(argv)
    C.OUT.mkdir(parents=True, exist_ok=True)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    import report

    if a.report_only:
        meta, results = report.load(a.out_dir)
        report.write(a.out_dir, meta, results)
        print(f"bench: re-wrote {a.out_dir / 'README.md'} from results.json")
        return 0
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    meta = {
        "command": command_line(a),
        "started_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": C.machine_info(),
        "commit": git_commit(),
        "versions": C.versions(
            ["mcp-gatekeeper", "mcp", "pydantic", "pydantic-core", "anyio", "aiosqlite", "starlette"]
        ),
        "quick": a.quick,
        "interpreter": sys.executable,
    }
    print(f"bench: {meta['command']}  ({meta['machine']['cores']} cores, python {meta['machine']['python']})")
    results = anyio.run(main_async, a)
    meta["duration_s"] = time.perf_counter() - t0
    meta["loadavg_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    meta["params"] = {k: v for k, v in vars(a).items() if k not in ("out_dir", "only")}
    report.write(a.out_dir, meta, results)
    print(f"bench: wrote {a.out_dir / 'README.md'} in {meta['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
