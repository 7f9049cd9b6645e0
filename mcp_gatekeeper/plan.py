"""What to do with one ``tools/call``, decided once for every transport: a :class:`Plan` value.

``Planner.plan(params, client)`` routes the call, checks its arguments against the tool's ``inputSchema``
(:mod:`mcp_gatekeeper.argcheck`), asks the policy, applies the size limit and the tool's pin, and looks for a
lease; the answer is a tagged value (``kind``) with its reason and the record to write. Executing it is
:mod:`mcp_gatekeeper.execute`'s job (and the proxy's, for holds and audit gates). ``Planner.plan_now`` is the
same decision without any I/O, for the stdio fast lane: it answers only from what is already known and says
``None`` when it would need to ask the upstream or the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from mcp import MCPError

from mcp_gatekeeper.argcheck import ArgumentProblem, SchemaChecks, non_finite
from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.config import GatekeeperConfig
from mcp_gatekeeper.errors import UpstreamError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import QUARANTINE_MARK, RISK_ORDER, NewCall, canonical_json
from mcp_gatekeeper.policy import Policy, Verdict
from mcp_gatekeeper.upstream import Upstream

log = logging.getLogger(__name__)

AGENT_REASON = "gatekeeper_reason"
AGENT_CONFIDENCE = "gatekeeper_confidence"
META_PREFIX = "io.modelcontextprotocol/"

PlanKind = Literal[
    "malformed", "status", "unrouted", "unavailable", "refuse_invalid", "deny", "allow", "lease", "audit", "hold"
]
"""``malformed``/``status``/``unavailable`` are answered without a record; ``unrouted``, ``refuse_invalid`` and
``deny`` are recorded as denied; ``allow``/``lease`` are recorded and forwarded; ``audit`` runs now and is
reviewed later; ``hold`` waits for a human."""


@dataclass(frozen=True, slots=True)
class Plan:
    """One call's plan. ``raw`` is what is forwarded (the client's params with the agent's own parameters
    removed and the upstream's tool name); ``new`` is the record to write."""

    kind: PlanKind
    reason: str | None = None
    name: str = ""
    upstream: Upstream | None = None
    tool: str = ""
    tooldef: Mapping[str, Any] | None = None
    arguments: dict[str, Any] | None = None
    raw: dict[str, Any] | None = None
    new: NewCall | None = None
    verdict: Verdict | None = None
    leasable: bool = False


def agent_params(arguments: Mapping[str, Any]) -> tuple[dict[str, Any], str | None, float | None]:
    """The arguments without the gatekeeper's own parameters, and the agent's stated reason and confidence."""
    arguments = dict(arguments)
    reason = arguments.pop(AGENT_REASON, None)
    confidence = arguments.pop(AGENT_CONFIDENCE, None)
    if not isinstance(reason, str):
        reason = None
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 <= confidence <= 1:
        confidence = None
    return arguments, reason, confidence


def _raise_to_hold(verdict: Verdict, why: str) -> Verdict:
    """Held by a human, whatever the policy said (only ``deny`` stays ``deny``); ``why`` comes first."""
    return replace(
        verdict, gate="hard", hold=True, in_client="off", in_chat="show",
        risk=verdict.risk if RISK_ORDER[verdict.risk] >= RISK_ORDER["high"] else "high",
        reasons=(why, *verdict.reasons),
    )  # fmt: skip


def _denial(risk: str, reasons: tuple[str, ...], deny_reason: str) -> Verdict:
    return Verdict(
        gate="deny", hold=False, risk=risk, rule=None, rule_index=None, reasons=reasons, deny_reason=deny_reason
    )


@dataclass
class Routing:
    """What the planner needs from the proxy: names, tools and pins (the proxy owns them)."""

    route: Callable[[str], tuple[str, str] | None]
    upstreams: Callable[[], Mapping[str, Upstream]]
    tool_hash: Callable[[Mapping[str, Any]], str]
    quarantine: Callable[[str, str, Mapping[str, Any]], str | None]
    """The diff against the pinned definition, or None when the tool is as pinned."""
    refresh: Callable[[Upstream], Awaitable[Any]]
    """Fetch the upstream's tools again (and check them against their pins)."""
    repin: Callable[[str, Mapping[str, dict[str, Any]]], Awaitable[None]]
    """Read the pins again (a human may have re-pinned a tool from another process)."""


class Planner:
    """Decides what happens to a call. Never executes anything."""

    def __init__(
        self,
        *,
        config: GatekeeperConfig,
        policy: Policy,
        gate: Gate,
        clock: Clock,
        routing: Routing,
        status_tool: str | None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.gate = gate
        self.clock = clock
        self.routing = routing
        self.status_tool = status_tool
        """The gatekeeper's own status tool's name (None when it is off): answered here, never routed."""
        self.checks = SchemaChecks()

    # ------------------------------------------------------------------ the whole decision (any transport)

    async def plan(self, params: Mapping[str, Any], client: dict[str, Any]) -> Plan:
        """The plan for a ``tools/call`` with these (hop-by-hop cleaned) params."""
        early = self._route(params)
        if isinstance(early, Plan):
            return early
        name, up_name, tool, arguments = early
        upstream = self.routing.upstreams()[up_name]
        try:
            if not upstream.tools or not upstream.connected:
                await self.routing.refresh(upstream)
            if tool not in upstream.tools:
                await self.routing.refresh(upstream)
            tooldef = upstream.tools.get(tool)
            if tooldef is None:
                return Plan(
                    "unrouted", f"unknown tool {name!r} on upstream {up_name!r}", name=name, arguments=arguments
                )
            plan = self.decide(name, upstream, tool, tooldef, params, arguments, client)
            if plan.kind == "hold":
                # look again right before holding: a silent change of the definition is caught here, and a human
                # may have re-pinned it from another process
                await self.routing.refresh(upstream)
                tooldef = upstream.tools.get(tool) or tooldef
                if self.routing.quarantine(up_name, tool, tooldef) is not None:
                    await self.routing.repin(up_name, {tool: dict(tooldef)})
                plan = self.decide(name, upstream, tool, tooldef, params, arguments, client)
        except (UpstreamError, MCPError) as e:
            return Plan("unavailable", f"upstream {up_name!r} is unavailable: {e}", name=name)
        if plan.kind == "hold" and plan.leasable:
            assert plan.new is not None
            assert plan.arguments is not None
            lease = await self._matching_lease(up_name, tool, plan.new.tooldef_hash or "", plan.arguments)
            if lease is not None:
                why = f"allowed by lease {lease.id} (granted by {lease.created_by})"
                new = replace(plan.new, gate="lease", reasons=(why, *plan.new.reasons))
                return replace(plan, kind="lease", reason=why, new=new)
        return plan

    def plan_now(self, params: Mapping[str, Any], client: dict[str, Any]) -> Plan | None:
        """The same decision from what is known now, without I/O; None when it would need the upstream."""
        early = self._route(params)
        if isinstance(early, Plan):
            return early
        name, up_name, tool, arguments = early
        upstream = self.routing.upstreams()[up_name]
        tooldef = upstream.tools.get(tool)
        if tooldef is None or not upstream.connected:
            return None
        return self.decide(name, upstream, tool, tooldef, params, arguments, client)

    def _route(self, params: Mapping[str, Any]) -> Plan | tuple[str, str, str, dict[str, Any]]:
        name = params.get("name")
        arguments = params.get("arguments") or {}
        if not isinstance(name, str) or not isinstance(arguments, dict):
            return Plan("malformed", "malformed tools/call")
        if name == self.status_tool:
            return Plan("status", name=name, arguments=arguments)
        route = self.routing.route(name)
        if route is None:
            return Plan("unrouted", f"unknown tool {name!r}", name=name, arguments=arguments)
        return name, route[0], route[1], arguments

    # ------------------------------------------------------------------ the decision itself (pure)

    def decide(
        self,
        name: str,
        upstream: Upstream,
        tool: str,
        tooldef: Mapping[str, Any],
        params: Mapping[str, Any],
        arguments: Mapping[str, Any],
        client: dict[str, Any],
    ) -> Plan:
        """Schema → policy → size limit → pin, for a known tool: the plan and the record it writes."""
        up_name = upstream.name
        arguments, agent_reason, agent_confidence = agent_params(arguments)
        tool_hash = self.routing.tool_hash(tooldef)
        try:
            canonical = canonical_json(arguments)
        except ValueError:  # infinite or NaN: refused whatever the schema says, and recorded in a safe form
            unencodable = non_finite(arguments)
            shown = json.dumps(arguments, sort_keys=True, ensure_ascii=False, allow_nan=True, default=repr)
            safe = {"gatekeeper_unencodable": {"bytes": len(shown.encode()), "head": shown[:512]}}
            return self._refusal(name, upstream, tool, tooldef, tool_hash, safe, canonical_json(safe),
                                 unencodable, client, agent_reason, agent_confidence)  # fmt: skip
        size = len(canonical.encode())
        cap = self.config.security.max_argument_bytes
        # arguments over the size limit are denied below, unread: not worth validating
        problem = self.checks.check(tool_hash, tooldef.get("inputSchema"), arguments) if size <= cap else None
        if problem is not None and self.config.security.schema_mismatch == "refuse":
            return self._refusal(name, upstream, tool, tooldef, tool_hash, arguments, canonical, problem, client,
                                 agent_reason, agent_confidence)  # fmt: skip
        try:
            verdict = self.policy.evaluate(
                up_name, tool, arguments, tooldef.get("annotations"), confidence=agent_confidence
            )
        except Exception as e:  # fail closed: a policy error never executes
            log.exception("policy evaluation failed for %s/%s", up_name, tool)
            verdict = _denial("critical", (f"policy error: {type(e).__name__}",),
                              "policy error: the call was denied to be safe")  # fmt: skip
        leasable = verdict.action == "hold"
        if problem is not None and verdict.action != "deny":
            verdict = _raise_to_hold(verdict, f"held for a human: {problem.reason}")
            leasable = False  # a lease was granted for calls that pass the schema
        stored: dict[str, Any] = arguments
        if size > cap:
            verdict = _denial(
                verdict.risk, (f"arguments are {size} bytes, over the {cap}-byte limit",),
                f"the arguments are too large to review ({size} bytes; the limit is {cap})",
            )  # fmt: skip
            # never stored in full: an agent must not be able to fill the database with denied calls
            stored = {"gatekeeper_truncated": {"bytes": size, "head": canonical[:512], "tail": canonical[-256:]}}
        if verdict.action != "deny" and (diff := self.routing.quarantine(up_name, tool, tooldef)) is not None:
            verdict = _raise_to_hold(
                verdict,
                f"{QUARANTINE_MARK} the tool's definition changed since it was pinned; every call is held until a"
                f" human re-pins it (mcp-gatekeeper pin {up_name} {tool}). Changes:\n{diff}",
            )
            leasable = False
        if verdict.action == "hold" and (
            verdict.risk == "critical" or (verdict.rule_config and verdict.rule_config.no_lease)
        ):
            leasable = False
        schema = tooldef.get("inputSchema")
        new = NewCall(
            upstream=up_name, tool=tool, arguments=stored, gate=verdict.gate, risk=verdict.risk, rule=verdict.rule,
            tooldef_hash=tool_hash, summary=verdict.summary, effects=dict(verdict.effects), reasons=verdict.reasons,
            agent_reason=agent_reason, agent_confidence=agent_confidence, client=client,
            # the schema is kept only where a reviewer may edit the arguments (it can be large; allowed calls skip it)
            input_schema=schema if verdict.action == "hold" and isinstance(schema, dict) else None,
            wait_strategy="hold" if verdict.action == "hold" else None,
            args_digest=hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        )  # fmt: skip
        raw = dict(params)
        raw["name"] = tool
        raw["arguments"] = arguments
        kind: PlanKind
        if verdict.action == "deny":
            kind = "deny"
        elif verdict.gate == "audit":
            kind = "audit"
        elif verdict.action == "allow":
            kind = "allow"
        else:
            kind = "hold"
        return Plan(
            kind, (verdict.deny_reason or "denied by policy") if kind == "deny" else None, name=name, upstream=upstream,
            tool=tool, tooldef=tooldef, arguments=arguments, raw=raw, new=new, verdict=verdict, leasable=leasable,
        )  # fmt: skip

    def _refusal(
        self,
        name: str,
        upstream: Upstream,
        tool: str,
        tooldef: Mapping[str, Any],
        tool_hash: str,
        stored: dict[str, Any],
        canonical: str,
        problem: ArgumentProblem,
        client: dict[str, Any],
        agent_reason: str | None,
        agent_confidence: float | None,
    ) -> Plan:
        """Arguments the upstream would read otherwise than the policy does: refused, recorded as denied."""
        verdict = _denial("high", (problem.reason,), problem.reason)
        new = NewCall(
            upstream=upstream.name, tool=tool, arguments=stored, gate="deny", risk="high", tooldef_hash=tool_hash,
            reasons=(problem.reason,), agent_reason=agent_reason, agent_confidence=agent_confidence, client=client,
            args_digest=hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        )  # fmt: skip
        return Plan("refuse_invalid", problem.reason, name=name, upstream=upstream, tool=tool, tooldef=tooldef,
                    new=new, verdict=verdict)  # fmt: skip

    async def _matching_lease(self, upstream: str, tool: str, tool_hash: str, arguments: Mapping[str, Any]) -> Any:
        now = self.clock.now()
        for lease in await self.gate.store.leases(active_at=now, upstream=upstream, tool=tool):
            if lease.tooldef_hash not in (None, tool_hash):
                continue  # granted for another definition of the tool: no longer applies
            if self.policy.envelope_holds(lease.envelope, arguments) and await self.gate.store.use_lease(
                lease.id, call_id=None
            ):
                return lease
        return None
