"""Pipeline throughput: generator NIC -> steering -> N workers -> muxer -> null sink, against
the single-process engine on the same packets, in the same run (issue 4).

Measured, in this order and repeated ``--rounds`` times (the machine is shared and the two
vCPUs are sometimes placed far apart, so only ratios from the same round mean much):

* ``single``: one process, one core: the generator (mg_gen_fill) and the data-path burst
  kernel (mg_dp_burst, the C path `maglev replay` uses) called in a loop on bursts of 256
  frames, the same packets (same generator seed and options), no rings;
* ``pipeline W=1`` and ``pipeline W=2``: ``maglev run``'s processes (Pipeline), generator
  NIC and null sink; the rate is the muxer's transmit counter over a window after a
  warm-up;
* idle CPU: 8 workers, after the input ended, CPU time of all actor processes over 3 s;
* per actor, CPU ns per packet over the window (process CPU time / packets): what each
  stage costs, which on a shared machine varies much less than the rate does;
* ``--stages``: the pipeline's C glue driven in this one process over a real region, one
  stage after the other (steering: reclaim, take, dispatch; the generator; the worker's
  ``mg_worker_burst``; the muxer's collect + done), ns per packet each: the machinery's
  own cost with no cross-core traffic and no scheduling.

Packets: 64-byte frames (IPv4 TCP; IPv6 flows are header-sized, 74 bytes), 10k flows,
10% SYN, 20% IPv6, toward the sample config's VIPs.  Never asserts on speed.

    python bench/bench_pipeline.py [--seconds 4] [--rounds 2] [--workers 1,2] [--stages] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

import psutil

from maglev.actors.pipeline import Pipeline, PipelineOptions, latency_us
from maglev.config import load_config
from maglev.datapath.tables import build_tables
from maglev.native import ffi, lib
from maglev.nic.gen import GenNic, vip_targets

GEN = "flows=10000,size=64,syn=0.1,ipv6=0.2,seed=1"
# The pipeline runs' config: the sample config under an instance name of this bench's own
# (bench_config), so no run adopts connection tables another run left in /dev/shm (the
# sample's `mg1` would adopt a previous round's or a user's tables); each run's tables are
# dropped when it ends (run_pipeline), so rounds are independent and nothing is left.
BENCH = {"config": "", "instance": ""}


def bench_config(folder: str) -> str:
    """Write the sample config with the instance name ``mgbench-<pid>`` into ``folder``."""
    import os

    from maglev.config import SAMPLE_CONFIG

    inst = f"mgbench-{os.getpid()}"
    text, n = re.subn(r'(?m)^name = "mg1"$', f'name = "{inst}"', SAMPLE_CONFIG.read_text(), count=1)
    if n != 1:
        raise RuntimeError(f"bench: no instance name line in {SAMPLE_CONFIG}")
    path = os.path.join(folder, "bench.toml")
    with open(path, "w") as f:
        f.write(text)
    BENCH.update(config=path, instance=inst)
    return path


def new_pipeline(opts: PipelineOptions) -> Pipeline:
    opts.config_path = BENCH["config"]
    if BENCH.get("steer_cost") is not None:
        opts.steer_cost = float(BENCH["steer_cost"])
    if BENCH.get("nap_us") is not None and hasattr(opts, "nap_us"):
        opts.nap_us = int(BENCH["nap_us"])
    if BENCH.get("fallback") is not None and hasattr(opts, "fallback"):  # (a tree from before 2026-12-07 s9: none)
        opts.fallback = str(BENCH["fallback"])
    if BENCH.get("placement") is not None and hasattr(opts, "placement"):  # (before 2026-12-08 s10: none)
        opts.placement = str(BENCH["placement"])
    if BENCH.get("ring_size") is not None:
        opts.ring_size = int(BENCH["ring_size"])
    return Pipeline(opts)


def drop_tables() -> None:
    """Remove the connection tables the run that just closed kept for adoption."""
    if BENCH["instance"]:
        from maglev.rings.conntrack_shm import drop_instance

        drop_instance(BENCH["instance"])


def single_process(seconds: float, pool_frames: int = 4096) -> float:
    """Mpps of generator + burst kernel in this one process (the replay engine's C path)."""
    cfg = load_config("")
    blob = build_tables(cfg)
    tables = ffi.new("uint8_t[]", blob)
    k0, k1 = cfg.flow_hash_key
    frame = int(lib.MG_FRAME_SIZE)
    pool = ffi.new("uint8_t[]", pool_frames * frame)
    gen = GenNic(vip_targets(cfg), flows=10000, size=64, syn=0.1, ipv6=0.2, seed=1)
    dp = ffi.gc(lib.mg_dp_new(cfg.conntrack.capacity, 0, k0, k1, time.monotonic_ns()), lib.mg_dp_free)
    burst = 256
    n_bursts = pool_frames // burst
    # Walk the pool burst by burst, as the pipeline's frames cycle through the free list.
    descs = [ffi.new("uint64_t[]", list(range(b * burst, (b + 1) * burst))) for b in range(n_bursts)]
    frames = [ffi.new("uint32_t[]", list(range(b * burst, (b + 1) * burst))) for b in range(n_bursts)]
    tx = ffi.new("uint32_t[]", burst + 64)
    drop = ffi.new("uint32_t[]", burst + 64)
    io = ffi.new("struct mg_dp_io *")
    io.pool, io.n, io.tx, io.tx_cap, io.drop, io.drop_cap = pool, burst, tx, burst + 64, drop, burst + 64
    done = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    b = 0
    while True:
        gen.rx_burst(pool, descs[b], burst)
        io.frames = frames[b]
        io.n_tx = io.n_drop = 0
        lib.mg_dp_burst(dp, tables, time.monotonic_ns(), io)
        done += burst
        b = (b + 1) % n_bursts
        if b == 0 and time.perf_counter() >= end:
            break
    return done / (time.perf_counter() - t0) / 1e6


def stages(bursts: int = 4000) -> dict[str, float]:
    """ns per packet of each stage of the pipeline's C glue, in this one process."""
    from maglev.rings import SLOT_MUXER, SLOT_STEERING, Region

    cfg = load_config("")
    blob = build_tables(cfg)
    k0, k1 = cfg.flow_hash_key
    region = Region.create(f"benchstages-{time.monotonic_ns() % 10**9}", 1, 6144, 2048,
                           max(len(blob) * 2, 1 << 20))
    try:
        region.tables.publish(blob, [], 1.0)
        base, pool = region.base, region.pool_ptr
        st = ffi.new("struct mg_steer *")
        mux = ffi.new("struct mg_mux *")
        if lib.mg_steer_init(st, base, SLOT_STEERING, k0, k1) or lib.mg_mux_init(mux, base, SLOT_MUXER):
            raise RuntimeError("stage bench: glue init failed")
        w = ffi.gc(lib.mg_worker_new(base, 0, cfg.conntrack.capacity, k0, k1, 256, time.monotonic_ns()),
                   lib.mg_worker_free)
        gen = GenNic(vip_targets(cfg), flows=10000, size=64, syn=0.1, ipv6=0.2, seed=1)
        cnt = ffi.new("uint32_t *")
        ns = {"steering (reclaim+take+dispatch)": 0, "generator (mg_gen_fill)": 0,
              "worker (mg_worker_burst)": 0, "muxer (collect+done)": 0}
        keys = list(ns)
        packets = 0
        pc = time.perf_counter_ns
        for it in range(bursts):
            a = pc()
            lib.mg_steer_reclaim(st, base)
            n = lib.mg_steer_take(st, base, 256)
            descs = lib.mg_hand_descs(base, SLOT_STEERING, cnt)
            b = pc()
            k = lib.mg_gen_fill(gen._g, pool, descs, n, time.monotonic_ns())
            c = pc()
            lib.mg_steer_dispatch(st, base, k, 1)
            d = pc()
            lib.mg_worker_burst(w, base, time.monotonic_ns())
            e = pc()
            lib.mg_mux_done(mux, base, lib.mg_mux_collect(mux, base, 256), 0)
            f = pc()
            if it >= bursts // 4:  # after a warm-up lap of the pool
                for key, v in zip(keys, ((b - a) + (d - c), c - b, e - d, f - e), strict=True):
                    ns[key] += v
                packets += k
    finally:
        region.close()
        region.unlink()
    return {key: round(v / max(1, packets), 1) for key, v in ns.items()}


def schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of a process's main thread
    (/proc/PID/schedstat); (0, 0) when the kernel does not keep it."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            run, wait = f.read().split()[:2]
        return int(run), int(wait)
    except (OSError, ValueError):
        return 0, 0


def pipeline(workers: int, seconds: float, warmup: float = 1.0) -> dict:
    from maglev.rings import BELL_MUXER, BELL_STEERING, worker_bell

    p = new_pipeline(PipelineOptions(workers=workers, nic=f"gen:{GEN}"))
    try:
        p.start()
        t_end = time.monotonic() + warmup
        while time.monotonic() < t_end:
            p.poll(0.05)
        procs = {n: psutil.Process(p.supervisor.pid(n)) for n in p.supervisor.children
                 if n in ("steering", "muxer") or n.startswith("worker-")}
        cpu0 = {n: sum(pr.cpu_times()[:2]) for n, pr in procs.items()}
        ctx0 = {n: pr.num_ctx_switches() for n, pr in procs.items()}
        bells = {"steering": p.region.bell(BELL_STEERING), "muxer": p.region.bell(BELL_MUXER),
                 **{f"worker-{i}": p.region.bell(worker_bell(i)) for i in range(workers)}}
        sl0 = {n: b.stats()["sleeps"] for n, b in bells.items()}
        ss0 = {n: schedstat(pr.pid) for n, pr in procs.items()}
        c0, t0 = p.counters(), time.monotonic()
        while time.monotonic() < t0 + seconds:
            p.poll(0.05)
        c1, t1 = p.counters(), time.monotonic()
        cpu = {n: sum(pr.cpu_times()[:2]) - cpu0[n] for n, pr in procs.items()}
        ctx = {n: [a - b for a, b in zip(pr.num_ctx_switches(), ctx0[n], strict=True)] for n, pr in procs.items()}
        sleeps = {n: b.stats()["sleeps"] - sl0[n] for n, b in bells.items()}
        ss = {n: [a - b for a, b in zip(schedstat(pr.pid), ss0[n], strict=True)] for n, pr in procs.items()}
        p.stop()
        s = p.summary()
    finally:
        p.close()
        drop_tables()
    dt = t1 - t0
    sent = max(1, c1["tx_packets"] - c0["tx_packets"])
    return {
        "workers": workers,
        "cpu_ns_per_packet": {n: round(v * 1e9 / sent) for n, v in sorted(cpu.items())},
        # context switches per 1000 packets: [voluntary (doorbell sleeps, back-off), involuntary]
        "ctx_per_kpkt": {n: [round(v * 1000 / sent, 2) for v in c] for n, c in sorted(ctx.items())},
        # doorbell futex sleeps per 1000 packets (each one a wake-up its producer paid for;
        # the rest of the voluntary switches are naps, back-off sleeps and Python's waits)
        "bell_sleeps_per_kpkt": {n: round(v * 1000 / sent, 2) for n, v in sorted(sleeps.items())},
        # share of the window each actor spent [on a CPU, runnable but waiting for one]; the
        # rest it slept (doorbell, nap, back-off)
        "sched_share": {n: [round(v / 1e9 / dt, 3) for v in x] for n, x in sorted(ss.items())},
        "mpps": (c1["tx_packets"] - c0["tx_packets"]) / dt / 1e6,
        "fallback_share": (c1["fallback"] - c0["fallback"]) / max(1, c1["packets_in"] - c0["packets_in"]),
        "pool_ok": s["pool"]["ok"],
        "dropped": s["dropped"],
    }


def latency(workers: int, rate: float, seconds: float, warmup: float = 0.5, idle_poll_us: int | None = None,
            rt_prio: int | None = None) -> dict:
    """Steering-rx -> muxer-tx latency at a paced rate (the generator stamps each frame's
    rx_ts_ns as it fills it; the muxer buckets now - rx_ts_ns, quarter-octave buckets, as
    it transmits): {p50, p99, p999} in us (bucket upper edges), ``packets``, ``rate`` (the
    paced rate asked), ``mpps`` (what the muxer sent over the window), ``sleeps_per_kpkt``
    (doorbell futex sleeps of steering, workers and muxer per 1000 packets: with the
    adaptive idle window each hop of a trickle is polled, not slept through), ``cpu``
    (cores the actors used) and ``cpu_us_per_packet`` (per actor: CPU time over packets
    sent -- at a trickle, what each wake-up costs the actor)."""
    from maglev.native import lib
    from maglev.rings import BELL_MUXER, BELL_STEERING, SLOT_MUXER, worker_bell

    rate = max(1, round(rate))
    extra: dict = {} if idle_poll_us is None else {"idle_poll_us": idle_poll_us}
    if rt_prio is not None:
        extra["rt_prio"] = rt_prio
    p = new_pipeline(PipelineOptions(workers=workers, nic=f"gen:{GEN},rate={rate}", latency=True, **extra))
    lat0, n = int(lib.MG_MS_LAT0), int(lib.MG_MS_LAT_N)
    try:
        p.start()
        t_end = time.monotonic() + warmup
        while time.monotonic() < t_end:
            p.poll(0.05)
        bells = [p.region.bell(b) for b in (BELL_STEERING, BELL_MUXER, *map(worker_bell, range(workers)))]
        procs = [psutil.Process(p.supervisor.pid(n)) for n in p.supervisor.children
                 if n in ("steering", "muxer") or n.startswith("worker-")]
        each0 = [sum(pr.cpu_times()[:2]) for pr in procs]
        cpu0 = sum(each0)
        s0 = sum(b.stats()["sleeps"] for b in bells)
        h0 = p.region.stats(SLOT_MUXER).snapshot()[lat0:lat0 + n]
        t0 = time.monotonic()
        t_end = t0 + seconds
        while time.monotonic() < t_end:
            p.poll(0.05)
        h1 = p.region.stats(SLOT_MUXER).snapshot()[lat0:lat0 + n]
        dt = time.monotonic() - t0
        sleeps = sum(b.stats()["sleeps"] for b in bells) - s0
        each = [sum(pr.cpu_times()[:2]) - c for pr, c in zip(procs, each0, strict=True)]
        cpu = sum(sum(pr.cpu_times()[:2]) for pr in procs) - cpu0
        names = [n for n in p.supervisor.children if n in ("steering", "muxer") or n.startswith("worker-")]
        p.stop()
    finally:
        p.close()
        drop_tables()
    out = latency_us([int(b) - int(a) for a, b in zip(h0, h1, strict=True)])
    out.update(rate=rate, mpps=round(out["packets"] / dt / 1e6, 4),
               sleeps_per_kpkt=round(sleeps * 1000 / max(1, out["packets"]), 2), cpu=round(cpu / dt, 2),
               cpu_us_per_packet={nm: round(c * 1e6 / max(1, out["packets"]), 1)
                                  for nm, c in zip(names, each, strict=True)})
    return out


def idle_cpu(workers: int = 8, seconds: float = 3.0) -> float:
    p = new_pipeline(PipelineOptions(workers=workers, nic="gen:packets=1000"))
    try:
        p.start()
        while not p.eof:
            p.poll(0.05)
        procs = [psutil.Process(p.supervisor.pid(n)) for n in p.supervisor.children]
        time.sleep(0.5)
        c0 = sum(sum(pr.cpu_times()[:2]) for pr in procs)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            p.poll(0.05)
        used = (sum(sum(pr.cpu_times()[:2]) for pr in procs) - c0) / (time.monotonic() - t0)
        p.stop()
    finally:
        p.close()
        drop_tables()
    return used


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--ring-size", type=int, default=None,
                    help="slots per rx/tx/ret ring of the flood runs (default: the pipeline's)")
    ap.add_argument("--stages", action="store_true", help="also time each stage's C glue in one process")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--latency-rate", type=float, default=10000.0,
                    help="packets/s of the paced latency run per round (0 = skip it)")
    ap.add_argument("--latency-seconds", type=float, default=2.0)
    ap.add_argument("--steer-cost", type=float, default=None,
                    help="weights of the flow -> worker map (PipelineOptions.steer_cost; 0 = equal shares)")
    ap.add_argument("--idle-poll-us", type=int, default=None,
                    help="adaptive idle window of the latency runs (default: the pipeline's, 0 = off)")
    ap.add_argument("--rt-prio", type=int, default=None,
                    help="SCHED_FIFO base priority of the latency runs' data path (default: the pipeline's, 0 = off)")
    ap.add_argument("--nap-us", type=int, default=None,
                    help="nap under load of the data-path actors (PipelineOptions.nap_us; 0 = off)")
    ap.add_argument("--fallback", choices=("new-flows", "any", "never"), default=None,
                    help="which packets steering may move off a full ring (PipelineOptions.fallback; "
                         "default: the pipeline's, new-flows)")
    ap.add_argument("--placement", choices=("apart", "spread"), default=None,
                    help="where workers run (PipelineOptions.placement; default: the pipeline's, apart)")
    a = ap.parse_args()
    BENCH["placement"] = a.placement
    BENCH["ring_size"] = a.ring_size
    BENCH["steer_cost"] = a.steer_cost
    BENCH["fallback"] = a.fallback
    BENCH["nap_us"] = a.nap_us
    ws = [int(x) for x in a.workers.split(",")]
    rows = []
    stage_ns = stages() if a.stages else None
    if stage_ns and not a.json:
        print("stages in one process (ns/packet): " + ", ".join(f"{k} {v}" for k, v in stage_ns.items())
              + f"; total {sum(stage_ns.values()):.0f}", flush=True)
    for r in range(a.rounds):
        base = single_process(a.seconds)
        row = {"round": r + 1, "single_mpps": round(base, 3)}
        for w in ws:
            res = pipeline(w, a.seconds)
            row[f"pipeline{w}_mpps"] = round(res["mpps"], 3)
            row[f"pipeline{w}_ratio"] = round(res["mpps"] / base, 2) if base else 0.0
            row[f"pipeline{w}_fallback_share"] = round(res["fallback_share"], 4)
            row[f"pipeline{w}_pool_ok"] = res["pool_ok"]
            row[f"pipeline{w}_cpu_ns_per_packet"] = res["cpu_ns_per_packet"]
            row[f"pipeline{w}_ctx_per_kpkt"] = res["ctx_per_kpkt"]
            row[f"pipeline{w}_bell_sleeps_per_kpkt"] = res["bell_sleeps_per_kpkt"]
            row[f"pipeline{w}_sched_share"] = res["sched_share"]
            if a.latency_rate:
                row[f"pipeline{w}_latency_us"] = latency(w, a.latency_rate, a.latency_seconds,
                                                         idle_poll_us=a.idle_poll_us, rt_prio=a.rt_prio)
                # ... and at 80% of the rate this round's pipeline run reached (issue 13)
                row[f"pipeline{w}_latency_80_us"] = latency(w, 0.8 * res["mpps"] * 1e6, a.latency_seconds,
                                                            idle_poll_us=a.idle_poll_us, rt_prio=a.rt_prio)
        rows.append(row)
        if not a.json:
            parts = [f"single {row['single_mpps']:.2f} Mpps"]
            for w in ws:
                parts.append(
                    f"pipeline W={w} {row[f'pipeline{w}_mpps']:.2f} Mpps "
                    f"(x{row[f'pipeline{w}_ratio']:.2f}, fallback {row[f'pipeline{w}_fallback_share']:.1%})"
                )
            print(f"round {r + 1}: " + " | ".join(parts), flush=True)
            for w in ws:
                cpu = row[f"pipeline{w}_cpu_ns_per_packet"]
                print(f"         W={w} CPU ns/packet: "
                      + ", ".join(f"{n} {v}" for n, v in cpu.items()) + f"; total {sum(cpu.values())}")
                if a.latency_rate:
                    lat = row[f"pipeline{w}_latency_us"]
                    print(f"         W={w} latency at {a.latency_rate:g} pps (us): p50 {lat['p50']} "
                          f"p99 {lat['p99']} p99.9 {lat['p999']} over {lat['packets']} packets; doorbell sleeps "
                          f"{lat['sleeps_per_kpkt']}/1000 packets, actors' CPU {lat['cpu']} cores")
                    lat = row[f"pipeline{w}_latency_80_us"]
                    print(f"         W={w} latency at 80% of max, {lat['rate']} pps asked, {lat['mpps']} Mpps "
                          f"sent (us): p50 {lat['p50']} p99 {lat['p99']} p99.9 {lat['p999']}")
    idle = idle_cpu()
    try:
        load = tuple(round(x, 2) for x in psutil.getloadavg())
    except OSError:
        load = ()
    if a.json:
        eff = PipelineOptions()
        new_pipeline_opts = {"ring_size": a.ring_size or eff.ring_size,
                             "placement": a.placement or getattr(eff, "placement", "spread")}
        print(json.dumps({"rounds": rows, "stages_ns_per_packet": stage_ns, "idle_cpu_8_workers": round(idle, 4),
                          "loadavg": load, "options": new_pipeline_opts}))
    else:
        print(f"idle: 8 workers + steering + muxer use {idle * 100:.2f}% of one core")
        print(f"load average during the run: {load}  (2 vCPUs shared with other work)")
    return 0


if __name__ == "__main__":
    from maglev.testing.state import private_run_state

    with private_run_state() as folder:  # the runs' state and kept connection tables go afterwards
        bench_config(folder)
        rc = main()
    sys.exit(rc)
