"""A trickle through the pipeline, the C loops sleeping in the call or not (issues 13.6, 14.5).

The paced latency run of ``bench_pipeline.py`` (generator -> steering -> W workers -> muxer,
rx -> tx latency measured by the muxer), alternated in the same minutes between
``MAGLEV_LOOP_SLEEP=1`` (the default since 2026-12-07 session 7: the data-path actors' C
loops sleep on their doorbell inside the call, mg_loop.h) and ``MAGLEV_LOOP_SLEEP=0`` (the
loop returns MG_LOOP_IDLE and the actor sleeps from Python, as before).  Per run: latency
p50/p99/p99.9 (us, quarter-octave bucket edges), doorbell sleeps per 1000 packets and each
actor's CPU time per packet (``cpu_us_per_packet``: at a trickle every packet is a wake-up
of every hop, so this is what one wake-up costs the actor -- much less sensitive to other
jobs than the latency).  Prints medians per mode and the ratio sleep-in-C / Python wait;
never asserts on speed.

    python bench/bench_trickle.py [--rates 1000,10000] [--workers 1] [--seconds 2] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import bench_pipeline as bp
import psutil


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="1000,10000")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3, help="runs per mode and rate (alternated)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rates = [int(x) for x in a.rates.split(",") if x]
    runs: list[dict] = []
    old = os.environ.get("MAGLEV_LOOP_SLEEP")
    try:
        for i in range(a.runs):
            for rate in rates:
                for mode in ("1", "0") if i % 2 == 0 else ("0", "1"):
                    os.environ["MAGLEV_LOOP_SLEEP"] = mode  # the actors inherit it
                    load = round(psutil.getloadavg()[0], 2)
                    r = bp.latency(a.workers, rate, a.seconds)
                    r.update(sleep_in_c=mode == "1", run=i + 1, load=load)
                    runs.append(r)
                    if not a.json:
                        print(f"run {i + 1} rate {rate} {'C   ' if mode == '1' else 'Py  '} load {load}: "
                              f"p50 {r['p50']} p99 {r['p99']} us, sleeps/kpkt {r['sleeps_per_kpkt']}, "
                              f"CPU us/packet {r['cpu_us_per_packet']}", flush=True)
    finally:
        if old is None:
            os.environ.pop("MAGLEV_LOOP_SLEEP", None)
        else:
            os.environ["MAGLEV_LOOP_SLEEP"] = old
    summary: dict = {}
    for rate in rates:
        med = {}
        for mode in (True, False):
            rs = [r for r in runs if r["rate"] == rate and r["sleep_in_c"] == mode]
            actors = rs[0]["cpu_us_per_packet"].keys()
            med["c" if mode else "py"] = {
                "p50": statistics.median(r["p50"] for r in rs),
                "p99": statistics.median(r["p99"] for r in rs),
                "p50_range": [min(r["p50"] for r in rs), max(r["p50"] for r in rs)],
                "p99_range": [min(r["p99"] for r in rs), max(r["p99"] for r in rs)],
                "cpu_us_per_packet": {n: statistics.median(r["cpu_us_per_packet"][n] for r in rs) for n in actors},
            }
        c, py = med["c"], med["py"]
        med["cpu_ratio_c_vs_py"] = {n: round(c["cpu_us_per_packet"][n] / py["cpu_us_per_packet"][n], 2)
                                    for n in c["cpu_us_per_packet"] if py["cpu_us_per_packet"][n]}
        summary[str(rate)] = med
    if a.json:
        print(json.dumps({"runs": runs, "summary": summary, "workers": a.workers}))
    else:
        for rate, med in summary.items():
            print(f"rate {rate}: C p50 {med['c']['p50']} p99 {med['c']['p99']} | "
                  f"Py p50 {med['py']['p50']} p99 {med['py']['p99']} | CPU C/Py {med['cpu_ratio_c_vs_py']}")
    return 0


if __name__ == "__main__":
    from maglev.testing.state import private_run_state

    with private_run_state() as folder:
        bp.bench_config(folder)
        rc = main()
    sys.exit(rc)
