"""Every capture of the packet corpus (tests/data/corpus) through both engines.

The config for a file is derived from the file itself: port-0 TCP and UDP VIPs on the
first few destination addresses it contains, plus the manifest's VIP hints -- so most
files forward real traffic (GRE to three backends) and the rest exercises every drop path.
Checks: no crash, the record count equals the manifest's, every packet accounted for,
C and Python produce identical outputs, forwarded frames are well-formed GRE to a
configured backend and fit a frame.
"""

from __future__ import annotations

import csv
import ipaddress
import re
from pathlib import Path

import pytest

from maglev import config as cfg
from maglev.config_rules import address_problem
from maglev.datapath.engine import FRAME_DATA_MAX
from maglev.datapath.ref_parse import parse
from maglev.datapath.replay import replay
from maglev.nic.pcapfile import PcapReader

from .dp_helpers import CORPUS_FILES

BACKENDS4 = ["198.18.7.1", "198.18.7.2", "198.18.7.3"]
BACKENDS6 = ["2001:db8:7::1", "2001:db8:7::2"]


def manifest(corpus: Path) -> dict[str, dict[str, str]]:
    with open(corpus.parent / "MANIFEST.tsv", newline="") as f:
        return {r["file"]: r for r in csv.DictReader(f, delimiter="\t")}


def derived_config(path: Path, hint: str) -> cfg.Config:
    dsts: list[str] = []
    with PcapReader(path) as r:
        for rec in r:
            rc, p = parse(rec.data)
            if rc or p.proto not in (6, 17):
                continue
            ip = ipaddress.ip_address(p.dst[:4] if p.family == 4 else p.dst)
            a = str(ip)
            # Only addresses a config may name as a VIP (docs/config.md, "Address rules"):
            # a capture's multicast or loopback destinations stay no_vip drops.
            if address_problem(ip, "vip") is None and a not in dsts:
                dsts.append(a)
            if len(dsts) == 4:
                break
    vips = []
    for a in dsts:
        for proto in ("tcp", "udp"):
            vips.append((a, 0, proto))
    for m in re.finditer(r"VIP hint (\S+):(\d+)/(tcp|udp)", hint):
        if address_problem(ipaddress.ip_address(m.group(1)), "vip") is None:
            vips.append((m.group(1), int(m.group(2)), m.group(3)))
    lines = ['[instance]', 'source_ipv4 = "198.18.0.1"', 'source_ipv6 = "2001:db8:1::1"']
    seen = set()
    for a, port, proto in vips:
        if (a, port, proto) in seen:
            continue
        seen.add((a, port, proto))
        fam = ipaddress.ip_address(a).version
        lines += ["[[vip]]", f'address = "{a}"', f"port = {port}", f'protocol = "{proto}"', "table_size = 251"]
        for b in BACKENDS4 if fam == 4 else BACKENDS6:
            lines += ["[[vip.backend]]", f'address = "{b}"']
    return cfg.loads("\n".join(lines))


def well_formed(data: bytes) -> None:
    assert len(data) <= FRAME_DATA_MAX + 192
    rc, p = parse(data)
    assert rc == 0, f"forwarded frame does not parse: {data[:64].hex()}"
    assert p.proto == 47  # GRE
    dst = str(ipaddress.ip_address(p.dst[:4] if p.family == 4 else p.dst))
    assert dst in BACKENDS4 + BACKENDS6


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_file(corpus_dir: Path, name: str, tmp_path: Path, test_data_missing):
    path = corpus_dir / name
    if not path.exists():
        test_data_missing(f"{name} is not in the corpus at {corpus_dir}")
    row = manifest(corpus_dir)[name]
    conf = derived_config(path, row["what it exercises"])
    results = {}
    for engine in ("c", "python"):
        outs: list = []
        s = replay(path, conf, engine=engine, outputs=outs, out=tmp_path / f"{engine}.pcap")
        assert s["error"] is None
        assert s["packets_in"] == int(row["packets"])
        assert s["forwarded"] + sum(s["dropped"].values()) == s["packets_in"]
        for o in outs:
            if o.action == "tx" and o.reason == "forward":
                well_formed(o.data)
        results[engine] = (s, [(o.seq, o.action, o.verdict, o.data, o.backend_index) for o in outs])
    (sc, oc), (sp, op) = results["c"], results["python"]
    assert oc == op
    for k in ("packets_in", "forwarded", "dropped", "icmp_sent", "per_backend", "per_vip", "conntrack"):
        assert sc[k] == sp[k], k
    assert (tmp_path / "c.pcap").read_bytes() == (tmp_path / "python.pcap").read_bytes()


def test_corpus_list_is_complete(corpus_dir: Path):
    assert sorted(p.name for p in corpus_dir.iterdir() if p.suffix in (".pcap", ".pcapng")) == sorted(CORPUS_FILES)
