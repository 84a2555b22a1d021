"""Ring benchmark: nanoseconds per descriptor through one SPSC ring in shared memory.

For each burst size (8..256) it measures, in the same run:

* ``local``  -- one process enqueues a burst and dequeues it again (the baseline: the
  ring's instructions without any cache line moving between cores);
* ``2proc``  -- a producer process and a consumer process, loops in C (what the C
  worker glue sees: the cost of the cache-line hand-off between cores);
* ``2proc-py`` -- the same with a Python loop making one cffi call per burst on each
  side (what a Python actor main loop sees).

and prints ns/descriptor (median of REPEAT runs, min in brackets) and the ratios
2proc/local and 2proc-py/2proc.  It never asserts on speed.  The machine is shared and
its two vCPUs are sometimes "far" apart: compare ratios from one run, and repeat.

    python bench/bench_rings.py [--quick] [--no-pin]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import time

from maglev.native import ffi, lib
from maglev.rings import Region

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
    deadline = lib.mg_now_ns() + 30_000_000_000
    if python:
        buf = ffi.new("uint64_t[]", list(range(burst)))
        enq = ring.enqueue
        sent = 0
        while sent < total and lib.mg_now_ns() < deadline:
            k = enq(buf, min(burst, total - sent))
            sent += k
            if not k:  # full: let the consumer run if it shares this core
                os.sched_yield()
    else:
        lib.mg_ring_bench_produce(ring.ptr, total, burst, deadline)
    region.close()


def _two_process(total: int, burst: int, python: bool, pin: bool) -> float:
    name = f"bench-{os.getpid()}-{secrets.token_hex(3)}"
    cpus = sorted(os.sched_getaffinity(0))
    pin_ok = pin and len(cpus) >= 2
    with Region.create(name, 1, n_frames=64, ring_size=RING_SIZE, tables_bytes=0) as region:
        child = None
        try:
            child = subprocess.Popen(
                [sys.executable, __file__, "--producer", name, str(total), str(burst),
                 "1" if python else "0", str(cpus[1]) if pin_ok else "-"]
            )
            flags = region.stats(0)
            t_wait = time.monotonic() + 20
            while flags[READY_WORD] == 0:
                if child.poll() is not None or time.monotonic() > t_wait:
                    raise RuntimeError("producer did not start")
                time.sleep(0.001)
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
                    got = lib.mg_ring_bench_consume(
                        ring.ptr, total, burst, lib.mg_now_ns() + 30_000_000_000, errors
                    )
                t1 = time.perf_counter_ns()
            finally:
                if pin_ok:
                    os.sched_setaffinity(0, old)
            child.wait(30)
            if got != total or errors[0]:
                raise RuntimeError(f"2proc run broken: {got}/{total} descriptors, {errors[0]} errors")
            return (t1 - t0) / total
        finally:
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
            region.unlink()


def _local(total: int, burst: int) -> float:
    name = f"bench-{os.getpid()}-{secrets.token_hex(3)}"
    with Region.create(name, 1, n_frames=64, ring_size=RING_SIZE, tables_bytes=0) as region:
        try:
            errors = ffi.new("uint64_t *")
            t0 = time.perf_counter_ns()
            got = lib.mg_ring_bench_local(region.rx(0).ptr, total, burst, errors)
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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
