"""Encapsulation cost per packet: the C kernel (``mg_encap`` looped in C over a burst of
frames by ``mg_encap_bench``, so no cffi call per packet) against the pure-Python
reference measured in the same run, for every encapsulation type and three packet sizes.
Prints ns/packet (median of several runs, min in brackets) and the Python/C ratio; never
asserts on speed (a shared VM is noisy: read the ratios, repeat before concluding).

    python bench/bench_encap.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from native.build import load as load_bench_module  # bench/native: benchmark-only C

from maglev.datapath import encap as E
from maglev.datapath import ref_encap as R
from maglev.testing import packets as P

blib = load_bench_module().lib

BURST = 64


def params(type_: int, fam: int) -> R.EncapParams:
    return R.EncapParams(type=type_, outer_family=fam,
                         src=P.addr("198.18.0.1" if fam == 4 else "2001:db8:ff::1"),
                         dst=P.addr("198.18.1.2" if fam == 4 else "2001:db8:ff::2"),
                         eth_src=bytes(6), eth_dst=bytes(6), vni=7)


def c_ns(frame: bytes, prm: R.EncapParams, rounds: int, runs: int) -> list[float]:
    pool = E.ScratchPool(BURST)
    for i in range(BURST):
        pool.put(i, frame)
    cp = E.c_params(prm)
    blib.mg_encap_bench(pool.buf, BURST, 14, frame[14] >> 4, cp, 10)  # warm-up
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        done = blib.mg_encap_bench(pool.buf, BURST, 14, frame[14] >> 4, cp, rounds)
        out.append((time.perf_counter_ns() - t0) / done)
    return out


def py_ns(frame: bytes, prm: R.EncapParams, n: int) -> float:
    fam = frame[14] >> 4
    t0 = time.perf_counter_ns()
    for i in range(n):
        R.encap(frame, 14, fam, i, prm)
    return (time.perf_counter_ns() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and sizes")
    args = ap.parse_args()
    rounds = 200 if args.quick else 2000
    sizes = (64, 1500) if args.quick else (64, 576, 1500)
    print(f"encapsulation, burst {BURST}, median of {args.runs} runs (min); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'type':>6} {'outer':>5} {'inner':>5} {'L3 bytes':>8} {'C ns/pkt':>16} {'Python ns/pkt':>14} {'Py/C':>7}")
    for tname, t in (("gre", R.GRE), ("ipip", R.IPIP), ("vxlan", R.VXLAN), ("l2", R.L2)):
        for of in (4, 6) if t != R.L2 else (4,):
            for inner in (4, 6):
                for size in sizes:
                    frame = P.tcp_packet(inner, max(size, 60 if inner == 6 else 40))
                    prm = params(t, of)
                    c = c_ns(frame, prm, rounds, args.runs)
                    p = py_ns(frame, prm, 300 if args.quick else 2000)
                    med = statistics.median(c)
                    print(f"{tname:>6} {of:>5} {inner:>5} {size:>8} {med:>8.1f} ({min(c):>5.1f}) "
                          f"{p:>14.0f} {p / med:>6.0f}x")


if __name__ == "__main__":
    main()
