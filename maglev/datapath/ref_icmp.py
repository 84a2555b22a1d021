"""Pure-Python reference of the ICMP kernels (``maglev/_cffi_src/src/mg_icmp.c``).

The contract -- when an error is sent, its layout and addresses, the rate limit, how a
quoted packet becomes a flow key -- is in ``include/mg_icmp.h``; this module states the
same behaviour in plain Python, on packet bytes plus the headroom in front of them.
"""

from __future__ import annotations

import errno
import struct

from maglev.datapath.engine import FRAME_HEADROOM
from maglev.datapath.ref_csum import csum_add, csum_fold
from maglev.datapath.ref_encap import TTL
from maglev.errors import NativeError

PMTU_FITS, PMTU_ICMP, PMTU_FRAGMENT, PMTU_DROP = 0, 1, 2, 3
ICMP4_ERROR_MAX = 576
ICMP6_ERROR_MAX = 1280
RATE_PER_S = 1000
BURST = 50
QUOTE_5TUPLE, QUOTE_3TUPLE = 0, 1
_EXT6 = (0, 43, 60, 51)
_PORTS = (6, 17, 132, 136)


class RateLimit:
    """Token bucket counted in nanoseconds of credit (``struct mg_ratelimit``)."""

    def __init__(self, rate_per_s: int = RATE_PER_S, burst: int = BURST, now_ns: int = 0):
        if rate_per_s < 1 or burst < 1:
            raise NativeError(errno.EINVAL, "ratelimit: rate and burst must be >= 1")
        self.cost_ns = max(1_000_000_000 // rate_per_s, 1)
        self.cap_ns = self.cost_ns * burst
        self.credit_ns = self.cap_ns
        self.last_ns = now_ns

    def take(self, now_ns: int) -> bool:
        if now_ns > self.last_ns:
            self.credit_ns = min(self.cap_ns, self.credit_ns + (now_ns - self.last_ns))
            self.last_ns = now_ns
        if self.credit_ns >= self.cost_ns:
            self.credit_ns -= self.cost_ns
            return True
        return False


def l3_len(l3: bytes, family: int) -> int:
    """Same rules as ``mg_l3_len`` (raises NativeError(EINVAL))."""
    from maglev.datapath.ref_encap import inner_l3_len

    return inner_l3_len(l3, family)


def _bad_destination(l3: bytes, family: int) -> bool:
    if family == 4:
        s = l3[12:16]
        return s[0] >= 224 or s == bytes(4)
    s = l3[8:24]
    return s[0] == 0xFF or s == bytes(16)


def pmtu_check(packet: bytes, l3_off: int, family: int, l4_proto: int, l4_off: int,
               overhead: int, mtu: int) -> int:
    """PMTU_FITS / PMTU_ICMP / PMTU_FRAGMENT / PMTU_DROP for this packet and overhead."""
    if l3_off > len(packet):
        raise NativeError(errno.EINVAL, "pmtu: L3 offset beyond the packet")
    l3 = packet[l3_off:]
    n = l3_len(l3, family)
    if n + overhead <= mtu:
        return PMTU_FITS
    if family == 4:
        frag = struct.unpack_from("!H", l3, 6)[0]
        if not frag & 0x4000:
            return PMTU_FRAGMENT
        if frag & 0x1FFF:
            return PMTU_DROP
        if l4_proto == 1 and (l4_off == 0 or l4_off >= len(packet) or packet[l4_off] not in (0, 8, 13, 14)):
            return PMTU_DROP
    else:
        if l4_off == 0:
            return PMTU_DROP
        if l4_proto == 58 and (l4_off >= len(packet) or packet[l4_off] < 128):
            return PMTU_DROP
    if _bad_destination(l3, family):
        return PMTU_DROP
    return PMTU_ICMP


def too_big(packet: bytes, l3_off: int, family: int, mtu: int,
            headroom: int = FRAME_HEADROOM) -> bytes:
    """The ICMP "fragmentation needed" / ICMPv6 "packet too big" answering ``packet``."""
    packet = bytes(packet)
    if l3_off > len(packet) or (l3_off != 0 and l3_off < 14):
        raise NativeError(errno.EINVAL, "icmp: bad L3 offset")
    if (family == 4 and mtu > 0xFFFF) or family not in (4, 6) or not 0 <= mtu <= 0xFFFFFFFF:
        raise NativeError(errno.EINVAL, "icmp: bad family or MTU")
    l3 = packet[l3_off:]
    n = l3_len(l3, family)
    add = 28 if family == 4 else 48
    if headroom < add:
        raise NativeError(errno.ENOSPC, "icmp: not enough headroom")
    quote = l3[: min(n, (ICMP4_ERROR_MAX if family == 4 else ICMP6_ERROR_MAX) - add)]
    l2 = packet[:l3_off]
    if l2:
        l2 = l2[6:12] + l2[0:6] + l2[12:]
    if family == 4:
        src, dst = l3[16:20], l3[12:16]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(quote), 0, 0x4000, TTL, 1, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", csum_fold(csum_add(0, ip))) + ip[12:]
        msg = struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quote
        msg = msg[:2] + struct.pack("!H", csum_fold(csum_add(0, msg))) + msg[4:]
    else:
        src, dst = l3[24:40], l3[8:24]
        ip = struct.pack("!IHBB16s16s", 6 << 28, 8 + len(quote), 58, TTL, src, dst)
        msg = struct.pack("!BBHI", 2, 0, 0, mtu) + quote
        pseudo = src + dst + struct.pack("!IxxxB", len(msg), 58)
        msg = msg[:2] + struct.pack("!H", csum_fold(csum_add(csum_add(0, pseudo), msg))) + msg[4:]
    return l2 + ip + msg


def quoted_flow(packet: bytes, l3_off: int, family: int, l4_off: int) -> tuple[int, bytes]:
    """(QUOTE_5TUPLE or QUOTE_3TUPLE, 40-byte client -> VIP flow key) from an ICMP error.
    Raises NativeError(ENOMSG) for a non-error ICMP type, NativeError(EBADMSG) for a
    truncated or malformed quote."""
    if l3_off > len(packet) or family not in (4, 6):
        raise NativeError(errno.EINVAL, "icmp quote: bad L3 offset or family")
    try:
        n = l3_len(packet[l3_off:], family)
    except NativeError:
        raise NativeError(errno.EBADMSG, "icmp quote: outer IP header inconsistent") from None
    end = l3_off + n
    if l4_off < l3_off or l4_off > end or end - l4_off < 8:
        raise NativeError(errno.EBADMSG, "icmp quote: ICMP header cut")
    typ = packet[l4_off]
    if (typ not in (3, 11, 12)) if family == 4 else not 1 <= typ <= 4:
        raise NativeError(errno.ENOMSG, f"icmp quote: type {typ} is not an error")
    q = packet[l4_off + 8 : end]
    bad = NativeError(errno.EBADMSG, "icmp quote: quoted packet truncated or malformed")
    first = True
    if family == 4:
        if len(q) < 20 or q[0] >> 4 != 4 or q[0] & 0xF < 5 or (q[0] & 0xF) * 4 > len(q):
            raise bad
        proto, l4 = q[9], (q[0] & 0xF) * 4
        first = struct.unpack_from("!H", q, 6)[0] & 0x1FFF == 0
        src, dst = q[16:20], q[12:16]
    else:
        if len(q) < 40 or q[0] >> 4 != 6:
            raise bad
        proto, l4 = q[6], 40
        for _ in range(8):
            if proto in _EXT6:
                if len(q) < l4 + 8:
                    raise bad
                hl = (q[l4 + 1] + 2) * 4 if proto == 51 else (q[l4 + 1] + 1) * 8
                proto = q[l4]
                l4 += hl
            elif proto == 44:
                if len(q) < l4 + 8:
                    raise bad
                first = struct.unpack_from("!H", q, l4 + 2)[0] & 0xFFF8 == 0
                proto = q[l4]
                l4 += 8
                if not first:
                    break
            else:
                break
        if first and (proto in _EXT6 or proto == 44):
            raise bad
        src, dst = q[24:40], q[8:24]
    sport = dport = b"\0\0"
    kind = QUOTE_3TUPLE
    if first and proto in _PORTS:
        if len(q) < l4 + 4:
            raise bad
        sport, dport, kind = q[l4 + 2 : l4 + 4], q[l4 : l4 + 2], QUOTE_5TUPLE
    key = src.ljust(16, b"\0") + dst.ljust(16, b"\0") + sport + dport + bytes([proto, family, 0, 0])
    return kind, key
