"""ICMP: PMTU decisions, "fragmentation needed" / "packet too big" construction (expected
bytes built independently, tshark checksum validation), inbound-error flow keys, rate
limit, and C vs Python differential tests."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maglev.datapath import icmp as I
from maglev.datapath import ref_icmp as R
from maglev.errors import NativeError
from maglev.native import lib
from maglev.testing import packets as P

ENGINES = ("c", "python")
C4, V4 = "198.51.100.7", "203.0.113.10"
C6, V6 = "2001:db8:c::7", "2001:db8:f::10"


def l3(frame: bytes) -> bytes:
    return frame[P.l3_offset(frame):]


def big4(size=1500, df=True, **kw):
    return P.tcp_packet(4, size, df=df, **kw)


def big6(size=1500, **kw):
    return P.tcp_packet(6, size, **kw)


# ------------------------------------------------------------------------- PMTU check

def _icmp4_frame(typ):
    return P.eth(P.ipv4(C4, V4, P.ICMP, P.icmp4(typ, 0, payload=bytes(1472)), df=True))


def _icmp6_frame(typ):
    return P.eth(P.ipv6(C6, V6, P.ICMPV6, P.icmp6(typ, 0, payload=bytes(1452), src=C6, dst=V6)))


def _frag6_nonfirst():
    return P.eth(P.ipv6(C6, V6, P.FRAGMENT, P.frag6(P.UDP, 7, offset=1448) + bytes(1452)))


PMTU_CASES = [
    # description, frame, family, l4 proto, l4 offset, overhead, mtu, expected
    ("fits exactly", big4(1476), 4, 6, 34, 24, 1500, R.PMTU_FITS),
    ("one byte over, DF set -> ICMP", big4(1477), 4, 6, 34, 24, 1500, R.PMTU_ICMP),
    ("over, DF clear -> fragment", big4(1500, df=False), 4, 6, 34, 24, 1500, R.PMTU_FRAGMENT),
    ("padding does not count", big4(1476) + bytes(20), 4, 6, 34, 24, 1500, R.PMTU_FITS),
    ("IPv6 over -> ICMPv6", big6(1500), 6, 6, 54, 44, 1500, R.PMTU_ICMP),
    ("IPv6 fits", big6(1456), 6, 6, 54, 44, 1500, R.PMTU_FITS),
    ("IPv6 non-first fragment: no error", _frag6_nonfirst(), 6, 17, 0, 44, 1500, R.PMTU_DROP),
    ("no error about an ICMP error", _icmp4_frame(3), 4, 1, 34, 24, 1500, R.PMTU_DROP),
    ("an ICMP echo may get one", _icmp4_frame(8), 4, 1, 34, 24, 1500, R.PMTU_ICMP),
    ("no error about an ICMPv6 error", _icmp6_frame(1), 6, 58, 54, 44, 1500, R.PMTU_DROP),
    ("an ICMPv6 echo may get one", _icmp6_frame(128), 6, 58, 54, 44, 1500, R.PMTU_ICMP),
    ("no error toward a multicast source",
     big4(1500, client="224.0.0.5"), 4, 6, 34, 24, 1500, R.PMTU_DROP),
    ("no error toward 0.0.0.0", big4(1500, client="0.0.0.0"), 4, 6, 34, 24, 1500, R.PMTU_DROP),
    ("no error toward ::", big6(1500, client="::"), 6, 6, 54, 44, 1500, R.PMTU_DROP),
    ("IPv4 non-first fragment with DF: no error",
     P.eth(P.ipv4(C4, V4, P.UDP, bytes(1480), df=True, frag_offset=1480)), 4, 17, 0, 24, 1500, R.PMTU_DROP),
    ("truncated header -> EINVAL", big4(1500)[:30], 4, 6, 34, 24, 1500, -errno.EINVAL),
    ("family 5 -> EINVAL", big4(1500), 5, 6, 34, 24, 1500, -errno.EINVAL),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("desc", "frame", "fam", "proto", "l4", "ov", "mtu", "want"), PMTU_CASES,
                         ids=[c[0] for c in PMTU_CASES])
def test_pmtu_check(desc, frame, fam, proto, l4, ov, mtu, want, engine):
    if want < 0:
        with pytest.raises(NativeError) as ei:
            I.pmtu_check(frame, 14, fam, proto, l4, ov, mtu, engine=engine)
        assert ei.value.errno == -want
    else:
        assert I.pmtu_check(frame, 14, fam, proto, l4, ov, mtu, engine=engine) == want


# ---------------------------------------------------------------------- too big build

def expected_too_big4(frame: bytes, mtu: int) -> bytes:
    quote = l3(frame)[: 576 - 28]
    msg = P.icmp4(3, 4, struct.pack("!HH", 0, mtu), quote)
    return P.eth(P.ipv4(V4, C4, P.ICMP, msg, ident=0, df=True), dst=frame[6:12], src=frame[0:6])


def expected_too_big6(frame: bytes, mtu: int) -> bytes:
    quote = l3(frame)[: 1280 - 48]
    msg = P.icmp6(2, 0, struct.pack("!I", mtu), quote, src=V6, dst=C6)
    return P.eth(P.ipv6(V6, C6, P.ICMPV6, msg), dst=frame[6:12], src=frame[0:6])


TOO_BIG_CASES = [
    ("IPv4 full-size, quote cut to 576 total", big4(1500), 4, 1476, expected_too_big4(big4(1500), 1476)),
    ("IPv4 small packet quoted whole", big4(560), 4, 536, expected_too_big4(big4(560), 536)),
    ("IPv6 full-size, quote cut to 1280 total", big6(1500), 6, 1456, expected_too_big6(big6(1500), 1456)),
    ("IPv6 reports MTU below 1280 as computed", big6(1300), 6, 1236, expected_too_big6(big6(1300), 1236)),
    ("IPv4 padding not quoted", big4(100) + bytes(30), 4, 1476, expected_too_big4(big4(100), 1476)),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("desc", "frame", "fam", "mtu", "want"), TOO_BIG_CASES, ids=[c[0] for c in TOO_BIG_CASES])
def test_too_big(desc, frame, fam, mtu, want, engine):
    out = I.too_big(frame, 14, fam, mtu, engine=engine)
    assert out == want
    assert len(out) - 14 <= (576 if fam == 4 else 1280)


@pytest.mark.parametrize("engine", ENGINES)
def test_too_big_keeps_vlan_tags_and_swaps_macs(engine):
    frame = P.tcp_packet(4, 1500, vlans=(7,))
    out = I.too_big(frame, 18, 4, 1476, engine=engine)
    assert out[:6] == frame[6:12] and out[6:12] == frame[:6]
    assert out[12:18] == frame[12:18]  # the 802.1Q tag and the ethertype
    assert out[18:] == expected_too_big4(P.tcp_packet(4, 1500), 1476)[14:]


@pytest.mark.parametrize("engine", ENGINES)
def test_too_big_errors(engine):
    with pytest.raises(NativeError) as ei:
        I.too_big(big4(), 14, 4, 1476, headroom=27, engine=engine)
    assert ei.value.errno == errno.ENOSPC
    assert I.too_big(big4(), 14, 4, 1476, headroom=28, engine=engine)[:6] == big4()[6:12]
    for args in ((big4(), 14, 4, 70000), (big4(), 14, 7, 1000), (big4(), 9, 4, 1000), (big4()[:40], 14, 4, 1000)):
        with pytest.raises(NativeError) as ei:
            I.too_big(*args, engine=engine)
        assert ei.value.errno == errno.EINVAL


def test_c_too_big_sets_generated_flag_and_moves_data_off():
    from maglev.datapath.encap import ScratchPool

    pool = ScratchPool(1)
    pool.put(0, big6(), headroom=100)
    n = lib.mg_icmp_too_big(pool.buf, 0, 14, 6, 1456)
    m = pool.meta(0)
    assert n == m.len == 14 + 1280 and m.data_off == 52
    assert m.flags & lib.MG_FRAME_F_GENERATED


def test_tshark_validates_generated_errors(tmp_path):
    if reason := P.why_no_tshark():
        pytest.skip(reason)
    frames = [
        I.too_big(big4(), 14, 4, 1476),
        I.too_big(big6(), 14, 6, 1456),
        I.too_big(P.tcp_packet(4, 300, vlans=(9,)), 18, 4, 1476),
        I.too_big(big6(600), 14, 6, 1436),
    ]
    names = ["ip.checksum.status", "icmp.checksum.status", "icmpv6.checksum.status", "icmp.type",
             "icmp.code", "icmp.mtu", "icmpv6.type", "icmpv6.mtu", "ip.src", "ipv6.src", "ip.dst",
             "ipv6.dst", "_ws.malformed"]
    rows = P.tshark_fields(tmp_path, frames, names)
    for fam, mtu, row in ((4, 1476, rows[0]), (6, 1456, rows[1]), (4, 1476, rows[2]), (6, 1436, rows[3])):
        assert not row["_ws.malformed"], row
        if fam == 4:
            assert row["ip.checksum.status"][0] == P.TSHARK_GOOD, row
            assert row["icmp.checksum.status"] == [P.TSHARK_GOOD], row
            assert (row["icmp.type"], row["icmp.code"], row["icmp.mtu"]) == (["3"], ["4"], [str(mtu)]), row
            assert row["ip.src"][:2] == [V4, C4] and row["ip.dst"][:2] == [C4, V4], row
        else:
            assert row["icmpv6.checksum.status"] == [P.TSHARK_GOOD], row
            assert (row["icmpv6.type"], row["icmpv6.mtu"]) == (["2"], [str(mtu)]), row
            assert row["ipv6.src"][:2] == [V6, C6], row


# --------------------------------------------------------------- inbound ICMP errors

def reply4(sport=80, dport=40000, proto=P.TCP, **kw):
    """A backend's DSR reply VIP -> client, as a router would quote it."""
    seg = P.tcp(sport, dport, b"data", src=V4, dst=C4) if proto == P.TCP else P.udp(sport, dport, b"d", src=V4, dst=C4)
    return P.ipv4(V4, C4, proto, seg, **kw)


def reply6(sport=443, dport=50000, chain=b"", nh=P.TCP):
    seg = P.tcp(sport, dport, b"data", src=V6, dst=C6)
    return P.ipv6(V6, C6, nh, chain + seg)


def err4(quote, typ=3, code=1, router="198.18.5.1"):
    return P.eth(P.ipv4(router, V4, P.ICMP, P.icmp4(typ, code, payload=quote)))


def err6(quote, typ=1, code=0, router="2001:db8:5::1"):
    return P.eth(P.ipv6(router, V6, P.ICMPV6, P.icmp6(typ, code, payload=quote, src=router, dst=V6)))


def key(src, dst, sport, dport, proto, fam):
    return P.addr(src).ljust(16, b"\0") + P.addr(dst).ljust(16, b"\0") + struct.pack("!HHBBxx", sport, dport, proto, fam)


QUOTE_CASES = [
    # description, frame, family, expected (kind, key) or -errno
    ("unreachable quoting a TCP reply", err4(reply4()), 4, (0, key(C4, V4, 40000, 80, 6, 4))),
    ("time exceeded, quote of 28 bytes (RFC 792 minimum)", err4(reply4()[:28], typ=11, code=0), 4,
     (0, key(C4, V4, 40000, 80, 6, 4))),
    ("parameter problem quoting UDP", err4(reply4(53, 5353, P.UDP), typ=12, code=0), 4,
     (0, key(C4, V4, 5353, 53, 17, 4))),
    ("quote of a non-first fragment -> 3-tuple", err4(reply4(df=False, frag_offset=8)), 4,
     (1, key(C4, V4, 0, 0, 6, 4))),
    ("quote with IPv4 options", err4(reply4(options=b"\x01\x01\x01\x00")), 4, (0, key(C4, V4, 40000, 80, 6, 4))),
    ("quote cut inside the ports", err4(reply4()[:22]), 4, -errno.EBADMSG),
    ("quote cut inside the IP header", err4(reply4()[:19]), 4, -errno.EBADMSG),
    ("quote is IPv6 inside ICMPv4", err4(reply6()), 4, -errno.EBADMSG),
    ("echo request is not an error", err4(b"", typ=8, code=0), 4, -errno.ENOMSG),
    ("redirect is not handled", err4(reply4(), typ=5, code=0), 4, -errno.ENOMSG),
    ("ICMPv6 packet too big", err6(reply6(), typ=2), 6, (0, key(C6, V6, 50000, 443, 6, 6))),
    ("ICMPv6 quote with HBH + dstopts", err6(reply6(chain=P.ext(P.DSTOPTS) + P.ext(P.TCP), nh=P.HOPOPTS)), 6,
     (0, key(C6, V6, 50000, 443, 6, 6))),
    ("ICMPv6 quote, first fragment has ports", err6(reply6(chain=P.frag6(P.TCP, 9, 0, True), nh=P.FRAGMENT)), 6,
     (0, key(C6, V6, 50000, 443, 6, 6))),
    ("ICMPv6 quote, non-first fragment", err6(P.ipv6(V6, C6, P.FRAGMENT, P.frag6(P.UDP, 9, 1232) + bytes(16))), 6,
     (1, key(C6, V6, 0, 0, 17, 6))),
    ("ICMPv6 quote, extension chain cut", err6(reply6(chain=P.ext(P.TCP, bytes(30)), nh=P.HOPOPTS)[:60]), 6,
     -errno.EBADMSG),
    ("ICMPv6 echo reply is not an error", err6(b"", typ=129), 6, -errno.ENOMSG),
    ("ICMPv6 quote shorter than an IPv6 header", err6(reply6()[:39]), 6, -errno.EBADMSG),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("desc", "frame", "fam", "want"), QUOTE_CASES, ids=[c[0] for c in QUOTE_CASES])
def test_quoted_flow(desc, frame, fam, want, engine):
    l4 = 14 + (20 if fam == 4 else 40)
    if isinstance(want, int):
        with pytest.raises(NativeError) as ei:
            I.quoted_flow(frame, 14, fam, l4, engine=engine)
        assert ei.value.errno == -want
    else:
        assert I.quoted_flow(frame, 14, fam, l4, engine=engine) == want


@pytest.mark.parametrize("engine", ENGINES)
def test_quoted_flow_ignores_padding_and_rejects_bad_offsets(engine):
    frame = err4(reply4()[:22]) + bytes(20)  # quote cut inside the ports, then padding
    with pytest.raises(NativeError) as ei:
        I.quoted_flow(frame, 14, 4, 34, engine=engine)
    assert ei.value.errno == errno.EBADMSG  # padding must not be read as quoted ports
    for l4 in (10, len(frame)):
        with pytest.raises(NativeError):
            I.quoted_flow(err4(reply4()), 14, 4, l4, engine=engine)


# ----------------------------------------------------------------------- rate limit

def test_rate_limit_burst_then_rate_and_c_equals_python():
    c = I.RateLimit(1000, 5, now_ns=0)
    r = R.RateLimit(1000, 5, now_ns=0)
    times = [0] * 7 + [500_000, 1_000_000, 1_000_001, 3_000_000, 2_000_000, 10**12, 10**12]
    got_c = [c.take(t) for t in times]
    got_r = [r.take(t) for t in times]
    assert got_c == got_r
    assert got_c[:7] == [True] * 5 + [False] * 2  # burst of 5
    assert got_c[7:10] == [False, True, False]  # one token per ms
    assert got_c[10:12] == [True, True]  # 2 ms earned two tokens; going back in time adds none
    assert got_c[12:] == [True, True]  # refilled, capped at the burst
    assert sum(got_c) == 10
    with pytest.raises(NativeError):
        I.RateLimit(0, 5)
    with pytest.raises(NativeError):
        R.RateLimit(10, 0)


def test_constants_match():
    assert (R.PMTU_FITS, R.PMTU_ICMP, R.PMTU_FRAGMENT, R.PMTU_DROP) == (I.PMTU_FITS, I.PMTU_ICMP, I.PMTU_FRAGMENT, I.PMTU_DROP)
    assert (R.ICMP4_ERROR_MAX, R.ICMP6_ERROR_MAX) == (lib.MG_ICMP4_ERROR_MAX, lib.MG_ICMP6_ERROR_MAX)
    assert (R.RATE_PER_S, R.BURST) == (lib.MG_ICMP_RATE_PER_S, lib.MG_ICMP_BURST)


# --------------------------------------------------------------------- differential

def _call(fn, *args):
    try:
        return fn(*args)
    except NativeError as exc:
        return ("err", exc.errno)


@st.composite
def mutated(draw, frames):
    frame = draw(st.sampled_from(frames))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(frame) - 1))
        frame = frame[:i] + bytes([draw(st.integers(0, 255))]) + frame[i + 1:]
    if draw(st.booleans()):
        frame = frame[: draw(st.integers(0, len(frame)))]
    return frame


SEEDS = [big4(), big4(300, df=False), big6(), big6(200), _icmp4_frame(8), _frag6_nonfirst()] + [
    c[1] for c in QUOTE_CASES]


@settings(max_examples=300, deadline=None)
@given(mutated(SEEDS), st.integers(0, 60), st.sampled_from([4, 6, 0]), st.integers(0, 255),
       st.integers(0, 80), st.integers(0, 100), st.integers(500, 1600))
def test_pmtu_check_c_equals_python(frame, l3, fam, proto, l4, ov, mtu):
    assert _call(I.pmtu_check, frame, l3, fam, proto, l4, ov, mtu, "c") == _call(
        I.pmtu_check, frame, l3, fam, proto, l4, ov, mtu, "python")


@settings(max_examples=300, deadline=None)
@given(mutated(SEEDS), st.sampled_from([0, 14, 14, 18, 13]), st.sampled_from([4, 6]),
       st.integers(0, 70000), st.integers(0, 192))
def test_too_big_c_equals_python(frame, l3, fam, mtu, headroom):
    assert _call(I.too_big, frame, l3, fam, mtu, headroom, "c") == _call(
        I.too_big, frame, l3, fam, mtu, headroom, "python")


@settings(max_examples=400, deadline=None)
@given(mutated(SEEDS), st.sampled_from([4, 6]), st.integers(0, 70))
def test_quoted_flow_c_equals_python(frame, fam, l4):
    assert _call(I.quoted_flow, frame, 14, fam, l4, "c") == _call(I.quoted_flow, frame, 14, fam, l4, "python")
