"""SCHED_FIFO for the data-path actors while they are lightly loaded (maglev/actors/sched.py,
``Actor.sched_setup`` / ``Actor._rt_govern``, ``--rt-prio``): who gets which policy, the
governor's demotion of a busy actor and its return, also after the actor dropped its
capabilities (workers then keep CAP_SYS_NICE when RLIMIT_RTPRIO cannot be raised), and the
saturated actor of a flood going SCHED_OTHER."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from maglev.actors.pipeline import Pipeline, PipelineOptions
from maglev.errors import ConfigError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root (CAP_SYS_NICE); not root here")

GOVERN = r"""
import os, sys, time
from maglev.actors.base import Actor
from maglev.actors.sched import RT_PERIOD_S
a = Actor.__new__(Actor)
a.kind, a.name, a.params = "worker", "t", {"rt_prio": 5}
a._rt_prio, a._rt_on, a.rt_demotions = 0, False, 0
a.caps_after_setup = ()  # as a worker: no capabilities after setup
a.sched_setup()
print(os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO, os.sched_getparam(0).sched_priority)
if sys.argv[1] == "drop":
    from maglev.service.privileges import drop_to
    drop_to(set(a.caps_after_setup))  # what Actor._drop_caps does after setup
a._rt_govern(time.monotonic())  # the first tick starts the first span
t = time.monotonic()
while time.monotonic() - t < 2 * RT_PERIOD_S:  # busy: the whole span on the CPU
    pass
a._rt_govern(time.monotonic())
print(os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO, a.rt_demotions)
# (on a CPU or waiting for one the whole span, whatever else runs on the machine)
time.sleep(2 * RT_PERIOD_S)  # calm again
a._rt_govern(time.monotonic())
print(os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO, os.sched_getparam(0).sched_priority)
"""


def _child(how: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", GOVERN, how], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 0, r.stderr
    return r.stdout.split("\n")[:3]


@needs_root
@pytest.mark.parametrize("how", ["keep", "drop"])
def test_governor_demotes_a_busy_actor_and_brings_it_back(how):
    assert _child(how) == ["True 6", "False 1", "True 6"]  # worker = base + 1


def _policies(p: Pipeline) -> dict[str, tuple[int, int]]:
    out = {}
    for n in p.supervisor.children:
        pid = p.supervisor.pid(n)
        out[n] = (os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(pid).sched_priority)
    return out


@needs_root
def test_data_path_runs_fifo_when_asked_and_other_by_default():
    fifo, other = os.SCHED_FIFO, os.SCHED_OTHER
    p = Pipeline(PipelineOptions(workers=2, nic="gen:rate=1000,flows=10", rt_prio=1, placement="spread"))
    try:
        p.start()
        got = _policies(p)
        p.stop()
    finally:
        p.close()
    assert got.pop("steering") == (fifo, 1) and got.pop("worker-0") == (fifo, 2)
    assert got.pop("worker-1") == (fifo, 2) and got.pop("muxer") == (fifo, 3)
    assert not got, got
    p = Pipeline(PipelineOptions(workers=1, nic="gen:rate=1000,flows=10"))  # the default: off
    try:
        p.start()
        got = _policies(p)
        p.stop()
    finally:
        p.close()
    assert all(v == (other, 0) for v in got.values()), got


@needs_root
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs for the placement")
def test_crowded_workers_stay_sched_other():
    """More workers than CPUs: workers sharing a CPU with another worker do not run
    SCHED_FIFO (placement.idle_params); steering and the muxer do."""
    fifo, other = os.SCHED_FIFO, os.SCHED_OTHER
    p = Pipeline(PipelineOptions(workers=3, nic="gen:rate=1000,flows=10", cpus="0-1", rt_prio=1,
                                 placement="spread"))
    try:
        p.start()
        got = _policies(p)
        p.stop()
    finally:
        p.close()
    # spread on 2 CPUs: worker 0 and worker 2 share CPU 1; worker 1 shares CPU 0 with steering and the muxer
    assert got == {"steering": (fifo, 1), "muxer": (fifo, 3), "worker-0": (other, 0), "worker-1": (fifo, 2),
                   "worker-2": (other, 0)}


@needs_root
def test_a_flood_drops_the_saturated_actor_to_sched_other():
    """In a flood one actor is the bottleneck (on this machine worker 0, alone on its CPU;
    steering and the muxer then sleep part of the time and stay SCHED_FIFO): it never
    sleeps, so it must not keep its CPU from everything else."""
    p = Pipeline(PipelineOptions(workers=1, nic="gen:flows=100", rt_prio=1))  # no rate: as fast as it goes
    try:
        p.start()
        pids = [p.supervisor.pid(n) for n in ("steering", "worker-0")]
        deadline = time.monotonic() + 10
        while all(os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO for pid in pids):
            assert time.monotonic() < deadline, "steering and worker 0 stayed SCHED_FIFO through a flood"
            p.poll(0.05)
        p.stop()
    finally:
        p.close()


def test_rt_prio_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="rt-prio"):
        Pipeline(PipelineOptions(workers=1, rt_prio=98))
