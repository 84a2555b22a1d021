"""The round-robin receive both multi-queue drivers (afpacket queues=N, afxdp) use."""

from __future__ import annotations

from maglev.nic.multiqueue import rx_round_robin


def test_starts_after_the_queue_that_last_had_packets():
    pending = [[], [5], [7, 8]]  # packets waiting per queue
    seen: list[int] = []

    def rx(q: int) -> int:
        seen.append(q)
        return pending[q].pop(0) if pending[q] else 0

    got, nxt = rx_round_robin([0, 1, 2], 0, rx)
    assert (got, nxt, seen) == (5, 2, [0, 1])
    seen.clear()
    got, nxt = rx_round_robin([0, 1, 2], nxt, rx)
    assert (got, nxt, seen) == (7, 0, [2])  # queue 2 next, not queue 1 again
    seen.clear()
    got, nxt = rx_round_robin([0, 1, 2], nxt, rx)
    assert (got, nxt, seen) == (8, 0, [0, 1, 2])
    seen.clear()
    assert rx_round_robin([0, 1, 2], nxt, rx) == (0, 0) and seen == [0, 1, 2]  # all empty: start kept


def test_no_queue_receives_nothing():
    assert rx_round_robin([], 0, lambda q: 1) == (0, 0)
