"""Wake-up latency of the data-path actors: SCHED_FIFO while they are lightly loaded (on by
default, ``--rt-prio``; the second half of this module) and an optional short EEVDF slice
(Linux >= 6.12).

A packet through maglev wakes three processes in turn (steering on the NIC, a worker on
its doorbell, the muxer on its doorbell).  On a busy machine each woken actor used to
wait for the task running on its CPU to use up its slice -- the kernel's default request
is 0.7 ms x (1 + log2 CPUs), 1.4 ms on this 2-vCPU VM -- so one request paid up to three
slices: the 1.6-2.4 ms "added latency" p50 the lab measured (docs/nic.md).

EEVDF lets a task ask for a shorter slice (``sched_setattr`` with ``sched_runtime`` for a
SCHED_OTHER task): its virtual deadline is then earlier, so a woken task should preempt
the running one sooner.  No real-time policy: a busy actor keeps its fair share (same
weight, shorter pieces), and nothing can starve.

**Off by default, because it did not help here** (2026-12-07, docs/benchmarks.md): in
alternated lab runs at load 12-18 the added latency moved either way, and
``bench/bench_wakeup_slice.py`` (a sleeper on a busy CPU) woke no sooner with 100 us than
with the default.  ``MAGLEV_SCHED_SLICE_US=100`` turns it on for the data-path actors, to
measure on a quieter or a real machine; older kernels refuse it (EINVAL, logged).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import resource
import struct
import time

log = logging.getLogger("maglev.sched")

SLICE_US_DEFAULT = 0  # off: see the module doc
_SYS_SCHED_SETATTR, _SYS_SCHED_GETATTR = 314, 315  # x86_64
_ATTR = "<IIQiIQQQII"  # struct sched_attr, SCHED_ATTR_SIZE_VER1 (56 bytes)
_SIZE = struct.calcsize(_ATTR)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def slice_us_wanted() -> int:
    """The slice the data-path actors ask for (``MAGLEV_SCHED_SLICE_US``; 0, the default,
    leaves the kernel's)."""
    v = os.environ.get("MAGLEV_SCHED_SLICE_US", "")
    return int(v) if v.isdigit() else SLICE_US_DEFAULT


def set_timer_slack_ns(ns: int) -> bool:
    """This thread's timer slack (``prctl(PR_SET_TIMERSLACK)``): how much later than asked
    the kernel may end a sleep (default 50 us).  A paced generator sleeps between packets a
    few tens of microseconds apart, so steering asks for 1 us.  False when refused."""
    return _libc.prctl(29, ctypes.c_ulong(max(1, int(ns))), 0, 0, 0) == 0  # PR_SET_TIMERSLACK


def current_slice_ns(pid: int = 0) -> int:
    """The slice (ns) the scheduler uses for ``pid`` (0 = this thread); 0 if unknown."""
    buf = ctypes.create_string_buffer(_SIZE)
    if _libc.syscall(_SYS_SCHED_GETATTR, pid, buf, _SIZE, 0) != 0:
        return 0
    return int(struct.unpack(_ATTR, buf.raw)[5])


def set_wakeup_slice(us: int | None = None) -> int:
    """Ask for a ``us``-microsecond slice for this thread (default: :func:`slice_us_wanted`)
    while staying SCHED_OTHER at the current nice value.  Returns the slice in ns now in
    force, or 0 when nothing was asked or the kernel refused (logged)."""
    us = slice_us_wanted() if us is None else us
    if us <= 0:
        return 0
    buf = ctypes.create_string_buffer(_SIZE)
    if _libc.syscall(_SYS_SCHED_GETATTR, 0, buf, _SIZE, 0) != 0:
        return 0
    size, policy, flags, nice, prio, *_ = struct.unpack(_ATTR, buf.raw)
    if policy != 0:  # SCHED_OTHER only: leave an operator's real-time choice alone
        return 0
    attr = struct.pack(_ATTR, _SIZE, 0, 0, nice, 0, us * 1000, 0, 0, 0, 0)
    if _libc.syscall(_SYS_SCHED_SETATTR, 0, ctypes.create_string_buffer(attr, _SIZE), 0) != 0:
        e = ctypes.get_errno()
        log.info("kernel keeps its default slice (custom EEVDF slices need Linux >= 6.12)",
                 extra={"kv": {"errno": errno.errorcode.get(e, e)}})
        return 0
    return current_slice_ns()



# --------------------------------------------------------------------------- real-time class
# The data-path actors (steering, workers, muxer) run SCHED_FIFO while they are lightly
# loaded, when the process may (root or CAP_SYS_NICE): a woken actor then runs at once
# instead of waiting for the SCHED_OTHER task on its CPU to use up its slice -- the wait
# that made the tail of a trickle milliseconds on a busy machine (docs/benchmarks.md,
# 2026-12-07 session 5).  Downstream actors get the higher priority (the muxer preempts
# steering on CPU 0: a packet already in the pipeline finishes before the next starts).
# A data-path actor that is saturated (asleep less than RT_BUSY_SLEEP of a governor span:
# running or waiting for a CPU the rest, ``Actor._rt_govern``) goes back to SCHED_OTHER, so
# a flood never starves the control plane, the supervisor or the rest of the host; it
# returns to SCHED_FIFO once it sleeps more than RT_CALM_SLEEP of a span.  The kernel's RT throttling (95% per second) stays the backstop.
# Off by default (2026-12-07 session 6): measured on the quiet 2-vCPU machine, SCHED_FIFO
# doubled W=1 but cost W=2 a quarter (4.35-4.41 -> 3.21-3.29 Mpps: worker 1 and the muxer
# above steering on its CPU) and halved HTTP through the lab's VIP (wrk 0.22-0.35 -> 0.14-0.16
# of direct: every wake-up preempts the client or a server sharing the CPU), for 2-3x lower
# single-request latency.  A host whose data-path CPUs run nothing else: `--rt-prio 1`.
RT_PRIO_DEFAULT = 0
RT_BUSY_SLEEP = 0.2  # asleep less than this share of a span: saturated, SCHED_OTHER
RT_CALM_SLEEP = 0.5  # asleep more: SCHED_FIFO again
RT_PERIOD_S = 0.05  # shortest span the governor judges
_RT_OFFSET = {"steering": 0, "worker": 1, "muxer": 2}


def rt_prio_for(kind: str, base: int) -> int:
    """The SCHED_FIFO priority of a data-path actor of ``kind`` for the run's ``base``
    (0 = none)."""
    return 0 if base <= 0 else min(99, base + _RT_OFFSET.get(kind, 0))


def set_rt(prio: int) -> bool:
    """Put this thread in SCHED_FIFO at ``prio`` (with SCHED_RESET_ON_FORK: a child starts
    SCHED_OTHER).  False when ``prio`` is 0 or the kernel refuses (no CAP_SYS_NICE, an RT
    budget-less cgroup): not an error, the actor stays SCHED_OTHER."""
    if prio <= 0:
        return False
    try:
        # The limit lets this process come back to SCHED_FIFO after it dropped its
        # capabilities (workers keep none after setup) and fell back to SCHED_OTHER.
        soft, hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
        if soft < prio:
            resource.setrlimit(resource.RLIMIT_RTPRIO, (prio, max(hard, prio)))
    except (OSError, ValueError):
        pass  # no CAP_SYS_RESOURCE: then sched_setscheduler below needs CAP_SYS_NICE
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(prio))
    except OSError as exc:
        log.info("data path stays SCHED_OTHER", extra={"kv": {"asked": prio, "error": exc}})
        return False
    return True


def set_other() -> None:
    """Back to SCHED_OTHER (nice value unchanged), with the short slice if one is asked
    (:func:`set_wakeup_slice`: it applies to SCHED_OTHER only)."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))
    except OSError as exc:  # an unprivileged task may always lower its policy: not expected
        log.warning("cannot leave SCHED_FIFO", extra={"kv": {"error": exc}})
        return
    set_wakeup_slice()


def open_schedstat() -> int:
    """A descriptor on this thread's ``/proc/thread-self/schedstat`` (-1 if there is none)."""
    try:
        return os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def busy_ns(fd: int) -> int:
    """Nanoseconds this thread has spent on a CPU or runnable waiting for one (schedstat's
    first two fields); its CPU time alone when ``fd`` is -1."""
    if fd >= 0:
        try:
            run, wait = os.pread(fd, 96, 0).split()[:2]
            return int(run) + int(wait)
        except (OSError, ValueError):
            pass
    return time.thread_time_ns()


# --------------------------------------------------------------------------- nice (control plane)
# The BGP speaker runs at a higher priority than packet work (2026-12-07 session 7,
# docs/bgp.md): a router drops every VIP of this instance when our KEEPALIVEs are late by
# its hold time, so a CPU-hungry data path (or anything else on the host) must not delay
# them.  Nice -10 weighs about 9x a nice-0 task in the fair scheduler: the speaker, which
# sleeps nearly always, runs within a fraction of a slice of waking, and it cannot starve
# anything (it uses a few milliseconds a second).  Not SCHED_FIFO: a bug (a busy loop) in
# the speaker must not take a CPU away from the data path for good.
BGP_NICE = -10


def set_nice(nice: int) -> int:
    """Lower this thread's nice value to ``nice`` (Linux: per thread; threads started
    afterwards inherit it).  Never raises: a process without CAP_SYS_NICE and without room
    in ``RLIMIT_NICE`` (:func:`maglev.service.privileges.allow_nice`) keeps its value, with
    one log line.  Returns the nice value in effect."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice >= current:
        return current
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        log.info("nice value unchanged", extra={"kv": {"asked": nice, "now": current, "error": exc}})
        return current
    return os.getpriority(os.PRIO_PROCESS, 0)
