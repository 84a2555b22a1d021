"""Two clusters for the VIP-matching tests (paper 4.2): configs, and packets built with
maglev.testing.packets (independent of the code under test)."""

from __future__ import annotations

import struct

from maglev import config as cfg
from maglev.testing import packets as P

CLIENT4, CLIENT6 = "198.51.100.7", "2001:db8:c::7"
A_SRC4, A_SRC6 = "198.18.0.1", "2001:db8:1::1"
B_FWD = ("198.18.9.1", "198.18.9.2")
B_FWD6 = "2001:db8:9::1"
C_FWD = "198.18.10.1"
# cluster a: 203.0.113.0/26 and 2001:db8:a::/64; b: .64/26 and 2001:db8:b::/64; c: .128/26
A_WEB, A_DOWN, A_WEB6 = "203.0.113.10", "203.0.113.20", "2001:db8:a::10"
B_WEB, B_DOWN, B_WEB6, B_NONE = "203.0.113.74", "203.0.113.84", "2001:db8:b::10", "203.0.113.75"
C_WEB = "203.0.113.138"
OUTSIDE = "203.0.113.200"  # a local VIP outside every cluster prefix


def a_toml(backup: str = '["b", "c"]') -> str:
    return f"""
[instance]
name = "a1"
source_ipv4 = "{A_SRC4}"
source_ipv6 = "{A_SRC6}"

[cluster]
name = "a"
prefixes = ["203.0.113.0/26", "2001:db8:a::/64"]
backup = {backup}

[[cluster.peer]]
name = "b"
prefixes = ["203.0.113.64/26", "2001:db8:b::/64"]
forwarders = ["{B_FWD[0]}", "{B_FWD[1]}", "{B_FWD6}"]

[[cluster.peer]]
name = "c"
prefixes = ["203.0.113.128/26"]
forwarders = ["{C_FWD}"]

[[vip]]
address = "{A_WEB}"
port = 80
[[vip.backend]]
address = "198.18.1.1"
[[vip.backend]]
address = "198.18.1.2"

[[vip]]
address = "{A_DOWN}"
port = 80
[[vip.backend]]
address = "198.18.1.9"

[[vip]]
address = "{A_WEB6}"
port = 443
[[vip.backend]]
address = "2001:db8:2::1"

[[vip]]
address = "{OUTSIDE}"
port = 80
[[vip.backend]]
address = "198.18.1.3"
"""


A_DOWN_SET = frozenset({(f"{A_DOWN}:80/tcp", "198.18.1.9")})

B_TOML = f"""
[instance]
name = "b1"
source_ipv4 = "{B_FWD[0]}"

[cluster]
name = "b"
prefixes = ["203.0.113.64/26"]

[[cluster.peer]]
name = "a"
prefixes = ["203.0.113.0/26"]
forwarders = ["{A_SRC4}"]

[[vip]]
address = "{B_DOWN}"
port = 80
[[vip.backend]]
address = "198.18.7.1"
"""


def a_config(backup: str = '["b", "c"]') -> cfg.Config:
    return cfg.loads(a_toml(backup))


def b_config() -> cfg.Config:
    return cfg.loads(B_TOML)


def tcp4(dst: str, dport: int = 80, sport: int = 40000, payload: bytes = b"hello", src: str = CLIENT4) -> bytes:
    return P.eth(P.ipv4(src, dst, P.TCP, P.tcp(sport, dport, payload, src=src, dst=dst)))


def tcp6(dst: str, dport: int = 443, sport: int = 40000) -> bytes:
    return P.eth(P.ipv6(CLIENT6, dst, P.TCP, P.tcp(sport, dport, b"x", src=CLIENT6, dst=dst)))


def gre_from(src: str, dst: str, frame: bytes, flags: int = 0) -> bytes:
    """``frame``'s IP packet in plain GRE (RFC 2784) from ``src`` to ``dst`` (IPv4 outer)."""
    l3 = frame[14:]
    ptype = 0x0800 if l3[0] >> 4 == 4 else 0x86DD
    gre = struct.pack("!HH", flags, ptype) + (b"\0\0\0\0" if flags & 0x2000 else b"")
    return P.eth(P.ipv4(src, dst, P.GRE, gre + l3), dst=frame[0:6], src=frame[6:12])


def outer_gre(frame: bytes) -> tuple[str, str, bytes]:
    """(outer source, outer destination, inner IP packet) of a plain-GRE frame (IPv4 or
    IPv6 outer, no extension headers)."""
    import ipaddress

    if frame[12:14] == b"\x08\x00":
        assert frame[23] == P.GRE, frame[:40].hex()
        ihl = (frame[14] & 0xF) * 4
        src, dst, gre = frame[26:30], frame[30:34], 14 + ihl
    else:
        assert frame[12:14] == b"\x86\xdd" and frame[20] == P.GRE, frame[:40].hex()
        src, dst, gre = frame[22:38], frame[38:54], 54
    flags, _ptype = struct.unpack_from("!HH", frame, gre)
    assert flags == 0
    return str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), frame[gre + 4 :]
