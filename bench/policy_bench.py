"""Benchmark 4: policy evaluation cost against the number of rules.

Rules are generated as TOML text and loaded with ``parse_config`` (TOML -> pydantic validation), then
compiled by ``Policy``. The mix (seeded, so every run sees the same rules):

* 55 % literal tool names (one to three names per rule), 25 % tool globs (``svc12_*``, ``*_report``),
  20 % scoped to upstream globs (``billing-3*``) with a tool glob or ``*``;
* 40 % of rules carry ``when`` predicates (1-3 of eq, gt/lte, glob, in, regex, exists on dotted paths);
* gates: allow 35 %, hard 35 %, soft 15 %, deny 15 %; some carry a summary template, risk and timeout.

Probes (each timed call by call with perf_counter_ns):

* ``literal-hit``: a tool named by a literal rule in the middle of the list (arguments satisfy its predicates
  when they can);
* ``glob-hit``: a tool that a glob rule in the middle of the list matches;
* ``no-match``: a tool no rule names (falls to the built-in default after trying every wildcard rule): the
  worst case;
* ``mixed``: a rotation of 24 realistic calls (half of them named by some rule, a quarter glob-matched, a
  quarter unknown).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import _common as C

WORDS = ["report", "invoice", "user", "file", "issue", "branch", "order", "ticket", "email", "page", "job", "node"]
VERBS = ["get", "list", "create", "update", "delete", "send", "run", "search", "export", "sync", "read", "write"]
UPSTREAMS = ["billing", "github", "fs", "mail", "crm", "k8s", "search", "db"]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string accepts JSON's escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def gen_rules(n: int, seed: int = 42) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rules: list[dict[str, Any]] = []
    for i in range(n):
        r: dict[str, Any] = {"name": f"rule-{i}"}
        kind = rng.random()
        if kind < 0.55:
            names = [f"{rng.choice(VERBS)}_{rng.choice(WORDS)}_{i}" for _ in range(rng.choice([1, 1, 2, 3]))]
            r["tool"] = names[0] if len(names) == 1 else names
        elif kind < 0.80:
            r["tool"] = rng.choice([f"svc{i}_*", f"*_{rng.choice(WORDS)}{i}", f"{rng.choice(VERBS)}{i}_*_?"])
        else:
            r["upstream"] = f"{rng.choice(UPSTREAMS)}-{i}*"
            r["tool"] = rng.choice(["*", f"{rng.choice(VERBS)}_*"])
        if rng.random() < 0.40:
            when: dict[str, Any] = {}
            for _ in range(rng.randint(1, 3)):
                op = rng.choice(["eq", "gt", "lte", "glob", "in", "regex", "exists", "bare"])
                if op == "eq":
                    when["currency"] = {"eq": rng.choice(["USD", "EUR"])}
                elif op == "gt":
                    when["amount"] = {"gt": rng.randint(10, 5000)}
                elif op == "lte":
                    when["items.0.qty"] = {"lte": rng.randint(1, 50)}
                elif op == "glob":
                    when["customer.email"] = {"glob": f"*@{rng.choice(['example.com', 'corp.test', 'mail.org'])}"}
                elif op == "in":
                    when["region"] = {"in": ["eu", "us", rng.choice(["apac", "latam"])]}
                elif op == "regex":
                    when["path"] = {"regex": rf"^/srv/{rng.choice(WORDS)}/[a-z0-9_]+\.(txt|md)$"}
                elif op == "exists":
                    when["dry_run"] = {"exists": rng.random() < 0.5}
                else:
                    when["mode"] = rng.choice(["fast", "safe"])
            r["when"] = when
        g = rng.random()
        r["gate"] = "allow" if g < 0.35 else "hard" if g < 0.70 else "soft" if g < 0.85 else "deny"
        if r["gate"] == "deny":
            r["reason"] = f"rule {i} forbids this"
        if r["gate"] in ("hard", "soft") and rng.random() < 0.5:
            r["summary"] = "Do {amount} {currency} for {customer.email} on {path}"
            r["risk"] = rng.choice(["medium", "high"])
            r["timeout"] = rng.choice(["5m", "30m", "1h"])
        rules.append(r)
    return rules


def to_toml(rules: list[dict[str, Any]]) -> str:
    out = ["[ui]", "autostart = false", ""]
    for r in rules:
        out.append("[[rules]]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in r.items())
        out.append("")
    return "\n".join(out)


ARGS = {
    "amount": 250,
    "currency": "USD",
    "customer": {"email": "ada@example.com", "name": "Ada"},
    "items": [{"sku": "A-1", "qty": 2}],
    "region": "eu",
    "path": "/srv/report/q3_summary.txt",
    "mode": "safe",
}


def probes(rules: list[dict[str, Any]]) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    rng = random.Random(7)
    mid = len(rules) // 2
    literal = next(r for r in rules[mid:] + rules if isinstance(r["tool"], str | list) and "*" not in str(r["tool"]))
    lit_name = literal["tool"] if isinstance(literal["tool"], str) else literal["tool"][0]
    glob = next((r for r in rules[mid:] + rules if str(r["tool"]).startswith("svc")), None)
    glob_name = str(glob["tool"]).replace("*", "export_all") if glob else "svc_none"
    named = [r for r in rules if "*" not in str(r["tool"]) and "upstream" not in r]
    globbed = [r for r in rules if str(r["tool"]).startswith("svc")]
    mixed: list[tuple[str, str, dict[str, Any]]] = []
    for i in range(24):
        pick = i % 4
        if pick in (0, 1) and named:
            r = rng.choice(named)
            mixed.append(("main", r["tool"] if isinstance(r["tool"], str) else r["tool"][0], ARGS))
        elif pick == 2 and globbed:
            mixed.append(("main", str(rng.choice(globbed)["tool"]).replace("*", "x"), ARGS))
        else:
            mixed.append((rng.choice(UPSTREAMS), f"{rng.choice(VERBS)}_{rng.choice(WORDS)}", ARGS))
    return {
        "literal-hit": [("main", lit_name, ARGS)],
        "glob-hit": [("main", glob_name, ARGS)],
        "no-match": [("main", "get_weather_forecast", ARGS)],
        "mixed": mixed,
    }


def run(opts: Any, progress: Any = print) -> dict[str, Any]:
    from mcp_gatekeeper.config import parse_config
    from mcp_gatekeeper.policy import Policy

    out: dict[str, Any] = {}
    pc = time.perf_counter_ns
    annotations = {"readOnlyHint": False}
    for n in opts.rule_counts:
        rules = gen_rules(n)
        text = to_toml(rules)
        t = time.perf_counter()
        config = parse_config(text, source=f"generated-{n}.toml")
        parse_s = time.perf_counter() - t
        t = time.perf_counter()
        policy = Policy(config)
        compile_s = time.perf_counter() - t
        reps = opts.policy_reps if n <= 1000 else max(50, opts.policy_reps // 10)
        res: dict[str, Any] = {"parse_config_s": parse_s, "compile_s": compile_s, "probes": {}}
        for name, calls in probes(rules).items():
            samples: list[float] = []
            for _, (up, tool, args) in zip(range(20), _cycle(calls), strict=False):  # warm-up
                policy.evaluate(up, tool, args, annotations)
            verdicts: dict[str, int] = {}
            for _, (up, tool, args) in zip(range(reps), _cycle(calls), strict=False):
                t0 = pc()
                v = policy.evaluate(up, tool, args, annotations)
                samples.append((pc() - t0) / 1e3)  # microseconds
                verdicts[v.action] = verdicts.get(v.action, 0) + 1
            res["probes"][name] = {"us": C.summary(samples), "verdicts": verdicts}
        # what-if (bench prototype, not product code): remember, per (upstream, tool), which rules can match
        cached = cached_policy(config)
        for name in ("no-match", "mixed"):
            calls = probes(rules)[name]
            for up, tool, args in calls:
                if cached.evaluate(up, tool, args, annotations) != policy.evaluate(up, tool, args, annotations):
                    raise AssertionError("the cached prototype disagrees with Policy")
            samples = []
            for _, (up, tool, args) in zip(range(reps), _cycle(calls), strict=False):
                t0 = pc()
                cached.evaluate(up, tool, args, annotations)
                samples.append((pc() - t0) / 1e3)
            res["probes"][f"{name} (what-if: candidate cache)"] = {"us": C.summary(samples)}
        out[str(n)] = res
        progress(
            f"  {n:>6} rules: parse {parse_s * 1e3:7.1f} ms, compile {compile_s * 1e3:6.1f} ms, evaluate p50 "
            + ", ".join(f"{k} {v['us']['p50']:.1f} us" for k, v in res["probes"].items())
        )
    return out


def cached_policy(config: Any) -> Any:
    """Bench-only prototype of a suggestion: the rules whose upstream/tool globs can match depend only on
    (upstream, tool), so compute that candidate list once per pair and test only predicates per call."""
    from mcp_gatekeeper.policy import Policy

    class CandidateCachePolicy(Policy):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self._candidates: dict[tuple[str, str], list[Any]] = {}

        def _first_match(self, upstream: str, tool: str, arguments: Any) -> Any:
            key = (upstream, tool)
            cands = self._candidates.get(key)
            if cands is None:
                cands = [
                    r
                    for r in self._rules
                    if (r.upstream_re is None or r.upstream_re.match(upstream))
                    and (r.tool_re is None or r.tool_re.match(tool))
                    and (r.tool_literals is None or tool in r.tool_literals)
                ]
                self._candidates[key] = cands
            for r in cands:
                if all(p.holds(arguments) for p in r.predicates):
                    return r
            return None

    return CandidateCachePolicy(config)


def _cycle(items: list[Any]) -> Any:
    while True:
        yield from items
