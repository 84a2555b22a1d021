"""A SYN flood through the real forwarder with established flows kept alive, then a live
backend change (issue 16): ``bench/bench_flood.py`` (the default mode; its docstring says
what is measured and how) and ``tests/actors/test_flood_run.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from maglev import config as cfg
from maglev.datapath.engine import Packet
from maglev.datapath.native import CDataPath
from maglev.datapath.tables import build_tables
from maglev.native import check, ffi, lib
from maglev.testing import unique

VIP = "203.0.113.10"
BURST = 256


@dataclass
class FloodRun:
    established: int = 10000  # flows kept alive (<= 32768)
    keepalive_s: float = 1.0  # each sends one ACK this often
    seconds: float = 5.0  # of flood
    workers: int = 2
    capacity: int = 65536  # conntrack entries per worker


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


def run_real(args: FloodRun, label: str, pct: int, rate: int) -> dict:
    """One run: ``maglev run`` with the flood, the change, the analysis; every process and
    table it made removed, also on failure."""
    import signal
    import subprocess

    from maglev.control.client import ControlClient
    from maglev.control.endpoints import default_control
    from maglev.rings import conntrack_shm as cs
    from maglev.testing.state import private_run_state

    k, ka, n_s, w = args.established, args.keepalive_s, args.seconds, args.workers
    flood_after = 2 * ka
    inst = unique.name("flood")
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


def _analyse(args: FloodRun, inst, conf_path, old, new, samples, t_go, t_change, flood_after, summary) -> dict:
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
    from maglev.actors.dispatch import default_map

    dmap = default_map(w)  # the flow -> worker map `maglev run --workers w` used here
    owner = []
    for p in pkts:
        lib.mg_steer_hash(p, len(p), k0, k1, w, h, fl)
        owner.append(dmap.worker_of(int(h[0])))
    fresh = CDataPath(old_blob, ct_capacity=65536)
    before = [ov.backends[o.backend_index].address for o in fresh.process(
        [Packet(i, p) for i, p in enumerate(pkts)], time.monotonic_ns())]
    after: list[str | None] = [None] * k
    tag = cs.identity_tag(str(state_dir(inst)), str(conf_path))
    fp = cs.key_fingerprint(k0, k1)
    adopted_entries = 0
    for wi in range(w):
        opened = cs.open_table(cs.segment_name(inst, tag, wi), cs.Wanted(args.capacity, fp, w, wi, dmap.fp))
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
