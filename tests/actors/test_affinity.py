"""CPU placement that holds (issue 13): every data-path actor process runs pinned where
``plan_cpus`` says, ``--cpus`` restricts the plan, and an actor that shares its CPU with
another data-path actor does not busy-poll its doorbell (it would spin on the very CPU its
producer needs)."""

from __future__ import annotations

import os

import psutil
import pytest

from maglev.actors.pipeline import Pipeline, PipelineOptions, doorbell_spin, idle_params, plan_cpus
from maglev.native import lib
from tests.run_helpers import poll_until_eof

SPIN = int(lib.MG_BELL_SPIN_DEFAULT)


def test_plan_on_two_cpus_and_who_spins():
    plan = plan_cpus(8, [0, 1])  # apart, the default: every worker on cpu 1
    assert plan["steering"] == plan["muxer"] == [0]
    assert [plan[f"worker-{i}"] for i in range(8)] == [[1]] * 8
    assert {n: doorbell_spin(plan, n) for n in plan} == dict.fromkeys(plan, 0)
    spread = plan_cpus(8, [0, 1], "spread")
    assert [spread[f"worker-{i}"] for i in range(8)] == [[1], [0]] * 4
    assert plan_cpus(3, [0, 1, 2]) == {"steering": [0], "muxer": [0], "worker-0": [1], "worker-1": [2],
                                       "worker-2": [1]}
    assert plan_cpus(3, [0, 1, 2], "spread")["worker-2"] == [0]
    assert plan_cpus(2, [3])["worker-1"] == [3]  # one CPU: everything shares it
    # steering and muxer share cpu 0, and every worker shares with a sibling: nobody spins
    assert {n: doorbell_spin(spread, n) for n in spread} == dict.fromkeys(spread, 0)
    one = plan_cpus(1, [0, 1])
    assert doorbell_spin(one, "worker-0") == SPIN  # worker 0 has cpu 1 to itself
    assert doorbell_spin(one, "steering") == doorbell_spin(one, "muxer") == 0
    assert doorbell_spin(plan_cpus(2, [0, 1, 2, 3]), "worker-1") == SPIN


def test_idle_policy_follows_the_plan():
    """Adaptive idle (mg_loop.h): PAUSE alone on a CPU, sched_yield when sharing it, and no
    polling for a worker that shares its CPU with another worker."""
    pause, yld = int(lib.MG_IDLE_PAUSE), int(lib.MG_IDLE_YIELD)
    two = plan_cpus(2, [0, 1], "spread")
    got = {n: idle_params(two, n, 200, 1, 100) for n in two}
    assert got == {"steering": {"idle_us": 200, "idle_mode": yld, "rt_prio": 1, "nap_us": 100},
                   "muxer": {"idle_us": 200, "idle_mode": yld, "rt_prio": 1, "nap_us": 100},
                   "worker-0": {"idle_us": 200, "idle_mode": pause, "rt_prio": 1, "nap_us": 100},  # cpu 1 alone
                   "worker-1": {"idle_us": 200, "idle_mode": yld, "rt_prio": 1, "nap_us": 100}}  # with the others
    apart = plan_cpus(2, [0, 1])  # both workers on cpu 1: crowded, they yield, neither polls
    assert idle_params(apart, "worker-0", 200, 1, 100) == {"idle_us": 0, "idle_mode": yld, "rt_prio": 0,
                                                          "nap_us": 100}
    eight = plan_cpus(8, [0, 1], "spread")
    # crowded: no polling, no SCHED_FIFO (sched.py)
    assert all(idle_params(eight, f"worker-{i}", 200, 1)["idle_us"] == 0 for i in range(8))
    assert all(idle_params(eight, f"worker-{i}", 200, 1)["rt_prio"] == 0 for i in range(8))
    assert idle_params(eight, "muxer", 200, 1) == {"idle_us": 200, "idle_mode": yld, "rt_prio": 1, "nap_us": 0}
    # the nap under load is a sleep, not a poll: crowded workers nap too
    assert all(idle_params(eight, f"worker-{i}", 200, 1, 100)["nap_us"] == 100 for i in range(8))
    assert idle_params(two, "worker-0", 0)["idle_us"] == 0  # --idle-poll-us 0: nobody polls
    p = Pipeline(PipelineOptions(workers=2, nic="gen:packets=100,flows=10", idle_poll_us=50, nap_us=70,
                                 placement="spread"))
    try:
        p.start()
        params = {d.name: d.params for d in p.actor_defs()}
        assert params["worker-0"]["idle_us"] == 50 and params["muxer"]["idle_mode"] == yld
        assert {params[n]["nap_us"] for n in ("steering", "worker-0", "worker-1", "muxer")} == {70}
        p.stop()
    finally:
        p.close()
    from maglev.errors import ConfigError

    with pytest.raises(ConfigError, match="idle-poll-us"):
        Pipeline(PipelineOptions(workers=2, idle_poll_us=-1))
    with pytest.raises(ConfigError, match="nap-us"):
        Pipeline(PipelineOptions(workers=2, nap_us=20_000))


def _affinities(p: Pipeline) -> dict[str, list[int]]:
    out = {}
    for name in p.supervisor.children:
        if name in ("steering", "muxer") or name.startswith("worker-"):
            out[name] = sorted(psutil.Process(p.supervisor.pid(name)).cpu_affinity())
    return out


@pytest.mark.parametrize("workers,cpus", [(3, ""), (2, "0")])
def test_every_actor_runs_where_the_plan_says(workers, cpus):
    avail = sorted(os.sched_getaffinity(0))
    p = Pipeline(PipelineOptions(workers=workers, nic="gen:packets=20000,flows=100", cpus=cpus))
    try:
        want = plan_cpus(workers, [0] if cpus == "0" else avail)
        p.start()
        got = _affinities(p)
        assert set(got) == {"steering", "muxer", *(f"worker-{i}" for i in range(workers))}
        assert got == {n: sorted(want[n]) for n in got}
        spins = {d.name: d.params.get("spin") for d in p.actor_defs() if d.name in got}
        assert spins == {n: doorbell_spin(want, n) for n in got}
        poll_until_eof(p)
        assert _affinities(p) == got  # still there after the traffic
        p.stop()
        s = p.summary()
        assert s["pool"]["ok"], s["pool"]
        assert s["forwarded"] + sum(s["dropped"].values()) == s["packets_in"] == 20000
    finally:
        p.close()
