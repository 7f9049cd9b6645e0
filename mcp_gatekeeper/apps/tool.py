"""What the proxy does for a client that renders MCP Apps: the card resource, tool tags, the card's data on a
held call's answer, and the app-only ``gatekeeper_decide`` tool the card's buttons call.

The decide tool refuses unless the call carries the nonce the card got (see :mod:`.nonce`); every refusal is in
the audit chain (event ``app_decide_refused``). An accepted click is one :meth:`Gate.decide`, channel
``in-chat``: an edit is checked against the tool's schema and the deny rules exactly as the page's modify is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mcp.server import ServerRequestContext
from mcp.server.apps import client_supports_apps

from mcp_gatekeeper import hostos
from mcp_gatekeeper.apps import APP_MIME_TYPE, CARD_KEY, CARD_URI, DECIDE_TOOL, NONCE_META_KEY
from mcp_gatekeeper.apps.card import card_data, card_html
from mcp_gatekeeper.apps.nonce import NonceRefused, Nonces
from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.config import GatekeeperConfig
from mcp_gatekeeper.errors import AlreadyDecidedError, CallNotFoundError, InvalidModificationError, StoreError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.holding import text_result
from mcp_gatekeeper.models import CallRecord, Decision, State, digest

log = logging.getLogger(__name__)

MAX_REASON = 500
RESOURCE_UI_META: dict[str, Any] = {"csp": {"connectDomains": [], "resourceDomains": []}, "prefersBorder": True}
"""The card needs no network at all: no connect, script, style, font or image origin."""


def wants_apps(ctx: ServerRequestContext[Any]) -> bool:
    """Did this request's client declare MCP Apps (with the ``text/html;profile=mcp-app`` MIME type)?"""
    return client_supports_apps(ctx)


def has_own_ui(tool: Mapping[str, Any]) -> bool:
    meta = tool.get("_meta")
    if not isinstance(meta, Mapping):
        return False
    ui = meta.get("ui")
    return bool(isinstance(ui, Mapping) and ui.get("resourceUri")) or bool(meta.get("ui/resourceUri"))


class Apps:
    def __init__(self, *, gate: Gate, config: GatekeeperConfig, clock: Clock) -> None:
        self.gate = gate
        self.config = config
        self.clock = clock
        self.nonces = Nonces(gate.store, clock)
        self._html = card_html()

    # ------------------------------------------------------------------ what the client lists and reads

    @staticmethod
    def tag(tool: dict[str, Any]) -> dict[str, Any]:
        """A routed tool, pointed at the card (a tool with its own MCP App keeps it)."""
        if has_own_ui(tool):
            return tool
        meta = dict(tool.get("_meta") or {})
        meta["ui"] = {**dict(meta.get("ui") or {}), "resourceUri": CARD_URI}
        return {**tool, "_meta": meta}

    @staticmethod
    def tool_def() -> dict[str, Any]:
        return {
            "name": DECIDE_TOOL,
            "title": "Decide a held call (the decision card's buttons)",
            "description": (
                "Used only by mcp-gatekeeper's decision card in the chat, when a human clicks Approve or Reject."
                " It needs the card's one-time nonce; any other call is refused and audited."
            ),
            "inputSchema": {
                "type": "object",
                "properties": {
                    "call_id": {"type": "string"},
                    "nonce": {"type": "string"},
                    "args_digest": {"type": "string"},
                    "decision": {"type": "string", "enum": ["approve", "reject"]},
                    "arguments": {"type": "object"},
                    "reason": {"type": "string", "maxLength": MAX_REASON},
                },
                "required": ["call_id", "nonce", "args_digest", "decision"],
            },
            "annotations": {"readOnlyHint": False, "destructiveHint": False, "openWorldHint": False},
            "_meta": {"ui": {"resourceUri": CARD_URI, "visibility": ["app"]}},
        }

    @staticmethod
    def resource_entry() -> dict[str, Any]:
        return {
            "uri": CARD_URI,
            "name": "mcp-gatekeeper decision card",
            "description": "Approve, edit or reject a tool call mcp-gatekeeper holds for a human.",
            "mimeType": APP_MIME_TYPE,
            "_meta": {"ui": RESOURCE_UI_META},
        }

    def read(self) -> dict[str, Any]:
        return {
            "contents": [
                {"uri": CARD_URI, "mimeType": APP_MIME_TYPE, "text": self._html, "_meta": {"ui": RESOURCE_UI_META}}
            ]
        }

    # ------------------------------------------------------------------ the card's data on a held call's answer

    async def card_result(
        self, result: dict[str, Any], rec: CallRecord, *, in_chat: str, principal: str | None
    ) -> dict[str, Any]:
        """``result`` (a "pending" answer) with the card's data; a nonce only when a click here may decide."""
        # a critical call is never decided with one click in a chat (the page asks for the tool's name typed)
        can_decide = in_chat == "decide" and rec.state == State.PENDING and rec.risk != "critical"
        data = card_data(
            rec, now=self.clock.now(), can_decide=can_decide, page_url=self.config.card_url(rec.id),
            cli=f"{hostos.self_command()} approve {rec.id[:8]}",
        )  # fmt: skip
        out = {**result, "structuredContent": {**dict(result.get("structuredContent") or {}), CARD_KEY: data}}
        if can_decide:
            nonce = await self.nonces.mint(rec, principal=principal)
            out["_meta"] = {**dict(result.get("_meta") or {}), NONCE_META_KEY: {"nonce": nonce}}
        return out

    # ------------------------------------------------------------------ gatekeeper_decide

    async def decide(self, arguments: Mapping[str, Any], client: Mapping[str, Any]) -> dict[str, Any]:
        principal = client.get("principal")
        actor = f"chat:{principal or 'unknown'}"
        call_id = arguments.get("call_id")
        decision = arguments.get("decision")
        reason = arguments.get("reason")
        edited = arguments.get("arguments")
        if not isinstance(call_id, str) or not call_id or len(call_id) > 64:
            return await self._refuse(None, actor, NonceRefused("call_id must be the held call's id", "bad_call"))
        try:
            rec = await self.gate.store.get(call_id)
        except CallNotFoundError:
            return await self._refuse(None, actor, NonceRefused("no such held call", "unknown_call"), given=call_id)
        checked = await self.nonces.check(
            arguments.get("nonce"), call_id=rec.id, args_digest=arguments.get("args_digest"), principal=principal
        )
        if isinstance(checked, NonceRefused):
            return await self._refuse(rec.id, actor, checked)
        if decision not in ("approve", "reject"):
            return _error("decision must be 'approve' or 'reject'", spent=False)
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            return _error(f"reason must be text of at most {MAX_REASON} characters", spent=False)
        if edited is not None:
            if decision != "approve" or not isinstance(edited, dict):
                return _error("edited arguments must be a JSON object, and only come with an approval", spent=False)
            if digest(edited) != rec.args_digest:
                try:  # the same check the page's modify goes through (gate.decide runs it again)
                    self.gate.check_modification(rec, edited)
                except InvalidModificationError as e:
                    return _error(f"the edit was not accepted: {e}", spent=False)
        spent = await self.nonces.spend(checked)
        if spent is not None:
            return await self._refuse(rec.id, actor, spent)
        try:
            done = await self.gate.decide(
                rec.id,
                Decision(
                    approve=decision == "approve", decided_by=actor, channel="in-chat",
                    reason=reason.strip() if isinstance(reason, str) and reason.strip() else None,
                    arguments=edited if decision == "approve" and edited is not None else None,
                    args_digest=rec.args_digest,
                ),
            )  # fmt: skip
        except (AlreadyDecidedError, InvalidModificationError, StoreError) as e:
            return _error(f"not decided: {e}", spent=True)
        if done.state == State.APPROVED:
            edited_words = " with your edited arguments" if done.modified_arguments is not None else ""
            text = f"Approved{edited_words}. The agent's retry of the identical call runs it once."
        else:
            text = "Rejected. The agent's retry of the call is told so, with your reason."
        return text_result(text, is_error=False, structured={"call_id": done.id, "state": done.state.value})

    async def _refuse(
        self, call_id: str | None, actor: str, why: NonceRefused, *, given: str | None = None
    ) -> dict[str, Any]:
        detail: dict[str, Any] = {"code": why.code, "why": why.why}
        if given is not None:
            detail["given_call_id"] = given[:64]
        try:
            await self.gate.store.audit_app_refusal(call_id, actor=actor, detail=detail)
        except StoreError:
            log.error("could not audit a refused %s call (%s)", DECIDE_TOOL, why.code)
        log.warning("refused %s from %s: %s", DECIDE_TOOL, actor, why.why)
        return text_result(
            f"mcp-gatekeeper refused {DECIDE_TOOL}: {why.why}. Only a human clicking the decision card in the chat"
            " can decide here; nothing was decided.",
            is_error=True,
            structured={"refused": why.code, "nonce_spent": False},
        )


def _error(text: str, *, spent: bool) -> dict[str, Any]:
    return text_result(f"mcp-gatekeeper: {text}", is_error=True, structured={"nonce_spent": spent})
