"""The adaptive idle policy of the C loops (mg_loop.h): after the last packet an actor polls
its doorbell's rings for a window (PAUSE alone on a CPU, sched_yield when it shares one)
and only then returns MG_LOOP_IDLE to sleep; work that comes during the window is taken
inside the same call; an alert ends the poll; contention (something else ran on the CPU
between two looks) ends it at once and switches polling off for a while; a paced
generator sleeps on the clock between its packets instead of polling."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from maglev.config import load_config
from maglev.datapath.tables import build_tables
from maglev.native import check, ffi, lib
from maglev.nic.gen import GenNic, vip_targets
from maglev.rings import SLOT_MUXER, SLOT_STEERING, Region, worker_bell
from tests.region_helpers import scratch_region

CFG = load_config("")
K0, K1 = CFG.flow_hash_key
BLOB = build_tables(CFG)
BUDGET = 10**10  # 10 s: no call in these tests should reach it


@pytest.fixture
def region():
    with scratch_region("test-idle", 1, 1024, 256, blob=BLOB) as r:
        yield r


def glue(r: Region):
    st = ffi.new("struct mg_steer *")
    mux = ffi.new("struct mg_mux *")
    check(lib.mg_steer_init(st, r.base, SLOT_STEERING, K0, K1), "steer init")
    check(lib.mg_mux_init(mux, r.base, SLOT_MUXER), "mux init")
    w = ffi.gc(lib.mg_worker_new(r.base, 0, 4096, K0, K1, 64, time.monotonic_ns()), lib.mg_worker_free)
    return st, mux, w


def idle_ctl(idle_ms: float, mode: int, bell: int, gap_us: int = 0, budget_ns: int = BUDGET):
    state = ffi.new("struct mg_idle_state *")
    c = ffi.new("struct mg_loop_ctl *", {
        "budget_ns": budget_ns, "burst": 64, "idle_ns": int(idle_ms * 1e6), "idle": state,
        "idle_mode": mode, "bell": bell, "idle_gap_us": gap_us})
    return c, state


def send(st, r: Region, n: int) -> int:
    """Steering's loop puts n generated packets on the worker's rx ring."""
    gen = GenNic(vip_targets(CFG), flows=50, seed=11)
    src = ffi.new("struct mg_loop_gen *", {"gen": gen._g, "left": n, "deadline_ns": 0})
    out = ffi.new("struct mg_loop_out *")
    c = ffi.new("struct mg_loop_ctl *", {"budget_ns": BUDGET, "burst": 64})
    check(lib.mg_steer_loop(st, r.base, src, c, out), "steer loop")
    return int(out.packets)


def test_without_recent_work_the_loop_returns_idle_at_once(region):
    _, _, w = glue(region)
    c, state = idle_ctl(5000, lib.MG_IDLE_PAUSE, worker_bell(0))  # 5 s window ...
    out = ffi.new("struct mg_loop_out *")
    t0 = time.monotonic()
    check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
    assert out.reason == lib.MG_LOOP_IDLE and out.packets == 0
    assert time.monotonic() - t0 < 2.0  # ... but no packet moved for longer than that: none
    assert region.bell(worker_bell(0)).stats()["sleeps"] == 0  # the loop never sleeps itself


@pytest.mark.parametrize("mode", ["MG_IDLE_PAUSE", "MG_IDLE_YIELD"])
def test_the_window_after_the_last_packet_is_polled_then_idle(region, mode):
    st, _, w = glue(region)
    assert send(st, region, 100) == 100
    c, state = idle_ctl(30, getattr(lib, mode), worker_bell(0), gap_us=10**9)  # no contention exit
    out = ffi.new("struct mg_loop_out *")
    check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
    assert out.reason == lib.MG_LOOP_IDLE and out.packets == 100
    last = state.last_work_ns
    assert last > 0
    assert out.last_ns >= last + 30_000_000  # polled the whole window after the last packet
    # the next call starts where the window ended: idle at once
    t0 = time.monotonic_ns()
    check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
    assert out.reason == lib.MG_LOOP_IDLE and out.packets == 0 and state.last_work_ns == last
    assert time.monotonic_ns() - t0 < 1_000_000_000


def test_work_during_the_window_is_taken_in_the_same_call(region):
    st, _, w = glue(region)
    assert send(st, region, 10) == 10
    c, state = idle_ctl(1000, lib.MG_IDLE_YIELD, worker_bell(0), gap_us=10**9)
    out = ffi.new("struct mg_loop_out *")
    sent = []
    t = threading.Thread(target=lambda: (time.sleep(0.2), sent.append(send(st, region, 50))))
    t.start()
    try:
        check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")  # cffi drops the GIL
    finally:
        t.join()
    assert sent == [50]
    assert out.packets == 60 and out.reason == lib.MG_LOOP_IDLE  # one call: 10, poll, 50, poll
    assert out.bursts >= 2


def test_an_alert_ends_the_poll_and_is_left_for_python(region):
    _, mux, _ = glue(region)
    c, state = idle_ctl(10_000, lib.MG_IDLE_PAUSE, int(lib.MG_BELL_MUXER), gap_us=10**9)
    state.last_work_ns = time.monotonic_ns()  # as if a packet just went: a 10 s window
    out = ffi.new("struct mg_loop_out *")
    bell = region.bell(int(lib.MG_BELL_MUXER))
    t = threading.Thread(target=lambda: (time.sleep(0.1), bell.alert()))
    t.start()
    t0 = time.monotonic()
    try:
        check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
    finally:
        t.join()
    assert time.monotonic() - t0 < 5.0
    assert out.reason == lib.MG_LOOP_BUDGET  # Python's loop then takes the alert
    assert bell.take_alert() == lib.MG_BELL_ALERT_STOP


def test_contention_stops_polling_and_backs_off(region):
    """A busy process on the same CPU: the first sched_yield hands it the CPU for a slice,
    the gap between two looks exceeds MG_IDLE_GAP_NS, the poll ends at once and the next
    calls do not poll for MG_IDLE_BACKOFF_NS; meeting contention again doubles that."""
    _, mux, _ = glue(region)
    cpu = min(os.sched_getaffinity(0))
    old = os.sched_getaffinity(0)
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\n"
                            "import time; t = time.monotonic() + 30\nwhile time.monotonic() < t: pass"])
    try:
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.2)  # the hog is pinned and spinning
        c, state = idle_ctl(10_000, lib.MG_IDLE_YIELD, int(lib.MG_BELL_MUXER))
        state.last_work_ns = time.monotonic_ns()
        out = ffi.new("struct mg_loop_out *")
        t0 = time.monotonic()
        check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
        assert out.reason == lib.MG_LOOP_IDLE and state.contended == 1
        assert time.monotonic() - t0 < 5.0  # not the 10 s window
        assert state.backoff_until_ns >= out.last_ns + lib.MG_IDLE_BACKOFF_NS - 1
        check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")  # backing off: no poll
        assert out.reason == lib.MG_LOOP_IDLE and state.contended == 1
        state.backoff_until_ns = 0  # as if the back-off had passed: contention again doubles it
        state.last_work_ns = time.monotonic_ns()
        check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
        assert state.contended == 2 and state.backoff_ns == 2 * lib.MG_IDLE_BACKOFF_NS
    finally:
        os.sched_setaffinity(0, old)
        hog.kill()
        hog.wait()


def test_a_paced_generator_sleeps_between_packets_in_the_loop(region):
    """rate=500 for 0.3 s in one steering call: the packets that were due and no more,
    and the thread slept (its CPU time is a fraction of the wall time)."""
    st, _, w = glue(region)
    gen = GenNic(vip_targets(CFG), flows=50, seed=12)
    t0 = time.monotonic_ns()
    src = ffi.new("struct mg_loop_gen *", {"gen": gen._g, "left": 2**64 - 1, "deadline_ns": 0,
                                           "rate": 500, "t0_ns": t0, "paced_from": 0})
    c, _ = idle_ctl(0.2, lib.MG_IDLE_YIELD, int(lib.MG_BELL_STEERING), budget_ns=300_000_000)
    out = ffi.new("struct mg_loop_out *")
    cpu0 = time.thread_time()
    check(lib.mg_steer_loop(st, region.base, src, c, out), "steer loop")
    cpu = time.thread_time() - cpu0
    wall = (time.monotonic_ns() - t0) / 1e9
    assert out.reason == lib.MG_LOOP_BUDGET
    assert 0 < out.packets <= wall * 500 + 1  # never ahead of the pace
    assert out.packets >= 40  # about 150 due; a loaded machine may lag
    assert cpu < 0.5 * wall


def nap_ctl(nap_ms: float, bell: int, budget_ns: int = BUDGET, stop=ffi.NULL):
    state = ffi.new("struct mg_idle_state *")
    c = ffi.new("struct mg_loop_ctl *", {
        "budget_ns": budget_ns, "burst": 64, "idle": state, "bell": bell, "stop": stop,
        "nap_ns": int(nap_ms * 1e6)})
    return c, state


def when_napping(state, then) -> threading.Thread:
    """A thread that waits until the loop has started its first nap (``napping`` is set just
    before the sleep), then calls ``then``: no guess of how long the loop takes to get there."""
    def run() -> None:
        deadline = time.monotonic() + 30
        while not state.napping and time.monotonic() < deadline:
            time.sleep(0.001)
        then()
    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_heavy_stretch_naps_on_the_clock_and_its_producer_wakes_no_one(region):
    """Nap under load (mg_loop.h): after >= MG_NAP_MIN packets the worker finds its ring
    empty, sleeps on the clock with need_wakeup clear, takes what came meanwhile in the same
    call (a quarter of MG_NAP_MIN keeps it napping), and returns to sleep on the doorbell
    only after a stretch below that (a trickle, here none)."""
    st, _, w = glue(region)
    assert send(st, region, 100) == 100  # a stretch above MG_NAP_MIN (64)
    bell = region.bell(worker_bell(0))
    wakes0 = bell.stats()["wakeups"]
    c, state = nap_ctl(500, worker_bell(0))
    out = ffi.new("struct mg_loop_out *")
    sent = []
    t0 = time.monotonic()
    t = when_napping(state, lambda: sent.append(send(st, region, 50)))
    try:
        check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")  # cffi drops the GIL
    finally:
        t.join()
    took = time.monotonic() - t0
    assert sent == [50]
    # 100, nap (the 50 come meanwhile), 50 >= MG_NAP_MIN / 4: nap again, nothing: idle
    assert (out.packets, out.reason, state.naps, state.stretch, state.napping) == (150, lib.MG_LOOP_IDLE, 2, 0, 0)
    assert 0.9 <= took < 10.0  # the two naps of 0.5 s, not more
    assert bell.stats()["wakeups"] == wakes0 and bell.stats()["sleeps"] == 0  # no futex either way
    rep = region.account()
    assert rep.ok, str(rep)


def test_a_trickle_does_not_nap(region):
    st, _, w = glue(region)
    assert send(st, region, 10) == 10  # below MG_NAP_MIN
    c, state = nap_ctl(5000, worker_bell(0))  # a nap would take 5 s
    out = ffi.new("struct mg_loop_out *")
    t0 = time.monotonic()
    check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
    assert (out.packets, out.reason, state.naps) == (10, lib.MG_LOOP_IDLE, 0)
    assert time.monotonic() - t0 < 2.0
    c.nap_min = 5  # a lower threshold (ctl->nap_min): the same 10 packets are a heavy stretch
    c.budget_ns = 50_000_000
    assert send(st, region, 10) == 10
    check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
    assert (out.packets, state.naps) == (10, 1)


def test_a_nap_ends_at_the_deadline_and_on_stop_and_leaves_an_alert_for_python(region):
    st, mux, w = glue(region)
    out = ffi.new("struct mg_loop_out *")
    # the deadline: a 10 s nap cut to the 100 ms budget
    assert send(st, region, 100) == 100
    c, state = nap_ctl(10_000, worker_bell(0), budget_ns=100_000_000)
    t0 = time.monotonic()
    check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
    assert (out.packets, out.reason, state.naps) == (100, lib.MG_LOOP_BUDGET, 1)
    assert time.monotonic() - t0 < 5.0
    # a pending alert is not work: the muxer moves its 100 packets, naps, then sees the
    # alert and leaves it for Python (MG_LOOP_BUDGET)
    bell = region.bell(int(lib.MG_BELL_MUXER))
    bell.alert()
    c, state = nap_ctl(20, int(lib.MG_BELL_MUXER))
    check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
    assert (out.packets, out.reason, state.naps) == (100, lib.MG_LOOP_BUDGET, 1)
    assert bell.take_alert() == lib.MG_BELL_ALERT_STOP
    # the stop flag, set while the loop naps: MG_LOOP_STOP when the nap ends
    for _ in range(2):
        check(lib.mg_steer_reclaim(st, region.base), "reclaim")
    assert send(st, region, 100) == 100
    stop = ffi.new("uint32_t *", 0)
    c, state = nap_ctl(500, worker_bell(0), stop=stop)
    t = when_napping(state, lambda: stop.__setitem__(0, 1))
    try:
        check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
    finally:
        t.join()
    assert (out.packets, out.reason, state.naps) == (100, lib.MG_LOOP_STOP, 1)
    rep = region.account()
    assert rep.ok, str(rep)
