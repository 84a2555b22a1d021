"""Wake-up latency of the data-path actors: an optional short EEVDF slice (Linux >= 6.12).

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
import struct

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
