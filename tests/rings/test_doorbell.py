"""Doorbells: a sleeping consumer is woken by its producer, one doorbell serves several
input rings, producers skip the syscall when nobody sleeps, and an idle waiter uses
(almost) no CPU."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from maglev.native import ffi
from maglev.rings import BELL_MUXER, BELL_STEERING, RegionError, worker_bell


def _wait_until_asleep(region, bell: int, sleeps: int = 1, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while region.bell(bell).stats()["sleeps"] < sleeps:
        assert time.monotonic() < deadline, "the child never went to sleep on its doorbell"
        time.sleep(0.01)
    time.sleep(0.05)  # it is (about to be) inside futex_wait


@pytest.mark.parametrize(
    "bell,ring",
    [
        (worker_bell(1), lambda r: r.rx(1)),
        (BELL_MUXER, lambda r: r.tx(2)),  # muxer: one doorbell for every tx ring
        (BELL_STEERING, lambda r: r.ret(0)),  # steering: ret rings ...
        (BELL_STEERING, lambda r: r.sent),  # ... and the sent ring
    ],
)
def test_sleeping_consumer_in_another_process_is_woken(make_region, spawn, bell, ring):
    region = make_region(3)
    child = spawn("sleeper", region.name, bell, 5000, 8)
    _wait_until_asleep(region, bell)
    t_kick = time.monotonic()
    assert ring(region).enqueue([7], 1) == 1
    res = child.result()
    assert res["woke"] is not None
    latency = res["woke"] - t_kick
    assert 0 <= latency < 2.0, latency  # woken, not timed out (5 s)
    assert region.bell(bell).stats()["wakeups"] >= 1


def test_other_consumers_are_not_woken(make_region):
    region = make_region(2)
    result = {}

    def sleeper():
        result["got"] = region.bell(worker_bell(0)).wait(300, spin=0)

    t = threading.Thread(target=sleeper)
    t.start()
    _wait_until_asleep(region, worker_bell(0))
    region.rx(1).enqueue([1], 1)  # worker 1's ring: worker 0 must sleep on
    t.join(5)
    assert result["got"] is False
    assert region.bell(worker_bell(0)).stats()["wakeups"] == 0


def test_ring_wakes_unconditionally_and_wait_reports_no_work(make_region):
    region = make_region(1)
    result = {}

    def sleeper():
        t0 = time.monotonic()
        result["got"] = region.bell(BELL_MUXER).wait(5000, spin=0)
        result["slept"] = time.monotonic() - t0

    t = threading.Thread(target=sleeper)
    t.start()
    _wait_until_asleep(region, BELL_MUXER)
    region.bell(BELL_MUXER).ring()
    t.join(5)
    assert result["got"] is False and result["slept"] < 2.0


def test_busy_producer_makes_no_wake_syscalls(make_region):
    region = make_region(1, ring_size=64)
    rx = region.rx(0)
    out = ffi.new("uint64_t[]", 8)
    for _ in range(100):  # nobody sleeps: need_wakeup stays 0, no futex_wake
        assert rx.enqueue(list(range(8)), 8) == 8
        assert rx.dequeue(out, 8) == 8
    assert region.bell(worker_bell(0)).stats()["wakeups"] == 0


def test_wait_returns_at_once_when_work_is_there_and_times_out_otherwise(make_region):
    region = make_region(1)
    bell = region.bell(worker_bell(0))
    t0 = time.monotonic()
    assert bell.wait(0) is False  # spin only
    assert bell.wait(30, spin=0) is False
    assert 0.02 < time.monotonic() - t0 < 2.0
    region.rx(0).enqueue([3], 1)
    assert bell.wait(5000) is True
    with pytest.raises(RegionError):
        bell.wait(-1)


def test_idle_waiter_uses_almost_no_cpu(make_region, spawn):
    region = make_region(1)
    child = spawn("sleeper", region.name, worker_bell(0), 100, 2.5)
    _wait_until_asleep(region, worker_bell(0))
    proc = psutil.Process(child.proc.pid)
    c0 = proc.cpu_times()
    t0 = time.monotonic()
    time.sleep(1.0)
    c1 = proc.cpu_times()
    wall = time.monotonic() - t0
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    res = child.result()
    assert res["woke"] is None and res["waits"] >= 10
    # ~10 futex waits per second; a spinning waiter would show ~1.0 here
    assert cpu / wall < 0.05, f"idle waiter used {cpu / wall:.1%} of a core"


def test_each_ring_knows_its_consumers_doorbell(make_region):
    r = make_region(2)
    assert r.rx(1).bell.index == worker_bell(1)
    assert r.tx(0).bell.index == BELL_MUXER
    assert r.ret(1).bell.index == r.sent.bell.index == BELL_STEERING
    assert r.free.bell is None
    r.tx(1).enqueue([1], 1)
    assert r.tx(1).bell.wait(0) is True


def test_alert_wakes_a_sleeper_in_another_process_and_is_taken_once(make_region, spawn):
    region = make_region(2)
    bell = worker_bell(1)
    child = spawn("sleeper", region.name, bell, 5000, 8)
    _wait_until_asleep(region, bell)
    t_kick = time.monotonic()
    region.bell(bell).alert()
    res = child.result()
    assert res["woke"] is not None and 0 <= res["woke"] - t_kick < 2.0  # not the 5 s timeout
    b = region.bell(bell)
    # Pending until taken: every wait returns at once (the alert cannot be slept through) ...
    t0 = time.monotonic()
    assert b.wait(2000, spin=0) is True and b.wait(2000, spin=0) is True
    assert time.monotonic() - t0 < 1.0
    assert b.take_alert() == 1
    assert b.take_alert() == 0
    # ... and once taken, the doorbell sleeps again.
    assert b.wait(50, spin=0) is False
    assert region.bell(worker_bell(0)).take_alert() == 0  # other doorbells untouched


def test_an_alert_racing_with_the_sleep_is_never_lost(make_region):
    """The alerter sets the bits before bumping the futex word and the waiter re-checks
    them after reading it: an alert at any instant ends the wait well before its timeout."""
    region = make_region(1)
    b = region.bell(BELL_MUXER)
    late = []
    for i in range(300):
        t = threading.Timer(0.0005 * (i % 7), b.alert)
        t.start()
        t0 = time.monotonic()
        b.wait(2000, spin=0)
        waited = time.monotonic() - t0
        t.join()
        if waited > 1.0:
            late.append(waited)
        b.wait(0, spin=0)
        assert b.take_alert() == 1
    assert not late, f"{len(late)} alerts slept through: {late[:5]}"


def test_bad_alert_bits_are_refused(make_region):
    region = make_region(1)
    for bits in (0, -1, 2**32, 1.0, "1"):
        with pytest.raises(RegionError):
            region.bell(BELL_STEERING).alert(bits)
    assert region.bell(BELL_STEERING).take_alert() == 0
