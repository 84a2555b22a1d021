"""The wake-up floor of this machine: what one hop of the actor pipeline costs at best.

Builds ``bench/wake_floor.c`` (cc, into a temporary directory) and runs it for each case: a
process writes a word and wakes a sleeping process (futex or eventfd), cross-CPU and on the
same CPU, SCHED_OTHER and SCHED_FIFO, plus a pure busy poll; it prints the one-way wake-up
latency and what the wake call cost the waker (p50/p90/p99/p99.9/max, us) and the load.
A packet through the pipeline at a low rate pays one such wake-up per hop (steering ->
worker -> muxer) plus the actors' own work.  Never asserts.  Needs 2 CPUs and a C compiler.
Usage: python bench/bench_wake_floor.py [--n 3000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = [  # (cpu A, cpu B, fifo, mode)
    (0, 1, 0, "futex"), (0, 1, 1, "futex"), (0, 0, 0, "futex"), (0, 0, 1, "futex"),
    (0, 1, 0, "eventfd"), (0, 1, 1, "eventfd"), (0, 1, 0, "spin"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="wake-ups per case (10..100000)")
    ap.add_argument("--gap-us", type=int, default=200, help="pause before each wake-up (the sleeper settles)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or len(os.sched_getaffinity(0)) < 2:
        print("needs a C compiler and 2 CPUs", file=sys.stderr)
        return 1
    cpus = sorted(os.sched_getaffinity(0))[:2]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "wake_floor")
        subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", exe, os.path.join(HERE, "wake_floor.c")], check=True)
        for ca, cb, fifo, mode in CASES:
            out = subprocess.run([exe, str(cpus[ca]), str(cpus[cb]), str(fifo), mode, str(a.n), str(a.gap_us)],
                                 capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                print(f"{mode} {ca}->{cb} fifo={fifo}: failed: {out.stderr.strip()}", file=sys.stderr)
                continue
            row = json.loads(out.stdout)
            row["load"] = round(os.getloadavg()[0], 2)
            rows.append(row)
            if not a.json:
                w, c = row["wake_us"], row["waker_cost_us"]
                print(f"{mode:8s} cpu {row['cpus'][0]}->{row['cpus'][1]} {row['policy']:5s}: wake p50 {w['p50']} "
                      f"p90 {w['p90']} p99 {w['p99']} p99.9 {w['p999']} us; waker pays p50 {c['p50']} "
                      f"p99 {c['p99']} us (load {row['load']})", flush=True)
    if a.json:
        print(json.dumps({"cases": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
