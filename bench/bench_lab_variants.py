"""Forwarding through one lab with forwarder variants alternated: pps and CPU per actor.

One namespace lab (``bench_lab``'s topology and sender); each round starts ``maglev run``
once per variant, floods it for ``--seconds`` and stops it, so every variant meets the
machine's load in the same minutes.  A variant is ``NAME=NIC`` plus environment settings
for the forwarder, e.g. ``--variant native=afxdp:eth0`` ``--variant
generic=afxdp:eth0,MAGLEV_XDP_ATTACH=generic`` ``--variant v2=afpacket:eth0``.  Prints per
run the offered, arrived and forwarded pps, the user/system CPU per forwarded packet of
steering, the worker and the muxer, and ``maglev run``'s AF_XDP receive line; then the
median per variant.

    sudo python3 bench/bench_lab_variants.py --variant a=afxdp:eth0 --variant b=afpacket:eth0 \\
        [--rounds 3] [--seconds 3] [--json]

Run it from the tree whose ``maglev`` you want (``PYTHONPATH=$PWD``); to compare two trees,
alternate runs of each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lab import measure_pps

from maglev.lab import topology as topo
from maglev.testing import unique

ACTORS = ("steering", "worker-0", "muxer")


def parse_variant(text: str) -> tuple[str, str, dict[str, str]]:
    name, _, rest = text.partition("=")
    parts = rest.split(",")
    nic, env = parts[0], {}
    extra: list[str] = []
    for p in parts[1:]:
        if "=" in p and p.split("=", 1)[0].isupper():
            k, v = p.split("=", 1)
            env[k] = v
        else:
            extra.append(p)  # a NIC option (queues=..., mode=...)
    if extra:
        nic = ",".join([nic, *extra])
    if not name or not nic:
        raise SystemExit(f"--variant {text!r}: want NAME=NIC[,ENV=VALUE...]")
    if nic.startswith("afpacket") and "MAGLEV_AFPACKET_RING" not in env:
        env["MAGLEV_AFPACKET_RING"] = "v2"
    return name, nic, env


def actor_cpu(fpid: int) -> dict[str, tuple[float, float]]:
    import psutil

    out = {}
    for p in psutil.Process(fpid).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            t = p.cpu_times()
        except psutil.Error:
            continue
        for n in ACTORS:
            if f'"name": "{n}"' in cmd:
                out[n] = (t.user, t.system)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", action="append", required=True, help="NAME=NIC[,ENV=VALUE...]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if reason := topo.why_no_lab():
        print(f"bench_lab_variants: skipped: {reason}")
        return 0
    variants = [parse_variant(v) for v in args.variant]
    prefix = unique.short("mgv")  # maglev.testing.unique: no other run on the machine has it
    tag = prefix[3:]
    state_dir = Path(f"/run/maglev-lab-variants-{tag}")
    lab = topo.Lab(state_dir)
    spec = topo.LabSpec(prefix=prefix, state_dir=state_dir, backends=3, encap="gre", forwarder=False)
    runs: list[dict[str, Any]] = []
    try:
        state = lab.up(spec)
        topo.tx_checksum_offload(state["client"]["ns"], "eth0", False)
        for _ in range(args.rounds):
            for name, nic, env in variants:
                fwd = topo.forwarder_argv(topo.LabSpec(workers=1, nic=nic), state["config"])
                fpid = lab.spawn("maglev", state["maglev"]["ns"], fwd, env=env)
                try:
                    lab._wait_ready(topo.LabSpec(forwarder=True, encap="gre"), 60)
                    c0 = actor_cpu(fpid)
                    m = measure_pps(state, args.seconds, fpid)
                    c1 = actor_cpu(fpid)
                finally:
                    lab.stop_process("maglev")
                fwd_pkts = max(1, int(m["forwarded_pps"] * args.seconds))
                per = {n: {"user_ns": round((c1[n][0] - c0[n][0]) * 1e9 / fwd_pkts),
                           "sys_ns": round((c1[n][1] - c0[n][1]) * 1e9 / fwd_pkts)}
                       for n in ACTORS if n in c0 and n in c1}
                log = (state_dir / "logs" / "maglev.log").read_text(errors="replace").splitlines()
                rx = [line.strip() for line in log if "AF_XDP receive" in line]
                run = {"variant": name, "nic": nic, "env": env, "load": round(os.getloadavg()[0], 2),
                       "sent_pps": m["sent_pps"], "at_nic_pps": m.get("at_nic_pps"),
                       "forwarded_pps": m["forwarded_pps"], "per_packet": per,
                       "afxdp_receive": rx[-1] if rx and nic.startswith("afxdp") else ""}
                runs.append(run)
                if not args.json:
                    print(f"{name:<10} load {run['load']:>5}  offered {run['sent_pps']:>7}  at the NIC "
                          f"{run['at_nic_pps']}  forwarded {run['forwarded_pps']:>7} pps  per packet "
                          + "  ".join(f"{n} {v['user_ns']}u/{v['sys_ns']}s" for n, v in per.items())
                          + (f"\n           {run['afxdp_receive']}" if run["afxdp_receive"] else ""), flush=True)
    finally:
        lab.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    medians = {}
    for name, _, _ in variants:
        xs = sorted(r["forwarded_pps"] for r in runs if r["variant"] == name)
        medians[name] = xs[len(xs) // 2] if xs else None
    if args.json:
        print(json.dumps({"runs": runs, "median_forwarded_pps": medians}, indent=1))
    else:
        for name, med in medians.items():
            print(f"median {name}: {med} pps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
