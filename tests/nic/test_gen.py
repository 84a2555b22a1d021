"""The generator NIC: packets are well-formed, toward the VIPs, with the asked mix."""

from __future__ import annotations

import ipaddress
import struct

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
