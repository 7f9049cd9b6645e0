"""``mcp-gatekeeper demo``: a scripted agent, the gatekeeper and the sample order desk, for real.

The agent is a real MCP client. It starts ``mcp-gatekeeper wrap`` (a real subprocess) in front of the
order desk (another real subprocess), as Claude Desktop would, and works through a customer's problem.
Reads pass; the refund, the email and the deletion wait until you decide them from another terminal
(``mcp-gatekeeper pending`` / ``approve`` / ``reject``) or on the approval page.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import anyio
import mcp.types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_gatekeeper.store import default_home

STEPS: list[tuple[str, str, dict[str, Any]]] = [
    ("Let me look at the open orders.", "list_orders", {}),
    ("Dana says order 8821 arrived broken. Checking it.", "lookup_order", {"order_id": "8821"}),
    (
        "A small goodwill credit first (under the auto-approve limit).",
        "issue_refund",
        {"order_id": "8821", "amount": 10, "currency": "USD", "reason": "goodwill credit for the delay"},
    ),
    (
        "Now the full refund for the broken item. This one needs a human.",
        "issue_refund",
        {"order_id": "8821", "amount": 119.99, "currency": "USD", "reason": "item arrived damaged"},
    ),
    (
        "Let me tell Dana.",
        "send_email",
        {
            "to": "dana.whitfield@example.com",
            "subject": "Your refund for order 8821",
            "body": "Hi Dana, we have refunded your order 8821. Sorry about the damage!",
        },
    ),
    (
        "Copying my manager at her personal address (policy should stop this).",
        "send_email",
        {"to": "boss@gmail.com", "subject": "FYI refund 8821", "body": "Refunded Dana."},
    ),
    ("Order 8825 is a duplicate; deleting it.", "delete_record", {"order_id": "8825"}),
]


def _say(text: str) -> None:
    print(text, flush=True)


def _text_of(result: Any) -> str:
    parts = [getattr(c, "text", "") for c in result.content if getattr(c, "type", "") == "text"]
    text = " ".join(p for p in parts if p)
    return text if len(text) < 400 else text[:400] + "…"


def demo_config(home: Path, *, port: int | None, ui: bool) -> Path:
    """Write the demo's policy into the data home (with the chosen port) and return its path."""
    text = resources.files("mcp_gatekeeper").joinpath("demo.toml").read_text(encoding="utf-8")
    if port is not None:
        text = text.replace("port = 8765", f"port = {port}")
    if not ui:
        text = text.replace("autostart = true", "autostart = false")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home / "demo-config.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def run_agent(
    config: Path, home: Path, *, steps: list[tuple[str, str, dict[str, Any]]] = STEPS, errlog: TextIO | None = None
) -> list[Any]:
    """Run the scripted agent through the gatekeeper; returns every tool result."""
    state = home / "orderdesk.json"
    env = dict(os.environ)
    env["MCP_GATEKEEPER_HOME"] = str(home)
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m", "mcp_gatekeeper", "wrap", "--config", str(config), "--name", "orderdesk", "--",
            sys.executable, "-m", "mcp_gatekeeper.orderdesk", "--state", str(state), "--reset",
        ],
        env=env,
    )  # fmt: skip

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        if message:
            _say(f"      … {message}")

    results = []
    me = types.Implementation(name="orderdesk-demo-agent", version="1.0")
    async with Client(stdio_client(params, errlog=errlog or sys.stderr), mode="legacy", client_info=me) as agent:
        tools = await agent.list_tools()
        _say(f"agent: connected through mcp-gatekeeper; tools: {', '.join(t.name for t in tools.tools)}\n")
        for intent, tool, arguments in steps:
            _say(f"agent: {intent}")
            _say(f"   -> {tool} {json.dumps(arguments)}")
            result = await agent.call_tool(tool, arguments, progress_callback=progress)
            mark = "REFUSED" if result.is_error else "ok"
            _say(f"   <- [{mark}] {_text_of(result)}\n")
            results.append(result)
    return results


def run_demo(args: argparse.Namespace) -> int:
    home = default_home()
    config = demo_config(home, port=args.port, ui=not args.no_ui)
    _say("mcp-gatekeeper demo: an agent works an order desk through the gatekeeper.")
    _say(f"  data home: {home}   policy: {config}")
    _say("  Reads pass. Refunds over 25, customer emails and deletions wait for you. Decide from another terminal:")
    _say("    mcp-gatekeeper pending")
    _say("    mcp-gatekeeper approve ID            (or: approve ID --args '{...}' to change the arguments)")
    _say("    mcp-gatekeeper reject ID --reason 'why'")
    if not args.no_ui:
        _say("  or on the approval page (its login link is printed below on stderr).")
    _say("")
    anyio.run(run_agent, config, home)
    _say("demo finished. The decision log: mcp-gatekeeper audit   (verify it: mcp-gatekeeper audit --verify)")
    return 0
