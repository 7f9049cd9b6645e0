"""What one policy says about one call: the schema check, the policy's verdict, the size limit and a changed
tool's quarantine, in that order, as a :class:`Judgement` value.

The live planner (:mod:`mcp_gatekeeper.plan`), the shadow policy beside it and replay over recorded calls
(:mod:`mcp_gatekeeper.calibrate.replay`) all ask this one function, so a candidate policy is judged on the
arguments exactly as a live call is: validated against the tool's ``inputSchema`` first, paths compared after
normalisation, a value a rule cannot read refused. Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from mcp_gatekeeper.argcheck import ArgumentProblem, SchemaChecks, non_finite
from mcp_gatekeeper.models import QUARANTINE_MARK, RISK_ORDER, canonical_json
from mcp_gatekeeper.policy import Policy, Verdict

log = logging.getLogger(__name__)

JudgementKind = Literal["refuse_invalid", "deny", "allow", "audit", "hold"]
TRUNCATED = "gatekeeper_truncated"
UNENCODABLE = "gatekeeper_unencodable"
"""Keys of the safe form recorded instead of arguments that were too large, or not JSON (NaN, infinities)."""


@dataclass(frozen=True, slots=True)
class Judgement:
    """One policy's answer for one call. ``stored`` is what is recorded (the arguments, or a safe stand-in for
    arguments too large or not encodable) and ``canonical`` its canonical JSON."""

    kind: JudgementKind
    verdict: Verdict
    stored: dict[str, Any]
    canonical: str
    problem: ArgumentProblem | None = None
    leasable: bool = False


def raise_to_hold(verdict: Verdict, why: str) -> Verdict:
    """Held by a human, whatever the policy said (only ``deny`` stays ``deny``); ``why`` comes first."""
    return replace(
        verdict, gate="hard", hold=True, in_client="off", in_chat="show",
        risk=verdict.risk if RISK_ORDER[verdict.risk] >= RISK_ORDER["high"] else "high",
        reasons=(why, *verdict.reasons),
    )  # fmt: skip


def denial(risk: str, reasons: tuple[str, ...], deny_reason: str) -> Verdict:
    return Verdict(
        gate="deny", hold=False, risk=risk, rule=None, rule_index=None, reasons=reasons, deny_reason=deny_reason
    )


def quarantine_reason(upstream: str, tool: str, diff: str) -> str:
    return (
        f"{QUARANTINE_MARK} the tool's definition changed since it was pinned; every call is held until a"
        f" human re-pins it (mcp-gatekeeper pin {upstream} {tool}). Changes:\n{diff}"
    )


def judge(
    policy: Policy,
    checks: SchemaChecks,
    *,
    upstream: str,
    tool: str,
    tooldef: Mapping[str, Any],
    tool_hash: str,
    arguments: Mapping[str, Any],
    confidence: float | None = None,
    quarantine: str | None = None,
) -> Judgement:
    """Schema → policy → size limit → pin, for one call of a known tool. ``quarantine`` is the definition's
    diff against its pin (None: the tool is as pinned); the limits and the schema setting are the policy's
    config's."""
    security = policy.config.security
    try:
        canonical = canonical_json(arguments)
    except ValueError:  # infinite or NaN: refused whatever the schema says, and recorded in a safe form
        unencodable = non_finite(arguments)
        shown = json.dumps(arguments, sort_keys=True, ensure_ascii=False, allow_nan=True, default=repr)
        safe = {UNENCODABLE: {"bytes": len(shown.encode()), "head": shown[:512]}}
        return Judgement(
            "refuse_invalid", denial("high", (unencodable.reason,), unencodable.reason), safe, canonical_json(safe),
            unencodable,
        )  # fmt: skip
    size = len(canonical.encode())
    cap = security.max_argument_bytes
    # arguments over the size limit are denied below, unread: not worth validating
    problem = checks.check(tool_hash, tooldef.get("inputSchema"), arguments) if size <= cap else None
    if problem is not None and security.schema_mismatch == "refuse":
        verdict = denial("high", (problem.reason,), problem.reason)
        return Judgement("refuse_invalid", verdict, dict(arguments), canonical, problem)
    try:
        verdict = policy.evaluate(upstream, tool, arguments, tooldef.get("annotations"), confidence=confidence)
    except Exception as e:  # fail closed: a policy error never executes
        log.exception("policy evaluation failed for %s/%s", upstream, tool)
        verdict = denial("critical", (f"policy error: {type(e).__name__}",),
                         "policy error: the call was denied to be safe")  # fmt: skip
    leasable = verdict.action == "hold"
    if problem is not None and verdict.action != "deny":
        verdict = raise_to_hold(verdict, f"held for a human: {problem.reason}")
        leasable = False  # a lease was granted for calls that pass the schema
    stored: dict[str, Any] = dict(arguments)
    if size > cap:
        verdict = denial(
            verdict.risk, (f"arguments are {size} bytes, over the {cap}-byte limit",),
            f"the arguments are too large to review ({size} bytes; the limit is {cap})",
        )  # fmt: skip
        # never stored in full: an agent must not be able to fill the database with denied calls
        stored = {TRUNCATED: {"bytes": size, "head": canonical[:512], "tail": canonical[-256:]}}
    if verdict.action != "deny" and quarantine is not None:
        verdict = raise_to_hold(verdict, quarantine_reason(upstream, tool, quarantine))
        leasable = False
    if verdict.action == "hold" and (
        verdict.risk == "critical" or (verdict.rule_config and verdict.rule_config.no_lease)
    ):
        leasable = False
    kind: JudgementKind
    if verdict.action == "deny":
        kind = "deny"
    elif verdict.gate == "audit":
        kind = "audit"
    elif verdict.action == "allow":
        kind = "allow"
    else:
        kind = "hold"
    return Judgement(kind, verdict, stored, canonical, problem, leasable)
