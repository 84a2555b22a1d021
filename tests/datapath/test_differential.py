"""Differential property tests: streams of random and mutated packets through the C burst
kernel and the Python reference give the same verdicts, backends and bytes -- with state
(connection table, fragment table, ICMP limiter) carried across bursts and time."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maglev.datapath import DataPath, build_tables
from maglev.datapath.engine import Packet
from maglev.testing import packets as P

from .dp_helpers import CLIENT4, CLIENT6, DOWN, VIP4, VIP4_ANY, VIP4_DOWN, VIP4_NOFRAG, VIP6, config
from .redirect_helpers import marked_gre, pool_config, tcp6_fragments, udp_fragments

BLOB = build_tables(config(), DOWN)
# This instance is 198.18.0.1 in a pool of three: fragments owned elsewhere are redirected
POOL_BLOB = build_tables(pool_config("198.18.0.1"), DOWN)


def _seeds() -> list[bytes]:
    s = []
    for dst in (VIP4, VIP4_ANY, VIP4_NOFRAG, VIP4_DOWN, "203.0.113.99"):
        s.append(P.eth(P.ipv4(CLIENT4, dst, P.TCP, P.tcp(40000, 80, b"hello", src=CLIENT4, dst=dst))))
        s.append(P.eth(P.ipv4(CLIENT4, dst, P.UDP, P.udp(5000, 53, b"q" * 30, src=CLIENT4, dst=dst), df=False)))
    s.append(P.eth(P.ipv6(CLIENT6, VIP6, P.TCP, P.tcp(1, 443, b"x" * 20, src=CLIENT6, dst=VIP6))))
    s.append(P.eth(P.ipv6(CLIENT6, VIP6, P.HOPOPTS, P.ext(P.TCP) + P.tcp(1, 443, src=CLIENT6, dst=VIP6))))
    payload = P.udp(1, 5000, bytes(40), src=CLIENT4, dst=VIP4_ANY)
    s.append(P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, payload[:24], df=False, mf=True, ident=9)))
    s.append(P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, payload[24:], df=False, frag_offset=24, ident=9)))
    s.append(P.eth(P.ipv4(CLIENT4, VIP4, P.TCP, P.tcp(1, 80, bytes(1470), src=CLIENT4, dst=VIP4))))  # too big
    s.append(P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, P.udp(1, 9, bytes(1470), src=CLIENT4, dst=VIP4_ANY), df=False)))
    reply = P.ipv4(VIP4, CLIENT4, P.TCP, P.tcp(80, 40000, src=VIP4, dst=CLIENT4))
    s.append(P.eth(P.ipv4("198.51.100.1", VIP4, P.ICMP, P.icmp4(3, 4, payload=reply))))
    s.append(P.eth(P.ipv4(CLIENT4, VIP4, P.TCP, P.tcp(40000, 80, src=CLIENT4, dst=VIP4)), vlans=[7, 8]))
    return s


SEEDS = _seeds()


def _pool_seeds() -> list[bytes]:
    """Fragments of several clients (so several owners), and what other instances send:
    marked GRE (IPv4 and IPv6 fragments, whole packets), unmarked GRE, foreign sources."""
    s = []
    for i in range(1, 7):
        s += udp_fragments(f"198.51.100.{i}", VIP4_ANY, 5000 + i, i, size=1200, piece=400)
        s += tcp6_fragments(f"2001:db8:c::{i:x}", VIP6, 6000 + i, i, size=900, piece=400)
    for i in range(20, 24):  # full-size fragments: a redirect of these is split (IPv4) or too_big
        s += udp_fragments(f"198.51.100.{i}", VIP4_ANY, 7000 + i, i, size=4000, piece=1480)
        s += tcp6_fragments(f"2001:db8:c::{i:x}", VIP6, 7000 + i, i, size=3000, piece=1448)
    frag = udp_fragments(CLIENT4, VIP4_ANY, 5000, 3, size=1200, piece=400)
    frag6 = tcp6_fragments(CLIENT6, VIP6, 6000, 3, size=900, piece=400)
    for f in (frag[0], frag[1], frag[-1], frag6[0], frag6[1]):
        s.append(marked_gre("198.18.0.2", "198.18.0.1", f))
        s.append(marked_gre("198.18.0.3", "198.18.0.1", f))
    whole = P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, P.udp(1, 53, b"q", src=CLIENT4, dst=VIP4_ANY)))
    s.append(marked_gre("198.18.0.2", "198.18.0.1", whole))
    s.append(marked_gre("198.18.0.2", "198.18.0.1", frag[1], key=None))
    s.append(marked_gre("198.51.100.9", "198.18.0.1", frag[1]))
    return s


POOL_SEEDS = _pool_seeds()


def _fix_ipv4_checksum(pkt: bytearray) -> None:
    """Mutations would otherwise almost always end at bad_ipv4_checksum."""
    if len(pkt) >= 34 and pkt[12:14] == b"\x08\x00" and pkt[14] >> 4 == 4:
        ihl = (pkt[14] & 0xF) * 4
        if 20 <= ihl and 14 + ihl <= len(pkt):
            pkt[24:26] = b"\0\0"
            pkt[24:26] = struct.pack("!H", P.checksum(bytes(pkt[14 : 14 + ihl])))


mutation = st.tuples(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4),
    st.integers(0, 60),
    st.booleans(),
)


def _make(m) -> bytes:
    seed, flips, cut, fix = m
    pkt = bytearray(seed)
    for pos, val in flips:
        if pos < len(pkt):
            pkt[pos] = val
    if fix:
        _fix_ipv4_checksum(pkt)
    return bytes(pkt[: len(pkt) - cut] if cut < len(pkt) else pkt[:1])


def _run_stream_on_both(blob: bytes, bursts, gaps) -> tuple[dict, dict]:
    """Feed the same bursts (with clock gaps) to the C and Python engines, assert their
    outputs are identical, and return both engines' stats."""
    engines = {e: DataPath(blob, engine=e, ct_capacity=16) for e in ("c", "python")}
    now = 1_000_000_000
    seq = 0
    results = {e: [] for e in engines}
    for burst, gap in zip(bursts, gaps, strict=False):
        now += gap
        pkts = []
        for m in burst:
            pkts.append(Packet(seq, _make(m)))
            seq += 1
        for e, dp in engines.items():
            results[e] += [(o.seq, o.action, o.verdict, o.data, o.vip_index, o.backend_index)
                           for o in dp.process(pkts, now)]
    for e, dp in engines.items():
        results[e] += [(o.seq, o.action, o.verdict) for o in dp.flush(now + 10**12)]
    assert results["c"] == results["python"]
    sc, sp = engines["c"].stats(), engines["python"].stats()
    return sc, sp


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(mutation, min_size=1, max_size=12), min_size=1, max_size=4),
       st.lists(st.integers(0, 3_000_000_000), min_size=4, max_size=4))
def test_engines_agree_on_streams(bursts, gaps):
    sc, sp = _run_stream_on_both(BLOB, bursts, gaps)
    for k in ("packets_in", "forwarded", "icmp_sent", "drops", "conntrack", "vips", "backends", "held"):
        assert sc[k] == sp[k], k
    assert sc["forwarded"] + sum(sc["drops"].values()) == sc["packets_in"]


pool_mutation = st.tuples(
    st.sampled_from(POOL_SEEDS + SEEDS),
    st.lists(st.tuples(st.integers(0, 90), st.integers(0, 255)), max_size=3),
    st.integers(0, 30),
    st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.one_of(pool_mutation, st.tuples(st.sampled_from(POOL_SEEDS),
                                                            st.just([]), st.just(0), st.just(False))),
                         min_size=1, max_size=16), min_size=1, max_size=4),
       st.lists(st.integers(0, 3_000_000_000), min_size=4, max_size=4))
def test_engines_agree_with_a_pool(bursts, gaps):
    """The same streams with a maglev pool: redirects out (marked GRE to the owner) and in
    (decapsulated, processed, never redirected again), their drops, byte for byte."""
    sc, sp = _run_stream_on_both(POOL_BLOB, bursts, gaps)
    for k in ("packets_in", "forwarded", "redirected", "redirect_in", "icmp_sent", "drops",
              "conntrack", "vips", "backends", "held", "bytes_out"):
        assert sc[k] == sp[k], k
    assert sc["forwarded"] + sc["redirected"] + sum(sc["drops"].values()) == sc["packets_in"]


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_engines_agree_on_random_bytes(data):
    outs = {}
    for e in ("c", "python"):
        dp = DataPath(BLOB, engine=e)
        outs[e] = [(o.action, o.verdict, o.data) for o in dp.process([Packet(0, data)], 10**9)]
        outs[e] += [(o.action, o.verdict) for o in dp.flush(10**13)]
    assert outs["c"] == outs["python"]
