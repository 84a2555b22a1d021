"""Pure-Python reference of the AF_PACKET driver's packet repair (``mg_afp_csum_complete``
in ``mg_afpacket.c``): same inputs, same result, no speed tricks.  The differential test
(tests/lab/test_afpacket.py) runs both on generated frames."""

from __future__ import annotations

import struct

from maglev.datapath.ref_csum import csum_add, csum_fold


def csum_complete_ref(frame: bytearray) -> bool:
    """Complete the TCP/UDP checksum of an Ethernet frame in place; True when done.

    IPv4 without fragments (any header length), IPv6 with hop-by-hop, routing and
    destination-options headers skipped; 802.1Q/802.1ad tags skipped.  Anything else, or
    anything truncated, is left untouched (False)."""
    n = len(frame)
    off = 14
    if n < off:
        return False
    et = frame[12] << 8 | frame[13]
    while et in (0x8100, 0x88A8) and n >= off + 4:
        et = frame[off + 2] << 8 | frame[off + 3]
        off += 4
    if et == 0x0800:
        if n < off + 20:
            return False
        ihl = (frame[off] & 0x0F) * 4
        tot = frame[off + 2] << 8 | frame[off + 3]
        if frame[off] >> 4 != 4 or ihl < 20 or tot < ihl or off + tot > n:
            return False
        if frame[off + 6] & 0x3F or frame[off + 7]:
            return False
        proto, l4, l4len = frame[off + 9], off + ihl, tot - ihl
        acc = csum_add(0, frame[off + 12 : off + 20])
    elif et == 0x86DD:
        if n < off + 40:
            return False
        plen = frame[off + 4] << 8 | frame[off + 5]
        if frame[off] >> 4 != 6 or off + 40 + plen > n:
            return False
        proto, l4, end = frame[off + 6], off + 40, off + 40 + plen
        while proto in (0, 43, 60):
            if l4 + 8 > end:
                return False
            proto, l4 = frame[l4], l4 + (frame[l4 + 1] + 1) * 8
        if l4 > end:
            return False
        l4len = end - l4
        acc = csum_add(0, frame[off + 8 : off + 40])
    else:
        return False
    if proto == 6 and l4len >= 20:
        cso = 16
    elif proto == 17 and l4len >= 8:
        cso = 6
    else:
        return False
    frame[l4 + cso : l4 + cso + 2] = b"\0\0"
    c = csum_fold(csum_add(acc + proto + l4len, frame[l4 : l4 + l4len]))
    if proto == 17 and c == 0:
        c = 0xFFFF
    frame[l4 + cso : l4 + cso + 2] = struct.pack("!H", c)
    return True
