"""Big table builds and the GIL: how long another thread of the config manager (the one
that sends its heartbeats) waits while the tables of two VIPs at the largest table_size
are built on a helper thread.

A ticker thread sleeps 10 ms at a time and records how late it wakes; the baseline is the
same ticker during a plain sleep as long as the build (the machine's own scheduling noise,
measured in the same run).  Prints the build time, the longest and the 99th percentile
wake-up delay during the build and during the baseline, their ratio, and the peak RSS.
It never asserts on speed.  (Session 8: the build copied each big table five times, each
copy holding the GIL; now once.  docs/control-protocol.md, "Heartbeats while a change
works".)

    python bench/bench_build_gil.py [--size 16777213] [--vips 2]
"""

from __future__ import annotations

import argparse
import resource
import threading
import time


def ticker(stop: threading.Event, gaps: list[float]) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        time.sleep(0.01)
        now = time.perf_counter()
        gaps.append(now - last - 0.01)
        last = now


def watch(fn) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    stop, gaps = threading.Event(), []
    t = threading.Thread(target=ticker, args=(stop, gaps))
    t.start()
    t0 = time.perf_counter()
    fn()
    took = time.perf_counter() - t0
    stop.set()
    t.join()
    return took, sorted(gaps) or [0.0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=16777213)
    ap.add_argument("--vips", type=int, default=2)
    a = ap.parse_args()
    from maglev.config import Config
    from maglev.control.tables import build_tables

    c = Config.from_dict({"instance": {"name": "bench-gil", "source_ipv4": "198.19.0.1"}, "vip": [
        {"address": "203.0.113.1", "port": 1000 + i, "protocol": "tcp", "table_size": a.size,
         "backend": [{"address": f"198.18.0.{1 + j}"} for j in range(10)]} for i in range(a.vips)]})
    out: list[bytes] = []
    took, gaps = watch(lambda: out.append(build_tables(c)))
    _, base = watch(lambda: time.sleep(took))

    def p99(g: list[float]) -> float:
        return g[int(0.99 * (len(g) - 1))]

    print(f"{a.vips} VIPs x {a.size} slots: blob {len(out[0]) >> 20} MiB, build {took:.2f} s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MiB")
    print(f"ticker late during the build: max {gaps[-1] * 1e3:.0f} ms, p99 {p99(gaps) * 1e3:.0f} ms")
    print(f"ticker late during a sleep (baseline): max {base[-1] * 1e3:.0f} ms, p99 {p99(base) * 1e3:.0f} ms")
    print(f"ratio build/baseline: max {gaps[-1] / max(base[-1], 1e-6):.1f}x, p99 {p99(gaps) / max(p99(base), 1e-6):.1f}x")


if __name__ == "__main__":
    main()
