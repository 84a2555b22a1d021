"""A small packet builder for tests (and users' experiments): the frame builders of
:mod:`maglev.datapath.frames` (Ethernet, 802.1Q, IPv4 with options and fragments, IPv6
with extension headers, TCP, UDP, ICMP, ICMPv6 -- correct lengths and checksums), plus a
client -> VIP TCP frame, a classic pcap writer and tshark decoding.

Every function returns ``bytes``; layers are composed by nesting calls::

    frame = eth(ipv4("198.51.100.7", "203.0.113.10", TCP, tcp(40000, 80, b"GET /")))

Checksums are computed independently of the data path's C code, so tests that compare
against these packets check the data path rather than restate it.  Deliberately malformed
packets are made by slicing or patching the returned bytes.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

from maglev.datapath.frames import (
    CLIENT_MAC,
    DSTOPTS,
    ETH_IPV4,
    ETH_IPV6,
    ETH_VLAN,
    FRAGMENT,
    GRE,
    HOPOPTS,
    ICMP,
    ICMPV6,
    IPIP,
    IPV6_IN,
    ROUTER_MAC,
    ROUTING,
    TCP,
    UDP,
    addr,
    checksum,
    eth,
    ext,
    frag6,
    icmp4,
    icmp6,
    ipv4,
    ipv6,
    l3_offset,
    mac,
    tcp,
    udp,
)

# The builders are production code (maglev.datapath.frames, used by `maglev whereis`); they
# are re-exported here so tests keep writing ``P.tcp(...)``.
__all__ = [
    "CLIENT_MAC",
    "DSTOPTS",
    "ETH_IPV4",
    "ETH_IPV6",
    "ETH_VLAN",
    "FRAGMENT",
    "GRE",
    "HOPOPTS",
    "ICMP",
    "ICMPV6",
    "IPIP",
    "IPV6_IN",
    "ROUTER_MAC",
    "ROUTING",
    "TCP",
    "TSHARK_BAD",
    "TSHARK_GOOD",
    "TSHARK_NOT_PRESENT",
    "TSHARK_PREFS",
    "TSHARK_UNVERIFIED",
    "UDP",
    "addr",
    "checksum",
    "eth",
    "ext",
    "frag6",
    "icmp4",
    "icmp6",
    "ipv4",
    "ipv6",
    "l3_offset",
    "mac",
    "tcp",
    "tcp_packet",
    "tshark_fields",
    "udp",
    "why_no_tshark",
    "write_pcap",
]


def tcp_packet(family: int = 4, size: int = 100, *, df: bool = True, sport: int = 40000,
               dport: int = 80, vlans: Iterable[int] = (), client: str | None = None,
               vip: str | None = None, ident: int = 0x1234, tos: int = 0) -> bytes:
    """An Ethernet frame carrying a client -> VIP TCP segment whose L3 length is ``size``."""
    client = client or ("198.51.100.7" if family == 4 else "2001:db8:c::7")
    vip = vip or ("203.0.113.10" if family == 4 else "2001:db8:f::10")
    hl = 20 if family == 4 else 40
    body = bytes(i & 0xFF for i in range(max(size - hl - 20, 0)))
    seg = tcp(sport, dport, body, src=client, dst=vip)
    if family == 4:
        l3 = ipv4(client, vip, TCP, seg, df=df, ident=ident, tos=tos)
    else:
        l3 = ipv6(client, vip, TCP, seg, tc=tos)
    return eth(l3, vlans=vlans)


def write_pcap(path: str | Path, frames: Iterable[bytes], linktype: int = 1) -> Path:
    """Classic little-endian microsecond pcap, one packet per millisecond."""
    p = Path(path)
    with p.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for i, fr in enumerate(frames):
            f.write(struct.pack("<IIII", 1, i * 1000, len(fr), len(fr)) + fr)
    return p


# tshark's checksum status values in ``-T fields`` output.
TSHARK_GOOD, TSHARK_BAD, TSHARK_UNVERIFIED, TSHARK_NOT_PRESENT = "1", "0", "2", "3"
TSHARK_PREFS = (
    "-o", "ip.check_checksum:TRUE",
    "-o", "udp.check_checksum:TRUE",
    "-o", "tcp.check_checksum:TRUE",
    "-o", "tcp.analyze_sequence_numbers:FALSE",
)


def why_no_tshark() -> str | None:
    """None when tshark is available, else the sentence a test skips with."""
    if shutil.which("tshark") is None:
        return "tshark is not installed (apt-get install tshark): it is the independent decoder these tests check against"
    return None


def tshark_fields(folder: str | Path, frames: list[bytes], names: list[str]) -> list[dict[str, list[str]]]:
    """Decode ``frames`` with tshark (checksum validation on) and return, per frame, a dict
    field name -> list of values (one per occurrence, outer header first)."""
    tshark = shutil.which("tshark")
    if tshark is None:
        raise RuntimeError(why_no_tshark())
    pcap = write_pcap(Path(folder) / "frames.pcap", frames)
    cmd = [tshark, "-n", "-r", str(pcap), *TSHARK_PREFS, "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=a", "-E", "aggregator=,"]
    for n in names:
        cmd += ["-e", n]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed: {r.stderr.strip()}")
    rows = []
    for line in r.stdout.splitlines():
        cols = line.split("\t")
        cols += [""] * (len(names) - len(cols))
        rows.append({n: [v for v in c.split(",") if v] for n, c in zip(names, cols, strict=True)})
    if len(rows) != len(frames):
        raise RuntimeError(f"tshark decoded {len(rows)} frames of {len(frames)}")
    return rows
