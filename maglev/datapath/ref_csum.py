"""The Internet checksum (RFC 1071) in Python: the reference of ``include/mg_csum.h`` and the
one Python implementation (the pure-Python references, the AF_PACKET repair reference, the
lab's GRE decapsulation and the test-packet builders all use it)."""

from __future__ import annotations

import struct


def csum_add(s: int, data: bytes | bytearray) -> int:
    """``mg_csum_add``: ``s`` plus the one's-complement sum of the big-endian 16-bit words of
    ``data`` (an odd tail is padded with a zero byte), folded to 16 bits."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s += sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum_fold(s: int) -> int:
    """``mg_csum_fold``: fold to 16 bits and complement (the value of a checksum field)."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def checksum(data: bytes | bytearray) -> int:
    """The checksum of ``data``; 0 when ``data`` already holds a correct checksum field."""
    return csum_fold(csum_add(0, data))
