"""The command line: ``main(argv) -> exit code``.

Exit codes: 0 done; 1 refused or not found (already decided, expired, unknown id, invalid edit; ``replay``: the
candidate would let run a call a human rejected);
2 bad config or usage; 3 the store or an upstream is unusable; 141 the reader of stdout went away
(``audit | head -1``: quietly, as other Unix tools).
Everything printed from a tool, an argument or an upstream is escaped: no control character reaches
the terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from mcp_gatekeeper import __version__, hostos, names
from mcp_gatekeeper.calibrate.compare import ShadowComparison, compare
from mcp_gatekeeper.calibrate.replay import LISTED, Change, ReplaySummary, replay
from mcp_gatekeeper.calibrate.rules_toml import masked
from mcp_gatekeeper.calibrate.shadow import describe, shadow_config
from mcp_gatekeeper.calibrate.suggest import Suggestion, evidence_line, suggestions
from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import GatekeeperConfig, UpstreamConfig, load_config, parse_duration, resolve_config_path
from mcp_gatekeeper.errors import (
    AlreadyDecidedError,
    CallNotFoundError,
    ConfigError,
    GatekeeperError,
    InvalidModificationError,
    StoreError,
    UpstreamError,
)
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import CallRecord, Decision, LeaseRequest, State, definition_diff
from mcp_gatekeeper.policy import Policy, Verdict
from mcp_gatekeeper.serve import (
    Runtime,
    build_policy,
    build_shadow,
    decision_keys,
    open_runtime,
    open_store,
    own_files,
    run_proxy,
)
from mcp_gatekeeper.signatures import SigningKeyError, check_events, check_step_events, key_id, public_text
from mcp_gatekeeper.store import Store, default_home
from mcp_gatekeeper.webauth import LOGIN_TTL, keyed_hash, load_or_create_token, mint_login_url
from mcp_gatekeeper.webredact import redact

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EXIT_READER_GONE = 141
"""What a shell reports for a Unix tool whose reader went away (128 + SIGPIPE): ``audit | head -1``."""


def escape(text: str) -> str:
    """Terminal-safe text: C0/C1 controls, ESC, CR, bidi and invisible characters become visible escapes."""
    out = []
    for ch in text:
        o = ord(ch)
        if ch == "\n":
            out.append("\n")
        elif o < 0x20 or 0x7F <= o <= 0x9F or 0x200B <= o <= 0x200F or 0x202A <= o <= 0x202E or 0x2066 <= o <= 0x2069:
            out.append(f"\\u{o:04x}")
        elif 0xE0000 <= o <= 0xE007F or o == 0xFEFF:
            out.append(f"\\U{o:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    s = int(now - ts)
    if s < 0:
        return f"in {_dur(-s)}"
    return f"{_dur(s)} ago"


def _dur(s: float) -> str:
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _json_out(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def _load(args: argparse.Namespace) -> GatekeeperConfig:
    return load_config(getattr(args, "config", None))


def _config_path(args: argparse.Namespace) -> str | None:
    path = resolve_config_path(getattr(args, "config", None))
    return str(path.resolve()) if path is not None else None


# ---------------------------------------------------------------------- commands


def cmd_wrap(args: argparse.Namespace) -> int:
    config = _load(args)
    cmd: list[str] = list(args.command or [])
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if args.url and cmd:
        raise ConfigError(["wrap: give either --url URL or -- CMD ARGS, not both"])
    if not args.url and not cmd:
        raise ConfigError(["wrap: nothing to wrap; use: mcp-gatekeeper wrap -- CMD [ARGS...]  or  wrap --url URL"])
    name = names.clean_name(args.name or (names.name_for_command(cmd) if cmd else names.name_for_url(args.url)))
    base = config.upstreams.get(name)
    extra: dict[str, Any] = {}
    if base is not None:
        extra = {"timeout": base.timeout, "connect_timeout": base.connect_timeout, "mode": base.mode}
    if args.url:
        headers = dict(base.headers) if base is not None else {}
        for h in args.header or []:
            key, sep, value = h.partition(":")
            if not sep:
                raise ConfigError([f"--header {h!r}: expected 'Name: value'"])
            headers[key.strip()] = value.strip()
        for h in args.header_env or []:
            key, sep, var = h.partition("=")
            if not sep or not _ENV_NAME.fullmatch(var.strip()) or not key.strip():
                raise ConfigError([f"--header-env {h!r}: expected 'Header-Name=ENV_VARIABLE'"])
            headers[key.strip()] = "${" + var.strip() + "}"  # read from the environment when connecting
        up = UpstreamConfig(url=args.url, headers=headers, transport=args.transport, **extra)
    else:
        env = dict(base.env) if base is not None else {}
        up = UpstreamConfig(command=cmd[0], args=cmd[1:], env=env, cwd=base.cwd if base else None, **extra)
    anyio.run(lambda: run_proxy(config, {name: up}, label=f"wrap {name}", config_path=_config_path(args)))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    http = None
    if args.http:
        host, _, port = args.http.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError([f"--http {args.http!r}: expected HOST:PORT, e.g. 127.0.0.1:8766"])
        http = (host.strip("[]"), int(port))
    anyio.run(
        lambda: run_proxy(
            config, dict(config.upstreams), label="run", http=http, require_all=False, config_path=_config_path(args)
        )
    )
    return EXIT_OK


def _masked(value: Any, reveal: bool) -> Any:
    """``value`` with each secret-looking span (a PEM block, a token, a password's value) replaced by a marker
    naming its kind and length, exactly that span and nothing around it; as-is with ``--reveal``."""
    if reveal:
        return value
    return redact(value, lambda secret: f"masked, {len(secret)} characters; show --reveal")


LABEL_WIDTH = 13
"""The label column of ``show``: the longest label ("if approved") and two spaces, so no value touches it."""


def _field(label: str, value: str) -> str:
    """One ``show`` line: the label padded to its column, a multi-line value indented under the first line."""
    return f"{label:<{LABEL_WIDTH}}" + value.replace("\n", "\n" + " " * LABEL_WIDTH)


def _json_field(label: str, value: Any, reveal: bool) -> str:
    return _field(label, escape(json.dumps(_masked(value, reveal), indent=2, ensure_ascii=False)))


def _render_call(rec: CallRecord, now: float, *, full: bool, reveal: bool = False) -> str:
    lines = [
        _field("call", rec.id),
        _field("state", rec.state.value),
        _field("tool", f"{escape(rec.upstream)} / {escape(rec.tool)}"),
        _field("gate", f"{rec.gate} (risk {rec.risk}){'  rule ' + escape(rec.rule) if rec.rule else ''}"),
    ]
    if rec.summary:
        lines.append(_field("summary", escape(_masked(rec.summary, reveal))))
    if rec.client.get("name"):
        lines.append(
            _field("client", f"{escape(str(rec.client.get('name')))} {escape(str(rec.client.get('version') or ''))}")
        )
    lines.append(_field("principal", escape(str(rec.client.get("principal") or "(none recorded)"))))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.created_at))
    lines.append(_field("created", f"{when} ({_ago(rec.created_at, now)})"))
    if rec.state == State.PENDING and rec.deadline_at:
        lines.append(_field("deadline", f"{_ago(rec.deadline_at, now)} (then rejected by default)"))
    if rec.effects:
        for key, label in (("approve", "if approved"), ("reject", "if rejected")):
            if rec.effects.get(key):
                lines.append(_field(label, escape(_masked(str(rec.effects[key]), reveal))))
    lines.append(_json_field("arguments", rec.arguments, reveal))
    lines.append(_field("digest", rec.args_digest))
    if rec.modified_arguments is not None:
        lines.append(_json_field("modified", rec.modified_arguments, reveal))
    if rec.decided_by:
        lines.append(_field("decided", f"by {escape(rec.decided_by)} via {rec.channel}"))
    if rec.shadow_action is not None:
        shadow = f"{describe(rec.shadow_action)}{'  rule ' + escape(rec.shadow_rule) if rec.shadow_rule else ''}"
        lines.append(_field("shadow", shadow + (f"\n{escape(rec.shadow_reason)}" if rec.shadow_reason else "")))
    if rec.reason:
        lines.append(_field("reason", escape(_masked(rec.reason, reveal))))
    if full:
        lines.extend(_field("why", escape(r)) for r in rec.reasons)
        if rec.result is not None:
            lines.append(_field("result", escape(json.dumps(_masked(rec.result, reveal), ensure_ascii=False))[:2000]))
        if rec.error:
            lines.append(_field("error", escape(_masked(rec.error, reveal))))
    return "\n".join(lines)


def cmd_pending(args: argparse.Namespace) -> int:
    config = _load(args)

    async def go() -> int:
        async with open_runtime(config, register=False) as rt:
            calls = await rt.store.list_calls(states=[State.PENDING], limit=args.limit, oldest_first=True)
            if args.json:
                _json_out([c.to_json() for c in calls])
                return EXIT_OK
            if not calls:
                print("no calls are waiting for a decision")
                return EXIT_OK
            now = rt.clock.now()
            for c in calls:
                what = (
                    _masked(c.summary, False)
                    or f"{c.tool} {json.dumps(_masked(c.arguments, False), ensure_ascii=False)[:80]}"
                )
                left = _ago(c.deadline_at, now) if c.deadline_at else "-"
                who = escape(str(c.client.get("principal") or "?"))
                print(
                    f"{c.id[:10]}  {c.risk:<8} {escape(c.upstream)}/{escape(c.tool)}  {escape(what)}  [{who}]  (waiting {_dur(now - c.created_at)}, expires {left})"
                )
            me = hostos.self_command()
            print(f"\n{len(calls)} pending. Decide: {me} approve ID  or  {me} reject ID --reason 'why'")
            return EXIT_OK

    return anyio.run(go)


def cmd_show(args: argparse.Namespace) -> int:
    config = _load(args)

    async def go() -> int:
        async with open_runtime(config, register=False) as rt:
            rec = await rt.store.find(args.id)
            if args.json:
                out = rec.to_json()
                out["audit"] = [e.to_json() for e in await rt.store.audit_events(call_id=rec.id)]
                _json_out(out)
            else:
                print(_render_call(rec, rt.clock.now(), full=True, reveal=args.reveal))
            return EXIT_OK

    return anyio.run(go)


def _decider() -> tuple[str, dict[str, Any]]:
    """Who decides from this CLI, and the facts we know about it (evidence only: any program can give
    itself a terminal, so ``stdin_tty`` proves nothing about a person)."""
    user = hostos.os_user()  # the real account, not $USER (which the caller sets)
    evidence: dict[str, Any] = {"os_user": user, "stdin_tty": sys.stdin.isatty(), "pid": os.getpid()}
    if hasattr(os, "getuid"):
        evidence["uid"] = os.getuid()
    return f"cli:{user}", evidence


def cmd_decide(args: argparse.Namespace, approve: bool) -> int:
    config = _load(args)
    arguments = None
    if approve and args.args is not None:
        try:
            arguments = json.loads(args.args)
        except json.JSONDecodeError as e:
            print(f"mcp-gatekeeper: --args is not valid JSON: {e}", file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(arguments, dict):
            print("mcp-gatekeeper: --args must be a JSON object", file=sys.stderr)
            return EXIT_USAGE
    lease = None
    if approve and (args.lease_for or args.lease_calls or args.lease_when):
        try:
            envelope = json.loads(args.lease_when) if args.lease_when else {}
        except json.JSONDecodeError as e:
            print(f"mcp-gatekeeper: --lease-when is not valid JSON: {e}", file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(envelope, dict):
            print("mcp-gatekeeper: --lease-when must be a JSON object of predicates", file=sys.stderr)
            return EXIT_USAGE
        lease = LeaseRequest(
            envelope=envelope,
            seconds=parse_duration(args.lease_for) if args.lease_for else None,
            calls=args.lease_calls,
        )
    who, evidence = _decider()

    async def go() -> int:
        async with open_runtime(config, register=False) as rt:
            rec = await rt.store.find(args.id)
            holder = await rt.store.holder_instance(rec.id)  # a released call: the process that held it last
            gate = rt.gate
            if args.config is None and arguments is not None:
                # check an edit against the policy of the process that holds the call, not a guess
                holder_config = await rt.store.instance_config_path(holder)
                if holder_config and Path(holder_config).exists():
                    gate = Gate(rt.store, Policy(load_config(holder_config)), rt.clock, keys=rt.gate.keys)
            done = await gate.decide(
                rec.id,
                Decision(
                    approve=approve,
                    decided_by=who,
                    channel="cli",
                    reason=args.reason,
                    arguments=arguments,
                    args_digest=rec.args_digest,
                    lease=lease,
                    evidence=evidence,
                ),
            )
            verb = "approved" if approve else "rejected"
            extra = " with modified arguments" if done.modified_arguments is not None else ""
            print(f"{verb}{extra}: {done.id[:12]} {escape(done.upstream)}/{escape(done.tool)}")
            if lease is not None:
                print(
                    f"  and similar calls are allowed by a lease: {json.dumps(lease.envelope)} (see: mcp-gatekeeper leases)"
                )
            return EXIT_OK

    return anyio.run(go)


def cmd_review(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.confirm == args.fail:
        print("mcp-gatekeeper: say --confirm or --fail", file=sys.stderr)
        return EXIT_USAGE
    who, _detail = _decider()

    async def go() -> int:
        async with open_runtime(config, register=False) as rt:
            done = await rt.gate.review(args.id, ok=args.confirm, by=who, channel="cli", reason=args.reason)
            if args.confirm:
                print(f"confirmed: {done.id[:12]} {escape(done.upstream)}/{escape(done.tool)}")
            else:
                print(
                    f"review failed: {done.id[:12]} {escape(done.upstream)}/{escape(done.tool)}; its compensation runs in"
                    " the gatekeeper process connected to that upstream (see: mcp-gatekeeper show ID)"
                )
            return EXIT_OK

    return anyio.run(go)


def cmd_leases(args: argparse.Namespace) -> int:
    config = _load(args)

    async def go() -> int:
        async with open_runtime(config, register=False) as rt:
            leases = await rt.store.leases(active_at=None if args.all else rt.clock.now())
            if args.json:
                _json_out([x.to_json() for x in leases])
                return EXIT_OK
            if not leases:
                print("no active leases" if not args.all else "no leases")
            now = rt.clock.now()
            for x in leases:
                bounds = []
                if x.expires_at is not None:
                    bounds.append(f"expires {_ago(x.expires_at, now)}")
                if x.calls_left is not None:
                    bounds.append(f"{x.calls_left} call(s) left")
                if x.revoked_at is not None:
                    bounds.append(f"revoked by {escape(x.revoked_by or '?')}")
                print(
                    f"{x.id}  {escape(x.upstream)}/{escape(x.tool)}  when {escape(json.dumps(x.envelope))}  used {x.used}"
                    f"  {', '.join(bounds)}  (by {escape(x.created_by)})"
                )
            return EXIT_OK

    return anyio.run(go)


def cmd_revoke(args: argparse.Namespace) -> int:
    config = _load(args)
    who, _detail = _decider()

    async def go() -> int:
        async with open_runtime(config, register=False) as rt:
            # no terminal needed: revoking only ever makes the gate stricter
            lease = await rt.store.revoke_lease(args.lease, by=who, channel="cli")
            print(f"revoked lease {lease.id} ({escape(lease.upstream)}/{escape(lease.tool)})")
            return EXIT_OK

    return anyio.run(go)


def cmd_pins(args: argparse.Namespace) -> int:
    config = _load(args)

    async def go() -> int:
        async with open_runtime(config, register=False) as rt:
            pins = await rt.store.pins(quarantined_only=args.quarantined)
            if args.json:
                _json_out([p.to_json() for p in pins])
                return EXIT_OK
            for p in pins:
                flag = "QUARANTINED (definition changed)" if p.quarantined else "pinned"
                print(f"{escape(p.upstream)}/{escape(p.tool)}  {flag}  {p.hash[:12]}  by {escape(p.pinned_by)}")
            if not pins:
                print("no pinned tools" if not args.quarantined else "no quarantined tools")
            return EXIT_OK

    return anyio.run(go)


def cmd_pin(args: argparse.Namespace) -> int:
    config = _load(args)
    who, _detail = _decider()

    async def go() -> int:
        async with open_runtime(config, register=False) as rt:
            before = [p for p in await rt.store.pins(upstream=args.upstream) if p.tool == args.tool]
            if before and before[0].pending_definition is not None and not args.yes:
                for line in definition_diff(before[0].definition, before[0].pending_definition):
                    print(escape(line))
                print("\nre-run with --yes to accept this definition")
                return EXIT_REFUSED
            pin = await rt.store.repin(args.upstream, args.tool, by=who, channel="cli")
            print(
                f"re-pinned {escape(pin.upstream)}/{escape(pin.tool)} at {pin.hash[:12]}; its calls are no longer quarantined"
            )
            return EXIT_OK

    return anyio.run(go)


def cmd_check_config(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config)
    config = load_config(args.config)
    shadow = shadow_config(config, path)  # a bad shadow policy fails here, as it would at start
    where = str(path) if path else "built-in defaults (no config file found)"
    served = [names.clean_name(n) for n in args.name] if args.name else list(config.upstreams)
    problems = names.unreached(config, served)
    print(
        f"{'ok' if not problems else 'PROBLEM'}: {where}: {len(config.upstreams)} upstream(s), {len(config.rules)} rule(s)"
    )
    if not config.rules:
        print("  no rules: the built-in default decides every call (reads pass, the rest is held; see `explain`)")
    for name, up in config.upstreams.items():
        target = up.url if up.url else " ".join([up.command or "", *up.args])
        print(f"  upstream {name}: {up.kind} {escape(target)}")
    for i, rule in enumerate(config.rules):
        tools = rule.tool if isinstance(rule.tool, str) else ", ".join(rule.tool)
        in_shadow = "  (shadow: recorded, not enforced)" if rule.shadow else ""
        print(f"  rule {i} {rule.name or ''}: {rule.gate:<5} upstream={rule.upstream} tool={tools}{in_shadow}")
    if config.shadow.policy is not None and shadow is not None:
        print(f"  shadow policy: {escape(config.shadow.policy)} ({len(shadow.rules)} rule(s); recorded, not enforced)")
    targeted = names.targeted_names(config)
    if targeted:
        print(f"  rules target upstream name(s): {', '.join(escape(t) for t in targeted)}")
    for problem in problems:
        print(f"mcp-gatekeeper: {escape(problem.message())}", file=sys.stderr)
    return EXIT_REFUSED if problems else EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    config = _load(args)
    try:
        arguments = json.loads(args.args) if args.args else {}
        annotations = json.loads(args.annotations) if args.annotations else None
    except json.JSONDecodeError as e:
        print(f"mcp-gatekeeper: not valid JSON: {e}", file=sys.stderr)
        return EXIT_USAGE
    upstream = args.upstream or (next(iter(config.upstreams)) if len(config.upstreams) == 1 else "default")
    problems = names.unreached(config, [upstream]) if args.upstream or config.upstreams else []
    policy = build_policy(
        names.holding_unreached(config, problems), default_home(), resolve_config_path(getattr(args, "config", None))
    )
    verdict = policy.evaluate(upstream, args.tool, arguments, annotations)
    shadow_policy = build_shadow(config, default_home(), resolve_config_path(getattr(args, "config", None)))
    shadow = None if shadow_policy is None else shadow_policy.evaluate(upstream, args.tool, arguments, annotations)
    if args.json:
        problems_json = [p.to_json() for p in problems]
        shadow_json = None if shadow is None else {**shadow.to_json(), "words": describe(_shadow_action(shadow))}
        _json_out(
            {
                "upstream": upstream,
                "tool": args.tool,
                **verdict.to_json(),
                "problems": problems_json,
                "shadow": shadow_json,
            }
        )
        return EXIT_OK
    for problem in problems:
        print(f"note: {escape(problem.message())}")
    print(
        f"{escape(upstream)}/{escape(args.tool)} -> {verdict.action.upper()} (gate {verdict.gate}, risk {verdict.risk})"
    )
    print(f"rule: {verdict.rule or '(none: built-in default)'}")
    for r in verdict.reasons:
        print(f"  - {escape(r)}")
    if verdict.summary:
        print(f"summary: {escape(verdict.summary)}")
    if verdict.action == "hold":
        print(f"timeout: {verdict.timeout:g} s, then rejected")
    if verdict.deny_reason:
        print(f"deny reason: {escape(verdict.deny_reason)}")
    if shadow is not None:
        print(f"shadow: {describe(_shadow_action(shadow))} (rule {escape(shadow.rule or '(none: built-in default)')})")
        for r in shadow.reasons:
            print(f"  - {escape(r)}")
    return EXIT_OK


def _shadow_action(verdict: Verdict) -> str:
    return "audit" if verdict.gate == "audit" and verdict.action == "allow" else verdict.action


def _since(args: argparse.Namespace) -> tuple[float, float]:
    now = time.time()
    return now - parse_duration(args.since), now


def cmd_replay(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config)
    candidate = load_config(args.config)
    home = default_home()
    policy = build_policy(candidate, home, path)
    since, now = _since(args)

    async def go() -> ReplaySummary:
        async with open_store(candidate, home) as store:
            return await replay(store, policy, since=since, until=now)

    out = anyio.run(go)
    if args.json:
        _json_out({"config": str(path) if path else None, **out.to_json()})
        return out.exit_code
    print(f"replay of {escape(str(path) if path else 'the built-in defaults')} over the last {escape(args.since)}:")
    for line in out.lines():
        print(f"  {escape(line)}")
    if out.against_humans:
        print("\ncalls a human REJECTED that this policy would let run:")
        for c in out.against_humans:
            print(f"  {_change(c)}")
    for kind, changes in out.listed.items():
        print(f"\n{kind.replace('_', ' ')} (up to {LISTED} listed):")
        for c in changes:
            print(f"  {_change(c)}")
    if out.against_humans:
        print(f"\nexit {out.exit_code}: this policy would have let run what a human rejected", file=sys.stderr)
    return out.exit_code


def _change(c: Change) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.created_at))
    rule = escape(c.rule or "built-in default")
    return f"{c.id[:12]}  {when}  {escape(c.upstream)}/{escape(c.tool)}  {c.then}: {c.was} -> {c.would} ({rule})"


def cmd_suggest(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config)
    config = load_config(args.config)
    home = default_home()
    mine = own_files(home, path, [a.token_file for a in config.agents if a.token_file is not None])
    since, now = _since(args)

    async def go() -> tuple[list[Suggestion], ShadowComparison]:
        async with open_store(config, home) as store:
            found = await suggestions(store, config, since=since, now=now, own_files=mine)
            return found, await compare(store, since=since, until=now)

    found, shadow = anyio.run(go)
    if args.json:
        _json_out(
            {
                "config": str(path) if path else None,
                "since": since,
                "suggestions": [x.to_json() for x in found],
                "shadow": shadow.to_json(),
            }
        )
        return EXIT_OK
    if shadow.calls:
        print(f"shadow verdicts over the last {escape(args.since)} ({shadow.calls} call(s)), against what happened:")
        for action, by_then in shadow.counts.items():
            seen = ", ".join(f"{n} {t}" for t, n in sorted(by_then.items()))
            print(f"  {describe(action)}: {seen}")
        for d in shadow.passed_rejected:
            print(f"  would have passed, a human rejected: {d.id[:12]} {escape(d.upstream)}/{escape(d.tool)}")
        print()
    if not found:
        print(f"no suggestions from the last {escape(args.since)} (see the README for the thresholds)")
    for n, x in enumerate(found, start=1):
        ev = x.evidence
        print(
            f"{n}. {escape(x.title)}  [{escape(x.upstream)}/{escape(x.tool)}, rule {escape(x.rule or 'built-in default')}]"
        )
        print(f"   evidence: {escape(evidence_line(ev))}")
        for line in x.replay.lines():
            print(f"   replay: {escape(line)}")
        print(f"   paste it {escape(x.placement)}:")
        shown = x.toml if args.reveal else masked(x.toml, lambda name, value: _masked({name: value}, False)[name])
        for line in shown.splitlines():
            print(f"     {escape(line)}")
    if found:
        print(
            f"\nnothing was changed. Copy a rule into {escape(str(path) if path else 'your config')}, then check it:"
            " mcp-gatekeeper check-config --config FILE; mcp-gatekeeper replay --config FILE"
        )
    return EXIT_OK


async def _verify_signatures(rt: Runtime) -> bool:
    """Check every decision's signature against the trusted (and retired) keys; print what fails."""
    keys = rt.gate.keys
    assert keys is not None  # open_runtime always gives the gate its keys
    since, events = await rt.store.audit.decision_events()
    try:
        trusted = keys.audit_trusted()
    except SigningKeyError as e:
        print(f"decision signatures cannot be checked: {escape(str(e))}")
        return False
    problems = check_events(events, signed_since=since, trusted=trusted)
    step_since, steps = await rt.store.audit.step_events()
    problems += check_step_events(steps, signed_since=step_since, trusted=trusted)
    for line in problems:
        print(escape(line))
    if not problems:
        signed = sum(e.seq > step_since or "signature" in e.detail for e in steps)
        print(
            f"decision signatures valid: {sum(e.seq > since or 'signature' in e.detail for e in events)} decisions"
            + (f", {signed} quorum steps" if signed else "")
        )
    return not problems


def cmd_keys(args: argparse.Namespace) -> int:
    """``keys show``: this home's decision-signing public key (made on first use) and the trusted ones."""
    config = _load(args)
    keys = decision_keys(config, default_home())
    try:
        own = keys.signer().public
    except SigningKeyError as e:
        print(f"mcp-gatekeeper: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE if isinstance(e, StoreError) else EXIT_REFUSED  # disk full: try again later
    if args.json:
        _json_out({"public_key": public_text(own), "key_id": key_id(own), "path": str(keys.signing_path),
                   "trusted": list(keys.configured) or [public_text(own)], "retired": list(keys.retired)})  # fmt: skip
        return EXIT_OK
    print(public_text(own))
    print(f"  key id {key_id(own)}, private key in {escape(str(keys.signing_path))}", file=sys.stderr)
    if keys.configured:
        print(
            f"  this gatekeeper trusts [team] decision_keys ({len(keys.configured)}), not this key unless listed",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    config = _load(args)

    async def go() -> int:
        async with open_runtime(config, register=False) as rt:
            if args.verify:
                ok, _count, msg = await rt.store.verify_audit()
                print(msg)
                signed = await _verify_signatures(rt)
                return EXIT_OK if ok and signed else EXIT_REFUSED
            call_id = (await rt.store.find(args.call)).id if args.call else None
            events = await rt.store.audit_events(call_id=call_id, limit=args.limit)
            if args.json:
                _json_out([e.to_json() for e in events])
                return EXIT_OK
            for e in events:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
                detail = " ".join(f"{k}={escape(str(v))}" for k, v in e.detail.items() if v not in (None, "", {}))
                print(
                    f"{e.seq:>6} {when} {e.event:<16} {(e.call_id or '-')[:10]}  {escape(e.actor or '-')} via {e.channel or '-'}  {detail}"
                )
            return EXIT_OK

    return anyio.run(go)


def _period(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise ConfigError([f"--since {text!r}: {e}"]) from None


def cmd_report(args: argparse.Namespace) -> int:
    from mcp_gatekeeper.review.render import html_document, markdown
    from mcp_gatekeeper.review.weekly import weekly_review

    config = _load(args)
    period = _period(args.since)

    async def go() -> str:
        async with open_runtime(config, register=False) as rt:
            now = rt.clock.now()
            found = await suggestions(
                rt.store, config, since=now - period, now=now, own_files=rt.policy.own_files,
                home_dir=rt.policy.home_dir,
            )  # fmt: skip
            review = await weekly_review(rt.store, since=now - period, now=now, suggestions=found)
        return markdown(review) if args.format == "md" else html_document(review)

    text = anyio.run(go)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote the weekly review to {escape(args.out)}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from mcp_gatekeeper.review.export import decision_records, jsonl

    config = _load(args)
    period = _period(args.since) if args.since else None

    async def go(out: Any) -> int:
        count = 0
        async with open_runtime(config, register=False) as rt:
            token = load_or_create_token(rt.home)
            now = rt.clock.now()
            records = decision_records(
                rt.store, hasher=lambda v: keyed_hash(token, v), since=None if period is None else now - period,
                until=now, only=args.only,
            )  # fmt: skip
            async for record in records:
                out.write(jsonl(record))
                count += 1
        return count

    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="\n") as f:
            count = anyio.run(go, f)
    else:
        count = anyio.run(go, sys.stdout)
    print(f"exported {count} decision(s)", file=sys.stderr)
    return EXIT_OK


def cmd_ui(args: argparse.Namespace) -> int:
    from mcp_gatekeeper.serve import start_ui_if_possible

    config = _load(args)
    if args.port is not None:
        config = config.model_copy(update={"ui": config.ui.model_copy(update={"port": args.port})})

    async def go() -> int:
        async with open_runtime(config, label="ui") as rt, anyio.create_task_group() as tg:
            try:
                await start_ui_if_possible(rt, tg, force=True)
            except OSError as e:
                return await _page_not_served(rt.store, config.ui.port, e)
        return EXIT_OK

    return anyio.run(go)


async def _page_not_served(store: Store, port: int, error: OSError) -> int:
    """``ui`` found its port taken: say by whom, and how to get in, instead of a traceback."""
    served = await store.page_urls()
    if served:
        print(
            f"mcp-gatekeeper: the approval page is already served at {served[0]} by another gatekeeper process;"
            " for a login link run: mcp-gatekeeper login",
            file=sys.stderr,
        )
    else:
        print(
            f"mcp-gatekeeper: cannot serve the approval page on port {port} ({error.strerror or error});"
            " another program uses it: pick a free one with --port or [ui] port",
            file=sys.stderr,
        )
    return EXIT_UNAVAILABLE


def cmd_login(args: argparse.Namespace) -> int:
    config = _load(args)

    async def go() -> int:
        async with open_runtime(config, register=False) as rt:
            served = await rt.store.page_urls()
            if not served:
                print(
                    "mcp-gatekeeper: no gatekeeper process serves the approval page right now;"
                    " start one with: mcp-gatekeeper ui",
                    file=sys.stderr,
                )
                return EXIT_UNAVAILABLE
            link = await mint_login_url(rt.store, served[0])
            print(link)
            if config.ui.public_url:  # the same one-time code, for a browser that reaches the page through the proxy
                public = config.ui.public_url.rstrip("/")
                print(f"(through {public}: {public}{link.removeprefix(served[0])})", file=sys.stderr)
            minutes = int(LOGIN_TTL // 60)
            print(f"(open it within {minutes} minutes; it works once)", file=sys.stderr)
            return EXIT_OK

    return anyio.run(go)


def cmd_sessions(args: argparse.Namespace) -> int:
    config = _load(args)
    who, _evidence = _decider()

    async def go() -> int:
        async with open_runtime(config, register=False) as rt:
            store = rt.store
            if args.revoke or args.all:
                # no terminal needed: ending a session only ever takes access away
                if args.revoke and await store.web_session(args.revoke) is None:
                    raise CallNotFoundError(f"no session {args.revoke!r} (see: mcp-gatekeeper sessions)")
                ended = await store.end_sessions(
                    [args.revoke] if args.revoke else None, by=who, channel="cli", why="revoked from the CLI"
                )
                if args.revoke and not ended:
                    raise AlreadyDecidedError(f"session {args.revoke} has already ended", why="decided")
                print(f"ended {len(ended)} session(s)" + (f": {', '.join(ended)}" if ended else ""))
                return EXIT_OK
            now = rt.clock.now()
            sessions = await store.web_sessions(alive_only=True)
            if args.json:
                _json_out([x.to_json(now) for x in sessions])
                return EXIT_OK
            if not sessions:
                print("no live sessions on the approval page")
            for x in sessions:
                print(
                    f"{x.id}  {escape(x.reviewer)}  on {escape(x.host)}  signed in {_ago(x.created_at, now)}"
                    f"  last seen {_ago(x.last_seen_at, now)}  ends {_ago(min(x.expires_at, x.ends_at), now)}"
                    f"  {escape(x.user_agent or '-')}"
                )
            return EXIT_OK

    return anyio.run(go)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.team:
        from mcp_gatekeeper.teamdemo import run_team_demo

        return run_team_demo(args)
    if args.auto or args.backend != "auto":
        raise ConfigError(["demo: --auto and --backend go with --team"])
    from mcp_gatekeeper.demo import run_demo

    return run_demo(args)


def cmd_install(args: argparse.Namespace, uninstall: bool) -> int:
    from mcp_gatekeeper import install

    # PATH (and PATHEXT: mcp-gatekeeper.exe on Windows), never the current directory, where a project could
    # plant an mcp-gatekeeper.cmd for the client to run from then on
    exe = hostos.resolve_command("mcp-gatekeeper") or str(Path(sys.argv[0]).resolve())
    project = Path(args.project) if args.project else None
    config_path = Path(args.config_path) if args.config_path else None
    if uninstall:
        return install.uninstall(
            args.client, config_path=config_path, project=project, only=args.only, dry_run=args.dry_run, out=sys.stdout
        )
    return install.install(
        args.client,
        executable=str(Path(exe).absolute()),
        config_path=config_path,
        project=project,
        only=args.only,
        dry_run=args.dry_run,
        out=sys.stdout,
    )


def cmd_db_init(args: argparse.Namespace) -> int:
    """Team mode's one admin step: roles, schema, migrations and grants in a PostgreSQL database."""
    url = args.url or os.environ.get("MCP_GATEKEEPER_ADMIN_URL")
    if not url:
        print(
            "mcp-gatekeeper: db init needs --url or $MCP_GATEKEEPER_ADMIN_URL (an admin's postgresql:// URL)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        from mcp_gatekeeper.store import pg_schema as pgschema
        from mcp_gatekeeper.store import postgres as pgengine
    except ImportError as e:
        print(
            f"mcp-gatekeeper: PostgreSQL support is not installed ({e}): pip install 'mcp-gatekeeper-proxy[postgres]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    roles = pgschema.Roles(gatekeeper=args.gatekeeper_role, approver=args.approver_role, owner=args.owner_role)
    clock = SystemClock()
    report = anyio.run(lambda: pgengine.init_database(url, clock, roles=roles, reset_passwords=args.reset_passwords))
    where = pgengine.redact(url)
    print(f"{where}: " + (f"applied {', '.join(report.applied)}" if report.applied else "schema up to date"))
    for role, role_url in report.new_role_urls.items():
        print(f"role {role}: {role_url}")
    if report.new_role_urls:
        print(
            "(the passwords above are shown once; give the gatekeeper URL to gatekeepers, the approver URL only to the approval service)"
        )
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from mcp_gatekeeper.doctor import run_doctor

    return run_doctor(args)


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcp-gatekeeper",
        description="A human-in-the-loop gate for MCP tool calls.",
    )
    p.add_argument("--version", action="version", version=f"mcp-gatekeeper {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more (to stderr)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--config",
            metavar="FILE",
            help='config file (default: $MCP_GATEKEEPER_CONFIG or the user\'s config.toml, see README "Where things live")',
        )
        return sp

    w = with_config(sub.add_parser("wrap", help="proxy one upstream (stdio command or URL) on stdio"))
    w.add_argument(
        "--name",
        help="the upstream's name, which rules match (default: from the command, e.g. server-filesystem -> filesystem)",
    )
    w.add_argument("--url", help="a Streamable HTTP (or SSE) upstream instead of a command")
    w.add_argument("--header", action="append", metavar="'NAME: VALUE'", help="HTTP header for --url (repeatable)")
    w.add_argument(
        "--header-env",
        action="append",
        metavar="NAME=VARIABLE",
        help="HTTP header for --url whose value is the environment variable VARIABLE (a secret stays out of `ps`)",
    )
    w.add_argument("--transport", choices=["http", "sse"], help="for --url: force the transport")
    w.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    w.set_defaults(func=cmd_wrap)

    r = with_config(sub.add_parser("run", help="proxy every upstream in the config, as one server"))
    r.add_argument("--http", metavar="HOST:PORT", help="serve Streamable HTTP at http://HOST:PORT/mcp instead of stdio")
    r.set_defaults(func=cmd_run)

    pe = with_config(sub.add_parser("pending", help="list calls waiting for a decision"))
    pe.add_argument("--json", action="store_true")
    pe.add_argument("--limit", type=int, default=200)
    pe.set_defaults(func=cmd_pending)

    sh = with_config(sub.add_parser("show", help="show one call in full"))
    sh.add_argument("id", help="call id (a unique prefix is enough)")
    sh.add_argument("--json", action="store_true", help="the record as JSON, secrets included (for scripts)")
    sh.add_argument("--reveal", action="store_true", help="show secret-looking values instead of masking them")
    sh.set_defaults(func=cmd_show)

    ap = with_config(sub.add_parser("approve", help="approve a held call (optionally with modified arguments)"))
    ap.add_argument("id")
    ap.add_argument("--args", metavar="JSON", help="modified arguments (a JSON object) to run instead")
    ap.add_argument("--reason", help="a note recorded with the decision")
    ap.set_defaults(func=lambda a: cmd_decide(a, True))

    ap.add_argument(
        "--lease-when",
        metavar="JSON",
        help='approve and allow similar calls: argument predicates, e.g. \'{"path": {"under": "/home/me/work/src"}}\'',
    )
    ap.add_argument("--lease-for", metavar="DURATION", help="how long the lease lasts, e.g. 15m")
    ap.add_argument("--lease-calls", type=int, metavar="N", help="how many calls the lease covers")

    rv = with_config(sub.add_parser("review", help="confirm or fail an audit-gated call that already ran"))
    rv.add_argument("id")
    rv.add_argument("--confirm", action="store_true")
    rv.add_argument("--fail", action="store_true", help="fail the review: the rule's compensation undoes the call")
    rv.add_argument("--reason")
    rv.set_defaults(func=cmd_review)

    le = with_config(sub.add_parser("leases", help="list leases (approvals that allow similar calls)"))
    le.add_argument("--all", action="store_true", help="include expired, used-up and revoked leases")
    le.add_argument("--json", action="store_true")
    le.set_defaults(func=cmd_leases)

    rk = with_config(sub.add_parser("revoke", help="revoke a lease"))
    rk.add_argument("lease")
    rk.set_defaults(func=cmd_revoke)

    pn = with_config(sub.add_parser("pins", help="pinned tool definitions (and quarantined ones)"))
    pn.add_argument("--quarantined", action="store_true")
    pn.add_argument("--json", action="store_true")
    pn.set_defaults(func=cmd_pins)

    rp = with_config(sub.add_parser("pin", help="accept a changed tool definition (ends its quarantine)"))
    rp.add_argument("upstream")
    rp.add_argument("tool")
    rp.add_argument("--yes", action="store_true", help="accept without showing the diff first")
    rp.set_defaults(func=cmd_pin)

    rj = with_config(sub.add_parser("reject", help="reject a held call"))
    rj.add_argument("id")
    rj.add_argument("--reason", help="why (the agent reads this)")
    rj.set_defaults(func=lambda a: cmd_decide(a, False))

    cc = with_config(sub.add_parser("check-config", help="validate the config and summarise it"))
    cc.add_argument(
        "--name",
        action="append",
        metavar="NAME",
        help="check that the rules reach the upstream wrap serves as NAME (repeatable; default: the [upstreams])",
    )
    cc.set_defaults(func=cmd_check_config)

    ex = with_config(sub.add_parser("explain", help="which rule, gate and risk a call would get, and why"))
    ex.add_argument("tool")
    ex.add_argument("--upstream")
    ex.add_argument("--args", metavar="JSON")
    ex.add_argument("--annotations", metavar="JSON", help="the tool's annotations, e.g. '{\"destructiveHint\": true}'")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_explain)

    rp = with_config(
        sub.add_parser("replay", help="what a candidate policy (--config) would have done to recorded calls")
    )
    rp.add_argument("--since", default="30d", metavar="DURATION", help="how far back (default 30d)")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=cmd_replay)

    sg = with_config(sub.add_parser("suggest", help="rules to consider, from what humans decided (changes nothing)"))
    sg.add_argument("--since", default="30d", metavar="DURATION", help="how far back (default 30d)")
    sg.add_argument("--json", action="store_true", help="as JSON, secrets included (for scripts)")
    sg.add_argument(
        "--reveal", action="store_true", help="show secret-looking values in the TOML instead of masking them"
    )
    sg.set_defaults(func=cmd_suggest)

    au = with_config(sub.add_parser("audit", help="the decision log"))
    au.add_argument("--json", action="store_true")
    au.add_argument("--verify", action="store_true", help="check the hash chain and every decision's signature")
    au.add_argument("--call", metavar="ID", help="only this call's events")
    au.add_argument("--limit", type=int, default=200)
    au.set_defaults(func=cmd_audit)

    rpt = with_config(sub.add_parser("report", help="the weekly review: volume, rates per rule, fatigue, suggestions"))
    rpt.add_argument("--since", default="7d", metavar="DURATION", help="the period, ending now (default 7d)")
    rpt.add_argument("--format", choices=["md", "html"], default="md")
    rpt.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    rpt.set_defaults(func=cmd_report)

    xp = with_config(sub.add_parser("export", help="review data: one JSON line per human decision (secrets redacted)"))
    xp.add_argument("--format", choices=["jsonl"], default="jsonl")
    xp.add_argument("--since", metavar="DURATION", help="only decisions made in this period, ending now (e.g. 7d)")
    xp.add_argument("--only", choices=["modified", "rejected"], help="only edited, or only rejected, decisions")
    xp.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    xp.set_defaults(func=cmd_export)

    ks = with_config(sub.add_parser("keys", help="the key this home signs decisions with"))
    ks.add_argument("action", choices=["show"])
    ks.add_argument("--json", action="store_true")
    ks.set_defaults(func=cmd_keys)

    ui = with_config(sub.add_parser("ui", help="serve the approval page"))
    ui.add_argument("--port", type=int)
    ui.set_defaults(func=cmd_ui)

    lg = with_config(sub.add_parser("login", help="print a fresh one-time login link for the approval page"))
    lg.set_defaults(func=cmd_login)

    ss = with_config(sub.add_parser("sessions", help="signed-in sessions of the approval page; end them"))
    ends = ss.add_mutually_exclusive_group()
    ends.add_argument("--revoke", metavar="ID", help="end this session (it must log in again)")
    ends.add_argument("--all", action="store_true", help="end every session")
    ss.add_argument("--json", action="store_true")
    ss.set_defaults(func=cmd_sessions)

    from mcp_gatekeeper import cliteam

    cliteam.add_commands(sub, with_config)

    de = sub.add_parser("demo", help="run the demo: an agent, the gatekeeper and a sample order desk")
    de.add_argument("--no-ui", action="store_true", help="do not serve the approval page")
    de.add_argument("--port", type=int, default=None, help="approval page port (default 8765)")
    de.add_argument(
        "--team",
        action="store_true",
        help="team mode: a throwaway store, the approval service, two gatekeepers and two reviewers",
    )
    de.add_argument(
        "--auto", action="store_true", help="with --team: the reviewers decide by script; exit 0 only if all went right"
    )
    de.add_argument(
        "--backend",
        choices=["auto", "postgres", "sqlite"],
        default="auto",
        help="with --team: the shared store (default: PostgreSQL when installed, else SQLite)",
    )
    de.set_defaults(func=cmd_demo)

    for verb, un in (("install", False), ("uninstall", True)):
        ins = sub.add_parser(verb, help=f"{verb} the gatekeeper in an MCP client's config")
        from mcp_gatekeeper import install as install_mod

        install_mod.add_arguments(ins)
        ins.set_defaults(func=lambda a, un=un: cmd_install(a, un))

    db = sub.add_parser("db", help="team mode: set up a shared PostgreSQL database")
    dbs = db.add_subparsers(dest="db_cmd", required=True, metavar="ACTION")
    di = dbs.add_parser("init", help="create the roles, schema, migrations and grants (idempotent; run by its admin)")
    di.add_argument("--url", help="an admin's postgresql:// URL (default: $MCP_GATEKEEPER_ADMIN_URL)")
    di.add_argument("--gatekeeper-role", default="gatekeeper", help="login role of the gatekeepers (cannot decide)")
    di.add_argument("--approver-role", default="approver", help="login role of the approval service (decides)")
    di.add_argument("--owner-role", default="mcp_gatekeeper_owner", help="role owning the schema (cannot log in)")
    di.add_argument("--reset-passwords", action="store_true", help="give existing login roles new passwords")
    di.set_defaults(func=cmd_db_init)

    do = with_config(sub.add_parser("doctor", help="check the whole set-up"))
    do.add_argument("--project", help="project directory to inspect for client configs")
    do.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each upstream")
    do.set_defaults(func=cmd_doctor)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="mcp-gatekeeper %(levelname)s %(name)s: %(message)s",
    )
    try:
        try:
            rc: int = args.func(args)
            sys.stdout.flush()  # a reader that went away is found here, not at interpreter exit
            return rc
        except BaseExceptionGroup as group:
            raise _single_gatekeeper_error(group) from group
    except BrokenPipeError:
        return _reader_gone()
    except ConfigError as e:
        print(f"mcp-gatekeeper: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (CallNotFoundError, AlreadyDecidedError, InvalidModificationError) as e:
        print(f"mcp-gatekeeper: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except (StoreError, UpstreamError) as e:
        print(f"mcp-gatekeeper: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except GatekeeperError as e:
        print(f"mcp-gatekeeper: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


def _single_gatekeeper_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Task groups wrap errors; show the user the one that matters (a GatekeeperError) if there is one."""
    found = [e for e in _leaves(group) if isinstance(e, GatekeeperError | KeyboardInterrupt | BrokenPipeError)]
    return found[0] if found else group


def _reader_gone() -> int:
    """The reader of stdout went away (``show ID | head``): stop quietly, as other Unix tools do. What is
    still buffered goes to the null device, so the interpreter's last flush cannot fail with a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # ValueError: stdout is not a real file (an embedding replaced it)
        pass
    return EXIT_READER_GONE


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in _leaves(sub)]
    return [e]


def entry() -> None:
    """Console-script entry point."""
    from mcp import MCPDeprecationWarning

    # sampling/roots/logging still work on handshake-era connections; their deprecation is not the user's problem
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    sys.exit(main())
