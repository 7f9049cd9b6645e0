"""A tiny payments upstream built on the MCP SDK's ``MCPServer``, whose tool takes a pydantic model.

``MCPServer`` accepts a model argument sent as a JSON *string* and parses it back into the model, so
``{"payment": "{\\"amount\\": 1000000, ...}"}`` pays 1,000,000 although a policy reading the arguments as
JSON sees no ``payment.amount`` at all. The gatekeeper must not let that through.

Run it::

    python tests/upstreams/payments_server.py --ledger FILE

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

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ledger", type=Path, required=True)
    args = parser.parse_args()
    build(args.ledger).run("stdio")


if __name__ == "__main__":
    main()
