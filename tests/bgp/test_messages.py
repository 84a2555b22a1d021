"""BGP wire messages: golden bytes, round trips, malformed input -> the right NOTIFICATION."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maglev.bgp import messages as m
from maglev.bgp.messages import Notify

H = b"\xff" * 16


def hdr(length: int, msg_type: int) -> bytes:
    return H + struct.pack("!HB", length, msg_type)


# ----------------------------------------------------------------------------- golden bytes

# OPEN from AS 64513 (0xfc01), hold 90 (0x5a), id 198.18.0.2 (c6 12 00 02), four
# capabilities, one per optional parameter (type 2):
#   MP IPv4 unicast  01 04 0001 00 01
#   MP IPv6 unicast  01 04 0002 00 01
#   route refresh    02 00
#   4-octet AS       41 04 0000fc01
# parameters = 8 + 8 + 4 + 8 = 28 (0x1c); body = 10 + 28 = 38; total = 57 (0x39).
OPEN_GOLDEN = (
    hdr(57, 1)
    + bytes.fromhex("04 fc01 005a c6120002 1c")
    + bytes.fromhex("0206 01040001 0001")
    + bytes.fromhex("0206 01040002 0001")
    + bytes.fromhex("0202 0200")
    + bytes.fromhex("0206 4104 0000fc01")
)

# UPDATE announcing 203.0.113.10/32 over eBGP from AS 64513, next hop 198.18.0.2:
#   withdrawn length 0000
#   attributes length 0x14 = 20:
#     ORIGIN    40 01 01 00             (well-known transitive, IGP)
#     AS_PATH   40 02 06 02 01 0000fc01 (one AS_SEQUENCE of one 4-octet ASN)
#     NEXT_HOP  40 03 04 c6120002
#   NLRI 20 cb00710a (/32)
# body = 2 + 2 + 20 + 5 = 29; total = 48 (0x30).
UPDATE4_GOLDEN = hdr(48, 2) + bytes.fromhex(
    "0000 0014 40010100 400206020100 00fc01 400304c6120002 20cb00710a"
)

# UPDATE announcing 2001:db8:100::10/128 with MP_REACH_NLRI (RFC 4760):
#   ORIGIN (4) + AS_PATH (9) + MP_REACH 80 0e 26: AFI 0002 SAFI 01, next hop length 0x10,
#   2001:db8:18::2, reserved 00, NLRI 0x80 (/128) + 16 octets = 38 (0x26) octets of value.
# attributes = 4 + 9 + 41 = 54 (0x36); total = 19 + 4 + 54 = 77 (0x4d).
UPDATE6_GOLDEN = hdr(77, 2) + bytes.fromhex(
    "0000 0036 40010100 400206020100 00fc01"
    "800e26 0002 01 10 20010db8001800000000000000000002 00 80 20010db8010000000000000000000010"
)

# Withdraw 203.0.113.10/32: withdrawn length 5, the prefix, attributes length 0.
WITHDRAW4_GOLDEN = hdr(28, 2) + bytes.fromhex("0005 20cb00710a 0000")
# Withdraw 2001:db8:100::10/128: MP_UNREACH 80 0f 14: AFI 0002 SAFI 01 + /128 (17 octets).
WITHDRAW6_GOLDEN = hdr(19 + 4 + 23, 2) + bytes.fromhex("0000 0017 800f14 0002 01 80 20010db8010000000000000000000010")

VIP4 = ipaddress.ip_network("203.0.113.10/32")
VIP6 = ipaddress.ip_network("2001:db8:100::10/128")


def test_keepalive_golden():
    assert bytes(m.Keepalive()) == H + b"\x00\x13\x04"
    assert m.parse_message(H + b"\x00\x13\x04") == m.Keepalive()


def test_notification_golden():
    raw = H + b"\x00\x15\x03\x06\x02"
    assert bytes(m.Notification(6, 2)) == raw
    n = m.parse_message(raw)
    assert n == m.Notification(6, 2, b"")
    assert str(n) == "Cease (6/2)"


def test_notification_shutdown_communication_is_readable():
    n = m.Notification(6, 2, b"\x05bye!!")
    assert str(n) == 'Cease (6/2): "bye!!"'


def test_open_golden():
    o = m.Open.build(64513, 90, "198.18.0.2", (m.IPV4_UNICAST, m.IPV6_UNICAST))
    assert bytes(o) == OPEN_GOLDEN
    p = m.Open.parse(OPEN_GOLDEN)
    assert p == o
    assert p.asn4 == 64513 and p.families == {m.IPV4_UNICAST, m.IPV6_UNICAST}
    assert p.has(m.CAP_ROUTE_REFRESH)


def test_open_four_octet_asn_uses_as_trans():
    o = m.Open.build(4200000001, 9, "198.18.0.2")
    raw = bytes(o)
    assert raw[20:22] == struct.pack("!H", m.AS_TRANS)  # My AS = 23456 (RFC 6793)
    assert m.Open.parse(raw).asn == 4200000001


def test_open_without_mp_capability_implies_ipv4_unicast():
    raw = bytes(m.Open(64512, 90, "198.18.0.1", ()))
    o = m.Open.parse(raw)
    assert o.families == {m.IPV4_UNICAST} and o.asn4 is None and o.asn == 64512


def test_open_with_several_capabilities_in_one_parameter():
    # BIRD packs every capability into one optional parameter; RFC 5492 allows both.
    caps = bytes.fromhex("01040001 0001 0200 41040000fc00")
    body = bytes.fromhex("04 fc00 005a c6120001") + bytes([len(caps) + 2]) + b"\x02" + bytes([len(caps)]) + caps
    o = m.Open.parse(hdr(19 + len(body), 1) + body)
    assert o.asn == 64512 and o.families == {m.IPV4_UNICAST} and o.has(m.CAP_ROUTE_REFRESH)


def test_open_rfc9072_extended_parameters_are_accepted():
    # The same capabilities as OPEN_GOLDEN in the RFC 9072 layout: Non-Ext OP Len 255,
    # Non-Ext OP Type 255, Extended Opt. Parm. Length 2 octets, then each parameter with
    # a 2-octet length:  02 0006 <cap>  02 0006 <cap>  02 0002 <cap>  02 0006 <cap>
    params = (
        bytes.fromhex("02 0006 01040001 0001")
        + bytes.fromhex("02 0006 01040002 0001")
        + bytes.fromhex("02 0002 0200")
        + bytes.fromhex("02 0006 4104 0000fc01")
    )
    body = bytes.fromhex("04 fc01 005a c6120002 ff ff") + struct.pack("!H", len(params)) + params
    p = m.Open.parse(hdr(19 + len(body), 1) + body)
    assert p == m.Open.parse(OPEN_GOLDEN)
    # Re-encoded in the classic layout: it fits in 255 octets.
    assert bytes(p) == OPEN_GOLDEN


def test_open_parameters_over_255_octets_are_sent_extended():
    # 40 multiprotocol capabilities: 40 * (2 + 6) = 320 octets of parameters.
    fams = tuple((1, s) for s in range(1, 41))
    o = m.Open.build(64513, 90, "198.18.0.2", fams)
    raw = bytes(o)
    assert raw[28] == 255 and raw[29] == 255  # Non-Ext OP Len, Non-Ext OP Type
    ext_len = struct.unpack_from("!H", raw, 30)[0]
    assert ext_len == len(raw) - 32
    assert raw[32] == 2 and struct.unpack_from("!H", raw, 33)[0] == 6  # first parameter: capabilities, 2-octet length
    back = m.Open.parse(raw)
    assert back == o and back.families == frozenset(fams)


def test_graceful_restart_capability():
    o = m.Open.build(64513, 90, "198.18.0.2", (m.IPV4_UNICAST, m.IPV6_UNICAST), restart_time=120, restarting=True)
    cap = next(c for c in o.capabilities if c.code == m.CAP_GRACEFUL_RESTART)
    # R bit + 120 s = 0x8078; then AFI 1 SAFI 1 F bit, AFI 2 SAFI 1 F bit.
    assert cap.value == bytes.fromhex("8078 0001 01 80 0002 01 80")
    back = m.Open.parse(bytes(o))
    assert back.graceful_restart == (m.GR_RESTARTING, 120, {m.IPV4_UNICAST: 0x80, m.IPV6_UNICAST: 0x80})
    assert m.Open.parse(OPEN_GOLDEN).graceful_restart is None
    with pytest.raises(ValueError):
        m.Capability.graceful_restart(4096, ())


def test_update_ipv4_golden():
    (u,) = m.build_announce([VIP4], local_asn=64513, ebgp=True, asn4=True, next_hop="198.18.0.2")
    assert bytes(u) == UPDATE4_GOLDEN
    p = m.Update.parse(UPDATE4_GOLDEN)
    assert p == u and p.announced() == (VIP4,)


def test_update_ipv6_golden():
    (u,) = m.build_announce([VIP6], local_asn=64513, ebgp=True, asn4=True, next_hop="2001:db8:18::2")
    assert bytes(u) == UPDATE6_GOLDEN
    p = m.Update.parse(UPDATE6_GOLDEN)
    assert p == u and p.announced() == (VIP6,)
    assert p.get(m.A_MP_REACH).next_hops == ("2001:db8:18::2",)


def test_withdraw_golden():
    assert [bytes(u) for u in m.build_withdraw([VIP4])] == [WITHDRAW4_GOLDEN]
    assert [bytes(u) for u in m.build_withdraw([VIP6])] == [WITHDRAW6_GOLDEN]
    assert m.Update.parse(WITHDRAW4_GOLDEN).withdrawn_all() == (VIP4,)
    assert m.Update.parse(WITHDRAW6_GOLDEN).withdrawn_all() == (VIP6,)


def test_ibgp_announce_has_empty_as_path_and_local_pref():
    (u,) = m.build_announce([VIP4], local_asn=64513, ebgp=False, asn4=True, next_hop="198.18.0.2")
    assert u.get(m.A_AS_PATH) == m.AsPath((), True)
    assert u.get(m.A_LOCAL_PREF) == m.LocalPref(100)


def test_two_octet_peer_gets_as_trans_and_as4_path():
    (u,) = m.build_announce([VIP4], local_asn=4200000001, ebgp=True, asn4=False, next_hop="198.18.0.2")
    assert u.get(m.A_AS_PATH) == m.AsPath(((m.AS_SEQUENCE, (m.AS_TRANS,)),), asn4=False)
    assert u.get(m.A_AS4_PATH) == m.As4Path(((m.AS_SEQUENCE, (4200000001,)),))
    raw = bytes(u)
    assert m.Update.parse(raw, asn4=False) == u
    # Attribute type codes go out in ascending order (RFC 4271 5).
    codes = [a.TYPE for a in u.attributes]
    assert codes == sorted(codes)


def test_many_prefixes_split_below_4096_octets():
    nets = [ipaddress.ip_network(f"2001:db8:100::{i:x}/128") for i in range(1, 1001)]
    ups = m.build_announce(nets, local_asn=64513, ebgp=True, asn4=True, next_hop="2001:db8:18::2")
    assert all(len(bytes(u)) <= 4096 for u in ups)
    assert [p for u in ups for p in m.Update.parse(bytes(u)).announced()] == nets
    nets4 = [ipaddress.ip_network(f"203.0.113.{i}/32") for i in range(256)]
    wd = m.build_withdraw(nets4)
    assert [p for u in wd for p in m.Update.parse(bytes(u)).withdrawn_all()] == nets4


def test_route_refresh_round_trip():
    rr = m.RouteRefresh(m.AFI_IPV6, m.SAFI_UNICAST)
    assert bytes(rr) == hdr(23, 5) + bytes.fromhex("0002 00 01")
    assert m.parse_message(bytes(rr)) == rr


def test_end_of_rib():
    assert m.Update.parse(hdr(23, 2) + b"\x00\x00\x00\x00").is_end_of_rib
    assert not m.Update.parse(UPDATE4_GOLDEN).is_end_of_rib


def test_unknown_optional_attributes_are_kept_verbatim():
    # COMMUNITIES (8, optional transitive) and a LARGE_COMMUNITY (32) with the extended
    # length bit set although the value is short: both must re-encode byte for byte.
    extra = bytes.fromhex("c0 08 04 fde80001") + bytes.fromhex("d0 20 000c") + bytes(range(12))
    body = UPDATE4_GOLDEN[19:]
    attrs_len = struct.unpack_from("!H", body, 2)[0]
    attrs = body[4 : 4 + attrs_len] + extra
    nb = b"\x00\x00" + struct.pack("!H", len(attrs)) + attrs + body[4 + attrs_len :]
    raw = hdr(19 + len(nb), 2) + nb
    u = m.Update.parse(raw)
    assert bytes(u) == raw
    assert u.get(8) == m.Unknown(8, 0xC0, bytes.fromhex("fde80001"))


# ----------------------------------------------------------------------------- malformed input


def update(attrs: bytes, nlri: bytes = b"\x20\xcb\x00\x71\x0a", withdrawn: bytes = b"") -> bytes:
    body = struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri
    return hdr(19 + len(body), 2) + body


ORIGIN = bytes.fromhex("40010100")
ASPATH = bytes.fromhex("400206020100 00fc01")
NEXTHOP = bytes.fromhex("400304c6120002")
GOOD_OPEN_BODY = OPEN_GOLDEN[19:]


def open_with(**kw) -> bytes:
    version = kw.get("version", 4)
    my_as = kw.get("my_as", 64513)
    hold = kw.get("hold", 90)
    rid = kw.get("rid", bytes.fromhex("c6120002"))
    params = kw.get("params", GOOD_OPEN_BODY[10:])
    plen = kw.get("plen", len(params))
    body = struct.pack("!BHH4sB", version, my_as, hold, rid, plen) + params
    return hdr(19 + len(body), 1) + body


MALFORMED = [
    # (description, bytes, code, subcode, data or None = do not check)
    ("marker not all ones", b"\xfe" + H[1:] + b"\x00\x13\x04", 1, 1, b""),
    ("length below 19", H + b"\x00\x12\x04", 1, 2, b"\x00\x12"),
    ("length above 4096", H + b"\x10\x01\x02", 1, 2, b"\x10\x01"),
    ("keepalive with a body", H + b"\x00\x14\x04\x00", 1, 2, b"\x00\x14"),
    ("open shorter than 29", hdr(28, 1) + bytes(9), 1, 2, b"\x00\x1c"),
    ("notification shorter than 21", hdr(20, 3) + b"\x06", 1, 2, b"\x00\x14"),
    ("unknown message type 9", hdr(19, 9), 1, 3, b"\x09"),
    ("message type 0", hdr(19, 0), 1, 3, b"\x00"),
    ("header length disagrees with the data", hdr(30, 4) + bytes(11), 1, 2, None),
    ("BGP version 3", open_with(version=3), 2, 1, b"\x00\x04"),
    ("hold time 1", open_with(hold=1), 2, 6, b""),
    ("hold time 2", open_with(hold=2), 2, 6, b""),
    ("BGP identifier 0.0.0.0", open_with(rid=bytes(4)), 2, 3, b""),
    ("optional parameter type 1 (authentication, deprecated)", open_with(params=b"\x01\x02\x00\x00"), 2, 4, b""),
    ("optional parameters length disagrees", open_with(plen=40), 2, 0, b""),
    ("capability overruns its parameter", open_with(params=b"\x02\x03\x41\x04\x00"), 2, 0, b""),
    ("4-octet AS capability of 2 octets", open_with(params=b"\x02\x04\x41\x02\x00\x01"), 2, 0, b""),
    ("peer AS 0 (RFC 7607)", open_with(my_as=0, params=b""), 2, 2, b""),
    ("RFC 9072 extended parameters length disagrees", open_with(plen=255, params=b"\xff\x00\x09" + bytes(4)), 2, 0, b""),
    ("RFC 9072 extended parameters length truncated", open_with(plen=255, params=b"\xff\x00"), 2, 0, b""),
    ("RFC 9072 extended parameter overruns", open_with(plen=255, params=b"\xff\x00\x04\x02\x00\x09\x00"), 2, 0, b""),
    ("withdrawn routes length overruns the message", hdr(23, 2)[:16] + struct.pack("!HB", 24, 2) + b"\x00\x09\x00\x00\x00", 3, 1, b""),
    ("attribute list length overruns", hdr(25, 2) + b"\x00\x00\x00\x10\x40\x01", 3, 1, b""),
    ("MP_REACH_NLRI twice", update(ORIGIN + ASPATH + bytes.fromhex("800e09 0001 01 04 c6120002 00") * 2, b""), 3, 1, b""),
    ("MP_UNREACH_NLRI twice", update(bytes.fromhex("800f03 0001 01") * 2, b""), 3, 1, b""),
    ("unrecognised well-known attribute 99", update(ORIGIN + ASPATH + NEXTHOP + bytes.fromhex("406301ff")), 3, 2, bytes.fromhex("406301ff")),
    ("NLRI prefix length 33", update(ORIGIN + ASPATH + NEXTHOP, nlri=b"\x21" + bytes(5)), 3, 10, b""),
    ("NLRI prefix overruns", update(ORIGIN + ASPATH + NEXTHOP, nlri=b"\x20\xcb\x00"), 3, 10, b""),
    ("NLRI host bits set", update(ORIGIN + ASPATH + NEXTHOP, nlri=b"\x18\xcb\x00\x71\x0a"), 3, 10, b""),
    ("MP_REACH IPv6 next hop of 4 octets, no NLRI", update(ASPATH + bytes.fromhex("800e09 0002 01 04 c6120002 00"), b""), 3, 9, b""),
    (
        "MP_REACH IPv6 next hop of 4 octets",
        update(ORIGIN + ASPATH + bytes.fromhex("800e0f 0002 01 04 c6120002 00 40 20010db800000000"), b""),
        3, 9, b"",
    ),
    (
        "MP_REACH prefix length 129",
        update(ORIGIN + ASPATH + bytes.fromhex("800e16 0002 01 10 20010db8001800000000000000000002 00 81"), b""),
        3, 9, b"",
    ),
    ("MP_UNREACH of 2 octets", update(bytes.fromhex("800f020002"), b""), 3, 9, b""),
    ("route refresh of 3 octets", hdr(22, 5) + b"\x00\x01\x00", 1, 2, b"\x00\x16"),
]


@pytest.mark.parametrize(("raw", "code", "subcode", "data"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_input_gets_the_right_notification(raw, code, subcode, data):
    with pytest.raises(Notify) as info:
        m.parse_message(raw)
    exc = info.value
    assert (exc.code, exc.subcode) == (code, subcode), str(exc)
    if data is not None:
        assert exc.data == data
    # And the NOTIFICATION it turns into is itself a valid message.
    n = exc.notification()
    assert m.parse_message(bytes(n)) == n


def test_mp_reach_missing_origin_reports_missing_well_known():
    raw = update(ASPATH + bytes.fromhex("800e26 0002 01 10 20010db8001800000000000000000002 00 80") + bytes(16), b"")
    u = m.parse_message(raw)
    assert isinstance(u, m.Update) and u.treat_as_withdraw  # RFC 7606 3(d)
    assert [e.key for e in u.errors] == ["ORIGIN/missing/treat-as-withdraw"]
    assert u.announced() == () and u.withdrawn_all() == (ipaddress.ip_network("::/128"),)


def test_unknown_afi_in_mp_reach_is_kept_opaque():
    # AFI 25 (L2VPN) SAFI 70 (EVPN): never negotiated; keep it raw instead of guessing.
    attr = bytes.fromhex("800e07 0019 46 00 00 0102")
    u = m.Update.parse(update(ORIGIN + ASPATH + attr, b""))
    assert u.get(m.A_MP_REACH) == m.Unknown(14, 0x80, bytes.fromhex("0019460000 0102"))


def test_two_octet_as_path_parses_with_asn4_false():
    raw = update(ORIGIN + bytes.fromhex("400204 0201 fc01") + NEXTHOP)
    u = m.Update.parse(raw, asn4=False)
    assert u.get(m.A_AS_PATH) == m.AsPath(((m.AS_SEQUENCE, (64513,)),), asn4=False)
    assert bytes(u) == raw
    # The same bytes read as 4-octet ASNs overrun: a malformed AS_PATH, which costs the
    # routes of this UPDATE (treat-as-withdraw, RFC 7606 7.2), not the session.
    u4 = m.Update.parse(raw, asn4=True)
    assert u4.treat_as_withdraw and u4.announced() == ()
    assert [e.key for e in u4.errors] == ["AS_PATH/value/treat-as-withdraw"]


# ----------------------------------------------------------------------------- properties

asns = st.integers(1, 2**32 - 1)
ipv4 = st.integers(1, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i)))
unicast4 = st.integers(0x01000000, 0xDFFFFFFF).map(lambda i: str(ipaddress.IPv4Address(i)))


@st.composite
def nets(draw, version: int = 4):
    width = 32 if version == 4 else 128
    n = draw(st.integers(0, width))
    addr = draw(st.integers(0, 2**width - 1)) >> (width - n) << (width - n) if n else 0
    return ipaddress.ip_network((addr, n)) if version == 4 else ipaddress.IPv6Network((addr, n))


@st.composite
def opens(draw):
    asn = draw(asns)
    fams = draw(st.lists(st.sampled_from([m.IPV4_UNICAST, m.IPV6_UNICAST, (1, 2), (2, 4)]), unique=True, max_size=4))
    extra = draw(
        st.lists(
            st.builds(m.Capability, st.integers(0, 255).filter(lambda c: c != m.CAP_FOUR_OCTET_AS), st.binary(max_size=12)),
            max_size=5,
        )
    )
    o = m.Open.build(asn, draw(st.sampled_from([0, 3, 9, 90, 65535])), draw(ipv4), tuple(fams))
    return m.Open(o.asn, o.hold_time, o.router_id, o.capabilities + tuple(extra))


@st.composite
def updates(draw):
    asn4 = draw(st.booleans())
    seg_asn = st.integers(1, 2**32 - 1 if asn4 else 2**16 - 1)  # AS 0 is malformed (RFC 7607)
    segs = draw(
        st.lists(
            st.tuples(st.sampled_from([1, 2, 3, 4]), st.lists(seg_asn, min_size=1, max_size=8).map(tuple)), max_size=3
        )
    )
    attrs: list = [m.Origin(draw(st.integers(0, 2))), m.AsPath(tuple(segs), asn4)]
    nlri = tuple(draw(st.lists(nets(4), max_size=6)))
    if nlri or draw(st.booleans()):
        attrs.append(m.NextHop(draw(unicast4)))
    if draw(st.booleans()):
        attrs.append(m.Med(draw(st.integers(0, 2**32 - 1))))
    if draw(st.booleans()):
        attrs.append(m.LocalPref(draw(st.integers(0, 2**32 - 1))))
    if draw(st.booleans()):
        attrs.append(m.AtomicAggregate())
    if draw(st.booleans()):
        attrs.append(m.Aggregator(draw(seg_asn), draw(ipv4), asn4))
    if draw(st.booleans()):
        hops = draw(st.sampled_from([("2001:db8:18::2",), ("2001:db8:18::2", "fe80::1")]))
        attrs.append(m.MpReach(2, 1, hops, tuple(draw(st.lists(nets(6), max_size=5)))))
    if draw(st.booleans()):
        attrs.append(m.MpUnreach(2, 1, tuple(draw(st.lists(nets(6), max_size=5)))))
    for code in draw(st.lists(st.sampled_from([8, 16, 32, 99, 200]), unique=True, max_size=3)):
        if code in (8, 16, 32):  # communities: recognised, so a valid length and flags
            size = {8: 4, 16: 8, 32: 12}[code]
            value = draw(st.binary(min_size=size, max_size=size * 30).filter(lambda v, n=size: len(v) % n == 0))
            flags = draw(st.sampled_from([0xC0, 0xE0]))
        else:
            value = draw(st.binary(max_size=300))
            flags = draw(st.sampled_from([0x80, 0xC0, 0xE0]))
        flags |= 0x10 if len(value) > 255 or draw(st.booleans()) else 0
        attrs.append(m.Unknown(code, flags, value))
    attrs = draw(st.permutations(attrs))
    withdrawn = tuple(draw(st.lists(nets(4), max_size=6)))
    return m.Update(withdrawn, tuple(attrs), nlri), asn4


@given(opens())
def test_open_round_trip(o):
    raw = bytes(o)
    p = m.Open.parse(raw)
    assert p == o and bytes(p) == raw


@given(updates())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_update_round_trip(case):
    u, asn4 = case
    raw = bytes(u)
    p = m.Update.parse(raw, asn4, ebgp=False)  # iBGP: LOCAL_PREF and confederation segments are kept
    assert p == u and bytes(p) == raw


@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=100))
def test_notification_round_trip(code, subcode, data):
    n = m.Notification(code, subcode, data)
    assert m.parse_message(bytes(n)) == n


@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_never_crash(data, asn4):
    try:
        m.parse_message(data, asn4)
    except Notify:
        pass


@given(st.sampled_from([1, 2, 3, 4, 5]), st.binary(max_size=300), st.booleans())
def test_random_bodies_behind_a_valid_header_never_crash(msg_type, body, asn4):
    raw = hdr(19 + len(body), msg_type) + body
    try:
        msg = m.parse_message(raw, asn4)
    except Notify as exc:
        assert 1 <= exc.code <= 6
    else:
        assert type(msg).TYPE == msg_type


@given(
    st.sampled_from([OPEN_GOLDEN, UPDATE4_GOLDEN, UPDATE6_GOLDEN, WITHDRAW6_GOLDEN]),
    st.lists(st.tuples(st.integers(19, 76), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_valid_messages_never_crash(raw, edits):
    b = bytearray(raw)
    for pos, val in edits:
        if pos < len(b):
            b[pos] = val
    try:
        m.parse_message(bytes(b))
    except Notify:
        pass
