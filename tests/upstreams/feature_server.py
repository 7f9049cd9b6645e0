"""A test upstream that exercises most MCP features, for gatekeeper tests.

Run it::

    python tests/upstreams/feature_server.py [--call-log FILE]            # stdio
    python tests/upstreams/feature_server.py --http PORT [--call-log FILE]  # Streamable HTTP

With ``--http`` it serves Streamable HTTP at ``http://127.0.0.1:PORT/mcp``; ``--http 0`` picks a
free port. Either way it prints ``feature_server: listening on <url>`` to stderr once the socket
is listening. In-process, tests call :func:`build_server` and hand the result to
``Client(server, mode="legacy")``.

Tools (tools/list is paginated, 4 per page, the cursor being the offset as a string):

* ``echo(text)``: text plus ``structuredContent {"text": ...}``; has a title, an output schema,
  ``readOnlyHint`` and a tool-level ``_meta``.
* ``write_note(path, content)``: pretends to write a file (kept in memory, readable as the
  resource ``memo://note/{path}``).
* ``err()``: an ``isError`` result. ``boom()``: raises, so the client gets a JSON-RPC error.
* ``slow(steps, delay)``: progress every step; prints ``UPSTREAM: slow() cancelled`` to stderr if
  cancelled.
* ``ask()``: form elicitation. ``sample()``: sampling. ``roots()``: roots/list.
* ``add_tool(name)`` / ``change_description(text)``: change the tool list and send
  ``notifications/tools/list_changed`` (the latter rewrites echo's description: a "rug pull").
* ``log(message, level)``: ``notifications/message``.
* ``touch_resource(uri)``: ``notifications/resources/updated``.
* ``crash()``: ``os._exit(3)``, which kills the whole process, so only use it over a subprocess.
* ``hang()``: never returns.

Resources: ``memo://hello`` and the template ``memo://note/{name}``, with subscribe/unsubscribe.
Prompts: ``greet(name)``, with completions for ``name`` (``Alice``, ``Alan``).

Every ``tools/call`` is appended to the call log (if set) as one JSON line
``{"tool", "arguments", "at"}``, flushed before the tool runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import anyio
import mcp.types as types
from mcp import MCPError
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.models import InitializationOptions
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPDeprecationWarning

__all__ = ["PAGE_SIZE", "FeatureServer", "FeatureState", "build_server", "main"]

PAGE_SIZE: Final = 4
ALL_CHANGES: Final = NotificationOptions(tools_changed=True, resources_changed=True, prompts_changed=True)
GREET_NAMES: Final = ("Alice", "Alan")
HELLO_URI: Final = "memo://hello"
NOTE_PREFIX: Final = "memo://note/"
ECHO_META: Final = {"example.com/owner": "feature"}
LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")

_EMPTY_SCHEMA: Final[dict[str, Any]] = {"type": "object", "properties": {}, "additionalProperties": False}
_ASK_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean", "title": "Proceed?", "description": "Whether to go ahead."}},
}


def _schema(props: dict[str, dict[str, Any]], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def initial_tools() -> list[types.Tool]:
    """The static tool list, in listing order. echo comes first so its output schema is on page 1."""
    return [
        types.Tool(
            name="echo",
            title="Echo",
            description="Echo the given text back.",
            input_schema=_schema({"text": _string("Text to echo.")}, ["text"]),
            output_schema=_schema({"text": {"type": "string"}}, ["text"]),
            annotations=types.ToolAnnotations(title="Echo", read_only_hint=True, open_world_hint=False),
            _meta=dict(ECHO_META),
        ),
        types.Tool(
            name="write_note",
            title="Write a note",
            description="Pretend to write a file: the content is kept in memory under the given path.",
            input_schema=_schema(
                {
                    "path": _string("Where to write, e.g. notes/todo.txt."),
                    "content": _string("File content."),
                },
                ["path", "content"],
            ),
            annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True),
        ),
        types.Tool(name="err", description="Always fails with an isError result.", input_schema=dict(_EMPTY_SCHEMA)),
        types.Tool(
            name="boom",
            description="Always raises, giving a JSON-RPC error.",
            input_schema=dict(_EMPTY_SCHEMA),
        ),
        types.Tool(
            name="slow",
            description="Take a while, reporting progress after every step.",
            input_schema=_schema(
                {
                    "steps": {
                        "type": "integer",
                        "minimum": 0,
                        "default": 5,
                        "description": "Number of steps.",
                    },
                    "delay": {
                        "type": "number",
                        "minimum": 0,
                        "default": 0.1,
                        "description": "Seconds per step.",
                    },
                }
            ),
        ),
        types.Tool(
            name="ask",
            description="Ask the user a question through form elicitation.",
            input_schema=_schema({"message": _string("The question (default 'Proceed?').")}),
        ),
        types.Tool(
            name="sample",
            description="Ask the client's LLM for a completion (sampling/createMessage).",
            input_schema=_schema({"prompt": _string("What to ask the LLM.")}),
        ),
        types.Tool(name="roots", description="List the client's roots.", input_schema=dict(_EMPTY_SCHEMA)),
        types.Tool(
            name="add_tool",
            description="Add a tool with the given name and send tools/list_changed.",
            input_schema=_schema({"name": _string("Name of the new tool.")}, ["name"]),
        ),
        types.Tool(
            name="change_description",
            description="Replace echo's description and send tools/list_changed.",
            input_schema=_schema({"text": _string("The new description.")}, ["text"]),
        ),
        types.Tool(
            name="log",
            description="Send a notifications/message log entry to the client.",
            input_schema=_schema(
                {
                    "message": _string("Log message."),
                    "level": {
                        "type": "string",
                        "enum": list(LOG_LEVELS),
                        "default": "info",
                    },
                },
                ["message"],
            ),
        ),
        types.Tool(
            name="touch_resource",
            description="Send notifications/resources/updated for a resource URI.",
            input_schema=_schema({"uri": _string("Resource URI, e.g. memo://hello.")}, ["uri"]),
        ),
        types.Tool(
            name="crash",
            description="Kill the server process at once (exit code 3).",
            input_schema=dict(_EMPTY_SCHEMA),
            annotations=types.ToolAnnotations(destructive_hint=True),
        ),
        types.Tool(name="hang", description="Never return.", input_schema=dict(_EMPTY_SCHEMA)),
    ]


def text_result(text: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error)


@dataclass
class FeatureState:
    """Everything the server remembers; tests may inspect it when running in-process."""

    call_log: Path | None = None
    tools: list[types.Tool] = field(default_factory=initial_tools)
    notes: dict[str, str] = field(default_factory=dict)
    subscriptions: set[str] = field(default_factory=set)
    log_level: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def record_call(self, tool: str, arguments: dict[str, Any]) -> None:
        entry = {"tool": tool, "arguments": arguments, "at": time.time()}
        self.calls.append(entry)
        if self.call_log is not None:
            with self.call_log.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, default=str) + "\n")
                fh.flush()

    def find_tool(self, name: str) -> types.Tool | None:
        return next((tool for tool in self.tools if tool.name == name), None)


class FeatureServer(Server[Any]):
    """A low-level ``Server`` that advertises every ``listChanged`` flag by default, so the in-process
    and HTTP paths (which call ``create_initialization_options()`` themselves) match stdio."""

    def __init__(self, state: FeatureState, **kwargs: Any) -> None:
        super().__init__("feature-upstream", **kwargs)
        self.state = state

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or ALL_CHANGES, experimental_capabilities, extensions
        )


def build_server(call_log: str | None) -> FeatureServer:
    """A fresh feature server with its own state; ``call_log`` is a JSON-lines file path or None."""
    state = FeatureState(call_log=Path(call_log) if call_log else None)

    # ---- tools ------------------------------------------------------------------------------

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        cursor = params.cursor if params else None
        try:
            start = int(cursor) if cursor else 0
        except ValueError:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Invalid cursor: {cursor!r}") from None
        if start < 0 or start > len(state.tools):
            raise MCPError(code=types.INVALID_PARAMS, message=f"Invalid cursor: {cursor!r}")
        end = start + PAGE_SIZE
        return types.ListToolsResult(
            tools=state.tools[start:end], next_cursor=str(end) if end < len(state.tools) else None
        )

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        args: dict[str, Any] = dict(params.arguments or {})
        state.record_call(params.name, args)
        session = ctx.session
        match params.name:
            case "echo":
                text = str(args.get("text", ""))
                return types.CallToolResult(
                    content=[types.TextContent(type="text", text=text)], structured_content={"text": text}
                )
            case "write_note":
                path, content = str(args.get("path", "")), str(args.get("content", ""))
                if not path:
                    return text_result("path is required", is_error=True)
                state.notes[path] = content
                return text_result(f"wrote {len(content)} characters to {path}")
            case "err":
                return text_result("upstream says no", is_error=True)
            case "boom":
                raise RuntimeError("boom: upstream exploded")
            case "slow":
                steps, delay = int(args.get("steps", 5)), float(args.get("delay", 0.1))
                print(f"UPSTREAM: slow() started ({steps} steps)", file=sys.stderr, flush=True)
                try:
                    for i in range(steps):
                        await anyio.sleep(delay)
                        await session.report_progress(i + 1, steps, f"step {i + 1}/{steps}")
                except anyio.get_cancelled_exc_class():
                    print("UPSTREAM: slow() cancelled", file=sys.stderr, flush=True)
                    raise
                return text_result(f"done {steps}")
            case "ask":
                message = str(args.get("message") or "Proceed?")
                answer = await session.elicit_form(message, _ASK_SCHEMA, related_request_id=ctx.request_id)
                return text_result(f"user said {answer.action} {answer.content}")
            case "sample":
                prompt = str(args.get("prompt") or "Say hello.")
                sampled = await session.create_message(
                    [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
                    max_tokens=64,
                    related_request_id=ctx.request_id,
                )
                reply = sampled.content
                return text_result(reply.text if isinstance(reply, types.TextContent) else f"<{reply.type}>")
            case "roots":
                listed = await session.list_roots()
                uris = [str(root.uri) for root in listed.roots]
                return types.CallToolResult(
                    content=[types.TextContent(type="text", text="\n".join(uris) or "(no roots)")],
                    structured_content={"roots": uris},
                )
            case "add_tool":
                name = str(args.get("name", ""))
                if not name or state.find_tool(name) is not None:
                    return text_result(f"cannot add tool {name!r}", is_error=True)
                state.tools.append(
                    types.Tool(name=name, description=f"Dynamic tool {name}.", input_schema=dict(_EMPTY_SCHEMA))
                )
                await session.send_tool_list_changed()
                return text_result(f"added {name}")
            case "change_description":
                new = str(args.get("text", ""))
                state.tools = [
                    tool.model_copy(update={"description": new}) if tool.name == "echo" else tool
                    for tool in state.tools
                ]
                await session.send_tool_list_changed()
                return text_result("echo description changed")
            case "log":
                level = str(args.get("level") or "info")
                if level not in LOG_LEVELS:
                    return text_result(f"unknown log level {level!r}", is_error=True)
                await session.send_log_message(
                    cast("types.LoggingLevel", level),
                    str(args.get("message", "")),
                    logger="feature",
                    related_request_id=ctx.request_id,
                )
                return text_result("logged")
            case "touch_resource":
                uri = str(args.get("uri", HELLO_URI))
                await session.send_resource_updated(uri)
                subscribed = uri in state.subscriptions
                return text_result(f"touched {uri} (subscribed={subscribed})")
            case "crash":
                print("UPSTREAM: crash() exiting with status 3", file=sys.stderr, flush=True)
                os._exit(3)
            case "hang":
                await anyio.sleep_forever()
        if state.find_tool(params.name) is not None:  # a tool added by add_tool
            return text_result(f"dynamic tool {params.name} called with {json.dumps(args, sort_keys=True)}")
        raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}")

    # ---- resources --------------------------------------------------------------------------

    async def list_resources(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(uri=HELLO_URI, name="hello", title="Hello memo", mime_type="text/plain"),
            ]
        )

    async def list_resource_templates(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    name="note",
                    title="Note",
                    uri_template=NOTE_PREFIX + "{name}",
                    description="A note written with write_note (or a placeholder).",
                    mime_type="text/plain",
                )
            ]
        )

    async def read_resource(
        ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = params.uri
        if uri == HELLO_URI:
            text = "hello world"
        elif uri.startswith(NOTE_PREFIX) and len(uri) > len(NOTE_PREFIX):
            name = uri.removeprefix(NOTE_PREFIX)
            text = state.notes.get(name, f"This is note {name}.")
        else:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Resource not found: {uri}")
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="text/plain", text=text)]
        )

    async def subscribe(ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
        state.subscriptions.add(params.uri)
        return types.EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        state.subscriptions.discard(params.uri)
        return types.EmptyResult()

    # ---- prompts and completions ------------------------------------------------------------

    async def list_prompts(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        return types.ListPromptsResult(
            prompts=[
                types.Prompt(
                    name="greet",
                    title="Greeting",
                    description="Greet someone by name.",
                    arguments=[types.PromptArgument(name="name", description="Who to greet.", required=True)],
                )
            ]
        )

    async def get_prompt(ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams) -> types.GetPromptResult:
        if params.name != "greet":
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
        name = (params.arguments or {}).get("name")
        if not name:
            raise MCPError(code=types.INVALID_PARAMS, message="Missing required argument: name")
        return types.GetPromptResult(
            description=f"Greeting for {name}",
            messages=[
                types.PromptMessage(
                    role="user", content=types.TextContent(type="text", text=f"Please greet {name} warmly.")
                )
            ],
        )

    async def complete(ctx: ServerRequestContext[Any], params: types.CompleteRequestParams) -> types.CompleteResult:
        values: list[str] = []
        ref = params.ref
        if isinstance(ref, types.PromptReference) and ref.name == "greet" and params.argument.name == "name":
            prefix = params.argument.value.casefold()
            values = [name for name in GREET_NAMES if name.casefold().startswith(prefix)]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))

    async def set_level(ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
        state.log_level = params.level
        return types.EmptyResult()

    with warnings.catch_warnings():
        # logging/setLevel is deprecated as of 2026-07-28; this upstream serves it anyway.
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        return FeatureServer(
            state,
            version="1.0.0",
            instructions="Feature test upstream for mcp-gatekeeper.",
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            on_list_resources=list_resources,
            on_list_resource_templates=list_resource_templates,
            on_read_resource=read_resource,
            on_subscribe_resource=subscribe,
            on_unsubscribe_resource=unsubscribe,
            on_list_prompts=list_prompts,
            on_get_prompt=get_prompt,
            on_completion=complete,
            on_set_logging_level=set_level,
        )


def _serve_http(server: FeatureServer, port: int) -> None:
    import uvicorn  # only needed for --http

    app = server.streamable_http_app(streamable_http_path="/mcp")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    print(f"feature_server: listening on http://127.0.0.1:{bound}/mcp", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MCP feature test upstream (stdio by default).")
    parser.add_argument("--call-log", default=None, help="append one JSON line per tools/call to this file")
    parser.add_argument("--http", type=int, default=None, metavar="PORT", help="serve Streamable HTTP on PORT")
    args = parser.parse_args(argv)
    server = build_server(args.call_log)
    if args.http is not None:
        _serve_http(server, args.http)
        return

    async def serve() -> None:
        async with stdio_server() as (read, write):
            print("feature_server: listening on stdio", file=sys.stderr, flush=True)
            await server.run(read, write, server.create_initialization_options(ALL_CHANGES))

    anyio.run(serve)


if __name__ == "__main__":
    main()
