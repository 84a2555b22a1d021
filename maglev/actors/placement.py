"""Where each actor of a run goes (CPU placement) and the idle policy that follows from it.

``plan_cpus``: steering and the muxer share the first CPU (both are light per packet and
talk to every worker); workers go round-robin over the other CPUs (``apart``, the default)
or over all CPUs starting with the second (``spread``); with one CPU everything shares it.
``doorbell_spin`` and ``idle_params``: an actor that shares its CPU does not busy-poll
against its neighbours.  A leaf: ``maglev.actors.pipeline`` (the
run) and ``maglev.actors.dispatch`` (which worker gets a flow, weighted by this placement)
both use it, so neither has to import the other.
"""

from __future__ import annotations

import os


def parse_cpus(text: str | None) -> list[int]:
    """``"0,2-3"`` -> [0, 2, 3]; empty -> the CPUs this process may use."""
    from maglev.errors import ConfigError

    if not text:
        return sorted(os.sched_getaffinity(0))
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if lo > hi:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ConfigError([f"--cpus: {part!r} is not a CPU number or range like 0-3"]) from None
    allowed = os.sched_getaffinity(0)
    bad = [c for c in out if c not in allowed]
    if bad:
        raise ConfigError([f"--cpus: CPU(s) {bad} not available here (available: {sorted(allowed)})"])
    return sorted(set(out))


PLACEMENTS = ("apart", "spread")  # `maglev run --placement`


def plan_cpus(n_workers: int, cpus: list[int], placement: str = "apart") -> dict[str, list[int]]:
    """Steering and muxer on cpus[0]; workers round-robin starting at cpus[1].

    ``apart`` (the default): workers use only the CPUs after the first, so steering's CPU
    runs steering and the muxer alone.  ``spread``: workers go round-robin over all CPUs,
    so with more workers than spare CPUs the next ones also use what steering and the
    muxer leave (then ``PipelineOptions.steer_cost`` can weight the flow map).
    Measured on 2 vCPUs, 2026-12-08 (docs/benchmarks.md): with two workers, ``apart``
    (both on CPU 1) forwarded 7.3-7.5 Mpps against 4.6-4.8 for ``spread``: a worker on
    steering's CPU keeps steering from feeding the other worker, and all of them wait.
    With one CPU everything shares it."""
    if placement not in PLACEMENTS:
        from maglev.errors import ConfigError

        raise ConfigError([f"--placement: {placement!r} is not one of {', '.join(PLACEMENTS)}"])
    plan = {"steering": [cpus[0]], "muxer": [cpus[0]]}
    if len(cpus) == 1:
        pool = cpus
    elif placement == "apart":
        pool = cpus[1:]
    else:
        pool = cpus[1:] + cpus[:1]
    for i in range(n_workers):
        plan[f"worker-{i}"] = [pool[i % len(pool)]]
    return plan


def doorbell_spin(plan: dict[str, list[int]], name: str, default: int = 256) -> int:
    """Busy-poll rounds before an idle data-path actor sleeps on its doorbell: the default
    when the actor has its CPU to itself, 0 when it shares it with another data-path actor
    (oversubscribed: its producer needs that very CPU to make the work it would spin for,
    so it sleeps at once and the kernel runs the sibling)."""
    mine = set(plan[name])
    return 0 if any(set(c) & mine for n, c in plan.items() if n != name) else default


# Adaptive idle window (mg_loop.h): after it last moved a packet, a data-path actor keeps
# polling its rings this long before it sleeps on its doorbell -- with PAUSE when it has
# its CPU to itself, with sched_yield() when it shares it.  Longer than the gap between
# packets at 10 kpps (100 us), so a trickle never pays a futex wake-up per hop; an idle
# pipeline sleeps 0.2 ms after its last packet.  0 = sleep at once (the old behaviour), the
# default: on the quiet machine (2026-12-07 05:13, docs/benchmarks.md) a 200 us window
# halved the W=2 p50 at 10 kpps (82 -> 41-57 us) but not the p99 (W=1 262-393 us without,
# 524-786 with) and took ~0.3 core more at that rate.  `maglev run --idle-poll-us 200`.
IDLE_POLL_US_DEFAULT = 0

# Nap under load (mg_loop.h, ctl->nap_ns): a data-path actor whose last stretch of work
# moved >= MG_NAP_MIN packets sleeps this long on the clock when its rings run dry, instead
# of on its doorbell, so its producers pay no futex wake-ups while the stream is heavy (a
# trickle still sleeps on the doorbell).  0 = off.  `maglev run --nap-us N`.
NAP_US_DEFAULT = 100


def idle_params(plan: dict[str, list[int]], name: str, idle_poll_us: int, rt_prio: int = 0,
                nap_us: int = 0) -> dict[str, int]:
    """An actor's idle policy: ``idle_us`` (the poll window), ``idle_mode`` (``MG_IDLE_PAUSE``
    alone on its CPU, ``MG_IDLE_YIELD`` when it shares the CPU with another data-path actor)
    , ``rt_prio`` (the run's SCHED_FIFO base, maglev/actors/sched.py) and ``nap_us`` (the
    nap under load, ``NAP_US_DEFAULT``).
    A worker that shares its CPU with another *worker* (more workers than CPUs) does not poll
    (``idle_us`` 0): several pollers on one CPU only yield to each other -- measured with 8
    workers on 2 CPUs, 2026-12-07: +25% CPU per packet and a lower rate with polling.  Nor
    does it run SCHED_FIFO (``rt_prio`` 0): crowded workers above steering's priority kept
    steering off CPU 0 in a flood (2026-12-07 session 5, W=8 on 2 CPUs: 0.27 Mpps against
    0.65 SCHED_OTHER), and they wake each other's CPU for small batches."""
    from maglev.native import lib

    shared = doorbell_spin(plan, name) == 0
    mine = set(plan[name])
    crowded = name.startswith("worker-") and any(
        set(c) & mine for n, c in plan.items() if n != name and n.startswith("worker-"))
    return {"idle_us": 0 if crowded else int(idle_poll_us),
            "idle_mode": int(lib.MG_IDLE_YIELD if shared else lib.MG_IDLE_PAUSE),
            "rt_prio": 0 if crowded else int(rt_prio), "nap_us": int(nap_us)}
