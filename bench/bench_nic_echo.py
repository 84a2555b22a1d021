"""One frame at a time through a NIC driver alone: receive, then transmit the same frame.

A veth pair between two namespaces (``mgt-x6...``): a client thread in namespace ``a``
sends one UDP frame to a VIP through a packet socket and waits for it to come back on
``a0``; an echo thread in namespace ``b`` does what steering and the muxer do with one
packet -- ``wait()`` on the NIC, ``rx_burst`` into a pool frame, ``tx_burst`` of that frame
-- with the AF_XDP driver (RX ring in, TX ring out, the muxer's side attached from the same
process) or with AF_PACKET V2 (RX ring in, TX ring out).  The drivers are alternated in
rounds so the machine's load falls on both alike.  What it prints per driver: the round
trip p50/p90/p99/max in microseconds, and the AF_XDP transmit counters (kicks, kicks that
left frames in the ring: a frame that waits for a later kick).

    sudo python3 bench/bench_nic_echo.py [--rounds 4] [--frames 500] [--json]

No actor, no worker, no lab router: what is left is the driver's own wake-up and kick.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import select
import socket
import sys
import threading
import time
from typing import Any

from maglev.lab.nsenter import netns as in_netns
from maglev.native import ffi, lib
from maglev.testing import packets as P
from maglev.testing.netns import NetnsSet

VIP = "203.0.113.10"
A_IP, B_IP = "198.18.9.1", "198.18.9.2"


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q / 100 * len(s)))], 1) if s else float("nan")


class _Pool:
    def __init__(self, n: int = 64):
        self.mm = mmap.mmap(-1, n * lib.MG_FRAME_SIZE)
        self.ptr = ffi.from_buffer("uint8_t[]", self.mm)
        self.descs = ffi.new("uint64_t[]", list(range(n)))
        self.n = n


def _mac(ns: Any, dev: str) -> bytes:
    out = ns.exec("ip", "-j", "link", "show", "dev", dev).stdout
    return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))


def open_driver(kind: str, ns: Any, dev: str = "b0") -> tuple[Any, Any]:
    """(receive side, transmit side) of ``kind`` (afxdp or v2) on ``dev`` in ``ns``."""
    with in_netns(ns.name):
        if kind == "afxdp":
            from maglev.nic.afxdp import AfXdpNic, AfXdpTx

            rx = AfXdpNic(dev, vips=[(VIP, 0, "udp")])
            tx = AfXdpTx(dev, rx.handoff)
            tx.maintain()
            if not tx.attached:
                rx.close()
                tx.close()
                raise RuntimeError(f"AF_XDP transmit not attached: {tx.why_fallback}")
            return rx, tx
        from maglev.nic.afpacket import AfPacketNic

        rx = AfPacketNic(dev, ring="v2")
        return rx, rx


class Echo(threading.Thread):
    """The driver's side: wait, receive, transmit the same frames, until stopped."""

    def __init__(self, rx: Any, tx: Any):
        super().__init__(daemon=True, name="x6-echo")
        self.rx, self.tx, self.stop = rx, tx, False
        self.pool = _Pool()
        self.echoed = 0

    def run(self) -> None:
        while not self.stop:
            k = self.rx.rx_burst(self.pool.ptr, self.pool.descs, self.pool.n)
            if k:
                self.echoed += self.tx.tx_burst(self.pool.ptr, self.pool.descs, k)
            else:
                self.rx.wait(0.05)


def round_trips(a: Any, b: Any, kind: str, frames: int) -> dict[str, Any]:
    rx, tx = open_driver(kind, b)
    echo = Echo(rx, tx)
    with in_netns(a.name):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind(("a0", 0))
    s.setsockopt(263, 23, 1)  # SOL_PACKET, PACKET_IGNORE_OUTGOING: only what comes back
    dst, src = _mac(b, "b0"), _mac(a, "a0")
    rtts: list[float] = []
    lost = 0
    echo.start()
    try:
        deadline = time.monotonic() + max(20.0, frames * 0.02)
        for i in range(frames + 5):
            if time.monotonic() > deadline:
                break
            tag = b"x6%08d" % i
            f = P.eth(P.ipv4(A_IP, VIP, P.UDP, P.udp(2000, 7, tag + b"." * 18, src=A_IP, dst=VIP)), dst=dst, src=src)
            t0 = time.perf_counter()
            s.send(f)
            got = False
            while not got:
                left = t0 + 0.5 - time.perf_counter()
                if left <= 0 or not select.select([s], [], [], left)[0]:
                    break
                got = tag in s.recv(4096)
            if not got:
                lost += 1
            elif i >= 5:  # the first few warm up (ARP-less, but caches and the TX attach)
                rtts.append((time.perf_counter() - t0) * 1e6)
            time.sleep(0.001)
    finally:
        echo.stop = True
        echo.join(2.0)
        s.close()
        stats = tx.stats() if kind == "afxdp" else {}
        tx.close()
        rx.close()
    out: dict[str, Any] = {q: _pct(rtts, float(q[1:])) for q in ("p50", "p90", "p99")}
    out.update(max=round(max(rtts), 1) if rtts else None, n=len(rtts), lost=lost)
    if stats:
        out["tx"] = {k: stats.get(k) for k in ("tx_packets", "tx_kicks", "tx_kick_again", "tx_left", "tx_completed")}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--drivers", default="afxdp,v2")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_nic_echo: skipped: needs root (namespaces, AF_XDP, packet sockets)")
        return 0
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    res: dict[str, list[dict[str, Any]]] = {d: [] for d in drivers}
    with NetnsSet("x6echo") as ns:
        a, b = ns.add("a"), ns.add("b")
        ns.veth(a, "a0", b, "b0")
        for n, dev in ((a, "a0"), (b, "b0")):
            n.sysctl(f"net.ipv6.conf.{dev}.disable_ipv6", "1")
        a.addr("a0", f"{A_IP}/24")
        b.addr("b0", f"{B_IP}/24")
        for _ in range(args.rounds):
            for d in drivers:
                res[d].append(round_trips(a, b, d, args.frames))
    out = {"loadavg": [round(x, 2) for x in os.getloadavg()], "rounds": res}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for d, rs in res.items():
            for r in rs:
                print(f"{d:<6} p50 {r['p50']:>7} p90 {r['p90']:>7} p99 {r['p99']:>8} max {r['max']:>8} us "
                      f"n={r['n']} lost={r['lost']} {r.get('tx', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
