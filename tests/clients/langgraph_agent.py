"""A LangGraph agent whose tools come from ``langchain-mcp-adapters``, used the way its README shows first.

Run it with the Python of ``.peers/langgraph-venv`` (the adapters pin ``mcp<2``, so they cannot share the
project's venv)::

    .peers/langgraph-venv/bin/python tests/clients/langgraph_agent.py SPEC_JSON

``SPEC_JSON`` is one JSON object::

    {"server": "fs", "command": "/path/to/mcp-gatekeeper", "args": ["wrap", ...], "env": {...},
     "tool": "edit_file", "arguments": {...}, "max_calls": 20, "client_name": null}

The tools are ``MultiServerMCPClient({server: {"command", "args", "transport": "stdio", "env"}}).get_tools()``:
with no explicit ``client.session(...)``, every tool call opens a new session, so the gatekeeper runs as a
new ``wrap`` process for each call and that process exits as soon as the call returns. ``client_name``, if
given, is sent as ``clientInfo`` (through the connection's ``session_kwargs``) instead of the SDK's "mcp".

The chat model is scripted (no network, no weights): it calls ``tool`` with ``arguments``; while a tool
result tells it to "retry the identical call" it calls the identical tool again, at most ``max_calls`` times
in all; on any other result it finishes with a final answer that quotes the result.

stdout: one JSON line per tool result the model sees, ``{"event": "tool_result", "n", "status", "text"}``
(printed after that call's session, and so its ``wrap`` process, has closed), then one final line
``{"event": "final", "answer", "tool_results": [...]}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import anyio
from langchain.agents import create_agent
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_mcp_adapters.client import MultiServerMCPClient
from mcp.types import Implementation

RETRY_MARK = "retry the identical call"


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def content_text(message: BaseMessage) -> str:
    """The text of a message whose content is a string or a list of content blocks."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "\n".join(parts)


class ScriptedModel(BaseChatModel):
    """A chat model that plays the part of an LLM following the gatekeeper's instructions."""

    tool: str
    arguments: dict[str, Any]
    max_calls: int = 20

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedModel:
        names = {getattr(t, "name", None) for t in tools}
        if self.tool not in names:
            raise ValueError(f"tool {self.tool!r} is not among the MCP tools {sorted(map(str, names))}")
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if results:
            last = results[-1]
            text = content_text(last)
            emit({"event": "tool_result", "n": len(results), "status": last.status, "text": text})
            if RETRY_MARK not in text or len(results) >= self.max_calls:
                return self._say(AIMessage(content=f"Final answer. The tool {self.tool} returned: {text}"))
        call = {"name": self.tool, "args": dict(self.arguments), "id": f"call_{len(results) + 1}", "type": "tool_call"}
        return self._say(AIMessage(content="", tool_calls=[call]))

    @staticmethod
    def _say(message: AIMessage) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=message)])


async def main(spec: dict[str, Any]) -> None:
    connection: dict[str, Any] = {
        "command": spec["command"],
        "args": spec["args"],
        "transport": "stdio",
        "env": spec.get("env") or {},
    }
    if spec.get("client_name"):  # another agent: it names itself instead of the SDK's default "mcp"
        connection["session_kwargs"] = {"client_info": Implementation(name=spec["client_name"], version="1.0")}
    client = MultiServerMCPClient({spec["server"]: connection})
    tools = await client.get_tools()
    model = ScriptedModel(tool=spec["tool"], arguments=spec["arguments"], max_calls=spec.get("max_calls", 20))
    agent = create_agent(model, tools)
    state = await agent.ainvoke(
        {"messages": [{"role": "user", "content": f"Please run {spec['tool']} and tell me what it returned."}]},
        {"recursion_limit": 4 * model.max_calls + 10},
    )
    messages = state["messages"]
    emit(
        {
            "event": "final",
            "answer": content_text(messages[-1]),
            "tool_results": [content_text(m) for m in messages if isinstance(m, ToolMessage)],
        }
    )


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
