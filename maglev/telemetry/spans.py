"""Span helpers that every actor and ``maglev ctl`` may use (low telemetry floor).

* :func:`client_span`: ``maglev ctl``'s CLIENT span, the root of a change's trace.
* The table-switch trace (issue 8: one ``maglev ctl set-weight`` = one trace).  When the
  config manager publishes generation g inside its ``config.publish`` span, it stores that
  span's W3C context next to g in the trace block (:func:`store_generation_context`; the
  words and their seqlock are C: ``maglev.rings.trace_block``).  Each worker notices in its
  tick that its stats block reports a new generation, reads the stored context (checking
  it is for *that* generation) and emits ``worker.generation_switch`` as a child of
  ``config.publish``, from the publication time to the moment it noticed
  (:class:`GenerationWatch`).  Storing the context in shared memory rather than sending it
  through the supervisor's mailboxes keeps it exactly as fresh as the tables themselves: a
  worker reads the context of the generation it actually switched to, and a restarted
  worker finds it too.  If two publications happen within one worker tick, the worker only
  reports the last one (the one it runs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from maglev.rings import trace_block
from maglev.telemetry.tracing import get_tracer, setup_tracing, shutdown_tracing

__all__ = ["GenerationWatch", "client_span", "load_generation_context", "store_generation_context"]


@contextmanager
def client_span(op: str, instance: str = "") -> Iterator[Any]:
    """``maglev ctl``: when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT``
    or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), run the request inside a CLIENT span
    ``ctl <op>`` -- the root of the change's trace, its context travels in the envelope --
    and flush it before the command exits.  Otherwise nothing is exported."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        yield None
        return
    from opentelemetry.trace import SpanKind

    setup_tracing("ctl", instance or "maglev")
    try:
        with get_tracer("maglev.ctl").start_as_current_span(
            f"ctl {op}", kind=SpanKind.CLIENT, attributes={"maglev.control.op": op}
        ) as span:
            yield span
    finally:
        shutdown_tracing()


def store_generation_context(region: Any, generation: int) -> None:
    """Config manager, right after publishing ``generation``: remember the current span."""
    from opentelemetry import trace

    sc = trace.get_current_span().get_span_context()
    if sc.is_valid:
        trace_block.store_generation(region, generation, sc.trace_id, sc.span_id, int(sc.trace_flags),
                                     time.time_ns())
    else:
        trace_block.store_generation(region, generation, 0, 0, 0, time.time_ns())


def load_generation_context(region: Any, generation: int) -> tuple[Any, int] | None:
    """(OpenTelemetry Context whose parent is the publish span, publication time in epoch
    ns) for ``generation``, or None when the stored context is for another generation."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    c = trace_block.load_generation(region)
    if c is None or c["generation"] != generation or not c["trace_id"] or not c["span_id"]:
        return None
    sc = SpanContext(trace_id=c["trace_id"], span_id=c["span_id"], is_remote=True,
                     trace_flags=TraceFlags(c["trace_flags"]))
    return trace.set_span_in_context(NonRecordingSpan(sc)), c["published_ns"]


class GenerationWatch:
    """Worker side: emit ``worker.generation_switch`` when the worker starts using a new
    tables generation (its stats block's generation word moved)."""

    def __init__(self, region: Any, worker: int):
        from maglev.native import lib
        from maglev.rings import worker_slot

        self.region = region
        self.worker = worker
        self._block = region.stats(worker_slot(worker))
        self._word = int(lib.MG_WS_GENERATION)
        self.last = self._block[self._word]
        self._tracer = get_tracer("maglev.worker")
        self.emitted = 0

    def poll(self) -> bool:
        gen = self._block[self._word]
        if gen == self.last or gen == 0:
            return False
        prev, self.last = self.last, gen
        found = load_generation_context(self.region, gen)
        if found is None:
            return False  # not published under a trace (start-up, or superseded)
        ctx, pub_ns = found
        now = time.time_ns()
        span = self._tracer.start_span("worker.generation_switch", context=ctx,
                                       start_time=min(pub_ns, now))
        span.set_attribute("maglev.worker", self.worker)
        span.set_attribute("maglev.generation", gen)
        span.set_attribute("maglev.previous_generation", prev)
        span.end(end_time=now)
        self.emitted += 1
        return True
