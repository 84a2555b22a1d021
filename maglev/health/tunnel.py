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
which is also what closes it on the backend.  Needs CAP_NET_RAW (the prober runs as
root); without it the probe is a *local* failure, never counted against the backend.
``source_ipv4`` must be an address of this host (it is: maglev sends from it), or the
answer is not delivered here.  IPv4 VIPs and backends only.
"""

from __future__ import annotations

import asyncio
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


async def probe(spec: Any) -> tuple[bool, str]:
    """One handshake through the tunnel: (up, detail).  OSError (EPERM without
    CAP_NET_RAW, ENETUNREACH, ...) propagates to run_check, which sorts it."""
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
            if got == "synack":
                return True, f"SYN-ACK from {spec.vip}:{spec.port} through {spec.tunnel}"
            if got == "rst":
                return False, f"RST from {spec.vip}:{spec.port} through {spec.tunnel} (nothing listens)"
    finally:
        rx.close()

