"""How one request waits for a held call: heartbeats, asking in the client, or "pending, retry".

The strategy comes from :func:`mcp_gatekeeper.waiting.plan_wait`. Whatever the strategy, the decision
and the result are the same record: an identical retry, a ``gatekeeper_status`` call and a 2026
``requestState`` round all attach to it, and an approved call runs at most once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import anyio
import mcp.types as types
from mcp import MCPError
from mcp.server import ServerRequestContext
from mcp.server.apps import client_supports_apps
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_gatekeeper import hostos
from mcp_gatekeeper.config import GatekeeperConfig
from mcp_gatekeeper.errors import AlreadyDecidedError, InvalidModificationError, StoreError
from mcp_gatekeeper.gate import Gate, Tick, outcome_of
from mcp_gatekeeper.models import CallRecord, Decision, NewCall, Outcome, State, canonical_json, digest
from mcp_gatekeeper.policy import Verdict
from mcp_gatekeeper.sealing import SealError, seal, unseal
from mcp_gatekeeper.waiting import ClientFacts, WaitPlan, plan_wait

log = logging.getLogger(__name__)

APPROVAL_KEY = "approval"
"""The key of our request inside an ``InputRequiredResult``'s ``inputRequests``."""
STATE_TTL = 600.0
"""A sealed requestState is good for at most this long (and never past the call's deadline)."""
MAX_FORM_FIELDS = 8


@dataclass(frozen=True, slots=True)
class Reply:
    """A ready answer for the client that is not a decision outcome (pending, input required, refused state)."""

    result: Any
    call: CallRecord | None = None
    """The held call this answer is about, when the answer is "pending" (the MCP Apps card is built from it)."""


def has_progress_token(ctx: ServerRequestContext[Any]) -> bool:
    """Did the client ask for progress on this request (the raw ``_meta.progressToken``)?"""
    raw_meta = (ctx.params or {}).get("_meta") or {}
    return isinstance(raw_meta, Mapping) and "progressToken" in raw_meta


def client_identity(ctx: ServerRequestContext[Any]) -> tuple[str | None, str | None]:
    """``clientInfo`` name and version: from the handshake, or (2026-07-28) from the request's ``_meta``."""
    params = ctx.session.client_params
    if params is not None and params.client_info is not None:
        return params.client_info.name, params.client_info.version
    raw_meta = (ctx.params or {}).get("_meta") or {}
    ci = raw_meta.get(types.CLIENT_INFO_META_KEY) if isinstance(raw_meta, Mapping) else None
    if isinstance(ci, Mapping):
        return str(ci.get("name") or "") or None, str(ci.get("version") or "") or None
    return None, None


def client_facts(ctx: ServerRequestContext[Any]) -> ClientFacts:
    modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
    caps = ctx.session.client_capabilities
    elicitation = caps.elicitation if caps is not None else None
    form = elicitation is not None and (elicitation.form is not None or elicitation.url is None)
    url = elicitation is not None and elicitation.url is not None
    can_push = not modern and ctx.session.can_send_request
    return ClientFacts(
        name=client_identity(ctx)[0], modern=modern, progress_token=has_progress_token(ctx),
        elicit_form=form, elicit_url=url, can_push=can_push, apps=client_supports_apps(ctx),
    )  # fmt: skip


def pendingtext_result(rec: CallRecord, now: float) -> str:
    left = max(0, int((rec.deadline_at or now) - now))
    left_text = f"{left // 60} min {left % 60} s" if left >= 60 else f"{left} s"
    return (
        f"mcp-gatekeeper: this call to {rec.tool} is waiting for a human to approve it (call {rec.id[:12]},"
        f" {left_text} left before it is rejected by default). Nothing has run yet. To get the result once it is"
        f" approved, retry the identical call later (same tool, same arguments), or call gatekeeper_status with"
        f' id "{rec.id[:12]}". Do not change the arguments: a different call needs its own approval.'
    )


class Holding:
    """The per-request side of holding a call. One per proxy; stateless between requests."""

    def __init__(
        self,
        *,
        gate: Gate,
        config: GatekeeperConfig,
        key: bytes,
        card_url: Callable[[str], str | None],
    ) -> None:
        self.gate = gate
        self.config = config
        self.key = key
        self.card_url = card_url

    @property
    def clock(self) -> Any:
        return self.gate.clock

    async def run(
        self,
        ctx: ServerRequestContext[Any],
        new: NewCall,
        verdict: Verdict,
        *,
        request_state: Any,
        input_responses: Any,
        session: str | None = None,
    ) -> Outcome | Reply:
        """Hold ``new`` (or attach to the identical held call of the same principal) and wait as the client can.

        ``session`` is recorded with the call (``new.client``) and no longer narrows attaching: a call belongs to
        its principal, not to a session or a process.
        """
        facts = client_facts(ctx)
        plan = plan_wait(facts, verdict.in_client, self.config.waiting, in_chat=verdict.in_chat)
        store = self.gate.store
        attached = False
        if request_state is not None:
            rec_or_reply = await self._resume(ctx, new, verdict, request_state, input_responses, facts)
            if isinstance(rec_or_reply, Reply):
                return rec_or_reply
            rec = rec_or_reply
            plan = replace(plan, strategy="pending" if plan.budget is not None else "hold")
        else:
            # attaches only to a call of the same principal (client identity), from whichever process
            prior = await store.find_retry(
                new.upstream, new.tool, new.args_digest, now=self.clock.now(),
                grace=self.config.waiting.retry_grace, principal=new.client.get("principal"),
            )  # fmt: skip
            if prior is not None:
                rec = prior
                attached = True
                if plan.strategy in ("elicit", "input_required"):
                    plan = replace(plan, strategy="pending" if plan.budget is not None else "hold")
            else:
                rec = await self.gate.start_hold(
                    replace(new, wait_strategy=plan.strategy), timeout=verdict.timeout or 600.0
                )
            if plan.strategy == "input_required" and rec.state == State.PENDING:
                return await self._input_required(rec, verdict, plan)
        if rec.state != State.PENDING:
            return outcome_of(rec)
        return await self._wait(ctx, rec, verdict, plan, facts, attached=attached)

    # ------------------------------------------------------------------ waiting on this request

    async def _wait(
        self,
        ctx: ServerRequestContext[Any],
        rec: CallRecord,
        verdict: Verdict,
        plan: WaitPlan,
        facts: ClientFacts,
        *,
        attached: bool = False,
    ) -> Outcome | Reply:
        tick = self._ticker(ctx, rec.tool) if plan.heartbeats else None
        # a 2026 client on HTTP closes its stream to stop waiting: that ends this wait, not the call; so does a
        # retry that went away (the client was already told the call waits for it: it stays decidable)
        keep_record = attached or (facts.modern and ctx.request is not None)
        result: dict[str, Outcome | None] = {}
        try:
            async with anyio.create_task_group() as tg:

                async def waiter() -> None:
                    result["outcome"] = await self.gate.wait(
                        rec, budget=plan.budget, on_tick=tick, cancel_on_abort=not keep_record
                    )
                    tg.cancel_scope.cancel()

                tg.start_soon(waiter)
                if plan.strategy == "elicit":
                    tg.start_soon(self._elicit, ctx, rec, verdict, plan)
        except BaseException:
            if keep_record and not attached:
                with anyio.CancelScope(shield=True), contextlib.suppress(StoreError):
                    await self.gate.store.mark_retry_offered(rec.id, strategy="disconnected")
            raise
        outcome = result.get("outcome")
        if outcome is None:
            await self.gate.store.mark_retry_offered(rec.id, strategy=plan.strategy)
            return Reply(text_result(pendingtext_result(rec, self.clock.now()), is_error=True), call=rec)
        return outcome

    def _ticker(self, ctx: ServerRequestContext[Any], tool: str) -> Tick:
        count = 0

        async def tick(rec: CallRecord, left: float) -> None:
            nonlocal count
            count += 1
            minutes = int(left // 60)
            left_text = f"{minutes} min {int(left % 60)} s" if minutes else f"{int(left)} s"
            await ctx.session.report_progress(
                float(count), None, f"waiting for human approval of {tool} (call {rec.id[:8]}), {left_text} left"
            )

        return tick

    # ------------------------------------------------------------------ asking in the client (handshake era)

    async def _elicit(self, ctx: ServerRequestContext[Any], rec: CallRecord, verdict: Verdict, plan: WaitPlan) -> None:
        """Ask in the client; with ``in_client = "decide"`` the answer is the decision of record."""
        try:
            if plan.elicit_mode == "url":
                url = self.card_url(rec.id)
                if url is None:
                    return
                await ctx.session.elicit_url(
                    _headline(rec)
                    + f" Decide on the approval page (or run: {hostos.self_command()} approve {rec.id[:8]}).",
                    url,
                    f"gatekeeper-{rec.id}",
                    related_request_id=ctx.request_id,
                )
                return  # notify only: the page or the CLI decides
            message, schema = approval_form(rec)
            answer = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
        except (MCPError, anyio.BrokenResourceError, anyio.ClosedResourceError) as e:
            log.info("in-client approval request for %s failed: %s", rec.id[:8], e)
            return
        await self._apply_answer(rec, answer, client=client_identity(ctx)[0])

    async def _apply_answer(self, rec: CallRecord, answer: types.ElicitResult, *, client: str | None) -> None:
        who = f"client:{client or 'unknown'}"
        content = dict(answer.content or {})
        try:
            if answer.action == "accept" and content.get("decision") == "approve":
                edited = {**rec.arguments, **{k: v for k, v in content.items() if k in rec.arguments}}
                await self.gate.decide(
                    rec.id,
                    Decision(
                        approve=True, decided_by=who, channel="in-client", reason=_str(content.get("reason")),
                        arguments=edited if digest(edited) != rec.args_digest else None, args_digest=rec.args_digest,
                    ),
                )  # fmt: skip
            else:
                reason = _str(content.get("reason")) or f"{answer.action} in the client"
                await self.gate.decide(
                    rec.id, Decision(approve=False, decided_by=who, channel="in-client", reason=reason)
                )
        except (AlreadyDecidedError, InvalidModificationError) as e:
            log.info("in-client answer for %s not applied: %s", rec.id[:8], e)
        except StoreError as e:  # team mode: the gatekeeper's database role may not decide; the call stays held
            log.warning("in-client answer for %s not recorded (%s); it waits for the approval side", rec.id[:8], e)

    # ------------------------------------------------------------------ 2026-07-28: InputRequiredResult rounds

    async def _input_required(self, rec: CallRecord, verdict: Verdict, plan: WaitPlan) -> Reply:
        expires = min((rec.deadline_at or self.clock.now()), self.clock.now() + STATE_TTL)
        token = seal(self.key, call_id=rec.id, args_digest=rec.args_digest, expires_at=expires)
        if plan.elicit_mode == "url" and (url := self.card_url(rec.id)):
            request: types.ElicitRequestParams = types.ElicitRequestURLParams(
                message=_headline(rec) + " Approve or reject it on the approval page, then continue.",
                url=url,
                elicitation_id=f"gatekeeper-{rec.id}",
            )
        else:
            message, schema = approval_form(rec)
            request = types.ElicitRequestFormParams(message=message, requested_schema=schema)
        await self.gate.store.mark_retry_offered(rec.id, strategy="input_required")
        return Reply(
            types.InputRequiredResult(
                input_requests={APPROVAL_KEY: types.ElicitRequest(params=request)}, request_state=token
            )
        )

    async def _resume(
        self,
        ctx: ServerRequestContext[Any],
        new: NewCall,
        verdict: Verdict,
        request_state: Any,
        input_responses: Any,
        facts: ClientFacts,
    ) -> CallRecord | Reply:
        """A client retried with our requestState: check it, spend it, and apply an in-client answer if allowed."""
        try:
            if not isinstance(request_state, str):
                raise SealError("requestState must be a string")
            state = unseal(self.key, request_state, now=self.clock.now(), args_digest=new.args_digest)
        except SealError as e:
            log.warning("refused a requestState: %s", e)
            return Reply(text_result(f"mcp-gatekeeper refused this retry: {e}. Nothing ran.", is_error=True))
        # checked before the state is spent: another client must not be able to burn this client's retry
        owner = await self.gate.store.principal_of(state.call_id)
        if owner is None or owner != new.client.get("principal"):
            log.warning("refused a requestState for call %s from another principal", state.call_id[:8])
            return Reply(
                text_result(
                    "mcp-gatekeeper refused this retry: its requestState belongs to another client. Nothing ran.",
                    is_error=True,
                )
            )
        if not await self.gate.store.consume_state(state.nonce, state.call_id):
            return Reply(
                text_result(
                    "mcp-gatekeeper refused this retry: its requestState was already used. Nothing ran.", is_error=True
                )
            )
        rec = await self.gate.store.get(state.call_id)
        if (rec.upstream, rec.tool) != (new.upstream, new.tool):
            return Reply(
                text_result(
                    "mcp-gatekeeper refused this retry: its requestState belongs to another tool. Nothing ran.",
                    is_error=True,
                )
            )
        answer = (input_responses or {}).get(APPROVAL_KEY) if isinstance(input_responses, Mapping) else None
        if answer is not None and verdict.in_client == "decide" and rec.state == State.PENDING:
            try:
                parsed = types.ElicitResult.model_validate(answer)
            except ValueError:
                parsed = None
            if parsed is not None:
                await self._apply_answer(rec, parsed, client=facts.name)
                rec = await self.gate.store.get(rec.id)
        return rec


def approval_form(rec: CallRecord) -> tuple[str, dict[str, Any]]:
    """A flat elicitation form: approve/reject, a reason, and the simple arguments as editable fields."""
    props: dict[str, Any] = {
        "decision": {"type": "string", "title": "Decision", "enum": ["approve", "reject"], "default": "reject"},
        "reason": {"type": "string", "title": "Reason (the agent reads it)"},
    }
    schema_props = (rec.input_schema or {}).get("properties") or {}
    for name, value in list(rec.arguments.items())[:MAX_FORM_FIELDS]:
        if name in props:
            continue
        spec = schema_props.get(name) if isinstance(schema_props, Mapping) else None
        kind = {str: "string", bool: "boolean", int: "integer", float: "number"}.get(type(value))
        if kind is None:
            continue
        field: dict[str, Any] = {"type": kind, "title": name, "default": value}
        if isinstance(spec, Mapping) and isinstance(spec.get("description"), str):
            field["description"] = spec["description"]
        props[name] = field
    message = _headline(rec) + "\nArguments: " + canonical_json(rec.arguments)[:1500]
    if rec.effects.get("approve"):
        message += f"\nIf approved: {rec.effects['approve']}"
    if rec.effects.get("reject"):
        message += f"\nIf rejected: {rec.effects['reject']}"
    return message, {"type": "object", "properties": props, "required": ["decision"]}


def _headline(rec: CallRecord) -> str:
    what = rec.summary or f"{rec.upstream}/{rec.tool}"
    return f"Approve {what}? (risk {rec.risk}, call {rec.id[:8]})"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def text_result(text: str, *, is_error: bool, structured: dict[str, Any] | None = None) -> dict[str, Any]:
    """A tool result made of one text block (what the gatekeeper itself answers)."""
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": is_error}
    if structured is not None:
        result["structuredContent"] = structured
    return result
