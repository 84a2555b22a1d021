"""SYN flood through the real forwarder, with established flows kept alive, then a live
backend change: do established flows keep their backend? (issue 16, bench_flood)

Default (``--mode run``): ``maglev run --workers W --nic gen:flows=K,flood=N,...`` (the
generator NIC's flood mode, docs/nic.md) in a private state/run folder.  The K
established flows each send one ACK every ``--keepalive-s`` seconds for the whole run
(promoted to the protected segment by their second packet); after ``flood_after`` seconds
(2 keep-alive periods) every other packet the pipeline takes, for ``--seconds`` seconds, is
a SYN from a client never seen before, at the generator's full rate.  0.5 s after the
flood a backend is added to the VIP over the control socket (``add-backend``, a live
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
one an established flow that had lost its entry); ``insert_failures`` and ``rate_guard_hits`` over the run; ``rss_per_worker_bytes``
= max RSS of each worker process (from /proc, with the table's shared pages);
``forwarded_mpps`` = forwarded packets per second during the flood (control-socket stats
every 0.25 s).  Runs: ``baseline`` (protected_percent = 1, no rate guard: roughly the
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

from maglev import config as cfg
from maglev.datapath.ctmem import page_mode_name
from maglev.datapath.engine import Packet
from maglev.datapath.native import CDataPath
from maglev.datapath.tables import build_tables
from maglev.native import check, ffi, lib
from maglev.testing import packets as P

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
        check(lib.mg_dp_bench(dp._dp, dp._tables_buf, flood.io, flood_per_chunk, 1 << 32, first_flood, now,
                              step, flood.ns), "mg_dp_bench flood")
        first_flood += flood_per_chunk * BURST
        cpu_ns += flood.ns[0]
        packets += flood_per_chunk * BURST
        now += flood_per_chunk * step
        keep_due += keep_pps * flood_per_chunk * step / 1e9
        rounds = int(keep_due // BURST)
        if rounds:
            keep_due -= rounds * BURST
            check(lib.mg_dp_bench(dp._dp, dp._tables_buf, keep.io, rounds, k, keep_cursor, now, 0, keep.ns),
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


# ------------------------------------------------------------------ the real forwarder


ADDED = "198.18.1.9"
SECRET = "00112233445566778899aabbccddeeff"


def run_conf_text(name: str, capacity: int, pct: int, rate: int, extra: bool = False) -> str:
    backends = [f"198.18.1.{i}" for i in range(1, 9)] + ([ADDED] if extra else [])
    return (f'[instance]\nname = "{name}"\nsource_ipv4 = "198.18.0.1"\nflow_hash_secret = "{SECRET}"\n'
            f"[conntrack]\ncapacity = {capacity}\nprotected_percent = {pct}\nnew_flows_per_s = {rate}\n"
            f'[[vip]]\naddress = "{VIP}"\nport = 80\nprotocol = "tcp"\n[vip.health]\ntype = "none"\n'
            + "".join(f'[[vip.backend]]\naddress = "{b}"\n' for b in backends))


def established_packets(config: cfg.Config, k: int) -> list[bytes]:
    """The K established flows' ACKs, made by the generator the run uses (same templates)."""
    from maglev.nic.gen import GenNic, vip_targets

    g = GenNic(vip_targets(config), flows=k, flood=1.0, seed=1)
    pool = ffi.new("uint8_t[]", BURST * lib.MG_FRAME_SIZE)
    descs = ffi.new("uint64_t[]", list(range(BURST)))
    out: list[bytes] = []
    while len(out) < k:
        n = check(lib.mg_gen_fill_flood(g._g, pool, descs, min(BURST, k - len(out)), 0, 0), "gen")
        for i in range(n):
            m = ffi.cast("struct mg_frame_meta *", pool + i * lib.MG_FRAME_SIZE)
            start = i * lib.MG_FRAME_SIZE + lib.MG_FRAME_META_SIZE + m.data_off
            out.append(bytes(ffi.buffer(pool + start, m.len)))
    return out


def _worker_pids(root: int, instance: str) -> dict[int, int]:
    """worker index -> pid: the process holding /dev/shm/maglev-<instance>-ct-*-<i> open."""
    import psutil

    found: dict[int, int] = {}
    try:
        procs = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return found
    prefix = f"/dev/shm/maglev-{instance}-ct-"
    for p in procs:
        try:
            for f in p.open_files():
                if f.path.startswith(prefix) and f.path.rsplit("-", 1)[1].isdigit():
                    found[int(f.path.rsplit("-", 1)[1])] = p.pid
        except psutil.Error:
            continue
    return found


def _rss(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssShmem"):
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def run_real(args: argparse.Namespace, label: str, pct: int, rate: int) -> dict:
    import secrets
    import signal
    import subprocess

    from maglev.control.client import ControlClient
    from maglev.control.endpoints import default_control
    from maglev.rings import conntrack_shm as cs
    from maglev.testing.state import private_run_state

    k, ka, n_s, w = args.established, args.keepalive_s, args.seconds, args.workers
    flood_after = 2 * ka
    inst = f"flood{secrets.token_hex(3)}"
    res: dict = {"run": label, "protected_percent": pct, "new_flows_per_s": rate}
    with private_run_state("mgflood-") as base:
        conf_path = Path(base) / "maglev.toml"
        conf_path.write_text(run_conf_text(inst, args.capacity, pct, rate))
        old, new = cfg.load(str(conf_path)), cfg.loads(run_conf_text(inst, args.capacity, pct, rate, extra=True))
        bound = flood_after + n_s + 3 * ka + 30  # the run ends by itself at the latest then
        spec = (f"gen:flows={k},flood={n_s:g},flood_after={flood_after:g},keepalive={ka:g},seed=1,"
                f"seconds={bound:g}")
        cmd = [sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--workers", str(w),
               "--config", str(conf_path), "--nic", spec, "--json"]
        res["command"] = f"maglev run --workers {w} --config FILE --nic {spec} --json"
        out_f, err_f = open(Path(base) / "out.json", "w+"), open(Path(base) / "err.txt", "w+")
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, start_new_session=True)
        samples: list[tuple[float, dict]] = []
        rss: dict[int, dict[str, int]] = {}
        try:
            client = None
            deadline = time.monotonic() + 90
            t_go = t_change = None
            pids: dict[int, int] = {}
            while True:
                if proc.poll() is not None:
                    err_f.seek(0)
                    raise RuntimeError(f"maglev run exited early ({proc.returncode}): {err_f.read()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("the flood run did not finish in time")
                try:
                    client = client or ControlClient(default_control(inst), timeout=5.0)
                    st = client.call("stats", {})
                except Exception:  # not up yet
                    time.sleep(0.1)
                    continue
                now = time.monotonic()
                samples.append((now, st))
                if t_go is None and st["totals"]["packets_in"] > 0:
                    t_go = now
                if len(pids) < w:
                    pids = _worker_pids(proc.pid, inst)
                for i, pid in pids.items():
                    for key, v in _rss(pid).items():
                        rss.setdefault(i, {})[key] = max(rss.get(i, {}).get(key, 0), v)
                if t_go is not None and t_change is None and now >= t_go + flood_after + n_s + 0.1:
                    t_change = time.monotonic()
                    r = client.call("add-backend", {"vip": f"{VIP}:80/tcp", "backend": {"address": ADDED}})
                    res["change"] = {"generation": r.get("generation"), "confirmed": r.get("confirmed"),
                                     "apply_ms": r.get("apply_ms")}
                    samples.append((time.monotonic(), client.call("stats", {})))
                if t_change is not None and now >= t_change + 2.5 * ka:
                    break
                time.sleep(0.1)
            if client is not None:
                client.close()
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            out_f.seek(0)
            summary = json.loads(out_f.read() or "{}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            out_f.close()
            err_f.close()
        try:
            res.update(_analyse(args, inst, conf_path, old, new, samples, t_go, t_change, flood_after, summary))
        finally:
            cs.remove_segments(inst)
    res["rss_per_worker_bytes"] = [rss.get(i, {}).get("VmRSS", 0) for i in range(w)]
    res["rss_shmem_per_worker_bytes"] = [rss.get(i, {}).get("RssShmem", 0) for i in range(w)]
    res["rss_anon_per_worker_bytes"] = [rss.get(i, {}).get("RssAnon", 0) for i in range(w)]
    return res


def _ct_sum(st: dict, key: str) -> int:
    return sum(int((wk.get("conntrack") or {}).get(key, 0)) for wk in st["workers"])


def _analyse(args, inst, conf_path, old, new, samples, t_go, t_change, flood_after, summary) -> dict:
    from maglev.control.endpoints import state_dir
    from maglev.datapath.tables import read_tables
    from maglev.rings import conntrack_shm as cs

    k, w = args.established, args.workers
    f0, f1 = t_go + flood_after + 0.3, t_go + flood_after + args.seconds - 0.3
    during = [(t, s) for t, s in samples if f0 <= t <= f1]
    fwd_rate = 0.0
    if len(during) >= 2:
        (ta, sa), (tb, sb) = during[0], during[-1]
        fwd_rate = (sb["totals"]["forwarded"] - sa["totals"]["forwarded"]) / (tb - ta)
    # the workers publish their counters every ~0.3 s: the first sample >= 0.5 s after the
    # flood has all of its inserts; every insert after it is an established flow's miss
    settled = next((s for t, s in samples if t >= t_go + flood_after + args.seconds + 0.5), samples[-1][1])
    first = samples[0][1]
    final = summary.get("per_worker") or []
    ins_end = sum(int(wk["conntrack"]["inserts"]) for wk in final) if final else _ct_sum(samples[-1][1], "inserts")
    end_ct = {key: sum(int(wk["conntrack"][key]) for wk in final) for key in
              ("insert_failed", "rate_guard_hits", "evictions", "inserts", "promoted", "hits")} if final else {}
    # before: the old tables' Maglev answer; after: the run's tables + the new tables
    old_blob, new_blob = build_tables(old), build_tables(new)
    ov, nv = read_tables(old_blob), read_tables(new_blob)
    k0, k1 = ov.header["hash_k0"], ov.header["hash_k1"]
    pkts = established_packets(old, k)
    h, fl = ffi.new("uint64_t *"), ffi.new("uint16_t *")
    owner = [int(lib.mg_steer_hash(p, len(p), k0, k1, w, h, fl)) for p in pkts]
    fresh = CDataPath(old_blob, ct_capacity=65536)
    before = [ov.backends[o.backend_index].address for o in fresh.process(
        [Packet(i, p) for i, p in enumerate(pkts)], time.monotonic_ns())]
    after: list[str | None] = [None] * k
    tag = cs.identity_tag(str(state_dir(inst)), str(conf_path))
    fp = cs.key_fingerprint(k0, k1)
    adopted_entries = 0
    for wi in range(w):
        opened = cs.open_table(cs.segment_name(inst, tag, wi), cs.Wanted(args.capacity, fp, w, wi))
        if opened is None or not opened.adopted:
            raise RuntimeError(f"worker {wi}'s table was not adoptable after the run: "
                               f"{opened.reason if opened else 'in use'}")
        adopted_entries += opened.entries
        dp = CDataPath(new_blob, shared_ct=opened.ct, worker=wi, now_ns=time.monotonic_ns())
        mine = [i for i in range(k) if owner[i] == wi]
        for o in dp.process([Packet(i, pkts[i]) for i in mine], time.monotonic_ns()):
            after[o.seq] = nv.backends[o.backend_index].address if o.backend_index >= 0 else None
        del dp
        opened.close()
    moved = sum(1 for b, a in zip(before, after, strict=True) if a != b)
    plain = CDataPath(new_blob, ct_capacity=65536)  # the new tables alone: what Maglev would move
    maglev_moves = sum(1 for o in plain.process([Packet(i, p) for i, p in enumerate(pkts)], time.monotonic_ns())
                       if nv.backends[o.backend_index].address != before[o.seq])
    timeline = [[round(t - t_go, 2), s["totals"]["packets_in"], _ct_sum(s, "inserts"), _ct_sum(s, "hits")]
                 for t, s in samples]
    return {
        "timeline": {"columns": ["t_s", "packets_in", "inserts", "hits"], "flood_s": [flood_after, flood_after + args.seconds],
                     "change_s": round(t_change - t_go, 2), "rows": timeline},
        "moved_established_share": moved / k,
        "moved_established": moved,
        "maglev_would_move": maglev_moves,
        "established_misses_after_flood": ins_end - _ct_sum(settled, "inserts"),
        "insert_failures": end_ct.get("insert_failed", _ct_sum(samples[-1][1], "insert_failed"))
        - _ct_sum(first, "insert_failed"),
        "rate_guard_hits": end_ct.get("rate_guard_hits", 0) - _ct_sum(first, "rate_guard_hits"),
        "evictions": end_ct.get("evictions", 0),
        "promoted": end_ct.get("promoted", 0),
        "forwarded_mpps": fwd_rate / 1e6,
        "packets_in": summary.get("packets_in"),
        "dropped": summary.get("dropped"),
        "adopted_entries": adopted_entries,
        "table_entries_per_worker": cs.round_capacity(args.capacity),
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
        res = {"mode": "run", "runs": {r: run_real(a, r, *plan[r]) for r in names}}
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
