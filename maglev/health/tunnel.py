"""A health probe through the encapsulation: a TCP handshake with the VIP, sent the way
the data path sends a client's packets (``through_tunnel = true``, docs/config.md).

A direct check (TCP connect to the backend's own address) says nothing about the path
clients use: maglev encapsulates their packets to the backend, which must decapsulate
them and have the VIP bound to answer.  A backend whose tunnel endpoint is down, whose
decapsulation agent died or whose VIP binding was removed passes a direct check and
black-holes every client.  This probe catches that (GitHub's GLB health checker does the
same with its GUE tunnel):

1. build a TCP SYN from ``instance.source_ipv4`` (a random port of 49152-65535) to
   ``VIP:port`` -- the packet a client would send, with our address as the client;
2. encapsulate it toward the backend with the data path's own kernel
   (:func:`maglev.datapath.encap.encap`, the C ``mg_encap``, same parameters as the
   worker: GRE, IP-in-IP or VXLAN, outer source ``source_ipv4``) and send the outer IPv4
   packet through a raw socket (``IPPROTO_RAW``: the header is ours);
3. wait, on a raw TCP socket, for the backend's answer, which comes straight back from
   the VIP (direct server return): a SYN-ACK acknowledging our SYN is **up**, a RST is
   **down** (nothing listens on the VIP's port); nothing within the timeout is down.

Our kernel knows nothing of the half-open connection and answers the SYN-ACK with a RST,
which is also what closes it on the backend.  Needs two raw sockets, so CAP_NET_RAW: the
health prober opens them once, at its set-up (:func:`open_shared`), and then gives up every
capability (docs/service.md); every probe shares them (:class:`RawSockets`: one reader
hands each answer to the probe waiting for its port).  Without them (the run did not hold
CAP_NET_RAW when the prober started) a probe opens its own, which fails with EPERM: a
*local* failure, never counted against the backend.
``source_ipv4`` must be an address of this host (it is: maglev sends from it), or the
answer is not delivered here.  IPv4 VIPs and backends only.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import random
import socket
import struct
from typing import Any

from maglev.datapath import encap as dp_encap
from maglev.datapath.ref_encap import EncapParams, csum_add, csum_fold

SYN, RST, ACK = 0x02, 0x04, 0x10


def syn_packet(src: str, dst: str, sport: int, dport: int, isn: int) -> bytes:
    """An IPv4 TCP SYN (MSS option, checksums filled), as a client's stack would send it."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    opts = struct.pack("!BBH", 2, 4, 1400)  # MSS 1400: the answer fits under the tunnel
    tcp = struct.pack("!HHIIBBHHH", sport, dport, isn, 0, (5 + len(opts) // 4) << 4, SYN, 64240, 0, 0) + opts
    pseudo = s + d + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum_fold(csum_add(csum_add(0, pseudo), tcp))) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0x4000, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", csum_fold(csum_add(0, ip))) + ip[12:]
    return ip + tcp


def encapsulated(spec: Any, sport: int, isn: int) -> bytes:
    """The outer IPv4 packet (no Ethernet) the data path would send for our SYN."""
    inner = syn_packet(spec.source, spec.vip, sport, spec.port, isn)
    params = EncapParams(type=dp_encap.TYPES[spec.tunnel], outer_family=4,
                         src=ipaddress.IPv4Address(spec.source).packed,
                         dst=ipaddress.IPv4Address(spec.address).packed,
                         vni=spec.vni, vxlan_port=spec.vxlan_port or 4789)
    frame = bytes(12) + b"\x08\x00" + inner  # an Ethernet frame, as the worker holds it
    return dp_encap.encap(frame, 14, 4, random.getrandbits(32), params)[14:]


def answer(pkt: bytes, spec: Any, sport: int, isn: int) -> str | None:
    """'synack' or 'rst' when ``pkt`` (an IPv4 packet from a raw TCP socket) is the VIP's
    answer to our SYN, else None."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    if len(pkt) < ihl + 20 or pkt[9] != 6:
        return None
    if pkt[12:16] != ipaddress.IPv4Address(spec.vip).packed or pkt[16:20] != ipaddress.IPv4Address(spec.source).packed:
        return None
    p_sport, p_dport, _seq, ack, _off, flags = struct.unpack_from("!HHIIBB", pkt, ihl)
    if p_sport != spec.port or p_dport != sport:
        return None
    if flags & (SYN | ACK) == SYN | ACK and ack == (isn + 1) & 0xFFFFFFFF:
        return "synack"
    if flags & RST:
        return "rst"
    return None


def _verdict(got: str, spec: Any) -> tuple[bool, str]:
    if got == "synack":
        return True, f"SYN-ACK from {spec.vip}:{spec.port} through {spec.tunnel}"
    return False, f"RST from {spec.vip}:{spec.port} through {spec.tunnel} (nothing listens)"


SO_ATTACH_FILTER = 26
# Classic BPF on the raw TCP socket: keep only segments with SYN or RST set (an answer is a
# SYN-ACK or a RST), so the always-open socket does not copy the host's other TCP traffic:
#   ldxb 4*([0]&0xf); ldb [x+13]; jset #0x14, keep, drop; keep: ret #65535; drop: ret #0
_FILTER = ((0xB1, 0, 0, 0), (0x50, 0, 0, 13), (0x45, 0, 1, SYN | RST), (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0))


def _attach_answer_filter(sock: socket.socket) -> None:
    prog = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in _FILTER))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HxxxxxxP", len(_FILTER), ctypes.addressof(prog)))


class RawSockets:
    """The tunnel probes' two raw sockets, opened while CAP_NET_RAW is held and kept for
    the process's life: ``tx`` (IPPROTO_RAW, sends our outer packets) and ``rx`` (raw TCP,
    filtered to SYN/RST segments).  Concurrent probes share them: each waits on its own
    random source port; one reader (on the event loop of the first probe) drains ``rx`` and
    hands a matching answer to its probe, and drops everything else."""

    def __init__(self) -> None:
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            self.rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        except OSError:
            self.tx.close()
            raise
        try:
            self.rx.setblocking(False)
            self.tx.setblocking(False)
            _attach_answer_filter(self.rx)
        except OSError:
            self.rx.close()
            self.tx.close()
            raise
        self.waiting: dict[int, tuple[Any, int, asyncio.Future[str]]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0  # segments read that no probe waited for

    def _readable(self) -> None:
        while True:
            try:
                pkt = self.rx.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(pkt) < 24:
                continue
            ihl = (pkt[0] & 0x0F) * 4
            dport = int.from_bytes(pkt[ihl + 2:ihl + 4], "big") if len(pkt) >= ihl + 4 else -1
            w = self.waiting.get(dport)
            got = answer(pkt, w[0], dport, w[1]) if w is not None else None
            if got is None or w is None:
                self.dropped += 1
            elif not w[2].done():
                w[2].set_result(got)

    async def probe(self, spec: Any) -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.rx.fileno())
            loop.add_reader(self.rx.fileno(), self._readable)
            self.loop = loop
        sport = random.randint(49152, 65535)
        while sport in self.waiting:
            sport = random.randint(49152, 65535)
        isn = random.getrandbits(32)
        fut: asyncio.Future[str] = loop.create_future()
        self.waiting[sport] = (spec, isn, fut)
        try:
            self.tx.sendto(encapsulated(spec, sport, isn), (spec.address, 0))
            return _verdict(await fut, spec)
        finally:
            del self.waiting[sport]

    def close(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(self.rx.fileno())
        self.rx.close()
        self.tx.close()


_shared: RawSockets | None = None


def open_shared() -> RawSockets | None:
    """Open the process's shared raw sockets (the health prober's set-up, before it drops
    its capabilities); None when this process may not (no CAP_NET_RAW)."""
    global _shared
    if _shared is None:
        try:
            _shared = RawSockets()
        except OSError as exc:  # EPERM without CAP_NET_RAW; never fatal to the prober
            import logging

            logging.getLogger("maglev.health").info(
                "no raw sockets for checks through the tunnel: %s", exc.strerror or exc)
            return None
    return _shared


def close_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None


async def probe(spec: Any) -> tuple[bool, str]:
    """One handshake through the tunnel: (up, detail).  OSError (EPERM without
    CAP_NET_RAW, ENETUNREACH, ...) propagates to run_check, which sorts it."""
    if _shared is not None:
        return await _shared.probe(spec)
    loop = asyncio.get_running_loop()
    sport, isn = random.randint(49152, 65535), random.getrandbits(32)
    pkt = encapsulated(spec, sport, isn)
    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        rx.setblocking(False)
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as tx:
            tx.sendto(pkt, (spec.address, 0))
        while True:
            data = await loop.sock_recv(rx, 65535)
            got = answer(data, spec, sport, isn)
            if got is not None:
                return _verdict(got, spec)
    finally:
        rx.close()

