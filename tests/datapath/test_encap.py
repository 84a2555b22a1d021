"""Encapsulation: table-driven fixtures (expected bytes built independently with
maglev.testing.packets), C vs Python differential tests, and tshark decoding with
checksum validation."""

from __future__ import annotations

import dataclasses
import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maglev import config as mconfig
from maglev.datapath import encap as E
from maglev.datapath import ref_encap as R
from maglev.errors import ConfigError, NativeError
from maglev.native import lib
from maglev.testing import packets as P

SRC4, DST4 = "198.18.0.1", "198.18.1.2"
SRC6, DST6 = "2001:db8:ff::1", "2001:db8:ff::2"
OUR_MAC, HOP_MAC = "02:00:00:00:aa:01", "02:00:00:00:bb:02"
IN_SRC_MAC, IN_DST_MAC = "02:00:00:00:cc:03", "02:00:00:00:dd:04"
HASH = 0xDEADBEEF
VNI = 0x123456


def params(type_: int, fam: int = 4, **kw) -> R.EncapParams:
    base = dict(
        type=type_,
        outer_family=fam,
        src=P.addr(SRC4 if fam == 4 else SRC6),
        dst=P.addr(DST4 if fam == 4 else DST6),
        eth_src=P.mac(OUR_MAC),
        eth_dst=P.mac(HOP_MAC),
        inner_eth_src=P.mac(IN_SRC_MAC),
        inner_eth_dst=P.mac(IN_DST_MAC),
        vni=VNI,
    )
    base.update(kw)
    return R.EncapParams(**base)


def l3_of(frame: bytes) -> bytes:
    """The L3 packet of an Ethernet frame without padding."""
    off = P.l3_offset(frame)
    if frame[off] >> 4 == 4:
        return frame[off : off + struct.unpack_from("!H", frame, off + 2)[0]]
    return frame[off : off + 40 + struct.unpack_from("!H", frame, off + 4)[0]]


def outer(fam: int, proto: int, payload: bytes, inner: bytes) -> bytes:
    """Expected outer Ethernet + IP, built with the independent packet builder."""
    if fam == 4:
        if inner[0] >> 4 == 4:
            ident, df, tos = struct.unpack_from("!H", inner, 4)[0], bool(inner[6] & 0x40), inner[1]
        else:
            ident, df, tos = 0, True, ((inner[0] & 0xF) << 4) | (inner[1] >> 4)
        ip = P.ipv4(SRC4, DST4, proto, payload, ident=ident, df=df, tos=tos)
    else:
        tos = inner[1] if inner[0] >> 4 == 4 else ((inner[0] & 0xF) << 4) | (inner[1] >> 4)
        ip = P.ipv6(SRC6, DST6, proto, payload, tc=tos, flow=HASH & 0xFFFFF)
    return P.eth(ip, dst=HOP_MAC, src=OUR_MAC)


def gre(fam: int, frame: bytes) -> bytes:
    inner = l3_of(frame)
    return outer(fam, 47, struct.pack("!HH", 0, 0x0800 if inner[0] >> 4 == 4 else 0x86DD) + inner, inner)


def ipip(fam: int, frame: bytes) -> bytes:
    inner = l3_of(frame)
    return outer(fam, 4 if inner[0] >> 4 == 4 else 41, inner, inner)


def vxlan(fam: int, frame: bytes) -> bytes:
    inner = l3_of(frame)
    ieth = P.eth(inner, dst=IN_DST_MAC, src=IN_SRC_MAC)
    body = struct.pack("!II", 0x08 << 24, VNI << 8) + ieth
    sport = 49152 + ((HASH ^ (HASH >> 16)) & 0x3FFF)
    if fam == 4:  # RFC 7348: checksum 0 over IPv4
        u = struct.pack("!HHHH", sport, 4789, 8 + len(body), 0) + body
    else:
        u = P.udp(sport, 4789, body, src=SRC6, dst=DST6)
    return outer(fam, 17, u, inner)


def l2(frame: bytes) -> bytes:
    return P.mac(HOP_MAC) + P.mac(OUR_MAC) + frame[12:]


V4 = P.tcp_packet(4, 120, tos=0xB8)
V6 = P.tcp_packet(6, 140, tos=0x2E)
V4_NODF = P.tcp_packet(4, 120, df=False, ident=0x4242)
V4_VLAN = P.tcp_packet(4, 120, vlans=(100, 200))
V4_PADDED = P.tcp_packet(4, 40) + b"\0" * 6  # 54-byte frame padded to 60 on the wire
V4_OPTS = P.eth(P.ipv4("198.51.100.7", "203.0.113.10", P.TCP,
                       P.tcp(1, 80, b"x", src="198.51.100.7", dst="203.0.113.10"),
                       options=b"\x94\x04\0\0"))  # router alert

# description, input frame, params, expected output (bytes) or errno
CASES = [
    ("GRE, IPv4 in IPv4, TOS copied, DF copied", V4, params(R.GRE, 4), gre(4, V4)),
    ("GRE, IPv6 in IPv4, DF set", V6, params(R.GRE, 4), gre(4, V6)),
    ("GRE, IPv4 in IPv6, flow label from hash", V4, params(R.GRE, 6), gre(6, V4)),
    ("GRE, IPv6 in IPv6", V6, params(R.GRE, 6), gre(6, V6)),
    ("GRE, inner DF clear -> outer DF clear, ID copied", V4_NODF, params(R.GRE, 4), gre(4, V4_NODF)),
    ("GRE drops 802.1Q tags of the received frame", V4_VLAN, params(R.GRE, 4), gre(4, V4_VLAN)),
    ("GRE drops Ethernet padding", V4_PADDED, params(R.GRE, 4), gre(4, V4_PADDED)),
    ("GRE keeps inner IPv4 options", V4_OPTS, params(R.GRE, 4), gre(4, V4_OPTS)),
    ("IPIP (4in4, protocol 4)", V4, params(R.IPIP, 4), ipip(4, V4)),
    ("6in4 (protocol 41)", V6, params(R.IPIP, 4), ipip(4, V6)),
    ("4in6 (next header 4)", V4, params(R.IPIP, 6), ipip(6, V4)),
    ("IPv6 in IPv6 (next header 41)", V6, params(R.IPIP, 6), ipip(6, V6)),
    ("VXLAN over IPv4, UDP checksum 0", V4, params(R.VXLAN, 4), vxlan(4, V4)),
    ("VXLAN over IPv4, inner IPv6", V6, params(R.VXLAN, 4), vxlan(4, V6)),
    ("VXLAN over IPv6, UDP checksum computed", V4, params(R.VXLAN, 6), vxlan(6, V4)),
    ("VXLAN over IPv6, inner IPv6", V6, params(R.VXLAN, 6), vxlan(6, V6)),
    ("L2 DSR rewrites only the MACs", V4, params(R.L2, 4), l2(V4)),
    ("L2 DSR keeps VLAN tags", V4_VLAN, params(R.L2, 4), l2(V4_VLAN)),
    ("truncated IPv4 (total length > captured)", V4[:-10], params(R.GRE, 4), errno.EINVAL),
    ("IPv6 jumbogram (payload length 0)", V6[:18] + b"\0\0" + V6[20:], params(R.GRE, 4), errno.EINVAL),
    ("inner family says 6 but packet is IPv4", V4, params(R.GRE, 4), "fam6"),
    ("unknown type", V4, params(9, 4), errno.EINVAL),
    ("outer family 5", V4, params(R.GRE, 5), errno.EINVAL),
    ("VNI wider than 24 bits", V4, params(R.VXLAN, 4, vni=1 << 24), errno.EINVAL),
    ("L2 on a frame shorter than Ethernet", V4[:10], params(R.L2, 4), errno.EINVAL),
]


@pytest.mark.parametrize("engine", E.ENGINES)
@pytest.mark.parametrize(("desc", "frame", "prm", "expected"), CASES, ids=[c[0] for c in CASES])
def test_fixture(desc, frame, prm, expected, engine):
    l3 = P.l3_offset(frame) if len(frame) >= 14 else 14
    fam = 6 if len(frame) > l3 and frame[l3] >> 4 == 6 else 4
    if expected == "fam6":
        fam, expected = 6, errno.EINVAL
    if isinstance(expected, int):
        with pytest.raises(NativeError) as ei:
            E.encap(frame, l3, fam, HASH, prm, engine=engine)
        assert ei.value.errno == expected
    else:
        assert E.encap(frame, l3, fam, HASH, prm, engine=engine) == expected


@pytest.mark.parametrize("engine", E.ENGINES)
@pytest.mark.parametrize(("type_", "fam"), [(R.GRE, 4), (R.GRE, 6), (R.IPIP, 4), (R.VXLAN, 6)])
def test_headroom_exactly_enough_and_one_short(engine, type_, fam):
    need = 14 + E.overhead(type_, fam) - 14  # the old Ethernet header is reused
    prm = params(type_, fam)
    out = E.encap(V4, 14, 4, HASH, prm, headroom=need, engine=engine)
    assert out[-len(l3_of(V4)):] == l3_of(V4)
    with pytest.raises(NativeError) as ei:
        E.encap(V4, 14, 4, HASH, prm, headroom=need - 1, engine=engine)
    assert ei.value.errno == errno.ENOSPC


def test_c_leaves_the_frame_untouched_on_enospc():
    pool = E.ScratchPool(1)
    pool.put(0, V4, headroom=4)
    before = bytes(E.ffi.buffer(pool.buf, lib.MG_FRAME_SIZE))
    rc = lib.mg_encap(pool.buf, 0, 14, 4, HASH, E.c_params(params(R.VXLAN, 6)))
    assert rc == -errno.ENOSPC
    assert bytes(E.ffi.buffer(pool.buf, lib.MG_FRAME_SIZE)) == before


def test_c_rejects_metadata_outside_the_frame():
    pool = E.ScratchPool(1)
    pool.put(0, V4)
    pool.meta(0).data_off = lib.MG_FRAME_SIZE  # corrupt: beyond the frame
    assert lib.mg_encap(pool.buf, 0, 14, 4, HASH, E.c_params(params(R.GRE, 4))) == -errno.EINVAL
    pool.meta(0).data_off = 100
    pool.meta(0).len = lib.MG_FRAME_SIZE - lib.MG_FRAME_META_SIZE - 99
    assert lib.mg_encap(pool.buf, 0, 14, 4, HASH, E.c_params(params(R.GRE, 4))) == -errno.EINVAL


def test_overheads_match_reference_and_constants():
    for t in (R.GRE, R.IPIP, R.VXLAN, R.L2):
        for fam in (4, 6):
            assert E.overhead(t, fam) == R.overhead(t, fam)
    assert [E.overhead("gre", 4), E.overhead("gre", 6), E.overhead("vxlan", 4), E.overhead("vxlan", 6)] == [24, 44, 50, 70]
    assert (R.GRE, R.IPIP, R.VXLAN, R.L2) == (lib.MG_ENCAP_GRE, lib.MG_ENCAP_IPIP, lib.MG_ENCAP_VXLAN, lib.MG_ENCAP_L2)
    assert R.TTL == lib.MG_ENCAP_TTL and R.FRAME_HEADROOM == lib.MG_FRAME_HEADROOM
    assert (R.VXLAN_SPORT_BASE, R.VXLAN_SPORT_MASK) == (lib.MG_VXLAN_SPORT_BASE, lib.MG_VXLAN_SPORT_MASK)
    with pytest.raises(NativeError):
        E.overhead(7, 4)
    # the biggest header block must fit the frame headroom (plus a reused Ethernet header)
    assert 14 + E.overhead("vxlan", 6) <= lib.MG_FRAME_HEADROOM + 14


def test_params_from_config():
    cfg = mconfig.loads(
        """
[instance]
source_ipv4 = "198.18.0.1"
source_ipv6 = "2001:db8:ff::1"
[[vip]]
address = "203.0.113.10"
port = 80
encap = "vxlan"
vxlan_vni = 4660
vxlan_port = 8472
[[vip.backend]]
address = "2001:db8:ff::2"
mac = "02:00:00:00:dd:04"
[[vip]]
address = "203.0.113.11"
encap = "l2"
[[vip.backend]]
address = "198.18.1.9"
mac = "02:00:00:00:dd:09"
"""
    )  # (an l2 backend without its MAC is refused by the loader: test_tables.py)
    v, b = cfg.vips[0], cfg.vips[0].backends[0]
    p = E.params_for(cfg.instance, v, b, OUR_MAC, HOP_MAC)
    assert (p.type, p.outer_family, p.vni, p.vxlan_port) == (R.VXLAN, 6, 4660, 8472)
    assert p.src == P.addr(SRC6) and p.dst == P.addr(DST6) and p.inner_eth_dst == P.mac(IN_DST_MAC)
    v2 = cfg.vips[1]
    p2 = E.params_for(cfg.instance, v2, v2.backends[0], OUR_MAC, HOP_MAC)
    assert p2.type == R.L2 and p2.eth_dst == P.mac("02:00:00:00:dd:09")
    bare = dataclasses.replace(v2.backends[0], mac="")  # a Backend made in code, not loaded
    with pytest.raises(ConfigError, match="needs the backend's mac"):
        E.params_for(cfg.instance, v2, bare, OUR_MAC, HOP_MAC)
    with pytest.raises(ConfigError, match="not a MAC"):
        E.params_for(cfg.instance, v, b, "zz", HOP_MAC)


# --------------------------------------------------------------------- differential

ADDR4 = st.ip_addresses(v=4).map(lambda a: a.packed)
ADDR6 = st.ip_addresses(v=6).map(lambda a: a.packed)


@st.composite
def encap_inputs(draw):
    fam = draw(st.sampled_from([4, 6]))
    size = draw(st.integers(40 + 20 if fam == 6 else 40, 1400))
    frame = P.tcp_packet(fam, size, df=draw(st.booleans()), tos=draw(st.integers(0, 255)),
                         ident=draw(st.integers(0, 0xFFFF)),
                         vlans=draw(st.lists(st.integers(0, 4095), max_size=2)))
    frame += bytes(draw(st.integers(0, 8)))  # padding
    if draw(st.booleans()):  # mutate: any byte, anywhere
        i = draw(st.integers(0, len(frame) - 1))
        frame = frame[:i] + bytes([draw(st.integers(0, 255))]) + frame[i + 1 :]
    if draw(st.booleans()):
        frame = frame[: draw(st.integers(0, len(frame)))]
    of = draw(st.sampled_from([4, 6, 4, 6, 0]))
    prm = R.EncapParams(
        type=draw(st.sampled_from([0, 1, 2, 3, 0, 1, 2, 3, 4])),
        outer_family=of,
        src=draw(ADDR4 if of == 4 else ADDR6),
        dst=draw(ADDR4 if of == 4 else ADDR6),
        eth_src=draw(st.binary(min_size=6, max_size=6)),
        eth_dst=draw(st.binary(min_size=6, max_size=6)),
        inner_eth_src=draw(st.binary(min_size=6, max_size=6)),
        inner_eth_dst=draw(st.binary(min_size=6, max_size=6)),
        vni=draw(st.integers(0, (1 << 24) + 5)),
        vxlan_port=draw(st.integers(1, 65535)),
    )
    try:
        l3 = P.l3_offset(frame)
    except Exception:  # truncated inside the VLAN tags
        l3 = 14
    l3 = min(l3, len(frame) + draw(st.integers(0, 2)))
    return frame, l3, draw(st.sampled_from([fam, fam, 4 if fam == 6 else 6])), prm, draw(
        st.integers(0, 0xFFFFFFFF)), draw(st.integers(0, 192))


def _run(engine, frame, l3, fam, prm, h, headroom):
    try:
        return E.encap(frame, l3, fam, h, prm, headroom=headroom, engine=engine)
    except NativeError as exc:
        return exc.errno


@settings(max_examples=400, deadline=None)
@given(encap_inputs())
def test_c_and_python_agree(args):
    assert _run("c", *args) == _run("python", *args)


# ---------------------------------------------------------------------------- tshark

def test_tshark_decodes_every_encapsulation_with_good_checksums(tmp_path):
    if reason := P.why_no_tshark():
        pytest.skip(reason)
    cases = []
    for t, tname in ((R.GRE, "gre"), (R.IPIP, "ipip"), (R.VXLAN, "vxlan"), (R.L2, "l2")):
        for of in (4, 6):
            for frame in (V4, V6):
                cases.append((tname, of, frame, E.encap(frame, P.l3_offset(frame), frame[14] >> 4, HASH, params(t, of))))
    names = ["frame.protocols", "ip.checksum.status", "udp.checksum.status", "tcp.checksum.status",
             "ip.dst", "ipv6.dst", "ip.ttl", "ipv6.hlim", "gre.proto", "vxlan.vni", "udp.dstport", "eth.dst",
             "ip.flags.df", "tcp.dstport", "_ws.malformed", "_ws.expert.severity"]
    rows = P.tshark_fields(tmp_path, [c[3] for c in cases], names)
    for (tname, of, frame, _), row in zip(cases, rows, strict=True):
        where = f"{tname} outer v{of} inner v{frame[14] >> 4}: {row}"
        inner = "ip" if frame[14] >> 4 == 4 else "ipv6"
        assert not row["_ws.malformed"], where
        assert row["tcp.checksum.status"] == [P.TSHARK_GOOD], where
        assert all(s == P.TSHARK_GOOD for s in row["ip.checksum.status"]), where
        assert row["tcp.dstport"] == ["80"], where
        protos = row["frame.protocols"][0]
        if tname == "l2":
            assert protos == f"eth:ethertype:{inner}:tcp", where
            assert row["eth.dst"] == [HOP_MAC], where
            continue
        outer_ip = "ip" if of == 4 else "ipv6"
        backend = DST4 if of == 4 else DST6
        assert (row["ip.dst"] if of == 4 else row["ipv6.dst"])[0] == backend, where
        assert (row["ip.ttl"] if of == 4 else row["ipv6.hlim"])[0] == "64", where
        if tname == "gre":
            assert protos == f"eth:ethertype:{outer_ip}:gre:{inner}:tcp", where
            assert row["gre.proto"] == ["0x0800" if inner == "ip" else "0x86dd"], where
        elif tname == "ipip":
            assert protos == f"eth:ethertype:{outer_ip}:{inner}:tcp", where
        else:
            assert protos == f"eth:ethertype:{outer_ip}:udp:vxlan:eth:ethertype:{inner}:tcp", where
            assert row["vxlan.vni"] == [str(VNI)] and row["udp.dstport"] == ["4789"], where
            assert row["eth.dst"] == [HOP_MAC, IN_DST_MAC], where
            want = P.TSHARK_NOT_PRESENT if of == 4 else P.TSHARK_GOOD
            assert row["udp.checksum.status"] == [want], where

