"""The C loops sleep on their doorbell inside the call (mg_loop.h, ``ctl->sleep_until_ns``;
issues 13.6 and 14.5): a loop with nothing to do sleeps until Python's deadline and returns
MG_LOOP_DEADLINE then; work rung in meanwhile -- from another thread or another process --
is taken in the same call; once it moved a packet it returns at the next housekeeping tick
(``ctl->tick_ns``); an alert, a signal or the stop flag end the sleep at once."""

from __future__ import annotations

import signal
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
BUDGET = 1_000_000  # the actors' 1 ms busy budget: a sleep in the call is not bounded by it
S = 1_000_000_000


@pytest.fixture
def region():
    with scratch_region("s7cw-sleep", 1, 1024, 256, blob=BLOB) as r:
        yield r


def glue(r: Region):
    st = ffi.new("struct mg_steer *")
    mux = ffi.new("struct mg_mux *")
    check(lib.mg_steer_init(st, r.base, SLOT_STEERING, K0, K1), "steer init")
    check(lib.mg_mux_init(mux, r.base, SLOT_MUXER), "mux init")
    w = ffi.gc(lib.mg_worker_new(r.base, 0, 4096, K0, K1, 64, time.monotonic_ns()), lib.mg_worker_free)
    return st, mux, w


def sleep_ctl(bell: int, sleep_s: float, tick_s: float = 0.0, stop=ffi.NULL, budget_ns: int = BUDGET):
    now = time.monotonic_ns()
    return ffi.new("struct mg_loop_ctl *", {
        "budget_ns": budget_ns, "burst": 64, "bell": bell, "spin": 0, "stop": stop,
        "sleep_until_ns": now + int(sleep_s * S), "tick_ns": now + int(tick_s * S) if tick_s else 0})


def send(st, r: Region, n: int, seed: int = 11) -> int:
    """Steering's loop puts n generated packets on the worker's rx ring (and rings its bell)."""
    gen = GenNic(vip_targets(CFG), flows=50, seed=seed)
    src = ffi.new("struct mg_loop_gen *", {"gen": gen._g, "left": n, "deadline_ns": 0})
    out = ffi.new("struct mg_loop_out *")
    c = ffi.new("struct mg_loop_ctl *", {"budget_ns": 10 * S, "burst": 64})
    check(lib.mg_steer_loop(st, r.base, src, c, out), "steer loop")
    return int(out.packets)


def later(delay_s: float, fn) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay_s), fn()))
    t.start()
    return t


def test_an_idle_loop_sleeps_to_the_deadline_and_says_so(region):
    _, _, w = glue(region)
    c = sleep_ctl(worker_bell(0), 0.3)
    out = ffi.new("struct mg_loop_out *")
    t0, cpu0 = time.monotonic_ns(), time.thread_time()
    check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
    cpu = time.thread_time() - cpu0
    assert out.reason == lib.MG_LOOP_DEADLINE and out.packets == 0
    assert out.last_ns >= c.sleep_until_ns and time.monotonic_ns() >= c.sleep_until_ns
    assert time.monotonic_ns() - t0 < 3 * S
    assert out.sleeps >= 1 and out.wakes == 0
    assert region.bell(worker_bell(0)).stats()["sleeps"] >= 1  # on the futex, not polling
    assert cpu < 0.05  # asleep


def test_a_deadline_already_passed_returns_at_once(region):
    _, mux, _ = glue(region)
    c = sleep_ctl(int(lib.MG_BELL_MUXER), 0)
    c.sleep_until_ns = time.monotonic_ns() - 1
    out = ffi.new("struct mg_loop_out *")
    check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
    assert out.reason == lib.MG_LOOP_DEADLINE and out.sleeps == 0
    assert region.bell(int(lib.MG_BELL_MUXER)).stats()["sleeps"] == 0


def test_work_rung_in_from_a_thread_is_taken_in_the_same_call(region):
    """Woken by the packets, the worker moves them and sleeps again without returning; it
    returns at the tick (it moved packets), long before its idle deadline."""
    st, _, w = glue(region)
    # a 1 s busy budget: a cold first burst on a loaded machine can take over 1 ms (BUDGET)
    c = sleep_ctl(worker_bell(0), 20.0, tick_s=0.8, budget_ns=S)
    out = ffi.new("struct mg_loop_out *")
    sent: list[int] = []
    threads = [later(0.1, lambda: sent.append(send(st, region, 30))),
               later(0.4, lambda: sent.append(send(st, region, 20, seed=12)))]
    t0 = time.monotonic_ns()
    try:
        check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")  # cffi drops the GIL
    finally:
        for t in threads:
            t.join()
    took = time.monotonic_ns() - t0
    assert sent == [30, 20]
    assert out.packets == 50 and out.reason == lib.MG_LOOP_DEADLINE
    assert out.wakes >= 2 and out.sleeps >= 3  # asleep, woken, asleep, woken, asleep to the tick
    assert out.last_ns >= c.tick_ns and took < 10 * S  # the tick, not the 20 s deadline
    # what the worker moved is on its tx ring for the muxer
    assert region.tx(0).count() + region.ret(0).count() == 50


CHILD = r"""
import sys, time
from maglev.config import load_config
from maglev.native import check, ffi, lib
from maglev.nic.gen import GenNic, vip_targets
from maglev.rings import SLOT_STEERING, Region
cfg = load_config("")
k0, k1 = cfg.flow_hash_key
r = Region.attach(sys.argv[1])
st = ffi.new("struct mg_steer *")
check(lib.mg_steer_init(st, r.base, SLOT_STEERING, k0, k1), "steer init")
time.sleep(float(sys.argv[2]))
gen = GenNic(vip_targets(cfg), flows=50, seed=13)
src = ffi.new("struct mg_loop_gen *", {"gen": gen._g, "left": int(sys.argv[3]), "deadline_ns": 0})
out = ffi.new("struct mg_loop_out *")
c = ffi.new("struct mg_loop_ctl *", {"budget_ns": 10**10, "burst": 64})
check(lib.mg_steer_loop(st, r.base, src, c, out), "steer loop")
print(int(out.packets))
r.close()
"""


def test_work_rung_in_from_another_process_wakes_the_sleeping_loop(region):
    _, _, w = glue(region)
    c = sleep_ctl(worker_bell(0), 20.0, budget_ns=S)  # a cold first burst may take > 1 ms
    out = ffi.new("struct mg_loop_out *")
    child = subprocess.Popen([sys.executable, "-c", CHILD, region.name, "0.3", "40"],
                             stdout=subprocess.PIPE, text=True)
    try:
        # returns at the tick once it moved packets, else only at the 20 s deadline
        c.tick_ns = time.monotonic_ns() + S // 2
        check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
        assert child.wait(30) == 0
        assert child.stdout.read().strip() == "40"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert out.packets == 40 and out.wakes >= 1 and out.reason == lib.MG_LOOP_DEADLINE


def test_an_alert_ends_the_sleep_at_once_and_is_left_for_python(region):
    _, mux, _ = glue(region)
    c = sleep_ctl(int(lib.MG_BELL_MUXER), 20.0)
    out = ffi.new("struct mg_loop_out *")
    bell = region.bell(int(lib.MG_BELL_MUXER))
    t = later(0.1, bell.alert)
    t0 = time.monotonic()
    try:
        check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
    finally:
        t.join()
    assert time.monotonic() - t0 < 5.0
    assert out.reason == lib.MG_LOOP_BUDGET and out.sleeps >= 1  # Python's loop takes the alert
    assert bell.take_alert() == lib.MG_BELL_ALERT_STOP


def test_a_signal_ends_the_sleep_so_python_runs_its_handler(region):
    _, _, w = glue(region)
    seen: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda signum, _f: seen.append(signum))
    c = sleep_ctl(worker_bell(0), 20.0)
    out = ffi.new("struct mg_loop_out *")
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        t0 = time.monotonic()
        check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
        took = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert out.reason == lib.MG_LOOP_BUDGET and took < 5.0
    assert seen == [signal.SIGALRM]


def test_the_stop_flag_is_seen_before_and_after_a_sleep(region):
    _, mux, _ = glue(region)
    stop = ffi.new("uint32_t *", 1)
    c = sleep_ctl(int(lib.MG_BELL_MUXER), 20.0, stop=stop)
    out = ffi.new("struct mg_loop_out *")
    check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
    assert out.reason == lib.MG_LOOP_STOP and out.sleeps == 0
    stop[0] = 0
    bell = region.bell(int(lib.MG_BELL_MUXER))
    t = later(0.1, lambda: (stop.__setitem__(0, 1), bell.ring()))  # set, then wake it
    t0 = time.monotonic()
    try:
        check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
    finally:
        t.join()
    assert out.reason == lib.MG_LOOP_STOP and out.sleeps >= 1 and time.monotonic() - t0 < 5.0


def test_the_worker_sleeps_quiescent(region):
    """A sleeping worker holds no table generation: a publisher's grace period does not
    wait for it (mg_tables_quiesce before the sleep, as Worker.wait did)."""
    st, _, w = glue(region)
    assert send(st, region, 10) == 10
    c = sleep_ctl(worker_bell(0), 20.0, budget_ns=S)
    out = ffi.new("struct mg_loop_out *")
    done = threading.Event()
    published: list[float] = []

    def publish() -> None:
        time.sleep(0.2)
        t0 = time.monotonic()
        region.tables.publish(BLOB, [0], 5.0)  # waits for every worker to leave the old one
        published.append(time.monotonic() - t0)
        region.bell(worker_bell(0)).alert()  # then end the worker's call
        done.set()

    t = threading.Thread(target=publish)
    t.start()
    try:
        check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
    finally:
        t.join()
    region.bell(worker_bell(0)).take_alert()
    assert done.is_set() and out.packets == 10 and out.reason == lib.MG_LOOP_BUDGET
    assert published and published[0] < 2.0


def test_a_paced_generator_is_bounded_by_the_deadline_not_the_budget(region):
    """rate=500 with a 1 ms busy budget and a 0.3 s deadline: one call paces for 0.3 s.

    The busy budget starts again at each packet's due time; a thread kept off the CPU for
    over 1 ms right after one (a loaded machine: seen at load 25) ends that budget, and the
    call returns MG_LOOP_BUDGET early -- the actor then calls again at once
    (worker.BACK_AT_ONCE), so this test does the same and counts the calls.  Bounded by the
    budget (the bug), each call lasts ~1 ms: some 300 calls in 0.3 s."""
    st, _, _ = glue(region)
    gen = GenNic(vip_targets(CFG), flows=50, seed=14)
    t0 = time.monotonic_ns()
    src = ffi.new("struct mg_loop_gen *", {"gen": gen._g, "left": 2**64 - 1, "deadline_ns": 0,
                                           "rate": 500, "t0_ns": t0, "paced_from": 0})
    c = sleep_ctl(int(lib.MG_BELL_STEERING), 0.3)
    out = ffi.new("struct mg_loop_out *")
    calls, packets, reasons = 0, 0, []
    while calls < 1000:
        check(lib.mg_steer_loop(st, region.base, src, c, out), "steer loop")
        calls, packets = calls + 1, packets + out.packets
        reasons.append(int(out.reason))
        if out.reason != lib.MG_LOOP_BUDGET:
            break
    wall = (time.monotonic_ns() - t0) / S
    assert out.reason == lib.MG_LOOP_DEADLINE and wall >= 0.29, reasons
    assert calls <= 10, f"{calls} calls in {wall:.3f} s: the busy budget, not the deadline, ends them"
    assert 40 <= packets <= wall * 500 + 1  # ~150 due; never ahead of the pace
