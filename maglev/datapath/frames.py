"""Frames built in Python, headers and checksums right: Ethernet (802.1Q tags), IPv4 with
options and fragments, IPv6 with extension headers, TCP, UDP, ICMP, ICMPv6.

Production code builds the few frames it needs here (``maglev whereis`` hashes a synthetic
first packet of the flow it is asked about); the test packet builder
(``maglev.testing.packets``) is this module plus test conveniences (a client -> VIP TCP
frame, a pcap writer, tshark decoding).  Every function returns ``bytes``; layers nest::

    frame = eth(ipv4("198.51.100.7", "203.0.113.10", TCP, tcp(40000, 80, b"GET /", ...)))

Addresses are strings (``ipaddress`` accepts both families) or packed bytes.  The checksum
is the one Python implementation (:mod:`maglev.datapath.ref_csum`), written apart from the
C data path's, so a test comparing C output with these frames checks the C code.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from maglev.datapath.ref_csum import checksum

TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58
GRE = 47
IPIP = 4
IPV6_IN = 41
HOPOPTS = 0
ROUTING = 43
FRAGMENT = 44
DSTOPTS = 60

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = 0x8100

CLIENT_MAC = "02:00:00:00:00:01"
ROUTER_MAC = "02:00:00:00:00:fe"


def mac(s: str | bytes) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` -> 6 bytes (bytes pass through)."""
    if isinstance(s, bytes):
        if len(s) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(s)}")
        return s
    b = bytes(int(x, 16) for x in s.split(":"))
    if len(b) != 6:
        raise ValueError(f"{s!r} is not a MAC address")
    return b


def addr(a: str | bytes) -> bytes:
    return a if isinstance(a, bytes) else ipaddress.ip_address(a).packed


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def eth(payload: bytes, dst: str | bytes = ROUTER_MAC, src: str | bytes = CLIENT_MAC,
        ethertype: int | None = None, vlans: Iterable[int] = ()) -> bytes:
    """Ethernet II; ``ethertype`` defaults from the payload's IP version; ``vlans`` adds
    802.1Q tags (outermost first)."""
    if ethertype is None:
        ethertype = ETH_IPV6 if payload and payload[0] >> 4 == 6 else ETH_IPV4
    tags = b"".join(struct.pack("!HH", ETH_VLAN, v & 0xFFF) for v in vlans)
    return mac(dst) + mac(src) + tags + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, tos: int = 0,
         ident: int = 0x1234, df: bool = True, mf: bool = False, frag_offset: int = 0,
         options: bytes = b"", total_length: int | None = None) -> bytes:
    """IPv4 header + payload.  ``frag_offset`` in bytes (a multiple of 8)."""
    if len(options) % 4:
        raise ValueError("IPv4 options must be padded to a multiple of 4 bytes")
    ihl = 5 + len(options) // 4
    flags = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_offset // 8)
    tot = total_length if total_length is not None else ihl * 4 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, tot, ident, flags, ttl, proto, 0,
                      addr(src), addr(dst)) + options
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes, *, hlim: int = 64, tc: int = 0,
         flow: int = 0) -> bytes:
    """IPv6 header + payload (``payload`` may start with extension headers; ``nh`` names
    the first of them)."""
    first = (6 << 28) | (tc << 20) | (flow & 0xFFFFF)
    return struct.pack("!IHBB16s16s", first, len(payload), nh, hlim, addr(src), addr(dst)) + payload


def ext(nh: int, body: bytes = b"\0" * 6) -> bytes:
    """A hop-by-hop / routing / destination-options header: next header, length, body
    (``body`` is padded to make the header a multiple of 8 bytes)."""
    body = body + b"\0" * (-(len(body) + 2) % 8)
    return struct.pack("!BB", nh, (len(body) + 2) // 8 - 1) + body


def frag6(nh: int, ident: int, offset: int = 0, more: bool = False) -> bytes:
    """The IPv6 fragment header (offset in bytes)."""
    return struct.pack("!BBHI", nh, 0, (offset & ~7) | (1 if more else 0), ident)


def tcp(sport: int, dport: int, payload: bytes = b"", *, src: str, dst: str, seq: int = 1,
        ack: int = 0, flags: int = 0x18, window: int = 65535) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    seg = hdr + payload
    c = checksum(_pseudo(addr(src), addr(dst), TCP, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp(sport: int, dport: int, payload: bytes = b"", *, src: str, dst: str) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = checksum(_pseudo(addr(src), addr(dst), UDP, len(seg)) + seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", c) + seg[8:]


def icmp4(typ: int, code: int, rest: bytes = b"\0" * 4, payload: bytes = b"") -> bytes:
    msg = struct.pack("!BBH", typ, code, 0) + rest + payload
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def icmp6(typ: int, code: int, rest: bytes = b"\0" * 4, payload: bytes = b"", *, src: str,
          dst: str) -> bytes:
    msg = struct.pack("!BBH", typ, code, 0) + rest + payload
    c = checksum(_pseudo(addr(src), addr(dst), ICMPV6, len(msg)) + msg)
    return msg[:2] + struct.pack("!H", c) + msg[4:]


def l3_offset(frame: bytes) -> int:
    """Offset of the L3 header in an Ethernet frame (skips 802.1Q/802.1ad tags)."""
    off = 12
    while struct.unpack_from("!H", frame, off)[0] in (ETH_VLAN, 0x88A8):
        off += 4
    return off + 2
