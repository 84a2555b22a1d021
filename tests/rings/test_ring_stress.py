"""Two-process stress: a child produces stamped descriptors (and writes the sequence
number into the frame's metadata before submitting); this process consumes, verifying
order, descriptor content and frame content.  The consumer sleeps on its doorbell
whenever the ring is empty (with a 3 s timeout), so a lost wake-up shows up as a stall.
Bounded in count and time."""

from __future__ import annotations

import time

import pytest

from maglev.native import ffi
from maglev.rings import worker_bell

from .ringchild import FRAME_WORDS, SEQ_WORD, stamp

COUNT = 200_000
SECONDS = 20.0


@pytest.mark.parametrize(
    "burst,ring_size,count", [(1, 4, COUNT // 4), (64, 256, COUNT), (256, 1024, COUNT)]
)
def test_two_process_order_and_content(make_region, spawn, burst, ring_size, count):
    region = make_region(1, n_frames=2048, ring_size=ring_size)
    rx = region.rx(0)
    bell = region.bell(worker_bell(0))
    words = memoryview(ffi.buffer(region.pool_ptr, region.n_frames * 2048)).cast("Q")
    out = ffi.new("uint64_t[]", 256)
    child = spawn("produce", region.name, count, burst, SECONDS)
    seq = 0
    bad = []
    stalls = 0  # waits that ran to their full timeout while the producer was still going
    deadline = time.monotonic() + SECONDS + 5
    try:
        while seq < count and time.monotonic() < deadline:
            n = rx.peek(out, 256)
            if not n:
                t0 = time.monotonic()
                if not bell.wait(3000, spin=64) and time.monotonic() - t0 >= 2.9:
                    stalls += 1  # a lost wake-up would look exactly like this
                continue
            for i in range(n):
                d = out[i]
                f = d & 0xFFFFFFFF
                if d != stamp(seq, region.n_frames) or words[f * FRAME_WORDS + SEQ_WORD] != seq:
                    bad.append((seq, hex(d), words[f * FRAME_WORDS + SEQ_WORD]))
                seq += 1
            rx.release(n)
            if len(bad) > 10:
                break
    finally:
        del words
    res = child.result()
    assert not bad, bad[:10]
    assert stalls == 0
    assert res["produced"] == count and seq == count, (res, seq)
    assert rx.count() == 0
