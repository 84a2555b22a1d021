"""The backend agent's C loop (``mg_decap_parse`` / ``mg_decap_run``) against its
pure-Python reference (``maglev.lab.agent.decapsulate`` / ``Agent.handle``): the same
inner packet or the same refusal reason for valid and malformed GRE/IPIP, the same
counters over one stream, batches, errors counted.  No root needed: a datagram
socketpair stands in for the raw socket and another for the TUN device."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maglev.errors import MaglevError
from maglev.lab.agent import (
    IPPROTO_GRE,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    REASONS,
    Agent,
    DecapError,
    decapsulate,
    decapsulate_c,
    native_vips,
    stats_counters,
)
from maglev.native import ffi, lib
from maglev.testing.packets import checksum

VIP4 = socket.inet_aton("203.0.113.10")
VIP6 = socket.inet_pton(socket.AF_INET6, "2001:db8:f::10")
VIPS = frozenset({VIP4, VIP6})
CVIPS = native_vips(VIPS)
OTHER4 = socket.inet_aton("198.18.9.9")
OTHER6 = socket.inet_pton(socket.AF_INET6, "2001:db8:9::9")


def ipv4(dst: bytes = VIP4, payload: bytes = b"x" * 8) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0,
                    socket.inet_aton("198.18.1.2"), dst)
    return h[:10] + struct.pack("!H", checksum(h)) + h[12:] + payload


def ipv6(dst: bytes = VIP6, payload: bytes = b"y" * 8) -> bytes:
    src = socket.inet_pton(socket.AF_INET6, "2001:db8:1::2")
    return struct.pack("!IHBB", 6 << 28, len(payload), 17, 64) + src + dst + payload


def outer4(payload: bytes, proto: int, ihl: int = 5) -> bytes:
    opts = b"\x01" * (4 * (ihl - 5))
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(opts) + len(payload), 0, 0, 64, proto, 0,
                       socket.inet_aton("198.18.2.2"), socket.inet_aton("198.18.2.11")) + opts + payload


def gre(inner: bytes, ethertype: int, csum: bool = False, key: bool = False, seq: bool = False,
        bad_csum: bool = False) -> bytes:
    flags = 0x8000 * csum | 0x2000 * key | 0x1000 * seq
    ext = (b"\0\0\0\0" if csum else b"") + (b"KEY!" if key else b"") + (b"\0\0\0\x07" if seq else b"")
    body = struct.pack("!HH", flags, ethertype) + ext + inner
    if csum:
        c = checksum(body) ^ (0x5A5A if bad_csum else 0)
        body = body[:4] + struct.pack("!H", c) + body[6:]
    return body


def both(packet: bytes, family: int, proto: int) -> tuple[object, object]:
    """(reference result, C result): the inner bytes or the refusal reason."""
    out = []
    for fn, vips in ((decapsulate, VIPS), (decapsulate_c, CVIPS)):
        try:
            out.append(fn(packet, family, proto, vips))
        except DecapError as exc:
            out.append(exc.reason)
    return out[0], out[1]


CASES = [
    ("GRE v4 in v4", outer4(gre(ipv4(), 0x0800), 47), socket.AF_INET, IPPROTO_GRE),
    ("GRE v6 in v4", outer4(gre(ipv6(), 0x86DD), 47), socket.AF_INET, IPPROTO_GRE),
    ("GRE v4 in v6", gre(ipv4(), 0x0800), socket.AF_INET6, IPPROTO_GRE),
    ("GRE csum key seq", gre(ipv4(), 0x0800, True, True, True), socket.AF_INET6, IPPROTO_GRE),
    ("GRE bad csum", gre(ipv4(), 0x0800, True, bad_csum=True), socket.AF_INET6, IPPROTO_GRE),
    ("GRE outer options", outer4(gre(ipv4(), 0x0800), 47, ihl=7), socket.AF_INET, IPPROTO_GRE),
    ("GRE version 1", b"\x00\x01\x08\x00" + ipv4(), socket.AF_INET6, IPPROTO_GRE),
    ("GRE routing", b"\x40\x00\x08\x00" + ipv4(), socket.AF_INET6, IPPROTO_GRE),
    ("GRE reserved", b"\x00\x80\x08\x00" + ipv4(), socket.AF_INET6, IPPROTO_GRE),
    ("GRE ethernet", b"\x00\x00\x65\x58" + ipv4(), socket.AF_INET6, IPPROTO_GRE),
    ("GRE short", b"\x00\x00", socket.AF_INET6, IPPROTO_GRE),
    ("GRE key cut", b"\x20\x00\x08\x00KE", socket.AF_INET6, IPPROTO_GRE),
    ("GRE empty inner", b"\x00\x00\x08\x00", socket.AF_INET6, IPPROTO_GRE),
    ("not a VIP v4", gre(ipv4(OTHER4), 0x0800), socket.AF_INET6, IPPROTO_GRE),
    ("not a VIP v6", gre(ipv6(OTHER6), 0x86DD), socket.AF_INET6, IPPROTO_GRE),
    ("ethertype v6, v4 inside", gre(ipv4(), 0x86DD), socket.AF_INET6, IPPROTO_GRE),
    ("inner v4 length beyond data", gre(ipv4()[:24], 0x0800), socket.AF_INET6, IPPROTO_GRE),
    ("inner v4 ihl 4", gre(b"\x44" + ipv4()[1:], 0x0800), socket.AF_INET6, IPPROTO_GRE),
    ("inner v6 payload beyond data", gre(ipv6()[:44], 0x86DD), socket.AF_INET6, IPPROTO_GRE),
    ("IPIP v4", outer4(ipv4(), 4), socket.AF_INET, IPPROTO_IPIP),
    ("IPIP v6 in v4", outer4(ipv6(), 41), socket.AF_INET, IPPROTO_IPV6),
    ("IPIP v6 in v6", ipv6(), socket.AF_INET6, IPPROTO_IPV6),
    ("IPIP v6 in proto 4", ipv6(), socket.AF_INET6, IPPROTO_IPIP),
    ("outer truncated", b"\x45\x00", socket.AF_INET, IPPROTO_IPIP),
    ("outer not IPv4", b"\x60" + bytes(30), socket.AF_INET, IPPROTO_IPIP),
    ("outer ihl beyond data", b"\x4f" + bytes(30), socket.AF_INET, IPPROTO_GRE),
    ("outer ihl 4", b"\x44" + bytes(30), socket.AF_INET, IPPROTO_GRE),
    ("unknown protocol", ipv4(), socket.AF_INET6, 17),
    ("empty", b"", socket.AF_INET6, IPPROTO_GRE),
]


@pytest.mark.parametrize("desc, packet, family, proto", CASES, ids=[c[0] for c in CASES])
def test_c_and_reference_agree(desc, packet, family, proto):
    ref, c = both(packet, family, proto)
    assert c == ref
    assert isinstance(ref, bytes) or ref in REASONS


@st.composite
def packets(draw):
    family = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6]))
    proto = draw(st.sampled_from([IPPROTO_GRE, IPPROTO_IPIP, IPPROTO_IPV6]))
    v6 = draw(st.booleans()) if proto == IPPROTO_GRE else proto == IPPROTO_IPV6
    dst = draw(st.sampled_from([VIP6, OTHER6] if v6 else [VIP4, OTHER4]))
    payload = draw(st.binary(max_size=40))
    inner = ipv6(dst, payload) if v6 else ipv4(dst, payload)
    if proto == IPPROTO_GRE:
        body = gre(inner, 0x86DD if v6 else 0x0800, *draw(st.tuples(st.booleans(), st.booleans(), st.booleans(),
                                                                      st.booleans())))
    else:
        body = inner
    pkt = bytearray(outer4(body, proto) if family == socket.AF_INET else body)
    for _ in range(draw(st.integers(0, 3))):  # corrupt: flip bytes, cut, extend
        how = draw(st.sampled_from(["flip", "cut", "extend"]))
        if how == "flip" and pkt:
            i = draw(st.integers(0, len(pkt) - 1))
            pkt[i] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del pkt[draw(st.integers(0, len(pkt))):]
        else:
            pkt += draw(st.binary(max_size=8))
    return bytes(pkt), family, proto


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets())
def test_c_and_reference_agree_on_mangled_packets(case):
    ref, c = both(*case)
    assert c == ref


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([socket.AF_INET, socket.AF_INET6]),
       st.sampled_from([IPPROTO_GRE, IPPROTO_IPIP, IPPROTO_IPV6]))
def test_c_and_reference_agree_on_random_bytes(data, family, proto):
    ref, c = both(data, family, proto)
    assert c == ref


# -- the loop ---------------------------------------------------------------------------


def stream() -> list[bytes]:
    """A mixed stream for an IPv4 GRE raw socket: valid, refused and malformed datagrams."""
    out = []
    for i in range(90):
        kind = i % 6
        if kind == 0:
            out.append(outer4(gre(ipv4(payload=bytes([i]) * 10), 0x0800), 47))
        elif kind == 1:
            out.append(outer4(gre(ipv6(payload=bytes([i]) * 12), 0x86DD, True, True), 47))
        elif kind == 2:
            out.append(outer4(gre(ipv4(OTHER4), 0x0800), 47))
        elif kind == 3:
            out.append(outer4(gre(ipv4(), 0x0800, True, bad_csum=True), 47))
        elif kind == 4:
            out.append(b"\x45\x00\x00")
        else:
            out.append(outer4(b"\x00\x01\x08\x00" + ipv4(), 47))
    return out


class Loop:
    """mg_decap_run over a socketpair 'raw socket' (family 4, GRE) and a given TUN fd."""

    def __init__(self, tun_fd: int):
        self.raw_in, self.raw_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.raw_out.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.socks = ffi.new("struct mg_decap_sock[1]")
        self.socks[0].fd, self.socks[0].family, self.socks[0].proto = self.raw_out.fileno(), 4, IPPROTO_GRE
        self.st = ffi.new("struct mg_decap_stats *")
        self.bufs = ffi.new("uint8_t[]", lib.MG_DECAP_BATCH * lib.MG_DECAP_BUF)
        self.tun_fd = tun_fd

    def run(self, budget_ms: int) -> int:
        return lib.mg_decap_run(self.socks, 1, self.tun_fd, CVIPS, self.st, self.bufs, budget_ms)

    def close(self) -> None:
        self.raw_in.close()
        self.raw_out.close()


def reference_counters(pkts: list[bytes], tun_fd: int) -> Counter:
    agent = Agent(vips=["203.0.113.10", "2001:db8:f::10"], engine="python")
    agent._tun_fd = tun_fd
    for p in pkts:
        agent.handle(p, socket.AF_INET, IPPROTO_GRE)
    return agent.counters


def test_loop_matches_reference_counters_and_output():
    pkts = stream()
    tun_c, tun_c_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tun_py, tun_py_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    loop = Loop(tun_c.fileno())
    try:
        for p in pkts:
            loop.raw_in.send(p)
        deadline = time.monotonic() + 5
        while loop.st.received < len(pkts) and time.monotonic() < deadline:
            assert loop.run(20) >= 0
        got = stats_counters(loop.st)
        ref = reference_counters(pkts, tun_py.fileno())
        assert {k: v for k, v in got.items() if k not in ("wakeups", "batches", "max_batch")} == dict(ref)
        assert got["decapsulated"] == 30 and got["drop_not_a_vip"] == 15 and got["drop_gre_checksum"] == 15
        assert got["drop_outer_short"] == 15 and got["drop_gre_version"] == 15
        # batches: 90 queued datagrams come in ceil(90 / 32) recvmmsg calls, not 90 wake-ups
        assert got["max_batch"] == lib.MG_DECAP_BATCH and got["batches"] == 3
        tun_c_peer.setblocking(False)
        tun_py_peer.setblocking(False)
        for _ in range(got["decapsulated"]):
            assert tun_c_peer.recv(65536) == tun_py_peer.recv(65536)
        with pytest.raises(BlockingIOError):
            tun_c_peer.recv(65536)
    finally:
        loop.close()
        for s in (tun_c, tun_c_peer, tun_py, tun_py_peer):
            s.close()


def test_tun_write_errors_are_counted_by_errno():
    pkts = [outer4(gre(ipv4(), 0x0800), 47)] * 4
    ro = os.open(os.devnull, os.O_RDONLY)  # write() -> EBADF, as a vanished TUN device would fail
    loop = Loop(ro)
    try:
        for p in pkts:
            loop.raw_in.send(p)
        deadline = time.monotonic() + 5
        while loop.st.received < len(pkts) and time.monotonic() < deadline:
            assert loop.run(20) >= 0
        got = stats_counters(loop.st)
        ref = reference_counters(pkts, ro)
        assert got["drop_tun_9"] == ref["drop_tun_9"] == 4
        assert "decapsulated" not in got
    finally:
        loop.close()
        os.close(ro)


def test_loop_returns_at_budget_end_and_on_a_signal():
    tun, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    loop = Loop(tun.fileno())
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        t0 = time.monotonic()
        assert loop.run(30) == 0  # nothing to read: returns when the budget is spent
        assert 0.025 <= time.monotonic() - t0 < 1.0
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        t0 = time.monotonic()
        assert loop.run(10_000) == 0  # a signal ends the wait long before the budget
        assert time.monotonic() - t0 < 5.0 and fired == [1]
        assert loop.st.wakeups == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        loop.close()
        tun.close()
        peer.close()


def test_loop_refuses_bad_arguments():
    loop = Loop(-1)
    try:
        assert loop.run(-1) == -22
        assert lib.mg_decap_run(loop.socks, 0, -1, CVIPS, loop.st, loop.bufs, 10) == -22
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        loop.socks[0].fd = r  # closed: EBADF at once, not a spin until the budget ends
        t0 = time.monotonic()
        assert loop.run(2000) == -9 and time.monotonic() - t0 < 1.0
    finally:
        loop.close()


def test_agent_arguments_are_checked():
    with pytest.raises(MaglevError, match="--engine"):
        Agent(vips=["203.0.113.10"], engine="rust")
    with pytest.raises(MaglevError, match="at most 64 IPv4"):
        Agent(vips=[f"203.0.113.{i}" for i in range(65)])
    with pytest.raises(MaglevError, match="--rt-prio"):
        Agent(vips=["203.0.113.10"], rt_prio=99)
    assert Agent(vips=["203.0.113.10"]).engine in ("c", "python")
