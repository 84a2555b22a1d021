"""What the multi-queue receive sides (``afpacket`` with ``queues=N``, ``afxdp``) share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

Q = TypeVar("Q")


def rx_round_robin(queues: Sequence[Q], start: int, rx: Callable[[Q], int]) -> tuple[int, int]:
    """One receive over several queues: ``rx(queue)`` on each in turn from ``start`` until one
    yields packets.  Returns (packets, where the next call starts): the queue after the one
    that had packets, so a busy queue cannot starve the others."""
    k = len(queues)
    for i in range(k):
        got = rx(queues[(start + i) % k])
        if got:
            return got, (start + i + 1) % k
    return 0, start
