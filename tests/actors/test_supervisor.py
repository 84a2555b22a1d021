"""The supervisor and actor base class, with do-nothing actors (no data path needed)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from maglev.actors.supervisor import ActorDef, Supervisor, SupervisorError
from tests.run_helpers import wait_standby_ready

SLEEPER = "maglev.testing.actors:Sleeper"


def wait_for(cond, timeout: float, sup: Supervisor) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        sup.poll(0.01)
        if cond():
            return time.monotonic() - t0
    raise AssertionError("condition not met in time")


def test_start_heartbeat_echo_and_clean_stop():
    sup = Supervisor([ActorDef("a", SLEEPER), ActorDef("b", SLEEPER, stop_group=1)])
    run_dir = sup.run_dir
    pids = []
    try:
        sup.start()
        sup.wait_ready()
        pids = [sup.pid("a"), sup.pid("b")]
        wait_for(lambda: sup.stats()["a"].get("ticks", 0) > 0, 3, sup)
        got = []
        sup.on_message = lambda name, msg: got.append((name, msg.get("body")))
        sup.send("b", "echo", body="hi")
        wait_for(lambda: got, 3, sup)
        assert got == [("b", "hi")]
        sup.stop()
        assert all(c.bye for c in sup.children.values())
        assert [c.exit_code for c in sup.children.values()] == [0, 0]
    finally:
        sup.close()
    assert not os.path.exists(run_dir)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_kill_9_is_restarted_within_a_second():
    sup = Supervisor([ActorDef("victim", SLEEPER), ActorDef("bystander", SLEEPER)])
    try:
        t0 = time.monotonic()
        sup.start()
        sup.wait_ready()
        cold = time.monotonic() - t0  # a cold start: interpreter and imports
        standby = wait_standby_ready(sup)
        old = sup.pid("victim")
        other = sup.pid("bystander")
        os.kill(old, signal.SIGKILL)
        took = wait_for(lambda: sup.alive("victim") and sup.pid("victim") != old, 5, sup)
        assert sup.pid("victim") == standby, "the replacement is not the standby process"
        # under a second on a quiet machine; on a loaded one, still faster than a cold start
        assert took < max(1.0, cold), f"replacement took {took:.2f} s (cold start {cold:.2f} s)"
        assert sup.restarts == {"victim": 1, "bystander": 0}
        assert sup.pid("bystander") == other
        assert sup.children["victim"].incarnation == 1
    finally:
        sup.close()


def test_crash_loop_gives_up_with_a_clear_error():
    sup = Supervisor([ActorDef("flaky", SLEEPER, {"crash_after_s": 0})], max_restarts=2,
                     restart_window_s=30)
    try:
        sup.start()
        wait_for(lambda: sup.failed, 30, sup)
        assert "flaky died 3 times" in sup.failed
        assert sup.restarts == {"flaky": 2}
    finally:
        sup.close()


def test_setup_failure_is_not_restarted():
    sup = Supervisor([ActorDef("bad", SLEEPER, {"fail_setup": True})])
    try:
        sup.start()
        with pytest.raises(SupervisorError, match="bad failed to start: RuntimeError: setup failure"):
            sup.wait_ready(5)
        assert sup.restarts == {"bad": 0}
    finally:
        sup.close()


def test_stop_kills_an_actor_that_does_not_drain_in_time():
    sup = Supervisor([ActorDef("slow", SLEEPER, {"drain_s": 30})], stop_timeout_s=0.5)
    try:
        sup.start()
        sup.wait_ready()
        pid = sup.pid("slow")
        t0 = time.monotonic()
        sup.stop()
        assert time.monotonic() - t0 < 5
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        sup.close()


def test_duplicate_names_are_refused():
    with pytest.raises(SupervisorError, match="duplicate"):
        Supervisor([ActorDef("x", SLEEPER), ActorDef("x", SLEEPER)])
