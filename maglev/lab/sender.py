"""The lab's traffic sender: prebuilt frames through the AF_PACKET TX ring, bounded in
time and count, from one pinned CPU, with the receive side's work moved off that CPU.

Why the pinning and the steering.  On veth a transmit does the *receiver's* work too:
``veth_xmit`` hands the skb to the peer's ``netif_rx``, which queues it on the backlog of
the CPU that sent it, and the softirq that runs when the send re-enables bottom halves
forwards it through the whole chain (router, bridge, the forwarder's namespace, ...) on
that same CPU.  A sender that pays for the forwarding can never offer more than the
forwarding takes: every "kernel baseline" was sender-bound.  So :func:`offer` pins the
calling thread to one CPU and :func:`steer_rx` sets RPS (``rps_cpus``) on the first
receiving veth to the *other* CPUs: ``netif_rx`` then queues the skb on another CPU's
backlog, the sender goes on with the next frame, and what cannot be forwarded in time is
dropped at that backlog (``netdev_max_backlog``), as on a real link.

The TX ring's send buffer (mg_afpacket.c) covers the ring, and its socket is created in
the namespace the NIC was opened in, so the ring -- not the sendmmsg fallback -- is used.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from maglev.datapath.ref_csum import checksum
from maglev.lab.nsenter import netns
from maglev.native import ffi, lib
from maglev.nic.afpacket import AfPacketNic

__all__ = ["cpu_plan", "offer", "steer_rx", "udp_frame"]


def udp_frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int = 9) -> bytes:
    """A 60-byte Ethernet/IPv4/UDP frame (64 on the wire with the FCS), checksums done."""
    payload = b"\0" * 18
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00" + ip + udp


def cpu_plan(sender_cpu: int | None = None) -> tuple[int | None, list[int]]:
    """(the sender's CPU, the CPUs for the receive side): ``sender_cpu`` (default: the
    first usable CPU) and every other usable one.  With one usable CPU there is nothing
    to move: (None, [])."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, []
    if sender_cpu is None:
        sender_cpu = cpus[0]
    if sender_cpu not in cpus:
        raise ValueError(f"sender CPU {sender_cpu} is not one of the usable CPUs {cpus}")
    return sender_cpu, [c for c in cpus if c != sender_cpu]


def _rps_path(dev: str) -> str:
    return f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"


def _sysfs_in(ns: str, path: str, value: str | None = None) -> str:
    # /sys shows the namespace of whoever mounted it: read and write through a child
    # that mounts its own sysfs inside the namespace (ip netns exec does).
    import subprocess

    cmd = ["ip", "netns", "exec", ns, "sh", "-c", f"cat {path}" if value is None else f"echo {value} > {path}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise OSError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout.strip()


@contextmanager
def steer_rx(ns: str, dev: str, cpus: Sequence[int]) -> Iterator[str]:
    """RPS on ``dev`` (namespace ``ns``) to ``cpus`` for the duration; yields the mask
    set ("0": none) and puts the old one back, also on error."""
    mask = 0
    for c in cpus:
        mask |= 1 << c
    old = _sysfs_in(ns, _rps_path(dev))
    _sysfs_in(ns, _rps_path(dev), f"{mask:x}")
    try:
        yield f"{mask:x}"
    finally:
        _sysfs_in(ns, _rps_path(dev), old.replace(",", "") or "0")


def offer(ns: str, dev: str, frames: Sequence[bytes], seconds: float, *, cpu: int | None = None,
          max_packets: int = 50_000_000, burst: int = 256) -> dict[str, Any]:
    """Send ``frames`` round and round through ``dev`` in namespace ``ns`` for at most
    ``seconds`` and ``max_packets``; the calling thread runs on ``cpu`` meanwhile (when
    given).  Returns what was offered: sent, seconds, sent_pps, the sender's own CPU
    seconds and the frames the TX ring had no free slot for."""
    if not frames or seconds <= 0:
        raise ValueError("offer: needs frames and a positive duration")
    n = max(burst, len(frames))
    with netns(ns):
        nic = AfPacketNic(dev)
    old_aff = os.sched_getaffinity(0)
    try:
        mm = mmap.mmap(-1, n * lib.MG_FRAME_SIZE)
        pool = ffi.from_buffer("uint8_t[]", mm)
        for i in range(n):
            f = frames[i % len(frames)]
            m = ffi.cast("struct mg_frame_meta *", pool + i * lib.MG_FRAME_SIZE)
            m.data_off, m.len = lib.MG_FRAME_HEADROOM, len(f)
            start = i * lib.MG_FRAME_SIZE + lib.MG_FRAME_META_SIZE + lib.MG_FRAME_HEADROOM
            mm[start : start + len(f)] = f
        descs = ffi.new("uint64_t[]", list(range(n)))
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        sent = 0
        c0 = time.thread_time()
        t0 = time.monotonic()
        end = t0 + seconds
        while sent < max_packets and time.monotonic() < end:
            sent += nic.tx_burst(pool, descs, min(n, max_packets - sent))
        elapsed = time.monotonic() - t0
        cpu_s = time.thread_time() - c0
        st = nic.stats()
        return {"sent": sent, "seconds": round(elapsed, 3), "sent_pps": round(sent / elapsed),
                "sender_cpu": cpu, "sender_cpu_s": round(cpu_s, 3),
                "sender_ns_per_packet": round(cpu_s * 1e9 / max(sent, 1)),
                "tx_ring_full": st["tx_ring_full"], "tx_ring": nic._afp.tx_fd >= 0}
    finally:
        os.sched_setaffinity(0, old_aff)
        nic.close()
