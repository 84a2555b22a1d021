"""End to end over the wire: OTLP/HTTP export into maglev.testing.otlp.OtlpReceiver,
across a process boundary via traceparent, and survival of a dead collector."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from maglev.telemetry import get_tracer, inject_context, setup_tracing, shutdown_tracing
from maglev.testing.otlp import OtlpReceiver

CHILD = Path(__file__).with_name("_child_span.py")


def test_spans_from_a_child_process_join_the_parent_trace():
    with OtlpReceiver() as rx:
        setup_tracing("parent", "test-wire", endpoint=rx.endpoint)
        try:
            with get_tracer().start_as_current_span("parent.request") as root:
                carrier = inject_context()
                env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
                env.update(rx.env())
                proc = subprocess.run(
                    [sys.executable, str(CHILD), json.dumps(carrier)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert proc.returncode == 0, proc.stderr
        finally:
            shutdown_tracing()  # flushes the parent span to the receiver
        spans = rx.wait_for(lambda ss: len(ss) >= 3, timeout=10)
        assert not rx.errors
        by_name = {s.name: s for s in spans}
        assert set(by_name) == {"parent.request", "child.apply", "child.inner"}
        parent, apply, inner = (by_name[n] for n in ("parent.request", "child.apply", "child.inner"))
        trace_id = f"{root.get_span_context().trace_id:032x}"
        assert {s.trace_id for s in spans} == {trace_id}
        assert parent.parent_span_id is None
        assert apply.parent_span_id == parent.span_id
        assert inner.parent_span_id == apply.span_id
        assert apply.attributes == {"maglev.generation": 7}
        assert parent.resource["maglev.actor"] == "parent"
        for s in (apply, inner):
            assert s.resource["service.name"] == "maglev"
            assert s.resource["maglev.actor"] == "child"
            assert s.resource["maglev.instance"] == "test-wire"
        # The child ran as another process: its resource says so.
        assert apply.resource["process.pid"] != parent.resource["process.pid"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_collector_costs_one_warning_and_no_blocking(caplog):
    port = _closed_port()  # nothing listens there any more
    with caplog.at_level(logging.WARNING):
        provider = setup_tracing("worker-0", "test-down", endpoint=f"http://127.0.0.1:{port}")
        try:
            tracer = get_tracer()
            t0 = time.perf_counter()
            for i in range(200):
                with tracer.start_as_current_span("burst", attributes={"i": i}):
                    pass
            elapsed = time.perf_counter() - t0
            for _ in range(3):
                provider.force_flush(timeout_millis=5000)
        finally:
            shutdown_tracing()
    # Making spans never waited on the network (200 spans in well under a second).
    assert elapsed < 1.0
    ours = [r for r in caplog.records if r.name == "maglev.telemetry"]
    assert len(ours) == 1, [r.getMessage() for r in caplog.records]
    assert "maglev keeps working" in ours[0].getMessage()
    # The OTLP library's per-attempt complaints were folded into that one line.
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry.exporter")]


def test_receiver_rejects_what_it_cannot_decode():
    import urllib.error
    import urllib.request

    with OtlpReceiver() as rx:
        req = urllib.request.Request(
            rx.traces_url, data=b"\xff\x00junk", headers={"Content-Type": "application/x-protobuf"}
        )
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("junk was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 400
        assert rx.errors and rx.spans == []
