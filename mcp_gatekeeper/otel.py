"""OpenTelemetry for the gatekeeper (the ``otel`` extra): a span per gated call, and hold metrics.

Imported only when ``[telemetry] enabled = true`` (``serve.telemetry_for``); nothing else of the package
imports it. The MCP SDK itself depends on ``opentelemetry-api`` (and opens its own spans through the global
provider); the extra adds ``opentelemetry-sdk``, which this module needs to export anything itself
(exporters ``console`` and ``otlp``). Telemetry off loads neither this module nor the SDK.

The span (``tools/call <tool>``, kind SERVER) is a child of the client's trace when the request's ``_meta``
carries a W3C ``traceparent`` (and ``tracestate``). Its attributes: the upstream and tool, the plan
(allow, deny, hold, audit, lease, ...), the policy's verdict, gate, rule and risk, and for a held call the
call id, the time spent waiting for a human, the decision and the channel it came through, and the outcome.
Metrics: ``mcp_gatekeeper.calls.held``, ``mcp_gatekeeper.calls.decided`` (by decision and channel),
``mcp_gatekeeper.calls.timed_out`` counters and the ``mcp_gatekeeper.hold.wait`` histogram (seconds).
Reviewer names and arguments are never attributes (they may be personal or secret).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mcp_gatekeeper import __version__
from mcp_gatekeeper.config import TelemetryConfig
from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.models import Approved, Outcome, State
from mcp_gatekeeper.policy import Verdict
from mcp_gatekeeper.telemetry import CallTrace

SCOPE = "mcp_gatekeeper"
NAME_CHARS = 200
"""Tool names (the client's text) are cut to this many characters in span names and attributes."""
PREFIX = "mcp_gatekeeper."
_PROPAGATOR = TraceContextTextMapPropagator()


def _attr(value: Any) -> str:
    return "" if value is None else str(value)


class _Instruments:
    def __init__(self, meter: metrics.Meter) -> None:
        self.held = meter.create_counter(f"{PREFIX}calls.held", unit="{call}", description="calls held for a human")
        self.decided = meter.create_counter(
            f"{PREFIX}calls.decided", unit="{call}", description="held calls a human decided"
        )
        self.timed_out = meter.create_counter(
            f"{PREFIX}calls.timed_out", unit="{call}", description="held calls that ran out of time (rejected)"
        )
        self.wait = meter.create_histogram(
            f"{PREFIX}hold.wait", unit="s", description="time a held call waited for its outcome"
        )


class _SpanTrace:
    """The :class:`CallTrace` of one span."""

    def __init__(self, span: trace.Span, instruments: _Instruments) -> None:
        self.span, self.i = span, instruments
        self.rule: str | None = None
        self.held_at: float | None = None

    def planned(self, kind: str, upstream: str | None, tool: str, verdict: Verdict | None) -> None:
        s = self.span
        s.set_attribute(f"{PREFIX}plan", kind)
        if upstream is not None:
            s.set_attribute(f"{PREFIX}upstream", upstream)
        if tool:
            s.set_attribute("gen_ai.tool.name", tool[:NAME_CHARS])
        if verdict is not None:
            self.rule = verdict.rule
            s.set_attribute(f"{PREFIX}verdict", verdict.action)
            s.set_attribute(f"{PREFIX}gate", verdict.gate)
            s.set_attribute(f"{PREFIX}risk", verdict.risk)
            s.set_attribute(f"{PREFIX}rule", _attr(verdict.rule))
        if kind == "hold":
            self.held_at = time.monotonic()
            self.i.held.add(1, {f"{PREFIX}rule": _attr(self.rule)})

    def outcome(self, outcome: Outcome | None) -> None:
        s = self.span
        if outcome is None:
            s.set_attribute(f"{PREFIX}decision", "pending")
            return
        call = outcome.call
        s.set_attribute(f"{PREFIX}call_id", call.id)
        if isinstance(outcome, Approved):
            decision = "modified" if outcome.modified else "approved"
        elif outcome.state == State.EXPIRED:
            decision = "timed_out"
        else:
            decision = outcome.state.value
        ended = call.decided_at or call.finished_at
        if ended is not None:
            wait = max(0.0, ended - call.created_at)
        else:
            wait = time.monotonic() - self.held_at if self.held_at is not None else 0.0
        s.set_attribute(f"{PREFIX}decision", decision)
        s.set_attribute(f"{PREFIX}wait_seconds", round(wait, 6))
        rule = {f"{PREFIX}rule": _attr(self.rule or call.rule)}
        if decision == "timed_out":
            self.i.timed_out.add(1, rule)
        elif call.decided_by is not None and decision in ("approved", "modified", "rejected"):
            channel = _attr(call.channel)
            s.set_attribute(f"{PREFIX}reviewer.channel", channel)
            self.i.decided.add(1, {**rule, f"{PREFIX}decision": decision, f"{PREFIX}reviewer.channel": channel})
        self.i.wait.record(wait, {**rule, f"{PREFIX}decision": decision})

    def finished(self, result: Any) -> None:
        is_error = (
            bool(result.get("isError")) if isinstance(result, Mapping) else bool(getattr(result, "isError", False))
        )
        self.span.set_attribute(f"{PREFIX}result.is_error", is_error)
        self.span.set_attribute(f"{PREFIX}outcome", "error" if is_error else "ok")


class OtelTelemetry:
    """Spans and metrics through the given providers (the global ones when None)."""

    enabled = True

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        self._instruments = _Instruments(metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider))

    @contextlib.contextmanager
    def call(self, name: str, meta: Mapping[str, Any] | None) -> Iterator[CallTrace]:
        carrier: dict[str, str] = {}
        if isinstance(meta, Mapping):
            for key in ("traceparent", "tracestate"):
                value = meta.get(key)
                if isinstance(value, str) and len(value) <= 512:
                    carrier[key] = value
        parent = None
        if not trace.get_current_span().get_span_context().is_valid and carrier:
            # the MCP SDK's own server span (recording only under a global SDK provider) already joined the
            # client's trace when it is valid: nest under it; else join the client's trace from ``_meta``
            parent = _PROPAGATOR.extract(carrier)
        with self._tracer.start_as_current_span(
            f"tools/call {name[:NAME_CHARS]}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"mcp.method.name": "tools/call"},
        ) as span:
            yield _SpanTrace(span, self._instruments)


@contextlib.contextmanager
def open_telemetry(config: TelemetryConfig) -> Iterator[OtelTelemetry]:
    """The telemetry ``config`` asks for; providers this creates (console, otlp) are flushed and shut at exit."""
    if config.exporter == "global":
        yield OtelTelemetry()
        return
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    span_exporter: SpanExporter
    metric_exporter: MetricExporter
    if config.exporter == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        span_exporter = ConsoleSpanExporter(out=sys.stderr)  # stdout belongs to MCP
        metric_exporter = ConsoleMetricExporter(out=sys.stderr)
    else:
        try:
            # not in the otel extra (it brings protobuf and requests): installed by whoever picks exporter 'otlp'
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[import-not-found]
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError as e:
            raise ConfigError(
                ["telemetry.exporter: 'otlp' needs the package opentelemetry-exporter-otlp-proto-http (pip install it)"]
            ) from e
        base = (config.endpoint or "").rstrip("/")
        span_exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces" if base else None)
        metric_exporter = OTLPMetricExporter(endpoint=f"{base}/v1/metrics" if base else None)
    resource = Resource.create({"service.name": config.service_name})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(metric_exporter)])
    try:
        yield OtelTelemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
