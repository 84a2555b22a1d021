"""Steering's AF_PACKET receive side survives its interface being deleted and created again
under the same name (a driver reload, a NIC reset): a socket bound to the old interface
index would receive nothing for ever.  Steering's housekeeping calls the NIC's
``maintain`` (at most one lookup a second), which reopens the socket(s) in the same device
structs, so its C loop goes on with the new descriptors (2026-12-07, session 7)."""

from __future__ import annotations

import socket
import struct
import types

import pytest

from maglev.actors.steering import Steering
from maglev.config import load_config
from maglev.datapath.tables import build_tables
from maglev.lab.nsenter import netns as in_netns
from maglev.native import check, ffi, lib
from maglev.nic.afpacket import AfPacketMulti, AfPacketNic
from maglev.rings import SLOT_STEERING
from maglev.testing import packets as P
from tests.nic_helpers import veth_pair
from tests.region_helpers import scratch_region

pytestmark = pytest.mark.root

CFG = load_config("")
K0, K1 = CFG.flow_hash_key
MAC_A = bytes.fromhex("020000000a0a")
MAC_B = bytes.fromhex("020000000b0b")
A_IP, VIP = "198.18.9.1", "203.0.113.10"


def frame(i: int) -> bytes:
    return P.eth(P.ipv4(A_IP, VIP, P.UDP, P.udp(2048 + i, 53, struct.pack("!I", i) * 8, src=A_IP, dst=VIP)),
                 dst=MAC_B, src=MAC_A)


def recreate(netns, a, b) -> None:
    b.exec("ip", "link", "del", "b0")  # takes the peer a0 with it
    netns.veth(a, "a0", b, "b0")
    a.exec("ip", "link", "set", "a0", "address", MAC_A.hex(":"))
    b.exec("ip", "link", "set", "b0", "address", MAC_B.hex(":"))
    for ns, dev in ((a, "a0"), (b, "b0")):  # no router solicitations in the exact counts
        ns.sysctl(f"net.ipv6.conf.{dev}.disable_ipv6", "1")


def sender(a) -> socket.socket:
    with in_netns(a.name):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    tx.bind(("a0", 0))
    return tx


def steer_once(r, st, src, want: int) -> int:
    """Run steering's NIC loop until ``want`` packets were dispatched (bounded)."""
    got = 0
    for _ in range(200):
        c = ffi.new("struct mg_loop_ctl *", {"budget_ns": 5_000_000, "burst": 64})
        out = ffi.new("struct mg_loop_out *")
        check(lib.mg_steer_loop_nic(st, r.base, src.ptr, c, out), "steer loop")
        got += int(out.packets)
        if got >= want:
            break
    return got


@pytest.mark.parametrize("queues", [1, 2])
def test_steering_reopens_its_socket_when_the_interface_is_created_again(netns, queues):
    _, a, b = veth_pair(netns, (MAC_A, MAC_B))
    with scratch_region("s7rc-nic", 1, 1024, 256, blob=build_tables(CFG)) as r:
        with in_netns(b.name):
            nic = AfPacketNic("b0") if queues == 1 else AfPacketMulti("b0", queues)
        st = ffi.new("struct mg_steer *")
        check(lib.mg_steer_init(st, r.base, SLOT_STEERING, K0, K1), "steer init")
        src = nic.nic_loop_rx()
        tx = sender(a)
        try:
            for i in range(5):
                tx.send(frame(i))
            assert steer_once(r, st, src, 5) == 5
            tx.close()
            recreate(netns, a, b)
            tx = sender(a)
            # What steering's housekeeping does (Steering._maintain_nic), in the interface's
            # namespace as the actor would be.
            actor = types.SimpleNamespace(nic=nic, _nic_reopens=0)
            with in_netns(b.name):
                nic._next_check = 0.0  # the once-a-second lookup is due
                Steering._maintain_nic(actor)  # type: ignore[arg-type]
            assert actor._nic_reopens == queues and nic.reopens == queues
            for i in range(5, 25):
                tx.send(frame(i))
            assert steer_once(r, st, src, 20) == 20  # the same loop source, new descriptors
            if queues == 2:  # the Python wait polls the new descriptors too
                tx.send(frame(99))
                assert nic.wait(2.0)
        finally:
            tx.close()
            nic.close()
