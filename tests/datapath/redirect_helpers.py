"""Shared by the fragment-redirection tests: configs of several instances of one pool
(paper 4.3) and independently built packets (maglev.testing.packets) -- the marked GRE a
redirect must produce, fragments of UDP datagrams, and the owner computed from the pool
with the reference SipHash."""

from __future__ import annotations

import ipaddress
import struct

from maglev import config as cfg
from maglev.datapath.ref_parse import parse
from maglev.datapath.tables import read_tables
from maglev.hashing.reference import siphash13
from maglev.testing import packets as P

from .dp_helpers import CONFIG_TOML

POOL = ("198.18.0.3", "198.18.0.1", "198.18.0.2")  # listed unsorted on purpose
REDIRECT_KEY = 0x4D474C56  # "MGLV", the documented marker (docs/datapath.md)


def pool_config(own: str, pool: tuple[str, ...] = POOL) -> cfg.Config:
    """dp_helpers' config as the instance whose source_ipv4 is ``own``, with ``pool``."""
    text = CONFIG_TOML.replace('source_ipv4 = "198.18.0.1"', f'source_ipv4 = "{own}"')
    members = ", ".join(f'"{a}"' for a in pool)
    text = text.replace("mtu = 1500", f"mtu = 1500\npool = [{members}]")
    return cfg.loads(text)


def owner(pool: tuple[str, ...], blob: bytes, frame: bytes) -> str:
    """The pool member owning this fragment: sorted pool [3-tuple hash % size]."""
    view = read_tables(blob)
    rc, p = parse(frame)
    assert rc == 0
    h = siphash13(view.header["hash_k0"], view.header["hash_k1"], p.key(ports=False))
    members = sorted(pool, key=lambda a: ipaddress.ip_address(a).packed)
    return members[h % len(members)]


def marked_gre(src: str, dst: str, frame: bytes, *, key: int | None = REDIRECT_KEY,
               ptype: int | None = None) -> bytes:
    """What a redirect of ``frame`` (an Ethernet frame) from ``src`` to ``dst`` looks like:
    the MACs reflected, outer IPv4 (TTL 64, TOS/ID/DF of the inner IPv4 header), GRE with
    the key bit and ``key`` (None: a plain 4-byte GRE header)."""
    l3 = frame[14:]
    inner4 = l3[0] >> 4 == 4
    if ptype is None:
        ptype = 0x0800 if inner4 else 0x86DD
    gre = struct.pack("!HH", 0, ptype) if key is None else struct.pack("!HHI", 0x2000, ptype, key)
    if inner4:
        tos, ident, df = l3[1], struct.unpack_from("!H", l3, 4)[0], bool(l3[6] & 0x40)
    else:
        tos, ident, df = ((l3[0] & 0xF) << 4) | (l3[1] >> 4), 0, True
    outer = P.ipv4(src, dst, P.GRE, gre + l3, tos=tos, ident=ident, df=df)
    return P.eth(outer, dst=frame[6:12], src=frame[0:6])


def udp_fragments(client: str, vip: str, sport: int, ident: int, size: int = 2000,
                  piece: int = 800) -> list[bytes]:
    """An IPv4 UDP datagram of ``size`` payload bytes to vip:53 cut into fragments of
    ``piece`` bytes (a multiple of 8), first fragment first."""
    data = P.udp(sport, 53, bytes((ident + i) & 0xFF for i in range(size)), src=client, dst=vip)
    out = []
    for off in range(0, len(data), piece):
        more = off + piece < len(data)
        out.append(P.eth(P.ipv4(client, vip, P.UDP, data[off : off + piece], df=False, mf=more,
                                frag_offset=off, ident=ident)))
    return out


def tcp6_fragments(client: str, vip: str, sport: int, ident: int, size: int = 2000,
                   piece: int = 800) -> list[bytes]:
    """An IPv6 TCP segment to vip:443 cut the same way (fragment extension header)."""
    data = P.tcp(sport, 443, bytes((ident * 7 + i) & 0xFF for i in range(size)), src=client, dst=vip)
    out = []
    for off in range(0, len(data), piece):
        more = off + piece < len(data)
        out.append(P.eth(P.ipv6(client, vip, P.FRAGMENT,
                                P.frag6(P.TCP, ident, off, more) + data[off : off + piece])))
    return out
