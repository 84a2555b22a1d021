"""Pure-Python reference of the packet parser (``maglev/_cffi_src/src/mg_parse.c``).

The rules are stated once, in ``include/mg_parse.h``; this is the same walk in readable
Python, no speed tricks.  ``parse(pkt)`` returns ``(reason, Parsed)`` where reason is 0
(``MG_OK``) or a drop-reason code; the differential tests compare every field with the C
parser's ``struct mg_parsed`` for random and mutated packets.

Drop-reason names come from the compiled module when it is importable (one list, in C);
the codes used here are looked up by name, so a reordering in C cannot go unnoticed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from maglev.datapath.engine import DROP_NAMES  # the names are C's (MG_DROP_LIST)
from maglev.datapath.ref_csum import checksum

R = {name: i for i, name in enumerate(DROP_NAMES)}

OK = 0
MAX_EXT = 8
MAX_VLANS = 2
PF_FRAGMENT, PF_FIRST, PF_MORE, PF_DF = 1, 2, 4, 8


@dataclass
class Parsed:
    """Mirrors ``struct mg_parsed``; ``src``/``dst`` are 16 bytes (IPv4 zero-padded),
    ports are host-order integers."""

    src: bytes = bytes(16)
    dst: bytes = bytes(16)
    sport: int = 0
    dport: int = 0
    proto: int = 0
    family: int = 0
    l3_off: int = 0
    l4_off: int = 0
    l3_len: int = 0
    ethertype: int = 0
    frag_off: int = 0
    ttl: int = 0
    vlans: int = 0
    frag: int = 0
    tcp_flags: int = 0
    frag_id: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    extra: dict = field(default_factory=dict)

    def key(self, ports: bool = True) -> bytes:
        """The 40-byte ``struct mg_flow_key`` (ports in network order, zero padding)."""
        sp, dp = (self.sport, self.dport) if ports else (0, 0)
        return self.src + self.dst + struct.pack("!HHBBxx", sp, dp, self.proto, self.family)


def _options_ok(o: bytes) -> bool:
    i, n = 0, len(o)
    while i < n:
        t = o[i]
        if t == 0:
            return True
        if t == 1:
            i += 1
            continue
        if i + 1 >= n:
            return False
        ln = o[i + 1]
        if ln < 2 or ln > n - i:
            return False
        i += ln
    return True


def _l4(pkt: bytes, off: int, end: int, p: Parsed) -> int:
    if p.proto == 6:
        if end - off < 20:
            return R["truncated"]
        doff = (pkt[off + 12] >> 4) * 4
        if doff < 20:
            return R["bad_l4_header"]
        if doff > end - off:
            return R["truncated"]
        p.sport, p.dport = struct.unpack_from("!HH", pkt, off)
        p.tcp_flags = pkt[off + 13]
        p.l4_off = off
    elif p.proto == 17:
        if end - off < 8:
            return R["truncated"]
        if struct.unpack_from("!H", pkt, off + 4)[0] < 8:
            return R["bad_l4_header"]
        p.sport, p.dport = struct.unpack_from("!HH", pkt, off)
        p.l4_off = off
    elif p.proto in (1, 58):
        if end - off < 4:
            return R["truncated"]
        p.icmp_type, p.icmp_code = pkt[off], pkt[off + 1]
        p.l4_off = off
    return OK


def _ipv4(pkt: bytes, off: int, p: Parsed) -> int:
    n = len(pkt)
    if n - off < 20:
        return R["truncated"]
    if pkt[off] >> 4 != 4:
        return R["bad_ipv4_header"]
    ihl = (pkt[off] & 0x0F) * 4
    if ihl < 20:
        return R["bad_ipv4_header"]
    if ihl > n - off:
        return R["truncated"]
    tot = struct.unpack_from("!H", pkt, off + 2)[0]
    if tot < ihl:
        return R["bad_ipv4_header"]
    if tot > n - off:
        return R["truncated"]
    if checksum(pkt[off : off + ihl]) != 0:
        return R["bad_ipv4_checksum"]
    if ihl > 20 and not _options_ok(pkt[off + 20 : off + ihl]):
        return R["bad_ipv4_header"]
    p.family = 4
    p.l3_len = tot
    p.ttl = pkt[off + 8]
    p.proto = pkt[off + 9]
    p.src = pkt[off + 12 : off + 16] + bytes(12)
    p.dst = pkt[off + 16 : off + 20] + bytes(12)
    p.frag_id, fo = struct.unpack_from("!HH", pkt, off + 4)
    if fo & 0x4000:
        p.frag |= PF_DF
    if fo & 0x3FFF:
        p.frag |= PF_FRAGMENT
        p.frag_off = (fo & 0x1FFF) * 8
        if fo & 0x2000:
            p.frag |= PF_MORE
        if fo & 0x1FFF == 0:
            p.frag |= PF_FIRST
    if p.ttl == 0:
        return R["ttl"]
    if p.frag & PF_FRAGMENT and not p.frag & PF_FIRST:
        return OK
    return _l4(pkt, off + ihl, off + tot, p)


def _ipv6(pkt: bytes, off: int, p: Parsed) -> int:
    n = len(pkt)
    if n - off < 40:
        return R["truncated"]
    if pkt[off] >> 4 != 6:
        return R["bad_ipv6_header"]
    plen = struct.unpack_from("!H", pkt, off + 4)[0]
    if plen == 0:
        return R["bad_ipv6_header"]
    if plen > n - off - 40:
        return R["truncated"]
    end = off + 40 + plen
    p.family = 6
    p.l3_len = 40 + plen
    p.ttl = pkt[off + 7]
    p.src = pkt[off + 8 : off + 24]
    p.dst = pkt[off + 24 : off + 40]
    nh = pkt[off + 6]
    q = off + 40
    n_ext = 0
    seen_frag = False
    while True:
        if nh == 0 and q != off + 40:
            return R["bad_ipv6_header"]
        if nh in (0, 43, 60):
            if end - q < 8:
                return R["truncated"]
            hl = (pkt[q + 1] + 1) * 8
            if hl > end - q:
                return R["truncated"]
            nh = pkt[q]
            q += hl
        elif nh == 51:
            if end - q < 8:
                return R["truncated"]
            hl = (pkt[q + 1] + 2) * 4
            if hl > end - q:
                return R["truncated"]
            nh = pkt[q]
            q += hl
        elif nh == 44:
            if end - q < 8:
                return R["truncated"]
            if seen_frag:
                return R["bad_ipv6_header"]
            seen_frag = True
            fo, ident = struct.unpack_from("!HI", pkt, q + 2)
            nh = pkt[q]
            q += 8
            if fo & 0xFFF8 or fo & 1:
                p.frag |= PF_FRAGMENT
                p.frag_off = fo & 0xFFF8
                p.frag_id = ident
                if fo & 1:
                    p.frag |= PF_MORE
                if fo & 0xFFF8 == 0:
                    p.frag |= PF_FIRST
        else:
            break
        n_ext += 1
        if n_ext > MAX_EXT:
            return R["bad_ipv6_header"]
        if p.frag & PF_FRAGMENT and not p.frag & PF_FIRST:
            break
    p.proto = nh
    if p.ttl == 0:
        return R["ttl"]
    if p.frag & PF_FRAGMENT and not p.frag & PF_FIRST:
        return OK
    return _l4(pkt, q, end, p)


def parse(pkt: bytes) -> tuple[int, Parsed]:
    """``(reason, parsed)``; reason 0 means the packet parsed."""
    pkt = bytes(pkt)
    p = Parsed()
    if len(pkt) < 14:
        return R["truncated"], p
    off = 12
    et = struct.unpack_from("!H", pkt, off)[0]
    while et in (0x8100, 0x88A8):
        if p.vlans >= MAX_VLANS:
            return R["unsupported_ethertype"], p
        if len(pkt) - off < 6:
            return R["truncated"], p
        p.vlans += 1
        off += 4
        et = struct.unpack_from("!H", pkt, off)[0]
    off += 2
    p.ethertype = et
    p.l3_off = off
    if et == 0x0800:
        return _ipv4(pkt, off, p), p
    if et == 0x86DD:
        return _ipv6(pkt, off, p), p
    return R["unsupported_ethertype"], p
