"""Full-size packets through every encapsulation at the lab's default MTU of 1500.

An encapsulated full-size packet does not fit the server links, so the data path decides:
a DF-clear IPv4 packet is split in two (the backend's kernel reassembles after
decapsulation), a DF one or any IPv6 one is answered with ICMP "fragmentation needed" /
"packet too big" and the client's path MTU discovery sends smaller packets.  Each case
must end with the backend holding every byte the client sent.  (``l2`` adds no header:
full-size packets fit as they are.)
"""

from __future__ import annotations

import errno
import socket
import time

import pytest

from maglev.lab import topology as topo
from maglev.lab.nsenter import netns as in_netns

pytestmark = pytest.mark.root
PORT = 9997
# <linux/in.h> and <linux/in6.h>; Python 3.11's socket module lacks most of them.
IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_DO, IP_MTU = 10, 0, 2, 14
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO, IPV6_MTU = 23, 2, 24


def _receivers(lab, family: int) -> dict[str, socket.socket]:
    out = {}
    for b in lab.state["backends"]:
        with in_netns(b["ns"]):
            s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", PORT))
        s.settimeout(0.02)
        out[b["name"]] = s
    return out


def _collect(socks: dict[str, socket.socket], want: set[bytes], timeout: float = 5.0) -> set[bytes]:
    got: set[bytes] = set()
    deadline = time.monotonic() + timeout
    while not want <= got and time.monotonic() < deadline:
        for s in socks.values():
            try:
                got.add(s.recv(65535))
            except TimeoutError:
                continue
    return got


def _payload(tag: int, size: int) -> bytes:
    return tag.to_bytes(4, "big") + bytes((tag * 13 + k) & 0xFF for k in range(size - 4))


def _pmtu_udp(lab, family: int, socks: dict[str, socket.socket]) -> tuple[int, int]:
    """Send full-size datagrams with DF (IPv4) / as IPv6 always does, following the path
    MTU the client learns; returns (bytes of the biggest datagram that arrived, the
    client's path MTU at the end).  Bounded: 20 tries of 0.3 s."""
    with in_netns(lab.state["client"]["ns"]):
        c = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET:
            c.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            c.connect((topo.VIP_V4, PORT))
            hdr, opt = 28, (socket.IPPROTO_IP, IP_MTU)
        else:
            c.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
            c.connect((topo.VIP_V6, PORT))
            hdr, opt = 48, (socket.IPPROTO_IPV6, IPV6_MTU)
        size = 1500 - hdr
        for tag in range(20):
            data = _payload(tag, size)
            try:
                c.send(data)
            except OSError as e:  # the path MTU shrank since the last send
                assert e.errno == errno.EMSGSIZE, e
                size = c.getsockopt(*opt) - hdr
                continue
            if data in _collect(socks, {data}, timeout=0.3):
                return size, c.getsockopt(*opt)
            size = c.getsockopt(*opt) - hdr
        return 0, c.getsockopt(*opt)
    finally:
        c.close()


@pytest.mark.parametrize("encap", topo.ENCAPS)
def test_full_size_packets_with_and_without_df_reach_the_backend(make_lab, encap):
    lab = make_lab(encap=encap, backends=2)
    overhead = {"gre": 24, "ipip": 20, "vxlan": 50, "l2": 0}[encap]

    # 1. DF clear, exactly 1500 bytes of IPv4: split by maglev (or fits, l2), never lost.
    socks = _receivers(lab, socket.AF_INET)
    with in_netns(lab.state["client"]["ns"]):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        c.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        sent = set()
        for tag in range(16):
            data = _payload(tag, 1500 - 28)
            c.sendto(data, (topo.VIP_V4, PORT))
            sent.add(data)
            time.sleep(0.005)
        got = _collect(socks, sent)
        assert got == sent, f"{len(sent - got)} of {len(sent)} DF-clear full-size datagrams lost"

        # 2. DF set: ICMP "fragmentation needed" from maglev, then smaller datagrams arrive.
        size, pmtu = _pmtu_udp(lab, socket.AF_INET, socks)
        assert size > 0, "no DF datagram ever reached a backend"
        if overhead:
            assert pmtu == 1500 - overhead, f"client path MTU {pmtu}: maglev's ICMP did not arrive or said the wrong MTU"
            assert size == 1500 - overhead - 28
        else:
            assert size == 1500 - 28
    finally:
        c.close()
        for s in socks.values():
            s.close()

    # 3. IPv6 (never fragmented on the way): ICMPv6 "packet too big", then it fits.
    socks = _receivers(lab, socket.AF_INET6)
    try:
        size, pmtu = _pmtu_udp(lab, socket.AF_INET6, socks)
        assert size > 0, "no full-size IPv6 datagram ever reached a backend"
        ovh6 = {"gre": 44, "ipip": 40, "vxlan": 70, "l2": 0}[encap]  # IPv6 outer header
        assert pmtu == 1500 - ovh6, f"client path MTU {pmtu}: maglev's ICMPv6 did not arrive or said the wrong MTU"
        assert size == pmtu - 48
    finally:
        for s in socks.values():
            s.close()

    # 4. TCP: a request bigger than one segment (full-size segments with DF) is answered.
    for vip, fam in ((topo.VIP_V4, socket.AF_INET), (topo.VIP_V6, socket.AF_INET6)):
        with in_netns(lab.state["client"]["ns"]):
            t = socket.socket(fam, socket.SOCK_STREAM)
        try:
            t.settimeout(10)
            t.connect((vip, topo.HTTP_PORT))
            t.sendall(b"GET / HTTP/1.0\r\nX-Pad: " + b"a" * 6000 + b"\r\n\r\n")
            reply = b""
            while chunk := t.recv(65536):
                reply += chunk
            assert reply.split(b"\r\n", 1)[0].split()[1:2] == [b"200"], reply[:80]
        finally:
            t.close()
