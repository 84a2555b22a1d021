"""Do this machine's CPUs scale?  The bench_pipeline single-process baseline (generator +
data-path burst kernel, one process) pinned to each CPU alone, then one copy per CPU at
once: the sum over the mean alone is what N cores can give at best (2.0 on two real
cores; less on hyperthreads or a host that time-slices the vCPUs).  A pipeline ratio of
``pipelineN_ratio`` is judged against it.

    python bench/bench_cores.py [--seconds 3] [--rounds 3] [--cpus 0,1] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _one(cpu: int, seconds: float, q: mp.Queue) -> None:
    import bench_pipeline

    os.sched_setaffinity(0, {cpu})
    q.put((cpu, bench_pipeline.single_process(seconds)))


def trial(cpus: list[int], seconds: float) -> dict[int, float]:
    """Mpps of one single-process bench per CPU in ``cpus``, all at once."""
    q: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_one, args=(c, seconds, q)) for c in cpus]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=seconds * 10 + 60) for _ in cpus)
    for p in procs:
        p.join()
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpus", default="", help="CPUs to compare (default: all this process may use)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cpus = [int(c) for c in a.cpus.split(",")] if a.cpus else sorted(os.sched_getaffinity(0))
    rows = []
    for r in range(a.rounds):
        alone = {c: trial([c], a.seconds)[c] for c in cpus}
        both = trial(cpus, a.seconds)
        mean_alone = sum(alone.values()) / len(alone)
        row = {"round": r + 1, "alone_mpps": {str(c): round(v, 3) for c, v in alone.items()},
               "together_mpps": {str(c): round(v, 3) for c, v in both.items()},
               "scale": round(sum(both.values()) / mean_alone, 3) if mean_alone else 0.0}
        rows.append(row)
        if not a.json:
            print(f"round {r + 1}: alone " + ", ".join(f"cpu{c} {v:.2f}" for c, v in alone.items())
                  + " Mpps | together " + ", ".join(f"cpu{c} {v:.2f}" for c, v in both.items())
                  + f" Mpps | scale x{row['scale']:.2f} of one (ideal x{len(cpus)})", flush=True)
    load = tuple(round(x, 2) for x in os.getloadavg())
    if a.json:
        print(json.dumps({"rounds": rows, "cpus": cpus, "loadavg": load}))
    else:
        print(f"load average: {load}")
    return 0


if __name__ == "__main__":
    mp.set_start_method("fork")
    sys.exit(main())
