"""Turn the results of bench/run.py into README.md, results.json and PNG plots."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import _common as C

TARGETS = {
    "added_ms": 1.0,
    "throughput_ratio": 0.70,
    "decision_inproc_p50": 20.0,
    "decision_xproc_p50": 100.0,
    "decision_xproc_p95": 200.0,
    "policy_1000_us": 50.0,
    "all_pending_s": 10.0,
    "pending_query_p95_ms": 100.0,
}


def _f(x: Any, nd: int = 2, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{nd}f}{unit}"


def _ok(cond: bool | None) -> str:
    if cond is None:
        return "not measured"
    return "**met**" if cond else "**missed**"


FILES = [
    ("run.sh", "the one command: installs the bench deps (the `[bench]` extra: matplotlib, py-spy) and the compared"
     " proxies (own venvs), then runs `run.py`"),
    ("run.py", "runs the sections in order (`--quick`, `--only`, `--no-peers`, `--out`, `--report-only`)"),
    ("passthrough.py", "1, 2, 6, 7: interleaved pass-through rounds over stdio, bursts of 200 in flight, start-up"),
    ("relay.py", "the byte-relay floor (copies bytes both ways, parses nothing)"),
    ("fastmcp_proxy.py", "fastmcp's `create_proxy` in front of a stdio server (run by fastmcp's own venv)"),
    ("decision.py", "3: decision latency in-process, across processes, and through the CLI"),
    ("decider.py", "the separate decider process: opens the Store, `Gate.decide`, prints its COMMIT time"),
    ("policy_bench.py", "4: generated rule sets (TOML → `parse_config` → `Policy`), evaluate() timings, and the"
     " candidate-cache prototype"),
    ("scale.py", "5: 1,000 concurrent held calls through `wrap`, RSS, deciding under load, pending-list queries on"
     " 10k / 100k rows (Store and web API)"),
    ("profile_wrap.py", "py-spy on the `wrap` process (bucketed) and the in-process component price tags,"
     " including the store prototypes behind S1/S2"),
    ("report.py", "this README, results.json and the PNG plots"),
    ("_common.py", "paths, peers lookup, statistics, CPU/RSS from /proc, the stderr line watcher"),
]  # fmt: skip


def _get(d: Any, *path: Any) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


# ---------------------------------------------------------------------------------------------- plots


def plots(out: Path, results: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return []
    made: list[tuple[str, str]] = []
    colors = {"direct": "#222222", "relay": "#888888", "gatekeeper": "#d62728", "sdk-proxy": "#1f77b4",
              "fastmcp": "#2ca02c", "mcp-proxy": "#9467bd"}  # fmt: skip

    pt = _get(results, "passthrough", "configs")
    if pt:
        fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1.2, 1, 0.9]})
        for ax, upstream, title in ((axes[0], "time", "mcp-server-time get_current_time"),
                                    (axes[1], "echo", "feature_server echo (in-repo)")):  # fmt: skip
            for name, r in pt.items():
                if r.get("upstream") != upstream or "raw_lat_ms" not in r:
                    continue
                xs = sorted(r["raw_lat_ms"])
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.plot(xs, ys, label=f"{name.split('/')[1]} (p50 {r['latency_ms']['p50']:.2f} ms)",
                        color=colors.get(r["kind"]), lw=1.8)  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("latency per call, ms (log scale)")
            ax.set_ylabel("fraction of calls ≤ x")
            ax.set_title(f"Sequential calls, stdio both sides\n{title}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
        names = [n for n, r in pt.items() if "burst_calls_per_s" in r]
        vals = [pt[n]["burst_calls_per_s"] for n in names]
        bars = axes[2].barh(names, vals, color=[colors.get(pt[n]["kind"], "#777") for n in names])
        axes[2].invert_yaxis()
        for b, v in zip(bars, vals, strict=True):
            axes[2].text(v, b.get_y() + b.get_height() / 2, f" {v:.0f}", va="center", fontsize=8)
        axes[2].set_xlabel("calls/s with 200 calls in flight (median of bursts)")
        axes[2].set_title("Concurrent throughput")
        axes[2].grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_passthrough.png", dpi=110)
        plt.close(fig)
        made.append(("latency_passthrough.png", "Pass-through latency distributions (ECDF) and concurrent throughput"))

    pol = results.get("policy")
    if pol and "failed" not in pol:
        fig, ax = plt.subplots(figsize=(8.5, 5.2))
        counts = sorted(int(k) for k in pol)
        probe_names = list(pol[str(counts[0])]["probes"])
        for name in probe_names:
            p50 = [pol[str(n)]["probes"][name]["us"]["p50"] for n in counts]
            p95 = [pol[str(n)]["probes"][name]["us"]["p95"] for n in counts]
            style = "--" if "what-if" in name else "-"
            line = ax.plot(counts, p50, style, marker="o", label=f"{name} p50", lw=1.8)[0]
            ax.fill_between(counts, p50, p95, color=line.get_color(), alpha=0.10)
        ax.axhline(TARGETS["policy_1000_us"], color="#d62728", lw=1, ls=":")
        ax.axvline(1000, color="#d62728", lw=1, ls=":")
        ax.text(12, TARGETS["policy_1000_us"] * 0.88, "target: ≤ 50 µs at 1,000 rules", color="#d62728", fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=min(3.0, ax.get_ylim()[0]), top=max(ax.get_ylim()[1], TARGETS["policy_1000_us"] * 1.6))
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("number of rules")
        ax.set_ylabel("Policy.evaluate() per call, µs (log); band = p50..p95")
        ax.set_title("Policy evaluation cost vs rule count")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "policy_scaling.png", dpi=110)
        plt.close(fig)
        made.append(("policy_scaling.png", "Policy evaluation cost vs rule count"))

    dec = results.get("decision")
    if dec and "failed" not in dec:
        fig, ax = plt.subplots(figsize=(8.5, 5))
        for key, label, color in (("in_process", "in-process (gate.decide in the holder's process)", "#1f77b4"),
                                  ("across_processes", "across processes (separate decider process)", "#d62728")):  # fmt: skip
            raw = _get(dec, key, "raw")
            if raw:
                xs = sorted(raw)
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=label, color=color, lw=1.8)
        raw = _get(results, "scale", "held_burst", "decide_while_held_raw_ms")
        if raw:
            xs = sorted(raw)
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label="across processes, ~1,000 others held",
                    color="#9467bd", lw=1.5, ls="--")  # fmt: skip
        for x, lab in ((20, "in-process p50 target"), (100, "cross p50 target"), (200, "cross p95 target")):
            ax.axvline(x, color="#888", lw=0.8, ls=":")
            ax.text(x, 0.03, f" {lab}", rotation=90, fontsize=7, color="#555", va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel("decision COMMIT → upstream receives the call, ms (log)")
        ax.set_ylabel("fraction ≤ x")
        ax.set_title("Decision latency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.savefig(out / "decision_latency.png", dpi=110)
        plt.close(fig)
        made.append(("decision_latency.png", "Decision latency distributions"))

    prof = _get(results, "profile", "pyspy_time") or _get(results, "profile", "pyspy_echo")
    if prof and "main_ms_per_call" in prof:
        main = prof["main_ms_per_call"]
        both = {**{f"[loop] {k}": v for k, v in main.items()},
                **{f"[thread] {k}": v for k, v in prof["threads_ms_per_call"].items()}}  # fmt: skip
        items = sorted(((k, v) for k, v in both.items() if v >= 0.01), key=lambda kv: -kv[1])
        fig, ax = plt.subplots(figsize=(15, 0.38 * len(items) + 1.8))
        vals = [v for _, v in items]
        bars = ax.barh(
            [k for k, _ in items], vals, color=["#d62728" if k.startswith("[loop]") else "#1f77b4" for k, _ in items]
        )
        for b, v in zip(bars, vals, strict=True):
            ax.text(v, b.get_y() + b.get_height() / 2, f" {v:.3f}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("busy ms per allowed call, py-spy (red: event-loop thread; blue: other threads)")
        ax.set_title(f"Inside `wrap`: busy time per allowed call ({prof['tool']}, {prof['calls']:,} calls, profiled)")
        ax.set_xlim(0, max(vals) * 1.15)
        ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "profile_breakdown.png", dpi=110)
        plt.close(fig)
        made.append(("profile_breakdown.png", "Per-call busy time inside wrap, by bucket"))
    return made


# ---------------------------------------------------------------------------------------------- markdown


def _targets(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    pt = _get(results, "passthrough", "configs") or {}
    for name in ("time/gatekeeper", "echo/gatekeeper"):
        r = pt.get(name)
        if r and "added_p50_ms_paired" in r:
            a = r["added_p50_ms_paired"]
            rows.append([f"1. pass-through added latency, p50, paired vs direct ({name.split('/')[0]} upstream)",
                         "≤ 1.0 ms", f"{a:+.2f} ms ({_f(r['ratio_p50_paired'], 2)}×)", _ok(a <= TARGETS["added_ms"])])  # fmt: skip
    for name in ("time/gatekeeper", "echo/gatekeeper"):
        r = pt.get(name)
        if r and "throughput_ratio_paired" in r:
            t = r["throughput_ratio_paired"]
            rows.append([f"2. throughput with 200 in flight vs direct ({name.split('/')[0]} upstream)", "≥ 70 %",
                         f"{t * 100:.0f} % ({_f(r['burst_calls_per_s'], 0)} calls/s)", _ok(t >= TARGETS["throughput_ratio"])])  # fmt: skip
    dec = results.get("decision") or {}
    p = _get(dec, "in_process", "commit_to_upstream_ms", "p50")
    if p is not None:
        rows.append(["3a. decision → upstream, in-process, p50", "≤ 20 ms", f"{_f(p, 1)} ms", _ok(p <= 20)])
    x50 = _get(dec, "across_processes", "commit_to_upstream_ms", "p50")
    x95 = _get(dec, "across_processes", "commit_to_upstream_ms", "p95")
    if x50 is not None:
        rows.append(["3b. decision → upstream, across processes, p50 / p95", "≤ 100 / ≤ 200 ms",
                     f"{_f(x50, 1)} / {_f(x95, 1)} ms", _ok(x50 <= 100 and x95 <= 200)])  # fmt: skip
    pol = results.get("policy") or {}
    if "1000" in pol:
        m = pol["1000"]["probes"]["mixed"]["us"]["p50"]
        worst = max(p["us"]["p50"] for k, p in pol["1000"]["probes"].items() if "what-if" not in k)
        rows.append(["4. Policy.evaluate at 1,000 rules, p50 (mixed calls; slowest probe)", "≤ 50 µs",
                     f"{_f(m, 1)} µs (slowest {_f(worst, 1)} µs)", _ok(max(m, worst) <= 50)])  # fmt: skip
    hb = _get(results, "scale", "held_burst") or {}
    if "all_pending_s" in hb:
        rows.append([f"5. {hb['n']:,} concurrent held calls all pending", "≤ 10 s", f"{_f(hb['all_pending_s'], 2)} s",
                     _ok(hb["all_pending_s"] <= 10)])  # fmt: skip
    pq = _get(results, "scale", "pending_queries") or {}
    for size, r in pq.items():
        s95 = _get(r, "store_list_calls_ms", "p95")
        w95 = _get(r, "web_api_ms", "p95")
        worst_q = max(x for x in (s95, w95) if x is not None) if s95 is not None else None
        rows.append([f"5. pending-list p95 at {int(size):,} rows: Store.list_calls / GET /api/calls", "≤ 100 ms",
                     f"{_f(s95, 2)} / {_f(w95, 2)} ms", _ok(worst_q <= 100 if worst_q is not None else None)])  # fmt: skip
    first = (hb.get("decide_while_held_raw_ms") or [None])[0]
    if first is not None:
        rows.append([f"5. last held call decided while {hb['n'] - 1:,} others wait: commit → upstream",
                     "promptly (read: ≤ 200 ms, the cross-process p95 target)",
                     f"first {_f(first, 1)} ms, then p50 {_f(hb['decide_while_held_commit_to_upstream_ms']['p50'], 1)} ms",
                     _ok(first <= 200)])  # fmt: skip
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(meta: dict[str, Any], results: dict[str, Any], pngs: list[tuple[str, str]]) -> str:
    m = meta["machine"]
    out: list[str] = []
    w = out.append
    w("# mcp-gatekeeper benchmarks")
    w("")
    w("Generated by `bench/run.py`; do not edit by hand, re-run instead.")
    w("")
    w("```bash")
    w("bash bench/run.sh            # installs matplotlib + py-spy into the project venv, the peer proxies into")
    w("                             # bench/.venvs/, then runs: <venv>/bin/python bench/run.py")
    w("bash bench/run.sh --quick    # smoke run (~2-3 min); writes to bench/.out/quick/, not here")
    w("```")
    w("")
    w(f"- **Run**: `{meta['command']}` (interpreter `{meta.get('interpreter')}`) on {meta['started_utc']},"
      f" took {meta['duration_s'] / 60:.1f} min"
      + (" (**quick smoke run: small counts, do not quote**)" if meta.get("quick") else ""))  # fmt: skip
    w(f"- **Machine**: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, Linux {m['kernel']}, Python {m['python']};"
      f" temp dirs (the SQLite files) on {m['tmp_fs']}; load average {m['loadavg_at_start']} at start,"
      f" {meta.get('loadavg_at_end')} at end. The machine is shared and noisy (other sessions run test suites on it):"
      " everything that is compared is measured side by side in the same run, interleaved, and quoted as medians,"
      " p95 and paired ratios.")  # fmt: skip
    w(f"- **Code**: mcp-gatekeeper at `{meta['commit']}`; "
      + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))  # fmt: skip
    w("")
    w("## Targets")
    w("")
    w(_table(["target", "goal", "measured", "verdict"], _targets(results)))
    w("")
    for png, title in pngs:
        w(f"![{title}]({png})")
        w("")

    # ---- 1, 2, 7
    pt = results.get("passthrough") or {}
    if "configs" in pt:
        p = pt["params"]
        w("## 1, 2, 7 — Pass-through overhead, concurrency, and other proxies")
        w("")
        w(f"One SDK client (`mcp` {meta['versions'].get('mcp')}, handshake era) spawns each configuration over stdio. "
          f"{p['rounds']} rounds, configurations interleaved (rotated each round); per round: connect, `tools/list`,"
          f" {p['warmup']} warm-up calls, {p['calls_per_round']} sequential calls timed one by one "
          f"({p['rounds'] * p['calls_per_round']:,} per configuration in all), then {p['bursts']} bursts of "
          f"{p['concurrency']} concurrent calls. *added* and *ratio* are paired: each round's p50 minus / over the "
          "same round's direct p50 on the same upstream, then the median over rounds (min…max in brackets). "
          "CPU is from /proc (1 tick = 10 ms, so ±0.05 ms/call over 200 calls).")  # fmt: skip
        w("")
        rows = []
        for name, r in pt["configs"].items():
            if "failed" in r:
                rows.append([f"`{name}`", f"failed: {r['failed']}"] + [""] * 9)
                continue
            lat = r["latency_ms"]
            rng = r.get("added_p50_ms_range")
            added = "—" if r["kind"] == "direct" else f"{r['added_p50_ms_paired']:+.2f} ({rng[0]:+.2f}…{rng[1]:+.2f})"
            rows.append([
                f"`{name}`", _f(lat["p50"], 2), _f(lat["p95"], 2), _f(lat["p99"], 2), added,
                "—" if r["kind"] == "direct" else f"{_f(r['ratio_p50_paired'], 2)}×",
                _f(r["burst_calls_per_s"], 0),
                "—" if r["kind"] == "direct" else f"{r['throughput_ratio_paired'] * 100:.0f} %",
                f"{_f(r['cpu_ms_per_call']['proxy'], 2)} / {_f(r['cpu_ms_per_call']['server'], 2)}",
                _f(r["connect_ms"], 0), ("ok" if r["errors"] == 0 else f"{r['errors']} errors")
                + ("" if r["same_result_as_direct"] else ", result differs"),
            ])  # fmt: skip
        w(_table(["configuration", "p50 ms", "p95 ms", "p99 ms", "added p50 ms, paired (range)", "ratio",
                  "calls/s, 200 in flight", "throughput vs direct", "CPU ms/call proxy / server", "connect ms",
                  "errors / identical result"], rows))  # fmt: skip
        w("")
        for name, r in pt["configs"].items():
            if r.get("note"):
                w(f"- `{name}`: {r['note']}")
        for n in pt.get("notes", []):
            w(f"- note: {n}")
        w("")

    # ---- 6
    su = results.get("startup") or {}
    if su and "failed" not in su:
        w("## 6 — Start-up: spawn → `tools/list` answered")
        w("")
        w(f"Each configuration started {next(iter(su.values()))['ready_ms']['n']} times, interleaved; time from spawning"
          " the command to the answer of the first `tools/list` (the handshake included). `wrap` also opens the"
          " SQLite store, recovers orphans, starts the upstream and lists its tools before it answers.")  # fmt: skip
        w("")
        rows = [[f"`{k}`", _f(v["init_ms"]["p50"], 0), _f(v["ready_ms"]["p50"], 0), _f(v["ready_ms"]["p95"], 0),
                 "—" if v["kind"] == "direct" else f"{v['added_ready_ms_paired']:+.0f}",
                 "—" if v["kind"] == "direct" else f"{_f(v['ratio_ready_paired'], 2)}×"] for k, v in su.items()]  # fmt: skip
        w(_table(["configuration", "initialize answered, p50 ms", "tools/list answered, p50 ms", "p95 ms",
                  "added ms, paired", "ratio"], rows))  # fmt: skip
        w("")

    # ---- 3
    dec = results.get("decision") or {}
    if dec and "failed" not in dec:
        w("## 3 — Decision latency: decision committed → upstream receives the call")
        w("")
        w("- **in-process**: the test stack (Store + Gate + Proxy + in-process feature upstream, one event loop, real"
          " SQLite file); `gate.decide` in the same process; commit time = when the hand-off that ran its `COMMIT`"
          " returns to the event loop.")  # fmt: skip
        w("- **across processes**: `mcp-gatekeeper wrap` holds the call; a separate long-lived process"
          " (`bench/decider.py`: opens the Store, `Gate.decide`) commits the approval after a random 0–50 ms pause"
          " (so it is not phase-locked with the holder's 20 ms `data_version` poll); the upstream stamps its call"
          " log.")  # fmt: skip
        w(
            "- **CLI**: `mcp-gatekeeper approve ID` in a fresh process, timed from its launch (Python start-up included)."
        )
        w("")
        rows = []
        for key, label in (("in_process", "in-process"), ("across_processes", "across processes")):
            s = _get(dec, key, "commit_to_upstream_ms")
            c = _get(dec, key, "commit_to_client_result_ms")
            if s:
                rows.append([label, s["n"], _f(s["p50"], 1), _f(s["p95"], 1), _f(s["max"], 1),
                             f"{_f(c['p50'], 1)} / {_f(c['p95'], 1)}" if c else "–"])  # fmt: skip
        cli = _get(dec, "across_processes", "cli_launch_to_upstream_ms")
        if cli and cli.get("n"):
            rows.append(["`mcp-gatekeeper approve` (from launch)", cli["n"], _f(cli["p50"], 0), _f(cli["p95"], 0),
                         _f(cli["max"], 0), "–"])  # fmt: skip
        w(_table(["path", "n", "p50 ms", "p95 ms", "max ms", "→ result at the client, p50 / p95 ms"], rows))
        d = _get(dec, "across_processes", "decider_decide_call_ms")
        if d:
            w("")
            w(f"The decider's own `Gate.decide` call (find + compare-and-set commit + read back) took p50"
              f" {_f(d['p50'], 2)} ms, p95 {_f(d['p95'], 2)} ms.")  # fmt: skip
        w("")

    # ---- 4
    pol = results.get("policy") or {}
    if pol and "failed" not in pol:
        w("## 4 — Policy evaluation vs rule count")
        w("")
        w("Rules generated as TOML (seeded mix: 55 % literal tool names, 25 % tool globs, 20 % upstream-scoped globs;"
          " 40 % with 1–3 `when` predicates of eq/gt/lte/glob/in/regex/exists; allow/hard/soft/deny gates; summary"
          " templates), loaded with `parse_config` and compiled by `Policy`. Each probe timed call by call."
          " *what-if* rows are a bench-only prototype of suggestion P1 below (a per-(upstream, tool) candidate"
          " cache), checked to give identical verdicts; they are not product code.")  # fmt: skip
        w("")
        counts = sorted(int(k) for k in pol)
        probe_names = list(pol[str(counts[0])]["probes"])
        rows = []
        for n in counts:
            r = pol[str(n)]
            rows.append([f"{n:,}", _f(r["parse_config_s"] * 1e3, 1), _f(r["compile_s"] * 1e3, 1)]
                        + [f"{_f(r['probes'][p]['us']['p50'], 1)} / {_f(r['probes'][p]['us']['p95'], 1)}"
                           for p in probe_names])  # fmt: skip
        w(_table(["rules", "parse_config ms", "Policy() ms"] + [f"{p}: p50 / p95 µs" for p in probe_names], rows))
        if len(counts) >= 2:
            a, b = counts[-2], counts[-1]
            g = pol[str(b)]["probes"]["mixed"]["us"]["p50"] / pol[str(a)]["probes"]["mixed"]["us"]["p50"]
            w("")
            w(f"Growth: ×{g:.1f} in `mixed` p50 from {a:,} to {b:,} rules (×{b / a:.0f} rules)"
              + (": linear in the number of wildcard rules, because every call that is not settled by an earlier"
                 " rule tries each wildcard rule's regex." if g > 3 else ": flat, the rules that can match a"
                 " (upstream, tool) pair are not re-scanned per call.")
              + " The `mixed` p95 includes calls whose candidate rules carry regex predicates.")  # fmt: skip
        w("")

    # ---- 5
    sc = results.get("scale") or {}
    hb = sc.get("held_burst") or {}
    if hb:
        w("## 5 — Scale: many held calls")
        w("")
        if "all_pending_s" in hb:
            rows = [
                ["calls sent (all requests written by the client)", f"{_f(hb['send_all_s'] * 1e3, 0)} ms"],
                ["first `HELD` line", f"{_f(hb['first_held_s'], 2)} s"],
                ["half of them held", f"{_f(hb['median_held_s'], 2)} s"],
                [f"all {hb['n']:,} pending (last `HELD` line)", f"{_f(hb['all_pending_s'], 2)} s"],
                ["`wrap` RSS after connect → with all held", f"{_f(hb['rss_idle_mib'], 1)} → {_f(hb['rss_held_mib'], 1)} MiB"],
                ["pending-list query from another process, live DB (p50 / p95)",
                 f"{_f(hb['live_pending_query_ms']['p50'], 2)} / {_f(hb['live_pending_query_ms']['p95'], 2)} ms"],
                ["decide the most recent held calls one by one from another process: commit → upstream",
                 f"first {_f(hb['decide_while_held_raw_ms'][0], 1)} ms; over {hb['decide_while_held_commit_to_upstream_ms']['n']}:"
                 f" p50 {_f(hb['decide_while_held_commit_to_upstream_ms']['p50'], 1)}, max {_f(hb['decide_while_held_commit_to_upstream_ms']['max'], 1)} ms"],
                ["… → result at the client, p50", f"{_f(hb['decide_while_held_commit_to_client_ms']['p50'], 1)} ms"],
                ["client cancels the rest (until the connection closed)", f"{_f(hb['cancel_rest_s'], 2)} s"],
            ]  # fmt: skip
            w(_table(["what", "measured"], rows))
        else:
            w(f"Held-burst failed: {hb.get('failed', hb)}")
        w("")
        pq = sc.get("pending_queries") or {}
        if pq:
            w("Pending list on a filled database (1,000 pending rows, the rest finished: forwarded/denied/rejected/"
              "expired/failed/cancelled; arguments 50–450 bytes). `GET /api/calls?state=pending` goes through"
              " `web.build_app(...)` in-process via `httpx2.ASGITransport` with the bearer token; it also runs"
              " `Store.counts()` (a `GROUP BY state` over the whole table), shown on its own.")  # fmt: skip
            w("")
            rows = []
            for size, r in pq.items():
                s = r["store_list_calls_ms"]
                c = r["store_counts_ms"]
                wa = r.get("web_api_ms")
                rows.append([f"{int(size):,}", f"{_f(s['p50'], 2)} / {_f(s['p95'], 2)}",
                             f"{_f(wa['p50'], 2)} / {_f(wa['p95'], 2)}" if wa else str(r.get("web_api", "–")),
                             f"{_f(c['p50'], 2)} / {_f(c['p95'], 2)}"])  # fmt: skip
            w(_table(["rows", "Store.list_calls(pending, 100, oldest first) p50 / p95 ms",
                      "GET /api/calls?state=pending p50 / p95 ms", "Store.counts() p50 / p95 ms"], rows))  # fmt: skip
            w("")

    # ---- profile
    pr = results.get("profile") or {}
    if pr and "failed" not in pr:
        w("## Where the per-call overhead of an allowed call goes")
        w("")
        w(profile_text(pr, results))
    w("")
    w("## The bench, file by file")
    w("")
    for name, what in FILES:
        w(f"- `bench/{name}`: {what}")
    w("")
    w("Raw samples, logs of every spawned process, py-spy stacks and `--quick` output go to `bench/.out/`"
      " (git-ignored); the compared proxies' venvs to `bench/.venvs/`. `python bench/run.py --report-only` re-writes"
      " this file and the plots from `results.json` (+ `bench/.out/raw.json`) without measuring again.")  # fmt: skip
    t = results.get("_timings_s", {})
    if t:
        w("")
        w("Section run times: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()) + ".")
    failed = {k: v["failed"] for k, v in results.items() if isinstance(v, dict) and "failed" in v}
    if failed:
        w("")
        w("## Sections that failed in this run")
        for k, v in failed.items():
            w(f"- {k}: `{v[:500]}`")
    return "\n".join(out) + "\n"


def profile_text(pr: dict[str, Any], results: dict[str, Any]) -> str:
    out: list[str] = []
    w = out.append
    comp = pr.get("components_ms") or {}
    for key in ("pyspy_time", "pyspy_echo"):
        p = pr.get(key)
        if not p:
            continue
        if "skipped" in p:
            w(f"- py-spy ({key}): skipped: {p['skipped']}")
            continue
        w(f"### py-spy on the `wrap` process — `{p['tool']}`, {p['calls']:,} sequential allowed calls")
        w("")
        w(f"Two profiled sessions of `wrap` (start-up + 50 warm-up calls, then {p['calls']:,} calls — and the same with"
          " 0 calls); every number is the difference divided by the calls, so start-up and shutdown cancel out."
          f" py-spy at a nominal 1 kHz, all threads, non-blocking (it managed {p['effective_rate_hz']:.0f} samples/s);"
          f" the profiled calls ran at {p['wall_ms_per_call']:.2f} ms/call wall. py-spy's idle detection does not work"
          " in this VM, so waits (epoll `select`, `Condition.wait`, aiosqlite's `queue.get`) are recognised by frame"
          " and left out. Values are **busy thread-time per call**: the event loop awaits each SQLite hand-off, so"
          " for sequential calls the loop and the aiosqlite worker mostly take turns. Sampling noise is roughly"
          " ±0.05 ms per bucket (a negative difference is shown as 0). The profiler slows the process down, so read"
          " the shares, and take absolute prices from the component table below.")  # fmt: skip
        w("")
        main = {k: max(0.0, v) for k, v in p["main_ms_per_call"].items()}
        threads = {k: max(0.0, v) for k, v in p["threads_ms_per_call"].items()}
        rows = [[f"event loop: {k}", _f(v, 3)] for k, v in sorted(main.items(), key=lambda kv: -kv[1])]
        rows.append(["**event loop, total busy**", f"**{_f(sum(main.values()), 3)}**"])
        rows += [[k, _f(v, 3)] for k, v in sorted(threads.items(), key=lambda kv: -kv[1])]
        rows.append(["**all threads, total busy**", f"**{_f(sum(main.values()) + sum(threads.values()), 3)}**"])
        w(_table(["bucket (innermost recognisable frame)", "busy ms per call"], rows))
        w("")
        hot = [[k, _f(max(0.0, v), 3)] for k, v in sorted(p["hot_ms_per_call"].items(), key=lambda kv: -kv[1])]
        w("Inclusive event-loop time of the hot-path functions (the function anywhere on the sampled stack):")
        w("")
        w(_table(["function", "ms per call (event-loop thread only)"], hot))
        w("")
    hb = pr.get("pyspy_held_burst") or {}
    if "inclusive_ms" in hb:
        w(f"### py-spy on `wrap` while {hb['held']} concurrent calls get held")
        w("")
        w(f"All {hb['held']} pending after {hb['all_held_s']:.2f} s under the profiler. Inclusive busy time of our"
          " functions on the event-loop thread over the whole profiled session (start-up, the burst, and the"
          " client cancelling the held calls afterwards), divided by the number of held calls:")  # fmt: skip
        w("")
        w(_table(["function", "ms per held call"],
                 [[f"`{k}`", _f(v / hb["held"], 2)] for k, v in hb["inclusive_ms"].items()]))  # fmt: skip
        w("")
    elif hb.get("skipped"):
        w(f"- py-spy of the held burst: skipped: {hb['skipped']}")
        w("")
    if comp:
        w(
            "### Component price tags (in-process, no pipes; median per call, variants interleaved in batches; median of rounds)"
        )
        w("")
        rows = []
        for k, v in comp.items():
            rows.append([k, f"{v:.0f}" if "count" in k or "(1 = yes" in k else _f(v * 1e3, 1)])
        w(_table(["component", "µs per call (or count)"], rows))
        w("")
    w(suggestions(pr, results))
    return "\n".join(out)


def suggestions(pr: dict[str, Any], results: dict[str, Any]) -> str:
    import profile_wrap as P

    comp = pr.get("components_ms") or {}

    def c(key: str) -> float | None:
        v = comp.get(key)
        return None if v is None else float(v)

    ship, full, nosync = c(P.K_SHIP), c(P.K_FULL), c(P.K_NOSYNC)
    fsync_default = c(P.K_FSYNC_DEFAULT)
    hop, hop2, rt = c(P.K_HOP), c(P.K_HOP2), c(P.K_RT)
    handoffs = next((float(v) for k, v in comp.items() if "hand-offs" in k and "per allowed call" in k), None)
    nostore, shipped, direct, sdk = c(P.K_NOSTORE), c(P.K_SHIPPED), c(P.K_DIRECT), c(P.K_SDK)
    pol1 = c(P.K_POLICY)
    pt = _get(results, "passthrough", "configs") or {}
    gk = pt.get("time/gatekeeper") or {}
    relay = pt.get("time/byte-relay") or {}
    sdkp = pt.get("time/sdk-proxy") or {}
    pol = results.get("policy") or {}
    lines = ["### Reading it, and what to change", ""]
    if shipped and nostore and direct:
        store_cost = shipped - nostore
        ours = nostore - direct
        lines.append(
            ("- **The store is the largest single cost.**" if store_cost > ours else "- **Where the in-process time goes.**")
            + " In-process (no pipes, so the SDK's full path on both sides: this is what a held call, or any call over"
            " HTTP, pays; an allowed call over stdio takes the fast lanes, see *The floor* below),"
            f" a call through the gatekeeper's Proxy costs {shipped * 1e3:.0f} µs as shipped"
            f" and {nostore * 1e3:.0f} µs with the store stubbed out (direct: {direct * 1e3:.0f} µs"
            + (f"; the SDK's minimal proxy: {sdk * 1e3:.0f} µs)" if sdk else ")")
            + f". So recording the call accounts for ~{store_cost * 1e3:.0f} µs of every allowed call"
            + (f" (its two transactions take {ship * 1e3:.0f} µs timed alone)" if ship else "")
            + ", while our own proxy hop (SDK server + client, routing, policy, hashing, building the CallRecord)"
            f" adds ~{ours * 1e3:.0f} µs"
            + (f" (the SDK's minimal proxy: ~{(sdk - direct) * 1e3:.0f} µs)" if sdk else "")
            + ". Policy ("
            + (f"{pol1 * 1e3:.1f} µs" if pol1 else "–") + ") and SDK parsing are small next to it."
        )  # fmt: skip
    if ship and full and nosync:
        fs = max(0.0, full - nosync)
        shipped_desc = (
            "as shipped (allowed calls' commits are not fsynced by default; `[store] fsync_every_call` turns it on)"
            if fsync_default == 0.0
            else "as shipped (every commit fsynced)"
        )
        lines.append(
            f"- **fsync vs the rest.** The two transactions of an allowed call take {ship * 1e3:.0f} µs {shipped_desc},"
            f" {full * 1e3:.0f} µs with both commits fsynced and {nosync * 1e3:.0f} µs with neither: two fsyncs cost"
            f" ~{fs * 1e3:.0f} µs on this shared virtual disk during this run (it swings with other tenants' I/O)."
            f" The store made {_f(handoffs, 0)} hand-off(s) to aiosqlite's thread per allowed call (a round trip of two"
            f" costs {rt * 1e3 if rt else float('nan'):.0f} µs: queue put, GIL hand-over, `call_soon_threadsafe`"
            " self-pipe write, future)."
        )  # fmt: skip
    if hop and full and handoffs is not None:
        if handoffs <= 3:
            lines.append(
                f"- **S1 — at most one thread hop per transaction: in this tree** ({handoffs:.0f} hand-off(s) to the"
                " database thread per allowed call; 18, one per statement, at commit 83a33e2 when this bench was first run)."
                f" For reference, the bench's own one-hop prototype measures {hop * 1e3:.0f} µs with both commits"
                f" fsynced, the store {full * 1e3:.0f} µs in the same mode."
            )  # fmt: skip
        else:
            lines.append(
                "- **S1 — one thread hop per transaction, no read-back.** Run each transaction (BEGIN … INSERT …"
                " audit … COMMIT) as one function on the DB thread (plain `sqlite3` through `anyio.to_thread.run_sync`"
                " on a dedicated single-thread limiter, or aiosqlite's own thread with a callable) and build the"
                " returned CallRecord in memory instead of `SELECT`ing it again. The bench prototype of exactly that"
                f" (same SQL, same audit chain, still WAL + FULL) takes {hop * 1e3:.0f} µs instead of"
                f" {full * 1e3:.0f} µs (−{(full - hop) * 1e3:.0f} µs per allowed call) with unchanged durability."
            )  # fmt: skip
    if fsync_default == 0.0:
        lines.append(
            "- **S2 — fewer fsyncs on the allowed path: in this tree, and further than proposed.** Neither commit of"
            " an allowed call is fsynced by default any more (both survive a crash of the process; a power loss or"
            " kernel crash can lose the newest allowed calls' records, never a held call's state). The middle road,"
            " if the audit trail of allowed calls must survive power loss too: pre-forward row NORMAL, outcome FULL —"
            " in WAL, that one fsync also covers the earlier commit"
            + (f" (bench prototype: {hop2 * 1e3:.0f} µs for both transactions, vs {hop * 1e3:.0f} µs with two fsyncs)."
               if hop2 and hop else ".")
            + " Held calls keep `approved` → `forwarding` fsynced before sending (at-most-once)."
        )  # fmt: skip
    else:
        lines.append(
            "- **S2 — one fsync per allowed call, not two.** In WAL mode an fsync of the WAL makes every earlier"
            " commit durable too. So commit the pre-forward `allowed` row with `synchronous=NORMAL` (it survives a"
            " crash of the process, which is what recovery needs to mark it `outcome_unknown`) and the outcome with"
            " FULL: a power loss can then only lose a call whose outcome was not written either. Keep held calls'"
            " `approved` → `forwarding` fsynced before sending (at-most-once), and decisions and denials FULL."
            + (f" Prototype S1 + S2: {hop2 * 1e3:.0f} µs for both transactions." if hop2 else "")
            + " A bolder variant writes the outcome after the reply is on its way to the client, taking the second"
            " transaction off the latency path altogether."
        )  # fmt: skip
    d = pt.get("time/direct") or {}
    dc = d.get("cpu_ms_per_call") or {}
    if gk.get("cpu_ms_per_call") and dc:
        base = dc["client"] + dc["server"]

        def predicted(cfg: dict[str, Any]) -> float:
            return base / (base + cfg["cpu_ms_per_call"]["proxy"])

        sdk_part = (
            f" (SDK minimal proxy: {sdkp['cpu_ms_per_call']['proxy']:.2f} ms → predicted"
            f" {predicted(sdkp) * 100:.0f} %, measured {sdkp['throughput_ratio_paired'] * 100:.0f} %)"
            if sdkp.get("cpu_ms_per_call") and sdkp.get("throughput_ratio_paired")
            else ""
        )
        need = base / 0.7 - base
        lines.append(
            "- **S3 — concurrency is CPU-bound.** With 200 in flight on 2 cores, client, proxy and upstream share the"
            f" CPU, so the throughput ratio is about (client + upstream CPU per call) / (the same + the proxy's):"
            f" direct costs {base:.2f} ms of CPU per call, `wrap` adds {gk['cpu_ms_per_call']['proxy']:.2f} ms →"
            f" predicted {predicted(gk) * 100:.0f} %, measured {gk['throughput_ratio_paired'] * 100:.0f} %{sdk_part}."
            + (" The model is rough (it under-predicts the SDK proxy, whose work is spread over more tasks)."
               + (f" Read the target as: bring `wrap`'s CPU per allowed call from {gk['cpu_ms_per_call']['proxy']:.2f} ms"
                  f" to the SDK proxy's {sdkp['cpu_ms_per_call']['proxy']:.2f} ms."
                  if gk["cpu_ms_per_call"]["proxy"] > sdkp["cpu_ms_per_call"]["proxy"] else
                  f" `wrap` already spends less CPU per allowed call ({gk['cpu_ms_per_call']['proxy']:.2f} ms) than the"
                  f" SDK proxy ({sdkp['cpu_ms_per_call']['proxy']:.2f} ms).")
               if sdk_part else
               f" Reaching 70 % means `wrap` at ≤ ~{need:.2f} ms of CPU per allowed call (all its threads).")
            + " The per-call CPU is the lever: with both fast lanes, most of what is left is the store's two small"
            " transactions per call (each appends ~6–9 pages to the WAL: the row, its indexes, the audit event and"
            " its index). Under load they are grouped: the unsynced commits that arrive in one turn of the event"
            " loop share one transaction (each in its own savepoint), so the fixed part of a commit is paid once."
        )  # fmt: skip
    if "1000" in pol and "10" in pol and "10000" in pol:
        m = pol["1000"]["probes"]["mixed"]["us"]["p50"]
        m10 = pol["10"]["probes"]["mixed"]["us"]["p50"]
        m10k = pol["10000"]["probes"]["mixed"]["us"]["p50"]
        worst = max(p["us"]["p50"] for k, p in pol["10000"]["probes"].items() if "what-if" not in k)
        cache = _get(pol, "1000", "probes", "mixed (what-if: candidate cache)", "us", "p50")
        cache10k = _get(pol, "10000", "probes", "mixed (what-if: candidate cache)", "us", "p50")
        if m10k < 3 * m10:
            lines.append(
                f"- **P1 — policy candidate cache: the policy in this tree is already flat** ({m10:.1f} µs at 10 rules,"
                f" {m:.1f} µs at 1,000, {m10k:.1f} µs at 10,000 for the mixed calls; slowest probe at 10,000:"
                f" {worst:.1f} µs), like the bench's prototype of a per-(upstream, tool) candidate cache"
                + (f" ({cache:.1f} / {cache10k:.1f} µs)." if cache and cache10k else ".")
            )  # fmt: skip
        else:
            lines.append(
                f"- **P1 — policy: cache the candidate rules per (upstream, tool).** Evaluation grows linearly with"
                f" the number of wildcard rules: {m:.0f} µs at 1,000 rules, {m10k:.0f} µs at 10,000. Which rules'"
                " upstream/tool globs match depends only on those two names, so compute that list once per pair and"
                " test only the `when` predicates per call. The prototype (identical verdicts) measures"
                + (f" {cache:.1f} µs at 1,000 rules" if cache else "")
                + (f" and {cache10k:.1f} µs at 10,000." if cache10k else ".")
                + " Bound the cache (tool names come from the upstream's list, so it stays small); the policy is"
                " immutable, so it never needs invalidating."
            )  # fmt: skip
    if (
        relay.get("added_p50_ms_paired") is not None
        and sdkp.get("added_p50_ms_paired") is not None
        and gk.get("added_p50_ms_paired") is not None
    ):
        a_gk, a_sdk, a_rel = gk["added_p50_ms_paired"], sdkp["added_p50_ms_paired"], relay["added_p50_ms_paired"]
        lines.append(
            f"- **The floor.** Over stdio the byte relay adds {a_rel:+.2f} ms, the SDK's minimal proxy {a_sdk:+.2f} ms"
            f" and `wrap` {a_gk:+.2f} ms. The SDK proxy's cost is the SDK hop itself: two JSON-RPC sessions, pydantic"
            " validation and re-serialisation of every frame, a task and a middleware chain per request. An allowed"
            " `tools/call` in `wrap` skips that on both sides: the client's line is taken off stdin by the fast lane"
            " (`mcp_gatekeeper/fastlane.py`: `json.loads`, the same policy and checks as the full path, the reply"
            " written with `json.dumps`), and it goes to a stdio upstream on the raw lane"
            " (`mcp_gatekeeper/upstream_stdio.py`: one JSON line out, its reply taken off stdout before the SDK"
            f" parses it). What `wrap` adds over the relay (~{a_gk - a_rel:.2f} ms) is then mostly the two SQLite"
            " transactions that make the call auditable (the first before forwarding: a crash leaves"
            " `outcome_unknown`, never silence; the second before the reply: what the client was told is what the"
            " store says), plus routing, policy and the digests. Held calls, progress tokens, HTTP and the 2026-07-28"
            " era keep the SDK's full path."
        )  # fmt: skip
    hb = pr.get("pyspy_held_burst") or {}
    inc = hb.get("inclusive_ms") or {}
    refresh = inc.get("Proxy.refresh_tools")
    handler = inc.get("Proxy._call_tool")
    if refresh and handler and hb.get("held"):
        lines.append(
            f"- **H1 — holding: refresh the tool list once, not once per held call.** During the burst of"
            f" {hb['held']} holds, `Proxy.refresh_tools` (a full `tools/list` of the upstream, every page, plus"
            f" `Store.check_pins`, a write transaction) takes {refresh / hb['held']:.2f} ms per held call,"
            f" {refresh / handler * 100:.0f} % of the tools/call handler's own busy time: every call that will be"
            " held re-lists the upstream's tools first (to catch a silent definition change). Coalesce concurrent"
            " refreshes"
            " (single-flight: calls that arrive while a refresh is in flight share its result), skip it when"
            " `notifications/tools/list_changed` has not arrived since the last one (or it is younger than, say,"
            " a second), and let `check_pins` read first and write only when something changed."
        )  # fmt: skip
    prof = pr.get("pyspy_time") or pr.get("pyspy_echo") or {}
    pm = prof.get("main_ms_per_call") or {}
    pth = prof.get("threads_ms_per_call") or {}
    wake = sum(v for k, v in pm.items() if k.startswith("waking anyio worker threads"))
    workers = sum(v for k, v in pth.items() if k.startswith("anyio to_thread workers"))
    pipe = sum(v for k, v in pm.items() if k.startswith("pipe write syscalls"))
    if wake + workers > 0.1:
        lines.append(
            "- **T1 — serve the client's stdio without threads.** The SDK's `stdio_server` reads stdin and writes"
            " stdout through `anyio.wrap_file`, i.e. one worker-thread hand-off per line read and per write/flush."
            f" In the profile that is {wake:.2f} ms per call of waking worker threads on the event loop plus"
            f" {workers:.2f} ms inside the workers, and each hand-off is also a GIL hand-over that can delay the"
            f" loop's other syscalls (the {pipe:.2f} ms per call in pipe writes to the upstream is partly that"
            " convoy). Our own `serve_stdio` could feed `Server.run` from non-blocking pipes on fds 0/1"
            " (`loop.connect_read_pipe` / `connect_write_pipe`), as the upstream side already does."
        )  # fmt: skip
    sweep = inc.get("Gate.sweep_once") or inc.get("Store.due_pending")
    if sweep and hb.get("held"):
        lines.append(
            f"- **H2 — the expiry/escalation sweep reads every pending row.** During the burst, `Gate.sweep_once` →"
            f" `Store.due_pending` cost {sweep / hb['held']:.2f} ms per held call: each sweep selects up to 1,000"
            " pending rows with all columns and JSON-decodes them into CallRecords, to act on the few that are due."
            " Keep a `next_due_at` (deadline or next escalation step) in an indexed column and select only"
            " `WHERE state = 'pending' AND next_due_at <= now`, with the few columns the sweep needs."
        )  # fmt: skip
    burst = _get(results, "scale", "held_burst") or {}
    raw_dec = burst.get("decide_while_held_raw_ms") or []
    p50_dec = _get(burst, "decide_while_held_commit_to_upstream_ms", "p50")
    slow_first = bool(raw_dec and p50_dec and raw_dec[0] > 2 * p50_dec)
    lines.append(
        "- **Decisions are not the bottleneck**: a decision reaches the upstream in a few ms in-process and within"
        " the holder's 20 ms `data_version` poll across processes"
        + (f"; right after the burst of {burst.get('n', 0):,} holds the *first* decision took {raw_dec[0]:.0f} ms"
           f" (then p50 {p50_dec:.0f} ms): the holder was still working through its backlog (after `HELD`, each hold"
           " re-reads its row, and the watcher re-reads the states of all waiters on every change). The watcher could"
           " ask only for rows decided since the last version it saw instead of every waiting id."
           if slow_first else
           (f", also with {burst.get('n', 0) - 1:,} other calls held (first decision after the burst:"
            f" {raw_dec[0]:.0f} ms, p50 {p50_dec:.0f} ms)." if raw_dec and p50_dec else "."))
        + " Holding itself is where the work is: see H1"
        + (" and H2." if (inc.get("Gate.sweep_once") or inc.get("Store.due_pending")) else ".")
    )  # fmt: skip
    return "\n".join(lines) + "\n"


def _raw_path(out: Path) -> Path:
    """Raw samples are not committed: for bench/ they go to bench/.out/raw.json, elsewhere next to the README."""
    return C.OUT / "raw.json" if out.resolve() == C.BENCH else out / "raw.json"


def load(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """results.json plus the raw samples kept in bench/.out/raw.json (if still there) for the plots."""
    data = json.loads((out / "results.json").read_text())
    results = data["results"]
    raw_path = _raw_path(out)
    raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    for key, values in raw.items():
        section, _, name = key.partition("/")
        if values is None:
            continue
        if section == "passthrough" and name in (_get(results, "passthrough", "configs") or {}):
            results["passthrough"]["configs"][name]["raw_lat_ms"] = values
        elif section == "decision" and isinstance(_get(results, "decision", name), dict):
            results["decision"][name]["raw"] = values
    return data["meta"], results


def write(out: Path, meta: dict[str, Any], results: dict[str, Any]) -> None:
    pngs = plots(out, results)
    (out / "README.md").write_text(markdown(meta, results, pngs))
    if (out / "load.md").exists():  # bench/load.py's figures (a run of their own) survive a rewrite
        C.splice_load(out / "README.md", (out / "load.md").read_text())
    slim = copy.deepcopy(results)
    raw: dict[str, Any] = {}
    for name, r in (_get(slim, "passthrough", "configs") or {}).items():
        raw[f"passthrough/{name}"] = r.pop("raw_lat_ms", None)
    for key in ("in_process", "across_processes"):
        r = _get(slim, "decision", key)
        if isinstance(r, dict):
            raw[f"decision/{key}"] = r.pop("raw", None)
    C.dump_json(out / "results.json", {"meta": meta, "results": slim})
    C.dump_json(_raw_path(out), raw)
