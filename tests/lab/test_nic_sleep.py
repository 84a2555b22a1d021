"""Steering's NIC loop sleeps inside the call (mg_steer_loop_nic with ctl->sleep_until_ns,
2026-12-07 session 7): ppoll() on the AF_PACKET socket and the doorbell's pipe
(mg_bellpipe), returns at the deadline, takes frames that arrive meanwhile in the same
call, and an alert raised while it sleeps reaches it through the pipe's helper thread."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from maglev.actors.steering import _BellPipe
from maglev.config import load_config
from maglev.datapath.tables import build_tables
from maglev.lab.nsenter import netns as in_netns
from maglev.native import check, ffi, lib
from maglev.nic.afpacket import AfPacketNic
from maglev.rings import BELL_STEERING, SLOT_STEERING
from maglev.testing import packets as P
from tests.nic_helpers import veth_pair
from tests.region_helpers import scratch_region

pytestmark = pytest.mark.root

CFG = load_config("")
K0, K1 = CFG.flow_hash_key
MAC_A = bytes.fromhex("020000000a0a")
MAC_B = bytes.fromhex("020000000b0b")
A_IP, B_IP, VIP = "198.18.9.1", "198.18.9.2", "203.0.113.10"
S = 1_000_000_000


def frame(i: int) -> bytes:
    return P.eth(P.ipv4(A_IP, VIP, P.UDP, P.udp(1024 + i, 53, struct.pack("!I", i) * 8, src=A_IP, dst=VIP)),
                 dst=MAC_B, src=MAC_A)


@pytest.fixture
def rig(netns):
    """(region, steering, loop source with the bell pipe, the pipe, a sender on a0)."""
    _, a, b = veth_pair(netns, (MAC_A, MAC_B), (A_IP, B_IP))
    with scratch_region("s7cw-nic", 1, 1024, 256, blob=build_tables(CFG)) as r:
        with in_netns(b.name):
            nic = AfPacketNic("b0")
        with in_netns(a.name):
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        tx.bind(("a0", 0))
        st = ffi.new("struct mg_steer *")
        check(lib.mg_steer_init(st, r.base, SLOT_STEERING, K0, K1), "steer init")
        src = nic.nic_loop_rx()
        pipe = _BellPipe(r, r.bell(BELL_STEERING), name="s7cw-bell")
        src.ptr.pipe = pipe.ptr
        try:
            yield r, st, src, pipe, tx
        finally:
            pipe.close()
            tx.close()
            nic.close()


def ctl(sleep_s: float, tick_s: float = 0.0, budget_ns: int = 1_000_000):
    now = time.monotonic_ns()
    return ffi.new("struct mg_loop_ctl *", {
        "budget_ns": budget_ns, "burst": 64, "bell": int(lib.MG_BELL_STEERING), "spin": 0,
        "sleep_until_ns": now + int(sleep_s * S), "tick_ns": now + int(tick_s * S) if tick_s else 0})


def later(delay_s: float, fn) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay_s), fn()))
    t.start()
    return t


def test_an_empty_nic_sleeps_to_the_deadline(rig):
    r, st, src, _, _ = rig
    c = ctl(0.3)
    out = ffi.new("struct mg_loop_out *")
    cpu0 = time.thread_time()
    check(lib.mg_steer_loop_nic(st, r.base, src.ptr, c, out), "steer loop")
    cpu = time.thread_time() - cpu0
    assert out.reason == lib.MG_LOOP_DEADLINE and out.packets == 0
    assert out.last_ns >= c.sleep_until_ns and out.sleeps >= 1
    assert cpu < 0.05  # asleep in ppoll


def test_frames_arriving_while_it_sleeps_are_taken_in_the_same_call(rig):
    r, st, src, _, tx = rig
    c = ctl(20.0, tick_s=1.0, budget_ns=S)  # returns at the tick once it moved packets
    out = ffi.new("struct mg_loop_out *")

    def send(first: int, n: int) -> None:
        for i in range(first, first + n):
            tx.send(frame(i))

    threads = [later(0.1, lambda: send(0, 40)), later(0.5, lambda: send(40, 30))]
    t0 = time.monotonic()
    try:
        check(lib.mg_steer_loop_nic(st, r.base, src.ptr, c, out), "steer loop")  # cffi drops the GIL
    finally:
        for t in threads:
            t.join()
    assert out.packets == 70 and out.reason == lib.MG_LOOP_DEADLINE
    assert out.wakes >= 2 and time.monotonic() - t0 < 10
    assert r.rx(0).count() == 70  # dispatched to the worker's ring in that call


def test_an_alert_reaches_the_sleeping_loop_through_the_pipe(rig):
    r, st, src, pipe, _ = rig
    bell = r.bell(BELL_STEERING)
    c = ctl(20.0)
    out = ffi.new("struct mg_loop_out *")
    t = later(0.2, bell.alert)
    t0 = time.monotonic()
    try:
        check(lib.mg_steer_loop_nic(st, r.base, src.ptr, c, out), "steer loop")
    finally:
        t.join()
    assert out.reason == lib.MG_LOOP_BUDGET and time.monotonic() - t0 < 5
    assert pipe.signals >= 1  # the helper thread passed the doorbell wake on
    assert bell.take_alert() == lib.MG_BELL_ALERT_STOP
