"""The burst kernel's parser fast path (mg_parse_fast4 in mg_parse.h, out of line as
mg_parse_fast) against the general parser: for a frame it takes (untagged IPv4 without
options, not a fragment, TCP or UDP, valid) it must write exactly the 64 bytes mg_parse
writes, and for any other frame it must decline and write nothing, so the kernel's
decision is mg_parse's whatever the frame (mg_parse itself is compared with the Python
reference in test_parse.py and test_differential.py)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from maglev.datapath.ref_parse import OK, checksum, parse
from maglev.native import ffi, lib

GARBAGE = bytes(range(0xA5, 0xA5 + 64))


def build(v6: bool, proto: int, sport: int, dport: int, ttl: int, payload: int, seed: int,
          fo: int = 0x4000, doff: int = 5, tcp_flags: int = 0x10) -> bytearray:
    l4 = (struct.pack("!HHIIBBHHH", sport, dport, seed, 0, doff << 4, tcp_flags, 512, 0, 0) if proto == 6
          else struct.pack("!HHHH", sport, dport, 8 + payload, 0)) + bytes(payload)
    if v6:
        src = bytes([0x20, 0x01, 0x0D, 0xB8]) + seed.to_bytes(12, "big")
        dst = bytes([0x20, 0x01, 0x0D, 0xB8, 0, 0, 1, 0] + [0] * 7 + [0x10])
        ip = struct.pack("!IHBB", 6 << 28, len(l4), proto, ttl) + src + dst
        et = 0x86DD
    else:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, seed & 0xFC, 20 + len(l4), seed & 0xFFFF, fo, ttl, proto, 0,
                          (0xC6120000 | seed & 0xFFFF).to_bytes(4, "big"), bytes([203, 0, 113, 10]))
        ip = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        et = 0x0800
    return bytearray(bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + struct.pack("!H", et) + ip + l4)


def fix_ipv4_checksum(pkt: bytearray) -> None:
    if pkt[12:14] == b"\x08\x00" and len(pkt) >= 34:
        ihl = (pkt[14] & 0x0F) * 4
        if 20 <= ihl and 14 + ihl <= len(pkt):
            pkt[24:26] = b"\0\0"
            pkt[24:26] = struct.pack("!H", checksum(bytes(pkt[14:14 + ihl])))


def compare(data: bytes) -> bool:
    """Fast path vs mg_parse on one frame; True when the fast path took it."""
    fast = ffi.new("struct mg_parsed *")
    ffi.memmove(fast, GARBAGE, 64)
    took = lib.mg_parse_fast(data, len(data), fast)
    if not took:
        assert bytes(ffi.buffer(fast)) == GARBAGE, "declined, yet wrote"
        return False
    full = ffi.new("struct mg_parsed *")
    ffi.memmove(full, GARBAGE, 64)
    assert lib.mg_parse(data, len(data), full) == OK
    assert bytes(ffi.buffer(fast)) == bytes(ffi.buffer(full))
    return True


def test_the_struct_is_what_the_fast_path_writes():
    assert ffi.sizeof("struct mg_parsed") == 64


def test_common_frames_take_the_fast_path_and_parse_like_the_reference():
    took = 0
    for proto in (6, 17):
        for seed in range(60):
            for fo in (0x4000, 0x0000, 0x8000):  # DF, none, the reserved bit (ignored)
                data = bytes(build(False, proto, 1000 + seed, 80, 1 + seed % 255, 12 + seed % 9, seed, fo=fo,
                                   doff=5 + seed % 3, tcp_flags=seed & 0xFF))
                assert compare(data)
                took += 1
                rc, p = parse(data)  # and the reference agrees on the fields the kernel uses
                assert rc == OK
                c = ffi.new("struct mg_parsed *")
                lib.mg_parse_fast(data, len(data), c)
                assert (c.proto, c.l3_off, c.l4_off, c.l3_len, c.ttl) == (p.proto, p.l3_off, p.l4_off,
                                                                          p.l3_len, p.ttl)
    assert took == 360


def test_other_frames_are_declined():
    """IPv6, options, fragments, TTL 0, other protocols, VLAN tags, short frames, bad
    checksums: the general parser decides them."""
    declined = [
        bytes(build(True, 6, 1, 80, 64, 0, 1)),
        bytes(build(False, 6, 1, 80, 64, 0, 1, fo=0x2000)),  # MF: a first fragment
        bytes(build(False, 6, 1, 80, 64, 0, 1, fo=0x0001)),  # non-first fragment
        bytes(build(False, 6, 1, 80, 0, 0, 1)),  # TTL 0
        bytes(build(False, 1, 1, 80, 64, 20, 1)),  # ICMP
        bytes(build(False, 17, 1, 53, 64, 0, 1)),  # 42 bytes: shorter than the fast path's bound
        bytes(build(False, 6, 1, 80, 64, 0, 1, doff=4)),
        bytes(build(False, 6, 1, 80, 64, 0, 1, doff=6)),  # data offset past the packet
    ]
    tagged = build(False, 6, 1, 80, 64, 0, 1)
    declined.append(bytes(tagged[:12] + b"\x81\x00\x00\x05" + tagged[12:]))
    bad_sum = build(False, 6, 1, 80, 64, 0, 1)
    bad_sum[24] ^= 1
    declined.append(bytes(bad_sum))
    opts = build(False, 6, 1, 80, 64, 0, 1)
    opts[14] = 0x46
    declined.append(bytes(opts[:34] + b"\x01\x01\x01\x00" + opts[34:]))
    for data in declined:
        assert not compare(data), data.hex()


packets = st.builds(
    build,
    v6=st.booleans(),
    proto=st.sampled_from([6, 17, 6, 17, 1, 47, 0]),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    ttl=st.sampled_from([64, 1, 0]),
    payload=st.integers(0, 40),
    seed=st.integers(0, 2**32 - 1),
)
# Bytes the fast path checks (ethertype, version/IHL, total length, fragment word, TTL,
# protocol, checksum, TCP data offset and flags, UDP length) and values near their limits.
FIELDS = [12, 13, 14, 16, 17, 20, 21, 22, 23, 24, 25, 38, 39, 46, 47]
offsets = st.one_of(st.sampled_from(FIELDS), st.integers(0, 80))
values = st.one_of(st.sampled_from([0, 1, 4, 7, 8, 0x14, 0x20, 0x3F, 0x40, 0x45, 0x46, 0x50, 0x60, 0x80,
                                    0x86, 0xFF]), st.integers(0, 255))


@settings(max_examples=2000, deadline=None)
@given(pkt=packets, edits=st.lists(st.tuples(offsets, values), max_size=3),
       cut=st.one_of(st.just(0), st.integers(0, 30)), refix=st.booleans())
def test_damaged_frames_are_decided_like_the_general_parser(pkt, edits, cut, refix):
    for off, b in edits:
        if off < len(pkt):
            pkt[off] = b
    if refix:  # a damaged field with a correct checksum reaches the later checks
        fix_ipv4_checksum(pkt)
    compare(bytes(pkt[:len(pkt) - cut] if cut < len(pkt) else pkt))


def test_every_checked_byte_at_its_limits():
    vals = [0, 1, 4, 7, 8, 0x13, 0x14, 0x1B, 0x1C, 0x20, 0x3F, 0x40, 0x45, 0x46, 0x50, 0x60, 0x80, 0xFF]
    took = declined = 0
    for proto in (6, 17):
        for payload in (0, 3, 12):
            for off in FIELDS:
                for b in vals:
                    for refix in (False, True):
                        pkt = build(False, proto, 4000, 80, 64, payload, 7)
                        if off >= len(pkt):
                            continue
                        pkt[off] = b
                        if refix:
                            fix_ipv4_checksum(pkt)
                        if compare(bytes(pkt)):
                            took += 1
                        else:
                            declined += 1
    assert took > 300 and declined > 300
