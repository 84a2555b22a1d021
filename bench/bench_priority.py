"""VIP priority under overload (issue 17 item 4): two VIPs, an unpaced generator NIC that
offers both equally and outruns the workers, and each VIP's delivered share.

Three runs of ``maglev run``'s processes (Pipeline, null sink), same packets, same round:

* ``alone``: a config with only the high VIP: the forwarder's capacity for it;
* ``equal``: both VIPs at priority 3: nothing is shed, the generator is held back (back
  pressure) and each VIP gets about half of the capacity;
* ``priority``: high VIP priority 7, low VIP priority 0: steering sheds the low VIP's
  packets before enqueue once a worker's rx ring is half full.

Per VIP over a window after a warm-up: offered = delivered + shed (the generator's
packets all reach a VIP and nothing else drops them), delivered pps, ``delivered_share``
= delivered / offered, ``loss`` = 1 - delivered_share, ``share_of_output`` = the VIP's
part of what the forwarder sent, and ``high_vs_alone`` = the high VIP's delivered pps
under overload / its pps in ``alone``.  With a generator, a packet that cannot be placed
waits in steering's hand (a NIC would drop it): the high VIP's loss is what was dropped
for it, its throughput against ``alone`` is what it kept.  Never asserts on speed.

    python bench/bench_priority.py [--seconds 3] [--workers 2] [--rounds 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from maglev.actors.pipeline import Pipeline, PipelineOptions
from maglev.observability.metrics import collect

HIGH, LOW = "203.0.113.91", "203.0.113.92"
GEN = "flows=10000,size=64,syn=0.1,ipv6=0,seed=1"


def config(prios: tuple[int, int] | None) -> str:
    # private connection tables: nothing is left in /dev/shm for a next run to adopt
    out = '[instance]\nname = "bprio"\nsource_ipv4 = "198.18.0.1"\n[conntrack]\nshared = false\n'
    vips = [(HIGH, prios[0] if prios else 0)] + ([(LOW, prios[1])] if prios else [])
    for addr, pr in vips:
        out += f'[[vip]]\naddress = "{addr}"\nport = 80\npriority = {pr}\n'
        out += "".join(f'[[vip.backend]]\naddress = "198.18.1.{i}"\n' for i in range(1, 5))
    return out


def per_vip(snap: dict) -> dict[str, tuple[int, int]]:
    return {v["vip"].split(":")[0]: (v["packets"], v["shed"]) for v in snap["vips"]}


def one(mode: str, prios: tuple[int, int] | None, workers: int, seconds: float, warmup: float = 1.0) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config(prios))
        path = f.name
    p = Pipeline(PipelineOptions(workers=workers, nic=f"gen:{GEN}", config_path=path))
    try:
        p.start()
        t_end = time.monotonic() + warmup
        while time.monotonic() < t_end:
            p.poll(0.05)
        run_dir = p.supervisor.run_dir
        s0, t0 = per_vip(collect(p.region, run_dir)), time.monotonic()
        while time.monotonic() < t0 + seconds:
            p.poll(0.05)
        s1, t1 = per_vip(collect(p.region, run_dir)), time.monotonic()
        p.stop()
        summary = p.summary()
    finally:
        p.close()
        os.unlink(path)
    dt = t1 - t0
    out_total = sum(s1[a][0] - s0.get(a, (0, 0))[0] for a in s1) or 1
    vips = {}
    for addr, name in ((HIGH, "high"), (LOW, "low")):
        if addr not in s1:
            continue
        d = s1[addr][0] - s0.get(addr, (0, 0))[0]
        sh = s1[addr][1] - s0.get(addr, (0, 0))[1]
        offered = d + sh
        vips[name] = {"priority": (prios or (0, 0))[0 if name == "high" else 1], "offered": offered,
                      "delivered": d, "shed": sh, "delivered_pps": round(d / dt),
                      "delivered_share": round(d / offered, 4) if offered else 0.0,
                      "loss": round(sh / offered, 4) if offered else 0.0,
                      "share_of_output": round(d / out_total, 4)}
    return {"mode": mode, "workers": workers, "window_s": round(dt, 2), "vips": vips,
            "dropped": summary["dropped"], "pool_ok": summary["pool"]["ok"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rounds = []
    for _ in range(a.rounds):
        alone = one("alone", None, a.workers, a.seconds)
        equal = one("equal", (3, 3), a.workers, a.seconds)
        prio = one("priority", (7, 0), a.workers, a.seconds)
        base = alone["vips"]["high"]["delivered_pps"] or 1
        rnd = {"alone": alone, "equal": equal, "priority": prio,
               "high_vs_alone": round(prio["vips"]["high"]["delivered_pps"] / base, 3),
               "high_vs_alone_equal": round(equal["vips"]["high"]["delivered_pps"] / base, 3),
               "high_loss": prio["vips"]["high"]["loss"], "low_loss": prio["vips"]["low"]["loss"]}
        rounds.append(rnd)
        if not a.json:
            for r in (alone, equal, prio):
                for name, v in r["vips"].items():
                    print(f"{r['mode']:<9} {name:<5} prio {v['priority']}  delivered {v['delivered_pps'] / 1e6:6.3f} Mpps"
                          f"  delivered_share {100 * v['delivered_share']:6.2f}%  loss {100 * v['loss']:6.2f}%"
                          f"  share_of_output {100 * v['share_of_output']:6.2f}%")
            print(f"high VIP under overload: {rnd['high_vs_alone']:.3f} x its throughput alone "
                  f"(equal priorities: {rnd['high_vs_alone_equal']:.3f} x); high loss {100 * rnd['high_loss']:.2f}%, "
                  f"low loss {100 * rnd['low_loss']:.2f}%")
    if a.json:
        json.dump({"rounds": rounds}, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
