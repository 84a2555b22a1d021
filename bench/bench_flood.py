"""SYN flood through the real forwarder, with established flows kept alive, then a live
backend change: do established flows keep their backend? (issue 16, bench_flood)

Default (``--mode run``): ``maglev run --workers W --nic gen:flows=K,flood=N,...`` (the
generator NIC's flood mode, docs/actors.md) in a private state/run folder.  The K
established flows each send one ACK every ``--keepalive-s`` seconds for the whole run
(promoted to the protected segment by their second packet); after ``flood_after`` seconds
(2 keep-alive periods) every other packet the pipeline takes, for ``--seconds`` seconds, is
a SYN from a client never seen before, at the generator's full rate (as fast as the
pipeline takes them).  0.1 s after the flood a backend is added to the VIP over the control socket (``add-backend``, a live
reconfiguration: a Maglev table change that moves ~1/9 of the hash choices) while the
keep-alives go on for 2.5 more periods, then the run is stopped (SIGINT).  Its connection
tables stay in /dev/shm (``[conntrack] shared``): the bench adopts them afterwards and
sends one ACK of every established flow through its worker's table and the new tables
(the C data path in-process, the run's own code): the backend each flow was forwarded to
after the change (a flow that lost its entry was re-inserted with its new Maglev backend
by the run).  Before = the old tables' Maglev answer (what each flow got before the flood).

``moved_established_share`` = flows whose backend differs / K (``maglev_would_move``: how
many the change would move without connection tables); ``established_misses_after_flood``
= conntrack inserts from 0.5 s after the flood to the end (>= 2 keep-alive rounds; each
one an established flow that had lost its entry; a lower bound: one that re-sent before
that is not counted); ``insert_failures`` and ``rate_guard_hits`` over the run;
``rss_per_worker_bytes`` = max RSS of each worker process (from /proc, with the table's shared pages);
``forwarded_mpps`` = forwarded packets per second during the flood (control-socket stats
polled every 0.1 s; the workers publish them every ~0.3 s).  Runs: ``baseline`` (protected_percent = 1, no rate guard: roughly the
table before issue 16), ``protected`` (protected_percent, no guard) and ``guarded``
(protected_percent and new_flows_per_s); the top-level keys are the guarded run's.
Every process and table the bench made is removed at the end, also on failure.

``--mode model``: the earlier in-process model of one worker's data-path kernel on a model
clock (the flood's rate simulated, not achieved).

    python bench/bench_flood.py [--seconds 5] [--established 10000] [--workers 2] [--json]
    python bench/bench_flood.py --mode model [--seconds 5] [--established 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from native.build import load as load_bench_module  # bench/native: benchmark-only C

from maglev import config as cfg
from maglev.datapath.ctmem import page_mode_name
from maglev.datapath.engine import Packet
from maglev.datapath.native import CDataPath
from maglev.datapath.tables import build_tables
from maglev.native import check, ffi, lib
from maglev.testing import packets as P
from maglev.testing.flood import FloodRun, run_real

blib = load_bench_module().lib

VIP = "203.0.113.10"
EST_CLIENT = "198.51.100.7"
FLOOD_CLIENT = "198.51.100.99"
BURST = 256


def conf(n_backends: int) -> cfg.Config:
    return cfg.loads(
        '[instance]\nsource_ipv4 = "198.18.0.1"\n[[vip]]\naddress = "203.0.113.10"\nport = 0\nprotocol = "tcp"\n'
        + "".join(f'[[vip.backend]]\naddress = "198.18.1.{i}"\n' for i in range(1, n_backends + 1)))


def pkt(src: str, flow: int, flags: int) -> bytes:
    # the flow id in the ports exactly as mg_dp_bench writes it (sport low 16 bits, dport next 16)
    return P.eth(P.ipv4(src, VIP, P.TCP, P.tcp(flow & 0xFFFF, (flow >> 16) & 0xFFFF, src=src, dst=VIP, flags=flags)))


class Io:
    """A burst of 256 frames holding one template packet (mg_dp_bench rewrites the ports)."""

    def __init__(self, data: bytes):
        n = BURST
        self.pool = ffi.new("uint8_t[]", n * lib.MG_FRAME_SIZE)
        self.frames = ffi.new("uint32_t[]", list(range(n)))
        self.tx = ffi.new("uint32_t[]", n + lib.MG_DP_DRAIN_MAX)
        self.drop = ffi.new("uint32_t[]", n + lib.MG_DP_DRAIN_MAX)
        for i in range(n):
            base = i * lib.MG_FRAME_SIZE
            m = ffi.cast("struct mg_frame_meta *", self.pool + base)
            m.len, m.data_off, m.backend_index = len(data), lib.MG_FRAME_HEADROOM, -1
            ffi.memmove(self.pool + base + lib.MG_FRAME_META_SIZE + lib.MG_FRAME_HEADROOM, data, len(data))
        self.io = ffi.new("struct mg_dp_io *", {
            "pool": self.pool, "frames": self.frames, "n": n, "tx": self.tx, "tx_cap": n + lib.MG_DP_DRAIN_MAX,
            "drop": self.drop, "drop_cap": n + lib.MG_DP_DRAIN_MAX})
        self.ns = ffi.new("uint64_t *")


def run_model(args: argparse.Namespace, protected_percent: int, new_flows_per_s: int) -> dict:
    """ONE worker's ``mg_dp`` (a --capacity table) receiving its share of the generator's
    full rate of SYNs (--flood-mpps, default 4.2 Mpps / 2 workers), each from a new flow,
    for --seconds of *model* time: the clock given to the kernel advances 256 / rate per
    burst, so ageing, timeouts and the rate guard see the flood's real rate even though
    this VM computes it slower.  Every 10 ms of model time the established flows (SYN +
    ACK first: promoted) send their ACKs, each one every --keepalive-s; after the flood a
    backend is added and every established flow sends one more ACK.  Forwarded rate =
    packets per second of thread CPU time inside mg_dp_burst."""
    blob = build_tables(conf(8))
    dp = CDataPath(blob, ct_capacity=args.capacity)
    dp.set_conntrack_policy(protected_percent, new_flows_per_s)
    ct = dp.conntrack_table()
    k = args.established
    now = 10**9
    # the established flows: SYN, then ACK (promoted); remember each one's backend
    dp.process([Packet(i, pkt(EST_CLIENT, i, 0x02)) for i in range(k)], now)
    now += 10**6
    before = {o.seq: o.backend_index for o in dp.process([Packet(i, pkt(EST_CLIENT, i, 0x10)) for i in range(k)], now)}
    t0 = dp.stats()["conntrack"]
    flood, keep = Io(pkt(FLOOD_CLIENT, 0, 0x02)), Io(pkt(EST_CLIENT, 0, 0x10))
    rate = args.flood_mpps * 1e6
    step = round(BURST / rate * 1e9)  # model ns per flood burst
    chunk_ns = 10**7  # 10 ms of model time between keepalive rounds
    flood_per_chunk = max(1, round(chunk_ns / step))
    keep_pps = k / args.keepalive_s
    cpu_ns, packets, first_flood, keep_cursor, keep_due = 0, 0, 1 << 20, 0, 0.0
    end = now + round(args.seconds * 1e9)
    wall0 = time.perf_counter()
    while now < end:
        check(blib.mg_dp_bench(dp._dp, dp._tables_buf, flood.io, flood_per_chunk, 1 << 32, first_flood, now,
                              step, flood.ns), "mg_dp_bench flood")
        first_flood += flood_per_chunk * BURST
        cpu_ns += flood.ns[0]
        packets += flood_per_chunk * BURST
        now += flood_per_chunk * step
        keep_due += keep_pps * flood_per_chunk * step / 1e9
        rounds = int(keep_due // BURST)
        if rounds:
            keep_due -= rounds * BURST
            check(blib.mg_dp_bench(dp._dp, dp._tables_buf, keep.io, rounds, k, keep_cursor, now, 0, keep.ns),
                  "mg_dp_bench keepalive")
            keep_cursor = (keep_cursor + rounds * BURST) % k
            cpu_ns += keep.ns[0]
            packets += rounds * BURST
    wall = time.perf_counter() - wall0
    during = dp.stats()["conntrack"]
    # the backend change, then one ACK per established flow
    dp.set_tables(build_tables(conf(9)))
    now += 10**6
    hits0 = during["hits"]
    after = {o.seq: o.backend_index for o in dp.process([Packet(i, pkt(EST_CLIENT, i, 0x10)) for i in range(k)], now)}
    st = dp.stats()["conntrack"]
    # the same backend = the same address (indices of the old and new blobs: backend i is
    # 198.18.1.(i+1) in both, the added one is last)
    moved = sum(1 for i in range(k) if after[i] != before[i])
    return {
        "protected_percent": protected_percent,
        "new_flows_per_s": new_flows_per_s,
        "moved_established_share": moved / k,
        "established_lost_entry": k - (st["hits"] - hits0),
        "insert_failures": during["insert_failed"] - t0["insert_failed"],
        "rate_guard_hits": during["rate_guard_hits"] - t0["rate_guard_hits"],
        "evictions": during["evictions"] - t0["evictions"],
        "flood_packets": first_flood - (1 << 20),
        "forwarded_mpps_cpu": packets / cpu_ns * 1e3 if cpu_ns else 0.0,
        "model_seconds": args.seconds,
        "wall_seconds": wall,
        "table_entries": int(lib.mg_ct_capacity(ct)),
        "table_used": int(ct.n_used),
        "table_protected": int(ct.n_protected),
        "table_bytes": int(ct.map_bytes),
        "page_mode": page_mode_name(ct),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("run", "model"), default="run",
                    help="run: the real forwarder (maglev run + generator NIC); model: one worker's kernel in-process")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds of flood (model: model seconds)")
    ap.add_argument("--flood-mpps", type=float, default=2.1, help="model: SYNs per second for this worker (Mpps)")
    ap.add_argument("--established", type=int, default=None, help="established flows (run 10000, model 20000)")
    ap.add_argument("--keepalive-s", type=float, default=None, help="each established flow sends one ACK this often "
                    "(run 1, model 2)")
    ap.add_argument("--workers", type=int, default=2, help="run: packet workers")
    ap.add_argument("--capacity", type=int, default=65536)
    ap.add_argument("--protected-percent", type=int, default=90)
    ap.add_argument("--new-flows-per-s", type=int, default=200000)
    ap.add_argument("--runs", default="baseline,protected,guarded")
    ap.add_argument("--cpu", type=int, default=None, help="model: pin to this CPU")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.established is None:
        a.established = 10000 if a.mode == "run" else 20000
    if a.keepalive_s is None:
        a.keepalive_s = 1.0 if a.mode == "run" else 2.0
    if not 1 <= a.established <= 32768:
        ap.error("--established: 1..32768")
    plan = {"baseline": (1, 0), "protected": (a.protected_percent, 0),
            "guarded": (a.protected_percent, a.new_flows_per_s)}
    names = [r for r in a.runs.split(",") if r]
    if not names or any(r not in plan for r in names):
        ap.error(f"--runs: some of {', '.join(plan)}")
    if a.mode == "model":
        cpu = a.cpu if a.cpu is not None else min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        res = {"mode": "model", "model": "one worker's data-path kernel in-process, model clock at the flood rate",
               "runs": {r: run_model(a, *plan[r]) for r in names}}
        res["rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        g = res["runs"][names[-1]]
        res["rss_per_worker_bytes"] = [res["rss_bytes"]]
        res["forwarded_mpps"] = g["forwarded_mpps_cpu"]
    else:
        fr = FloodRun(a.established, a.keepalive_s, a.seconds, a.workers, a.capacity)
        res = {"mode": "run", "runs": {r: run_real(fr, r, *plan[r]) for r in names}}
        g = res["runs"][names[-1]]
        res["rss_per_worker_bytes"] = g["rss_per_worker_bytes"]
        res["forwarded_mpps"] = g["forwarded_mpps"]
        res["command"] = g["command"]
    for key in ("moved_established_share", "insert_failures", "rate_guard_hits"):
        res[key] = g[key]
    res["date"] = time.strftime("%Y-%m-%d")
    if a.json:
        print(json.dumps(res, indent=1))
        return
    if a.mode == "model":
        print(f"MODEL: SYN flood {a.flood_mpps} Mpps x {a.seconds} model s at one worker (table {a.capacity}), "
              f"{a.established} established flows with one ACK every {a.keepalive_s} s, then a backend added")
        cols = ("moved_established_share", "established_lost_entry", "insert_failures", "rate_guard_hits",
                "evictions", "forwarded_mpps_cpu", "table_protected", "wall_seconds")
    else:
        print(f"maglev run, {a.workers} workers, table {a.capacity}/worker: SYN flood at the generator's full rate for "
              f"{a.seconds} s, {a.established} established flows with one ACK every {a.keepalive_s} s, then a backend "
              f"added live ({g['command']})")
        cols = ("moved_established_share", "moved_established", "maglev_would_move", "established_misses_after_flood",
                "insert_failures", "rate_guard_hits", "evictions", "forwarded_mpps")
    print(f"{'run':<28}" + "".join(f"{c[:20]:>22}" for c in cols))
    for name, r in res["runs"].items():
        label = f"{name} ({r['protected_percent']}%, {r['new_flows_per_s']}/s)"
        print(f"{label:<28}" + "".join(f"{r[c]:>22.4f}" if isinstance(r[c], float) else f"{r[c]:>22}" for c in cols))
    if a.mode == "run":
        for name, r in res["runs"].items():
            print(f"{name}: RSS per worker " + ", ".join(f"{v / 2**20:.1f} MiB" for v in r["rss_per_worker_bytes"])
                  + " (of which shared table pages " + ", ".join(f"{v / 2**20:.1f}" for v in
                                                                  r["rss_shmem_per_worker_bytes"]) + " MiB)")
    else:
        print(f"max RSS of this process (one worker's data path + Python): {res['rss_bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
