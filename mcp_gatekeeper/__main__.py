"""``python -m mcp_gatekeeper`` runs the command line."""

from mcp_gatekeeper.cli import entry

entry()
