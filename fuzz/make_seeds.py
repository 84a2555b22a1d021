"""Write the fuzz harness's inputs: the tables blob (VIPs on the destinations the corpus
captures use, every encapsulation) and one seed file per packet of tests/data/corpus/pcaps
plus multi-packet seeds (a flow, fragments) in the harness's record format.

    python fuzz/make_seeds.py OUTDIR      -> OUTDIR/tables.bin, OUTDIR/corpus/*
"""

from __future__ import annotations

import ipaddress
import os
import struct
import sys
from pathlib import Path

from maglev import config as cfg
from maglev.config_rules import address_problem
from maglev.datapath.ref_parse import parse
from maglev.datapath.tables import build_tables
from maglev.nic.pcapfile import PcapReader
from maglev.testing import packets as P

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("MAGLEV_CORPUS") or REPO / "tests" / "data" / "corpus") / "pcaps"
ENCAPS = ("gre", "ipip", "vxlan", "gre")


def record(pkt: bytes, flags: int = 0) -> bytes:
    return struct.pack("<HB", len(pkt), flags) + pkt


def main(out: Path) -> None:
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    dsts: dict[str, None] = {}
    n = 0
    for path in sorted(CORPUS.glob("*.pcap*")):
        with PcapReader(path) as r:
            for rec in r:
                if not rec.ok:
                    continue
                (out / "corpus" / f"{path.stem}-{rec.index}").write_bytes(rec.data[:1728])
                n += 1
                rc, p = parse(rec.data)
                if rc == 0 and p.proto in (6, 17) and len(dsts) < 40:
                    ip = ipaddress.ip_address(p.dst[:4] if p.family == 4 else p.dst)
                    if address_problem(ip, "vip") is None:  # the config refuses multicast, loopback, ...
                        dsts[str(ip)] = None
    dsts["203.0.113.10"] = None
    lines = ['[instance]', 'source_ipv4 = "198.18.0.1"', 'source_ipv6 = "2001:db8:1::1"', "mtu = 1400"]
    for i, a in enumerate(dsts):
        fam = ipaddress.ip_address(a).version
        for proto in ("tcp", "udp"):
            lines += ["[[vip]]", f'address = "{a}"', "port = 0", f'protocol = "{proto}"',
                      "table_size = 251", f'encap = "{ENCAPS[i % 4]}"', f"allow_fragments = {str(i % 5 != 4).lower()}"]
            for b in (("198.18.7.1", "198.18.7.2") if fam == 4 else ("2001:db8:7::1", "2001:db8:7::2")):
                lines += ["[[vip.backend]]", f'address = "{b}"', 'mac = "02:00:00:00:07:01"']
    conf = cfg.loads("\n".join(lines))
    down = frozenset({(conf.vips[0].key, conf.vips[0].backends[0].key)})
    (out / "tables.bin").write_bytes(build_tables(conf, down))
    c, v = "198.51.100.7", "203.0.113.10"
    flow = [P.eth(P.ipv4(c, v, P.TCP, P.tcp(4000, 80, b"x" * k, src=c, dst=v))) for k in (0, 10, 1400)]
    (out / "corpus" / "multi-flow").write_bytes(b"".join(record(p) for p in flow) + record(flow[0], 1))
    payload = P.udp(1, 53, bytes(64), src=c, dst=v)
    f1 = P.eth(P.ipv4(c, v, P.UDP, payload[:32], df=False, mf=True, ident=5))
    f2 = P.eth(P.ipv4(c, v, P.UDP, payload[32:], df=False, frag_offset=32, ident=5))
    (out / "corpus" / "multi-frag").write_bytes(record(f2, 2) + record(f1) + record(f2, 1))
    big = P.eth(P.ipv4(c, v, P.UDP, P.udp(1, 53, bytes(1500), src=c, dst=v), df=False))
    (out / "corpus" / "multi-split").write_bytes(record(big))
    print(f"{n} packet seeds, {len(conf.vips)} VIPs -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "build/fuzz"))
