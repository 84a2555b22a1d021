"""A stand-in forwarder for testing the lab's backends without ``maglev run``.

It does, slowly and in Python, the wire-level half of maglev's job: read the packets
for a VIP from the maglev namespace's interface (with the AF_PACKET NIC), pick a backend
by a hash of the 5-tuple (no Maglev table, no connection tracking) and send the packet
on encapsulated as the backends expect it -- GRE or IP-in-IP through a raw socket (the
kernel adds the outer header), VXLAN through a UDP socket, L2 by rewriting the Ethernet
destination.  Its only purpose is to show that a lab backend decapsulates correctly and
answers the client directly, independently of the real data path, so a lab failure can
be told apart from a forwarder failure.  Not for production, not fast.
"""

from __future__ import annotations

import hashlib
import ipaddress
import mmap
import socket
import struct
import threading
from typing import Any

from maglev.lab.nsenter import netns
from maglev.native import ffi, lib
from maglev.nic.afpacket import AfPacketNic


class Relay:
    """Runs in a thread; ``stop()`` ends it and closes every socket."""

    def __init__(self, ns: str, iface: str, vips: list[str], backends: list[dict[str, Any]],
                 encap: str, own_mac: str):
        self.encap = encap
        self.backends = backends
        self.vips = {ipaddress.ip_address(v).packed for v in vips}
        self.own_mac = bytes.fromhex(own_mac.replace(":", ""))
        self.forwarded = 0
        self.per_backend: dict[str, int] = {b["name"]: 0 for b in backends}
        self._stop = threading.Event()
        with netns(ns):
            self.nic = AfPacketNic(iface)
            self.nic.start_rx()
            if encap == "gre":
                self.s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
                self.s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 47)
            elif encap == "ipip":
                self.s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
                self.s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 41)
            else:
                self.s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.n = 256
        self.mm = mmap.mmap(-1, self.n * lib.MG_FRAME_SIZE)
        self.pool = ffi.from_buffer("uint8_t[]", self.mm)
        self.descs = ffi.new("uint64_t[]", list(range(self.n)))
        self.thread = threading.Thread(target=self._run, name="lab-relay", daemon=True)
        self.thread.start()

    def _packet(self, i: int) -> tuple[int, int]:
        m = ffi.cast("struct mg_frame_meta *", self.pool + i * lib.MG_FRAME_SIZE)
        return i * lib.MG_FRAME_SIZE + lib.MG_FRAME_META_SIZE + m.data_off, m.len

    def _pick(self, ip: bytes, v6: bool) -> dict[str, Any]:
        if v6:
            key, proto, l4 = ip[8:40], ip[6], 40
        else:
            key, proto, l4 = ip[12:20], ip[9], (ip[0] & 15) * 4
            if struct.unpack_from("!H", ip, 6)[0] & 0x3FFF:  # fragment: 3-tuple
                l4 = -1
        ports = ip[l4 : l4 + 4] if l4 >= 0 and proto in (6, 17) else b""
        h = int.from_bytes(hashlib.blake2b(key + bytes([proto]) + ports, digest_size=8).digest(), "big")
        live = [b for b in self.backends if b.get("weight", 1) > 0]
        return live[h % len(live)]

    def _forward(self, start: int, length: int, descs_l2: list[int], idx: int) -> None:
        pkt = bytes(self.mm[start : start + length])
        et = pkt[12:14]
        v6 = et == b"\x86\xdd"
        if et not in (b"\x08\x00", b"\x86\xdd"):
            return
        ip = pkt[14:]
        dst = ip[24:40] if v6 else ip[16:20]
        if dst not in self.vips:
            return
        ip = ip[: 40 + struct.unpack_from("!H", ip, 4)[0]] if v6 else ip[: struct.unpack_from("!H", ip, 2)[0]]
        b = self._pick(ip, v6)
        fam = "ipv6" if v6 else "ipv4"
        sock = self.s6 if v6 else self.s4
        if self.encap == "gre":
            sock.sendto(b"\x00\x00" + et + ip, (b[fam], 0))
        elif self.encap == "ipip":
            sock.sendto(ip, (b[fam], 0))
        elif self.encap == "vxlan":
            inner = bytes.fromhex(b["vxlan_mac"].replace(":", "")) + self.own_mac + et
            sock.sendto(struct.pack("!II", 0x08000000, 1 << 8) + inner + ip, (b[fam], 4789))
        else:  # l2: new destination MAC, in place, sent as a burst below
            self.mm[start : start + 12] = bytes.fromhex(b["mac"].replace(":", "")) + self.own_mac
            descs_l2.append(idx)
        self.forwarded += 1
        self.per_backend[b["name"]] += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            k = self.nic.rx_burst(self.pool, self.descs, self.n)
            if k == 0:
                self.nic.wait(0.05)
                continue
            l2: list[int] = []
            for i in range(k):
                start, length = self._packet(i)
                try:
                    self._forward(start, length, l2, i)
                except OSError:
                    pass  # e.g. a neighbour not resolved yet: the sender retransmits
            if l2:
                out = ffi.new("uint64_t[]", l2)
                self.nic.tx_burst(self.pool, out, len(l2))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.nic.close()
        self.s4.close()
        self.s6.close()
