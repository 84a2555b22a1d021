"""The generator NIC: packets are well-formed, toward the VIPs, with the asked mix."""

from __future__ import annotations

import ipaddress
import struct
import time

import pytest

from maglev.native import ffi, lib
from maglev.nic import NicSpecError, parse_nic, parse_out
from maglev.nic.gen import GenNic
from maglev.testing.packets import checksum

FRAME = int(lib.MG_FRAME_SIZE)
META = int(lib.MG_FRAME_META_SIZE)
VIPS = [("203.0.113.10", 80, "tcp"), ("203.0.113.20", 0, "udp"), ("2001:db8:100::10", 443, "tcp")]


class Pool:
    def __init__(self, n: int):
        self.n = n
        self.buf = ffi.new("uint8_t[]", n * FRAME)
        self.descs = ffi.new("uint64_t[]", list(range(n)))

    def meta(self, i: int):
        return ffi.cast("struct mg_frame_meta *", self.buf + i * FRAME)

    def packet(self, i: int) -> bytes:
        m = self.meta(i)
        start = i * FRAME + META + m.data_off
        return bytes(ffi.buffer(self.buf + start, m.len))


def l4_ok(pkt: bytes) -> bool:
    """The TCP/UDP checksum over the pseudo header verifies (sums to 0xffff)."""
    et = struct.unpack("!H", pkt[12:14])[0]
    if et == 0x0800:
        ihl = (pkt[14] & 15) * 4
        src, dst, proto = pkt[26:30], pkt[30:34], pkt[23]
        l4 = pkt[14 + ihl:]
    else:
        src, dst, proto = pkt[22:38], pkt[38:54], pkt[20]
        l4 = pkt[54:]
    pseudo = src + dst + struct.pack("!HH", proto, len(l4))
    return checksum(pseudo + l4) == 0


def burst(gen: GenNic, pool: Pool, n: int) -> list[bytes]:
    got = gen.rx_burst(pool.buf, pool.descs, n)
    return [pool.packet(i) for i in range(got)]


def test_packets_parse_and_checksums_verify():
    gen = GenNic(VIPS, flows=500, syn=0.5, size=64, ipv6=0.3, seed=7)
    pool = Pool(256)
    parsed = ffi.new("struct mg_parsed *")
    vip_addrs = {ipaddress.ip_address(a).packed.ljust(16, b"\0") for a, _, _ in VIPS}
    for pkt in burst(gen, pool, 256):
        assert lib.mg_parse(pkt, len(pkt), parsed) == 0
        assert bytes(parsed.key.dst) in vip_addrs
        assert l4_ok(pkt)
        if parsed.family == 4:
            assert lib.mg_ip_checksum(pkt[14:34], 20) == 0
            assert len(pkt) == 64
            assert ipaddress.ip_address(bytes(parsed.key.src)[:4]) in ipaddress.ip_network("198.19.0.0/16")
        else:
            assert len(pkt) == 74  # headers only: IPv6 + TCP do not fit in 64
            assert ipaddress.ip_address(bytes(parsed.key.src)) in ipaddress.ip_network("2001:db8:c1::/48")


def test_mix_follows_the_options():
    gen = GenNic(VIPS, flows=2000, syn=0.1, size=128, ipv6=0.2, seed=3)
    pool = Pool(256)
    parsed = ffi.new("struct mg_parsed *")
    syn = tcp = v6 = 0
    flows = set()
    for _ in range(40):
        for pkt in burst(gen, pool, 256):
            lib.mg_parse(pkt, len(pkt), parsed)
            v6 += parsed.family == 6
            flows.add(bytes(ffi.buffer(ffi.addressof(parsed.key), 40)))
            if parsed.proto == 6:
                tcp += 1
                syn += parsed.tcp_flags == 0x02
            assert len(pkt) == 128
    total = 40 * 256
    assert 0.07 < syn / tcp < 0.13
    assert 0.15 < v6 / total < 0.25
    assert 1500 < len(flows) <= 2000
    assert gen.produced == total


def test_same_seed_same_packets_and_sequence_numbers():
    a, b = GenNic(VIPS, seed=11), GenNic(VIPS, seed=11)
    pa, pb = Pool(64), Pool(64)
    assert burst(a, pa, 64) == burst(b, pb, 64)
    assert [pa.meta(i).seq for i in range(64)] == list(range(64))
    assert burst(GenNic(VIPS, seed=12), Pool(64), 64) != burst(GenNic(VIPS, seed=11), Pool(64), 64)


def test_packet_limit_sets_eof():
    gen = GenNic(VIPS, packets=300)
    pool = Pool(256)
    assert gen.rx_burst(pool.buf, pool.descs, 256) == 256
    assert gen.rx_burst(pool.buf, pool.descs, 256) == 44
    assert gen.rx_burst(pool.buf, pool.descs, 256) == 0
    assert gen.eof


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gen:flows=0", "flows=0 is out of range"),
        ("gen:syn=2", "syn=2 is out of range"),
        ("gen:size=abc", "size='abc' is not an integer"),
        ("gen:colour=red", "unknown option(s) colour"),
        ("gen:flows", "'flows' is not key=value"),
        ("pcap:", "pcap needs a capture file"),
        ("nic0", "unknown NIC 'nic0'"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(spec, message):
    with pytest.raises(NicSpecError) as e:
        parse_nic(spec)
    assert message in str(e.value)


def test_ipv6_share_needs_an_ipv6_vip():
    with pytest.raises(NicSpecError, match="needs an IPv6 VIP"):
        GenNic(VIPS[:2], ipv6=0.2)
    GenNic(VIPS[:2], ipv6=0)  # fine without IPv6 traffic


def test_out_defaults():
    assert parse_out(None, parse_nic("gen")).kind == "null"
    assert parse_out("x.pcap", parse_nic("gen")).arg == "x.pcap"
    assert parse_out(None, parse_nic("afpacket:veth0")).arg == "veth0"
    out = parse_out(None, parse_nic("afxdp:veth0"))  # transmits through its own sockets
    assert (out.kind, out.arg) == ("afxdp", "veth0")


# ------------------------------------------------------------------ flood mode (issue 16)


def flood_reference(flow0: bytes, c: int) -> bytes:
    """Flood SYN number ``c`` built in Python from flow 0's packet: the client
    198.19.(128 | c >> 8 & 127).(c & 255), port 1024 + (c >> 15) % 64000, SYN, checksums
    recomputed (the C generator's documented rule)."""
    p = bytearray(flow0)
    p[26:30] = bytes([198, 19, 0x80 | (c >> 8) & 0x7F, c & 0xFF])
    p[24:26] = b"\0\0"
    p[24:26] = struct.pack("!H", checksum(bytes(p[14:34])))
    p[34:36] = struct.pack("!H", 1024 + (c >> 15) % 64000)
    p[47] = 0x02
    p[50:52] = b"\0\0"
    l4 = bytes(p[34:])
    p[50:52] = struct.pack("!H", checksum(bytes(p[26:34]) + struct.pack("!HH", 6, len(l4)) + l4))
    return bytes(p)


def test_flood_syns_are_new_clients_equal_to_the_reference_and_keepalives_are_the_flows():
    v4tcp = [VIPS[0]]
    gen = GenNic(VIPS, flows=50, flood=1.0, keepalive=1.0, seed=5)  # keeps only IPv4 TCP VIPs
    plain = GenNic(v4tcp, flows=50, syn=0.0, ipv6=0, seed=5)  # the same flow templates, all ACKs
    pool, ref = Pool(256), Pool(256)
    seen = set()
    for _ in range(4):  # each flow's template, as mg_gen_fill's ACK variant
        plain.rx_burst(ref.buf, ref.descs, 256)
        for j in range(256):
            seen.add(ref.packet(j))
    k = lib.mg_gen_fill_flood(gen._g, pool.buf, pool.descs, 50, 0, 1)
    keep = [pool.packet(i) for i in range(k)]
    assert k == 50 and len(set(keep)) == 50 and set(keep) <= seen
    flow0 = keep[0]
    parsed = ffi.new("struct mg_parsed *")
    for rnd in range(3):
        k = lib.mg_gen_fill_flood(gen._g, pool.buf, pool.descs, 6, 250, 1)
        assert k == 256
        assert [pool.packet(i) for i in range(6)] == keep[(6 * rnd) % 50:(6 * rnd) % 50 + 6]  # in turn
        for j in range(250):
            c = rnd * 250 + j
            pkt = pool.packet(6 + j)
            assert pkt == flood_reference(flow0, c)
            assert lib.mg_parse(pkt, len(pkt), parsed) == 0 and parsed.tcp_flags == 0x02
            assert l4_ok(pkt) and lib.mg_ip_checksum(pkt[14:34], 20) == 0
            src = ipaddress.ip_address(bytes(parsed.key.src)[:4])
            assert src in ipaddress.ip_network("198.19.128.0/17")
    # far counters: the port carries the high bits (2^31 distinct clients)
    assert flood_reference(flow0, 5 << 15)[34:36] == struct.pack("!H", 1029)
    assert int(lib.mg_gen_flood_count(gen._g)) == 750
    assert lib.mg_gen_fill_flood(gen._g, pool.buf, pool.descs, 200, 200, 1) < 0  # > MG_BURST_MAX


def _phase(t: float) -> str | None:
    """The flood test's phase at generator time ``t`` (s), None in a guard band."""
    return "before" if t < 0.28 else "flood" if 0.32 < t < 0.58 else "after" if t > 0.62 else None


def test_flood_mode_follows_the_clock():
    """Keep-alives alone, then keep-alives + a flood filling every burst, then keep-alives
    alone; each flow's ACKs paced at one per ``keepalive`` seconds."""
    gen = GenNic([VIPS[0]], flows=200, flood=0.3, flood_after=0.3, keepalive=0.2, seconds=0.9)
    pool = Pool(64)
    parsed = ffi.new("struct mg_parsed *")
    phases: dict[str, list[int]] = {"before": [0, 0], "flood": [0, 0], "after": [0, 0]}
    t0 = None
    deadline = time.monotonic() + 10
    last = (0.0, 0.0, 0)  # the last call: clock before and after, keep-alives sent
    while not gen.eof and time.monotonic() < deadline:
        a = time.monotonic()
        k = gen.rx_burst(pool.buf, pool.descs, 64)
        t0 = t0 if t0 is not None else gen._t0
        t = time.monotonic() - t0
        if not gen.eof:
            last = (a - t0, t, gen.keep_sent)
        if not gen.wait(0.01) or k == 0:
            continue
        # The generator read its clock somewhere between a and t: count the burst in a
        # phase only when both ends are in it (a stall between rx_burst and the clock read
        # after it must not put a flood burst in "after").
        phase = _phase(a - t0) if _phase(a - t0) == _phase(t) else None
        for i in range(k):
            pkt = pool.packet(i)
            lib.mg_parse(pkt, len(pkt), parsed)
            if phase:
                phases[phase][parsed.tcp_flags == 0x02] += 1
    assert gen.eof
    assert phases["before"][1] == 0 and phases["after"][1] == 0  # no SYN outside the flood
    assert phases["flood"][1] > 10 * phases["flood"][0]  # the flood fills what the keep-alives leave
    s = gen.stats()
    a, b, sent = last  # 1000 ACKs/s, paced by the clock: all that were due at that call
    assert int(a * 1000) - 64 <= sent <= int(b * 1000) + 1, (last, s)
    assert s["keepalives"] == sent
    assert s["flood_syns"] == int(lib.mg_gen_flood_count(gen._g)) > 0


@pytest.mark.parametrize("opts, message", [
    ({"flood": "1", "flows": "40000"}, "at most 32768 established flows"),
    ({"flood": "1", "ipv6": "0.2"}, "set ipv6=0"),
    ({"keepalive": "0"}, "keepalive=0 is out of range"),
    ({"flood": "-1"}, "flood=-1 is out of range"),
])
def test_bad_flood_options_are_refused(opts, message):
    from maglev.nic.gen import validate_options

    with pytest.raises(NicSpecError, match=message):
        validate_options(opts)


def test_flood_needs_an_ipv4_tcp_vip():
    with pytest.raises(NicSpecError, match="needs an IPv4 TCP VIP"):
        GenNic(VIPS[1:], flood=1.0)
