"""Capture files: read classic pcap and pcapng, write classic pcap.

Reading is defensive because captures come from anywhere (the test corpus has tcpdump's
fuzz cases on purpose):

* classic pcap in both byte orders, microsecond (magic ``a1b2c3d4``) and nanosecond
  (``a1b23c4d``) timestamps, and Alexey Kuznetsov's "modified" pcap (``a1b2cd34``, what
  ``editcap -F modpcap`` writes and libpcap reads: 24-byte record headers, or the 28-byte
  ones of the SuSE 6.3 variant, told apart by which makes sense of the first record);
  the link type is the low 16 bits of its field (as libpcap's ``LT_LINKTYPE``), and when
  the field says an FCS is present (bit 26, its length in 16-bit words in bits 28-31) that
  many trailing bytes are cut from each record; a record's caplen larger than the file's
  snaplen is tolerated (capped at :data:`MAX_RECORD`); caplen < len is normal (truncated
  capture);
* pcapng (section header, interface description, enhanced / simple / obsolete packet
  blocks; other blocks skipped) in both byte orders, with ``if_tsresol``, ``if_tsoffset``
  and ``if_fcslen`` honoured and several sections per file; a block length that is not a
  multiple of 4 (a known writer bug that Wireshark accepts) is rounded up to its padding;
  a section of a major version other than 1 is damage (it cannot be read);
* link types Ethernet (1), Linux cooked SLL (113) and SLL2 (276), raw IP (101, and the
  BSD values 12 and 14), raw IPv4 (228), raw IPv6 (229), BSD loopback NULL (0, address
  family in the writer's byte order) and LOOP (108, network order), PPP (9, 50) and Cisco
  HDLC (104).  Non-Ethernet packets get a
  synthetic Ethernet header (dst 02:00:00:00:00:01, src 02:00:00:00:00:02 -- or the SLL
  source address when it is 6 bytes -- and the ethertype from the link header or the IP
  version nibble), so the data path always sees Ethernet; ``orig_len`` is adjusted
  the same way.  A link header that names no IP protocol (an unknown address family, a
  PPP control protocol) gives ethertype 0, which the data path drops as
  ``unsupported_ethertype``; a record shorter than its link header gives a bare Ethernet
  header (dropped as ``truncated``).  Other link types yield records with ``ok=False``
  that the caller counts as ``unsupported_linktype`` drops.

Damage: a file that is not a capture at all raises :class:`~maglev.errors.PacketError` at
open.  Damage after the header (a truncated record, an impossible length, a bad block)
ends the iteration; the records before it have been yielded, and ``reader.error`` holds
a :class:`PacketError` describing the damage (offset included) for the caller to report.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from maglev.errors import PacketError

__all__ = ["PcapReader", "PcapWriter", "Record", "SUPPORTED_LINKTYPES", "open_capture"]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_PPP_HDLC = 50
LINKTYPE_C_HDLC = 104
LINKTYPE_LOOP = 108
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
SUPPORTED_LINKTYPES = (0, 1, 9, 12, 14, 50, 101, 104, 108, 113, 228, 229, 276)
MAX_RECORD = 256 * 1024  # largest record accepted (jumbo/GSO captures are ~64 KiB)
# Latest record time: a pcapng timestamp is 64 bits in units of if_tsresol (1 s at 10^0),
# so in ns it can pass 2^64 and the frame metadata's uint64 rx_ts_ns (the C engine's
# clock too) -- an OverflowError that crash-looped steering.  Saturated at the int64
# maximum, which leaves room for the clock arithmetic after it (flush, expiry).
MAX_TS_NS = (1 << 63) - 1
# Largest original length: the frame metadata's wire_len is a uint32; a raw-IP record of
# len 0xFFFFFFFF plus the synthetic Ethernet header passed it (the same OverflowError).
MAX_ORIG_LEN = 0xFFFFFFFF
SYN_DST = bytes.fromhex("020000000001")
SYN_SRC = bytes.fromhex("020000000002")

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
    b"\x34\xcd\xb2\xa1": ("<", 1000),  # "modified" pcap (Kuznetsov): longer record headers
    b"\xa1\xb2\xcd\x34": (">", 1000),
}
_MODIFIED = (b"\x34\xcd\xb2\xa1", b"\xa1\xb2\xcd\x34")
# Link-type field of a classic pcap header (libpcap pcap-common.h): the type in the low 16
# bits; bit 26 says the FCS length is present, in 16-bit words, in bits 28-31.
_LT_FCS_PRESENT = 0x04000000
# BSD loopback address families meaning IPv4 / IPv6 (Linux 10, Windows 23, NetBSD/OpenBSD
# 24, FreeBSD 28, macOS 30).
_AF_ETHERTYPE = {2: 0x0800, 10: 0x86DD, 23: 0x86DD, 24: 0x86DD, 28: 0x86DD, 30: 0x86DD}
_PPP_ETHERTYPE = {0x0021: 0x0800, 0x0057: 0x86DD}
_SHB = 0x0A0D0D0A
_BOM = 0x1A2B3C4D


@dataclass(frozen=True)
class Record:
    """One packet as the data path should see it (Ethernet framed)."""

    index: int  # position in the file, from 0
    ts_ns: int
    data: bytes
    orig_len: int
    linktype: int
    ok: bool = True  # False: unsupported link type, ``data`` is the raw record


def _ethernet(linktype: int, raw: bytes, orig_len: int) -> tuple[bytes, int, bool]:
    """(Ethernet frame, adjusted original length, ok)."""
    if linktype == LINKTYPE_ETHERNET:
        return raw, orig_len, True
    if linktype in (LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if linktype == LINKTYPE_IPV4:
            et = 0x0800
        elif linktype == LINKTYPE_IPV6:
            et = 0x86DD
        else:  # raw IP: the version nibble says which (anything but 6 is parsed as IPv4)
            et = 0x86DD if raw and raw[0] >> 4 == 6 else 0x0800
        return SYN_DST + SYN_SRC + struct.pack("!H", et) + raw, orig_len + 14, True
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(raw) < 4:
            return SYN_DST + SYN_SRC + b"\0\0", orig_len, True  # parser: truncated
        # NULL is in the writer's byte order, which need not be the file's: either will do
        le, be = struct.unpack_from("<I", raw)[0], struct.unpack_from(">I", raw)[0]
        et = _AF_ETHERTYPE.get(be if linktype == LINKTYPE_LOOP else le, _AF_ETHERTYPE.get(be, 0))
        return SYN_DST + SYN_SRC + struct.pack("!H", et) + raw[4:], orig_len + 10, True
    if linktype in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC):
        head = 2 if raw[:2] == b"\xff\x03" else 0  # address and control, often compressed away
        if len(raw) > head and raw[head] & 1:  # protocol-field compression: one byte
            proto, head = raw[head], head + 1
        elif len(raw) >= head + 2:
            proto, head = struct.unpack_from("!H", raw, head)[0], head + 2
        else:
            return SYN_DST + SYN_SRC + b"\0\0", orig_len, True
        et = _PPP_ETHERTYPE.get(proto, 0)
        return SYN_DST + SYN_SRC + struct.pack("!H", et) + raw[head:], max(orig_len + 14 - head, 0), True
    if linktype == LINKTYPE_C_HDLC:  # address, control, then an ethertype
        if len(raw) < 4:
            return SYN_DST + SYN_SRC + b"\0\0", orig_len, True
        return SYN_DST + SYN_SRC + raw[2:], orig_len + 10, True
    if linktype == LINKTYPE_LINUX_SLL:
        if len(raw) < 16:
            return SYN_DST + SYN_SRC + b"\0\0", orig_len, True  # parser: truncated
        alen = struct.unpack_from("!H", raw, 4)[0]
        src = raw[6:12] if alen == 6 else SYN_SRC
        et = raw[14:16]
        return SYN_DST + src + et + raw[16:], max(orig_len - 2, 0), True
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(raw) < 20:
            return SYN_DST + SYN_SRC + b"\0\0", orig_len, True
        alen = raw[11]
        src = raw[12:18] if alen == 6 else SYN_SRC
        return SYN_DST + src + raw[0:2] + raw[20:], max(orig_len - 6, 0), True
    return raw, orig_len, False


class PcapReader:
    """Iterate the packets of a classic pcap or pcapng file (see the module docstring)."""

    def __init__(self, source: str | Path | BinaryIO):
        if isinstance(source, str | Path):
            self.name = str(source)
            try:
                self._f: BinaryIO = open(source, "rb")  # closed in close()
            except OSError as exc:
                raise PacketError(f"{source}: cannot open: {exc.strerror or exc}") from None
            self._own = True
        else:
            self.name = getattr(source, "name", "<stream>")
            self._f = source
            self._own = False
        self.error: PacketError | None = None
        self.records = 0
        self.unsupported = 0
        self.linktypes: set[int] = set()
        head = self._f.read(4)
        if len(head) < 4:
            self.close()
            raise PacketError(f"{self.name}: too short to be a capture file ({len(head)} bytes)")
        if head in _PCAP_MAGICS:
            self.format = "pcap"
            self._order, self._ts_mult = _PCAP_MAGICS[head]
            rest = self._f.read(20)
            if len(rest) < 20:
                self.close()
                raise PacketError(f"{self.name}: pcap header truncated")
            _vmaj, _vmin, _tz, _sig, self.snaplen, lt = struct.unpack(self._order + "HHiIII", rest)
            self.linktype = lt & 0xFFFF
            self.linktypes.add(self.linktype)
            self._fcs = 2 * (lt >> 28) if lt & _LT_FCS_PRESENT else 0
            self._rec_hdr = self._modified_header_size() if head in _MODIFIED else 16
        elif struct.unpack("<I", head)[0] == _SHB:
            self.format = "pcapng"
            self.linktype = -1
            self.snaplen = 0
            self._pending = head
        else:
            self.close()
            raise PacketError(f"{self.name}: not a pcap or pcapng file (magic {head.hex()})")

    def __enter__(self) -> PcapReader:
        return self

    @property
    def position(self) -> int:
        """Bytes read so far (for progress bars)."""
        try:
            return self._f.tell()
        except (OSError, ValueError):
            return 0

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self._f.close()

    def _damage(self, offset: int, what: str) -> None:
        self.error = PacketError(f"{self.name}: damaged at byte {offset}: {what}")

    def _modified_header_size(self) -> int:
        """Record header size of a "modified" pcap: 24 (Kuznetsov, libpcap's reading) or 28
        (SuSE 6.3), whichever reads the first records sensibly (whole, microseconds under a
        million); the file is left where it was."""
        start = self._f.tell()
        try:
            for size in (24, 28):
                self._f.seek(start)
                for _ in range(8):
                    hdr = self._f.read(size)
                    if not hdr:
                        return size  # a clean end of file
                    if len(hdr) < size:
                        break
                    _sec, usec, caplen = struct.unpack_from(self._order + "III", hdr)
                    if usec >= 1_000_000 or caplen > MAX_RECORD or len(self._f.read(caplen)) < caplen:
                        break
                else:
                    return size
            return 24
        finally:
            self._f.seek(start)

    def _record(self, lt: int, ts_ns: int, raw: bytes, orig_len: int, fcs: int = 0) -> Record:
        if fcs:  # the frame check sequence ends the original packet; cut what of it was captured
            raw = raw[: len(raw) - max(0, min(fcs, len(raw) - (orig_len - fcs)))]
            orig_len = max(orig_len - fcs, 0)
        data, olen, ok = _ethernet(lt, raw, orig_len)
        rec = Record(self.records, min(ts_ns, MAX_TS_NS), data, min(olen, MAX_ORIG_LEN), lt, ok)
        self.records += 1
        if not ok:
            self.unsupported += 1
        return rec

    def __iter__(self) -> Iterator[Record]:
        if self.format == "pcap":
            yield from self._iter_pcap()
        else:
            yield from self._iter_pcapng()

    def _iter_pcap(self) -> Iterator[Record]:
        f, o, size = self._f, self._order, self._rec_hdr
        off = 24
        while True:
            hdr = f.read(size)
            if not hdr:
                return
            if len(hdr) < size:
                return self._damage(off, f"record header cut after {len(hdr)} of {size} bytes")
            sec, frac, caplen, orig = struct.unpack_from(o + "IIII", hdr)
            if caplen > MAX_RECORD:
                return self._damage(off, f"record length {caplen} exceeds {MAX_RECORD}")
            raw = f.read(caplen)
            if len(raw) < caplen:
                return self._damage(off, f"record data cut: {len(raw)} of {caplen} bytes")
            off += size + caplen
            yield self._record(self.linktype, sec * 1_000_000_000 + frac * self._ts_mult, raw, orig, self._fcs)

    def _iter_pcapng(self) -> Iterator[Record]:
        f = self._f
        off = 0
        o = "<"
        ifaces: list[tuple[int, int, int, int]] = []  # (linktype, units per second, offset s, FCS bytes)
        head = self._pending
        while True:
            rest = f.read(8 - len(head)) if len(head) < 8 else b""
            block = head + rest
            head = b""
            if not block:
                return
            if len(block) < 8:
                return self._damage(off, "block header cut")
            btype = struct.unpack_from(o + "I", block)[0]
            if btype == _SHB or struct.unpack_from("<I", block)[0] == _SHB:
                bom = f.read(4)
                if len(bom) < 4:
                    return self._damage(off, "section header cut")
                if struct.unpack("<I", bom)[0] == _BOM:
                    o = "<"
                elif struct.unpack(">I", bom)[0] == _BOM:
                    o = ">"
                else:
                    return self._damage(off, "section header has no byte-order magic")
                blen = struct.unpack_from(o + "I", block, 4)[0]
                if blen < 28 or blen % 4 or blen > MAX_RECORD + 64:
                    return self._damage(off, f"section header length {blen} invalid")
                body = f.read(blen - 12)
                if len(body) < blen - 12:
                    return self._damage(off, "section header cut")
                major, minor = struct.unpack_from(o + "HH", body)
                if major != 1:  # the layout of everything after it may differ: unreadable
                    return self._damage(off, f"section header version {major}.{minor} not supported")
                ifaces = []
                off += blen
                continue
            blen = struct.unpack_from(o + "I", block, 4)[0]
            if blen < 12 or blen > MAX_RECORD + 64:
                return self._damage(off, f"block length {blen} invalid")
            padded = (blen + 3) & ~3  # some writers leave the padding out of the length
            body = f.read(padded - 8)
            if len(body) < padded - 8:
                return self._damage(off, f"block cut: {len(body)} of {padded - 8} bytes")
            if struct.unpack_from(o + "I", body, padded - 12)[0] != blen:
                return self._damage(off, "block trailing length does not match")
            body = body[:-4]
            if btype == 1:  # interface description
                if len(body) < 8:
                    return self._damage(off, "interface block too short")
                lt = struct.unpack_from(o + "H", body)[0]
                ifaces.append((lt, *self._if_options(body[8:], o)))
                self.linktypes.add(lt)
                if self.linktype < 0:
                    self.linktype = lt
            elif btype in (6, 2):  # enhanced / obsolete packet
                if len(body) < 20:
                    return self._damage(off, "packet block too short")
                if btype == 6:
                    ifid, hi, lo, caplen, orig = struct.unpack_from(o + "IIIII", body)
                else:
                    ifid, _drops, hi, lo, caplen, orig = struct.unpack_from(o + "HHIIII", body)
                if ifid >= len(ifaces):
                    return self._damage(off, f"packet for undeclared interface {ifid}")
                if caplen > len(body) - 20:
                    return self._damage(off, f"captured length {caplen} exceeds the block")
                lt, per_s, ts_off, fcs = ifaces[ifid]
                ts = (hi << 32) | lo
                ts_ns = max(ts * 1_000_000_000 // per_s + ts_off * 1_000_000_000, 0)
                yield self._record(lt, ts_ns, body[20 : 20 + caplen], orig, fcs)
            elif btype == 3:  # simple packet: interface 0, no timestamp
                if not ifaces or len(body) < 4:
                    return self._damage(off, "simple packet block without interface or length")
                orig = struct.unpack_from(o + "I", body)[0]
                data = body[4 : 4 + min(orig, len(body) - 4)]
                yield self._record(ifaces[0][0], 0, data, orig, ifaces[0][3])
            off += padded

    @staticmethod
    def _if_options(opts: bytes, o: str) -> tuple[int, int, int]:
        """(timestamp units per second, timestamp offset in seconds, FCS bytes) of an
        interface: options if_tsresol (default 10^6), if_tsoffset and if_fcslen (default
        0).  An option cut short or of the wrong size is ignored."""
        per_s, offset, fcs = 10**6, 0, 0
        i = 0
        while i + 4 <= len(opts):
            code, ln = struct.unpack_from(o + "HH", opts, i)
            if code == 0:
                break
            val = opts[i + 4 : i + 4 + ln]
            if len(val) < ln:
                break
            if code == 9 and ln >= 1:
                v = val[0]
                exp = v & 0x7F
                if v & 0x80 or exp <= 30:  # an absurd resolution keeps the default
                    per_s = (2**exp) if v & 0x80 else (10**exp)
            elif code == 14 and ln == 8:
                offset = struct.unpack_from(o + "q", val)[0]
            elif code == 13 and ln >= 1:  # in bits by the spec; in bytes by some writers
                fcs = {16: 2, 32: 4, 2: 2, 4: 4}.get(val[0], 0)
            i += 4 + ((ln + 3) & ~3)
        return per_s, offset, fcs


def open_capture(path: str | Path) -> PcapReader:
    """Open a capture file (pcap or pcapng); raises PacketError when it is not one."""
    return PcapReader(path)


class PcapWriter:
    """Write a classic little-endian pcap file (link type Ethernet by default).

    Records are buffered and written by :meth:`flush` (when 64 KiB are pending, and at
    :meth:`close`).  A write that fails (a full disk, EIO, EFBIG, ``/dev/full``) raises
    :class:`PacketError` after cutting the file back to its last whole record, and
    :attr:`count` then says how many records the file holds: the file never ends in a torn
    record, and a caller that flushes per burst knows exactly which of its records were
    written.  ``resume=True`` continues a file an earlier writer of the same run left (a
    restarted muxer): its whole records are kept, a torn last one is cut, and a missing,
    empty or foreign file is started anew."""

    FLUSH_AT = 1 << 16

    def __init__(self, path: str | Path, *, linktype: int = LINKTYPE_ETHERNET, snaplen: int = 262144,
                 nanosecond: bool = True, resume: bool = False):
        self.path = str(path)
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        self._div = 1 if nanosecond else 1000
        self.snaplen = snaplen
        self.count = 0
        self._buf = bytearray()
        self._ends: list[int] = []  # end offset in _buf of each pending record
        header = struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)
        self._f: BinaryIO | None = None
        try:
            self._pos = self._resume(header) if resume else -1
            if self._pos < 0:
                self._f = open(path, "wb", buffering=0)  # closed in close()
                self._write_all(header)
                self._pos = len(header)
        except OSError as exc:
            if self._f is not None:
                self._f.close()
            raise PacketError(f"{path}: cannot write: {exc.strerror or exc}") from None

    def _resume(self, header: bytes) -> int:
        """Open an earlier writer's file for appending; its end offset after cutting a torn
        last record, or -1 when it is not ours to continue (start anew)."""
        try:
            f = open(self.path, "r+b", buffering=0)  # closed in close()
        except FileNotFoundError:
            return -1
        fd = f.fileno()
        size = os.fstat(fd).st_size
        if size < len(header) or os.pread(fd, len(header), 0) != header:
            f.close()
            return -1
        pos = len(header)
        while pos + 16 <= size:
            caplen = struct.unpack("<8xI4x", os.pread(fd, 16, pos))[0]
            if pos + 16 + caplen > size:
                break
            pos += 16 + caplen
            self.count += 1
        os.ftruncate(fd, pos)
        f.seek(pos)
        self._f = f
        return pos

    def _write_all(self, b: bytes | memoryview) -> int:
        """Write ``b``; returns the bytes written, or raises OSError with ``done`` set."""
        assert self._f is not None
        done = 0
        while done < len(b):
            try:
                n = self._f.write(b[done:])
            except OSError as exc:
                exc.done = done  # type: ignore[attr-defined]
                raise
            done += n or 0
        return done

    def write(self, data: bytes, ts_ns: int = 0, orig_len: int | None = None) -> None:
        """Append one record (buffered; a failing flush raises :class:`PacketError`)."""
        cap = data[: self.snaplen]
        sec, frac = divmod(ts_ns, 1_000_000_000)
        self._buf += struct.pack("<IIII", sec & 0xFFFFFFFF, frac // self._div, len(cap),
                                 len(data) if orig_len is None else orig_len)
        self._buf += cap
        self._ends.append(len(self._buf))
        self.count += 1
        if len(self._buf) >= self.FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Write the pending records.  On failure, the file is cut back to its last whole
        record, the unwritten records are forgotten (:attr:`count` drops by their number)
        and :class:`PacketError` says why."""
        if not self._buf:
            return
        try:
            self._write_all(bytes(self._buf))  # a copy: a view would pin the buffer's size
        except OSError as exc:
            done = getattr(exc, "done", 0)
            kept = bisect.bisect_right(self._ends, done)
            cut = self._ends[kept - 1] if kept else 0
            try:
                assert self._f is not None
                os.ftruncate(self._f.fileno(), self._pos + cut)
                self._f.seek(self._pos + cut)
            except OSError:
                pass
            self._pos += cut
            self.count -= len(self._ends) - kept
            self._buf.clear()
            self._ends.clear()
            raise PacketError(f"{self.path}: cannot write: {exc.strerror or exc}") from None
        self._pos += len(self._buf)
        self._buf.clear()
        self._ends.clear()

    def close(self) -> None:
        """Flush and close; the file is closed also when the flush fails (then
        :class:`PacketError` says why)."""
        if self._f is None:
            return
        try:
            self.flush()
        finally:
            self._f.close()
            self._f = None

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
