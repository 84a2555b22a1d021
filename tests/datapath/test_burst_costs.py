"""What the burst kernel now skips or keeps between bursts (issue 13.5, session 4) must not
change an output: the fragment table's expiry when nothing is held (only its cursor moves),
the VIP memo kept across bursts (forgotten on every tables swap), and the GRE-in-IPv4 fast
path (the general path's bytes and counters).  Each case runs the C engine against the
Python reference, which has none of these shortcuts."""

from __future__ import annotations

import pytest

from maglev import config as cfg
from maglev.datapath import DataPath, build_tables
from maglev.datapath import frag as F
from maglev.datapath.engine import Packet
from maglev.testing import packets as P

MS = 10**6
C4 = "198.51.100.7"


def fkey(ident: int) -> bytes:
    return F.frag_key(4, C4, "203.0.113.10", P.UDP, ident)


@pytest.mark.parametrize("entries", [4, 16, 64])
def test_idle_expiry_moves_the_cursor_like_the_scan(entries):
    """Expiry calls on a table holding nothing (decisions only, some of them expired)
    advance the cursor exactly like the reference's scan, so frames held later expire in
    the same call on both engines."""
    kw = dict(entries=entries, hold_max=64, hold_bytes_max=1 << 20, timeout_ns=10 * MS, key=(3, 4))
    c, p = F.make_table("c", **kw), F.make_table("python", **kw)
    now = 0
    for i in range(7):  # decisions only: nothing held, the table stays idle
        assert c.first(fkey(i), 1, 0, now) == p.first(fkey(i), 1, 0, now)
        for _ in range(i + 1):
            assert c.expire(now, 1 + i % 3) == p.expire(now, 1 + i % 3) == 0
        now += 4 * MS  # some decisions expire while idle
    assert c.hold_count == p.hold_count == 0
    frame = 0
    for i in range(100, 112):  # non-first fragments without a first: held
        frame += 1
        assert c.next(fkey(i), frame, 100, now) == p.next(fkey(i), frame, 100, now)
    held = c.hold_count  # a small table drops some (table full): the same ones on both
    assert held == p.hold_count and held > 0
    now += 11 * MS  # past the timeout: expiry returns them bucket by bucket, one per call
    seen_c, seen_p = [], []
    for _ in range(entries):
        seen_c.append(c.expire(now, 1))
        seen_p.append(p.expire(now, 1))
    assert seen_c == seen_p
    assert sum(seen_c) == held
    assert c.drain(64) == p.drain(64)
    assert c.stats == p.stats


TWO_VIPS = """
[instance]
source_ipv4 = "198.18.0.1"
{vips}
"""
VIP = """
[[vip]]
address = "{addr}"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.{n}.1"
[[vip.backend]]
address = "198.18.{n}.2"
"""


def conf(*addrs: str) -> bytes:
    vips = "".join(VIP.format(addr=a, n=i + 1) for i, a in enumerate(addrs))
    return build_tables(cfg.loads(TWO_VIPS.format(vips=vips)))


def tcp(dst: str, sport: int) -> bytes:
    return P.eth(P.ipv4(C4, dst, P.TCP, P.tcp(sport, 80, b"", src=C4, dst=dst, flags=0x10)))


def summary(outs):
    return [(o.seq, o.verdict, o.reason, o.backend_index, o.data) for o in outs]


def test_vip_memo_is_forgotten_on_a_tables_swap():
    """A burst ends with a VIP matched at index 1; the next tables put another VIP there
    and remove the first address: the memo must not answer from the old tables."""
    a, b, c = "203.0.113.10", "203.0.113.11", "203.0.113.12"
    old, new = conf(a, b), conf(c, a)  # b removed; a moves from index 0 to 1
    results = {}
    for engine in ("c", "python"):
        dp = DataPath(old, engine=engine, ct_capacity=1024)
        outs = dp.process([Packet(0, tcp(a, 1000)), Packet(1, tcp(b, 1001))], 10**9)
        dp.set_tables(new)
        outs += dp.process([Packet(2, tcp(b, 1001)), Packet(3, tcp(a, 1000)), Packet(4, tcp(c, 1002))], 2 * 10**9)
        results[engine] = summary(outs)
    assert results["c"] == results["python"]
    reason = {r[0]: r[2] for r in results["c"]}
    assert reason[2] == "no_vip"  # b is gone: not the memo's old answer
    assert [reason[s] for s in (0, 1, 3, 4)] == ["forward"] * 4


@pytest.mark.parametrize("tos, df, vlan, options, own_mac", [
    (0, True, False, b"", False),
    (0xb8, False, False, b"", False),
    (0x03, True, True, b"", False),
    (0, True, False, b"\x01\x01\x01\x00", True),
])
def test_gre4_fast_path_equals_the_reference(tos, df, vlan, options, own_mac):
    text = TWO_VIPS.format(vips=VIP.format(addr="203.0.113.10", n=1))
    macs = dict(own_mac="02:00:00:00:00:aa", gateway_mac="02:00:00:00:00:bb") if own_mac else {}
    blob = build_tables(cfg.loads(text), **macs)
    pkts = []
    for i in range(20):
        ip = P.ipv4(C4, "203.0.113.10", P.TCP, P.tcp(2000 + i, 80, bytes(i * 50), src=C4, dst="203.0.113.10"),
                    tos=tos, df=df, ident=0x1234 + i, options=options)
        frame = P.eth(ip)
        if vlan:
            frame = frame[:12] + b"\x81\x00\x00\x07" + frame[12:]
        pkts.append(Packet(i, frame))
    got = {e: summary(DataPath(blob, engine=e, ct_capacity=1024).process(pkts, 10**9)) for e in ("c", "python")}
    assert got["c"] == got["python"]
    assert all(r[2] == "forward" and r[3] >= 0 for r in got["c"])
    if own_mac:
        assert all(r[4][:12] == bytes.fromhex("0200000000bb0200000000aa") for r in got["c"])
