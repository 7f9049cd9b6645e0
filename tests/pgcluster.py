"""A throwaway PostgreSQL server for the tests (or the one ``$GATEKEEPER_TEST_PG`` names).

The server itself is :mod:`mcp_gatekeeper.devcluster` (``demo --team`` starts one the same way); this module
adds only the tests' override: ``$GATEKEEPER_TEST_PG``, a server the tests may use instead of starting one.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from mcp_gatekeeper import devcluster
from mcp_gatekeeper.devcluster import Cluster, bin_dir, free_port, with_credentials, with_database

__all__ = [
    "ENV_DSN", "Cluster", "bin_dir", "free_port", "start_cluster", "urlsplit", "why_unavailable",
    "with_credentials", "with_database",
]  # fmt: skip

ENV_DSN = "GATEKEEPER_TEST_PG"
"""A DSN of a superuser (or a role with CREATEDB and CREATEROLE) on a server the tests may use instead."""


def why_unavailable() -> str | None:
    """None when a server can be had, else why not (the tests skip with it; CI turns the skip into a failure)."""
    if os.environ.get(ENV_DSN):
        return None
    why = devcluster.why_unavailable()
    return f"{why}; and ${ENV_DSN} is unset" if why else None


def start_cluster() -> Cluster:
    """The server of ``$GATEKEEPER_TEST_PG``, else a new throwaway one (call :meth:`Cluster.stop` at the end)."""
    if env := os.environ.get(ENV_DSN):
        return Cluster(dsn=env)
    return devcluster.start_cluster()
