"""Pure-Python reference of the encapsulation kernel (``maglev/_cffi_src/src/mg_encap.c``).

The contract -- header layouts, DF and TTL policy, VXLAN source port, checksums, errors --
is written once, in ``include/mg_encap.h``; this module states the same behaviour in
readable Python.  It works on packet bytes plus the headroom in front of them (the C
kernel works on a pool frame); differential tests feed both the same packet and compare
the bytes.  Constants are restated here so the reference runs without the C module; a test
checks they equal the compiled ones.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from maglev.datapath.engine import FRAME_HEADROOM
from maglev.datapath.ref_csum import csum_add, csum_fold
from maglev.errors import NativeError

GRE, IPIP, VXLAN, L2 = 0, 1, 2, 3
GRE_REDIRECT = 4  # MG_ENCAP_GRE_REDIRECT: fragment redirection between instances (mg_encap.h)
GRE_F_KEY = 0x2000
REDIRECT_GRE_KEY = 0x4D474C56  # "MGLV": the marker of a redirected fragment
TYPES = {"gre": GRE, "ipip": IPIP, "vxlan": VXLAN, "l2": L2}
TTL = 64
VXLAN_DEFAULT_PORT = 4789
VXLAN_FLAG_I = 0x08
VXLAN_SPORT_BASE = 49152
VXLAN_SPORT_MASK = 0x3FFF


@dataclass(frozen=True)
class EncapParams:
    """What is constant per (VIP, backend); mirrors ``struct mg_encap_params``."""

    type: int = GRE
    outer_family: int = 4
    src: bytes = bytes(4)  # outer IP source, packed (4 or 16 bytes)
    dst: bytes = bytes(4)  # outer IP destination (the backend), packed
    eth_src: bytes = bytes(6)
    eth_dst: bytes = bytes(6)
    inner_eth_src: bytes = bytes(6)
    inner_eth_dst: bytes = bytes(6)
    vni: int = 1
    vxlan_port: int = VXLAN_DEFAULT_PORT


def _fail(code: int, what: str) -> NativeError:
    return NativeError(code, f"encap: {what}")


def overhead(type_: int, outer_family: int) -> int:
    """Bytes added to the L3 packet (outer Ethernet not counted)."""
    if type_ == L2:
        return 0
    if outer_family not in (4, 6):
        raise _fail(errno.EINVAL, f"outer family {outer_family} is not 4 or 6")
    ip = 20 if outer_family == 4 else 40
    if type_ == GRE:
        return ip + 4
    if type_ == GRE_REDIRECT:
        return ip + 8
    if type_ == IPIP:
        return ip
    if type_ == VXLAN:
        return ip + 8 + 8 + 14
    raise _fail(errno.EINVAL, f"unknown encapsulation type {type_}")


def inner_l3_len(l3: bytes, family: int) -> int:
    """The inner packet's length from its own header (padding after it is not part of it)."""
    if family == 4:
        if len(l3) < 20 or l3[0] >> 4 != 4 or l3[0] & 0xF < 5:
            raise _fail(errno.EINVAL, "not an IPv4 header")
        tot = struct.unpack_from("!H", l3, 2)[0]
        if tot < (l3[0] & 0xF) * 4 or tot > len(l3):
            raise _fail(errno.EINVAL, "IPv4 total length inconsistent with the packet")
        return tot
    if family == 6:
        if len(l3) < 40 or l3[0] >> 4 != 6:
            raise _fail(errno.EINVAL, "not an IPv6 header")
        plen = struct.unpack_from("!H", l3, 4)[0]
        if plen == 0 or 40 + plen > len(l3):
            raise _fail(errno.EINVAL, "IPv6 payload length inconsistent (or a jumbogram)")
        return 40 + plen
    raise _fail(errno.EINVAL, f"inner family {family} is not 4 or 6")


def vxlan_sport(flow_hash: int) -> int:
    return VXLAN_SPORT_BASE + ((flow_hash ^ (flow_hash >> 16)) & VXLAN_SPORT_MASK)


def encap(packet: bytes, l3_off: int, inner_family: int, flow_hash: int, p: EncapParams,
          headroom: int = FRAME_HEADROOM) -> bytes:
    """The packet as it leaves toward the backend.  Raises NativeError(ENOSPC) when the
    headers do not fit in ``headroom`` + the old L2 header, NativeError(EINVAL) for bad
    input."""
    packet = bytes(packet)
    flow_hash &= 0xFFFFFFFF
    if p.type == L2:
        if len(packet) < 14:
            raise _fail(errno.EINVAL, "frame shorter than an Ethernet header")
        return p.eth_dst + p.eth_src + packet[12:]
    ov = overhead(p.type, p.outer_family)
    if not 0 <= p.vni <= 0xFFFFFF or l3_off > len(packet):
        raise _fail(errno.EINVAL, "VNI over 24 bits or L3 offset beyond the packet")
    l3len = inner_l3_len(packet[l3_off:], inner_family)
    inner = packet[l3_off : l3_off + l3len]
    hdr = 14 + ov
    if headroom + l3_off < hdr:
        raise _fail(errno.ENOSPC, f"{hdr} bytes of headers need more headroom")

    if inner_family == 4:
        tos = inner[1]
        ident = struct.unpack_from("!H", inner, 4)[0]
        df = bool(struct.unpack_from("!H", inner, 6)[0] & 0x4000)
    else:
        tos = ((inner[0] & 0x0F) << 4) | (inner[1] >> 4)
        ident, df = 0, True
    inner_type = 0x0800 if inner_family == 4 else 0x86DD
    iphl = 20 if p.outer_family == 4 else 40
    payload = ov - iphl + l3len
    if p.type == GRE:
        proto, l4 = 47, struct.pack("!HH", 0, inner_type)
    elif p.type == GRE_REDIRECT:
        proto, l4 = 47, struct.pack("!HHI", GRE_F_KEY, inner_type, REDIRECT_GRE_KEY)
    elif p.type == IPIP:
        proto, l4 = (4 if inner_family == 4 else 41), b""
    else:
        proto = 17
        vx = struct.pack("!II", VXLAN_FLAG_I << 24, p.vni << 8)
        ieth = p.inner_eth_dst + p.inner_eth_src + struct.pack("!H", inner_type)
        l4 = struct.pack("!HHHH", vxlan_sport(flow_hash), p.vxlan_port, payload, 0) + vx + ieth

    if p.outer_family == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, tos, iphl + payload, ident,
                         0x4000 if df else 0, TTL, proto, 0, p.src[:4], p.dst[:4])
        ip = ip[:10] + struct.pack("!H", csum_fold(csum_add(0, ip))) + ip[12:]
    else:
        first = (6 << 28) | (tos << 20) | (flow_hash & 0xFFFFF)
        ip = struct.pack("!IHBB16s16s", first, payload, proto, TTL, p.src, p.dst)
        if p.type == VXLAN:
            pseudo = p.src + p.dst + struct.pack("!IxxxB", payload, 17)
            c = csum_fold(csum_add(csum_add(0, pseudo), l4 + inner)) or 0xFFFF
            l4 = l4[:6] + struct.pack("!H", c) + l4[8:]
    ethertype = 0x0800 if p.outer_family == 4 else 0x86DD
    return p.eth_dst + p.eth_src + struct.pack("!H", ethertype) + ip + l4 + inner
