"""Ring benchmark: nanoseconds per descriptor through one SPSC ring in shared memory.

For each burst size (8..256) it measures, in the same run:

* ``local``  -- one process enqueues a burst and dequeues it again (the baseline: the
  ring's instructions without any cache line moving between cores);
* ``2proc``  -- a producer process and a consumer process, loops in C (what the C
  worker glue sees: the cost of the cache-line hand-off between cores);
* ``2proc-py`` -- the same with a Python loop making one cffi call per burst on each
  side (what a Python actor main loop sees);

and the doorbell wake-up latency (enqueue -> a consumer process asleep on the futex has
the descriptor) against a consumer polling with ``sched_yield`` as the baseline.

and prints ns/descriptor (median of REPEAT runs, min in brackets) and the ratios
2proc/local and 2proc-py/2proc.  It never asserts on speed.  The machine is shared and
its two vCPUs are sometimes "far" apart: compare ratios from one run, and repeat.

    python bench/bench_rings.py [--quick] [--no-pin]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

from native.build import load as load_bench_module  # bench/native: benchmark-only C

from maglev.native import ffi
from maglev.rings import Region, worker_bell
from maglev.testing import unique

blib = load_bench_module().lib

BURSTS = (8, 16, 32, 64, 128, 256)
RING_SIZE = 1024
GO_WORD = 0  # supervisor stats word used as the start flag
READY_WORD = 1


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def producer(name: str, total: int, burst: int, python: bool, cpu: int | None) -> None:
    _pin(cpu)
    region = Region.attach(name)
    ring = region.rx(0)
    ring.reset_producer()
    flags = region.stats(0)
    flags[READY_WORD] = 1
    while flags[GO_WORD] == 0:
        pass
    deadline = blib.mg_now_ns() + 30_000_000_000
    if python:
        buf = ffi.new("uint64_t[]", list(range(burst)))
        enq = ring.enqueue
        sent = 0
        while sent < total and blib.mg_now_ns() < deadline:
            k = enq(buf, min(burst, total - sent))
            sent += k
            if not k:  # full: let the consumer run if it shares this core
                os.sched_yield()
    else:
        blib.mg_ring_bench_produce(ring.ptr, total, burst, deadline)
    region.close()


def waker(name: str, count: int, sleep: bool) -> None:
    """Doorbell latency, consumer side: wait for each descriptor (sleeping on the futex,
    or polling with sched_yield as the baseline); the descriptor is the send time."""
    region = Region.attach(name)
    rx = region.rx(0)
    rx.reset_consumer()
    bell = region.bell(worker_bell(0))
    buf = ffi.new("uint64_t[]", 1)
    lat = []
    deadline = time.monotonic() + 60
    region.stats(0)[READY_WORD] = 1
    while len(lat) < count and time.monotonic() < deadline:
        if sleep:
            if not bell.wait(1000, spin=0):
                continue
        if rx.dequeue(buf, 1):
            lat.append(blib.mg_now_ns() - buf[0])
        elif not sleep:
            os.sched_yield()  # the prototype's backoff: poll, yield the core, poll
    region.stats(0)[2] = len(lat)
    lat.sort()
    for q, word in ((0.5, 3), (0.99, 4)):
        region.stats(0)[word] = lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0
    region.close()


@contextlib.contextmanager
def _child_on_region(args: list[str], what: str) -> Iterator[tuple[Region, subprocess.Popen, object]]:
    """A one-worker region and this script started on it as a child process (``args``: its
    role flag, then its parameters after the region's name), once the child said it is
    ready (READY_WORD); yields (region, child, the stats words of slot 0).  At the end the
    child is killed if it still runs and the region is unlinked."""
    name = unique.name("bench-")
    with Region.create(name, 1, n_frames=64, ring_size=RING_SIZE, tables_bytes=0) as region:
        child = None
        try:
            child = subprocess.Popen([sys.executable, __file__, args[0], name, *args[1:]])
            flags = region.stats(0)
            t_wait = time.monotonic() + 20
            while flags[READY_WORD] == 0:
                if child.poll() is not None or time.monotonic() > t_wait:
                    raise RuntimeError(f"{what} did not start")
                time.sleep(0.001)
            yield region, child, flags
        finally:
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
            region.unlink()


def _wake_latency(count: int, sleep: bool) -> tuple[float, float]:
    """(median, p99) µs from enqueue to the consumer process having the descriptor."""
    with _child_on_region(["--waker", str(count), "1" if sleep else "0"], "waker") as (region, child, flags):
        rx = region.rx(0)
        for _ in range(count):
            time.sleep(0.002)  # long enough for the consumer to be asleep again
            rx.enqueue([blib.mg_now_ns()], 1)
        child.wait(60)
        if flags[2] != count:
            raise RuntimeError(f"waker saw {flags[2]}/{count} descriptors")
        return flags[3] / 1000, flags[4] / 1000


def _two_process(total: int, burst: int, python: bool, pin: bool) -> float:
    cpus = sorted(os.sched_getaffinity(0))
    pin_ok = pin and len(cpus) >= 2
    args = ["--producer", str(total), str(burst), "1" if python else "0", str(cpus[1]) if pin_ok else "-"]
    with _child_on_region(args, "producer") as (region, child, flags):
        ring = region.rx(0)
        errors = ffi.new("uint64_t *")
        if pin_ok:
            old = os.sched_getaffinity(0)
            _pin(cpus[0])
        try:
            flags[GO_WORD] = 1
            t0 = time.perf_counter_ns()
            if python:
                buf = ffi.new("uint64_t[]", burst)
                deq = ring.dequeue
                got = 0
                deadline = time.monotonic() + 30
                while got < total and time.monotonic() < deadline:
                    k = deq(buf, burst)
                    got += k
                    if not k:
                        os.sched_yield()
            else:
                got = blib.mg_ring_bench_consume(
                    ring.ptr, total, burst, blib.mg_now_ns() + 30_000_000_000, errors
                )
            t1 = time.perf_counter_ns()
        finally:
            if pin_ok:
                os.sched_setaffinity(0, old)
        child.wait(30)
        if got != total or errors[0]:
            raise RuntimeError(f"2proc run broken: {got}/{total} descriptors, {errors[0]} errors")
        return (t1 - t0) / total


def _local(total: int, burst: int) -> float:
    name = unique.name("bench-")
    with Region.create(name, 1, n_frames=64, ring_size=RING_SIZE, tables_bytes=0) as region:
        try:
            errors = ffi.new("uint64_t *")
            t0 = time.perf_counter_ns()
            got = blib.mg_ring_bench_local(region.rx(0).ptr, total, burst, errors)
            t1 = time.perf_counter_ns()
            if got != total or errors[0]:
                raise RuntimeError(f"local run broken: {got}/{total}, {errors[0]} errors")
            return (t1 - t0) / total
        finally:
            region.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer descriptors and repeats")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the two processes")
    ap.add_argument("--producer", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--waker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.waker:
        waker(args.waker[0], int(args.waker[1]), args.waker[2] == "1")
        return
    if args.producer:
        name, total, burst, python, cpu = args.producer
        producer(name, int(total), int(burst), python == "1", None if cpu == "-" else int(cpu))
        return
    repeat = 2 if args.quick else 3
    total_c = 1_000_000 if args.quick else 4_000_000
    total_py = 200_000 if args.quick else 800_000
    pin = not args.no_pin
    print(f"# rings: ring size {RING_SIZE}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, {'pinned to 2 CPUs' if pin else 'not pinned'}, "
          f"median of {repeat} (min)")
    print(f"{'burst':>6} {'local ns/d':>14} {'2proc ns/d':>14} {'2proc-py ns/d':>15} "
          f"{'2proc/local':>12} {'py/C':>6}")
    for burst in BURSTS:
        loc = [_local(total_c, burst) for _ in range(repeat)]
        two = [_two_process(total_c, burst, False, pin) for _ in range(repeat)]
        py = [_two_process(total_py, burst, True, pin) for _ in range(repeat)]
        ml, mt, mp = (statistics.median(x) for x in (loc, two, py))
        print(f"{burst:>6} {ml:>7.2f} ({min(loc):5.2f}) {mt:>7.2f} ({min(two):5.2f}) "
              f"{mp:>8.2f} ({min(py):5.2f}) {mt / ml:>11.1f}x {mp / mt:>5.1f}x", flush=True)
    n = 100 if args.quick else 300
    print(f"# doorbell: enqueue -> consumer process (Python) has the descriptor, {n} "
          "samples 2 ms apart, not pinned")
    busy = _wake_latency(n, sleep=False)
    slept = _wake_latency(n, sleep=True)
    print(f"{'poll+yield consumer (baseline)':>32}: median {busy[0]:8.1f} us  p99 {busy[1]:8.1f} us")
    print(f"{'consumer asleep on the futex':>32}: median {slept[0]:8.1f} us  p99 {slept[1]:8.1f} us"
          f"  ({slept[0] / max(busy[0], 1e-3):.1f}x the baseline median)")


if __name__ == "__main__":
    main()
