"""A small packet builder for tests (and users' experiments): Ethernet, 802.1Q, IPv4 with
options and fragments, IPv6 with extension headers, TCP, UDP, ICMP, ICMPv6 -- with
correct lengths and checksums -- plus a classic pcap writer.

Every function returns ``bytes``; layers are composed by nesting calls::

    frame = eth(ipv4("198.51.100.7", "203.0.113.10", TCP, tcp(40000, 80, b"GET /")))

Addresses are strings (``ipaddress`` accepts both families).  Checksums are computed here
independently of the data path's code, so tests that compare against these packets check
the data path rather than restate it.  Deliberately malformed packets are made by slicing
or patching the returned bytes.
"""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

from maglev.datapath.ref_csum import checksum

TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58
GRE = 47
IPIP = 4
IPV6_IN = 41
HOPOPTS = 0
ROUTING = 43
FRAGMENT = 44
DSTOPTS = 60

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = 0x8100

CLIENT_MAC = "02:00:00:00:00:01"
ROUTER_MAC = "02:00:00:00:00:fe"


def mac(s: str | bytes) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` -> 6 bytes (bytes pass through)."""
    if isinstance(s, bytes):
        if len(s) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(s)}")
        return s
    b = bytes(int(x, 16) for x in s.split(":"))
    if len(b) != 6:
        raise ValueError(f"{s!r} is not a MAC address")
    return b


def addr(a: str | bytes) -> bytes:
    return a if isinstance(a, bytes) else ipaddress.ip_address(a).packed


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def eth(payload: bytes, dst: str | bytes = ROUTER_MAC, src: str | bytes = CLIENT_MAC,
        ethertype: int | None = None, vlans: Iterable[int] = ()) -> bytes:
    """Ethernet II; ``ethertype`` defaults from the payload's IP version; ``vlans`` adds
    802.1Q tags (outermost first)."""
    if ethertype is None:
        ethertype = ETH_IPV6 if payload and payload[0] >> 4 == 6 else ETH_IPV4
    tags = b"".join(struct.pack("!HH", ETH_VLAN, v & 0xFFF) for v in vlans)
    return mac(dst) + mac(src) + tags + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, tos: int = 0,
         ident: int = 0x1234, df: bool = True, mf: bool = False, frag_offset: int = 0,
         options: bytes = b"", total_length: int | None = None) -> bytes:
    """IPv4 header + payload.  ``frag_offset`` in bytes (a multiple of 8)."""
    if len(options) % 4:
        raise ValueError("IPv4 options must be padded to a multiple of 4 bytes")
    ihl = 5 + len(options) // 4
    flags = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_offset // 8)
    tot = total_length if total_length is not None else ihl * 4 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, tot, ident, flags, ttl, proto, 0,
                      addr(src), addr(dst)) + options
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes, *, hlim: int = 64, tc: int = 0,
         flow: int = 0) -> bytes:
    """IPv6 header + payload (``payload`` may start with extension headers; ``nh`` names
    the first of them)."""
    first = (6 << 28) | (tc << 20) | (flow & 0xFFFFF)
    return struct.pack("!IHBB16s16s", first, len(payload), nh, hlim, addr(src), addr(dst)) + payload


def ext(nh: int, body: bytes = b"\0" * 6) -> bytes:
    """A hop-by-hop / routing / destination-options header: next header, length, body
    (``body`` is padded to make the header a multiple of 8 bytes)."""
    body = body + b"\0" * (-(len(body) + 2) % 8)
    return struct.pack("!BB", nh, (len(body) + 2) // 8 - 1) + body


def frag6(nh: int, ident: int, offset: int = 0, more: bool = False) -> bytes:
    """The IPv6 fragment header (offset in bytes)."""
    return struct.pack("!BBHI", nh, 0, (offset & ~7) | (1 if more else 0), ident)


def tcp(sport: int, dport: int, payload: bytes = b"", *, src: str, dst: str, seq: int = 1,
        ack: int = 0, flags: int = 0x18, window: int = 65535) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    seg = hdr + payload
    c = checksum(_pseudo(addr(src), addr(dst), TCP, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp(sport: int, dport: int, payload: bytes = b"", *, src: str, dst: str) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = checksum(_pseudo(addr(src), addr(dst), UDP, len(seg)) + seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", c) + seg[8:]


def icmp4(typ: int, code: int, rest: bytes = b"\0" * 4, payload: bytes = b"") -> bytes:
    msg = struct.pack("!BBH", typ, code, 0) + rest + payload
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def icmp6(typ: int, code: int, rest: bytes = b"\0" * 4, payload: bytes = b"", *, src: str,
          dst: str) -> bytes:
    msg = struct.pack("!BBH", typ, code, 0) + rest + payload
    c = checksum(_pseudo(addr(src), addr(dst), ICMPV6, len(msg)) + msg)
    return msg[:2] + struct.pack("!H", c) + msg[4:]


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


def l3_offset(frame: bytes) -> int:
    """Offset of the L3 header in an Ethernet frame (skips 802.1Q/802.1ad tags)."""
    off = 12
    while struct.unpack_from("!H", frame, off)[0] in (ETH_VLAN, 0x88A8):
        off += 4
    return off + 2


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
