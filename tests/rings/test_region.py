"""Region life cycle, layout, bad input, stats, heartbeats, accounting basics."""

from __future__ import annotations

import os

import pytest

from maglev.errors import MaglevError, NativeError
from maglev.native import ffi, lib
from maglev.rings import (
    BELL_MUXER,
    BELL_STEERING,
    SLOT_STEERING,
    SLOT_WORKER0,
    STATS_WORDS,
    Region,
    RegionError,
    worker_bell,
    worker_slot,
)


def test_create_puts_every_frame_on_the_free_ring(make_region):
    r = make_region(3, n_frames=1000, ring_size=64)
    assert (r.n_workers, r.n_frames, r.ring_size) == (3, 1000, 64)
    assert r.free.count() == 1000 and r.free.size == 1024
    assert sorted(r.free.snapshot()) == list(range(1000))
    for i in range(3):
        assert r.rx(i).count() == r.tx(i).count() == r.ret(i).count() == 0
    rep = r.account()
    assert rep.ok and rep.places["free"] == 1000, str(rep)
    assert os.stat(r.path).st_mode & 0o777 == 0o600


def test_frames_start_with_headroom_and_pool_is_addressable(make_region):
    r = make_region(1, n_frames=4)
    meta = ffi.cast("struct mg_frame_meta *", r.pool_ptr + 3 * lib.MG_FRAME_SIZE)
    assert meta.data_off == lib.MG_FRAME_HEADROOM and meta.backend_index == -1


def test_layout_is_page_aligned_and_lines_do_not_overlap(make_region):
    r = make_region(4, n_frames=100, ring_size=16)
    h = r._hdr
    offs = [h.pool_off, h.rings_off, h.free_ring_off, h.spare_rings_off, h.bells_off, h.hands_off, h.slots_off,
            h.stats_off, h.tables_off, h.tables_copy_off[0], h.tables_copy_off[1], h.total_size]
    assert offs == sorted(offs) and all(o % 4096 == 0 for o in offs)
    assert h.ring_stride % 64 == 0 and h.hand_stride % 64 == 0
    # ring ids: rx 0..N-1, tx N..2N-1, ret 2N..3N-1, sent 3N, free 3N+1, spare 3N+2..4N+1
    ids = [x.id for x in r.all_rings()]
    assert sorted(ids) == list(range(4 * 4 + 2))
    assert r.ring_by_id(r.tx(2).id) is r.tx(2)
    assert r.ring_by_id(r.spare(3).id) is r.spare(3) and r.spare(3).id == 4 * 4 + 1
    assert r.spare(0).size == lib.MG_SPARE_RING_SIZE and r.spare(0).bell is None


def test_attach_sees_the_same_memory(make_region):
    r = make_region(2, n_frames=64)
    with Region.attach(r.name) as a:
        assert (a.n_workers, a.n_frames, a.size) == (2, 64, r.size)
        assert a.rx(1).enqueue([5, 6], 2) == 2
        a.stats(SLOT_STEERING)[3] = 42
        a.set_heartbeat(worker_slot(1), 123)
        a.set_slot_pid(worker_slot(1))
        assert r.slot_pid(worker_slot(1)) == os.getpid() and r.slot_pid(0) == 0
    assert r.rx(1).snapshot() == [5, 6]
    assert r.stats(SLOT_STEERING)[3] == 42 and len(r.stats(SLOT_STEERING)) == STATS_WORDS
    assert r.heartbeat(SLOT_WORKER0 + 1) == 123 and r.heartbeat(0) == 0


def test_stats_blocks_do_not_overlap(make_region):
    r = make_region(2)
    for s in range(r.n_slots):
        r.stats(s)[STATS_WORDS - 1] = s + 1
        r.stats(s)[0] = 100 + s
    assert [r.stats(s)[STATS_WORDS - 1] for s in range(r.n_slots)] == list(range(1, r.n_slots + 1))


@pytest.mark.parametrize(
    "kw",
    [
        {"n_workers": 0},
        {"n_workers": 257},
        {"n_workers": -1},
        {"n_workers": 1.5},
        {"n_workers": 1, "n_frames": 0},
        {"n_workers": 1, "ring_size": 100},
        {"n_workers": 1, "ring_size": 1},
        {"n_workers": 1, "ring_size": 1 << 40},
        {"n_workers": 1, "tables_bytes": -5},
        {"n_workers": True},
    ],
)
def test_bad_sizes_are_refused_without_leaving_a_file(kw):
    name = f"test-bad-{os.getpid()}"
    with pytest.raises(RegionError):
        Region.create(name, **kw)
    assert not os.path.exists(f"/dev/shm/maglev-{name}")


@pytest.mark.parametrize("name", ["", "a/b", "../x", "x" * 65, "sp ace", None])
def test_bad_names_are_refused(name):
    with pytest.raises(RegionError, match="region name"):
        Region.create(name, 1)
    with pytest.raises(RegionError):
        Region.attach(name)


def test_create_twice_and_attach_missing(make_region):
    r = make_region(1)
    with pytest.raises(RegionError, match="already exists"):
        Region.create(r.name, 1)
    with pytest.raises(RegionError, match="does not exist"):
        Region.attach(r.name + "-nope")


def test_attach_refuses_a_file_that_is_not_a_region():
    name = f"test-junk-{os.getpid()}"
    path = f"/dev/shm/maglev-{name}"
    try:
        for content in (b"x" * 10, b"\0" * 8192, os.urandom(8192)):
            with open(path, "wb") as f:
                f.write(content)
            with pytest.raises(RegionError):
                Region.attach(name)
    finally:
        os.unlink(path)


def test_use_after_close_raises_instead_of_crashing(make_region):
    r = make_region(1)
    rx = r.rx(0)
    hand = r.hand(SLOT_STEERING)
    r.close()
    r.close()  # idempotent
    for call in (lambda: rx.enqueue([1], 1), rx.count, lambda: r.rx(0), hand.count,
                 lambda: r.stats(0), r.account, lambda: r.tables.current(),
                 lambda: r.bell(BELL_MUXER)):
        with pytest.raises(RegionError, match="closed"):
            call()
    assert isinstance(RegionError("x"), MaglevError)


def test_bad_indices_are_errors(make_region):
    r = make_region(2)
    for bad in (-1, 2, "0", None):
        with pytest.raises(RegionError):
            r.rx(bad)
    with pytest.raises(RegionError):
        r.stats(r.n_slots)
    with pytest.raises(RegionError):
        r.bell(worker_bell(2))
    with pytest.raises(RegionError):
        r.ring(9)
    with pytest.raises(NativeError):
        r.ring_by_id(100)
    assert r.bell(BELL_STEERING).stats()["sleeps"] == 0


def test_account_reports_leaks_duplicates_and_bad_indices(make_region):
    r = make_region(1, n_frames=16, ring_size=16)
    out = ffi.new("uint64_t[]", 16)
    assert r.free.dequeue(out, 4) == 4  # frames 0..3 now "in the test's hands"
    rep = r.account()
    assert not rep.ok and rep.missing == [0, 1, 2, 3]
    assert r.account({"nic": [0, 1, 2, 3]}).ok
    rep = r.account({"nic": [0, 1, 2, 3, 5]})
    assert rep.duplicates == {5: ["free", "nic"]} and "FAILED" in str(rep)
    rep = r.account({"nic": [0, 1, 2, 3, 99]})
    assert rep.invalid == {"nic": [99]}
    # the descriptor's upper 32 bits are the user's: accounting looks at the frame index
    assert r.account({"nic": [(7 << 32) | f for f in range(4)]}).ok


def test_ring_verbs_refuse_bad_buffers_and_counts(make_region):
    r = make_region(1, ring_size=16)
    rx = r.rx(0)
    small = ffi.new("uint64_t[]", 4)
    for call in (
        lambda: rx.enqueue(small, 5),  # would read past the array
        lambda: rx.dequeue(small, 5),  # would write past the array
        lambda: rx.peek(small, 5),
        lambda: rx.enqueue([1, 2], 3),
        lambda: rx.enqueue([-1], 1),
        lambda: rx.enqueue(["a"], 1),
        lambda: rx.enqueue(small, -1),
        lambda: rx.enqueue(small, 2.0),
        lambda: rx.dequeue([0] * 4, 4),
        lambda: rx.release(-1),
    ):
        with pytest.raises(RegionError):
            call()
    assert rx.count() == 0 and rx.free_count() == 16
    with pytest.raises(NativeError):
        rx.release(1)  # nothing peeked
    with pytest.raises(NativeError):
        rx.submit([1], 1)  # nothing reserved
    assert rx.enqueue(ffi.cast("uint64_t *", small), 4) == 4  # a pointer: caller vouches
