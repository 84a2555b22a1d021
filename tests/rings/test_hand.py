"""Hands: pull/push semantics, and that no frame is lost or duplicated when the owner
dies at any step of a move (fault injection at every step, and real SIGKILLs)."""

from __future__ import annotations

import random
import signal
import time

import pytest

from maglev.errors import NativeError
from maglev.native import ffi, lib
from maglev.rings import HAND_KEEP, HAND_MAX, SLOT_STEERING, RegionError, worker_slot


@pytest.fixture
def fault():
    """Set the C fault-injection step for one move; always reset."""
    try:
        yield lambda step: setattr(lib, "mg_hand_fault_at", step)
    finally:
        lib.mg_hand_fault_at = 0


def test_pull_push_keep_order_and_leftovers(make_region):
    r = make_region(2, n_frames=64, ring_size=4)
    h = r.hand(SLOT_STEERING)
    assert h.pull(r.free, 10) == 10 and h.descs() == list(range(10))
    # rx(0) holds 4: frames 0,2,4,6 go, 8 stays; odd ones to rx(1): 1,3,5,7 go, 9 stays
    dest = [r.rx(d % 2).id for d in range(10)]
    assert h.push(dest) == 8
    assert h.descs() == [8, 9]
    assert r.rx(0).snapshot() == [0, 2, 4, 6] and r.rx(1).snapshot() == [1, 3, 5, 7]
    assert h.pull(r.free, 3) == 3 and h.descs() == [8, 9, 10, 11, 12]  # appended after leftovers
    assert h.push([HAND_KEEP, r.free.id, HAND_KEEP, r.free.id, r.free.id]) == 3
    assert h.descs() == [8, 10]
    assert r.account().ok


def test_hand_capacity_and_empty_ring(make_region):
    r = make_region(1, n_frames=HAND_MAX + 100, ring_size=4)
    h = r.hand(SLOT_STEERING)
    assert h.pull(r.rx(0), 10) == 0  # empty ring: nothing, no error
    assert h.pull(r.free, HAND_MAX + 50) == HAND_MAX
    assert h.pull(r.free, 10) == 0  # hand full
    assert r.account().ok


def test_bad_push_changes_nothing(make_region):
    r = make_region(1, n_frames=16)
    h = r.hand(SLOT_STEERING)
    h.pull(r.free, 4)
    before = (h.descs(), r.rx(0).snapshot(), r.rx(0).free_count())
    for dest in ([r.rx(0).id] * 3, [r.rx(0).id] * 5, [r.rx(0).id, 999, 0, 0]):
        with pytest.raises(NativeError):
            h.push(dest)
        assert (h.descs(), r.rx(0).snapshot(), r.rx(0).free_count()) == before
    for bad in ([70000] * 4, [-1] * 4, ["x"] * 4):
        with pytest.raises(RegionError):
            h.push(bad)
    with pytest.raises(RegionError):
        h.pull("free", 1)
    # a ring with someone else's unsubmitted reservation is refused, ours rolled back
    r.tx(0).reserve(1)
    with pytest.raises(NativeError):
        h.push([r.rx(0).id, r.rx(0).id, r.tx(0).id, r.tx(0).id])
    assert (h.descs(), r.rx(0).snapshot(), r.rx(0).free_count()) == before
    r.tx(0).reset_producer()
    assert r.account().ok


@pytest.mark.parametrize(
    "step,in_hand_after",
    [
        (1, 0),  # pull: journal flipped, ring not released -> frames still in the ring
        (2, 6),  # pull: ring released -> frames in the hand
    ],
)
def test_owner_dies_during_pull(make_region, fault, step, in_hand_after):
    r = make_region(1, n_frames=32)
    feeder = r.hand(SLOT_STEERING)
    feeder.pull(r.free, 6)
    feeder.push([r.rx(0).id] * 6)
    w = r.hand(worker_slot(0))
    fault(step)
    with pytest.raises(NativeError):
        w.pull(r.rx(0), 6)
    fault(0)
    with pytest.raises(NativeError):  # unsettled journal: refuse to move on
        w.pull(r.rx(0), 6)
    assert r.account().ok, str(r.account())  # accounting settles without writing
    got = w.recover()
    assert len(got) == in_hand_after and r.rx(0).count() == 6 - in_hand_after
    assert w.recover() == got  # idempotent
    r.rx(0).reset_consumer()  # the replacement takes over the ring
    assert w.pull(r.rx(0), 10) == 6 - in_hand_after
    assert w.count() == 6 and r.account().ok


@pytest.mark.parametrize("step", [11, 12, 13])
def test_owner_dies_during_push(make_region, fault, step):
    r = make_region(1, n_frames=32, ring_size=4)
    w = r.hand(worker_slot(0))
    w.pull(r.free, 10)
    w.push([HAND_KEEP] * 10)  # frames 0..9 in worker 0's hand (a test shortcut)
    # 0..3 -> tx (fits 4), 4 -> tx (no room), 5..8 -> ret, 9 kept; tx is submitted first
    dest = [r.tx(0).id] * 5 + [r.ret(0).id] * 4 + [HAND_KEEP]
    fault(step)
    with pytest.raises(NativeError):
        w.push(dest)
    fault(0)
    assert r.account().ok, str(r.account())
    got = sorted(w.recover())
    expect = {
        11: list(range(10)),  # nothing submitted
        12: [4, 5, 6, 7, 8, 9],  # tx submitted, ret not
        13: [4, 9],  # both submitted: 4 did not fit in tx, 9 was kept
    }[step]
    assert got == expect
    r.tx(0).reset_producer()
    r.ret(0).reset_producer()
    assert r.account().ok
    w.push([r.free.id] * len(got))
    assert w.count() == 0 and r.account().ok


def test_worker_killed_at_random_moments_never_loses_a_frame(make_region, spawn):
    """This process plays steering + muxer with plain ring verbs; a child plays worker 0
    with its hand.  The child is SIGKILLed at random moments; its replacement settles
    the hand, hands the frames back as drops, and the pool must be whole every time."""
    rng = random.Random(4)
    r = make_region(1, n_frames=512, ring_size=64)
    free, rx, tx, ret = r.free, r.rx(0), r.tx(0), r.ret(0)
    buf = ffi.new("uint64_t[]", 64)
    held: list[int] = []  # frames this process holds between free and rx(0)
    hand = r.hand(worker_slot(0))
    total_moved = 0
    for round_no in range(5):
        child = spawn("churn", r.name, 10.0)
        assert child.line()["ready"]
        t_end = time.monotonic() + rng.uniform(0.05, 0.4)
        while time.monotonic() < t_end:
            if len(held) < 64:
                n = free.dequeue(buf, 64 - len(held))
                held += ffi.unpack(buf, n)
            if held:
                k = rx.enqueue(held, len(held))
                held = held[k:]
            for ring in (tx, ret):
                n = ring.dequeue(buf, 64)
                total_moved += n
                assert free.enqueue(buf, n) == n
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait(10)
        rep = r.account({"steering": held})
        assert rep.ok, f"round {round_no}: {rep}"
        # the replacement: settle the journal, take over the rings, drop what it held
        got = hand.recover()
        rx.reset_consumer()
        tx.reset_producer()
        ret.reset_producer()
        while hand.count():  # ret(0) may be smaller than the hand: steering drains it
            hand.push([ret.id] * hand.count())
            n = ret.dequeue(buf, 64)
            assert free.enqueue(buf, n) == n
            assert r.account({"steering": held}).ok
        assert len(got) <= 128
    # drain everything back to the free list: the pool is whole
    free.enqueue(held, len(held))
    for ring in (rx, tx, ret):
        while n := ring.dequeue(buf, 64):
            free.enqueue(buf, n)
    assert free.count() == 512 and sorted(free.snapshot()) == list(range(512))
    assert total_moved > 0


def test_push_all_is_push_with_one_destination(make_region, fault):
    """mg_hand_push_all (the muxer's and reclaim's push): what push with every entry to one
    ring does -- what fits goes in order, the rest stays; the same journal on a crash."""
    from maglev.native import check

    r = make_region(1, n_frames=32, ring_size=4)
    h = r.hand(SLOT_STEERING)
    h.pull(r.free, 6)
    assert check(lib.mg_hand_push_all(r.base, SLOT_STEERING, r.rx(0).id), "push_all") == 4
    assert r.rx(0).snapshot() == [0, 1, 2, 3] and h.descs() == [4, 5]
    assert lib.mg_hand_push_all(r.base, SLOT_STEERING, HAND_KEEP) < 0  # keep is no ring
    assert lib.mg_hand_push_all(r.base, SLOT_STEERING, 999) < 0
    assert h.descs() == [4, 5] and r.account().ok
    fault(12)  # dies after the submit: the frames are on free, the hand is empty
    assert lib.mg_hand_push_all(r.base, SLOT_STEERING, r.free.id) < 0
    fault(0)
    assert r.account().ok
    assert h.recover() == [] and r.account().ok
    r.free.reset_producer()
    assert check(lib.mg_hand_push_all(r.base, SLOT_STEERING, r.free.id), "empty hand") == 0
