"""Pure-Python reference of the evaluation baselines in ``mg_eval.c``: Karger consistent
hashing and Rendezvous hashing filling a lookup table of size M (see ``mg_eval.h`` for
the exact definitions).  Same inputs, same tables; too slow for the paper's sizes (65M
hashes), so tests compare it with the C kernel on small ones.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence

from maglev.hashing.reference import MASK64, NO_BACKEND, siphash13

KEY_SLOT = struct.unpack("<QQ", b"maglev/eval/slot")
KEY_KARGER = struct.unpack("<QQ", b"maglev/eval/krgr")
KEY_RENDEZVOUS = struct.unpack("<QQ", b"maglev/eval/rndv")
NAME_MAX = 252


def mix64(z: int) -> int:
    """splitmix64's finalizer."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def slot_hash(j: int) -> int:
    return siphash13(*KEY_SLOT, j.to_bytes(4, "little"))


def _alive(n: int, alive: Sequence[bool] | None) -> list[int]:
    return [i for i in range(n) if alive is None or alive[i]]


def karger_fill(
    m: int, names: Sequence[bytes], vnodes: int, alive: Sequence[bool] | None = None
) -> list[int]:
    """Slot j -> owner of the first ring point >= slot_hash(j), wrapping around."""
    if any(len(n) > NAME_MAX for n in names):
        raise ValueError(f"backend names are limited to {NAME_MAX} bytes")
    ring = sorted(
        (siphash13(*KEY_KARGER, names[i] + v.to_bytes(4, "little")), i)
        for i in _alive(len(names), alive)
        for v in range(vnodes)
    )
    if not ring:
        return [NO_BACKEND] * m
    positions = [p for p, _ in ring]
    table = []
    for j in range(m):
        k = bisect.bisect_left(positions, slot_hash(j))
        table.append(ring[k % len(ring)][1])
    return table


def rendezvous_fill(
    m: int, names: Sequence[bytes], alive: Sequence[bool] | None = None
) -> list[int]:
    """Slot j -> the alive backend with the highest mix64(h(name) ^ slot_hash(j)); ties
    go to the lower index."""
    live = _alive(len(names), alive)
    hb = {i: siphash13(*KEY_RENDEZVOUS, names[i]) for i in live}
    table = []
    for j in range(m):
        h = slot_hash(j)
        best, win = -1, NO_BACKEND
        for i in live:
            s = mix64(hb[i] ^ h)
            if s > best:
                best, win = s, i
        table.append(win)
    return table
