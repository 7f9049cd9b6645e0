"""``mcp-gatekeeper demo``: a scripted agent, the gatekeeper and the sample order desk, for real.

The agent is a real MCP client. It starts ``mcp-gatekeeper wrap`` (a real subprocess) in front of the
order desk (another real subprocess), as Claude Desktop would, and works through a customer's problem.
Reads pass; the refund, the email and the deletion wait until you decide them from another terminal
(``mcp-gatekeeper pending`` / ``approve`` / ``reject``) or on the approval page.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.from_thread
import anyio.lowlevel
import mcp.types as types
from anyio.streams.memory import MemoryObjectSendStream
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_gatekeeper import hostos
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


LOGIN_LINE = re.compile(r"approval page: (https?://[^\s/]+)/login\?token=\S+")
WAITING_LINE = re.compile(r"\b(?:HELD|ESCALATED) ([0-9a-f]{8})\b")


class PageLink:
    """A fresh one-time login link for the approval page, whenever one is wanted: each link works once and
    for a few minutes, so the demo mints a new one in the shared store (as ``mcp-gatekeeper login`` does)
    rather than repeating the first."""

    def __init__(self, config: Path, home: Path, origin: str) -> None:
        self._config = config
        self._home = home
        self.origin = origin
        """``http://127.0.0.1:PORT``: where the page is served (as the gatekeeper announced it)."""

    async def fresh(self) -> str:
        from mcp_gatekeeper import webauth
        from mcp_gatekeeper.config import load_config
        from mcp_gatekeeper.serve import open_store

        # the store the gatekeeper opened: [store] url or $MCP_GATEKEEPER_STORE, else the home's file
        async with open_store(load_config(self._config), self._home) as store:
            return await webauth.mint_login_url(store, self.origin)


async def demo_session(
    config: Path,
    home: Path,
    *,
    command: str,
    out: TextIO,
    keys: TextIO | None,
    steps: list[tuple[str, str, dict[str, Any]]] = STEPS,
) -> list[Any]:
    """The agent's run with the gatekeeper's stderr relayed through this process: the page's login link is
    put beside each call that waits for a decision (where it stays on screen), and printed again, fresh,
    whenever a line arrives on ``keys`` (Enter, when stdin is a terminal)."""
    link: list[PageLink] = []
    relay_in, relay_out = os.pipe()
    errlog = os.fdopen(relay_out, "w", buffering=1, encoding="utf-8", errors="replace")
    lines_in, lines = anyio.create_memory_object_stream[str](10_000)
    enters_in, enters = anyio.create_memory_object_stream[str](100)
    token = anyio.lowlevel.current_token()

    def pump(source: TextIO, sink: MemoryObjectSendStream[str]) -> None:
        with contextlib.suppress(anyio.RunFinishedError, anyio.ClosedResourceError, anyio.BrokenResourceError):
            for line in source:
                anyio.from_thread.run_sync(sink.send_nowait, line, token=token)
            anyio.from_thread.run_sync(sink.close, token=token)

    def tell(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    async def reminder(prefix: str) -> None:
        if link:
            again = "   [Enter prints a new one]" if keys is not None else ""
            tell(f"{prefix}approval page (one-time login link): {await link[0].fresh()}{again}")
        tell(f"{prefix}or from another terminal: {command} pending")

    drained = anyio.Event()

    async def relay() -> None:
        async with lines:
            async for line in lines:
                sys.stderr.write(line)
                sys.stderr.flush()
                if not link and (m := LOGIN_LINE.search(line)):
                    link.append(PageLink(config, home, m.group(1)))
                if m := WAITING_LINE.search(line):
                    tell(f"      … call {m.group(1)} waits for your decision")
                    await reminder("        ")
        drained.set()

    async def on_enter() -> None:
        async with enters:
            async for _ in enters:
                await reminder("")

    source = os.fdopen(relay_in, "r", encoding="utf-8", errors="replace")
    threading.Thread(target=pump, args=(source, lines_in), daemon=True).start()
    if keys is not None:  # a daemon thread: a read that never returns must not keep the demo from exiting
        threading.Thread(target=pump, args=(keys, enters_in), daemon=True).start()
    async with anyio.create_task_group() as tg:
        tg.start_soon(relay)
        tg.start_soon(on_enter)
        try:
            results = await run_agent(config, home, steps=steps, errlog=errlog)
        finally:
            errlog.close()  # the gatekeeper has exited: the relay reads to the end, then stops
        with anyio.move_on_after(5):  # bounded: a grandchild that kept the pipe open must not hang the demo
            await drained.wait()
        tg.cancel_scope.cancel()
    return results


def run_demo(args: argparse.Namespace) -> int:
    home = default_home()
    config = demo_config(home, port=args.port, ui=not args.no_ui)
    me = hostos.self_command()
    _say("mcp-gatekeeper demo: an agent works an order desk through the gatekeeper.")
    _say(f"  data home: {home}   policy: {config}")
    _say("  Reads pass. Refunds over 25, customer emails and deletions wait for you. Decide from another terminal:")
    _say(f"    {me} pending")
    _say(f"    {me} approve ID            (or: approve ID --args '{{...}}' to change the arguments)")
    _say(f"    {me} reject ID --reason 'why'")
    keys = sys.stdin if sys.stdin is not None and sys.stdin.isatty() else None
    if not args.no_ui:
        _say(
            "  or on the approval page: a fresh login link is printed beside each call that waits for you"
            + (",\n  and again whenever you press Enter here." if keys is not None else ".")
        )
    _say("")
    anyio.run(lambda: demo_session(config, home, command=me, out=sys.stdout, keys=keys))
    _say(f"demo finished. The decision log: {me} audit   (verify it: {me} audit --verify)")
    return 0
