"""Table publication: double buffer, generations, quiescent-state reclamation, across
processes."""

from __future__ import annotations

import time

import pytest

from maglev.errors import MaglevError
from maglev.native import lib
from maglev.rings import RegionError, TablesBusyError

from .ringchild import table_blob


def test_nothing_published_yet(make_region):
    r = make_region(2)
    assert r.tables.generation() == 0
    assert r.tables.current() == (0, b"")
    assert r.tables.acquire(0) == (0, b"")
    assert r.tables.seen(0) == 0  # acquiring generation 0 is reported too


def test_publish_then_acquire_and_alternate_copies(make_region):
    r = make_region(2)
    for g in range(1, 6):
        blob = table_blob(g, 100 + g)
        assert r.tables.publish(blob, [0, 1], timeout=1.0) == g
        assert r.tables.current() == (g, blob)
        for w in (0, 1):
            assert r.tables.acquire(w) == (g, blob)
            assert r.tables.seen(w) == g
    base = r.base
    assert lib.mg_tables_copy(base, 0) != lib.mg_tables_copy(base, 1)


def test_lagging_worker_blocks_reuse_and_nothing_changes(make_region):
    r = make_region(2)
    r.tables.publish(b"one", [0, 1], 1.0)
    r.tables.acquire(0)
    r.tables.acquire(1)
    r.tables.publish(b"two", [0, 1], 1.0)  # both saw 1: copy of generation 0 is free
    r.tables.acquire(0)  # worker 1 still uses generation 1 (copy 1)
    t0 = time.monotonic()
    with pytest.raises(TablesBusyError) as exc:
        r.tables.publish(b"three", [0, 1], timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 2.0
    assert exc.value.laggards == {1: 1} and isinstance(exc.value, MaglevError)
    assert "worker 1 at 1" in str(exc.value)
    assert r.tables.current() == (2, b"two")
    assert bytes(lib.mg_tables_copy(r.base, 1)[0:3]) == b"one"  # untouched
    # worker 1 is declared dead: excluded, publication proceeds
    assert r.tables.publish(b"three", [0], timeout=0.2) == 3
    # its replacement quiesces first, then reports in normally
    r.tables.quiesce(1)
    assert r.tables.acquire(1) == (3, b"three")


def test_idle_worker_does_not_block(make_region):
    r = make_region(1)
    r.tables.publish(b"a", [0], 1.0)
    r.tables.acquire(0)
    r.tables.quiesce(0)  # going to sleep on its doorbell
    for g in (2, 3, 4):
        assert r.tables.publish(b"x", [0], 0.1) == g


def test_bad_input(make_region):
    r = make_region(2, tables_bytes=64)
    with pytest.raises(RegionError, match="exceeds"):
        r.tables.publish(b"x" * 65, [0, 1], 0.1)
    with pytest.raises(RegionError):
        r.tables.publish(b"x", [0, 2], 0.1)
    with pytest.raises(RegionError):
        r.tables.acquire(-1)
    assert r.tables.generation() == 0
    assert r.tables.publish(b"x" * 64, [0, 1], 0.1) == 1
    assert r.tables.publish(b"", [], 0.1) == 2 and r.tables.current() == (2, b"")
    assert lib.mg_tables_commit(r.base, 7, 1) < 0  # generations only move by one


def test_readers_in_other_processes_never_see_a_copy_change_under_them(make_region, spawn):
    r = make_region(2, tables_bytes=1 << 16)
    size = 8192
    r.tables.publish(table_blob(1, size), [0, 1], 1.0)
    kids = [spawn("tables", r.name, w, 2.0) for w in (0, 1)]
    published = 1
    busy = 0
    # Publish until every reader has finished its 2 s (each quiesces when done, so a
    # finished one never blocks): a reader that starts late on a loaded machine must still
    # see generations change.  Bounded: the readers stop 2 s after they start.
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and any(k.proc.poll() is None for k in kids):
        try:
            published = r.tables.publish(table_blob(published + 1, size), [0, 1], 0.5)
        except TablesBusyError:
            busy += 1
    results = [k.result() for k in kids]
    assert published > 5, (published, busy, results)
    for res in results:
        assert res["errors"] == 0, res
        assert res["checks"] > 0 and res["generations"] > 1, res


def test_slow_worker_in_another_process_blocks_reuse_until_it_reports(make_region, spawn):
    r = make_region(1)
    r.tables.publish(table_blob(1, 512), [0], 1.0)
    child = spawn("hold", r.name, 0)
    assert child.line()["acquired"] == 1
    assert r.tables.publish(table_blob(2, 512), [0], 1.0) == 2
    with pytest.raises(TablesBusyError):
        r.tables.publish(table_blob(3, 512), [0], 0.2)  # would overwrite the child's copy
    child.proc.stdin.write("go\n")
    child.proc.stdin.flush()
    assert r.tables.publish(table_blob(3, 512), [0], 5.0) == 3
    assert child.result() == {"first": 1, "second": 2}


def test_bad_worker_lists_and_generations(make_region):
    r = make_region(2)
    for live in ([0, "1"], [None], [0, 1.0], [True]):
        with pytest.raises(RegionError):
            r.tables.publish(b"x", live, 0.1)
        with pytest.raises(RegionError):
            r.tables.wait_all_seen(0, live, 0.1)
    for gen in (-1, 2**64, "1"):
        with pytest.raises(RegionError):
            r.tables.wait_all_seen(gen, [0], 0.1)
    assert r.tables.generation() == 0
    assert r.tables.publish(b"x", [0, 0, 1], 0.1) == 1  # duplicates are harmless
