"""BFD (RFC 5880/5881): packet format and checks, two endpoints on 127.0.0.1/127.0.0.2,
and the BGP session ending when BFD goes down."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from maglev.bgp import Speaker, bfd
from maglev.config import Bgp, BgpPeer
from tests.bgp.test_session import Scripted, run

# ----------------------------------------------------------------------------- packets


def test_packet_golden():
    # Version 1, diag 0 | state Up (3 << 6) + Poll (0x20) | mult 3 | length 24 | my 0x11223344
    # | your 0x55667788 | desired tx 300 ms | required rx 300 ms | echo 0.
    p = bfd.Packet(bfd.State.UP, 0x11223344, 0x55667788, 300_000, 300_000, 3, poll=True)
    raw = bytes.fromhex("20 e0 03 18 11223344 55667788 000493e0 000493e0 00000000")
    assert bytes(p) == raw
    assert bfd.Packet.parse(raw) == p


def _raw(**kw) -> bytes:
    b0 = (kw.get("version", 1) << 5) | kw.get("diag", 0)
    b1 = (kw.get("state", 1) << 6) | kw.get("flags", 0)
    return struct.pack(
        "!BBBBIIIII", b0, b1, kw.get("mult", 3), kw.get("length", 24), kw.get("my", 7), kw.get("your", 0), 1000000, 1000000, 0
    ) + kw.get("extra", b"")


BAD = [
    ("short", _raw()[:20]),
    ("version 2", _raw(version=2)),
    ("length field 20", _raw(length=20)),
    ("length field beyond the payload", _raw(length=30)),
    ("authentication bit", _raw(flags=0x04)),
    ("detect multiplier 0", _raw(mult=0)),
    ("multipoint bit", _raw(flags=0x01)),
    ("my discriminator 0", _raw(my=0)),
    ("your discriminator 0 while Up", _raw(state=3, your=0)),
    ("your discriminator 0 while Init", _raw(state=2, your=0)),
]


@pytest.mark.parametrize("raw", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_packets_are_discarded(raw):
    with pytest.raises(bfd.BfdError):
        bfd.Packet.parse(raw)


def test_your_discriminator_zero_is_fine_while_down():
    assert bfd.Packet.parse(_raw(state=1, your=0)).state == bfd.State.DOWN
    assert bfd.Packet.parse(_raw(state=0, your=0)).state == bfd.State.ADMIN_DOWN


# ----------------------------------------------------------------------------- two endpoints on loopback


def free_udp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.2", port))
            except OSError:
                continue
            return port
    raise AssertionError("no UDP port free on both 127.0.0.1 and 127.0.0.2")


async def wait_for(pred, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


def pair(port: int, interval_ms: int = 100):
    a_ep, b_ep = bfd.Endpoint("127.0.0.1", port), bfd.Endpoint("127.0.0.2", port)
    a = bfd.Session(a_ep, "127.0.0.2", local_address="127.0.0.1", interval_ms=interval_ms)
    b = bfd.Session(b_ep, "127.0.0.1", local_address="127.0.0.2", interval_ms=interval_ms)
    a_ep.add(a)
    b_ep.add(b)
    return a_ep, a, b_ep, b


def test_two_endpoints_come_up_and_detect_a_silent_peer():
    """Both sides come Up (three-way: Down -> Init -> Up); when one goes silent (a dead
    instance: no AdminDown) the other declares it down after its detection time, 3 x 100
    ms here; the measured time is printed."""

    async def go():
        port = free_udp_port()
        a_ep, a, b_ep, b = pair(port)
        a_ep.start()
        b_ep.start()
        try:
            up = await wait_for(lambda: a.state == b.state == bfd.State.UP, 5, "both Up")
            await wait_for(lambda: not a.polling and not b.polling, 5, "poll sequences done")
            assert a.remote_disc == b.local_disc and b.remote_disc == a.local_disc
            assert a.snapshot()["tx_interval_ms"] == 100 and a.snapshot()["detection_time_ms"] == 300
            await asyncio.sleep(0.3)  # a few fast intervals: stays Up
            assert a.state == bfd.State.UP and a.counters["down"] == 0
            await b_ep.stop(silent=True)
            t0 = time.monotonic()
            await wait_for(lambda: a.state == bfd.State.DOWN, 2, "A notices B is gone")
            detect = time.monotonic() - t0
            assert a.diag == bfd.Diag.DETECTION_EXPIRED and a.remote_disc == 0
            print(f"\nBFD up in {up * 1000:.0f} ms; silent peer detected in {detect * 1000:.0f} ms (detection time 300 ms)")
            assert detect < 1.0
        finally:
            await a_ep.stop()
            await b_ep.stop()

    run(go())


def test_admin_down_is_seen_at_once():
    async def go():
        port = free_udp_port()
        a_ep, a, b_ep, b = pair(port, interval_ms=1000)  # slow: the AdminDown must not wait for it
        a_ep.start()
        b_ep.start()
        try:
            await wait_for(lambda: a.state == b.state == bfd.State.UP, 5, "both Up")
            await b_ep.stop()
            took = await wait_for(lambda: a.state == bfd.State.DOWN, 1, "AdminDown seen")
            assert a.diag == bfd.Diag.NEIGHBOR_DOWN and took < 0.5
        finally:
            await a_ep.stop()

    run(go())


def test_packets_without_ttl_255_are_discarded():
    async def go():
        port = free_udp_port()
        ep = bfd.Endpoint("127.0.0.1", port)
        sess = bfd.Session(ep, "127.0.0.2", local_address="127.0.0.1")
        ep.add(sess)
        ep.start()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.2", 0))
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)  # one hop away, or forged
                s.sendto(bytes(bfd.Packet(bfd.State.DOWN, 99)), ("127.0.0.1", port))
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
                s.sendto(b"garbage", ("127.0.0.1", port))
                s.sendto(bytes(bfd.Packet(bfd.State.DOWN, 99)), ("127.0.0.1", port))
            await wait_for(lambda: sess.counters["packets_in"] == 1, 2, "the good packet")
            assert ep.discarded == 2 and sess.state == bfd.State.INIT and sess.remote_disc == 99
        finally:
            await ep.stop()

    run(go())


def test_bfd_down_ends_the_bgp_session():
    """The speaker's peer has bfd = true: the scripted router runs the other BFD end on
    127.0.0.2 (BGP from 127.0.0.2 too).  When the router's BFD goes silent the speaker
    ends the BGP session at once, long before the 90 s hold time."""

    async def go():
        port = free_udp_port()
        bgp_port = free_tcp_port()
        cfg = Bgp(
            local_asn=64513, router_id="198.18.0.10", listen_port=bgp_port, listen_address="127.0.0.1",
            connect_retry_time=1, bfd_interval_ms=100, bfd_port=port,
            peers=(BgpPeer("127.0.0.2", 64512, hold_time=90, passive=True, bfd=True),),
        )  # fmt: skip
        sp = Speaker(cfg)
        await sp.start()
        router_ep = bfd.Endpoint("127.0.0.2", port)
        router = bfd.Session(router_ep, "127.0.0.1", local_address="127.0.0.2", interval_ms=100)
        router_ep.add(router)
        router_ep.start()
        peer = None
        try:
            peer = await Scripted.connect(bgp_port, local="127.0.0.2")
            await peer.handshake(64512)
            # Up first runs at the slow rate (RFC 5880 6.8.3: 1 s while not Up); the 100 ms
            # timers take over after the poll sequence.  Silence the router only then, or the
            # detection time is still 3 s (the race this test had under load).
            await wait_for(lambda: sp.peers_state()[0]["bfd"]["state"] == "UP"
                           and sp.peers_state()[0]["bfd"]["detection_time_ms"] <= 300, 5,
                           "speaker's BFD Up with the 100 ms timers")
            assert sp.peers_state()[0]["state"] == "Established"
            await router_ep.stop(silent=True)
            took = await wait_for(lambda: sp.peers_state()[0]["state"] != "Established", 2, "BGP session ended")
            assert "BFD session down" in sp.peers_state()[0]["last_error"]
            print(f"\nBFD down -> BGP session ended in {took * 1000:.0f} ms (BFD detection time 300 ms, hold time 90 s)")
        finally:
            if peer is not None:
                await peer.close()
            await sp.stop()
            await router_ep.stop()

    run(go())


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

