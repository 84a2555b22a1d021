"""Steering's hash against the pure-Python reference (ref_parse + SipHash-1-3): the fast
path for the common packet (untagged IPv4 without options / IPv6 without extension
headers, TCP or UDP, not a fragment) must decide exactly what the general parser decides,
for valid packets and for every kind of damage to them (mg_steer.c, fast_key)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from maglev.datapath.ref_parse import OK, PF_FRAGMENT, checksum, parse
from maglev.hashing.reference import siphash13
from maglev.native import ffi, lib

K0, K1 = 0x0123456789ABCDEF, 0xFEDCBA9876543210


def c_steer(pkt: bytes, n: int) -> tuple[int, int, int]:
    h = ffi.new("uint64_t *")
    fl = ffi.new("uint16_t *")
    w = lib.mg_steer_hash(pkt, len(pkt), K0, K1, n, h, fl)
    return w, int(h[0]), int(fl[0])


def ref_steer(pkt: bytes, n: int) -> tuple[int, int, int] | None:
    """What steering must answer; None for a GRE packet (redirect rules, tested elsewhere)."""
    rc, p = parse(pkt)
    if rc != OK:
        return -1, 0, 0
    frag = bool(p.frag & PF_FRAGMENT)
    if p.proto == 47 and not frag:
        return None
    h = siphash13(K0, K1, p.key(ports=not frag))
    return (h >> 32) % n, h, int(lib.MG_FRAME_F_FRAGMENT) if frag else 0


def build(v6: bool, proto: int, sport: int, dport: int, ttl: int, payload: int, seed: int) -> bytearray:
    l4 = (struct.pack("!HHIIBBHHH", sport, dport, seed, 0, 5 << 4, 0x10, 512, 0, 0) if proto == 6
          else struct.pack("!HHHH", sport, dport, 8 + payload, 0)) + bytes(payload)
    if v6:
        src = bytes([0x20, 0x01, 0x0D, 0xB8]) + seed.to_bytes(12, "big")
        dst = bytes([0x20, 0x01, 0x0D, 0xB8, 0, 0, 1, 0] + [0] * 7 + [0x10])
        ip = struct.pack("!IHBB", 6 << 28, len(l4), proto, ttl) + src + dst
        et = 0x86DD
    else:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), seed & 0xFFFF, 0x4000, ttl, proto, 0,
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
# Bytes of the fields the parser checks (ethertype; IPv4 version/ihl, total length,
# fragment word, TTL, protocol; IPv6 version, payload length, next header, hop limit;
# TCP data offset and UDP length behind either header), and values near their limits.
FIELDS = [12, 13, 14, 16, 17, 20, 21, 22, 23, 18, 19, 46, 38, 39, 66, 58, 59]
offsets = st.one_of(st.sampled_from(FIELDS), st.integers(12, 80))
values = st.one_of(st.sampled_from([0, 1, 4, 7, 8, 0x14, 0x40, 0x45, 0x46, 0x50, 0x60, 0x86, 0xFF]),
                   st.integers(0, 255))
damage = st.lists(st.tuples(offsets, values), max_size=3)


@settings(max_examples=1500, deadline=None)
@given(pkt=packets, edits=damage, cut=st.one_of(st.just(0), st.integers(0, 30)), refix=st.booleans(), n=st.sampled_from([1, 2, 3, 8]))
def test_steering_hash_equals_the_reference_for_valid_and_damaged_packets(pkt, edits, cut, refix, n):
    for off, b in edits:
        if off < len(pkt):
            pkt[off] = b
    if refix:  # a damaged field with a correct checksum reaches the later checks
        fix_ipv4_checksum(pkt)
    data = bytes(pkt[:len(pkt) - cut] if cut < len(pkt) else pkt)
    want = ref_steer(data, n)
    if want is not None:
        assert c_steer(data, n) == want


def test_the_common_packets_hash_like_the_reference():
    for v6 in (False, True):
        for proto in (6, 17):
            for seed in range(50):
                data = bytes(build(v6, proto, 1000 + seed, 80, 64, seed % 7, seed))
                w, h, fl = c_steer(data, 8)
                assert (w, h, fl) == ref_steer(data, 8)
                assert w >= 0 and fl == 0


def test_every_checked_field_at_its_limits_is_decided_like_the_reference():
    """Each parser-checked byte of each common packet kind set to each boundary value, with
    and without a repaired IPv4 checksum: the same answer as the reference."""
    vals = [0, 1, 4, 7, 8, 0x14, 0x40, 0x45, 0x46, 0x50, 0x60, 0x86, 0xDD, 0xFF]
    checked = 0
    for v6 in (False, True):
        for proto in (6, 17):
            for payload in (0, 3):
                for off in FIELDS:
                    for b in vals:
                        for refix in (False, True):
                            pkt = build(v6, proto, 4000, 80, 64, payload, 7)
                            if off >= len(pkt):
                                continue
                            pkt[off] = b
                            if refix:
                                fix_ipv4_checksum(pkt)
                            want = ref_steer(bytes(pkt), 4)
                            if want is not None:
                                assert c_steer(bytes(pkt), 4) == want, (v6, proto, payload, off, b, refix)
                                checked += 1
    assert checked > 3000
