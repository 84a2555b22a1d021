"""Maglev table build time (paper section 5.3: 1.8 ms at M=65537 and 22.9 ms at
M=655373, 1000 backends).

Prints, for both sizes: the C kernel alone (buffers allocated once, median of several
runs), the public ``build_table`` with the C engine (adds name packing and buffer
allocation), and the pure-Python reference (once per size), then the C/Python ratio
measured in this same run.  It never asserts on speed: a shared VM is noisy.

    python bench/bench_table.py [--runs N] [--backends N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from maglev.hashing import build_table
from maglev.native import ffi, lib

PAPER_MS = {65537: 1.8, 655373: 22.9}


def kernel_ms(m: int, names: list[bytes], runs: int) -> tuple[list[float], list[float]]:
    """mg_maglev_build alone: names packed and buffers allocated once, outside the timer.
    Returns (wall ms, thread CPU ms) per run; CPU time leaves out the time the scheduler
    gave to other processes, which matters on a shared 2-vCPU VM."""
    n = len(names)
    offs = [0]
    for nm in names:
        offs.append(offs[-1] + len(nm))
    blob = ffi.new("uint8_t[]", b"".join(names))
    off = ffi.new("uint32_t[]", offs)
    w = ffi.new("uint32_t[]", [1] * n)
    table = ffi.new("int32_t[]", m)
    counts = ffi.new("uint32_t[]", n)
    wall, cpu = [], []
    for _ in range(runs):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        rc = lib.mg_maglev_build(m, n, blob, off, w, table, counts)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
        assert rc == 0, rc
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21, help="C runs per size (median reported)")
    ap.add_argument("--backends", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="Python reference at M=65537 only")
    args = ap.parse_args()

    backends = [(f"b{i:04d}", 1) for i in range(args.backends)]
    names = sorted(n.encode() for n, _ in backends)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"Maglev table build, {args.backends} backends, median of {args.runs} C runs "
        f"({time.strftime('%Y-%m-%d %H:%M %Z')}, load average {load} on {os.cpu_count()} CPUs)"
    )
    print(
        f"{'M':>8} {'kernel ms':>10} {'(min-max)':>16} {'cpu ms':>7} {'build_table ms':>15} "
        f"{'paper ms':>9} {'python ms':>10} {'C/Python':>9}"
    )
    for m in (65537, 655373):
        kernel_ms(m, names, 2)  # warm-up: page faults, caches
        k, kcpu = kernel_ms(m, names, args.runs)
        api = [build_table(backends, m, "c").build_seconds * 1e3 for _ in range(max(3, args.runs // 3))]
        py = None
        if not (args.quick and m != 65537):
            py = build_table(backends, m, "python").build_seconds * 1e3
        med = statistics.median(k)
        ratio = f"{py / med:>8.0f}x" if py else f"{'-':>9}"
        print(
            f"{m:>8} {med:>10.2f} {f'({min(k):.2f}-{max(k):.2f})':>16} "
            f"{statistics.median(kcpu):>7.2f} "
            f"{statistics.median(api):>15.2f} {PAPER_MS[m]:>9.1f} "
            f"{(f'{py:.0f}' if py else '-'):>10} {ratio}"
        )
    print("kernel: wall-clock median (range) of mg_maglev_build alone; cpu: its median thread")
    print("CPU time; build_table: the public call (packing + allocation included); C/Python:")
    print("the Python reference's time over the kernel's median, both from this run.")


if __name__ == "__main__":
    main()
