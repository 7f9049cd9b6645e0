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
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from mcp import MCPError

from mcp_gatekeeper.argcheck import SchemaChecks
from mcp_gatekeeper.calibrate.shadow import ShadowVerdict
from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.config import GatekeeperConfig
from mcp_gatekeeper.errors import UpstreamError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.judgement import judge
from mcp_gatekeeper.models import NewCall
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
        shadow: Policy | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.shadow = shadow
        """The shadow policy (``[shadow]`` or rules with ``shadow = true``): its verdict is recorded, never acted on."""
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
        """Schema → policy → size limit → pin, for a known tool: the plan and the record it writes (with the
        shadow policy's verdict beside it when there is one)."""
        up_name = upstream.name
        arguments, agent_reason, agent_confidence = agent_params(arguments)
        tool_hash = self.routing.tool_hash(tooldef)
        quarantine = self.routing.quarantine(up_name, tool, tooldef)
        j = judge(
            self.policy, self.checks, upstream=up_name, tool=tool, tooldef=tooldef, tool_hash=tool_hash,
            arguments=arguments, confidence=agent_confidence, quarantine=quarantine,
        )  # fmt: skip
        shadow = ShadowVerdict.NONE if self.shadow is None else self._shadow(up_name, tool, tooldef, tool_hash,
                                                                              arguments, agent_confidence, quarantine)  # fmt: skip
        digest = hashlib.sha256(j.canonical.encode("utf-8")).hexdigest()
        verdict = j.verdict
        if j.kind == "refuse_invalid":
            # arguments the upstream would read otherwise than the policy does: refused, recorded as denied
            reason = verdict.deny_reason or ""
            new = NewCall(
                upstream=up_name, tool=tool, arguments=j.stored, gate="deny", risk="high", tooldef_hash=tool_hash,
                reasons=(reason,), agent_reason=agent_reason, agent_confidence=agent_confidence, client=client,
                args_digest=digest, shadow_action=shadow.action, shadow_rule=shadow.rule,
                shadow_reason=shadow.reason,
            )  # fmt: skip
            return Plan("refuse_invalid", reason, name=name, upstream=upstream, tool=tool, tooldef=tooldef,
                        new=new, verdict=verdict)  # fmt: skip
        schema = tooldef.get("inputSchema")
        new = NewCall(
            upstream=up_name, tool=tool, arguments=j.stored, gate=verdict.gate, risk=verdict.risk, rule=verdict.rule,
            tooldef_hash=tool_hash, summary=verdict.summary, effects=dict(verdict.effects), reasons=verdict.reasons,
            agent_reason=agent_reason, agent_confidence=agent_confidence, client=client,
            # the schema is kept only where a reviewer may edit the arguments (it can be large; allowed calls skip it)
            input_schema=schema if verdict.action == "hold" and isinstance(schema, dict) else None,
            wait_strategy="hold" if verdict.action == "hold" else None,
            args_digest=digest, shadow_action=shadow.action, shadow_rule=shadow.rule, shadow_reason=shadow.reason,
        )  # fmt: skip
        raw = dict(params)
        raw["name"] = tool
        raw["arguments"] = arguments
        return Plan(
            j.kind, (verdict.deny_reason or "denied by policy") if j.kind == "deny" else None, name=name,
            upstream=upstream, tool=tool, tooldef=tooldef, arguments=arguments, raw=raw, new=new, verdict=verdict,
            leasable=j.leasable,
        )  # fmt: skip

    def _shadow(
        self,
        upstream: str,
        tool: str,
        tooldef: Mapping[str, Any],
        tool_hash: str,
        arguments: Mapping[str, Any],
        confidence: float | None,
        quarantine: str | None,
    ) -> ShadowVerdict:
        """The shadow policy's verdict, by the same judgement; a fault in it is recorded, never acted on."""
        assert self.shadow is not None
        try:
            j = judge(
                self.shadow, self.checks, upstream=upstream, tool=tool, tooldef=tooldef, tool_hash=tool_hash,
                arguments=arguments, confidence=confidence, quarantine=quarantine,
            )  # fmt: skip
            return ShadowVerdict.of(j)
        except Exception as e:  # the shadow never changes the outcome, not even by failing
            log.exception("shadow policy evaluation failed for %s/%s", upstream, tool)
            return ShadowVerdict.failed(e)

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
