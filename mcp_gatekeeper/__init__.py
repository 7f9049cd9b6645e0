"""mcp-gatekeeper: a human-in-the-loop gate for MCP tool calls."""

__version__ = "0.1.0"
