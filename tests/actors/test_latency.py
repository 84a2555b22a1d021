"""Per-packet latency through `maglev run`'s processes on the AF_PACKET NIC.

Regression test for a missed wake-up: steering sleeps in ``poll()`` on the NIC socket,
and it is also the consumer of the ``sent`` and ``ret`` rings.  After a burst of traffic
the frames still in flight come home to ``sent`` faster than anyone reclaims them; once
``sent`` was full the muxer could not hand back its frames, stopped collecting from the
tx rings, and everything queued behind -- including the next packet after the idle
period -- waited for steering's 0.5 s idle timeout (seen in the lab as an HTTP p99 of
~0.5 s right after a flood).  Steering now also wakes on its doorbell while it waits on
the NIC (``maglev.actors.steering``), so a packet after a burst and an idle pause is
forwarded within milliseconds.

Packets go in on one end of a veth pair (a raw packet socket in another namespace, the
burst sent with the driver's C ``sendmmsg`` so it arrives faster than one worker drains
it); the forwarder sends them back out of the same interface IPIP-encapsulated, and the
time from sending a probe to receiving its encapsulated copy on the sender's side is
measured.  The
thresholds leave room for a loaded two-core machine (a scheduling stall of tens of ms);
the bug costs 500 ms and more per probe.
"""

from __future__ import annotations

import mmap
import select
import socket
import statistics
import struct
import time

import pytest

from maglev.actors.pipeline import Pipeline, PipelineOptions
from maglev.lab.nsenter import netns as in_netns
from maglev.native import ffi, lib
from maglev.nic.afpacket import AfPacketNic
from maglev.testing import packets as pk

pytestmark = pytest.mark.root

MAC_A = bytes.fromhex("020000000a0a")
MAC_B = bytes.fromhex("020000000b0b")
VIP_UDP = "203.0.113.20"  # the sample config's UDP VIP (every port, IPIP)


def udp_frame(sport: int, dst: str = VIP_UDP) -> bytes:
    """Ethernet + IPv4 + UDP toward ``dst``, 64 bytes on the wire."""
    src = f"198.19.{sport >> 8 & 0xFF}.{sport & 0xFF}"
    return pk.eth(pk.ipv4(src, dst, 17, pk.udp(sport, 53, b"x" * 18, src=src, dst=dst)),
                  dst=MAC_B, src=MAC_A)


class Sender:
    """Frames out of ``a0``: a plain raw socket for single probes, the driver's C burst
    transmit (sendmmsg) for a burst that outruns the pipeline."""

    def __init__(self, ns: str, dev: str, n_frames: int = 256):
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            self.sock.bind((dev, 0))
            # Room for a whole burst's encapsulated copies, so the probe's is never lost.
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE (root)
            self.nic = AfPacketNic(dev)
        self.mm = mmap.mmap(-1, n_frames * lib.MG_FRAME_SIZE)
        self.pool = ffi.from_buffer("uint8_t[]", self.mm)
        self.descs = ffi.new("uint64_t[]", list(range(n_frames)))
        for i in range(n_frames):
            pkt = udp_frame(1000 + i)
            m = ffi.cast("struct mg_frame_meta *", self.pool + i * lib.MG_FRAME_SIZE)
            m.data_off = lib.MG_FRAME_HEADROOM
            m.len = len(pkt)
            start = i * lib.MG_FRAME_SIZE + lib.MG_FRAME_META_SIZE + lib.MG_FRAME_HEADROOM
            self.mm[start : start + len(pkt)] = pkt
        self.n_frames = n_frames

    def burst(self, total: int) -> int:
        sent = 0
        for _ in range(10 * total):  # bounded: a full qdisc-bypass queue refuses some
            if sent >= total:
                break
            sent += self.nic.tx_burst(self.pool, self.descs, min(self.n_frames, total - sent))
        return sent

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            for _ in range(1_000_000):
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def probe(self, sport: int) -> None:
        self.sock.send(udp_frame(sport))

    def close(self) -> None:
        self.sock.close()
        self.nic.close()


def probe_sport(frame: bytes) -> int:
    """The inner UDP source port of an IPIP-encapsulated IPv4 frame, or -1."""
    if len(frame) < 14 + 20 + 20 + 8 or frame[12:14] != b"\x08\x00" or frame[14 + 9] != 4:
        return -1
    inner = 14 + (frame[14] & 0x0F) * 4
    if frame[inner + 9] != 17:
        return -1
    udp = inner + (frame[inner] & 0x0F) * 4
    return struct.unpack_from("!H", frame, udp)[0]


def latency(sender: Sender, sport: int, timeout: float = 5.0) -> float:
    """Send one probe; seconds until its encapsulated copy comes back (inf: never)."""
    t0 = time.perf_counter()
    sender.probe(sport)
    deadline = t0 + timeout
    while (left := deadline - time.perf_counter()) > 0:
        if not select.select([sender.sock], [], [], left)[0]:
            break
        frame, addr = sender.sock.recvfrom(4096)
        if addr[2] != socket.PACKET_OUTGOING and probe_sport(frame) == sport:
            return time.perf_counter() - t0
    return float("inf")


def test_a_packet_after_a_burst_and_an_idle_pause_is_forwarded_within_milliseconds(netns):
    a, b = netns.add("a"), netns.add("b")
    netns.veth(a, "a0", b, "b0")
    a.exec("ip", "link", "set", "a0", "address", MAC_A.hex(":"))
    b.exec("ip", "link", "set", "b0", "address", MAC_B.hex(":"))
    for ns, dev in ((a, "a0"), (b, "b0")):
        ns.sysctl(f"net.ipv6.conf.{dev}.disable_ipv6", "1")  # no chatter in the counts
    sender = Sender(a.name, "a0")
    # Small rings make "sent is full" reachable with a burst of a few thousand frames;
    # one CPU for every actor makes the worker and the muxer run while steering sleeps.
    opts = PipelineOptions(workers=1, nic="afpacket:b0", ring_size=64, cpus="0")
    with in_netns(b.name):
        p = Pipeline(opts)
    try:
        with in_netns(b.name):  # the actors are started here and stay in this namespace
            p.start()
        # A lone packet after idling (the easy case).
        idle_lat = []
        for i in range(5):
            time.sleep(0.1)
            sender.drain()
            idle_lat.append(latency(sender, 40000 + i))
        # Bursts, each followed by an idle pause and one probe packet.
        after_burst = []
        for r in range(6):
            assert sender.burst(3000) > 0
            time.sleep(0.2)
            sender.drain()
            after_burst.append(latency(sender, 50000 + r))
        p.stop()
        s = p.summary()
    finally:
        p.close()
        sender.close()
    assert s["pool"]["ok"], s["pool"]
    ms = sorted(round(x * 1000, 1) for x in idle_lat + after_burst)
    assert statistics.median(ms) < 100, f"probe latencies (ms): {ms}"
    assert max(ms) < 400, f"probe latencies (ms): {ms} -- a missed wake-up costs >= 500 ms"
