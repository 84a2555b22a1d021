"""Control-plane benchmark: time from a change request to the reply confirming that every
worker switched to the new tables (issue 6; aim: p99 <= 10 ms with 1000 backends).

Set-up, all on this machine:
  * a shared-memory region (maglev.rings) with --workers simulated packet workers, each a
    separate process that acquires the tables once per "burst" (--burst-us) the way
    mg_tables_acquire does in the real worker, so the reply really waits for them;
  * the config manager + control server in another process (ROUTER over ipc://);
  * this process is the client: it sends set-weight requests alternating one backend's
    weight between 1 and 2 (every change rebuilds and republishes the table), and measures
    request -> reply with time.perf_counter.

Baseline from the same run: the round trip of a `status` request (no change).  The
server's own breakdown (build / publish / wait / persist) is printed from its replies.

`status` round trip on the public socket of the real config-manager actor (issue 15: it
used to wait in 50 ms slices on its first socket only): the actor process is started the
way the supervisor starts it (``python -m maglev.actors.launch``, private socket + public
socket, a real shared-memory region with one table-acquiring worker thread), and
--status-calls back-to-back `status` requests measure p50/p99 (``status_rtt_us``).

Table builders: "datapath" is maglev.datapath.tables.build_tables (the real blob the
workers read); "hashing" is the control plane's fallback (one Maglev table per VIP, no
backend records), shown to separate the control plane's cost from the blob encoder's.
The state file goes to --state-dir (default: a temporary directory under /tmp, i.e. a real
disk with fsync; give /dev/shm to see the cost without the disk).

    python bench/bench_control.py [--changes 100] [--sizes 10,100,1000] [--workers 2]
                                  [--builders datapath,hashing] [--state-dir DIR]
                                  [--status-calls 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

VIP = "203.0.113.10:80/tcp"


def config_dict(n: int) -> dict:
    return {
        "instance": {"name": "bench", "source_ipv4": "198.18.0.1"},
        "vip": [{"address": "203.0.113.10", "port": 80, "table_size": 65537,
                 "backend": [{"address": f"198.18.{10 + i // 250}.{i % 250 + 1}"} for i in range(n)]}],
    }


def worker_proc(region_name: str, index: int, burst_us: float, stop) -> None:
    from maglev.rings import Region

    region = Region.attach(region_name)
    try:
        pause = burst_us / 1e6
        while not stop.is_set():
            region.tables.acquire(index)
            time.sleep(pause)
    finally:
        region.close()


def server_proc(region_name: str, n_workers: int, n_backends: int, builder: str, endpoint: str,
                state_path: str, ready, stop) -> None:
    from maglev.config import Config
    from maglev.control.manager import ConfigManager
    from maglev.control.publisher import RegionPublisher
    from maglev.control.server import ControlServer
    from maglev.rings import Region
    from maglev.testing.tables import fallback_build_tables

    region = Region.attach(region_name)
    mgr = ConfigManager(Config.from_dict(config_dict(n_backends)), RegionPublisher(region, lambda: range(n_workers)),
                        state_path=state_path, build_tables=fallback_build_tables if builder == "hashing" else None)
    mgr._publish_initial()
    srv = ControlServer(mgr.handle, endpoint)
    ready.set()
    try:
        while not stop.is_set():
            srv.poll(50)
    finally:
        srv.close()
        region.close()


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def run_case(n: int, builder: str, args, tmp: str) -> dict:
    from maglev.control.client import ControlClient
    from maglev.rings import Region
    from maglev.testing import unique

    ctx = mp.get_context("spawn")
    name = unique.name("mgc-bench-")
    region = Region.create(name, args.workers, 1024, 512, 64 << 20)
    stop = ctx.Event()
    ready = ctx.Event()
    endpoint = f"ipc://{tmp}/c-{n}-{builder}.sock"
    state_dir = args.state_dir or tmp
    state = os.path.join(state_dir, f"state-{os.getpid()}-{n}-{builder}.json")
    procs = [ctx.Process(target=worker_proc, args=(name, i, args.burst_us, stop), daemon=True)
             for i in range(args.workers)]
    procs.append(ctx.Process(target=server_proc, args=(name, args.workers, n, builder, endpoint, state, ready, stop),
                             daemon=True))
    try:
        for p in procs:
            p.start()
        if not ready.wait(60):
            raise RuntimeError("the control server did not start")
        lat, base, server = [], [], []
        with ControlClient(endpoint, timeout=30) as c:
            backend = c.call("backends", {"vip": VIP})["backends"][0]["backend"]
            for _ in range(5):  # warm-up
                c.call("status")
            for i in range(args.changes):
                t0 = time.perf_counter()
                c.call("status")
                base.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                r = c.call("set-weight", {"vip": VIP, "backend": backend, "weight": 2 if i % 2 == 0 else 1})
                lat.append(time.perf_counter() - t0)
                if not r["confirmed"]:
                    raise RuntimeError(f"generation {r['generation']} not confirmed")
                server.append(r)
        return {
            "n": n, "builder": builder,
            "p50": pct(lat, 50) * 1e3, "p99": pct(lat, 99) * 1e3, "max": max(lat) * 1e3,
            "base_p50": pct(base, 50) * 1e3,
            "build_p50": statistics.median(r["build_ms"] for r in server),
            "publish_p50": statistics.median(r["publish_ms"] for r in server),
            "wait_p50": statistics.median(r["wait_ms"] for r in server),
            "persist_p50": statistics.median(r["persist_wait_ms"] for r in server),
        }
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
        region.close()
        region.unlink()
        if os.path.exists(state):
            os.unlink(state)


def status_rtt(calls: int, tmp: str) -> dict:
    """p50/p99 (microseconds) of `status` on the public socket of a real config-manager actor."""
    import threading

    from maglev.actors.base import ActorSpec
    from maglev.config import Config, dump_toml
    from maglev.control.client import ControlClient
    from maglev.rings import Region
    from maglev.testing import unique

    name = unique.name("mgc-rtt-")
    region = Region.create(name, 1, 256, 256, 4 << 20)
    stop = threading.Event()

    def worker() -> None:  # a packet worker acquiring the tables once per 50 us burst
        while not stop.is_set():
            region.tables.acquire(0)
            time.sleep(50e-6)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    src = os.path.join(tmp, "rtt.toml")
    with open(src, "w") as f:
        f.write(dump_toml(Config.from_dict(config_dict(10))))
    os.makedirs(os.path.join(tmp, "rtt-run"), mode=0o700)
    endpoint = f"ipc://{tmp}/rtt-public/control.sock"
    spec = ActorSpec("config", "maglev.actors.config_manager:ConfigManagerActor", os.path.join(tmp, "rtt-run"),
                     instance=unique.name("bench"), parent_pid=os.getpid(),
                     params={"region": name, "config": src, "state": os.path.join(tmp, "rtt-state.json"),
                             "control": endpoint})
    env = {**os.environ, "MAGLEV_RUN_DIR": os.path.join(tmp, "rtt-rundir"),
           "MAGLEV_STATE_DIR": os.path.join(tmp, "rtt-statedir")}
    proc = subprocess.Popen([sys.executable, "-m", "maglev.actors.launch", spec.to_json()], env=env)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(endpoint[6:]):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the config-manager actor did not start")
            time.sleep(0.05)
        rtt = []
        with ControlClient(endpoint, timeout=30) as c:
            for _ in range(50):  # warm-up
                c.call("status")
            for _ in range(calls):
                t0 = time.perf_counter()
                c.call("status")
                rtt.append(time.perf_counter() - t0)
        return {"p50": round(pct(rtt, 50) * 1e6, 1), "p99": round(pct(rtt, 99) * 1e6, 1),
                "max": round(max(rtt) * 1e6, 1), "calls": calls}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        stop.set()
        t.join(5)
        region.close()
        region.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--burst-us", type=float, default=50.0, help="simulated burst length per worker")
    ap.add_argument("--builders", default="datapath,hashing")
    ap.add_argument("--state-dir", default="", help="where the state file is written (default: /tmp)")
    ap.add_argument("--status-calls", type=int, default=2000,
                    help="status round trips on the config-manager actor's public socket (0: skip)")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON document")
    args = ap.parse_args()
    if not 1 <= args.changes <= 10_000 or not 1 <= args.workers <= 16 or not 0 <= args.status_calls <= 100_000:
        ap.error("--changes 1..10000, --workers 1..16, --status-calls 0..100000")
    tmp = tempfile.mkdtemp(prefix="mgc-bench-", dir="/tmp")
    print(f"control-plane change latency: {args.changes} set-weight changes per case, M=65537, "
          f"{args.workers} simulated workers (shared-memory tables, burst {args.burst_us:g} us), "
          f"state file in {args.state_dir or '/tmp'}")
    print(f"{'backends':>8} {'builder':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'x status':>9} | "
          f"server p50: {'build':>6} {'publish':>7} {'wait':>6} {'persist+':>8}")
    cases = []
    rtt = None
    try:
        if args.status_calls:
            rtt = status_rtt(args.status_calls, tmp)
            print(f"status round trip, public socket of the config-manager actor ({rtt['calls']} calls): "
                  f"p50 {rtt['p50']:.0f} us, p99 {rtt['p99']:.0f} us, max {rtt['max']:.0f} us")
        for builder in args.builders.split(","):
            for n in (int(x) for x in args.sizes.split(",")):
                r = run_case(n, builder, args, tmp)
                cases.append(r)
                print(f"{r['n']:>8} {builder:>8} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['max']:>8.2f} "
                      f"{r['p50'] / r['base_p50']:>8.1f}x | {'':>11} {r['build_p50']:>6.2f} {r['publish_p50']:>7.2f} "
                      f"{r['wait_p50']:>6.2f} {r['persist_p50']:>8.2f}")
                sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("'x status': p50 of a change over p50 of a status round trip in the same run (baseline).")
    print("'persist+': time the reply still waited for the state file after the workers switched.")
    if args.json:
        print(json.dumps({"cases": cases, "status_rtt_us": rtt}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
