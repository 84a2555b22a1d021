"""Backend decapsulation: the agent's parser, and every lab backend type answering the
client directly when fed by the stand-in relay (maglev.lab.relay), independently of
`maglev run`."""

from __future__ import annotations

import json
import os
import socket
import struct

import pytest

from maglev.lab import topology as topo
from maglev.lab.agent import (
    IPPROTO_GRE,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    RT_OFFSET,
    DecapError,
    decapsulate,
)
from maglev.lab.client import Capture, http_load
from maglev.lab.nsenter import netns as in_netns
from maglev.lab.relay import Relay
from maglev.testing.packets import checksum
from maglev.testing.wait import wait_until

VIP4 = socket.inet_aton("203.0.113.10")
VIP6 = socket.inet_pton(socket.AF_INET6, "2001:db8:f::10")
VIPS = frozenset({VIP4, VIP6})


def ipv4(dst: bytes = VIP4, payload: bytes = b"x" * 8, proto: int = 17) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                    socket.inet_aton("198.18.1.2"), dst)
    return h[:10] + struct.pack("!H", checksum(h)) + h[12:] + payload


def ipv6(dst: bytes = VIP6, payload: bytes = b"y" * 8) -> bytes:
    src = socket.inet_pton(socket.AF_INET6, "2001:db8:1::2")
    return struct.pack("!IHBB", 6 << 28, len(payload), 17, 64) + src + dst + payload


def outer4(payload: bytes, proto: int) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                       socket.inet_aton("198.18.2.2"), socket.inet_aton("198.18.2.11")) + payload


# -- the parser --------------------------------------------------------------------


@pytest.mark.parametrize(
    "desc, gre_header, inner",
    [
        ("plain GRE, IPv4 inner", b"\x00\x00\x08\x00", ipv4()),
        ("plain GRE, IPv6 inner", b"\x00\x00\x86\xdd", ipv6()),
        ("GRE with key and sequence", b"\x30\x00\x08\x00" + b"KEY!" + b"\x00\x00\x00\x07", ipv4()),
    ],
)
def test_gre_is_stripped(desc, gre_header, inner):
    assert decapsulate(outer4(gre_header + inner, 47), socket.AF_INET, IPPROTO_GRE, VIPS) == inner
    # an IPv6 raw socket delivers the payload without the outer header
    assert decapsulate(gre_header + inner, socket.AF_INET6, IPPROTO_GRE, VIPS) == inner


def test_gre_checksum_is_verified():
    inner = ipv4()
    body = b"\x80\x00\x08\x00" + b"\x00\x00\x00\x00" + inner
    good = body[:4] + struct.pack("!H", checksum(body)) + body[6:]
    assert decapsulate(good, socket.AF_INET6, IPPROTO_GRE, VIPS) == inner
    bad = good[:4] + bytes([good[4] ^ 0xFF]) + good[5:]
    with pytest.raises(DecapError, match="gre_checksum"):
        decapsulate(bad, socket.AF_INET6, IPPROTO_GRE, VIPS)


@pytest.mark.parametrize(
    "desc, packet, family, proto, reason",
    [
        ("GRE version 1 (PPTP)", b"\x00\x01\x08\x00" + ipv4(), socket.AF_INET6, IPPROTO_GRE, "gre_version"),
        ("GRE routing bit", b"\x40\x00\x08\x00" + ipv4(), socket.AF_INET6, IPPROTO_GRE, "gre_flags"),
        ("GRE carrying Ethernet", b"\x00\x00\x65\x58" + ipv4(), socket.AF_INET6, IPPROTO_GRE, "gre_ethertype"),
        ("GRE shorter than its header", b"\x00\x00", socket.AF_INET6, IPPROTO_GRE, "gre_short"),
        ("inner not for a VIP", b"\x00\x00\x08\x00" + ipv4(dst=socket.inet_aton("198.18.9.9")),
         socket.AF_INET6, IPPROTO_GRE, "not_a_vip"),
        ("IPv6 ethertype, IPv4 inside", b"\x00\x00\x86\xdd" + ipv4(), socket.AF_INET6, IPPROTO_GRE, "inner_version"),
        ("inner length beyond the data", b"\x00\x00\x08\x00" + ipv4()[:24], socket.AF_INET6, IPPROTO_GRE, "inner_short"),
        ("IPIP with IPv6 inside proto 4", ipv6(), socket.AF_INET6, IPPROTO_IPIP, "inner_version"),
        ("truncated outer IPv4", b"\x45\x00", socket.AF_INET, IPPROTO_IPIP, "outer_short"),
    ],
)
def test_bad_packets_are_counted_reasons(desc, packet, family, proto, reason):
    with pytest.raises(DecapError) as ei:
        decapsulate(packet, family, proto, VIPS)
    assert ei.value.reason == reason


def test_ipip_both_families():
    assert decapsulate(outer4(ipv4(), 4), socket.AF_INET, IPPROTO_IPIP, VIPS) == ipv4()
    assert decapsulate(outer4(ipv6(), 41), socket.AF_INET, IPPROTO_IPV6, VIPS) == ipv6()
    assert decapsulate(ipv6(), socket.AF_INET6, IPPROTO_IPV6, VIPS) == ipv6()


# -- backends in the lab, fed by the relay ---------------------------------------------


def relay_for(lab) -> Relay:
    st = lab.state
    return Relay(st["maglev"]["ns"], "eth0", [topo.VIP_V4, topo.VIP_V6], st["backends"],
                 st["encap"], st["maglev"]["mac"])


@pytest.mark.root
@pytest.mark.parametrize("encap", ["gre", "ipip", "vxlan", "l2"])
def test_backends_answer_the_client_directly(make_lab, tmp_path, encap):
    lab = make_lab(encap=encap, backends=2, forwarder=False)
    st = lab.state
    relay = relay_for(lab)
    try:
        with Capture(st["maglev"]["ns"], "eth0", tmp_path / "maglev.pcap") as cap:
            r4 = http_load(st["client"]["ns"], topo.VIP_V4, 40, concurrency=4, deadline_s=60)
            r6 = http_load(st["client"]["ns"], topo.VIP_V6, 20, concurrency=4, deadline_s=60)
    finally:
        relay.stop()
    assert r4.ok == 40, r4.to_dict()
    assert r6.ok == 20, r6.to_dict()
    assert set(r4.backends) == {"be1", "be2"}  # 40 flows hashed over 2 backends
    # Requests passed the maglev namespace; not one reply did (direct server return).
    assert cap.count(f"dst host {topo.VIP_V4} and tcp dst port 80") > 0
    assert cap.count(f"src host {topo.VIP_V4} or src host {topo.VIP_V6}") == 0
    if encap in ("gre", "ipip"):
        # The agents write their counters every second (atomically), each on its own
        # clock, so one read a fixed time after the load can meet a file a write behind
        # (under load a write is late): read until they account for what the relay sent.
        def decapsulated() -> int:
            total = 0
            for b in st["backends"]:
                path = lab.state_dir / f"agent-{b['name']}.json"
                total += json.loads(path.read_text()).get("decapsulated", 0) if path.exists() else 0
            return total

        try:
            wait_until(lambda: decapsulated() >= relay.forwarded * 0.99, 15, "the agents' decapsulated counters")
        except AssertionError:
            raise AssertionError(f"agents decapsulated {decapsulated()} of the relay's {relay.forwarded}") from None


@pytest.mark.root
def test_agent_drops_packets_not_for_its_vips(make_lab):
    lab = make_lab(encap="gre", backends=1, forwarder=False)
    st = lab.state
    be = st["backends"][0]
    with in_netns(st["maglev"]["ns"]):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
    try:
        for _ in range(5):
            s.sendto(b"\x00\x00\x08\x00" + ipv4(dst=socket.inet_aton("198.18.1.1")), (be["ipv4"], 0))
    finally:
        s.close()
    path = lab.state_dir / f"agent-{be['name']}.json"

    def stats_now() -> dict:
        return json.loads(path.read_text()) if path.exists() else {}

    # The agent writes its counters every second; wait for the write that has all 5 (the
    # exact count below still catches one counted twice or a datagram decapsulated).
    try:
        stats = wait_until(lambda: (x := stats_now()).get("drop_not_a_vip", 0) >= 5 and x, 15,
                           "the agent counting the 5 datagrams")
    except AssertionError:
        raise AssertionError(f"agent counters: {stats_now()}") from None
    assert stats.get("drop_not_a_vip") == 5 and stats.get("decapsulated", 0) == 0
    assert stats.get("received") == 5
    if os.environ.get("MAGLEV_AGENT_ENGINE", "c") == "c":
        assert stats.get("wakeups", 0) >= 1  # a counter only the C loop keeps: it ran
    # lightly loaded: SCHED_FIFO (the data-path actors' rule), priority --rt-prio 1 + 3
    agent = next(p for p in st["processes"] if p["role"] == f"agent-{be['name']}")
    assert stats.get("rt_fifo") == 1
    assert os.sched_getscheduler(agent["pid"]) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO
    assert os.sched_getparam(agent["pid"]).sched_priority == 1 + RT_OFFSET
