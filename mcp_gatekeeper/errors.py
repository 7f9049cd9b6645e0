"""The one exception tree of mcp-gatekeeper.

::

    GatekeeperError
    ├── ConfigError               bad config or policy: every bad field named (CLI exit 2)
    ├── StoreError                database unusable (full, read-only, locked, corrupt, newer schema)
    │   ├── CallNotFoundError     no call with that id (or the prefix is ambiguous)
    │   ├── AlreadyDecidedError   lost a compare-and-set: decided, expired, cancelled or a stale digest
    │   └── DevClusterError       a throwaway PostgreSQL server (demo --team, tests) cannot be had or started
    ├── InvalidModificationError  edited arguments fail the tool's schema or land in a deny rule
    ├── UpstreamError             upstream unreachable, crashed or timed out
    ├── NotAllowedError           team mode: this reviewer may not do this (groups, own call, counted twice, ...)
    └── NotifierError             a notification service refused or failed (logged; never decides a call)

Outcomes (rejected, expired, denied) are *values*, not exceptions: see :mod:`mcp_gatekeeper.models`.
HTTP statuses live only in the web layer, exit codes only in the CLI.
"""

from __future__ import annotations


class GatekeeperError(Exception):
    """Base of every error mcp-gatekeeper raises on purpose."""


class ConfigError(GatekeeperError):
    """The configuration is invalid. ``problems`` lists every bad field, each naming its path."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{where}invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class StoreError(GatekeeperError):
    """The store cannot be used safely. Callers fail closed: nothing is allowed or approved."""


class CallNotFoundError(StoreError):
    """No call matches the given id or id prefix."""


class AlreadyDecidedError(StoreError):
    """A compare-and-set lost: the call is no longer pending, has expired, or its arguments changed.

    ``state`` is the call's state at the time of the refusal; ``why`` is one of
    ``"decided"``, ``"expired"``, ``"stale_digest"``, ``"not_pending"``.
    """

    def __init__(self, message: str, *, state: str | None = None, why: str = "decided") -> None:
        super().__init__(message)
        self.state = state
        self.why = why


class DevClusterError(StoreError):
    """A throwaway PostgreSQL server (:mod:`mcp_gatekeeper.devcluster`) cannot be had (PostgreSQL not installed,
    an unsupported platform, no ``postgres`` OS user to run it as) or did not start; the message says which."""


class InvalidModificationError(GatekeeperError):
    """Reviewer-edited arguments were refused (schema violation or a deny rule). The call stays pending."""


class NotAllowedError(GatekeeperError):
    """Team mode: the reviewer (or the account operation) is refused; ``why`` is a stable code such as
    ``"not_in_group"``, ``"self_review"``, ``"already_approved"``, ``"exists"``, ``"no_account"``,
    ``"rate_limited"``, ``"bad_login"``, ``"not_admin"``. The web layer maps it to 403 (429 when rate limited)."""

    def __init__(self, message: str, *, why: str) -> None:
        super().__init__(message)
        self.why = why


class UpstreamError(GatekeeperError):
    """An upstream server is unreachable, crashed or timed out."""


class NotifierError(GatekeeperError):
    """A notification service (Slack, ntfy) refused or failed a request. ``retry_after``: seconds it asked us to
    wait (HTTP 429), if it said. Logged by the caller; a call's outcome never depends on it."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
