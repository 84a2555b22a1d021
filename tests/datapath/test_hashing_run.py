"""Per-VIP hashing options through a real ``maglev run`` (steering, two workers, muxer,
config manager as processes; pcap NIC in, pcap out): a sticky VIP sends every connection
of a client to one backend whatever worker handles it, the 5-tuple VIP beside it spreads
them, and a ``conntrack = false`` UDP VIP forwards every datagram."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from maglev.nic.pcapfile import PcapReader, PcapWriter
from maglev.testing import packets as P
from maglev.testing import unique
from tests.run_helpers import run_to_eof

STICKY, SPREAD, DNS = "203.0.113.61", "203.0.113.62", "203.0.113.63"

CONF = """
[instance]
name = "{name}"
source_ipv4 = "198.18.0.1"

[[vip]]
address = "{sticky}"
port = 80
hash = "src_ip"
{backends}
[[vip]]
address = "{spread}"
port = 80
{backends}
[[vip]]
address = "{dns}"
port = 53
protocol = "udp"
conntrack = false
udp_ignore_src_port = true
{backends}
"""


def backends_toml() -> str:
    return "".join(f'[[vip.backend]]\naddress = "198.18.1.{i}"\n' for i in range(1, 5))


def gre_flows(path: Path) -> list[tuple[str, str, str]]:
    """(outer destination = backend, inner source = client, inner destination = VIP) of
    every GRE-encapsulated IPv4 packet in the capture."""
    out = []
    with PcapReader(path) as r:
        for rec in r:
            d = rec.data
            if len(d) < 34 or d[12:14] != b"\x08\x00" or d[23] != 47:
                continue
            ihl = (d[14] & 0xF) * 4
            gre = 14 + ihl
            flags = struct.unpack_from("!H", d, gre)[0]
            inner = gre + 4 + (4 if flags & 0x2000 else 0)
            out.append((".".join(map(str, d[30:34])), ".".join(map(str, d[inner + 12:inner + 16])),
                        ".".join(map(str, d[inner + 16:inner + 20]))))
    return out


@pytest.mark.slow
def test_sticky_and_stateless_vips_through_maglev_run(shortdir):
    name = unique.name("hsh")
    cfg = shortdir / "maglev.toml"
    cfg.write_text(CONF.format(name=name, sticky=STICKY, spread=SPREAD, dns=DNS, backends=backends_toml()))
    inp, outp = shortdir / "in.pcap", shortdir / "out.pcap"
    n = 0
    with PcapWriter(inp) as w:
        for c in range(12):
            client = f"198.51.100.{c + 1}"
            for s in range(40):
                for vip in (STICKY, SPREAD):
                    w.write(P.eth(P.ipv4(client, vip, P.TCP, P.tcp(20000 + 97 * s, 80, b"x", src=client,
                                                                   dst=vip, flags=0x02))), n * 1000)
                    n += 1
                w.write(P.eth(P.ipv4(client, DNS, P.UDP, P.udp(30000 + s, 53, b"q" * 12, src=client, dst=DNS))),
                        n * 1000)
                n += 1
    stats = run_to_eof(shortdir, name, ["--workers", "2", "--config", str(cfg), "--nic", f"pcap:{inp}",
                                        "--out", str(outp)])
    flows = gre_flows(outp)
    assert stats["packets_in"] == n and stats["forwarded"] == n, stats
    assert len(flows) == n
    per = {}
    for backend, client, vip in flows:
        per.setdefault((vip, client), set()).add(backend)
    for c in range(12):
        client = f"198.51.100.{c + 1}"
        assert len(per[(STICKY, client)]) == 1, per[(STICKY, client)]
        assert len(per[(DNS, client)]) == 1, per[(DNS, client)]  # source port ignored
        assert len(per[(SPREAD, client)]) > 1  # 40 connections of one client over 4 backends
    assert len({next(iter(per[(STICKY, f"198.51.100.{c + 1}")])) for c in range(12)}) > 1
