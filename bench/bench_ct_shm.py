"""Shared connection tables (issue 16.5): the cost of making a fresh table in /dev/shm
(posix_fallocate + format + rename) and of adopting one (lock, header check, map, recount
of every metadata line), against the private anonymous table of the same capacity
(``mg_ct_new``: one mmap, nothing touched) as the baseline of the same run.  The adopted
table is filled to ``--fill`` of its capacity first, so the recount reads real tags.

    python bench/bench_ct_shm.py [--log2 20 24] [--fill 0.5] [--repeat 3] [--json]

Prints milliseconds (median of --repeat) per capacity; never fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maglev.native import ffi, lib
from maglev.rings import conntrack_shm as cs
from maglev.testing import unique


def _fill(ct, n: int) -> None:
    k = ffi.new("struct mg_flow_key *")
    k.proto = 6
    for i in range(n):
        k.sport = i & 0xFFFF
        k.src[0:4] = i.to_bytes(4, "big")
        lib.mg_ct_insert(ct, k, (i * 0x9E3779B97F4A7C15) & (2**64 - 1), 10**9, 300_000, 30_000, 0, 1)


def measure(log2: int, fill: float, repeat: int) -> dict:
    cap = 1 << log2
    name = cs.segment_name(unique.name("bench"), "00000000", 0)
    want = cs.Wanted(cap, 1, 1, 0)
    fresh, adopt, private = [], [], []
    try:
        for _ in range(repeat):
            with_file = os.path.join(cs.SHM_DIR, name)
            if os.path.exists(with_file):
                os.unlink(with_file)
            t0 = time.perf_counter()
            t = cs.open_table(name, want)
            fresh.append(time.perf_counter() - t0)
            lib.mg_ct_free(t.ct)
            t.close()
            t0 = time.perf_counter()
            p = lib.mg_ct_new_mode(cap, lib.MG_CT_PAGES_SMALL)
            private.append(time.perf_counter() - t0)
            lib.mg_ct_free(p)
        # adopt the last (refilled) table repeatedly
        t = cs.open_table(name, want)
        _fill(t.ct, int(cap * fill))
        entries = int(t.ct.n_used)
        lib.mg_ct_free(t.ct)
        t.close()
        for _ in range(repeat):
            t0 = time.perf_counter()
            t = cs.open_table(name, want)
            adopt.append(time.perf_counter() - t0)
            assert t.adopted and t.entries == entries
            lib.mg_ct_free(t.ct)
            t.close()
    finally:
        cs.remove_segments(name.split("-ct-")[0].removeprefix("maglev-"))
    ms = lambda xs: round(statistics.median(xs) * 1e3, 2)  # noqa: E731
    return {"log2": log2, "bytes": cs.table_bytes(cap), "entries_adopted": entries,
            "private_new_ms": ms(private), "fresh_shm_ms": ms(fresh), "adopt_ms": ms(adopt)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log2", type=int, nargs="+", default=[20, 24])
    ap.add_argument("--fill", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = [measure(n, a.fill, a.repeat) for n in a.log2]
    if a.json:
        print(json.dumps({"tables": rows}))
        return
    print(f"{'entries':>8} {'MiB':>6} {'private mg_ct_new':>18} {'fresh in /dev/shm':>18} {'adopt':>10}  (ms, median)")
    for r in rows:
        print(f"{'2^' + str(r['log2']):>8} {r['bytes'] / 2**20:6.0f} {r['private_new_ms']:18.2f} "
              f"{r['fresh_shm_ms']:18.2f} {r['adopt_ms']:10.2f}  ({r['entries_adopted']} entries adopted)")


if __name__ == "__main__":
    main()
