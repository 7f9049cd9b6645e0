"""A tiny payments upstream built on the MCP SDK's ``MCPServer``, whose tool takes a pydantic model.

``MCPServer`` accepts a model argument sent as a JSON *string* and parses it back into the model, so
``{"payment": "{\\"amount\\": 1000000, ...}"}`` pays 1,000,000 although a policy reading the arguments as
JSON sees no ``payment.amount`` at all. The gatekeeper must not let that through.

Run it::

    python tests/upstreams/payments_server.py --ledger FILE

``pay_or_refer`` takes a payment *or* a string, so its schema accepts a string: MCPServer parses
``"{\"amount\": 1000000, ...}"`` into a payment all the same.

Every payment actually made is appended to the ledger as one JSON line ``{"to", "amount", "currency"}``,
flushed before the tool answers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel


class Payment(BaseModel):
    to: str
    amount: float
    currency: str = "EUR"


def build(ledger: Path) -> MCPServer:
    server = MCPServer("payments")

    @server.tool()
    def pay(payment: Payment) -> str:
        """Send a payment."""
        with ledger.open("a", encoding="utf-8") as f:
            f.write(json.dumps(payment.model_dump()) + "\n")
            f.flush()
        return f"paid {payment.amount:g} {payment.currency} to {payment.to}"

    @server.tool()
    def pay_or_refer(payment: Payment | str) -> str:
        """Send a payment, or (a string) note a reference to pay later. The schema's ``anyOf`` has a string
        branch, so a JSON string validates; MCPServer still parses it into a Payment and pays."""
        if isinstance(payment, str):
            return f"noted reference {payment}"
        return pay(payment)

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ledger", type=Path, required=True)
    args = parser.parse_args()
    build(args.ledger).run("stdio")


if __name__ == "__main__":
    main()
