"""Wake-up latency of a sleeping process whose CPU is busy, with the kernel's default
EEVDF slice and with the short slice the data-path actors ask for (maglev/actors/sched.py).

A CPU hog and a sleeper share one CPU (pinned); a waker on another CPU writes its clock
into a pipe every 2 ms; the sleeper reads it and records how long after the write it ran.
This is the wait each actor of the packet path (steering, worker, muxer) pays once per
request on a busy machine.  Prints p50/p99 per slice; never asserts.  Needs 2 CPUs.
Usage: python bench/bench_wakeup_slice.py [--probes 400] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import struct
import sys
import time


def _hog(cpu: int, stop_at: float) -> None:
    os.sched_setaffinity(0, {cpu})
    while time.monotonic() < stop_at:
        pass


def _sleeper(cpu: int, r: int, slice_us: int, out: mp.Queue) -> None:
    from maglev.actors.sched import current_slice_ns, set_wakeup_slice

    os.sched_setaffinity(0, {cpu})
    if slice_us:
        set_wakeup_slice(slice_us)
    lat = []
    while True:
        b = os.read(r, 8)
        now = time.monotonic_ns()
        if len(b) < 8:
            break
        (t,) = struct.unpack("<Q", b)
        if t == 0:
            break
        lat.append(now - t)
    out.put((current_slice_ns(), lat))


def measure(slice_us: int, probes: int, cpu_busy: int, cpu_waker: int) -> dict:
    r, w = os.pipe()
    q: mp.Queue = mp.Queue()
    stop_at = time.monotonic() + probes * 0.002 + 2.0
    hog = mp.Process(target=_hog, args=(cpu_busy, stop_at))
    sl = mp.Process(target=_sleeper, args=(cpu_busy, r, slice_us, q))
    hog.start()
    sl.start()
    os.sched_setaffinity(0, {cpu_waker})
    time.sleep(0.3)
    for _ in range(probes):
        os.write(w, struct.pack("<Q", time.monotonic_ns()))
        time.sleep(0.002)
    os.write(w, struct.pack("<Q", 0))
    slice_ns, lat = q.get(timeout=30)
    sl.join(10)
    hog.terminate()
    hog.join(10)
    os.close(r)
    os.close(w)
    lat.sort()
    pick = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] / 1000, 1)  # noqa: E731
    return {"slice_ns": slice_ns, "n": len(lat), "p50_us": pick(0.5), "p90_us": pick(0.9), "p99_us": pick(0.99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probes", type=int, default=400)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("bench_wakeup_slice: skipped: needs 2 CPUs")
        return
    out = {"date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    for name, us in (("default", 0), ("short_100us", 100), ("default_again", 0), ("short_again", 100)):
        out[name] = measure(us, a.probes, cpus[1], cpus[0])
    if a.json:
        print(json.dumps(out, indent=2))
        return
    for k, v in out.items():
        print(f"{k:<14} {v}")


if __name__ == "__main__":
    sys.exit(main())
