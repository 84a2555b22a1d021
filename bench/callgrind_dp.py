"""Instructions per packet of the burst kernel, counted by callgrind (repeatable on a loaded
machine, unlike ns).  Builds bench/callgrind_dp.c against the kernel's sources with the
extension's flags, writes the benchmark's tables and packet, runs each scenario under
``valgrind --tool=callgrind`` collecting only ``mg_dp_burst`` (the frame restore of
mg_dp_bench is excluded), and prints Ir per packet, inclusive, plus the top functions.

    python bench/callgrind_dp.py [--rounds 40] [--scenarios est1,est10k,est10kh,new] [--top 8] [--burst 256]

--burst 8 shows the per-burst fixed costs (tables check, fragment-table expiry, stats)
spread over few packets, as a worker sees them when steering hands it small bursts.
est10kh is est10k with the frames hashed by steering (MG_FRAME_F_HASHED), as the
pipeline's worker gets them: the kernel reuses the hash instead of computing SipHash.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_datapath import CONF, packet

from maglev import config as cfg
from maglev.datapath.tables import build_tables

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "maglev" / "_cffi_src"
BENCH_C = ROOT / "bench" / "native"  # mg_dp_bench: benchmark-only C, not in the extension
BURST = 256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--scenarios", default="est1,est10k,est10kh,new")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--burst", type=int, default=BURST, help=f"packets per burst (1..{BURST})")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mg-cg-") as d:
        tmp = Path(d)
        (tmp / "tables.bin").write_bytes(build_tables(cfg.loads(CONF)))
        (tmp / "pkt.bin").write_bytes(packet())
        exe = tmp / "cg"
        srcs = [str(p) for p in sorted((SRC / "src").glob("*.c")) + sorted((BENCH_C / "src").glob("*.c"))]
        subprocess.run(["gcc", "-O2", "-g", "-std=gnu11", "-fno-strict-aliasing", f"-I{SRC / 'include'}",
                        f"-I{BENCH_C / 'include'}",
                        str(ROOT / "bench" / "callgrind_dp.c"), *srcs, "-o", str(exe), "-lm"], check=True)
        for sc in a.scenarios.split(","):
            out = tmp / f"cg.{sc}"
            subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                            "--toggle-collect=mg_dp_burst", f"--callgrind-out-file={out}",
                            str(exe), str(tmp / "tables.bin"), str(tmp / "pkt.bin"), sc, str(a.rounds), str(a.burst)],
                           check=True, capture_output=True)
            ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(out)], check=True,
                                 capture_output=True, text=True).stdout
            total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", ann).group(1).replace(",", ""))
            n = a.rounds * a.burst
            print(f"{sc:7s} {total / n:8.1f} Ir/packet  ({total} Ir, {n} packets)")
            excl = subprocess.run(["callgrind_annotate", str(out)], check=True, capture_output=True,
                                  text=True).stdout
            rows = [ln for ln in excl.splitlines() if re.match(r"\s*[\d,]+ \(\s*[\d.]+%\)\s+\S", ln)]
            for ln in rows[1:1 + a.top]:
                ir, rest = ln.strip().split(" ", 1)
                print(f"          {int(ir.replace(',', '')) / n:8.1f}  {rest.strip()[:100]}")


if __name__ == "__main__":
    main()
