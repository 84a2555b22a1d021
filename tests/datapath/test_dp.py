"""The burst kernel, table driven (description, input packet, expected verdict, expected
output packet), each case through the C engine and the Python reference; plus the
stateful rules (stickiness, re-selection, stateless fallback) and the C seam's guards.

Expected packets are built with maglev.testing.packets (its own header and checksum
code); the only value taken from the code under test's inputs is which backend Maglev
picks, computed here from the tables with the reference hash.
"""

from __future__ import annotations

import struct

import pytest

from maglev.datapath import DataPath, build_tables
from maglev.datapath.engine import DROP_NAMES, Packet
from maglev.datapath.ref_parse import parse
from maglev.datapath.tables import read_tables
from maglev.hashing.reference import siphash13
from maglev.native import ffi, lib
from maglev.testing import packets as P

from .dp_helpers import CLIENT4, CLIENT6, DOWN, VIP4, VIP4_ANY, VIP4_DOWN, VIP4_NOFRAG, VIP6, config

SRC4, SRC6 = "198.18.0.1", "2001:db8:1::1"
NOW = 5_000_000_000


def maglev_backend(blob: bytes, pkt: bytes, ports: bool = True) -> tuple[int, str]:
    view = read_tables(blob)
    rc, p = parse(pkt)
    assert rc == 0
    key = p.key(ports)
    vi = view.find_vip(p.dst, p.dport, p.proto)
    h = siphash13(view.header["hash_k0"], view.header["hash_k1"], key)
    b = view.maglev(vi)[h % view.vips[vi].table_size]
    return b, view.backends[b].address


def gre4(pkt: bytes, backend: str) -> bytes:
    """Expected GRE/IPv4 frame for an Ethernet+IPv4 input (reflected MACs, TTL 64,
    inner DF and ID copied, TOS copied)."""
    inner = pkt[14:]
    ident, flags = struct.unpack_from("!HH", inner, 4)
    outer = P.ipv4(SRC4, backend, P.GRE, b"\0\0\x08\x00" + inner, ttl=64, ident=ident,
                   df=bool(flags & 0x4000), tos=inner[1])
    return pkt[6:12] + pkt[0:6] + b"\x08\x00" + outer


def tcp4(dst: str = VIP4, dport: int = 80, sport: int = 40000, size: int = 0, df: bool = True,
         flags: int = 0x02) -> bytes:
    body = bytes(size)
    return P.eth(P.ipv4(CLIENT4, dst, P.TCP, P.tcp(sport, dport, body, src=CLIENT4, dst=dst, flags=flags), df=df))


def run(pkts: list[bytes], engine: str, down=frozenset(), now: int = NOW):
    blob = build_tables(config(), down)
    dp = DataPath(blob, engine=engine, ct_capacity=1024)
    outs = dp.process([Packet(i, p) for i, p in enumerate(pkts)], now)
    return blob, dp, sorted(outs, key=lambda o: o.seq)


ENGINES = ("c", "python")


@pytest.mark.parametrize("engine", ENGINES)
def test_gre_forward_exact_bytes(engine):
    pkt = tcp4()
    blob, dp, outs = run([pkt], engine)
    _, addr = maglev_backend(blob, pkt)
    assert [(o.action, o.reason) for o in outs] == [("tx", "forward")]
    assert outs[0].data == gre4(pkt, addr)


CASES = [
    # description, packet, expected reason
    ("other port of a port-specific VIP", tcp4(dport=81), "no_vip"),
    ("address that is no VIP", tcp4(dst="203.0.113.99"), "no_vip"),
    ("every backend down", tcp4(dst=VIP4_DOWN), "no_backend"),
    ("fragment of a VIP without allow_fragments",
     P.eth(P.ipv4(CLIENT4, VIP4_NOFRAG, P.UDP, P.udp(1, 53, b"x" * 16, src=CLIENT4, dst=VIP4_NOFRAG), df=False, mf=True)),
     "fragment_not_allowed"),
    ("non-first fragment of a VIP without allow_fragments",
     P.eth(P.ipv4(CLIENT4, VIP4_NOFRAG, P.UDP, b"x" * 16, df=False, frag_offset=8)), "fragment_not_allowed"),
    ("non-first fragment of no VIP", P.eth(P.ipv4(CLIENT4, "203.0.113.99", P.UDP, b"x" * 16, df=False, frag_offset=8)),
     "no_vip"),
    ("ICMP echo to a VIP", P.eth(P.ipv4(CLIENT4, VIP4, P.ICMP, P.icmp4(8, 0))), "no_vip"),
    ("truncated", tcp4()[:40], "truncated"),
    ("ARP", P.eth(bytes(28), ethertype=0x0806), "unsupported_ethertype"),
    ("TTL 0", P.eth(P.ipv4(CLIENT4, VIP4, P.TCP, P.tcp(1, 80, src=CLIENT4, dst=VIP4), ttl=0)), "ttl"),
    ("port 0 VIP, UDP: IPIP", P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, P.udp(1, 5000, src=CLIENT4, dst=VIP4_ANY))),
     "forward"),
    ("port 0 VIP, TCP: VXLAN", tcp4(dst=VIP4_ANY, dport=22), "forward"),
    ("IPv6 VIP: GRE over IPv6",
     P.eth(P.ipv6(CLIENT6, VIP6, P.TCP, P.tcp(1, 443, src=CLIENT6, dst=VIP6))), "forward"),
    ("too big with DF: ICMP frag needed", tcp4(size=1500 - 40), "icmp"),
]


@pytest.mark.parametrize("desc,pkt,reason", CASES, ids=[c[0] for c in CASES])
def test_verdict_table(desc, pkt, reason):
    got = {}
    for engine in ENGINES:
        _, dp, outs = run([pkt], engine, DOWN)
        assert outs[0].reason == reason, f"{engine}: {desc}"
        s = dp.stats()
        assert s["packets_in"] == 1
        assert s["forwarded"] + sum(s["drops"].values()) == 1
        got[engine] = [(o.action, o.verdict, o.data) for o in outs]
    assert got["c"] == got["python"]


def test_ipip_and_vxlan_outer_headers():
    blob, _, outs = run([P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, P.udp(1, 5000, src=CLIENT4, dst=VIP4_ANY))),
                         tcp4(dst=VIP4_ANY, dport=22)], "c")
    rc, ipip = parse(outs[0].data)
    assert rc == 0 and ipip.proto == 4
    rc, vx = parse(outs[1].data)
    assert rc == 0 and vx.proto == 17 and vx.dport == 4789
    vxlan = outs[1].data[vx.l4_off + 8 : vx.l4_off + 16]
    assert vxlan == struct.pack("!II", 0x08000000, 77 << 8)
    assert outs[1].data[vx.l4_off + 16 : vx.l4_off + 22] == bytes.fromhex("020000000301")  # backend MAC


def test_icmp_too_big_reports_mtu_minus_overhead():
    pkt = tcp4(size=1500 - 40)
    _, dp, outs = run([pkt], "c")
    rc, p = parse(outs[0].data)
    assert rc == 0 and p.proto == 1 and p.icmp_type == 3 and p.icmp_code == 4
    assert struct.unpack_from("!H", outs[0].data, p.l4_off + 6)[0] == 1500 - 24
    assert p.src[:4] == bytes([203, 0, 113, 10])  # from the VIP
    s = dp.stats()
    assert s["icmp_sent"] == 1 and s["drops"] == {"too_big": 1}


@pytest.mark.parametrize("engine", ENGINES)
def test_inbound_icmp_error_goes_to_the_flows_backend(engine):
    flow = tcp4(sport=40000)
    blob = build_tables(config())
    b, addr = maglev_backend(blob, flow)
    reply = P.ipv4(VIP4, CLIENT4, P.TCP, P.tcp(80, 40000, src=VIP4, dst=CLIENT4))
    err = P.eth(P.ipv4("198.51.100.1", VIP4, P.ICMP, P.icmp4(3, 1, payload=reply)))
    dp = DataPath(blob, engine=engine)
    outs = dp.process([Packet(0, flow), Packet(1, err)], NOW)
    assert [(o.reason, o.backend_index) for o in outs] == [("forward", b), ("forward", b)]
    assert dp.stats()["icmp_forwarded"] == 1
    rc, p = parse(outs[1].data)
    assert p.proto == 47 and p.dst[:4] == bytes(int(x) for x in addr.split("."))


@pytest.mark.parametrize("engine", ENGINES)
def test_established_flow_sticks_when_a_backend_is_added(engine):
    conf = config()
    blob = build_tables(conf)
    # a 4th backend changes the Maglev table; find a flow it moves
    import dataclasses

    from maglev.config import Backend

    v0 = conf.vips[0]
    bigger = dataclasses.replace(conf, vips=(dataclasses.replace(v0, backends=v0.backends + (Backend("198.18.1.4"),)),)
                                 + conf.vips[1:])
    blob2 = build_tables(bigger)
    for sport in range(40000, 40400):
        pkt = tcp4(sport=sport)
        if maglev_backend(blob, pkt)[1] != maglev_backend(blob2, pkt)[1]:
            break
    else:
        pytest.fail("no flow moved")
    dp = DataPath(blob, engine=engine)
    first = dp.process([Packet(0, pkt)], NOW)[0]
    dp.set_tables(blob2)
    again = dp.process([Packet(1, tcp4(sport=sport, flags=0x10))], NOW + 10**9)[0]
    assert read_tables(blob2).backends[again.backend_index].address == read_tables(blob).backends[first.backend_index].address
    fresh = DataPath(blob2, engine=engine).process([Packet(2, pkt)], NOW)[0]
    assert read_tables(blob2).backends[fresh.backend_index].address != read_tables(blob).backends[first.backend_index].address


@pytest.mark.parametrize("engine", ENGINES)
def test_flow_reselected_when_its_backend_goes_down(engine):
    blob = build_tables(config())
    pkt = tcp4(sport=41000)
    b, addr = maglev_backend(blob, pkt)
    dp = DataPath(blob, engine=engine)
    dp.process([Packet(0, pkt)], NOW)
    dp.set_tables(build_tables(config(), frozenset({(f"{VIP4}:80/tcp", addr)})))
    o = dp.process([Packet(1, pkt)], NOW + 10**9)[0]
    assert o.reason == "forward" and read_tables(build_tables(config())).backends[o.backend_index].address != addr
    assert dp.stats()["conntrack"]["reselected"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_full_conntrack_falls_back_to_maglev_and_counts(engine):
    blob = build_tables(config())
    dp = DataPath(blob, engine=engine, ct_capacity=8)  # one bucket of 8 ways
    dp.set_conntrack_policy(100, 0)  # the whole table may be protected
    # 8 established flows (SYN, then ACK: promoted) fill the only bucket with protected entries
    est = [Packet(i, tcp4(sport=30000 + i, flags=f)) for f in (0x02, 0x10) for i in range(8)]
    assert all(o.reason == "forward" for o in dp.process(est, NOW))
    assert dp.stats()["conntrack"]["promoted"] == 8
    pkts = [Packet(100 + i, tcp4(sport=31000 + i)) for i in range(12)]
    outs = dp.process(pkts, NOW + 10**6)
    assert all(o.reason == "forward" for o in outs)
    for o, p in zip(sorted(outs, key=lambda o: o.seq), pkts, strict=True):
        assert o.backend_index == maglev_backend(blob, p.data)[0]  # stateless = Maglev choice
    st = dp.stats()["conntrack"]
    assert st["insert_failed"] == 12 and st["evictions"] == 0  # protected entries stay


@pytest.mark.parametrize("engine", ENGINES)
def test_fragments_follow_the_first_fragment(engine):
    blob = build_tables(config())
    payload = P.udp(1, 5000, bytes(40), src=CLIENT4, dst=VIP4_ANY)
    first = P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, payload[:24], df=False, mf=True, ident=9,
                         total_length=None))
    second = P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, payload[24:], df=False, frag_offset=24, ident=9))
    dp = DataPath(blob, engine=engine)
    # second fragment first: held until the first arrives, then both to one backend
    outs = dp.process([Packet(0, second)], NOW)
    assert outs == [] and dp.stats()["held"] == 1
    outs = dp.process([Packet(1, first)], NOW + 1000)
    assert sorted(o.seq for o in outs) == [0, 1]
    assert {o.backend_index for o in outs} == {maglev_backend(blob, first, ports=False)[0]}
    assert dp.stats()["fragments"] == 2 and dp.stats()["held"] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_held_fragment_expires_on_flush(engine):
    dp = DataPath(build_tables(config()), engine=engine)
    lone = P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, bytes(16), df=False, frag_offset=64, ident=3))
    assert dp.process([Packet(0, lone)], NOW) == []
    outs = dp.flush(NOW + 10**12)
    assert [(o.seq, o.reason) for o in outs] == [(0, "frag_expired")]


def test_c_seam_rejects_bad_io_and_bad_frames():
    blob = build_tables(config())
    buf = ffi.new("uint64_t[]", (len(blob) + 7) // 8)
    ffi.memmove(buf, blob, len(blob))
    dp = ffi.gc(lib.mg_dp_new(64, 0, 1, 2, 0), lib.mg_dp_free)
    pool = ffi.new("uint8_t[]", 4 * lib.MG_FRAME_SIZE)
    frames = ffi.new("uint32_t[]", [0, 1])
    tx = ffi.new("uint32_t[]", 512)
    drop = ffi.new("uint32_t[]", 512)
    io = ffi.new("struct mg_dp_io *", {"pool": pool, "frames": frames, "n": 2, "tx": tx, "tx_cap": 1,
                                        "drop": drop, "drop_cap": 512})
    assert lib.mg_dp_burst(dp, buf, 0, io) == -22  # tx capacity too small: nothing touched
    io.tx_cap = 512
    m0 = ffi.cast("struct mg_frame_meta *", pool)
    m0.data_off, m0.len = 5000, 10  # outside the frame
    m1 = ffi.cast("struct mg_frame_meta *", pool + lib.MG_FRAME_SIZE)
    m1.data_off, m1.len = 192, 60
    assert lib.mg_dp_burst(dp, buf, 0, io) == 2
    assert io.n_drop == 2
    assert DROP_NAMES[m0.verdict] == "bad_frame"
    assert DROP_NAMES[m1.verdict] == "unsupported_ethertype"  # 60 zero bytes
    assert lib.mg_dp_burst(dp, ffi.NULL, 0, io) == 2  # no tables: every packet bad_tables
    assert DROP_NAMES[m1.verdict] == "bad_tables"
    bad = ffi.new("uint8_t[]", 256)
    assert lib.mg_dp_burst(dp, bad, 0, io) == 2
    assert DROP_NAMES[m1.verdict] == "bad_tables"


@pytest.mark.parametrize("engine", ENGINES)
def test_icmp_errors_are_rate_limited(engine):
    pkts = [tcp4(sport=20000 + i, size=1500 - 40) for i in range(60)]
    _, dp, outs = run(pkts, engine)
    reasons = [o.reason for o in outs]
    assert reasons.count("icmp") == 50 and reasons.count("icmp_rate_limited") == 10
    s = dp.stats()
    assert s["icmp_sent"] == 50 and s["drops"] == {"too_big": 50, "icmp_rate_limited": 10}


def test_df_clear_too_big_is_split_and_every_piece_encapsulated():
    big = P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, P.udp(1, 9, bytes(1470), src=CLIENT4, dst=VIP4_ANY), df=False))
    got = {}
    for engine in ENGINES:
        _, dp, outs = run([big], engine)
        assert [o.reason for o in outs] == ["forward", "forward"]
        s = dp.stats()
        assert s["forwarded"] == 1 and s["split_pieces"] == 1
        for o in outs:
            rc, p = parse(o.data)
            assert rc == 0 and p.proto == 4 and p.l3_len <= 1500  # IPIP, fits the MTU
        got[engine] = [o.data for o in outs]
    assert got["c"] == got["python"]


def test_python_engine_constants_match_c():
    from maglev.datapath import native, ref_dp

    assert ref_dp.HEADROOM == lib.MG_FRAME_HEADROOM
    assert ref_dp.HOLD_FRAMES == lib.MG_FRAG_DEFAULT_HOLD_FRAMES
    assert ref_dp.SPARE == native.SPARE
    assert ref_dp.EXPIRE_BUCKETS == lib.MG_DP_EXPIRE_BUCKETS


@pytest.mark.parametrize("engine", ENGINES)
def test_fragments_use_current_tables_across_a_swap(engine):
    blob = build_tables(config())
    payload = P.udp(1, 5000, bytes(40), src=CLIENT4, dst=VIP4_ANY)
    first = P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, payload[:24], df=False, mf=True, ident=11))
    second = P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, payload[24:], df=False, frag_offset=24, ident=11))
    _, addr = maglev_backend(blob, first, ports=False)
    blob2 = build_tables(config(), frozenset({(f"{VIP4_ANY}:0/udp", addr)}))
    dp = DataPath(blob, engine=engine)
    assert dp.process([Packet(0, second)], NOW) == []
    dp.set_tables(blob2)
    outs = dp.process([Packet(1, first)], NOW + 1000)
    want = maglev_backend(blob2, first, ports=False)[0]
    assert [o.backend_index for o in outs] == [want, want]
    assert read_tables(blob2).backends[want].address != addr
