"""VIP matching across clusters through a real ``maglev run`` (steering, two workers,
muxer, config manager as processes; pcap NIC in, pcap out): clients' packets to cluster
b's and c's addresses and GRE from b's forwarders are served by this cluster's VIP with
the same suffix, and a VIP whose backends are all drained sends its packets to the first
backup cluster's forwarders."""

from __future__ import annotations

import pytest

from maglev.nic.pcapfile import PcapReader, PcapWriter
from maglev.testing import unique
from tests.run_helpers import run_to_eof

from .cluster_helpers import (
    A_DOWN,
    A_SRC4,
    A_WEB6,
    B_FWD,
    B_FWD6,
    B_WEB,
    B_WEB6,
    C_WEB,
    a_toml,
    gre_from,
    outer_gre,
    tcp4,
    tcp6,
)


@pytest.mark.slow
def test_peer_addresses_gre_and_backup_through_maglev_run(shortdir):
    name = unique.name("vm")
    # a's A_DOWN VIP: its only backend drained (weight 0) -> no slot -> backup cluster b
    text = a_toml().replace('name = "a1"', f'name = "{name}"').replace(
        'address = "198.18.1.9"', 'address = "198.18.1.9"\nweight = 0')
    cfg = shortdir / "a.toml"
    cfg.write_text(text)
    inp, outp = shortdir / "in.pcap", shortdir / "out.pcap"
    frames: list[tuple[str, bytes]] = []
    for i in range(20):
        frames.append(("direct", tcp4(B_WEB, sport=20000 + i)))
        frames.append(("direct", tcp4(C_WEB, sport=21000 + i)))
        frames.append(("direct6", tcp6(B_WEB6, sport=22000 + i)))
        frames.append(("gre", gre_from(B_FWD[i % 2], A_SRC4, tcp4(B_WEB, sport=23000 + i))))
        frames.append(("backup", tcp4(A_DOWN, sport=24000 + i)))
    with PcapWriter(inp) as w:
        for n, (_, f) in enumerate(frames):
            w.write(f, n * 1000)
    stats = run_to_eof(shortdir, name, ["--workers", "2", "--config", str(cfg), "--nic", f"pcap:{inp}",
                                        "--out", str(outp)])
    with PcapReader(outp) as rd:
        out = [rec.data for rec in rd]
    assert stats["packets_in"] == len(frames) == stats["forwarded"], stats
    tot = {k: sum(w[k] for w in stats["per_worker"]) for k in ("cluster_matched", "cluster_in", "backup_out")}
    assert tot == {"cluster_matched": 80, "cluster_in": 20, "backup_out": 20}, tot
    by_inner = {}
    for o in out:
        src, dst, inner = outer_gre(o)
        by_inner[inner] = (src, dst)
    assert len(by_inner) == len(frames)
    for kind, f in frames:
        inner = f[14:] if kind != "gre" else f[14 + 20 + 4:]
        src, dst = by_inner[inner]
        if kind in ("direct", "gre"):  # this cluster's 203.0.113.10 backends
            assert (src, dst[:-1]) == (A_SRC4, "198.18.1."), (kind, dst)
            assert dst in ("198.18.1.1", "198.18.1.2")
        elif kind == "direct6":  # this cluster's [2001:db8:a::10]:443 backend
            assert dst == "2001:db8:2::1", (kind, A_WEB6, dst)
        else:  # backup: b's forwarders, chosen by flow hash
            assert dst in (*B_FWD, B_FWD6), (kind, dst)
