"""Instructions per packet of each actor's C loop (mg_loop.h), counted by callgrind --
repeatable on a loaded machine, unlike ns.  The three loops are driven in this one process
over a real region, one burst each in turn (steering + generator, worker 0, muxer with the
null sink), the same packets as bench_pipeline.py; callgrind collects only inside the loop
functions and the generator, after a warm-up lap of the pool.

    python bench/callgrind_pipeline.py [--bursts 600] [--workers 1] [--top 12] [--spares N]

Each worker has MG_SPARE_RESERVE spare frames on its spare ring, as in `maglev run` (until
2026-12-07 session 5 the script kept none, which hid the per-burst spare copy).

(Without ``--inner`` the script re-runs itself under ``valgrind --tool=callgrind``.)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOPS = ("mg_steer_loop", "mg_gen_fill", "mg_worker_loop", "mg_mux_loop", "mg_dp_burst")


GEN = {"flows": 10000, "syn": 0.1, "ipv6": 0.2, "seed": 1}  # bench_pipeline's packets


def gen_options(text: str) -> dict:
    """``"syn=0,ipv6=0"`` -> GEN with those generator options replaced (flows, syn, ipv6, size, seed)."""
    out = dict(GEN)
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        if k not in ("flows", "syn", "ipv6", "size", "seed"):
            raise SystemExit(f"--gen: unknown option {k!r}")
        out[k] = float(v) if k in ("syn", "ipv6") else int(v)
    return out


def inner(bursts: int, workers: int, spares: int | None = None, gen_opts: str = "") -> None:
    from maglev.config import load_config
    from maglev.datapath.tables import build_tables
    from maglev.native import check, ffi, lib
    from maglev.nic.gen import GenNic, vip_targets
    from maglev.rings import SLOT_MUXER, SLOT_STEERING, Region

    cfg = load_config("")
    blob = build_tables(cfg)
    k0, k1 = cfg.flow_hash_key
    region = Region.create(f"cgpipe-{time.monotonic_ns() % 10**9}", workers, 6144 * workers, 2048, max(len(blob) * 2, 1 << 20))
    try:
        region.tables.publish(blob, [], 1.0)
        base = region.base
        st = ffi.new("struct mg_steer *")
        mux = ffi.new("struct mg_mux *")
        check(lib.mg_steer_init(st, base, SLOT_STEERING, k0, k1), "steer init")
        # the workers here run only between steering's calls (frozen by design): stall rule off
        check(lib.mg_steer_set_stall_ns(st, 0), "stall off")
        check(lib.mg_mux_init(mux, base, SLOT_MUXER), "mux init")
        # each worker's spare frames, as steering.py keeps them (default MG_SPARE_RESERVE)
        check(lib.mg_steer_spares(st, base, lib.MG_SPARE_RESERVE if spares is None else spares), "spares")
        from maglev.actors.dispatch import default_map

        reta = default_map(workers).reta  # the flow -> worker map `maglev run` uses here (plain by default)
        if reta:
            check(lib.mg_steer_set_reta(st, reta, len(reta)), "steer map")
        ws = [ffi.gc(lib.mg_worker_new(base, i, cfg.conntrack.capacity, k0, k1, 256, time.monotonic_ns()),
                     lib.mg_worker_free) for i in range(workers)]
        gen = GenNic(vip_targets(cfg), **{"size": 64, **gen_options(gen_opts)})
        src = ffi.new("struct mg_loop_gen *")
        one = ffi.new("struct mg_loop_ctl *", {"budget_ns": 10**12, "max_bursts": 1, "burst": 256})
        out = ffi.new("struct mg_loop_out *")
        for it in range(bursts):
            if it == bursts // 4:
                print("MEASURE", flush=True)
            gen.loop_source(src)
            check(lib.mg_steer_loop(st, base, src, one, out), "steer loop")
            for w in ws:
                check(lib.mg_worker_loop(w, base, one, out), "worker loop")
            check(lib.mg_mux_loop(mux, base, one, out), "mux loop")
        print("PACKETS", 256 * (bursts - bursts // 4), flush=True)
    finally:
        region.close()
        region.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bursts", type=int, default=600)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--spares", type=int, default=None,
                    help="spare frames per worker (default: MG_SPARE_RESERVE, as `maglev run`)")
    ap.add_argument("--gen", default="", help="generator options replacing bench_pipeline's, e.g. syn=0,ipv6=0")
    ap.add_argument("--inner", action="store_true")
    a = ap.parse_args()
    if a.inner:
        inner(a.bursts, a.workers, a.spares, a.gen)
        return
    with tempfile.TemporaryDirectory(prefix="mg-cgp-") as d:
        out = Path(d) / "cg.out"
        # Count only the measured 3/4 of the run: toggle collection on the loop calls and
        # subtract a warm-up run of 1/4 the length (same first quarter, deterministic).
        counts = {}
        for label, n in (("full", a.bursts), ("warm", a.bursts // 4 * 1)):
            args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.{label}"]
            args += [f"--toggle-collect={f}" for f in ("mg_steer_loop", "mg_worker_loop", "mg_mux_loop")]
            args += ["--collect-atstart=no", sys.executable, __file__, "--inner", "--bursts", str(n),
                     "--workers", str(a.workers)]
            if a.spares is not None:
                args += ["--spares", str(a.spares)]
            if a.gen:
                args += ["--gen", a.gen]
            subprocess.run(args, check=True, capture_output=True)
            ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", f"{out}.{label}"], check=True,
                                 capture_output=True, text=True).stdout
            c = {}
            for ln in ann.splitlines():
                m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*?:(\w+)( |$)", ln)
                if m and m.group(2) not in c:
                    c[m.group(2)] = int(m.group(1).replace(",", ""))
            counts[label] = c
            if label == "full":
                excl = subprocess.run(["callgrind_annotate", f"{out}.{label}"], check=True,
                                      capture_output=True, text=True).stdout
        packets = 256 * (a.bursts - a.bursts // 4)
        print(f"Ir per packet over {packets} packets (inclusive; warm-up lap subtracted):")
        for f in LOOPS:
            v = counts["full"].get(f, 0) - counts["warm"].get(f, 0)
            print(f"  {f:16s} {v / packets:8.1f}")
        print("top functions, exclusive (whole run, Ir per packet of the whole run):")
        total_packets = 256 * a.bursts
        rows = [ln for ln in excl.splitlines() if re.match(r"\s*[\d,]+ \(\s*[\d.]+%\)\s+\S", ln)]
        for ln in rows[1:1 + a.top]:
            ir, rest = ln.strip().split(" ", 1)
            print(f"  {int(ir.replace(',', '')) / total_packets:8.1f}  {rest.strip()[:110]}")


if __name__ == "__main__":
    main()
