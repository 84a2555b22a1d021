"""QUIC connection-ID routing: ns/packet of the C burst kernel for UDP packets to a QUIC VIP,
against the same packets to the same VIP without `quic` (hashed, connection table) in the
same run (docs/datapath.md, "QUIC connection IDs").

Scenarios, 10k flows (ports cycle), a 1-RTT packet with a 64-byte payload, bursts of 256:
  hashed (no quic)        the baseline: parse, hash, connection-table hit, GRE
  quic, known server ID   parse, server-ID lookup (binary search), GRE; no table lookup
  quic, unknown ID        the server-ID lookup misses, then the baseline's work

    python bench/bench_quic.py [--rounds N] [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from bench_datapath import CBench

from maglev import config as cfg
from maglev.datapath.tables import build_tables
from maglev.native import ffi, lib
from maglev.testing import packets as P

VIP, CLIENT = "203.0.113.50", "198.51.100.7"
CONF = """
[instance]
source_ipv4 = "198.18.0.1"
[conntrack]
capacity = 65536
[[vip]]
address = "203.0.113.50"
port = 0  # every port: mg_dp_bench rewrites both ports per flow
protocol = "udp"
QUIC
""" + "".join(f'[[vip.backend]]\naddress = "198.18.1.{i}"\nSID\n'.replace("SID", f'quic_server_id = "0a{i:02x}"')
              for i in range(1, 9))


def packet(sid: bytes) -> bytes:
    payload = b"\x41\x07" + sid + b"\x55" * 5 + b"q" * 64
    return P.eth(P.ipv4(CLIENT, VIP, P.UDP, P.udp(40000, 443, payload, src=CLIENT, dst=VIP)))


def measure(blob: bytes, pkt: bytes, rounds: int, repeat: int) -> tuple[list[float], dict]:
    b = CBench(blob, 65536)
    for i in range(lib.MG_BURST_MAX):
        base = i * lib.MG_FRAME_SIZE
        m = ffi.cast("struct mg_frame_meta *", b.pool + base)
        m.len = len(pkt)
        ffi.memmove(b.pool + base + lib.MG_FRAME_META_SIZE + lib.MG_FRAME_HEADROOM, pkt, len(pkt))
    b.run(-(-10_000 // lib.MG_BURST_MAX) + 1, 10_000)  # every flow once (table entries)
    ns = [b.run(rounds, 10_000, first_flow=i * 7919) for i in range(repeat)]
    s = b.stats()
    return ns, {"cid_routed": int(s.quic_cid_routed), "hashed": int(s.quic_hashed), "ct_hits": int(s.ct.hits)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print hashed_ns, quic_routed_ns, quic_unknown_ns")
    a = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    quic = build_tables(cfg.loads(CONF.replace("QUIC", "quic = { server_id_offset = 1, server_id_length = 2 }")))
    plain = build_tables(cfg.loads(CONF.replace("QUIC", "").replace("quic_server_id", "# quic_server_id")))
    rows = {
        "hashed": measure(plain, packet(b"\x0a\x03"), a.rounds, a.repeat),
        "quic_routed": measure(quic, packet(b"\x0a\x03"), a.rounds, a.repeat),
        "quic_unknown": measure(quic, packet(b"\x0b\x03"), a.rounds, a.repeat),
    }
    base = statistics.median(rows["hashed"][0])
    out = {f"{k}_ns": round(statistics.median(ns), 2) for k, (ns, _) in rows.items()}
    if a.json:
        print(json.dumps({**out, "rounds": a.rounds, "repeat": a.repeat}))
        return
    print(f"QUIC connection-ID routing, C burst kernel, 10k flows, bursts of {lib.MG_BURST_MAX}, "
          f"{a.rounds} bursts x {a.repeat} runs (median ns/packet; ratio to hashed)")
    for k, (ns, st) in rows.items():
        med = statistics.median(ns)
        print(f"  {k:<14} {med:7.1f} ns  best {min(ns):6.1f}  x{med / base:4.2f}  counters {st}")


if __name__ == "__main__":
    main()
