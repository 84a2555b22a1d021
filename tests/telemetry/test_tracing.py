"""setup_tracing, the tracer switch and W3C context propagation, with an in-memory
exporter (no network)."""

from __future__ import annotations

import logging

import msgpack
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from maglev.telemetry import (
    extract_context,
    get_tracer,
    inject_context,
    otlp_traces_url,
    setup_tracing,
    shutdown_tracing,
    start_span_from,
)
from maglev.telemetry.tracing import _ReportingExporter


def _finished(provider, exporter):
    provider.force_flush()
    return exporter.get_finished_spans()


def test_resource_attributes_name_the_actor_and_instance():
    mem = InMemorySpanExporter()
    provider = setup_tracing("worker-3", "mg1", exporter=mem)
    try:
        with get_tracer("t").start_as_current_span("switch"):
            pass
        (span,) = _finished(provider, mem)
        attrs = span.resource.attributes
        assert attrs["service.name"] == "maglev"
        assert attrs["maglev.actor"] == "worker-3"
        assert attrs["maglev.instance"] == "mg1"
    finally:
        shutdown_tracing()


def test_tracers_follow_a_new_setup_and_the_global_api_too():
    early = get_tracer("made-before-setup")  # e.g. a module-level tracer
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    p1 = setup_tracing("a", "i", exporter=first)
    with early.start_as_current_span("one"):
        pass
    p1.force_flush()
    p2 = setup_tracing("b", "i", exporter=second)
    try:
        with early.start_as_current_span("two"):
            pass
        with trace.get_tracer("via-global-api").start_as_current_span("three"):
            pass
        assert [s.name for s in first.get_finished_spans()] == ["one"]
        assert sorted(s.name for s in _finished(p2, second)) == ["three", "two"]
        assert {s.resource.attributes["maglev.actor"] for s in second.get_finished_spans()} == {"b"}
    finally:
        shutdown_tracing()


def test_context_survives_a_msgpack_round_trip_and_parents_the_remote_span():
    mem = InMemorySpanExporter()
    provider = setup_tracing("ctl", "mg1", exporter=mem)
    try:
        tr = get_tracer()
        with tr.start_as_current_span("ctl.request") as parent:
            msg = {"v": 1, "op": "set-weight", "trace": inject_context()}
        wire = msgpack.unpackb(msgpack.packb(msg), raw=False)
        assert wire["trace"]["traceparent"].startswith("00-")
        with start_span_from(wire["trace"], "config.apply", {"maglev.vip": "203.0.113.10"}):
            pass
        spans = {s.name: s for s in _finished(provider, mem)}
        child = spans["config.apply"]
        assert child.context.trace_id == parent.get_span_context().trace_id
        assert child.parent.span_id == parent.get_span_context().span_id
        assert child.parent.is_remote
        assert child.attributes["maglev.vip"] == "203.0.113.10"
    finally:
        shutdown_tracing()


def test_bad_carriers_start_a_new_trace_instead_of_failing():
    mem = InMemorySpanExporter()
    provider = setup_tracing("config", "mg1", exporter=mem)
    try:
        for carrier in (None, {}, {"traceparent": "garbage"}, {"traceparent": 17}, [1, 2]):
            assert not trace.get_current_span(extract_context(carrier)).get_span_context().is_valid
            with start_span_from(carrier, "apply"):
                pass
        spans = _finished(provider, mem)
        assert len(spans) == 5
        assert all(s.parent is None for s in spans)
        assert len({s.context.trace_id for s in spans}) == 5
    finally:
        shutdown_tracing()


def test_bytes_values_from_msgpack_raw_mode_are_accepted():
    mem = InMemorySpanExporter()
    setup_tracing("config", "mg1", exporter=mem)
    try:
        with get_tracer().start_as_current_span("root") as root:
            carrier = {k: v.encode() for k, v in inject_context().items()}
        ctx = extract_context(carrier)
        got = trace.get_current_span(ctx).get_span_context()
        assert got.trace_id == root.get_span_context().trace_id
    finally:
        shutdown_tracing()


def test_inject_without_a_span_writes_nothing():
    assert inject_context({"keep": 1}) == {"keep": 1}


def test_otlp_traces_url():
    assert otlp_traces_url("http://localhost:4318") == "http://localhost:4318/v1/traces"
    assert otlp_traces_url("http://localhost:4318/") == "http://localhost:4318/v1/traces"
    assert otlp_traces_url("localhost:4318") == "http://localhost:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/custom/v1/traces") == "http://c:4318/custom/v1/traces"


class _FailingExporter(SpanExporter):
    def __init__(self) -> None:
        self.calls = 0
        self.fail = True

    def export(self, spans):
        self.calls += 1
        return SpanExportResult.FAILURE if self.fail else SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def test_collector_outage_is_reported_once_and_not_hammered(caplog):
    inner = _FailingExporter()
    rep = _ReportingExporter(inner, "http://127.0.0.1:9/v1/traces", probe_interval=60.0)
    with caplog.at_level(logging.INFO, logger="maglev.telemetry"):
        for _ in range(20):
            assert rep.export([]) is SpanExportResult.FAILURE
        # Only the first batch reached the collector; the rest waited for the probe time.
        assert inner.calls == 1
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "maglev keeps working" in warnings[0].getMessage()
        inner.fail = False
        rep._next_probe = 0.0  # the probe interval has passed
        assert rep.export([]) is SpanExportResult.SUCCESS
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert infos == [
            "trace export to http://127.0.0.1:9/v1/traces works again "
            "(20 span batches were dropped meanwhile)"
        ]


def test_endpoint_resolution_follows_the_otel_variables(monkeypatch):
    from maglev.telemetry.tracing import _otlp_exporter

    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    assert _otlp_exporter(None) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://10.9.9.9:4318")
    assert _otlp_exporter(None)[1] == "http://10.9.9.9:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:1/custom")
    assert _otlp_exporter(None)[1] == "http://c:1/custom"  # the specific one wins
    assert _otlp_exporter("http://127.0.0.1:4318")[1] == "http://127.0.0.1:4318/v1/traces"
