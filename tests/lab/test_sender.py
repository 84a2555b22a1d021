"""The lab's traffic sender (maglev.lab.sender) over a bare veth pair: what it offers is
what left the interface, it runs on the CPU it was given and gives the thread its CPUs
back, and RPS steering is set for the run and put back afterwards (also on error)."""

from __future__ import annotations

import json
import os

import pytest

from maglev.lab.sender import cpu_plan, offer, steer_rx, udp_frame

pytestmark = pytest.mark.root

MAC_A, MAC_B = "02:00:00:00:0a:0a", "02:00:00:00:0b:0b"


@pytest.fixture
def pair(netns):
    a, b = netns.add("a"), netns.add("b")
    netns.veth(a, "a0", b, "b0")
    a.exec("ip", "link", "set", "a0", "address", MAC_A)
    b.exec("ip", "link", "set", "b0", "address", MAC_B)
    for ns, dev in ((a, "a0"), (b, "b0")):
        ns.sysctl(f"net.ipv6.conf.{dev}.disable_ipv6", "1")  # no chatter in the counts
    return a, b


def _stats(ns, dev: str) -> dict:
    return json.loads(ns.exec("ip", "-s", "-j", "link", "show", dev).stdout)[0]["stats64"]


def _rps(ns, dev: str) -> int:
    return int(ns.exec("cat", f"/sys/class/net/{dev}/queues/rx-0/rps_cpus").stdout.strip().replace(",", ""), 16)


def test_udp_frame_is_a_64_byte_wire_frame_with_a_valid_ip_checksum():
    from maglev.testing.packets import checksum

    f = udp_frame(MAC_A, MAC_B, "198.18.0.1", "203.0.113.10", 1234)
    assert len(f) == 60  # + 4 bytes of FCS on a wire
    assert f[:6] == bytes.fromhex(MAC_B.replace(":", "")) and f[12:14] == b"\x08\x00"
    assert checksum(f[14:34]) == 0
    assert int.from_bytes(f[34:36], "big") == 1234


def test_offer_sends_through_the_tx_ring_and_what_it_counts_left_the_interface(pair):
    a, b = pair
    frames = [udp_frame(MAC_A, MAC_B, "198.18.0.1", "198.18.0.2", 10000 + i) for i in range(16)]
    before = _stats(a, "a0")["tx"]["packets"]
    aff = os.sched_getaffinity(0)
    cpu, _ = cpu_plan()
    o = offer(a.name, "a0", frames, 0.3, cpu=cpu, max_packets=20_000)
    assert os.sched_getaffinity(0) == aff  # the thread got its CPUs back
    assert o["tx_ring"] and 0 < o["sent"] <= 20_000
    assert o["sent_pps"] > 0 and o["sender_cpu"] == cpu
    left = _stats(a, "a0")["tx"]["packets"] - before
    assert o["sent"] <= left <= o["sent"] + 5  # the kernel's own count is the witness


def test_steer_rx_sets_rps_for_the_run_and_puts_it_back_also_on_error(pair):
    _, b = pair
    cpus = sorted(os.sched_getaffinity(0))
    want = 0
    for c in cpus:
        want |= 1 << c
    assert _rps(b, "b0") == 0
    with steer_rx(b.name, "b0", cpus) as mask:
        assert int(mask, 16) == want == _rps(b, "b0")
    assert _rps(b, "b0") == 0
    with pytest.raises(RuntimeError):
        with steer_rx(b.name, "b0", cpus):
            raise RuntimeError("boom")
    assert _rps(b, "b0") == 0


def test_offer_refuses_nothing_to_send(pair):
    a, _ = pair
    with pytest.raises(ValueError):
        offer(a.name, "a0", [], 1.0)
