"""Every actor process exports lifecycle spans over OTLP/HTTP (decoded by a local receiver)."""

from __future__ import annotations

import os
import signal
import time

from maglev.actors.supervisor import ActorDef, Supervisor
from maglev.telemetry import setup_tracing, shutdown_tracing
from maglev.testing.otlp import OtlpReceiver

SLEEPER = "maglev.testing.actors:Sleeper"


def test_start_restart_and_stop_spans_reach_the_collector():
    with OtlpReceiver() as rx:
        setup_tracing("supervisor", "lab1", endpoint=rx.endpoint)
        sup = Supervisor([ActorDef("a", SLEEPER), ActorDef("b", SLEEPER)], instance="lab1",
                         otlp_endpoint=rx.endpoint)
        try:
            sup.start()
            sup.wait_ready()
            old = sup.pid("a")
            os.kill(old, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while not (sup.alive("a") and sup.pid("a") != old):
                assert time.monotonic() < deadline
                sup.poll(0.02)
            sup.stop()
        finally:
            sup.close()
            shutdown_tracing()  # flushes the supervisor's own spans

        def have(spans):
            names = {(s.actor, s.name) for s in spans}
            return {("b", "sleeper.start"), ("a", "sleeper.restart"), ("a", "sleeper.stop"),
                    ("b", "sleeper.stop"), ("supervisor", "supervisor.restart")} <= names

        spans = rx.wait_for(have, 15)
    restart = next(s for s in spans if s.name == "sleeper.restart")
    assert restart.resource["service.name"] == "maglev"
    assert restart.resource["maglev.instance"] == "lab1"
    assert restart.attributes["maglev.incarnation"] == 1
    sup_span = next(s for s in spans if s.name == "supervisor.restart")
    assert sup_span.attributes["maglev.actor"] == "a"
    assert "SIGKILL" in sup_span.attributes["maglev.cause"]
