"""Pure-Python reference of the hash functions and Maglev table population.

Same inputs, same outputs as the C kernels in ``maglev/_cffi_src/src/mg_hash.c`` and
``mg_maglev.c`` (see ``include/mg_maglev.h`` for the algorithm).  No speed tricks: this is
the readable statement of the behaviour, used by differential tests and by
``--engine python``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

MASK64 = (1 << 64) - 1
NO_BACKEND = -1

# "maglev/offs/v1.0" and "maglev/skip/v1.0" as little-endian u64 pairs (mg_hash.h).
NAME_KEY_OFFSET = struct.unpack("<QQ", b"maglev/offs/v1.0")
NAME_KEY_SKIP = struct.unpack("<QQ", b"maglev/skip/v1.0")


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & MASK64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & MASK64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & MASK64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & MASK64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & MASK64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13(k0: int, k1: int, data: bytes) -> int:
    """SipHash-1-3 of ``data`` under the key (k0, k1)."""
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    n = len(data)
    full = n - n % 8
    for i in range(0, full, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[full:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def is_prime(m: int) -> bool:
    if m < 2:
        return False
    if m % 2 == 0:
        return m == 2
    d = 3
    while d * d <= m:
        if m % d == 0:
            return False
        d += 2
    return True


def offset_skip(m: int, name: bytes) -> tuple[int, int]:
    """The paper's offset and skip (section 3.4) of one backend for table size ``m``."""
    offset = siphash13(*NAME_KEY_OFFSET, name) % m
    skip = siphash13(*NAME_KEY_SKIP, name) % (m - 1) + 1
    return offset, skip


def populate(m: int, names: Sequence[bytes], weights: Sequence[int]) -> list[int]:
    """Fill a table of size ``m`` (prime); entry = index into ``names`` or NO_BACKEND.

    ``names`` must already be in canonical (sorted) order.  Weighted turns: every round
    backend i adds weights[i] to its credit and claims one slot per max(weights) of credit.
    """
    table = [NO_BACKEND] * m
    wmax = max(weights, default=0)
    if not names or wmax == 0:
        return table
    pos, skip = zip(*(offset_skip(m, n) for n in names), strict=True)
    pos = list(pos)
    credit = [0] * len(names)
    filled = 0
    while True:
        for i, w in enumerate(weights):
            if w == 0:
                continue
            credit[i] += w
            while credit[i] >= wmax:
                credit[i] -= wmax
                c = pos[i]
                while table[c] >= 0:
                    c = (c + skip[i]) % m
                table[c] = i
                pos[i] = (c + skip[i]) % m
                filled += 1
                if filled == m:
                    return table
