"""W3C trace context travels in the envelope: the server's span is the client's child."""

from __future__ import annotations

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from maglev.control.client import ControlClient
from maglev.telemetry import get_tracer, setup_tracing, shutdown_tracing


def test_control_span_is_a_child_of_the_callers_span(served):
    exporter = InMemorySpanExporter()
    provider = setup_tracing("ctl-test", "t1", exporter=exporter)
    try:
        with get_tracer("test").start_as_current_span("operator") as parent, \
                ControlClient(served.server.bound_endpoint) as c:  # fmt: skip
            c.call("drain", {"vip": "203.0.113.10:80/tcp", "backend": "198.18.1.1"})
        provider.force_flush()
        spans = {s.name: s for s in exporter.get_finished_spans()}
        child = spans["control drain"]
        assert child.context.trace_id == parent.get_span_context().trace_id
        assert child.parent.span_id == parent.get_span_context().span_id
        assert child.attributes["maglev.control.ok"] is True
        assert child.attributes["maglev.generation"] == 2
    finally:
        shutdown_tracing()
