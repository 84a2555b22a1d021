"""Deaths and freezes at the stop: every packet still counted, the stop still prompt.

A data-path actor that dies while the run stops (``kill -9`` during the stop, killed by
the stop's own timeout, or waiting for a back-off restart when the stop begins) used to
leave what waited on its rings to nobody: steering had counted those packets as received,
no worker judged them, and the summary missed them (``packets_in`` 69835 against 67787
forwarded + dropped, ``rx0=2048`` frames in the pool, and ``maglev run`` still exited 0).
Now the supervisor starts a replacement that only drains (``ActorSpec.drain_only``).  And
a frozen actor (SIGSTOP) acted on neither the stop message nor SIGTERM: the stop waited 7 s
and killed it; now it is continued (SIGCONT) when the stop begins and stops normally.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from maglev.actors.pipeline import Pipeline, PipelineOptions
from tests.run_helpers import poll_until_eof

RING = 512


def exact(s: dict) -> None:
    assert s["pool"]["ok"], s["pool"]["detail"]
    assert s["packets_in"] == s["forwarded"] + sum(s["dropped"].values()), s


def _pipeline() -> Pipeline:
    p = Pipeline(PipelineOptions(workers=2, nic="gen:flows=1000,rate=20000,seconds=60", ring_size=RING))
    p.start()
    return p


def _until(p: Pipeline, cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        p.poll(0.02)


def _frozen_with_a_full_ring(p: Pipeline, actor: str = "worker-0") -> int:
    """SIGSTOP ``actor`` (a worker) once traffic flows, and wait until its rx ring is full."""
    _until(p, lambda: p.counters()["packets_in"] > 5000, "traffic")
    pid = p.supervisor.pid(actor)
    os.kill(pid, signal.SIGSTOP)
    _until(p, lambda: p.region.rx(0).count() == RING, "worker-0's ring full while it is frozen")
    return pid


def test_a_worker_killed_while_steering_drains_at_the_stop_still_has_its_ring_counted():
    p = _pipeline()
    try:
        pid = _frozen_with_a_full_ring(p)
        wake = p.supervisor.wake

        def kill_during_steerings_drain(name: str) -> None:  # right after steering's stop
            wake(name)
            if name == "steering":
                os.kill(pid, signal.SIGKILL)

        p.supervisor.wake = kill_during_steerings_drain
        p.stop()
        s = p.summary()
        ev = [w for _, n, w in p.supervisor.events if n == "worker-0"]
    finally:
        p.close()
    exact(s)
    assert any(w.startswith("drain after a death during the stop") for w in ev), ev


def test_a_worker_waiting_for_its_back_off_restart_at_the_stop_is_drained():
    p = _pipeline()
    try:
        sup = p.supervisor
        sup.max_restarts, sup.restart_backoff_s, sup.restart_backoff_max_s = 0, 600.0, 600.0
        _until(p, lambda: p.counters()["packets_in"] > 5000, "traffic")
        os.kill(sup.pid("worker-0"), signal.SIGKILL)
        _until(p, lambda: sup.children["worker-0"].restart_at > 0 and p.region.rx(0).count() > 0,
               "worker-0 dead, its restart delayed, packets on its ring")
        p.stop()
        s = p.summary()
    finally:
        p.close()
    exact(s)
    assert s["restarts"]["worker-0"] == 1  # the drain-only incarnation


@pytest.mark.parametrize("actor", ["steering", "worker-0", "muxer"])
def test_a_frozen_actor_is_continued_at_the_stop_and_stops_by_itself(actor):
    p = _pipeline()
    try:
        _until(p, lambda: p.counters()["packets_in"] > 5000, "traffic")
        pid = p.supervisor.pid(actor)
        os.kill(pid, signal.SIGSTOP)
        t = time.monotonic() + 0.5
        while time.monotonic() < t:  # frozen under load for a while (rings fill behind it)
            p.poll(0.02)
        p.stop()
        c = p.supervisor.children[actor]
        s = p.summary()
    finally:
        p.close()
    exact(s)
    assert c.bye and c.exit_code == 0, (c.bye, c.exit_code)  # it drained: not killed by the timeout
    assert sum(s["restarts"].values()) == 0, s["restarts"]


def test_an_idle_generator_run_still_stops_clean():
    """The stop's new steps change nothing for a run where nobody died."""
    p = Pipeline(PipelineOptions(workers=2, nic="gen:packets=20000,flows=100", ring_size=RING))
    try:
        p.start()
        poll_until_eof(p)
        p.stop()
        s = p.summary()
    finally:
        p.close()
    assert not any("drain" in w for _, _, w in p.supervisor.events)
    exact(s)
