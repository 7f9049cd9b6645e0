"""The downstream MCP server: routes, gates and forwards; the only place outcomes become MCP types.

Everything that is not a gated ``tools/call`` passes through as raw dicts, in both directions. A
``tools/call`` runs policy → (record allowed | record denied | gate.hold) → upstream → record outcome.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

import mcp.types as types
from mcp import MCPError
from mcp.server import CacheHint, NotificationOptions, Server, ServerRequestContext
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.shared.message import ServerMessageMetadata
from mcp_types.methods import CACHEABLE_METHODS, CacheableMethod
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_gatekeeper import __version__
from mcp_gatekeeper.apps import CARD_URI, DECIDE_TOOL
from mcp_gatekeeper.apps.tool import Apps, wants_apps
from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.compensation import DEFAULT_REVIEW_WINDOW, Compensator
from mcp_gatekeeper.config import GatekeeperConfig
from mcp_gatekeeper.errors import StoreError, UpstreamError
from mcp_gatekeeper.execute import Caller, Executor, already_ran, refused_result, unrecorded
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.holding import Holding, Reply, client_identity, has_progress_token, text_result
from mcp_gatekeeper.hostos import os_user
from mcp_gatekeeper.models import (
    Approved,
    CallRecord,
    NewCall,
    Pin,
    Refused,
    State,
    canonical_json,
    definition_diff,
    digest,
)
from mcp_gatekeeper.plan import AGENT_CONFIDENCE, AGENT_REASON, META_PREFIX, Plan, Planner, Routing
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.principals import (
    AGENT_SCOPE_KEY,
    agent_principal,
    stdio_principal,
    unauthenticated_principal,
)
from mcp_gatekeeper.telemetry import NO_TELEMETRY, NO_TRACE, CallTrace, Telemetry
from mcp_gatekeeper.upstream import Upstream, UpstreamHooks

log = logging.getLogger(__name__)

SEPARATOR = "__"
STATUS_TOOL = "gatekeeper_status"
MAX_SESSIONS = 256


def tooldef_hash(tool: Mapping[str, Any]) -> str:
    """Identity of a tool definition: name, description, schemas and annotations."""
    return digest(
        {k: tool.get(k) for k in ("name", "title", "description", "inputSchema", "outputSchema", "annotations")}
    )


class _HashCache:
    """tooldef_hash per definition object (the upstream's tool dicts are replaced, never mutated, on refresh)."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Mapping[str, Any], str]] = {}

    def __call__(self, tool: Mapping[str, Any]) -> str:
        hit = self._by_id.get(id(tool))
        if hit is not None and hit[0] is tool:
            return hit[1]
        h = tooldef_hash(tool)
        if len(self._by_id) > 10_000:
            self._by_id.clear()
        self._by_id[id(tool)] = (tool, h)
        return h


def clean_meta(meta: Any) -> dict[str, Any]:
    """Hop-by-hop ``_meta`` keys removed: the progress token (re-minted upstream) and 2026 envelope keys."""
    if not isinstance(meta, Mapping):
        return {}
    return {k: v for k, v in meta.items() if k != "progressToken" and not str(k).startswith(META_PREFIX)}


@dataclass
class FastSession:
    """The one downstream client of a stdio process, after its handshake (see :meth:`Proxy.plan_fast`)."""

    session: ServerSession
    client: dict[str, Any]


@dataclass
class ProxyState:
    sessions: list[ServerSession] = field(default_factory=list)
    """Downstream sessions that completed the handshake (push notifications go to them); dead ones are dropped."""


class Proxy:
    """Serves one downstream MCP server in front of one or more upstreams."""

    def __init__(
        self,
        *,
        config: GatekeeperConfig,
        policy: Policy,
        gate: Gate,
        clock: Clock,
        upstreams: dict[str, Upstream] | None = None,
        namespaced: bool | None = None,
        state_key: bytes | None = None,
        shadow: Policy | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        """``shadow``: a policy whose verdict is recorded beside each call and never acted on."""
        self.config = config
        self.telemetry = telemetry or NO_TELEMETRY
        self.policy = policy
        self.gate = gate
        self.clock = clock
        self.upstreams: dict[str, Upstream] = upstreams or {}
        self._namespaced = namespaced
        self.state = ProxyState()
        self.executor = Executor(gate=gate)
        self._inflight = self.executor.inflight
        self._resource_owner: dict[str, str] = {}
        self._pins: dict[str, dict[str, Pin]] = {}
        self._hash = _HashCache()
        self._os_user = os_user()
        self.fast_session: FastSession | None = None
        """Set once a stdio client finished the handshake: its allowed calls may take the fast lane."""
        self.compensator = Compensator(gate=gate, config=config, clock=clock, upstreams=lambda: self.upstreams)
        self.holding = Holding(
            gate=gate, config=config, key=state_key or secrets.token_bytes(32), card_url=config.card_url
        )
        self.apps = Apps(gate=gate, config=config, clock=clock)
        """The decision card in the chat, for clients that declared MCP Apps (nothing for the others)."""
        self.planner = Planner(
            config=config, policy=policy, gate=gate, clock=clock,
            status_tool=STATUS_TOOL if config.status_tool else None, shadow=shadow,
            routing=Routing(
                route=self._split, upstreams=lambda: self.upstreams, tool_hash=self._hash,
                quarantine=self._quarantine, refresh=self.refresh_tools, repin=self._pin,
            ),
        )  # fmt: skip

    @property
    def namespaced(self) -> bool:
        return self._namespaced if self._namespaced is not None else len(self.upstreams) > 1

    def hooks(self) -> UpstreamHooks:
        return UpstreamHooks(
            on_notification=self._on_upstream_notification,
            on_elicit=self._on_upstream_elicit,
            on_sample=self._on_upstream_sample,
            on_roots=self._on_upstream_roots,
        )

    # ------------------------------------------------------------------ server construction

    def build_server(self) -> Server[ProxyState]:
        caps = [u.client.server_capabilities for u in self.upstreams.values() if u.connected]
        handlers: dict[str, Any] = {"on_list_tools": self._list_tools, "on_call_tool": self._call_tool}
        if self.telemetry.enabled:  # off: not even a wrapper in the call path
            handlers["on_call_tool"] = self._traced_call_tool
        upstream_resources = any(c and c.resources for c in caps)
        # the decision card is a resource for MCP Apps clients, whether or not an upstream has resources
        handlers |= {
            "on_list_resources": self._with_card_list(
                self._fwd_list("resources/list", "resources") if upstream_resources else None
            ),
            "on_read_resource": self._with_card_read(
                self._fwd_by_uri("resources/read") if upstream_resources else None
            ),
        }
        if upstream_resources:
            handlers["on_list_resource_templates"] = self._fwd_list("resources/templates/list", "resourceTemplates")
            if any(c and c.resources and c.resources.subscribe for c in caps):
                handlers |= {
                    "on_subscribe_resource": self._fwd_by_uri("resources/subscribe"),
                    "on_unsubscribe_resource": self._fwd_by_uri("resources/unsubscribe"),
                }
        if any(c and c.prompts for c in caps):
            handlers |= {
                "on_list_prompts": self._fwd_list("prompts/list", "prompts"),
                "on_get_prompt": self._get_prompt,
            }
        if any(c and c.completions for c in caps):
            handlers["on_completion"] = self._complete

        state = self.state

        @contextlib.asynccontextmanager
        async def lifespan(_: Server[ProxyState]) -> AsyncIterator[ProxyState]:
            yield state

        first = next(iter(self.upstreams.values()), None)
        info = first.client.server_info if first is not None and first.connected and len(self.upstreams) == 1 else None
        instructions = (
            first.client.instructions if first is not None and first.connected and len(self.upstreams) == 1 else None
        )
        server: Server[ProxyState] = Server(
            f"mcp-gatekeeper:{info.name}" if info else "mcp-gatekeeper",
            version=info.version if info else __version__,
            instructions=instructions,
            lifespan=lifespan,
            cache_hints=dict.fromkeys(
                cast("frozenset[CacheableMethod]", CACHEABLE_METHODS), CacheHint(ttl_ms=0, scope="private")
            ),
            **handlers,
        )
        server.add_notification_handler("notifications/initialized", types.NotificationParams, self._on_initialized)
        server.add_notification_handler(
            "notifications/roots/list_changed", types.NotificationParams, self._on_roots_changed
        )
        if any(c and c.logging is not None for c in caps):
            server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self._set_level)
        return server

    def init_options(self, server: Server[ProxyState]) -> InitializationOptions:
        caps = [u.client.server_capabilities for u in self.upstreams.values() if u.connected]
        return server.create_initialization_options(
            NotificationOptions(
                tools_changed=True,
                resources_changed=any(c and c.resources and c.resources.list_changed for c in caps),
                prompts_changed=any(c and c.prompts and c.prompts.list_changed for c in caps),
            )
        )

    # ------------------------------------------------------------------ helpers

    def _split(self, name: str) -> tuple[str, str] | None:
        if not self.namespaced:
            if not self.upstreams:
                return None
            return next(iter(self.upstreams)), name
        up, sep, rest = name.partition(SEPARATOR)
        if not sep or up not in self.upstreams or not rest:
            return None
        return up, rest

    def _public(self, upstream: str, name: str) -> str:
        return f"{upstream}{SEPARATOR}{name}" if self.namespaced else name

    @staticmethod
    def _raw_params(ctx: ServerRequestContext[ProxyState]) -> dict[str, Any]:
        raw = dict(ctx.params or {})
        meta = clean_meta(raw.pop("_meta", None))
        if meta:
            raw["_meta"] = meta
        return raw

    @staticmethod
    def _finish(ctx: ServerRequestContext[ProxyState], result: dict[str, Any]) -> Any:
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            result.setdefault("resultType", "complete")
        return result

    @staticmethod
    def _progress_fn(ctx: ServerRequestContext[ProxyState]) -> Any:
        if not has_progress_token(ctx):
            return None

        async def progress(p: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(p, total, message)

        return progress

    def _caller(self, ctx: ServerRequestContext[ProxyState]) -> Caller:
        return Caller(ctx.session, ctx.request_id, self._progress_fn(ctx), ctx.protocol_version)

    def _client_info(self, ctx: ServerRequestContext[ProxyState]) -> dict[str, Any]:
        """Who made a request; ``principal`` is the client identity its calls belong to (see principals.py)."""
        info: dict[str, Any] = {"protocol": ctx.protocol_version}
        name, version = client_identity(ctx)
        if name is not None:
            info["name"] = name
            info["version"] = version
        caps = ctx.session.client_capabilities
        if caps is not None:
            info["elicitation"] = caps.elicitation is not None
        if ctx.request is not None:
            sid = ctx.request.headers.get("mcp-session-id")
            if sid:  # handshake-era HTTP has sessions; 2026-07-28 HTTP has none
                info["session"] = f"http:{sid}"
            agent = ctx.request.scope.get(AGENT_SCOPE_KEY)  # set by the bearer check, never by a header
            info["principal"] = agent_principal(agent) if isinstance(agent, str) else unauthenticated_principal(name)
        else:  # stdio: this process serves exactly one client connection
            info["session"] = f"proc:{self.gate.store.instance_id}"
            info["principal"] = stdio_principal(self._os_user, name)
        return info

    async def _ensure_tools(self, upstream: Upstream) -> None:
        if not upstream.tools or not upstream.connected:
            await self.refresh_tools(upstream)

    async def refresh_tools(self, upstream: Upstream) -> dict[str, dict[str, Any]]:
        """Fetch the upstream's tools (every page) and check them against their pins."""
        tools = await upstream.refresh_tools()
        await self._pin(upstream.name, tools)
        return tools

    async def _pin(self, upstream: str, tools: Mapping[str, dict[str, Any]]) -> None:
        """Pin tools on first sight; a changed definition is quarantined until a human re-pins it."""
        try:
            self._pins[upstream] = await self.gate.store.check_pins(
                upstream, {name: (tooldef_hash(t), t) for name, t in tools.items()}
            )
        except StoreError:
            log.error("could not check tool pins for %s", upstream, exc_info=True)

    def _quarantine(self, upstream: str, tool: str, tooldef: Mapping[str, Any]) -> str | None:
        """If the tool's definition is not the pinned one, the diff to show the reviewer."""
        pin = self._pins.get(upstream, {}).get(tool)
        if pin is None or self._hash(tooldef) == pin.hash:
            return None
        return "\n".join(definition_diff(pin.definition, dict(tooldef), context=1))[:4000]

    def _with_agent_params(self, upstream: str, tool: dict[str, Any]) -> dict[str, Any]:
        """Add gatekeeper_reason / gatekeeper_confidence to a tool's input schema when policy asks the agent."""
        if not self.policy.asks_agent(upstream, tool.get("name", "")):
            return tool
        schema = dict(tool.get("inputSchema") or {"type": "object"})
        props = dict(schema.get("properties") or {})
        props.setdefault(
            AGENT_REASON,
            {"type": "string", "description": "Why you are making this call (shown to the human who approves it)."},
        )
        props.setdefault(
            AGENT_CONFIDENCE,
            {
                "type": "number", "minimum": 0, "maximum": 1,
                "description": "How sure you are this call is right and wanted, from 0 to 1 (shown to the human).",
            },
        )  # fmt: skip
        schema["properties"] = props
        return {**tool, "inputSchema": schema}

    # ------------------------------------------------------------------ tools

    async def _list_tools(self, ctx: ServerRequestContext[ProxyState], params: Any) -> Any:
        raw = self._raw_params(ctx)
        tools: list[dict[str, Any]] = []
        result: dict[str, Any] = {}
        if not self.namespaced and len(self.upstreams) == 1:
            up = next(iter(self.upstreams.values()))
            result = await self._forward(up, "tools/list", raw)
            page = [t for t in result.get("tools") or [] if isinstance(t, dict)]
            named = {t["name"]: t for t in page if isinstance(t.get("name"), str)}
            up.tools = {**up.tools, **named}  # merged, never emptied: a call in flight may be reading it
            await self._pin(up.name, named)
            tools = [self._with_agent_params(up.name, t) for t in page]
            last_page = not result.get("nextCursor")
        else:
            for name, up in self.upstreams.items():
                try:
                    found = await self.refresh_tools(up)
                except (UpstreamError, MCPError) as e:
                    log.warning("tools/list from upstream %s failed: %s", name, e)
                    continue
                for t in found.values():
                    tools.append({**self._with_agent_params(name, t), "name": self._public(name, t["name"])})
            result = {}
            last_page = True
        if last_page and self.config.status_tool:
            tools = [*tools, self._status_tool_def()]
        if wants_apps(ctx):
            tools = [self.apps.tag(t) if t.get("name") != STATUS_TOOL else t for t in tools]
            if last_page:
                tools.append(self.apps.tool_def())
        result["tools"] = tools
        return self._finish(ctx, result)

    @staticmethod
    def _status_tool_def() -> dict[str, Any]:
        return {
            "name": STATUS_TOOL,
            "title": "Status of a call held for human approval",
            "description": (
                "mcp-gatekeeper holds risky tool calls until a human approves them. When a call comes back saying it"
                " is waiting for approval, call this tool with its id to see whether it was approved (and its result),"
                " rejected (and why) or is still waiting. Retrying the identical call also works."
            ),
            "inputSchema": {
                "type": "object",
                "properties": {"id": {"type": "string", "description": "the call id (a unique prefix is enough)"}},
                "required": ["id"],
            },
            "annotations": {"readOnlyHint": True, "openWorldHint": False},
        }

    async def _traced_call_tool(self, ctx: ServerRequestContext[ProxyState], params: Any) -> Any:
        raw = ctx.params or {}
        with self.telemetry.call(str(raw.get("name", "")), raw.get("_meta")) as trace:
            result = await self._call_tool(ctx, params, trace)
            trace.finished(result)
            return result

    async def _call_tool(self, ctx: ServerRequestContext[ProxyState], params: Any, trace: CallTrace = NO_TRACE) -> Any:
        raw = self._raw_params(ctx)
        # 2026-07-28 input rounds are ours (we asked); never forward them upstream
        request_state = raw.pop("requestState", None)
        input_responses = raw.pop("inputResponses", None)
        client = self._client_info(ctx)
        if raw.get("name") == DECIDE_TOOL and wants_apps(ctx):
            args = raw.get("arguments")
            return self._finish(ctx, await self.apps.decide(args if isinstance(args, dict) else {}, client))
        try:
            plan = await self.planner.plan(raw, client)
        except StoreError as e:  # looking for a lease: fail closed
            log.error("store error; failing closed: %s", e)
            return self._finish(ctx, unrecorded(e))
        kind = plan.kind
        trace.planned(kind, plan.upstream.name if plan.upstream is not None else None, plan.tool, plan.verdict)
        if kind == "malformed":
            return self._finish(ctx, text_result(f"mcp-gatekeeper: {plan.reason}", is_error=True))
        if kind == "status":
            return self._finish(ctx, await self._status(plan.arguments or {}, ctx))
        if kind == "unavailable":
            return self._finish(ctx, text_result(f"mcp-gatekeeper: {plan.reason}", is_error=True))
        if kind == "unrouted":
            up = plan.upstream.name if plan.upstream is not None else None
            if up is None and (route := self._split(plan.name)) is not None:
                up = route[0]
            return self._finish(ctx, await self._deny_unrouted(plan.name, plan.arguments or {}, client, upstream=up))
        if kind in ("deny", "refuse_invalid", "allow", "lease"):
            return self._finish(ctx, await self.executor.execute(plan, self._caller(ctx)))
        assert plan.upstream is not None
        assert plan.new is not None
        assert plan.verdict is not None
        assert plan.raw is not None
        assert plan.arguments is not None
        assert plan.tooldef is not None
        upstream, tool, raw, verdict = plan.upstream, plan.tool, plan.raw, plan.verdict
        try:
            if kind == "audit":
                return self._finish(ctx, await self._audit_gate(ctx, plan))
            outcome = await self.holding.run(
                ctx, plan.new, verdict, request_state=request_state, input_responses=input_responses,
                session=client.get("session"),
            )  # fmt: skip
        except StoreError as e:
            log.error("store error; failing closed: %s", e)
            return self._finish(ctx, unrecorded(e))
        trace.outcome(None if isinstance(outcome, Reply) else outcome)
        if isinstance(outcome, Reply):
            if not isinstance(outcome.result, dict):
                return outcome.result
            result = outcome.result
            if outcome.call is not None and wants_apps(ctx):
                try:
                    result = await self.apps.card_result(
                        result, outcome.call, in_chat=verdict.in_chat, principal=client.get("principal")
                    )
                except StoreError as e:  # the plain answer still stands: the page and the CLI can decide
                    log.error("could not prepare the decision card for %s: %s", outcome.call.id[:8], e)
            return self._finish(ctx, result)
        if isinstance(outcome, Refused):
            return self._finish(ctx, refused_result(outcome.call, outcome.reason))
        assert isinstance(outcome, Approved)
        if outcome.call.state != State.APPROVED:
            return self._finish(ctx, already_ran(outcome.call))
        if outcome.modified:
            # the decider checked the edit against its policy; the holder checks it against this one too
            recheck = self.policy.evaluate(upstream.name, tool, outcome.arguments, plan.tooldef.get("annotations"))
            if recheck.action == "deny":
                reason = (
                    f"the reviewer's modified arguments are denied by policy ({recheck.rule}): {recheck.deny_reason}"
                )
                try:
                    await self.gate.store.transition(
                        outcome.call.id, [State.APPROVED], State.DENIED, event="denied", reason=reason,
                        finished_at=self.clock.now(),
                    )  # fmt: skip
                except StoreError:
                    log.error("could not record the denial of %s", outcome.call.id[:8])
                return self._finish(ctx, refused_result(outcome.call, reason))
        try:
            current = await self.refresh_tools(upstream)
        except (UpstreamError, MCPError) as e:
            current = {}
            log.warning("could not re-check %s's tools before forwarding: %s", upstream.name, e)
        now_def = current.get(tool)
        if now_def is None or tooldef_hash(now_def) != outcome.call.tooldef_hash:
            reason = "the tool's definition changed (or vanished) after the call was approved; the approval no longer applies"
            with contextlib.suppress(StoreError):
                await self.gate.store.transition(
                    outcome.call.id, [State.APPROVED], State.DENIED, event="definition_changed", reason=reason,
                    finished_at=self.clock.now(),
                )  # fmt: skip
            return self._finish(ctx, refused_result(outcome.call, reason))
        if (unverified := await self._unverified(outcome.call)) is not None:
            return self._finish(ctx, unverified)
        try:
            started = await self.gate.begin_forward(outcome.call)
        except StoreError as e:
            return self._finish(
                ctx,
                text_result(
                    f"mcp-gatekeeper could not record the approval's forwarding, so the call was not run: {e}",
                    is_error=True,
                ),
            )
        if started is None:
            return self._finish(
                ctx,
                text_result(
                    f"mcp-gatekeeper: call {outcome.call.id[:12]} was already forwarded once; it is not run again",
                    is_error=True,
                ),
            )
        return self._finish(
            ctx,
            await self.executor.forward(
                self._caller(ctx), upstream, started, raw, outcome.arguments, modified=outcome.modified
            ),
        )

    # ------------------------------------------------------------------ the fast lane (stdio)

    def plan_fast(self, params: Any) -> Plan | None:
        """The plan of a call the stdio fast lane may serve; None sends it down the full path instead.

        The plan is :meth:`Planner.plan_now`'s (the full path's decision, made from what is known without
        I/O); the lane serves only what needs no look at the upstream, the store or a human: a handshake-era
        stdio client, a plain ``allow`` plan (no audit gate, no lease, no hold, no refusal), and no progress
        token, 2026 envelope, input round or unknown params key. Anything else goes to the full path, which
        plans it again and answers (or refuses) it there.
        """
        fast = self.fast_session
        if (
            fast is None
            or not self.config.performance.fast_lane
            or self.telemetry.enabled
            or not isinstance(params, dict)
        ):
            return None
        if "requestState" in params or "inputResponses" in params:
            return None
        meta = params.get("_meta")
        if meta is not None:
            if (
                not isinstance(meta, dict)
                or "progressToken" in meta
                or any(str(k).startswith(META_PREFIX) for k in meta)
            ):
                return None
            params = {k: v for k, v in params.items() if k != "_meta"}
            if cleaned := clean_meta(meta):
                params["_meta"] = cleaned
        plan = self.planner.plan_now(params, fast.client)
        return plan if plan is not None and plan.kind == "allow" else None

    async def run_fast(self, plan: Plan, request_id: Any) -> dict[str, Any]:
        """Carry out a plan :meth:`plan_fast` passed: the full path's executor, for the lane's one client."""
        fast = self.fast_session
        assert fast is not None
        caller = Caller(fast.session, request_id, None, fast.client.get("protocol"))
        return await self.executor.execute(plan, caller)

    async def _unverified(self, call: CallRecord) -> dict[str, Any] | None:
        """The refusal of an approval that must not run (not made through the gatekeeper, or its signature is
        missing, from an untrusted key, or over something else), recorded as ``unverified_approval``; else None."""
        try:
            forged = await self.gate.verify_approval(call.id)
        except StoreError as e:
            forged = f"cannot check the approval: {e}"
        if forged is None:
            return None
        reason = f"the approval could not be verified ({forged}); the call was not run"
        log.error("call %s: %s", call.id[:8], reason)
        with contextlib.suppress(StoreError):
            await self.gate.store.transition(
                call.id, [State.APPROVED], State.DENIED, event="unverified_approval", reason=reason,
                finished_at=self.clock.now(), detail={"why": forged},
            )  # fmt: skip
        return text_result(f"mcp-gatekeeper: {reason} (call {call.id[:12]})", is_error=True)

    async def _audit_gate(self, ctx: ServerRequestContext[ProxyState], plan: Plan) -> dict[str, Any]:
        """Run now, review later: capture what an undo needs, forward, then open the review window."""
        verdict, new, upstream = plan.verdict, plan.new, plan.upstream
        assert verdict is not None
        assert new is not None
        assert upstream is not None
        assert plan.raw is not None
        assert plan.arguments is not None
        rule = verdict.rule_config
        assert rule is not None
        capture: dict[str, Any] | None = None
        if rule.capture is not None:
            try:
                capture = await self.compensator.capture(upstream.name, rule.capture, plan.arguments)
            except (UpstreamError, MCPError, KeyError) as e:
                # without what the undo needs, running first is not safe: ask a human first instead
                why = f"could not capture what undoing this call needs ({e}); it needs approval before it runs"
                held = replace(verdict, gate="hard", hold=True, reasons=(why, *verdict.reasons))
                outcome = await self.holding.run(
                    ctx, replace(new, gate="hard", reasons=held.reasons), held,
                    request_state=None, input_responses=None, session=new.client.get("session"),
                )  # fmt: skip
                if isinstance(outcome, Reply):
                    return dict(outcome.result) if isinstance(outcome.result, dict) else outcome.result
                if isinstance(outcome, Refused):
                    return refused_result(outcome.call, outcome.reason)
                if (unverified := await self._unverified(outcome.call)) is not None:
                    return unverified
                started = await self.gate.begin_forward(outcome.call)
                if started is None:
                    return already_ran(outcome.call)
                return await self.executor.forward(
                    self._caller(ctx), upstream, started, plan.raw, outcome.arguments, modified=outcome.modified
                )
        rec = await self.gate.record(new, State.ALLOWED)
        result = await self.executor.forward(self._caller(ctx), upstream, rec, plan.raw)
        if not result.get("isError"):
            window = rule.review_window or DEFAULT_REVIEW_WINDOW
            opened = await self.gate.store.transition(
                rec.id, [State.FORWARDED], State.UNDER_REVIEW, event="under_review", channel="audit-gate",
                deadline_at=self.clock.now() + window, capture=capture,
                detail={"window": window, "captured": capture is not None},
            )  # fmt: skip
            alert = getattr(self.gate.notifier, "alert", None)
            if opened is not None and alert is not None:
                with contextlib.suppress(Exception):
                    await alert("review_due", opened)
        return result

    async def _deny_unrouted(
        self, name: str, arguments: dict[str, Any], client: dict[str, Any], *, upstream: str | None = None
    ) -> dict[str, Any]:
        reason = f"unknown tool {name!r}" + (f" on upstream {upstream!r}" if upstream else "")
        new = NewCall(
            upstream=upstream or "?", tool=name, arguments=arguments, gate="deny", risk="high",
            reasons=(reason,), client=client,
        )  # fmt: skip
        try:
            rec = await self.gate.record(new, State.DENIED, reason=reason)
        except StoreError:
            return text_result(f"mcp-gatekeeper: {reason}; the call was not run", is_error=True)
        return refused_result(rec, reason)

    async def _status(self, arguments: dict[str, Any], ctx: ServerRequestContext[ProxyState]) -> dict[str, Any]:
        """Where one of *this client's* calls stands: only calls of the same principal to the upstreams served here.

        Another client's call gets the same answer as a call that does not exist.
        """
        cid = arguments.get("id")
        if not isinstance(cid, str) or not cid:
            return text_result("gatekeeper_status needs an 'id'", is_error=True)
        principal = self._client_info(ctx).get("principal")
        try:
            rec = await self.gate.store.find_for(cid, principal=principal, upstreams=list(self.upstreams))
        except StoreError as e:
            return text_result(f"mcp-gatekeeper: {e}", is_error=True)
        info: dict[str, Any] = {
            "id": rec.id,
            "state": rec.state.value,
            "tool": rec.tool,
            "upstream": rec.upstream,
            "reason": rec.reason,
        }
        if rec.state == State.PENDING:
            left = max(0.0, (rec.deadline_at or 0) - self.clock.now())
            text = f"call {rec.id[:12]} ({rec.tool}) is still waiting for a human decision ({int(left)} s left)"
        elif rec.state == State.FORWARDED and rec.result is not None:
            text = f"call {rec.id[:12]} ({rec.tool}) was approved and ran. Its result: {canonical_json(rec.result)}"
            info["result"] = rec.result
        else:
            text = f"call {rec.id[:12]} ({rec.tool}) is {rec.state.value}" + (f": {rec.reason}" if rec.reason else "")
        return text_result(text, is_error=False, structured=info)

    # ------------------------------------------------------------------ resources, prompts, completion

    async def _forward(
        self, up: Upstream, method: str, raw: dict[str, Any], ctx: ServerRequestContext[ProxyState] | None = None
    ) -> dict[str, Any]:
        try:
            return await up.request(method, raw, progress=self._progress_fn(ctx) if ctx else None)
        except UpstreamError as e:
            raise MCPError(code=types.INTERNAL_ERROR, message=f"mcp-gatekeeper: {e}") from e

    def _fwd_list(self, method: str, key: str) -> Any:
        async def handler(ctx: ServerRequestContext[ProxyState], params: Any) -> Any:
            raw = self._raw_params(ctx)
            if not self.namespaced:
                up = next(iter(self.upstreams.values()))
                result = await self._forward(up, method, raw, ctx)
                self._remember_owner(up.name, key, result.get(key) or [])
                return self._finish(ctx, result)
            items: list[dict[str, Any]] = []
            for name, up in self.upstreams.items():
                caps = up.client.server_capabilities if up.connected else None
                if caps is not None and key in ("resources", "resourceTemplates") and not caps.resources:
                    continue
                if caps is not None and key == "prompts" and not caps.prompts:
                    continue
                try:
                    found = await up.list_all(method, key)
                except (UpstreamError, MCPError) as e:
                    log.warning("%s from upstream %s failed: %s", method, name, e)
                    continue
                self._remember_owner(name, key, found)
                if key == "prompts":
                    found = [{**p, "name": self._public(name, p["name"])} for p in found]
                items.extend(found)
            return self._finish(ctx, {key: items})

        return handler

    def _with_card_list(self, forward: Any) -> Any:
        """``resources/list``: the upstreams' resources, plus the decision card for an MCP Apps client."""

        async def handler(ctx: ServerRequestContext[ProxyState], params: Any) -> Any:
            result = dict(await forward(ctx, params)) if forward is not None else self._finish(ctx, {"resources": []})
            if wants_apps(ctx) and not (ctx.params or {}).get("cursor"):
                result["resources"] = [self.apps.resource_entry(), *(result.get("resources") or [])]
            return result

        return handler

    def _with_card_read(self, forward: Any) -> Any:
        """``resources/read``: the decision card's HTML for an MCP Apps client; anything else to its upstream."""

        async def handler(ctx: ServerRequestContext[ProxyState], params: Any) -> Any:
            if (ctx.params or {}).get("uri") == CARD_URI and wants_apps(ctx):
                return self._finish(ctx, self.apps.read())
            if forward is None:
                raise MCPError(
                    code=types.INVALID_PARAMS,
                    message=f"mcp-gatekeeper: no upstream lists the resource {str((ctx.params or {}).get('uri'))!r}",
                )
            return await forward(ctx, params)

        return handler

    def _remember_owner(self, upstream: str, key: str, items: list[Any]) -> None:
        field_name = {"resources": "uri", "resourceTemplates": "uriTemplate"}.get(key)
        if field_name is None:
            return
        for item in items:
            if isinstance(item, dict) and isinstance(item.get(field_name), str):
                self._resource_owner[item[field_name]] = upstream

    def _owner_of_uri(self, uri: str) -> Upstream:
        if not self.namespaced:
            return next(iter(self.upstreams.values()))
        owner = self._resource_owner.get(uri)
        if owner is None:
            for template, up in self._resource_owner.items():
                prefix = template.split("{", 1)[0]
                if "{" in template and prefix and uri.startswith(prefix):
                    owner = up
                    break
        if owner is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"mcp-gatekeeper: no upstream lists the resource {uri!r}")
        return self.upstreams[owner]

    def _fwd_by_uri(self, method: str) -> Any:
        async def handler(ctx: ServerRequestContext[ProxyState], params: Any) -> Any:
            raw = self._raw_params(ctx)
            up = self._owner_of_uri(str(raw.get("uri", "")))
            return self._finish(ctx, await self._forward(up, method, raw, ctx))

        return handler

    async def _get_prompt(self, ctx: ServerRequestContext[ProxyState], params: Any) -> Any:
        raw = self._raw_params(ctx)
        route = self._split(str(raw.get("name", "")))
        if route is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"mcp-gatekeeper: unknown prompt {raw.get('name')!r}")
        up, name = route
        return self._finish(ctx, await self._forward(self.upstreams[up], "prompts/get", {**raw, "name": name}, ctx))

    async def _complete(self, ctx: ServerRequestContext[ProxyState], params: Any) -> Any:
        raw = self._raw_params(ctx)
        ref = dict(raw.get("ref") or {})
        if ref.get("type") == "ref/prompt":
            route = self._split(str(ref.get("name", "")))
            if route is None:
                raise MCPError(code=types.INVALID_PARAMS, message=f"mcp-gatekeeper: unknown prompt {ref.get('name')!r}")
            up = self.upstreams[route[0]]
            ref["name"] = route[1]
        else:
            up = self._owner_of_uri(str(ref.get("uri", "")))
        return self._finish(ctx, await self._forward(up, "completion/complete", {**raw, "ref": ref}, ctx))

    async def _set_level(self, ctx: ServerRequestContext[ProxyState], params: Any) -> Any:
        raw = self._raw_params(ctx)
        for up in self.upstreams.values():
            caps = up.client.server_capabilities if up.connected else None
            if caps is not None and caps.logging is not None:
                await self._forward(up, "logging/setLevel", raw, ctx)
        return self._finish(ctx, {})

    # ------------------------------------------------------------------ notifications and server→client requests

    async def _on_initialized(self, ctx: ServerRequestContext[ProxyState], params: Any) -> None:
        sessions = self.state.sessions
        sessions.append(ctx.session)
        del sessions[:-MAX_SESSIONS]
        if ctx.request is None and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            # stdio: this process serves exactly this one client from now on
            self.fast_session = FastSession(ctx.session, self._client_info(ctx))

    async def _on_roots_changed(self, ctx: ServerRequestContext[ProxyState], params: Any) -> None:
        for up in self.upstreams.values():
            with contextlib.suppress(Exception):
                await up.notify(types.RootsListChangedNotification())

    async def _on_upstream_notification(self, upstream: str, msg: Any) -> None:
        if isinstance(msg, types.ToolListChangedNotification):
            up = self.upstreams.get(upstream)
            if up is not None:
                with contextlib.suppress(UpstreamError, MCPError):
                    await self.refresh_tools(up)
        for session in list(self.state.sessions):
            try:
                await session.send_notification(msg)
            except Exception:
                log.debug("could not relay %s to a downstream session; dropping it", type(msg).__name__, exc_info=True)
                with contextlib.suppress(ValueError):
                    self.state.sessions.remove(session)

    def _downstream_for(self, upstream: str) -> tuple[ServerSession, ServerMessageMetadata | None] | None:
        inflight = self._inflight.get(upstream) or []
        if inflight:
            last = inflight[-1]
            return last.session, ServerMessageMetadata(related_request_id=last.request_id)
        sessions = list(self.state.sessions)
        if sessions:
            return sessions[-1], None
        return None

    async def _on_upstream_elicit(self, upstream: str, params: types.ElicitRequestParams) -> Any:
        target = self._downstream_for(upstream)
        if target is None:
            return types.ErrorData(code=types.INVALID_REQUEST, message="no downstream client can answer elicitation")
        session, meta = target
        if not session.check_client_capability(types.ClientCapabilities(elicitation=types.ElicitationCapability())):
            return types.ErrorData(
                code=types.INVALID_REQUEST, message="the downstream client does not support elicitation"
            )
        try:
            return await session.send_request(types.ElicitRequest(params=params), types.ElicitResult, metadata=meta)
        except MCPError as e:
            return types.ErrorData(code=e.code, message=e.message, data=e.data)

    async def _on_upstream_sample(self, upstream: str, params: types.CreateMessageRequestParams) -> Any:
        target = self._downstream_for(upstream)
        if target is None:
            return types.ErrorData(code=types.INVALID_REQUEST, message="no downstream client can sample")
        session, meta = target
        if not session.check_client_capability(types.ClientCapabilities(sampling=types.SamplingCapability())):
            return types.ErrorData(
                code=types.INVALID_REQUEST, message="the downstream client does not support sampling"
            )
        try:
            return await session.send_request(
                types.CreateMessageRequest(params=params), types.CreateMessageResult, metadata=meta
            )
        except MCPError as e:
            return types.ErrorData(code=e.code, message=e.message, data=e.data)

    async def _on_upstream_roots(self, upstream: str) -> Any:
        target = self._downstream_for(upstream)
        if target is None:
            return types.ErrorData(code=types.INVALID_REQUEST, message="no downstream client has roots")
        session, meta = target
        if not session.check_client_capability(types.ClientCapabilities(roots=types.RootsCapability())):
            return types.ErrorData(code=types.INVALID_REQUEST, message="the downstream client does not expose roots")
        try:
            return await session.send_request(types.ListRootsRequest(), types.ListRootsResult, metadata=meta)
        except MCPError as e:
            return types.ErrorData(code=e.code, message=e.message, data=e.data)
