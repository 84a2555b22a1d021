"""Parser: table-driven cases (description, packet, expected reason and fields) run through
the C parser and the Python reference, plus a hypothesis differential test."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maglev.datapath.engine import DROP_NAMES
from maglev.datapath.ref_parse import PF_DF, PF_FIRST, PF_FRAGMENT, PF_MORE, parse
from maglev.testing import packets as P

from .dp_helpers import CLIENT4, CLIENT6, VIP4, VIP6, c_parse

TCP4 = P.eth(P.ipv4(CLIENT4, VIP4, P.TCP, P.tcp(40000, 80, b"GET /", src=CLIENT4, dst=VIP4)))
UDP6 = P.eth(P.ipv6(CLIENT6, VIP6, P.UDP, P.udp(5353, 53, b"q", src=CLIENT6, dst=VIP6)))


def _ipv4_bad_checksum() -> bytes:
    f = bytearray(TCP4)
    f[24] ^= 0xFF
    return bytes(f)


def _with_opts(opts: bytes) -> bytes:
    return P.eth(P.ipv4(CLIENT4, VIP4, P.TCP, P.tcp(1, 80, src=CLIENT4, dst=VIP4), options=opts))


# (description, packet, expected reason, expected fields (subset))
CASES = [
    ("IPv4 TCP", TCP4, "none", {"sport": 40000, "dport": 80, "proto": 6, "family": 4, "l3_off": 14, "l4_off": 34}),
    ("IPv6 UDP", UDP6, "none", {"sport": 5353, "dport": 53, "proto": 17, "family": 6, "l4_off": 54}),
    ("802.1Q tag", P.eth(TCP4[14:], vlans=[100]), "none", {"vlans": 1, "l3_off": 18, "dport": 80}),
    ("QinQ 802.1ad + 802.1Q",
     TCP4[:12] + struct.pack("!HHHH", 0x88A8, 200, 0x8100, 2001) + TCP4[12:],
     "none", {"vlans": 2, "l3_off": 22}),
    ("three tags are too many",
     TCP4[:12] + struct.pack("!HHHHHH", 0x88A8, 1, 0x8100, 2, 0x8100, 3) + TCP4[12:],
     "unsupported_ethertype", {}),
    ("ARP", P.eth(b"\0" * 28, ethertype=0x0806), "unsupported_ethertype", {}),
    ("shorter than Ethernet", TCP4[:13], "truncated", {}),
    ("IPv4 header cut", TCP4[:30], "truncated", {}),
    ("IPv4 total length beyond capture", TCP4[:-3], "truncated", {}),
    ("Ethernet padding after total length", TCP4 + b"\0" * 6, "none", {"l3_len": len(TCP4) - 14}),
    ("IPv4 version 6 under ethertype IPv4", TCP4[:14] + bytes([0x65]) + TCP4[15:], "bad_ipv4_header", {}),
    ("IPv4 IHL 4", TCP4[:14] + bytes([0x44]) + TCP4[15:], "bad_ipv4_header", {}),
    ("IPv4 bad header checksum", _ipv4_bad_checksum(), "bad_ipv4_checksum", {}),
    ("IPv4 options NOP/EOL", _with_opts(b"\x01\x01\x01\x00"), "none", {"l4_off": 38}),
    ("IPv4 option record-route", _with_opts(b"\x07\x07\x04" + bytes(4) + b"\x00"), "none", {"l4_off": 42}),
    ("IPv4 option with length 1", _with_opts(b"\x44\x01\x00\x00"), "bad_ipv4_header", {}),
    ("IPv4 option longer than header", _with_opts(b"\x44\x09\x00\x00"), "bad_ipv4_header", {}),
    ("TTL 0", P.eth(P.ipv4(CLIENT4, VIP4, P.TCP, P.tcp(1, 80, src=CLIENT4, dst=VIP4), ttl=0)), "ttl", {}),
    ("TCP data offset 4",
     P.eth(P.ipv4(CLIENT4, VIP4, P.TCP, struct.pack("!HHIIBBHHH", 1, 80, 0, 0, 0x40, 2, 1, 0, 0))),
     "bad_l4_header", {}),
    ("TCP header cut", P.eth(P.ipv4(CLIENT4, VIP4, P.TCP, b"\0" * 12)), "truncated", {}),
    ("UDP length 7", P.eth(P.ipv4(CLIENT4, VIP4, P.UDP, struct.pack("!HHHH", 1, 53, 7, 0))), "bad_l4_header", {}),
    ("IPv4 first fragment",
     P.eth(P.ipv4(CLIENT4, VIP4, P.UDP, P.udp(1, 53, b"x" * 16, src=CLIENT4, dst=VIP4), df=False, mf=True, ident=77)),
     "none", {"frag": PF_FRAGMENT | PF_FIRST | PF_MORE, "frag_id": 77, "dport": 53}),
    ("IPv4 non-first fragment has no ports",
     P.eth(P.ipv4(CLIENT4, VIP4, P.UDP, b"y" * 16, df=False, frag_offset=24, ident=77)),
     "none", {"frag": PF_FRAGMENT, "frag_off": 24, "sport": 0, "dport": 0, "l4_off": 0}),
    ("IPv4 DF flag", TCP4, "none", {"frag": PF_DF}),
    ("IPv6 hop-by-hop + dstopts + routing",
     P.eth(P.ipv6(CLIENT6, VIP6, P.HOPOPTS, P.ext(P.DSTOPTS) + P.ext(P.ROUTING) + P.ext(P.TCP)
                  + P.tcp(1, 443, src=CLIENT6, dst=VIP6))),
     "none", {"proto": 6, "dport": 443, "l4_off": 14 + 40 + 24}),
    ("IPv6 hop-by-hop not first", P.eth(P.ipv6(CLIENT6, VIP6, P.DSTOPTS, P.ext(P.HOPOPTS) + P.ext(P.TCP))),
     "bad_ipv6_header", {}),
    ("IPv6 AH", P.eth(P.ipv6(CLIENT6, VIP6, 51, struct.pack("!BBHII", P.UDP, 1, 0, 1, 1)
                             + P.udp(1, 53, src=CLIENT6, dst=VIP6))),
     "none", {"proto": 17, "l4_off": 14 + 40 + 12}),
    ("IPv6 first fragment", P.eth(P.ipv6(CLIENT6, VIP6, P.FRAGMENT, P.frag6(P.UDP, 9, 0, True)
                                         + P.udp(1, 53, b"z" * 8, src=CLIENT6, dst=VIP6))),
     "none", {"frag": PF_FRAGMENT | PF_FIRST | PF_MORE, "frag_id": 9, "dport": 53}),
    ("IPv6 non-first fragment", P.eth(P.ipv6(CLIENT6, VIP6, P.FRAGMENT, P.frag6(P.UDP, 9, 16) + b"z" * 8)),
     "none", {"frag": PF_FRAGMENT, "frag_off": 16, "l4_off": 0}),
    ("IPv6 atomic fragment is not a fragment",
     P.eth(P.ipv6(CLIENT6, VIP6, P.FRAGMENT, P.frag6(P.UDP, 9, 0) + P.udp(1, 53, src=CLIENT6, dst=VIP6))),
     "none", {"frag": 0, "dport": 53}),
    ("IPv6 two fragment headers",
     P.eth(P.ipv6(CLIENT6, VIP6, P.FRAGMENT, P.frag6(P.FRAGMENT, 9, 0, True) + P.frag6(P.UDP, 9, 0, True)
                  + P.udp(1, 53, src=CLIENT6, dst=VIP6))), "bad_ipv6_header", {}),
    ("IPv6 nine extension headers",
     P.eth(P.ipv6(CLIENT6, VIP6, P.DSTOPTS, b"".join(P.ext(P.DSTOPTS) for _ in range(8)) + P.ext(P.TCP)
                  + P.tcp(1, 443, src=CLIENT6, dst=VIP6))), "bad_ipv6_header", {}),
    ("IPv6 extension header cut", P.eth(P.ipv6(CLIENT6, VIP6, P.DSTOPTS, bytes([6, 4]) + bytes(6))),
     "truncated", {}),
    ("IPv6 payload length beyond capture", UDP6[:-1], "truncated", {}),
    ("IPv6 jumbogram (payload length 0)", UDP6[:18] + b"\0\0" + UDP6[20:], "bad_ipv6_header", {}),
    ("IPv6 hop limit 0", P.eth(P.ipv6(CLIENT6, VIP6, P.UDP, P.udp(1, 53, src=CLIENT6, dst=VIP6), hlim=0)), "ttl", {}),
    ("IPv6 no next header", P.eth(P.ipv6(CLIENT6, VIP6, 59, b"\0" * 20)), "none", {"proto": 59, "l4_off": 0}),
    ("ICMP echo", P.eth(P.ipv4(CLIENT4, VIP4, P.ICMP, P.icmp4(8, 0))), "none", {"icmp_type": 8, "proto": 1}),
    ("ICMPv6 cut", P.eth(P.ipv6(CLIENT6, VIP6, P.ICMPV6, b"\x80\x00")), "truncated", {}),
]


@pytest.mark.parametrize("desc,pkt,reason,fields", CASES, ids=[c[0] for c in CASES])
def test_parse_table(desc, pkt, reason, fields):
    for engine, fn in (("c", c_parse), ("python", parse)):
        rc, p = fn(pkt)
        assert DROP_NAMES[rc] == reason, f"{engine}: {desc}"
        for k, v in fields.items():
            assert getattr(p, k) == v, f"{engine}: {desc}: {k}"


def test_drop_names_come_from_c_and_are_unique():
    assert DROP_NAMES[0] == "none"
    assert len(set(DROP_NAMES)) == len(DROP_NAMES)
    for needed in ("truncated", "bad_ipv4_header", "bad_ipv6_header", "unsupported_ethertype",
                   "ttl", "no_vip", "no_backend"):
        assert needed in DROP_NAMES


FIELDS = ("src", "dst", "sport", "dport", "proto", "family", "l3_off", "l4_off", "l3_len",
          "ethertype", "frag_off", "ttl", "vlans", "frag", "tcp_flags", "frag_id", "icmp_type", "icmp_code")


def _same(pkt: bytes) -> None:
    rc_c, pc = c_parse(pkt)
    rc_p, pp = parse(pkt)
    assert rc_c == rc_p, (pkt.hex(), DROP_NAMES[rc_c], DROP_NAMES[rc_p])
    if rc_c == 0:
        for f in FIELDS:
            assert getattr(pc, f) == getattr(pp, f), (f, pkt.hex())


SEEDS = [c[1] for c in CASES]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.integers(0, 300))
def test_parse_differential_mutated(seed, flips, cut):
    pkt = bytearray(seed)
    for pos, val in flips:
        if pos < len(pkt):
            pkt[pos] = val
    _same(bytes(pkt[: max(len(pkt) - cut, 0)] if cut < 100 else pkt))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([b"\x08\x00\x45", b"\x86\xdd\x60", b"\x81\x00\x00", b""]))
def test_parse_differential_random(tail, prefix):
    _same(bytes(12) + prefix + tail)
