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
    raw += struct.pack("<II", 6, 13)  # not a multiple of 4
    recs, r = read(tmp_path, raw)
    assert len(recs) == 1 and "block length 13 invalid" in str(r.error)


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
