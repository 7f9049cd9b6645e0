"""Carrying out a :class:`~mcp_gatekeeper.plan.Plan`: record, forward, record the outcome, shape the reply.

One executor for every transport, so the stdio fast lane and the SDK's full path answer alike by
construction. It owns the one normalisation of an upstream's result (checked against the client's protocol
version's ``CallToolResult``, as the SDK checks what a handler returns) and the one classification of how a
forwarded call ended:

=====================================  ==================  ==========================================
the upstream…                          the record says     the client gets
=====================================  ==================  ==========================================
returns a valid tool result            ``forwarded``       the result (``isError`` results included)
returns something that is not one      ``failed``          an ``isError`` result saying so
answers with a JSON-RPC error          ``failed``          the same JSON-RPC error
does not answer in time                ``outcome_unknown`` an ``isError`` result saying so
goes away mid-call                     ``outcome_unknown`` an ``isError`` result saying so
is still running when the caller       ``outcome_unknown`` (the cancellation goes on)
gives up (cancelled)
=====================================  ==================  ==========================================
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import mcp.types as types
from mcp import MCPError
from mcp_types.methods import serialize_server_result
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from mcp_gatekeeper.errors import StoreError, UpstreamError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.holding import text_result
from mcp_gatekeeper.models import CallRecord, State, canonical_json
from mcp_gatekeeper.plan import Plan
from mcp_gatekeeper.upstream import Upstream

log = logging.getLogger(__name__)

_PLAIN_KEYS = frozenset({"content", "isError", "structuredContent"})
_TEXT_KEYS = frozenset({"type", "text"})


@dataclass
class Caller:
    """Who is waiting for a forwarded call: where the upstream's elicitation/sampling for it goes, its
    progress callback (None when the client asked for no progress) and the protocol version it speaks."""

    session: Any
    request_id: Any
    progress: Any = None
    protocol: str | None = None


def _plain(result: Mapping[str, Any]) -> bool:
    """A result already in the form the SDK would give it: text blocks, a bool ``isError``, an object."""
    if not result.keys() <= _PLAIN_KEYS:
        return False
    content = result.get("content")
    if not isinstance(content, list):
        return False
    for block in content:
        if not isinstance(block, dict) or block.keys() != _TEXT_KEYS or block["type"] != "text":
            return False
        if not isinstance(block["text"], str):
            return False
    if "isError" in result and not isinstance(result["isError"], bool):
        return False
    return "structuredContent" not in result or isinstance(result["structuredContent"], dict)


def normalise(result: Any, protocol: str | None) -> dict[str, Any] | str:
    """The upstream's result as the client may receive it, or why it cannot be one (a short reason)."""
    if not isinstance(result, dict):
        return "the upstream's reply has no result object"
    if protocol not in MODERN_PROTOCOL_VERSIONS and _plain(result):
        return result
    version = protocol or types.LATEST_PROTOCOL_VERSION
    if version in MODERN_PROTOCOL_VERSIONS and "resultType" not in result:
        result = {**result, "resultType": "complete"}
    try:
        return serialize_server_result("tools/call", version, result)
    except ValidationError as e:
        where = sorted({".".join(map(str, err["loc"])) or "(root)" for err in e.errors()})[:5]
        return f"the upstream's reply is not a valid tool result (problems at: {', '.join(where)})"
    except (ValueError, KeyError) as e:  # an unknown protocol version: nothing to check it against
        return f"the upstream's reply cannot be checked ({e})"


def unrecorded(e: StoreError) -> dict[str, Any]:
    return text_result(
        f"mcp-gatekeeper could not record this call, so it was not run (fail closed): {e}", is_error=True
    )


_VIA = {"web": "on the approval page", "api": "through the page's API", "cli": "from the command line",
        "in-client": "in the client", "in-chat": "in the chat's decision card"}  # fmt: skip


def rejected_by(rec: CallRecord) -> str:
    """``rejected by alice (a human reviewer, on the approval page)``: the reviewer named once, readably."""
    via = _VIA.get(rec.channel or "")
    # in the client the reviewer is recorded by the client's name, which must not read as if the agent decided
    who = (
        None if rec.channel in ("in-client", "in-chat") else (rec.decided_by or "").partition(":")[2] or rec.decided_by
    )
    if who:
        return f"rejected by {who} (a human reviewer{', ' + via if via else ''})"
    return f"rejected by a human reviewer{' (' + via + ')' if via else ''}"


def refused_result(rec: CallRecord, reason: str, *, verb: str | None = None) -> dict[str, Any]:
    verb = verb or {
        State.DENIED: "denied by policy",
        State.REJECTED: rejected_by(rec),
        State.EXPIRED: "not approved in time",
        State.CANCELLED: "cancelled",
        State.ORPHANED: "abandoned",
    }.get(rec.state, str(rec.state))
    text = f"mcp-gatekeeper: this call to {rec.tool} was {verb} and did not run. Reason: {reason} (call {rec.id[:12]})"
    return text_result(text, is_error=True, structured=None)


def already_ran(rec: CallRecord) -> dict[str, Any]:
    """An identical retry of a call that was approved earlier: the stored outcome, never a second run."""
    if rec.state == State.FORWARDED and rec.result is not None:
        return dict(rec.result)
    if rec.state == State.FORWARDING:
        return text_result(
            f"mcp-gatekeeper: call {rec.id[:12]} was approved and is running right now; retry the identical"
            " call in a moment for its result (it will not run twice)",
            is_error=True,
        )
    return text_result(
        f"mcp-gatekeeper: call {rec.id[:12]} was approved and sent to the upstream, which {rec.state.value}"
        f" ({rec.error or 'no detail'}). It is not run again.",
        is_error=True,
    )


class Executor:
    """Records and forwards calls, and records how they ended."""

    def __init__(self, *, gate: Gate) -> None:
        self.gate = gate
        self.inflight: dict[str, list[Caller]] = {}
        """Per upstream, the callers whose calls it is running (its elicitation/sampling goes to the last)."""

    async def execute(self, plan: Plan, caller: Caller) -> dict[str, Any]:
        """Carry out a plan that needs no human and no review: ``deny``, ``refuse_invalid``, ``allow``, ``lease``."""
        new = plan.new
        assert new is not None, plan.kind
        assert plan.kind in ("deny", "refuse_invalid", "allow", "lease"), plan.kind
        try:
            if plan.kind in ("deny", "refuse_invalid"):
                rec = await self.gate.record(new, State.DENIED, reason=plan.reason)
                verb = "refused by the schema check" if plan.kind == "refuse_invalid" else None
                return refused_result(rec, plan.reason or "denied by policy", verb=verb)
            rec = await self.gate.record(new, State.ALLOWED, reason=plan.reason if plan.kind == "lease" else None)
        except StoreError as e:
            log.error("store error; failing closed: %s", e)
            return unrecorded(e)
        assert plan.upstream is not None
        assert plan.raw is not None
        return await self.forward(caller, plan.upstream, rec, plan.raw)

    async def forward(
        self,
        caller: Caller,
        upstream: Upstream,
        rec: CallRecord,
        raw: dict[str, Any],
        arguments: dict[str, Any] | None = None,
        *,
        modified: bool = False,
    ) -> dict[str, Any]:
        """Forward the call (``raw``, with ``arguments`` when given: an approved call's) and record how it ended,
        before replying."""
        fwd = raw if arguments is None else {**raw, "arguments": arguments}
        self.inflight.setdefault(upstream.name, []).append(caller)
        try:
            result: Any = await upstream.request(
                "tools/call", fwd, progress=caller.progress, timeout=upstream.config.timeout
            )
        except MCPError as e:
            if e.code == types.REQUEST_TIMEOUT:
                await self.gate.finish(
                    rec, result=None, error=f"timed out after {upstream.config.timeout:g} s", unknown=True
                )
                return text_result(
                    f"mcp-gatekeeper: the upstream did not answer within {upstream.config.timeout:g} s; whether the call"
                    f" took effect is unknown (call {rec.id[:12]}). It is not retried automatically.",
                    is_error=True,
                )
            await self.gate.finish(rec, result=None, error=f"upstream error {e.code}: {e.message}")
            raise
        except ValidationError:  # the SDK's transport checks for a result object (the raw lane raises MCPError)
            why = "the upstream's reply has no result object"
            await self.gate.finish(rec, result=None, error=f"upstream error {types.INTERNAL_ERROR}: {why}")
            raise MCPError(code=types.INTERNAL_ERROR, message=why) from None
        except UpstreamError as e:
            await self.gate.finish(rec, result=None, error=str(e), unknown=True)
            return text_result(
                f"mcp-gatekeeper: {e}. Whether the call took effect is unknown (call {rec.id[:12]}); it is not retried"
                " automatically.",
                is_error=True,
            )
        except anyio.get_cancelled_exc_class():
            await self.gate.finish(rec, result=None, error="cancelled while the upstream was running it", unknown=True)
            raise
        except BaseException as e:  # a fault of ours while the upstream may have been running it
            await self.gate.finish(rec, result=None, error=f"internal error ({type(e).__name__})", unknown=True)
            raise
        finally:
            with contextlib.suppress(ValueError):
                self.inflight[upstream.name].remove(caller)
        shaped = normalise(result, caller.protocol)
        if isinstance(shaped, str):
            await self.gate.finish(rec, result=None, error=shaped)
            return text_result(
                f"mcp-gatekeeper: {shaped}; the call is recorded as failed (call {rec.id[:12]}). It may have taken"
                " effect upstream; it is not retried automatically.",
                is_error=True,
            )
        await self.gate.finish(rec, result=shaped, error=None)
        if modified:
            note = (
                "Note from mcp-gatekeeper: a human reviewer changed the arguments before approving. The call ran with: "
                + canonical_json(fwd.get("arguments"))
            )
            shaped = {**shaped, "content": [*(shaped.get("content") or []), {"type": "text", "text": note}]}
        return shaped
