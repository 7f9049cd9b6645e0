"""OpenTelemetry (the ``otel`` extra): a span per gated call through the real proxy path, hold metrics, the
client's trace joined through ``_meta.traceparent``, config that fails closed, and a real ``wrap`` process."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness import ROOT, raw_wrap, wrap_params
from mcp import Client
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from upstreams.feature_server import FeatureServer, build_server

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import TelemetryConfig, parse_config
from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import CallRecord, Decision
from mcp_gatekeeper.otel import OtelTelemetry
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.proxy import Proxy
from mcp_gatekeeper.serve import telemetry_for
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.telemetry import NO_TELEMETRY
from mcp_gatekeeper.upstream import Upstream

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
CONFIG = """
[ui]
autostart = false
[[rules]]
name = "notes-to-tmp"
tool = "write_note"
gate = "hard"
risk = "high"
[[rules]]
name = "fast-timeout"
tool = "add_tool"
gate = "hard"
timeout = "1s"
[[rules]]
name = "reads"
tool = "echo"
gate = "allow"
"""


class HeldQueue:
    def __init__(self) -> None:
        self.send, self.recv = anyio.create_memory_object_stream[CallRecord](100)

    async def held(self, call: CallRecord) -> None:
        await self.send.send(call)


@dataclass
class Traced:
    proxy: Proxy
    gate: Gate
    held: HeldQueue
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    upstream: FeatureServer

    def client(self) -> Client:
        return Client(self.proxy.build_server(), mode="legacy")

    def span(self) -> ReadableSpan:
        [span] = self.spans.get_finished_spans()
        return span

    def points(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Metric name -> [(attributes, value or histogram count)]."""
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.metrics.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        value = getattr(p, "value", None)
                        out.setdefault(m.name, []).append(
                            (dict(p.attributes or {}), value if value is not None else p.count)
                        )
        return out


@contextlib.asynccontextmanager
async def traced(tmp_path: Path) -> AsyncIterator[Traced]:
    config = parse_config(CONFIG)
    clock = SystemClock()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    telemetry = OtelTelemetry(tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader]))
    held = HeldQueue()
    upstream_server = build_server(None)
    async with Store.open(tmp_path / "gk.db", clock) as store:
        await store.register_instance("test")
        gate = Gate(store, Policy(config), clock, notifier=held, heartbeat_interval=0.05)
        proxy = Proxy(config=config, policy=gate.policy, gate=gate, clock=clock, telemetry=telemetry)
        up = Upstream("feat", None, proxy.hooks(), target=upstream_server)
        proxy.upstreams = {"feat": up}
        async with gate.running(), up.running(), held.send, held.recv:
            await up.connect()
            yield Traced(proxy, gate, held, spans, reader, upstream_server)


@pytest.fixture
async def t(tmp_path: Path) -> AsyncIterator[Traced]:
    async with traced(tmp_path) as s:
        yield s


async def test_a_held_call_is_one_span_in_the_clients_trace(t: Traced) -> None:
    results: list[Any] = []
    with anyio.fail_after(10):
        async with t.client() as c, anyio.create_task_group() as tg:

            async def call() -> None:
                meta: Any = {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
                results.append(await c.call_tool("write_note", {"path": "/tmp/a", "content": "x"}, meta=meta))

            tg.start_soon(call)
            rec = await t.held.recv.receive()
            await t.gate.decide(
                rec.id, Decision(approve=True, decided_by="web:alice", channel="web", args_digest=rec.args_digest)
            )
    assert not results[0].is_error and [x["tool"] for x in t.upstream.state.calls] == ["write_note"]
    span = t.span()
    assert span.name == "tools/call write_note" and span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID  # joined to the client's trace
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID and span.parent.is_remote
    a = dict(span.attributes or {})
    assert {k: a[k] for k in (
        "mcp.method.name", "gen_ai.tool.name", "mcp_gatekeeper.upstream", "mcp_gatekeeper.plan",
        "mcp_gatekeeper.verdict", "mcp_gatekeeper.gate", "mcp_gatekeeper.rule", "mcp_gatekeeper.risk",
        "mcp_gatekeeper.decision", "mcp_gatekeeper.reviewer.channel", "mcp_gatekeeper.outcome", "mcp_gatekeeper.call_id",
    )} == {
        "mcp.method.name": "tools/call", "gen_ai.tool.name": "write_note", "mcp_gatekeeper.upstream": "feat",
        "mcp_gatekeeper.plan": "hold", "mcp_gatekeeper.verdict": "hold", "mcp_gatekeeper.gate": "hard",
        "mcp_gatekeeper.rule": "notes-to-tmp", "mcp_gatekeeper.risk": "high", "mcp_gatekeeper.decision": "approved",
        "mcp_gatekeeper.reviewer.channel": "web", "mcp_gatekeeper.outcome": "ok", "mcp_gatekeeper.call_id": rec.id,
    }  # fmt: skip
    assert 0 <= a["mcp_gatekeeper.wait_seconds"] < 10
    assert "alice" not in json.dumps({k: str(v) for k, v in a.items()})  # reviewer names are never attributes
    points = t.points()
    assert points["mcp_gatekeeper.calls.held"] == [({"mcp_gatekeeper.rule": "notes-to-tmp"}, 1)]
    assert points["mcp_gatekeeper.calls.decided"] == [
        (
            {
                "mcp_gatekeeper.rule": "notes-to-tmp",
                "mcp_gatekeeper.decision": "approved",
                "mcp_gatekeeper.reviewer.channel": "web",
            },
            1,
        )
    ]
    assert [count for _, count in points["mcp_gatekeeper.hold.wait"]] == [1]
    assert "mcp_gatekeeper.calls.timed_out" not in points


async def test_a_rejection_and_a_timeout(t: Traced) -> None:
    with anyio.fail_after(10):
        async with t.client() as c, anyio.create_task_group() as tg:
            results: list[Any] = []

            async def call(name: str, args: dict[str, Any]) -> None:
                results.append(await c.call_tool(name, args))

            tg.start_soon(call, "write_note", {"path": "/tmp/b", "content": "y"})
            rec = await t.held.recv.receive()
            await t.gate.decide(rec.id, Decision(approve=False, decided_by="cli:bob", channel="cli", reason="no"))
            tg.start_soon(call, "add_tool", {"name": "x"})
            await t.held.recv.receive()  # nobody answers: the rule's 1 s timeout rejects it
    assert all(r.is_error for r in results)
    by_tool = {
        dict(s.attributes or {})["gen_ai.tool.name"]: dict(s.attributes or {}) for s in t.spans.get_finished_spans()
    }
    assert by_tool["write_note"]["mcp_gatekeeper.decision"] == "rejected"
    assert by_tool["write_note"]["mcp_gatekeeper.outcome"] == "error"
    assert by_tool["add_tool"]["mcp_gatekeeper.decision"] == "timed_out"
    assert by_tool["add_tool"]["mcp_gatekeeper.wait_seconds"] >= 1
    assert "mcp_gatekeeper.reviewer.channel" not in by_tool["add_tool"]
    points = t.points()
    assert points["mcp_gatekeeper.calls.timed_out"] == [({"mcp_gatekeeper.rule": "fast-timeout"}, 1)]
    assert [(a["mcp_gatekeeper.decision"], n) for a, n in points["mcp_gatekeeper.calls.decided"]] == [("rejected", 1)]
    assert sum(n for _, n in points["mcp_gatekeeper.calls.held"]) == 2


@pytest.mark.parametrize(
    "meta",
    [
        None,
        {"traceparent": "not-a-traceparent"},
        {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},
        {"traceparent": 7},
    ],
)
async def test_an_allowed_call_without_a_usable_traceparent_starts_its_own_trace(t: Traced, meta: Any) -> None:
    with anyio.fail_after(10):
        async with t.client() as c:
            result = await c.call_tool("echo", {"text": "hi"}, meta=meta)
    assert not result.is_error
    span = t.span()
    assert span.parent is None and format(span.context.trace_id, "032x") != TRACE_ID
    a = dict(span.attributes or {})
    assert (a["mcp_gatekeeper.plan"], a["mcp_gatekeeper.verdict"], a["mcp_gatekeeper.rule"]) == (
        "allow",
        "allow",
        "reads",
    )
    assert "mcp_gatekeeper.decision" not in a
    assert "mcp_gatekeeper.calls.held" not in t.points()


async def test_telemetry_on_keeps_every_call_off_the_fast_lane(t: Traced) -> None:
    assert t.proxy.telemetry.enabled
    assert t.proxy.plan_fast({"name": "echo", "arguments": {"text": "hi"}}) is None


def test_telemetry_config_fails_closed() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config('[telemetry]\nenabled = true\nexporter = "zipkin"\nsample = 1\n')
    text = str(e.value)
    assert "telemetry.exporter" in text and "telemetry.sample" in text
    with pytest.raises(ConfigError, match="telemetry"):
        parse_config('[telemetry]\nendpoint = "http://127.0.0.1:4318"\n')  # only for exporter 'otlp'
    with pytest.raises(ConfigError, match="telemetry"):
        parse_config('[telemetry]\nexporter = "otlp"\nendpoint = "file:///etc/passwd"\n')


def test_the_factory_gives_nothing_when_off_and_the_sdk_when_on() -> None:
    with telemetry_for(TelemetryConfig()) as off:
        assert off is NO_TELEMETRY and not off.enabled
    with telemetry_for(TelemetryConfig(enabled=True)) as on:
        assert isinstance(on, OtelTelemetry)
    with telemetry_for(TelemetryConfig(enabled=True, exporter="console")) as console:
        assert isinstance(console, OtelTelemetry)


RAW_SERVER = ROOT / "tests" / "upstreams" / "raw_server.py"


async def test_a_real_wrap_process_exports_the_span_with_the_clients_trace_id(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cfg = tmp_path / "gk.toml"
    cfg.write_text('[ui]\nautostart = false\n[telemetry]\nenabled = true\nexporter = "console"\n'
                   '[[rules]]\nname = "echo-ok"\ntool = "echo"\ngate = "allow"\n')  # fmt: skip
    params = wrap_params(home, cfg, "raw", [sys.executable, str(RAW_SERVER), "--log", str(tmp_path / "up.log")])
    async with raw_wrap(params) as c:
        reply = await c.request(
            1, "tools/call", {"name": "echo", "arguments": {"x": 1}, "_meta": {"traceparent": TRACEPARENT}}
        )
        assert "result" in reply and not reply["result"].get("isError")
    err = "".join(c.watcher.lines)
    spans = [json.loads(m) for m in re.findall(r"^\{\n.*?^\}$", err, re.S | re.M) if '"trace_id"' in m]
    [span] = [s for s in spans if s.get("name") == "tools/call echo"]
    assert span["context"]["trace_id"] == f"0x{TRACE_ID}" and span["parent_id"] == f"0x{PARENT_ID}"
    assert span["attributes"]["mcp_gatekeeper.rule"] == "echo-ok"


async def test_a_huge_tool_name_does_not_make_a_huge_span(t: Traced) -> None:
    with anyio.fail_after(10):
        async with t.client() as c:
            result = await c.call_tool("x" * 100_000, {})
    assert result.is_error  # no such tool
    span = t.span()
    assert len(span.name) <= len("tools/call ") + 200
    assert all(len(str(v)) <= 200 for v in (span.attributes or {}).values())
