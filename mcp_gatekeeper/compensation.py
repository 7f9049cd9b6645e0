"""Audit gates: the call runs at once, a human reviews it later, and a failed review undoes it.

Before forwarding, an optional *capture* call records what the compensation will need (the previous
content of a file, say). After a failed review (or a review window that closes, if configured so), the
rule's *compensation* runs: a tool call on the same or another upstream, its arguments templated from the
original arguments, result and capture. Each attempt is a claim (:meth:`Sweeps.claim_compensation
<mcp_gatekeeper.store.sweeps.Sweeps.claim_compensation>`), so one process runs it (if that process dies
mid-attempt, another one runs it again); failures are retried with backoff, then recorded as
``rollback_failed`` and alerted. Nothing is ever silently skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from mcp import MCPError

from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.config import GatekeeperConfig, ToolCall
from mcp_gatekeeper.errors import StoreError, UpstreamError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import CallRecord, State
from mcp_gatekeeper.policy import render_arguments
from mcp_gatekeeper.upstream import Upstream

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 4
BACKOFF = (1.0, 5.0, 30.0)
DEFAULT_REVIEW_WINDOW = 3600.0


def result_view(result: Mapping[str, Any] | None) -> dict[str, Any]:
    """What templates see of a tool result: ``text``, ``structured``, ``is_error``, ``content``."""
    if not result:
        return {"text": "", "structured": None, "is_error": False, "content": []}
    content = result.get("content") or []
    text = "\n".join(c.get("text", "") for c in content if isinstance(c, Mapping) and c.get("type") == "text")
    return {
        "text": text,
        "structured": result.get("structuredContent"),
        "is_error": bool(result.get("isError")),
        "content": content,
    }


class Compensator:
    """Runs captures and compensations for the upstreams this process is connected to."""

    def __init__(
        self,
        *,
        gate: Gate,
        config: GatekeeperConfig,
        clock: Clock,
        upstreams: Callable[[], Mapping[str, Upstream]],
        poll_interval: float = 1.0,
    ) -> None:
        self.gate = gate
        self.config = config
        self.clock = clock
        self._upstreams = upstreams
        self._poll = poll_interval
        self._not_before: dict[str, float] = {}

    def _upstream_for(self, call: ToolCall, default: str) -> Upstream:
        name = call.upstream or default
        up = self._upstreams().get(name)
        if up is None:
            raise UpstreamError(f"no connected upstream named {name!r}")
        return up

    async def capture(self, rec_upstream: str, call: ToolCall, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Run the rule's capture call before forwarding; raises if it fails (the caller then holds instead)."""
        up = self._upstream_for(call, rec_upstream)
        args = render_arguments(call.arguments, {"args": arguments})
        result = await up.request("tools/call", {"name": call.tool, "arguments": args}, timeout=up.config.timeout)
        if result.get("isError"):
            raise UpstreamError(f"the capture call {call.tool} failed: {result_view(result)['text'][:200]}")
        return result

    async def run(self) -> None:
        """Forever: pick up failed reviews for our upstreams and run their compensation, whenever the gate rings
        :attr:`~mcp_gatekeeper.gate.Gate.reviewed` (a review failed here, or its sweep saw one due anywhere); a
        gate that does not sweep is polled instead."""
        while True:
            try:
                await self.run_due()
            except StoreError:
                log.warning("store unusable while looking for compensations; retrying", exc_info=True)
            with anyio.move_on_after(math.inf if self.gate.sweeping else self._poll):
                await self.gate.reviewed.wait()

    async def run_due(self) -> int:
        now = self.clock.monotonic()
        ran = 0
        for rec, attempts in await self.gate.store.sweeps.compensations_due(list(self._upstreams())):
            if self._not_before.get(rec.id, 0.0) > now:
                continue
            if not await self.gate.store.sweeps.claim_compensation(rec.id):
                continue  # another process claimed it
            ran += 1
            await self._attempt(rec, attempts + 1)
        return ran

    async def _attempt(self, rec: CallRecord, attempt: int) -> None:
        rule = self.gate.policy.rule_named(rec.rule)
        store = self.gate.store
        if rule is None or rule.compensate is None:
            await store.transition(
                rec.id, [State.ROLLING_BACK], State.ROLLBACK_FAILED, event="rollback_failed", channel="compensation",
                error="no compensation is configured for this call's rule (irreversible_ok); it cannot be undone",
            )  # fmt: skip
            await self._alert(rec)
            return
        context = {
            "args": rec.forward_arguments,
            "result": result_view(rec.result),
            "capture": result_view(await store.capture_of(rec.id)),
        }
        try:
            args = render_arguments(rule.compensate.arguments, context)
            up = self._upstream_for(rule.compensate, rec.upstream)
            result = await up.request(
                "tools/call", {"name": rule.compensate.tool, "arguments": args}, timeout=up.config.timeout
            )
            if result.get("isError"):
                raise UpstreamError(f"{rule.compensate.tool} returned an error: {result_view(result)['text'][:300]}")
        except (KeyError, UpstreamError, MCPError) as e:
            why = f"missing template field {e}" if isinstance(e, KeyError) else str(e)
            final = attempt >= MAX_ATTEMPTS or isinstance(e, KeyError)
            await store.transition(
                rec.id, [State.ROLLING_BACK], State.ROLLBACK_FAILED if final else State.REVIEW_FAILED,
                event="rollback_failed" if final else "rollback_retry", channel="compensation",
                error=f"compensation attempt {attempt} failed: {why}",
                detail={"attempt": attempt, "error": why[:500]},
            )  # fmt: skip
            if final:
                await self._alert(rec)
            else:
                self._not_before[rec.id] = self.clock.monotonic() + BACKOFF[min(attempt - 1, len(BACKOFF) - 1)]
            return
        await store.transition(
            rec.id, [State.ROLLING_BACK], State.ROLLED_BACK, event="rolled_back", channel="compensation",
            finished_at=self.clock.now(), detail={"attempt": attempt, "tool": rule.compensate.tool, "arguments": args},
        )  # fmt: skip
        self._not_before.pop(rec.id, None)
        await self._alert(rec, "rolled_back")

    async def _alert(self, rec: CallRecord, event: str = "rollback_failed") -> None:
        alert = getattr(self.gate.notifier, "alert", None)
        if alert is None:
            return
        try:
            await alert(event, await self.gate.store.get(rec.id))
        except Exception:  # alerts never block
            log.warning("rollback alert for %s failed", rec.id[:8], exc_info=True)
