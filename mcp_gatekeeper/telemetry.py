"""What the proxy tells an observer about each gated call: the :class:`Telemetry` seam, and the null one.

The proxy asks its telemetry for a :class:`CallTrace` per ``tools/call`` (with the request's ``_meta``, which
may carry a W3C ``traceparent``), then reports the plan, the human outcome of a hold, and the result. The
OpenTelemetry implementation is :mod:`mcp_gatekeeper.otel`, imported only when ``[telemetry] enabled`` (the
``otel`` extra); without it the proxy gets :data:`NO_TELEMETRY`, which it never even calls
(``enabled`` is false, so the call handler is the untraced one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from mcp_gatekeeper.models import Outcome
from mcp_gatekeeper.policy import Verdict


class CallTrace(Protocol):
    """One gated call, as it goes."""

    def planned(self, kind: str, upstream: str | None, tool: str, verdict: Verdict | None) -> None:
        """The plan: its kind (allow, deny, hold, audit, lease, ...), where it goes, and the policy's verdict."""
        ...

    def outcome(self, outcome: Outcome | None) -> None:
        """How a hold ended (approved, modified, rejected, timed out, ...); None: still pending (retry later)."""
        ...

    def finished(self, result: Any) -> None:
        """The result returned to the client."""
        ...


class Telemetry(Protocol):
    enabled: bool

    def call(self, name: str, meta: Mapping[str, Any] | None) -> contextlib.AbstractContextManager[CallTrace]:
        """A trace around one ``tools/call`` named ``name``; ``meta`` is the request's ``_meta``."""
        ...


class _NoTrace:
    def planned(self, kind: str, upstream: str | None, tool: str, verdict: Verdict | None) -> None:
        return None

    def outcome(self, outcome: Outcome | None) -> None:
        return None

    def finished(self, result: Any) -> None:
        return None


NO_TRACE: CallTrace = _NoTrace()
"""A trace that records nothing (stateless)."""


class NoTelemetry:
    """Telemetry off: nothing is imported, nothing is recorded."""

    enabled = False

    @contextlib.contextmanager
    def call(self, name: str, meta: Mapping[str, Any] | None) -> Iterator[CallTrace]:
        yield NO_TRACE


NO_TELEMETRY: Telemetry = NoTelemetry()
