"""Observability: OpenTelemetry tracing set-up and W3C context propagation.

``setup_tracing(actor, instance)`` once per process; ``get_tracer()`` for spans;
``inject_context(msg_dict)`` / ``extract_context(msg_dict)`` / ``start_span_from`` carry a
trace across control messages.  See docs/telemetry.md.
"""

from maglev.telemetry.tracing import (
    SERVICE_NAME,
    current_provider,
    extract_context,
    get_tracer,
    inject_context,
    otlp_traces_url,
    setup_tracing,
    shutdown_tracing,
    start_span_from,
)

__all__ = [
    "SERVICE_NAME",
    "current_provider",
    "extract_context",
    "get_tracer",
    "inject_context",
    "otlp_traces_url",
    "setup_tracing",
    "shutdown_tracing",
    "start_span_from",
]
