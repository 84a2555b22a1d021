"""Run by test_otlp_wire.py as a separate process: continue the trace whose W3C context
arrives as JSON on argv[1], make one child span, flush, exit."""

import json
import sys

from maglev.telemetry import get_tracer, setup_tracing, shutdown_tracing, start_span_from


def main() -> None:
    carrier = json.loads(sys.argv[1])
    setup_tracing(actor="child", instance="test-wire")  # endpoint from the environment
    with start_span_from(carrier, "child.apply", {"maglev.generation": 7}):
        with get_tracer().start_as_current_span("child.inner"):
            pass
    shutdown_tracing()


if __name__ == "__main__":
    main()
