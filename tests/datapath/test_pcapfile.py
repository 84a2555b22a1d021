"""Capture reader/writer: every format variant the reader claims, and damaged files.

Valid/invalid pairs: each damaged file is a valid file with one thing broken, and the test
checks both that the records before the damage come out and the exact error text."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from maglev.errors import PacketError
from maglev.nic.pcapfile import PcapReader, PcapWriter, open_capture
from maglev.testing import packets as P

FRAME = P.eth(P.ipv4("198.51.100.7", "203.0.113.10", P.TCP, P.tcp(1, 80, b"hi", src="198.51.100.7", dst="203.0.113.10")))
IP4 = FRAME[14:]
IP6 = P.ipv6("2001:db8:c::7", "2001:db8:f::10", P.UDP, P.udp(1, 53, src="2001:db8:c::7", dst="2001:db8:f::10"))


def classic(order: str, nano: bool, linktype: int, records: list[tuple[int, bytes, int]], snaplen: int = 65535) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)
    for ts, data, orig in records:
        sec, ns = divmod(ts, 10**9)
        out += struct.pack(order + "IIII", sec, ns if nano else ns // 1000, len(data), orig) + data
    return out


def block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def pcapng(order: str, linktype: int, packets: list[tuple[int, bytes]], tsresol: int | None = None,
           simple: bool = False) -> bytes:
    shb = block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = b""
    if tsresol is not None:
        opts = struct.pack(order + "HH", 9, 1) + bytes([tsresol]) + b"\0\0\0" + struct.pack(order + "HH", 0, 0)
    idb = block(order, 1, struct.pack(order + "HHI", linktype, 0, 65535) + opts)
    out = shb + idb
    for ts, data in packets:
        if simple:
            out += block(order, 3, struct.pack(order + "I", len(data)) + data)
        else:
            out += block(order, 6, struct.pack(order + "IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data)
    return out


def read(tmp_path: Path, raw: bytes) -> tuple[list, PcapReader]:
    p = tmp_path / "x.cap"
    p.write_bytes(raw)
    r = PcapReader(p)
    recs = list(r)
    r.close()
    return recs, r


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_classic_byte_orders_and_resolutions(tmp_path, order, nano):
    recs, r = read(tmp_path, classic(order, nano, 1, [(1_500_000_123_000, FRAME, len(FRAME))]))
    assert r.format == "pcap" and r.error is None
    assert recs[0].data == FRAME and recs[0].ts_ns == 1_500_000_123_000
    assert recs[0].orig_len == len(FRAME)


def test_linktype_upper_bits_masked_and_caplen_over_snaplen(tmp_path):
    recs, r = read(tmp_path, classic("<", False, 0x30000001, [(0, FRAME, 1000)], snaplen=1))
    assert r.linktype == 1 and recs[0].data == FRAME and recs[0].orig_len == 1000


@pytest.mark.parametrize("lt,raw,ethertype", [
    (101, IP4, 0x0800), (101, IP6, 0x86DD), (12, IP4, 0x0800), (14, IP6, 0x86DD),
    (228, IP4, 0x0800), (229, IP6, 0x86DD),
])
def test_raw_ip_gets_a_synthetic_ethernet_header(tmp_path, lt, raw, ethertype):
    recs, _ = read(tmp_path, classic("<", False, lt, [(0, raw, len(raw))]))
    assert recs[0].ok and recs[0].data[14:] == raw
    assert struct.unpack_from("!H", recs[0].data, 12)[0] == ethertype
    assert recs[0].orig_len == len(raw) + 14


def test_linux_sll_and_sll2(tmp_path):
    sll = struct.pack("!HHH8sH", 0, 1, 6, bytes.fromhex("0a0b0c0d0e0f") + b"\0\0", 0x0800) + IP4
    recs, _ = read(tmp_path, classic("<", False, 113, [(0, sll, len(sll))]))
    assert recs[0].data == P.mac("02:00:00:00:00:01") + bytes.fromhex("0a0b0c0d0e0f") + b"\x08\x00" + IP4
    sll2 = struct.pack("!HHIHBB8s", 0x86DD, 0, 3, 1, 0, 6, bytes.fromhex("0a0b0c0d0e0f") + b"\0\0") + IP6
    recs, _ = read(tmp_path, classic("<", False, 276, [(0, sll2, len(sll2))]))
    assert recs[0].data[6:] == bytes.fromhex("0a0b0c0d0e0f") + b"\x86\xdd" + IP6


@pytest.mark.parametrize("order", ["<", ">"])
def test_bsd_loopback_null_and_loop(tmp_path, order):
    """LINKTYPE_NULL (0): a 4-byte address family in the byte order of the machine that
    wrote it (which need not be the file's: read both); LOOP (108): network order.  IPv4 is
    2, IPv6 is 10, 23, 24, 28 or 30 depending on the OS; anything else is ethertype 0
    (dropped by the data path as unsupported_ethertype), a record too short for the header
    a bare Ethernet header (dropped as truncated)."""
    af = [(2, IP4, 0x0800)] + [(n, IP6, 0x86DD) for n in (10, 23, 24, 28, 30)] + [(7, IP4, 0)]
    recs, r = read(tmp_path, classic(order, False, 0, [(0, struct.pack(order + "I", n) + ip, 4 + len(ip)) for n, ip, _ in af]
                                     + [(0, struct.pack("<>".replace(order, "") + "I", 2) + IP4, 4 + len(IP4)), (0, b"\2\0", 2)]))
    assert r.error is None and all(x.ok for x in recs) and len(recs) == len(af) + 2
    for (_, ip, et), x in zip(af + [(2, IP4, 0x0800)], recs, strict=False):
        assert x.data == P.mac("02:00:00:00:00:01") + P.mac("02:00:00:00:00:02") + struct.pack("!H", et) + ip
        assert x.orig_len == len(ip) + 14
    assert recs[-1].data == P.mac("02:00:00:00:00:01") + P.mac("02:00:00:00:00:02") + b"\0\0"
    recs, _ = read(tmp_path, classic(order, False, 108, [(0, struct.pack("!I", 24) + IP6, 4 + len(IP6))]))
    assert recs[0].ok and recs[0].data[12:] == b"\x86\xdd" + IP6


@pytest.mark.parametrize("lt,head,ethertype,raw", [
    (9, b"\xff\x03\x00\x21", 0x0800, IP4), (9, b"\x00\x57", 0x86DD, IP6), (50, b"\xff\x03\x21", 0x0800, IP4),
    (9, b"\xff\x03\xc0\x21", 0, b"\x01\x01\x00\x04"),  # LCP: not IP
    (104, b"\x0f\x00\x08\x00", 0x0800, IP4), (104, b"\x0f\x00\x86\xdd", 0x86DD, IP6),
])  # fmt: skip
def test_ppp_and_cisco_hdlc(tmp_path, lt, head, ethertype, raw):
    recs, _ = read(tmp_path, classic("<", False, lt, [(0, head + raw, len(head) + len(raw))]))
    assert recs[0].ok and recs[0].data[12:] == struct.pack("!H", ethertype) + raw
    assert recs[0].orig_len == 14 + len(raw)


@pytest.mark.parametrize("order", ["<", ">"])
def test_fcs_length_in_the_linktype_field(tmp_path, order):
    """Bit 26 of the pcap link-type field says the FCS length (16-bit words) is in bits
    28-31: the type is the low 16 bits (the record used to be refused as link type
    0x24000001), the FCS is cut, also when only part of it was captured."""
    fcs = b"\xde\xad\xbe\xef"
    lt = 1 | 0x04000000 | (2 << 28)
    recs, r = read(tmp_path, classic(order, False, lt, [
        (0, FRAME + fcs, len(FRAME) + 4), (0, FRAME + fcs[:2], len(FRAME) + 4), (0, FRAME[:30], len(FRAME) + 4)]))
    assert r.linktype == 1 and all(x.ok for x in recs)
    assert [(x.data, x.orig_len) for x in recs] == [(FRAME, len(FRAME)), (FRAME, len(FRAME)), (FRAME[:30], len(FRAME))]


def test_pcapng_fcslen_and_tsoffset(tmp_path):
    shb = block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = struct.pack("<HH", 13, 1) + b"\x20\0\0\0" + struct.pack("<HHq", 14, 8, 100) + struct.pack("<HH", 0, 0)
    idb = block("<", 1, struct.pack("<HHI", 1, 0, 65535) + opts)
    data = FRAME + b"\xde\xad\xbe\xef"
    epb = block("<", 6, struct.pack("<IIIII", 0, 0, 5, len(data), len(data)) + data)
    recs, r = read(tmp_path, shb + idb + epb)
    assert r.error is None
    assert (recs[0].data, recs[0].orig_len, recs[0].ts_ns) == (FRAME, len(FRAME), 100 * 10**9 + 5000)


@pytest.mark.parametrize("extra", [8, 12])
def test_modified_pcap(tmp_path, extra):
    """Magic a1b2cd34 (``editcap -F modpcap``, read by libpcap): record headers of 24 bytes
    (ifindex, protocol, packet type, pad) or 28 (SuSE 6.3: two more CPU bytes and padding);
    the reader tells them apart by the first records.  It used to refuse the file."""
    raw = struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)
    for i in range(3):
        raw += struct.pack("<IIII", 1_700_000_000 + i, 1000 * i, len(FRAME), len(FRAME)) + bytes(range(extra)) + FRAME
    recs, r = read(tmp_path, raw)
    assert r.error is None and r.format == "pcap"
    assert [(x.data, x.ts_ns) for x in recs] == [(FRAME, (1_700_000_000 + i) * 10**9 + 10**6 * i) for i in range(3)]


def test_unsupported_linktype_is_flagged_not_raised(tmp_path):
    recs, r = read(tmp_path, classic("<", False, 147, [(0, b"abc", 3)]))
    assert not recs[0].ok and r.unsupported == 1


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_enhanced_and_simple_blocks(tmp_path, order):
    recs, r = read(tmp_path, pcapng(order, 1, [(1_000_000, FRAME), (2_000_000, FRAME)]))
    assert r.format == "pcapng" and r.error is None
    assert [x.ts_ns for x in recs] == [10**9, 2 * 10**9]  # default resolution: microseconds
    recs, _ = read(tmp_path, pcapng(order, 101, [(0, IP4)], simple=True))
    assert recs[0].data[14:] == IP4


def test_pcapng_tsresol_nanoseconds(tmp_path):
    recs, _ = read(tmp_path, pcapng("<", 1, [(123456789, FRAME)], tsresol=9))
    assert recs[0].ts_ns == 123456789


def test_not_a_capture(tmp_path):
    p = tmp_path / "text.pcap"
    p.write_bytes(b"hello, this is not a capture")
    with pytest.raises(PacketError, match=r"not a pcap or pcapng file \(magic 68656c6c\)"):
        open_capture(p)
    (tmp_path / "empty.pcap").write_bytes(b"")
    with pytest.raises(PacketError, match="too short to be a capture file"):
        open_capture(tmp_path / "empty.pcap")
    with pytest.raises(PacketError, match="cannot open"):
        open_capture(tmp_path / "missing.pcap")


def test_truncated_record_keeps_earlier_records(tmp_path):
    good = classic("<", False, 1, [(0, FRAME, len(FRAME))] * 3)
    recs, r = read(tmp_path, good[:-10])
    assert len(recs) == 2
    assert str(r.error).endswith(f"damaged at byte {24 + 2 * (16 + len(FRAME))}: record data cut: {len(FRAME) - 10} of {len(FRAME)} bytes")


def test_absurd_record_length(tmp_path):
    raw = classic("<", False, 1, [(0, FRAME, len(FRAME))]) + struct.pack("<IIII", 0, 0, 1 << 30, 60)
    recs, r = read(tmp_path, raw)
    assert len(recs) == 1 and "record length 1073741824 exceeds" in str(r.error)


def test_pcapng_bad_block_length(tmp_path):
    raw = pcapng("<", 1, [(0, FRAME)])
    recs, r = read(tmp_path, raw + struct.pack("<II", 6, 8))  # shorter than a block header
    assert len(recs) == 1 and "block length 8 invalid" in str(r.error)
    # 13 is read as 16 (see the next test): the padding and trailer are missing
    recs, r = read(tmp_path, raw + struct.pack("<II", 6, 13))
    assert len(recs) == 1 and str(r.error).endswith(f"damaged at byte {len(raw)}: block cut: 0 of 8 bytes")


def test_pcapng_block_length_without_its_padding(tmp_path):
    """Some writers put the unpadded length in a block (python-pcapng's test006.ntar, which
    Wireshark reads): the block still occupies the padded size, trailer included."""
    good = pcapng("<", 1, [(0, FRAME[:-1]), (0, FRAME)])
    epb_len = 12 + 20 + len(FRAME) - 1
    assert epb_len % 4  # the test frame needs padding
    first = good.index(struct.pack("<II", 6, (epb_len + 3) & ~3))
    bad = bytearray(good)
    struct.pack_into("<I", bad, first + 4, epb_len)
    struct.pack_into("<I", bad, first + ((epb_len + 3) & ~3) - 4, epb_len)
    recs, r = read(tmp_path, bytes(bad))
    assert r.error is None and [x.data for x in recs] == [FRAME[:-1], FRAME]


def test_pcapng_section_of_an_unknown_version_is_damage(tmp_path):
    """A section of major version 2 cannot be read (its blocks may be laid out otherwise):
    the records before it are kept and the error says where, as Wireshark does."""
    v1 = pcapng("<", 1, [(0, FRAME)])
    v2 = bytearray(pcapng("<", 1, [(0, FRAME), (0, FRAME)]))
    struct.pack_into("<H", v2, 12, 2)
    recs, r = read(tmp_path, v1 + bytes(v2))
    assert len(recs) == 1
    assert str(r.error).endswith(f"damaged at byte {len(v1)}: section header version 2.0 not supported")


def test_pcapng_packet_for_undeclared_interface(tmp_path):
    shb = block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    epb = block("<", 6, struct.pack("<IIIII", 0, 0, 0, len(FRAME), len(FRAME)) + FRAME)
    recs, r = read(tmp_path, shb + epb)
    assert recs == [] and "undeclared interface 0" in str(r.error)


def test_writer_round_trip(tmp_path):
    p = tmp_path / "out.pcap"
    with PcapWriter(p) as w:
        w.write(FRAME, 1_700_000_000_123_456_789)
        w.write(FRAME[:20], 5, orig_len=60)
    with PcapReader(p) as r:
        recs = list(r)
    assert [(x.data, x.ts_ns, x.orig_len) for x in recs] == [
        (FRAME, 1_700_000_000_123_456_789, len(FRAME)), (FRAME[:20], 5, 60)]


def test_corpus_pcapng_and_big_endian(corpus_dir):
    with PcapReader(corpus_dir / "vlan-pcp-dei.pcapng") as r:
        assert r.format == "pcapng" and len(list(r)) == 9 and r.error is None
    with PcapReader(corpus_dir / "isup.pcap") as r:
        assert len(list(r)) == 6 and r.error is None
