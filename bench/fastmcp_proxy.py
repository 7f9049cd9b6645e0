"""A peer for comparison: fastmcp's ``create_proxy`` in front of one stdio server (run with fastmcp's own venv).

bench/.venvs/fastmcp/bin/python bench/fastmcp_proxy.py CMD [ARGS...]
"""

from __future__ import annotations

import sys

from fastmcp.server import create_proxy

if __name__ == "__main__":
    server = create_proxy(
        {"mcpServers": {"upstream": {"command": sys.argv[1], "args": sys.argv[2:]}}}, name="fastmcp-proxy"
    )
    server.run(show_banner=False)  # stdio transport by default
