"""Connection-table benchmark: insert failures and ns/op against occupancy for the layout
options of issue 16.3, and the start-up cost of a large table (issue 16.4).

Builds bench/ct_options.c against the kernel's sources (the real mg_conntrack.c is the
``mg_ct`` row) and fills a table of 2^--log2 entries with random flows up to 95%:
failures are exact; ns are wall clock on a shared machine (noisy: compare rows of one
run).  Start-up: ``mg_ct_new`` of 2^24 entries (one anonymous mapping, no memset) timed
against writing the same bytes once (what the old calloc + memset cost).

    python bench/bench_conntrack.py [--log2 20] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SRC = ROOT / "maglev" / "_cffi_src"
OPTIONS = {
    "w8": "8 ways, 1 bucket (before)",
    "w16": "16 ways, 1 bucket",
    "w8stash": "8 ways + 64-entry stash",
    "w8x2": "8 ways, 2 buckets",
    "mg_ct": "8 ways, 2 buckets + cuckoo move (chosen)",
}


def measure_options(log2: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="mg-ct-") as d:
        exe = Path(d) / "ct_options"
        subprocess.run(["gcc", "-O2", "-std=gnu11", "-fno-strict-aliasing", f"-I{SRC / 'include'}",
                        str(ROOT / "bench" / "ct_options.c"), str(SRC / "src" / "mg_conntrack.c"),
                        "-o", str(exe)], check=True)
        out = subprocess.run([str(exe), str(log2), str(seed)], check=True, capture_output=True,
                             text=True).stdout
    rows: dict = {k: [] for k in OPTIONS}
    moved = 0
    for line in out.splitlines():
        f = line.split()
        if f[0] == "moved":
            moved = int(f[1])
            continue
        rows[f[0]].append({"occupancy_pct": int(f[1]), "insert_failures": int(f[2]),
                           "insert_ns": float(f[3]), "lookup_ns": float(f[4])})
    return {"capacity": 1 << log2, "options": rows, "mg_ct_moved": moved}


def measure_startup(log2: int = 24, repeat: int = 3) -> dict:
    from maglev.native import lib

    new_ms, touch_ms = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ct = lib.mg_ct_new_mode(1 << log2, lib.MG_CT_PAGES_AUTO)
        new_ms.append((time.perf_counter() - t0) * 1e3)
        if not ct:
            raise MemoryError(f"mg_ct_new(2^{log2}) failed")
        mode = int(lib.mg_ct_page_mode(ct))
        nbytes = int(ct.map_bytes)
        lib.mg_ct_free(ct)
    m = mmap.mmap(-1, nbytes)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    t0 = time.perf_counter()
    ctypes.memset(addr, 0, nbytes)  # what the old calloc + mg_ct_clear memset cost
    touch_ms.append((time.perf_counter() - t0) * 1e3)
    m.close()
    return {"entries": 1 << log2, "bytes": nbytes, "page_mode": mode, "new_ms": min(new_ms),
            "new_ms_runs": new_ms, "write_once_ms": min(touch_ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2", type=int, default=20, help="table capacity 2^N (default 20)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = measure_options(a.log2, a.seed)
    res["startup"] = measure_startup()
    if a.json:
        print(json.dumps(res, indent=1))
        return
    print(f"connection table options, {res['capacity']} entries, random flows, no eviction")
    steps = [r["occupancy_pct"] for r in res["options"]["w8"]]
    print(f"{'insert failures (cumulative)':<42}" + "".join(f"{s:>7}%" for s in steps))
    for k, label in OPTIONS.items():
        print(f"  {label:<40}" + "".join(f"{r['insert_failures']:>8}" for r in res["options"][k]))
    for what in ("insert_ns", "lookup_ns"):
        print(f"{what.replace('_ns', ' ns/op'):<42}" + "".join(f"{s:>7}%" for s in steps))
        for k, label in OPTIONS.items():
            print(f"  {label:<40}" + "".join(f"{r[what]:>8.1f}" for r in res["options"][k]))
    print(f"mg_ct cuckoo moves while filling to 95%: {res['mg_ct_moved']}")
    s = res["startup"]
    names = {1: "hugetlb", 2: "thp", 3: "4 KiB pages"}
    print(f"start-up: mg_ct_new(2^24 entries, {s['bytes'] / 2**30:.2f} GiB, {names.get(s['page_mode'])}) "
          f"{s['new_ms']:.2f} ms (runs {', '.join(f'{x:.2f}' for x in s['new_ms_runs'])}); "
          f"writing the same bytes once: {s['write_once_ms']:.0f} ms")


if __name__ == "__main__":
    main()
