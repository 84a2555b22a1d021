"""OpenTelemetry tracing for every maglev actor process.

Design
------
Each actor is its own OS process, so each one calls :func:`setup_tracing` once at start
with its role (``maglev.actor``: ``steering``, ``worker-0``, ``config``, ``ctl`` ...) and
the forwarder instance name.  The spans it makes carry a resource with
``service.name=maglev``, ``maglev.actor`` and ``maglev.instance``, so Jaeger shows one
service whose processes are told apart by those tags.

Export is OTLP over HTTP (Jaeger ingests it on port 4318) through a
``BatchSpanProcessor``: ending a span only appends it to an in-memory queue; a background
thread ships batches.  The actor's loop therefore never waits on the network, and when the
queue is full spans are dropped rather than the loop slowed.

A load balancer must keep forwarding when its collector is down.  The OTLP exporter
retries with backoff and logs every failed attempt; wrapped in :class:`_ReportingExporter`
it instead (1) logs *one* warning per outage, (2) stops contacting the collector for a
probe interval after a failure (so a dead collector costs one connection attempt per few
seconds, and process exit is not delayed by retries), and (3) logs once when export
works again, with the number of batches lost meanwhile.  The exporter library's own
per-attempt messages are filtered out for the same reason.

Cross-process context: control messages are plain dicts (msgpack), so the W3C
``traceparent``/``tracestate`` headers are injected into / extracted from a dict by
:func:`inject_context` / :func:`extract_context`.  A ctl request, the config manager's
apply and each worker's table switch then form one trace.

Re-configuration: OpenTelemetry's global tracer provider can be set only once per
process, yet tests set tracing up several times.  The global provider is therefore a thin
switch (:class:`_SwitchProvider`) that forwards to whatever provider the latest
``setup_tracing`` made; tracers from :func:`get_tracer` (or ``opentelemetry.trace``)
follow the switch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SERVICE_NAME = "maglev"
log = logging.getLogger("maglev.telemetry")

# Per-request timeout of the OTLP exporter unless OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT is
# set: a local Jaeger answers in milliseconds, and a short timeout bounds how long process
# exit can wait on a collector that vanished.
DEFAULT_EXPORT_TIMEOUT_S = 3.0
# After a failed export, batches are dropped without contacting the collector for this
# long; then one batch probes again.
PROBE_INTERVAL_S = 5.0

_ENV_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
_ENV_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
_ENV_TIMEOUTS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
# Loggers of the OTLP/HTTP exporter that report every failed attempt.
_NOISY_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
)

_propagator = TraceContextTextMapPropagator()
_lock = threading.Lock()
_provider: TracerProvider | None = None


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for ``endpoint``.

    A base address (``http://host:4318`` or ``http://host:4318/``) gets the standard
    ``/v1/traces`` path appended, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` does; a URL that already
    has a path is used as given (as ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is)."""
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


class _QuietFilter(logging.Filter):
    """Drops the OTLP exporter's per-attempt messages, remembering the last one so the
    single warning can say why export failed."""

    def __init__(self) -> None:
        super().__init__()
        self.last_message = ""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self.last_message = record.getMessage()
        except Exception:  # a malformed record must not break logging
            self.last_message = str(record.msg)
        return False


_quiet = _QuietFilter()


def _install_quiet_filter() -> None:
    for name in _NOISY_LOGGERS:
        lg = logging.getLogger(name)
        if _quiet not in lg.filters:
            lg.addFilter(_quiet)


class _ReportingExporter(SpanExporter):
    """Wraps an exporter: one warning per collector outage, probe-interval circuit
    breaker while it lasts, one info line when it is back."""

    def __init__(self, inner: SpanExporter, where: str, probe_interval: float = PROBE_INTERVAL_S):
        self._inner = inner
        self._where = where
        self._probe_interval = probe_interval
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._dropped_batches = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        now = time.monotonic()
        if self._down_since is not None and now < self._next_probe:
            self._dropped_batches += 1
            return SpanExportResult.FAILURE
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # the exporter thread must survive anything
            _quiet.last_message = repr(exc)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            if self._down_since is not None:
                log.info(
                    "trace export to %s works again (%d span batches were dropped meanwhile)",
                    self._where,
                    self._dropped_batches,
                )
                self._down_since = None
                self._dropped_batches = 0
            return result
        self._dropped_batches += 1
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "trace export to %s failed (%s); spans are dropped until it answers, "
                "maglev keeps working",
                self._where,
                _quiet.last_message or "no detail",
            )
        self._next_probe = time.monotonic() + self._probe_interval
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _otlp_exporter(endpoint: str | None) -> tuple[SpanExporter, str] | None:
    """An OTLP/HTTP exporter for ``endpoint`` or the standard environment variables,
    or None when neither names a collector."""
    env_traces = os.environ.get(_ENV_TRACES_ENDPOINT)
    env_base = os.environ.get(_ENV_ENDPOINT)
    if endpoint:
        url: str | None = otlp_traces_url(endpoint)
    elif env_traces:
        url = env_traces
    elif env_base:
        url = otlp_traces_url(env_base)
    else:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    timeout = None if any(os.environ.get(v) for v in _ENV_TIMEOUTS) else DEFAULT_EXPORT_TIMEOUT_S
    return OTLPSpanExporter(endpoint=url, timeout=timeout), url


class _SwitchTracer(trace.Tracer):
    """A tracer that forwards to the tracer of the current maglev provider (or a no-op
    tracer before ``setup_tracing``)."""

    def __init__(self, name: str, version: str | None, schema_url: str | None, attributes: Any):
        self._args = (name, version, schema_url, attributes)
        self._cached: tuple[TracerProvider | None, trace.Tracer] | None = None

    def _tracer(self) -> trace.Tracer:
        prov = _provider
        cached = self._cached
        if cached is not None and cached[0] is prov:
            return cached[1]
        real = prov.get_tracer(*self._args) if prov is not None else trace.NoOpTracer()
        self._cached = (prov, real)
        return real

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:  # type: ignore[override]
        return self._tracer().start_span(*args, **kwargs)

    @contextmanager  # type: ignore[override]
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:
        with self._tracer().start_as_current_span(*args, **kwargs) as span:
            yield span


class _SwitchProvider(trace.TracerProvider):
    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> trace.Tracer:
        return _SwitchTracer(
            instrumenting_module_name, instrumenting_library_version, schema_url, attributes
        )


_switch = _SwitchProvider()
_global_installed = False


def setup_tracing(
    actor: str,
    instance: str,
    endpoint: str | None = None,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """Set up tracing for this process and return its :class:`TracerProvider`.

    ``actor`` and ``instance`` become the resource attributes ``maglev.actor`` and
    ``maglev.instance`` (with ``service.name=maglev``).  Spans go to ``exporter`` when
    given (tests pass an in-memory exporter); else to the OTLP/HTTP collector at
    ``endpoint`` (``http://host:4318``) or the one named by
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``; else nowhere
    (spans still carry valid context, so traces stay connected across processes).
    Export always goes through a ``BatchSpanProcessor``.  Calling it again replaces the
    previous provider (which is shut down).
    """
    global _provider, _global_installed
    resource = Resource.create(
        {
            "service.name": SERVICE_NAME,
            "maglev.actor": actor,
            "maglev.instance": instance,
            "service.instance.id": f"{instance}/{actor}/{os.getpid()}",
            "process.pid": os.getpid(),
        }
    )
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        made = _otlp_exporter(endpoint)
        if made is not None:
            _install_quiet_filter()
            inner, url = made
            provider.add_span_processor(BatchSpanProcessor(_ReportingExporter(inner, url)))
    with _lock:
        old, _provider = _provider, provider
        if not _global_installed:
            trace.set_tracer_provider(_switch)
            _global_installed = True
    if old is not None:
        old.shutdown()
    return provider


def current_provider() -> TracerProvider | None:
    """The provider made by the latest :func:`setup_tracing`, or None."""
    return _provider


def shutdown_tracing() -> None:
    """Flush and stop the current provider (export is bounded by the export timeout)."""
    global _provider
    with _lock:
        old, _provider = _provider, None
    if old is not None:
        old.shutdown()


def get_tracer(name: str = "maglev") -> trace.Tracer:
    """A tracer that follows the current provider; safe to create at import time."""
    return _switch.get_tracer(name)


def inject_context(
    carrier: MutableMapping[str, Any] | None = None, ctx: otel_context.Context | None = None
) -> MutableMapping[str, Any]:
    """Write W3C ``traceparent`` (and ``tracestate`` if any) of ``ctx`` (default: the
    current span) into ``carrier`` (a new dict if None) and return it.  Nothing is
    written when there is no valid span."""
    if carrier is None:
        carrier = {}
    _propagator.inject(carrier, context=ctx)
    return carrier


def extract_context(carrier: Mapping[str, Any] | None) -> otel_context.Context:
    """The context carried by ``carrier`` (from :func:`inject_context`, possibly after a
    msgpack round trip).  Missing, non-string or malformed fields give an empty context,
    so a bad message never breaks its handler."""
    clean: dict[str, str] = {}
    if isinstance(carrier, Mapping):
        for key in ("traceparent", "tracestate"):
            value = carrier.get(key)
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            if isinstance(value, str):
                clean[key] = value
    return _propagator.extract(clean)


@contextmanager
def start_span_from(
    carrier: Mapping[str, Any] | None,
    name: str,
    attributes: Mapping[str, Any] | None = None,
    tracer: trace.Tracer | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
) -> Iterator[trace.Span]:
    """Start (as current) a span whose parent is the context carried by ``carrier``; a
    new trace when the carrier has none."""
    tr = tracer or get_tracer()
    with tr.start_as_current_span(
        name, context=extract_context(carrier), kind=kind, attributes=dict(attributes or {})
    ) as span:
        yield span
