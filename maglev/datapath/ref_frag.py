"""Pure-Python reference of the fragment kernels (``maglev/_cffi_src/src/mg_frag.c``).

The rules -- buckets, ways, which way a new datagram takes, when a decision is evicted,
hold limits, expiry, output order -- are written in ``include/mg_frag.h``; this module
states them again in plain Python with the same data layout (a flat list of entries,
a hold-slot pool with free list and output FIFO), so the C table and this one can be
driven with the same operations and compared step by step.
"""

from __future__ import annotations

import errno
import ipaddress
import struct
from dataclasses import dataclass, field

from maglev.datapath.engine import FRAME_DATA_MAX
from maglev.datapath.ref_csum import csum_add, csum_fold
from maglev.datapath.ref_encap import inner_l3_len
from maglev.errors import NativeError
from maglev.hashing.reference import siphash13

WAYS = 4
DEFAULT_TIMEOUT_MS = 2000
DEFAULT_ENTRIES = 4096
DEFAULT_HOLD_FRAMES = 256
DEFAULT_HOLD_BYTES = 256 * 1024
HOLD_PER_DATAGRAM = 52
MAX_ENTRIES = 1 << 24
MAX_HOLD = 1 << 20
NIL = 0xFFFFFFFF
R_RELEASED, R_EXPIRED, R_EVICTED = 0, 1, 2
STATS = ("first", "forwarded", "held", "released", "expired", "evicted", "evictions",
         "drop_table_full", "drop_hold_limit")


def frag_key(family: int, src: str | bytes, dst: str | bytes, proto: int, ident: int) -> bytes:
    """The 40-byte ``struct mg_frag_key`` (id in host byte order, as C stores it)."""
    s = src if isinstance(src, bytes) else ipaddress.ip_address(src).packed
    d = dst if isinstance(dst, bytes) else ipaddress.ip_address(dst).packed
    return struct.pack("=16s16sIBBxx", s, d, ident, proto, family)


def key_ok(key: bytes) -> bool:
    if len(key) != 40:
        return False
    family, pad = key[37], key[38:40]
    if family not in (4, 6) or pad != b"\0\0":
        return False
    return not (family == 4 and (any(key[4:16]) or any(key[20:32])))


def _buckets_for(entries: int) -> int:
    n = WAYS
    while n < entries:
        n <<= 1
    return n // WAYS


@dataclass
class _Entry:
    key: bytes = bytes(40)
    expire_ns: int = 0
    backend: int = -1
    vip_index: int = 0
    held: list[int] = field(default_factory=list)  # slot indices, arrival order


@dataclass
class _Slot:
    frame: int = 0
    length: int = 0
    backend: int = -1
    vip_index: int = 0
    reason: int = 0


class FragTable:
    """Same operations and results as the C table (``maglev.datapath.frag.FragTable``)."""

    def __init__(self, entries: int = DEFAULT_ENTRIES, hold_max: int = DEFAULT_HOLD_FRAMES,
                 hold_bytes_max: int = DEFAULT_HOLD_BYTES, timeout_ns: int = DEFAULT_TIMEOUT_MS * 10**6,
                 key: tuple[int, int] = (0, 0)):
        if not (0 < entries <= MAX_ENTRIES and 0 < hold_max <= MAX_HOLD and timeout_ns > 0):
            raise NativeError(errno.EINVAL, "frag table: entries, hold_max or timeout out of range")
        self.nbuckets = _buckets_for(entries)
        self.hold_max = hold_max
        self.hold_bytes_max = hold_bytes_max
        self.timeout_ns = timeout_ns
        self.k0, self.k1 = key
        self.entries = [_Entry() for _ in range(self.nbuckets * WAYS)]
        self.slots = [_Slot() for _ in range(hold_max)]
        self.free = list(range(hold_max))  # free list, head first
        self.out: list[int] = []  # output FIFO of slot indices
        self.hold_count = 0
        self.hold_bytes = 0
        self.cursor = 0
        self.stats = dict.fromkeys(STATS, 0)

    def _bucket(self, key: bytes) -> list[_Entry]:
        b = siphash13(self.k0, self.k1, key) & (self.nbuckets - 1)
        return self.entries[b * WAYS : (b + 1) * WAYS]

    @staticmethod
    def _live(e: _Entry, now: int) -> bool:
        return e.expire_ns != 0 and e.expire_ns > now

    def _flush(self, e: _Entry, reason: int, backend: int, vip: int) -> int:
        for i in e.held:
            s = self.slots[i]
            s.reason, s.backend, s.vip_index = reason, backend if reason == R_RELEASED else -1, vip
            self.out.append(i)
            self.hold_count -= 1
            self.hold_bytes -= s.length
        n = len(e.held)
        self.stats[("released", "expired", "evicted")[reason]] += n
        e.held = []
        return n

    def _take_way(self, e: _Entry, reason: int) -> None:
        if e.held:
            self._flush(e, reason, -1, e.vip_index)
        e.key, e.expire_ns, e.backend, e.vip_index, e.held = bytes(40), 0, -1, 0, []

    def _find_live(self, bucket: list[_Entry], key: bytes, now: int) -> _Entry | None:
        return next((e for e in bucket if self._live(e, now) and e.key == key), None)

    def _find_reusable(self, bucket: list[_Entry], now: int) -> _Entry | None:
        return next((e for e in bucket if not self._live(e, now)), None)

    def first(self, key: bytes, backend: int, vip_index: int, now_ns: int) -> int:
        if not key_ok(key) or not 0 <= backend < (1 << 31) or not 0 <= vip_index <= 0xFFFF:
            raise NativeError(errno.EINVAL, "frag first: bad key, backend or VIP index")
        bucket = self._bucket(key)
        e = self._find_live(bucket, key, now_ns)
        if e is None:
            e = self._find_reusable(bucket, now_ns)
            if e is not None:
                self._take_way(e, R_EXPIRED)
            else:
                e = bucket[0]
                for w in bucket[1:]:
                    if w.expire_ns < e.expire_ns:
                        e = w
                self.stats["evictions"] += 1
                self._take_way(e, R_EVICTED)
            e.key = key
        self.stats["first"] += 1
        e.backend, e.vip_index, e.expire_ns = backend, vip_index, now_ns + self.timeout_ns
        return self._flush(e, R_RELEASED, backend, vip_index)

    def next(self, key: bytes, frame: int, length: int, now_ns: int) -> tuple[int, int, int]:
        """(0, backend, vip) forward; (1, -1, 0) held; (-ENOSPC | -ENOBUFS, -1, 0) drop."""
        if not key_ok(key) or not (0 <= frame <= 0xFFFFFFFF and 0 <= length <= 0xFFFFFFFF):
            raise NativeError(errno.EINVAL, "frag next: bad key, frame or length")
        bucket = self._bucket(key)
        e = self._find_live(bucket, key, now_ns)
        if e is not None and e.backend >= 0:
            self.stats["forwarded"] += 1
            return 0, e.backend, e.vip_index
        fresh = None
        if e is None:
            fresh = self._find_reusable(bucket, now_ns)
            if fresh is None:
                self.stats["drop_table_full"] += 1
                return -errno.ENOSPC, -1, 0
        held = len(e.held) if e is not None else 0
        if (not self.free or self.hold_count >= self.hold_max
                or self.hold_bytes + length > self.hold_bytes_max or held >= HOLD_PER_DATAGRAM):
            self.stats["drop_hold_limit"] += 1
            return -errno.ENOBUFS, -1, 0
        if fresh is not None:
            self._take_way(fresh, R_EXPIRED)
            e = fresh
            e.key, e.expire_ns = key, now_ns + self.timeout_ns
        i = self.free.pop(0)
        self.slots[i] = _Slot(frame=frame, length=length)
        e.held.append(i)
        self.hold_count += 1
        self.hold_bytes += length
        self.stats["held"] += 1
        return 1, -1, 0

    def expire(self, now_ns: int, max_buckets: int) -> int:
        n = 0
        for _ in range(min(max_buckets, self.nbuckets)):
            b = self.cursor
            self.cursor = (self.cursor + 1) & (self.nbuckets - 1)
            for e in self.entries[b * WAYS : (b + 1) * WAYS]:
                if e.expire_ns != 0 and e.expire_ns <= now_ns:
                    n += len(e.held)
                    self._take_way(e, R_EXPIRED)
        return n

    def drain(self, cap: int) -> list[tuple[int, int, int, int]]:
        """Up to ``cap`` (frame, backend, vip_index, reason), oldest first."""
        out = []
        while self.out and len(out) < cap:
            i = self.out.pop(0)
            s = self.slots[i]
            out.append((s.frame, s.backend, s.vip_index, s.reason))
            self.free.insert(0, i)  # C pushes the slot on the head of the free list
        return out

    @property
    def queued(self) -> int:
        return len(self.out)


# ------------------------------------------------------------------- IPv4 splitting

def _copied_options(opt: bytes) -> bytes:
    out, i = b"", 0
    while i < len(opt):
        t = opt[i]
        if t == 0:
            break
        if t == 1:
            i += 1
            continue
        if i + 1 >= len(opt) or opt[i + 1] < 2 or i + opt[i + 1] > len(opt):
            raise NativeError(errno.EINVAL, "split: malformed IPv4 options")
        ol = opt[i + 1]
        if t & 0x80:
            out += opt[i : i + ol]
        i += ol
    return out + b"\0" * (-len(out) % 4)


def _header(base: bytes, opts: bytes, tot: int, frag: int) -> bytes:
    ihl = 20 + len(opts)
    h = bytes([0x40 | ihl // 4]) + base[1:2] + struct.pack("!H", tot) + base[4:6] + struct.pack(
        "!H", frag) + base[8:10] + b"\0\0" + base[12:20] + opts
    return h[:10] + struct.pack("!H", csum_fold(csum_add(0, h))) + h[12:]


def split_ipv4(packet: bytes, l3_off: int, max_l3_len: int, nspare: int) -> list[bytes]:
    """The pieces (first one first) an IPv4 packet with DF clear is split into so that each
    L3 length is at most ``max_l3_len``; ``[packet]`` when it already fits."""
    packet = bytes(packet)
    if l3_off > len(packet):
        raise NativeError(errno.EINVAL, "split: L3 offset beyond the packet")
    l3 = packet[l3_off:]
    tot = inner_l3_len(l3, 4)
    frag = struct.unpack_from("!H", l3, 6)[0]
    if frag & 0x4000:
        raise NativeError(errno.EINVAL, "split: DF is set")
    ihl = (l3[0] & 0xF) * 4
    if tot <= max_l3_len:
        return [packet]
    opts = _copied_options(l3[20:ihl])
    ihl2 = 20 + len(opts)
    if max_l3_len < ihl + 8:
        raise NativeError(errno.EINVAL, "split: MTU too small for the header and 8 bytes")
    chunk1 = (max_l3_len - ihl) & ~7
    chunk2 = (max_l3_len - ihl2) & ~7
    payload = l3[ihl:tot]
    rest = len(payload) - chunk1
    pieces = -(-rest // chunk2)
    if pieces > nspare:
        raise NativeError(errno.ENOSPC, f"split: needs {pieces} spare frames, {nspare} given")
    base_off = (frag & 0x1FFF) * 8
    if base_off + tot > 65535:
        raise NativeError(errno.EINVAL, "split: fragment offset overflow")
    if l3_off + ihl2 + min(rest, chunk2) > FRAME_DATA_MAX:
        raise NativeError(errno.ENOSPC, "split: a piece does not fit a frame")
    more = bool(frag & 0x2000)
    l2 = packet[:l3_off]
    out = [l2 + _header(l3, l3[20:ihl], ihl + chunk1, base_off // 8 | 0x2000) + payload[:chunk1]]
    pos = chunk1
    for j in range(pieces):
        data = payload[pos : pos + chunk2]
        last = j + 1 == pieces
        flags = (base_off + pos) // 8 | (0x2000 if (not last or more) else 0)
        out.append(l2 + _header(l3, opts, ihl2 + len(data), flags) + data)
        pos += len(data)
    return out
