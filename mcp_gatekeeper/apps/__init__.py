"""The decision card inside the chat (MCP Apps, the ``io.modelcontextprotocol/ui`` extension).

Only for a client that declared the extension (with the ``text/html;profile=mcp-app`` MIME type):

- ``resources/list`` shows ``ui://mcp-gatekeeper/decision`` (:mod:`.card`, one self-contained HTML view: inline
  script and style, no network), and every routed tool carries ``_meta.ui.resourceUri`` pointing at it;
- a held call's "pending" answer carries the card's data in ``structuredContent`` and, in the result's ``_meta``
  (which hosts hand to the view, not to the model), a per-call nonce (:mod:`.nonce`);
- the app-only tool ``gatekeeper_decide`` (``_meta.ui.visibility = ["app"]``) is what the card's buttons call
  (:mod:`.tool`). The host hides it from the model, and we do not rely on that: it refuses any call without the
  card's nonce, bound to the call id, the arguments digest and the principal, short-lived and spent once.

Whether a click in the chat decides is the rule's ``in_chat`` (``decide`` | ``show``). A decision goes through
:meth:`mcp_gatekeeper.gate.Gate.decide`, like the page's: the same schema and deny-rule checks on an edit.
Clients that did not declare the extension see none of this.
"""

from __future__ import annotations

from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID

DECIDE_TOOL = "gatekeeper_decide"
CARD_URI = "ui://mcp-gatekeeper/decision"
CARD_KEY = "mcpGatekeeper"
"""The key of the card's data in a pending answer's ``structuredContent``."""
NONCE_META_KEY = "mcp-gatekeeper/card"
"""The key in a pending answer's ``_meta`` that carries the nonce (the view reads it; the model is not shown it)."""

__all__ = ["APP_MIME_TYPE", "CARD_KEY", "CARD_URI", "DECIDE_TOOL", "EXTENSION_ID", "NONCE_META_KEY"]
