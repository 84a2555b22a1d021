"""What the cross-core hand-off costs each actor, and which cache lines carry it.

perf's hardware counters are not available in this VM, so this is a controlled experiment
instead: the three C loops of the pipeline (steering + generator, worker 0, muxer with the
null sink) are driven one burst each in turn over a real region, as in
``callgrind_pipeline.py``, by pinned threads (cffi releases the GIL in C calls), and each
call is timed in its own thread's CPU time.  Modes:

  one-core     every loop on CPU 1: no line crosses a core (the pipeline's own work;
               CPU 0 only takes an empty turn between steering and the worker, as in
               the other modes)
  cross        steering and the muxer on CPU 0, the worker on CPU 1 (``maglev run``'s
               W=1 placement), lock-step: only the hand-off's cache traffic is added
  dirty:SET    like one-core, but before each worker burst a thread on CPU 0 writes the
               lines SET of every frame waiting on the worker's rx ring (meta0 / meta1 =
               the metadata's two lines, pkt = the packet's lines and the line before it,
               where encapsulation writes, ring = the rx ring's descriptor lines; idle =
               the same Python turn writing no frame line: the baseline of the others,
               since CPU 1 sleeps longer meanwhile): the worker's extra ns per packet
               over dirty:idle is what those lines cost it when they come from the
               other core

    python bench/bench_handoff.py [--bursts 1500] [--rounds 3] [--modes one-core,cross,...] [--json]

Prints thread CPU ns per packet of each loop: per round the median burst, then the median
over rounds (range beside).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # PYTHONPATH first: A/B against another tree

from maglev.native import check, ffi, lib

META = int(lib.MG_FRAME_META_SIZE)
FRAME = int(lib.MG_FRAME_SIZE)
PKT = META + int(lib.MG_FRAME_HEADROOM)
# Byte offsets in a frame of one line each: the sets a dirty:SET mode writes from CPU 0.
LINES = {"meta0": (0,), "meta1": (64,), "pkt": (PKT - 64, PKT, PKT + 64)}
MODES = ("one-core", "cross", "dirty:idle", "dirty:meta0", "dirty:meta1", "dirty:pkt", "dirty:ring",
         "dirty:meta0+meta1+pkt+ring")


class Pinned:
    """A thread pinned to one CPU that runs the callables it is given, one at a time."""

    def __init__(self, cpu: int):
        self.q: queue.Queue = queue.Queue()
        self.r: queue.Queue = queue.Queue()
        self.t = threading.Thread(target=self._run, args=(cpu,), daemon=True)
        self.t.start()

    def _run(self, cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})
        while True:
            f = self.q.get()
            if f is None:
                return
            try:
                self.r.put((True, f()))
            except BaseException as e:  # handed back to the caller
                self.r.put((False, e))

    def call(self, f):
        self.q.put(f)
        ok, v = self.r.get()
        if not ok:
            raise v
        return v

    def close(self) -> None:
        self.q.put(None)
        self.t.join()


def timed(f):
    """f() in this thread's CPU time: (result, ns)."""
    t = time.thread_time_ns()
    v = f()
    return v, time.thread_time_ns() - t


def run(mode: str, bursts: int) -> dict[str, float]:
    from maglev.actors.dispatch import default_map
    from maglev.config import load_config
    from maglev.datapath.tables import build_tables
    from maglev.nic.gen import GenNic, vip_targets
    from maglev.rings import SLOT_MUXER, SLOT_STEERING, Region

    cfg = load_config("")
    blob = build_tables(cfg)
    k0, k1 = cfg.flow_hash_key
    region = Region.create(f"handoff-{os.getpid()}-{time.monotonic_ns() % 10**9}", 1, 6144, 2048,
                           max(len(blob) * 2, 1 << 20))
    c0, c1 = Pinned(0), Pinned(1)
    try:
        region.tables.publish(blob, [], 1.0)
        base = region.base
        st = ffi.new("struct mg_steer *")
        mux = ffi.new("struct mg_mux *")
        check(lib.mg_steer_init(st, base, SLOT_STEERING, k0, k1), "steer init")
        check(lib.mg_steer_set_stall_ns(st, 0), "stall off")  # the worker is frozen by design
        check(lib.mg_mux_init(mux, base, SLOT_MUXER), "mux init")
        check(lib.mg_steer_spares(st, base, lib.MG_SPARE_RESERVE), "spares")  # as steering.py
        reta = default_map(1).reta
        if reta:
            check(lib.mg_steer_set_reta(st, reta, len(reta)), "steer map")
        w = ffi.gc(lib.mg_worker_new(base, 0, cfg.conntrack.capacity, k0, k1, 256, time.monotonic_ns()),
                   lib.mg_worker_free)
        gen = GenNic(vip_targets(cfg), flows=10000, size=64, syn=0.1, ipv6=0.2, seed=1)
        src = ffi.new("struct mg_loop_gen *")
        one = ffi.new("struct mg_loop_ctl *", {"budget_ns": 10**12, "max_bursts": 1, "burst": 256})
        outs = [ffi.new("struct mg_loop_out *") for _ in range(3)]
        pool = ffi.buffer(region.pool_ptr, 6144 * FRAME)
        rx = region.rx(0)
        ring_bytes = ffi.buffer(ffi.cast("uint8_t *", rx.ptr), 5 * 64 + 2048 * 8)
        steer_cpu = c0 if mode == "cross" else c1
        dirty = set(mode.split(":", 1)[1].split("+")) if mode.startswith("dirty:") else set()
        offs = [o for s in sorted(dirty - {"ring", "idle"}) for o in LINES[s]]
        scratch = bytearray(64)  # dirty:idle writes here: the same Python turn, no frame line

        def steer():
            gen.loop_source(src)
            return timed(lambda: check(lib.mg_steer_loop(st, base, src, one, outs[0]), "steer"))[1]

        def work():
            return timed(lambda: check(lib.mg_worker_loop(w, base, one, outs[1]), "worker"))[1]

        def muxer():
            return timed(lambda: check(lib.mg_mux_loop(mux, base, one, outs[2]), "mux"))[1]

        def dirty_lines():
            descs = rx.snapshot()
            for d in descs:
                f = (d & 0xFFFFFFFF) * FRAME
                for o in offs:
                    pool[f + o] = pool[f + o]
                if "idle" in dirty:
                    scratch[f & 63] = pool[f]
            if "ring" in dirty:  # the waiting descriptors' slots and the producer's index line
                r = rx.ptr
                for i in range(int(r.cons), int(r.prod), 8):
                    o = 5 * 64 + 8 * (i & int(r.mask))
                    ring_bytes[o] = ring_bytes[o]
                ring_bytes[64] = ring_bytes[64]

        per: dict[str, list[float]] = {"steering": [], "worker": [], "muxer": []}
        for it in range(bursts):
            s_ns = steer_cpu.call(steer)
            # Always a turn on CPU 0 between steering and the worker (empty unless dirty:),
            # so that CPU 1's thread sleeps and wakes the same way in every mode: on a
            # loaded machine another process may run there meanwhile and cool its caches.
            c0.call(dirty_lines)
            w_ns = c1.call(work)
            m_ns = steer_cpu.call(muxer)
            n = outs[1].packets
            if it >= bursts // 4 and n:  # after a warm-up lap of the pool
                for k, v in (("steering", s_ns), ("worker", w_ns), ("muxer", m_ns)):
                    per[k].append(v / n)
        # The median burst: a burst that ran right after another process had the CPU
        # (its caches cooled) is an outlier on a loaded machine, not the hand-off's cost.
        return {k: statistics.median(v) for k, v in per.items()}
    finally:
        c0.close()
        c1.close()
        region.close()
        region.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bursts", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        sys.exit("bench_handoff: needs CPUs 0 and 1")
    modes = a.modes.split(",")
    res: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(a.rounds):  # alternate the modes round by round (the load drifts)
        for m in modes:
            res[m].append(run(m, a.bursts))
    out = {}
    for m in modes:
        out[m] = {k: round(statistics.median(r[k] for r in res[m]), 1) for k in res[m][0]}
        out[m]["range"] = {k: [round(min(r[k] for r in res[m]), 1), round(max(r[k] for r in res[m]), 1)]
                           for k in res[m][0]}
    if a.json:
        print(json.dumps({"load": os.getloadavg(), "modes": out}, indent=1))
        return
    print(f"thread CPU ns per packet, median of {a.rounds} (range); load {os.getloadavg()[0]:.1f}")
    for m in modes:
        o = out[m]
        print(f"  {m:28s} " + "  ".join(f"{k} {o[k]:6.1f} ({o['range'][k][0]}-{o['range'][k][1]})"
                                        for k in ("steering", "worker", "muxer")))


if __name__ == "__main__":
    main()
