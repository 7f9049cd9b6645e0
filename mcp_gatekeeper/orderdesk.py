"""Order desk: the sample upstream MCP server used by the mcp-gatekeeper demo.

A small, self-contained stdio MCP server for a pretend shop's order desk. It has two
read-only tools and three risky ones, so a gatekeeper in front of it has something to gate:

* ``lookup_order`` and ``list_orders`` only read.
* ``issue_refund`` moves (pretend) money.
* ``delete_record`` removes an order for good.
* ``send_email`` sends a message to the outside world.

Everything lives in one small JSON state file. The server creates it with seed data if it
is missing, re-reads it on every call (so you can inspect or edit it while the server runs)
and replaces it atomically on every change.

Run it::

    python -m mcp_gatekeeper.orderdesk [--state FILE] [--call-log FILE] [--reset]

``ORDERDESK_STATE`` and ``ORDERDESK_CALL_LOG`` are used when the flags are absent. With
neither, the state file is ``$XDG_STATE_HOME/mcp-gatekeeper/orderdesk.json`` (by default
``~/.local/state/...``). With a call log configured, every ``tools/call`` the server
receives is appended to it as one JSON line, and flushed, *before* the tool runs; tests
use it to count exactly what reached the upstream.

stdout carries the protocol, so this module logs to stderr only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import anyio
import mcp.types as types
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

__all__ = ["SEED_ORDERS", "TOOLS", "OrderDesk", "build_server", "default_state_path", "main"]

logger = logging.getLogger("mcp_gatekeeper.orderdesk")

SERVER_NAME: Final = "orderdesk"
SERVER_VERSION: Final = "0.1.0"
STATE_VERSION: Final = 1

ORDER_STATUSES: Final = ("pending", "processing", "shipped", "delivered", "cancelled", "refunded")

_EMAIL_RE: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CURRENCY_RE: Final = re.compile(r"^[A-Z]{3}$")
_MAX_SUBJECT: Final = 200
_MAX_BODY: Final = 20_000
_MAX_REASON: Final = 500


# --------------------------------------------------------------------------------------------
# Seed data
# --------------------------------------------------------------------------------------------


def _item(sku: str, name: str, qty: int, unit_price: float) -> dict[str, Any]:
    return {"sku": sku, "name": name, "qty": qty, "unit_price": unit_price}


SEED_ORDERS: Final[tuple[dict[str, Any], ...]] = (
    {
        "id": "8821",
        "customer": {"name": "Dana Whitfield", "email": "dana.whitfield@example.com"},
        "amount": 129.99,
        "currency": "USD",
        "status": "shipped",
        "items": [_item("KB-104", "Mechanical keyboard", 1, 129.99)],
    },
    {
        "id": "8822",
        "customer": {"name": "Marco Rossi", "email": "marco.rossi@example.org"},
        "amount": 54.5,
        "currency": "USD",
        "status": "processing",
        "items": [_item("MG-220", "Ceramic mug", 2, 12.25), _item("CF-500", "Coffee beans 500 g", 2, 15.0)],
    },
    {
        "id": "8823",
        "customer": {"name": "Aiko Tanaka", "email": "aiko.tanaka@example.net"},
        "amount": 310.0,
        "currency": "USD",
        "status": "delivered",
        "items": [_item("CH-900", "Office chair", 1, 310.0)],
    },
    {
        "id": "8824",
        "customer": {"name": "Lena Fischer", "email": "lena.fischer@example.de"},
        "amount": 89.9,
        "currency": "EUR",
        "status": "delivered",
        "items": [_item("LM-310", "Desk lamp", 1, 59.9), _item("BL-020", "LED bulb (3-pack)", 2, 15.0)],
    },
    {
        "id": "8825",
        "customer": {"name": "Sam O'Connor", "email": "sam.oconnor@example.com"},
        "amount": 899.0,
        "currency": "USD",
        "status": "pending",
        "items": [_item("MN-270", "27-inch monitor", 2, 449.5)],
    },
)


def seed_state() -> dict[str, Any]:
    """A fresh state document with the seed orders and nothing else."""
    return {
        "version": STATE_VERSION,
        "orders": {order["id"]: json.loads(json.dumps(order)) for order in SEED_ORDERS},
        "refunds": [],
        "outbox": [],
        "deleted": [],
        "next_refund": 1,
        "next_message": 1,
    }


def default_state_path() -> Path:
    """``$XDG_STATE_HOME/mcp-gatekeeper/orderdesk.json`` (``~/.local/state`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mcp-gatekeeper" / "orderdesk.json"


# --------------------------------------------------------------------------------------------
# Tool definitions
# --------------------------------------------------------------------------------------------

_ORDER_ID_PROP: Final[dict[str, Any]] = {
    "type": "string",
    "description": 'The order number, digits only, e.g. "8821".',
    "minLength": 1,
    "maxLength": 20,
}

_CUSTOMER_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
    "required": ["name", "email"],
}

_ITEM_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "sku": {"type": "string"},
        "name": {"type": "string"},
        "qty": {"type": "integer"},
        "unit_price": {"type": "number"},
    },
    "required": ["sku", "name", "qty", "unit_price"],
}

_ORDER_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "customer": _CUSTOMER_SCHEMA,
        "amount": {"type": "number", "description": "Order total."},
        "currency": {"type": "string", "description": "ISO 4217 currency code."},
        "status": {"type": "string", "enum": list(ORDER_STATUSES)},
        "items": {"type": "array", "items": _ITEM_SCHEMA},
        "refunded": {"type": "number", "description": "Sum of the refunds issued so far."},
    },
    "required": ["id", "customer", "amount", "currency", "status", "items", "refunded"],
}

_ORDER_SUMMARY_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "customer": {"type": "string", "description": "Customer name."},
        "amount": {"type": "number"},
        "currency": {"type": "string"},
        "status": {"type": "string"},
    },
    "required": ["id", "customer", "amount", "currency", "status"],
}

TOOLS: Final[tuple[types.Tool, ...]] = (
    types.Tool(
        name="lookup_order",
        title="Look up an order",
        description=(
            "Fetch one order by its order number: customer, items, total, currency, status and how "
            "much has been refunded so far. Read-only."
        ),
        input_schema={
            "type": "object",
            "properties": {"order_id": _ORDER_ID_PROP},
            "required": ["order_id"],
            "additionalProperties": False,
        },
        output_schema=_ORDER_SCHEMA,
        annotations=types.ToolAnnotations(
            title="Look up an order", read_only_hint=True, idempotent_hint=True, open_world_hint=False
        ),
    ),
    types.Tool(
        name="list_orders",
        title="List orders",
        description="List all orders, optionally only those with a given status. Read-only.",
        input_schema={
            "type": "object",
            "properties": {
                "status": {
                    "type": "string",
                    "enum": list(ORDER_STATUSES),
                    "description": "Only return orders with this status. Omit to list every order.",
                },
            },
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "orders": {"type": "array", "items": _ORDER_SUMMARY_SCHEMA},
                "count": {"type": "integer", "minimum": 0},
            },
            "required": ["orders", "count"],
        },
        annotations=types.ToolAnnotations(
            title="List orders", read_only_hint=True, idempotent_hint=True, open_world_hint=False
        ),
    ),
    types.Tool(
        name="issue_refund",
        title="Issue a refund",
        description=(
            "Refund part or all of an order to the customer's original payment method. The refund is "
            "recorded immediately and cannot be undone. Fails if the order is unknown, if the currency "
            "differs from the order's, or if the amount exceeds what is left to refund on the order."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "order_id": _ORDER_ID_PROP,
                "amount": {
                    "type": "number",
                    "minimum": 0.01,
                    "description": "Amount to refund, in the order's currency (at most 2 decimal places).",
                },
                "currency": {
                    "type": "string",
                    "default": "USD",
                    "pattern": "^[A-Z]{3}$",
                    "description": "ISO 4217 code; must match the order's currency. Defaults to USD.",
                },
                "reason": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": _MAX_REASON,
                    "description": "Why the refund is being issued; shown to the customer and kept on file.",
                },
            },
            "required": ["order_id", "amount", "reason"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "refund_id": {"type": "string"},
                "order_id": {"type": "string"},
                "amount": {"type": "number"},
                "currency": {"type": "string"},
                "reason": {"type": "string"},
                "refunded_total": {
                    "type": "number",
                    "description": "All refunds on the order, this one included.",
                },
                "order_status": {"type": "string"},
            },
            "required": [
                "refund_id",
                "order_id",
                "amount",
                "currency",
                "reason",
                "refunded_total",
                "order_status",
            ],
        },
        annotations=types.ToolAnnotations(
            title="Issue a refund",
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=False,
        ),
    ),
    types.Tool(
        name="delete_record",
        title="Delete an order record",
        description="Permanently delete an order record from the order desk. This cannot be undone.",
        input_schema={
            "type": "object",
            "properties": {"order_id": _ORDER_ID_PROP},
            "required": ["order_id"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "deleted": {"type": "boolean"}},
            "required": ["order_id", "deleted"],
        },
        annotations=types.ToolAnnotations(
            title="Delete an order record",
            read_only_hint=False,
            destructive_hint=True,
            idempotent_hint=True,
            open_world_hint=False,
        ),
    ),
    types.Tool(
        name="send_email",
        title="Send an email",
        description="Send a plain-text email to any address, e.g. to update a customer about their order.",
        input_schema={
            "type": "object",
            "properties": {
                "to": {"type": "string", "format": "email", "description": "Recipient email address."},
                "subject": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": _MAX_SUBJECT,
                    "description": "Subject line.",
                },
                "body": {"type": "string", "maxLength": _MAX_BODY, "description": "Plain-text message body."},
            },
            "required": ["to", "subject", "body"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "message_id": {"type": "string"},
                "to": {"type": "string"},
                "subject": {"type": "string"},
                "status": {"type": "string", "enum": ["queued"]},
            },
            "required": ["message_id", "to", "subject", "status"],
        },
        annotations=types.ToolAnnotations(
            title="Send an email",
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=True,
        ),
    ),
)

_TOOL_NAMES: Final = frozenset(tool.name for tool in TOOLS)


# --------------------------------------------------------------------------------------------
# Results and argument checks
# --------------------------------------------------------------------------------------------


class ToolFailure(Exception):
    """A tool-level failure: reported to the caller as an ``isError`` result, not a protocol error."""


def _ok(payload: dict[str, Any]) -> types.CallToolResult:
    # Structured output, plus the same JSON as text for clients that ignore structuredContent.
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(payload, indent=2, ensure_ascii=False))],
        structured_content=payload,
    )


def _failed(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


def _check_known(args: dict[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ToolFailure(f"Unexpected argument(s): {', '.join(unknown)}.")


def _str_arg(args: dict[str, Any], key: str, *, required: bool = True, max_len: int | None = None) -> str | None:
    value = args.get(key)
    if value is None:
        if required:
            raise ToolFailure(f"Missing required argument '{key}'.")
        return None
    if not isinstance(value, str):
        raise ToolFailure(f"Argument '{key}' must be a string.")
    if max_len is not None and len(value) > max_len:
        raise ToolFailure(f"Argument '{key}' is longer than {max_len} characters.")
    return value


def _required_str(args: dict[str, Any], key: str, *, max_len: int | None = None, non_empty: bool = True) -> str:
    value = _str_arg(args, key, required=True, max_len=max_len)
    if value is None:  # unreachable: _str_arg raises for a missing required value
        raise ToolFailure(f"Missing required argument '{key}'.")
    if non_empty and not value.strip():
        raise ToolFailure(f"Argument '{key}' must not be empty.")
    return value


def _order_id(args: dict[str, Any]) -> str:
    value = args.get("order_id")
    # LLMs often send order numbers as JSON numbers; accept whole numbers but nothing else.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ToolFailure("Argument 'order_id' is required and must be a string such as \"8821\".")
    value = value.strip().removeprefix("#")
    if not value or len(value) > 20:
        raise ToolFailure("Argument 'order_id' must be a short order number such as \"8821\".")
    return value


def _to_cents(amount: float) -> int:
    return round(amount * 100)


def _from_cents(cents: int) -> float:
    return cents / 100


def _amount_arg(args: dict[str, Any]) -> int:
    """The refund amount, validated, in cents."""
    value = args.get("amount")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolFailure("Argument 'amount' is required and must be a number.")
    if value != value or value in (float("inf"), float("-inf")):
        raise ToolFailure("Argument 'amount' must be a finite number.")
    cents = _to_cents(float(value))
    if abs(float(value) * 100 - cents) > 1e-6:
        raise ToolFailure("Argument 'amount' must have at most 2 decimal places.")
    if cents < 1:
        raise ToolFailure("Argument 'amount' must be at least 0.01.")
    return cents


# --------------------------------------------------------------------------------------------
# The order desk itself
# --------------------------------------------------------------------------------------------


class OrderDesk:
    """State file, call log and tool implementations. All methods are synchronous and never await,
    so each call's read-modify-write of the state file cannot interleave with another's."""

    def __init__(self, state_path: Path, call_log: Path | None = None) -> None:
        self.state_path = state_path
        self.call_log = call_log

    # -- persistence -------------------------------------------------------------------------

    def ensure_state(self, *, reset: bool = False) -> None:
        """Create the state file with seed data if it is missing (or unconditionally with ``reset``)."""
        if reset or not self.state_path.exists():
            self.save(seed_state())
            logger.info("seeded order desk state at %s", self.state_path)

    def load(self) -> dict[str, Any]:
        if not self.state_path.exists():
            self.ensure_state()
        try:
            with self.state_path.open(encoding="utf-8") as fh:
                state = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ToolFailure(f"The order desk state file could not be read: {exc}") from exc
        if not isinstance(state, dict) or not isinstance(state.get("orders"), dict):
            raise ToolFailure("The order desk state file is malformed (no 'orders' object).")
        for key in ("refunds", "outbox", "deleted"):
            state.setdefault(key, [])
        state.setdefault("next_refund", len(state["refunds"]) + 1)
        state.setdefault("next_message", len(state["outbox"]) + 1)
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write the state atomically: a temp file in the same directory, fsync, then os.replace."""
        directory = self.state_path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.state_path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(state, fh, indent=2, ensure_ascii=False)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, self.state_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    def record_call(self, tool: str, arguments: dict[str, Any]) -> None:
        """Append one JSON line for a received tools/call, flushed before the tool runs."""
        if self.call_log is None:
            return
        line = json.dumps({"tool": tool, "arguments": arguments, "at": time.time()}, default=str)
        with self.call_log.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()

    # -- dispatch ----------------------------------------------------------------------------

    def call(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        handler = {
            "lookup_order": self.lookup_order,
            "list_orders": self.list_orders,
            "issue_refund": self.issue_refund,
            "delete_record": self.delete_record,
            "send_email": self.send_email,
        }.get(name)
        if handler is None or name not in _TOOL_NAMES:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}")
        try:
            return _ok(handler(arguments))
        except ToolFailure as exc:
            logger.info("%s failed: %s", name, exc)
            return _failed(str(exc))

    # -- tools -------------------------------------------------------------------------------

    @staticmethod
    def _refunded_cents(state: dict[str, Any], order_id: str) -> int:
        return sum(_to_cents(float(r["amount"])) for r in state["refunds"] if r.get("order_id") == order_id)

    @staticmethod
    def _find(state: dict[str, Any], order_id: str) -> dict[str, Any]:
        order = state["orders"].get(order_id)
        if not isinstance(order, dict):
            raise ToolFailure(f"Order {order_id} not found.")
        return order

    def lookup_order(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_known(args, ["order_id"])
        order_id = _order_id(args)
        state = self.load()
        order = self._find(state, order_id)
        return {**order, "refunded": _from_cents(self._refunded_cents(state, order_id))}

    def list_orders(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_known(args, ["status"])
        status = _str_arg(args, "status", required=False)
        if status is not None and status not in ORDER_STATUSES:
            raise ToolFailure(f"Unknown status '{status}'. Use one of: {', '.join(ORDER_STATUSES)}.")
        state = self.load()
        orders = [
            {
                "id": order["id"],
                "customer": order["customer"]["name"],
                "amount": order["amount"],
                "currency": order["currency"],
                "status": order["status"],
            }
            for order in state["orders"].values()
            if status is None or order["status"] == status
        ]
        return {"orders": orders, "count": len(orders)}

    def issue_refund(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_known(args, ["order_id", "amount", "currency", "reason"])
        order_id = _order_id(args)
        cents = _amount_arg(args)
        currency = _str_arg(args, "currency", required=False) or "USD"
        if not _CURRENCY_RE.match(currency):
            raise ToolFailure("Argument 'currency' must be a three-letter ISO 4217 code such as USD.")
        reason = _required_str(args, "reason", max_len=_MAX_REASON)

        state = self.load()
        order = self._find(state, order_id)
        if currency != order["currency"]:
            raise ToolFailure(
                f"Order {order_id} was paid in {order['currency']}; a refund in {currency} is not possible."
            )
        order_cents = _to_cents(float(order["amount"]))
        already = self._refunded_cents(state, order_id)
        if cents > order_cents:
            raise ToolFailure(
                f"Refund of {_from_cents(cents):.2f} {currency} exceeds the order amount "
                f"({_from_cents(order_cents):.2f} {currency}) of order {order_id}."
            )
        if already + cents > order_cents:
            raise ToolFailure(
                f"Refund of {_from_cents(cents):.2f} {currency} exceeds what is left to refund on order "
                f"{order_id}: {_from_cents(order_cents - already):.2f} {currency} "
                f"({_from_cents(already):.2f} already refunded)."
            )

        seq = int(state["next_refund"])
        refund_id = f"RF-{seq:04d}"
        state["next_refund"] = seq + 1
        state["refunds"].append(
            {
                "id": refund_id,
                "order_id": order_id,
                "amount": _from_cents(cents),
                "currency": currency,
                "reason": reason,
                "at": time.time(),
            }
        )
        total = already + cents
        if total == order_cents:
            order["status"] = "refunded"
        self.save(state)
        logger.info("refund %s: %.2f %s on order %s", refund_id, _from_cents(cents), currency, order_id)
        return {
            "refund_id": refund_id,
            "order_id": order_id,
            "amount": _from_cents(cents),
            "currency": currency,
            "reason": reason,
            "refunded_total": _from_cents(total),
            "order_status": order["status"],
        }

    def delete_record(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_known(args, ["order_id"])
        order_id = _order_id(args)
        state = self.load()
        self._find(state, order_id)
        del state["orders"][order_id]
        state["deleted"].append({"order_id": order_id, "at": time.time()})
        self.save(state)
        logger.info("deleted order %s", order_id)
        return {"order_id": order_id, "deleted": True}

    def send_email(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_known(args, ["to", "subject", "body"])
        to = _required_str(args, "to", max_len=320).strip()
        if not _EMAIL_RE.match(to):
            raise ToolFailure(f"'{to}' is not a valid email address.")
        subject = _required_str(args, "subject", max_len=_MAX_SUBJECT)
        body = _required_str(args, "body", max_len=_MAX_BODY, non_empty=False)
        state = self.load()
        seq = int(state["next_message"])
        message_id = f"MSG-{seq:04d}"
        state["next_message"] = seq + 1
        state["outbox"].append({"id": message_id, "to": to, "subject": subject, "body": body, "queued_at": time.time()})
        self.save(state)
        logger.info("queued email %s to %s", message_id, to)
        return {"message_id": message_id, "to": to, "subject": subject, "status": "queued"}


# --------------------------------------------------------------------------------------------
# MCP server
# --------------------------------------------------------------------------------------------


def build_server(desk: OrderDesk) -> Server[Any]:
    """The low-level MCP server exposing ``desk``'s tools."""

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(TOOLS))

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments: dict[str, Any] = dict(params.arguments or {})
        desk.record_call(params.name, arguments)
        return desk.call(params.name, arguments)

    return Server(
        SERVER_NAME,
        version=SERVER_VERSION,
        title="Order Desk",
        instructions=(
            "A pretend shop's order desk. Use lookup_order / list_orders to read orders; issue_refund, "
            "delete_record and send_email change things and may need a human's approval."
        ),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mcp_gatekeeper.orderdesk",
        description="Sample 'order desk' MCP server (stdio) for the mcp-gatekeeper demo.",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        help="JSON state file, created with seed orders if missing "
        "(env ORDERDESK_STATE; default $XDG_STATE_HOME/mcp-gatekeeper/orderdesk.json)",
    )
    parser.add_argument(
        "--call-log",
        type=Path,
        default=None,
        help="append one JSON line per tools/call received (env ORDERDESK_CALL_LOG)",
    )
    parser.add_argument("--reset", action="store_true", help="overwrite the state file with the seed data")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point: serve the order desk over stdio until stdin closes."""
    args = _parse_args(argv)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("orderdesk: %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    state_env = os.environ.get("ORDERDESK_STATE")
    log_env = os.environ.get("ORDERDESK_CALL_LOG")
    state_path: Path = args.state or (Path(state_env) if state_env else default_state_path())
    call_log: Path | None = args.call_log or (Path(log_env) if log_env else None)

    desk = OrderDesk(state_path.expanduser(), call_log.expanduser() if call_log else None)
    try:
        desk.ensure_state(reset=args.reset)
    except OSError as exc:
        logger.error("cannot create state file %s: %s", desk.state_path, exc)
        raise SystemExit(2) from exc
    logger.info("state file: %s; call log: %s", desk.state_path, desk.call_log or "(none)")
    server = build_server(desk)

    async def serve() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(serve)


if __name__ == "__main__":
    main()
