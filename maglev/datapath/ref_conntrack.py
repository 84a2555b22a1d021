"""Pure-Python reference of the connection table (``include/mg_conntrack.h``).

Same geometry (buckets of 8 ways, a primary and an alternate bucket per flow), same tag
bits (protected segment, TCP timeout class, 30-bit signature), same millisecond ticks,
same insert rule (empty, expired, cuckoo move, LRU probation way, fail), same promotion
and demotion, same rate guard -- so after the same operations the reference and the C
table hold the same entries in the same slots, which the differential tests check through
slots, tags and the verdicts and backend choices of whole packet streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WAYS = 8
MAX_CAPACITY = 1 << 26
M32 = 0xFFFFFFFF
TAG_PROTECTED = 0x8000_0000
TAG_TCP = 0x4000_0000
SIG_MASK = 0x3FFF_FFFF
MOVE_RESERVE = 4
DEFAULT_PROTECTED_PCT = 90

# The connection-table counters, in the order of struct mg_ct_stats: the one list every
# stats reader (DataPath.stats(), the worker metrics page, Prometheus) takes its names from.
CT_STAT_NAMES: tuple[str, ...] = (
    "lookups", "hits", "inserts", "insert_failed", "evictions", "expired", "reselected",
    "promoted", "demoted", "moved", "rate_guard_hits",
)


def ticks(now_ns: int) -> int:
    return (now_ns // 1_000_000) & M32


def sig_of(h: int) -> int:
    return (h >> 32) & SIG_MASK or 1


@dataclass
class Entry:
    key: bytes = bytes(40)
    backend: int = 0
    backend_id: int = 0


@dataclass
class CtStats:
    lookups: int = 0
    hits: int = 0
    inserts: int = 0
    insert_failed: int = 0
    evictions: int = 0
    expired: int = 0
    reselected: int = 0
    promoted: int = 0
    demoted: int = 0
    moved: int = 0
    rate_guard_hits: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in CT_STAT_NAMES}


@dataclass
class Bucket:
    tag: list[int] = field(default_factory=lambda: [0] * WAYS)
    last: list[int] = field(default_factory=lambda: [0] * WAYS)
    entries: list[Entry] = field(default_factory=lambda: [Entry() for _ in range(WAYS)])


def _timeout(tag: int, tcp_ms: int, udp_ms: int) -> int:
    return tcp_ms if tag & TAG_TCP else udp_ms


class ConnTable:
    """Buckets are created on first touch (a dict), so a 1M-entry reference costs memory
    only for the buckets used.  Slots are ``bucket * WAYS + way`` as in C."""

    def __init__(self, capacity: int, protected_pct: int = DEFAULT_PROTECTED_PCT,
                 new_flows_per_s: int = 0):
        if not 0 < capacity <= MAX_CAPACITY:
            raise ValueError(f"connection table capacity {capacity} is not in 1..{MAX_CAPACITY}")
        c = WAYS
        while c < capacity:
            c <<= 1
        self.capacity = c
        self.mask = c // WAYS - 1
        self.buckets: dict[int, Bucket] = {}
        self.stats = CtStats()
        self.n_used = 0
        self.n_protected = 0
        self.set_policy(protected_pct, new_flows_per_s)

    def set_policy(self, protected_pct: int, new_flows_per_s: int) -> None:
        if not 1 <= protected_pct <= 100 or not 0 <= new_flows_per_s <= 1_000_000_000:
            raise ValueError("protected_pct must be 1..100 and new_flows_per_s 0..1e9")
        self.protected_max = self.capacity * protected_pct // 100
        self.rate_per_s = new_flows_per_s
        self.burst = max(new_flows_per_s // 10, 1) * 1000
        self.tokens = self.burst
        self.rate_last = 0

    def alt(self, b: int, sig: int) -> int:
        return (b ^ ((((sig * 0x9E3779B1) & M32) >> 8) | 1)) & self.mask

    def bucket(self, b: int) -> Bucket:
        bk = self.buckets.get(b)
        if bk is None:
            bk = self.buckets[b] = Bucket()
        return bk

    def _free(self, bk: Bucket, w: int) -> None:
        if bk.tag[w] & TAG_PROTECTED:
            self.n_protected -= 1
        bk.tag[w] = 0
        self.n_used -= 1

    def _scan(self, b: int, key: bytes, sig: int, now: int, tcp_ms: int, udp_ms: int) -> int:
        bk = self.bucket(b)
        for w in range(WAYS):
            if bk.tag[w] & SIG_MASK != sig or bk.entries[w].key != key:
                continue
            if (now - bk.last[w]) & M32 >= _timeout(bk.tag[w], tcp_ms, udp_ms):
                self._free(bk, w)
                self.stats.expired += 1
                return -2
            bk.last[w] = now
            self.stats.hits += 1
            return b * WAYS + w
        return -1

    def find_slot(self, key: bytes, h: int, now: int, tcp_ms: int, udp_ms: int) -> int:
        """The slot of the live entry for ``key`` (refreshed), or -1; an expired match is freed."""
        b = h & self.mask
        sig = sig_of(h)
        self.stats.lookups += 1
        s = self._scan(b, key, sig, now, tcp_ms, udp_ms)
        if s != -1:
            return max(s, -1)
        b2 = self.alt(b, sig)
        if b2 == b:
            return -1
        return max(self._scan(b2, key, sig, now, tcp_ms, udp_ms), -1)

    def entry(self, slot: int) -> Entry:
        return self.bucket(slot // WAYS).entries[slot % WAYS]

    def tag(self, slot: int) -> int:
        bk = self.buckets.get(slot // WAYS)
        return bk.tag[slot % WAYS] if bk else 0

    def find(self, key: bytes, h: int, now: int, tcp_ms: int, udp_ms: int) -> Entry | None:
        s = self.find_slot(key, h, now, tcp_ms, udp_ms)
        return None if s < 0 else self.entry(s)

    def promote(self, slot: int) -> None:
        bk = self.bucket(slot // WAYS)
        w = slot % WAYS
        if bk.tag[w] & TAG_PROTECTED:
            return
        if self.n_protected >= self.protected_max:
            lru, oldest = -1, 0
            for v in range(WAYS):
                if not bk.tag[v] & TAG_PROTECTED:
                    continue
                age = (bk.last[w] - bk.last[v]) & M32
                if lru < 0 or age > oldest:
                    lru, oldest = v, age
            if lru < 0:
                return
            bk.tag[lru] &= ~TAG_PROTECTED
            self.n_protected -= 1
            self.stats.demoted += 1
        bk.tag[w] |= TAG_PROTECTED
        self.n_protected += 1
        self.stats.promoted += 1

    def admit(self, now: int) -> bool:
        """The rate guard: may a new flow be inserted at tick ``now``?"""
        if self.rate_per_s == 0:
            return True
        el = (now - self.rate_last) & M32
        self.rate_last = now
        self.tokens = min(self.tokens + el * self.rate_per_s, self.burst)
        if self.tokens >= 1000:
            self.tokens -= 1000
            return True
        self.stats.rate_guard_hits += 1
        return False

    def _put(self, b: int, w: int, key: bytes, sig: int, now: int, backend: int, backend_id: int) -> int:
        bk = self.bucket(b)
        bk.tag[w] = sig | (TAG_TCP if key[36] == 6 else 0)
        bk.last[w] = now
        bk.entries[w] = Entry(key, backend, backend_id)
        self.stats.inserts += 1
        return b * WAYS + w

    def add(self, key: bytes, h: int, now: int, tcp_ms: int, udp_ms: int, backend: int,
            backend_id: int) -> int:
        """Insert (key known absent) in probation; the slot used or -1 when the insert failed."""
        sig = sig_of(h)
        b1 = h & self.mask
        b2 = self.alt(b1, sig)
        bks = [b1] if b2 == b1 else [b1, b2]
        for b in bks:  # 1. an empty way
            bk = self.bucket(b)
            w = next((w for w in range(WAYS) if bk.tag[w] == 0), -1)
            if w >= 0:
                self.n_used += 1
                return self._put(b, w, key, sig, now, backend, backend_id)
        for b in bks:  # 2. a way idle past its timeout
            bk = self.bucket(b)
            for w in range(WAYS):
                if (now - bk.last[w]) & M32 >= _timeout(bk.tag[w], tcp_ms, udp_ms):
                    if bk.tag[w] & TAG_PROTECTED:
                        self.n_protected -= 1
                    self.stats.expired += 1
                    return self._put(b, w, key, sig, now, backend, backend_id)
        if len(bks) == 2 and self.n_used < self.capacity - self.capacity // MOVE_RESERVE:
            for b in bks:  # 3. a cuckoo move
                bk = self.bucket(b)
                for w in range(WAYS):
                    a = self.alt(b, bk.tag[w] & SIG_MASK)
                    if a == b:
                        continue
                    ba = self.bucket(a)
                    e = next((v for v in range(WAYS) if ba.tag[v] == 0), -1)
                    if e < 0:
                        continue
                    ba.tag[e], ba.last[e], ba.entries[e] = bk.tag[w], bk.last[w], bk.entries[w]
                    self.stats.moved += 1
                    self.n_used += 1
                    return self._put(b, w, key, sig, now, backend, backend_id)
        vb, vw, oldest = -1, 0, 0  # 4. the least recently used probation way
        for b in bks:
            bk = self.bucket(b)
            for w in range(WAYS):
                if bk.tag[w] & TAG_PROTECTED:
                    continue
                age = (now - bk.last[w]) & M32
                if vb < 0 or age > oldest:
                    vb, vw, oldest = b, w, age
        if vb < 0:
            self.stats.insert_failed += 1
            return -1
        self.stats.evictions += 1
        return self._put(vb, vw, key, sig, now, backend, backend_id)

    def count(self) -> int:
        return sum(1 for bk in self.buckets.values() for s in bk.tag if s)


@dataclass
class Census:
    """What :func:`census` (and the C ``mg_ct_census``) count in one or more tables."""

    counts: dict[int, int] = field(default_factory=dict)  # backend id -> live entries
    live: int = 0
    expired: int = 0
    torn: int = 0
    unknown: int = 0
    # A live table (the C census of a worker's table): entries its writer inserted or moved
    # while the scan ran (its header's inserts + moved, read before and after).  Each may
    # be counted in its old or new state, or -- a cuckoo move between a bucket already read
    # and one not yet read -- twice or not at all: the counts are exact up to this many.
    changed: int = 0

    def add(self, other: Census) -> None:
        for k, n in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + n
        self.live += other.live
        self.expired += other.expired
        self.torn += other.torn
        self.unknown += other.unknown
        self.changed += other.changed


def census(table: bytes, k0: int, k1: int, now_ns: int, tcp_ms: int, udp_ms: int,
           ids: list[int]) -> Census:
    """Reference of ``mg_ct_census`` on a copy of a table's bytes (the mapping: header,
    metadata, entries): per backend id of ``ids``, the live entries naming it.  A slot
    counts when its tag is set, it is idle below its timeout, and the signature of its key's
    flow hash equals its tag's (else ``torn``: on a copy, a key that does not belong to its
    tag).  Live entries naming an id outside ``ids`` are ``unknown``."""
    import struct

    from maglev.hashing.reference import siphash13

    n_buckets, = struct.unpack_from("<I", table, 16)
    meta_off, entries_off = struct.unpack_from("<QQ", table, 24)
    want = set(ids)
    out = Census(counts={i: 0 for i in ids})
    now = ticks(now_ns)
    for b in range(n_buckets):
        tags = struct.unpack_from("<8I", table, meta_off + 64 * b)
        lasts = struct.unpack_from("<8I", table, meta_off + 64 * b + 32)
        for w in range(WAYS):
            tag = tags[w]
            if tag == 0:
                continue
            age = (now - lasts[w]) & M32
            if age >= 1 << 31:  # refreshed after `now` was read (a live table): age 0
                age = 0
            if age >= (tcp_ms if tag & TAG_TCP else udp_ms):
                out.expired += 1
                continue
            off = entries_off + 64 * (b * WAYS + w)
            key = bytes(table[off:off + 40])
            bid, = struct.unpack_from("<Q", table, off + 48)
            if sig_of(siphash13(k0, k1, key)) != tag & SIG_MASK:
                out.torn += 1
                continue
            out.live += 1
            if bid in want:
                out.counts[bid] += 1
            else:
                out.unknown += 1
    return out


@dataclass
class RehomeStats:
    """What :func:`rehome` (and the C ``mg_ct_rehome``) counted."""

    live: int = 0
    placed: int = 0
    duplicates: int = 0
    no_room: int = 0
    expired: int = 0


def _find_quiet(t: ConnTable, key: bytes, h: int) -> int:
    sig = sig_of(h)
    b = h & t.mask
    for _ in range(2):
        bk = t.buckets.get(b)
        if bk is not None:
            for w in range(WAYS):
                if bk.tag[w] & SIG_MASK == sig and bk.entries[w].key == key:
                    return b * WAYS + w
        b2 = t.alt(b, sig)
        if b2 == b:
            break
        b = b2
    return -1


def rehome(src: ConnTable, dst: list[ConnTable], k0: int, k1: int, reta: bytes | None, now_ns: int,
           tcp_ms: int, udp_ms: int, st: RehomeStats) -> None:
    """mg_ct_rehome(): the live entries of a previous run's table placed into this run's
    tables, each in the worker steering picks for its key (src/mg_ct_rehome.c)."""
    from maglev.hashing.reference import siphash13

    now = ticks(now_ns)

    def place(d: ConnTable, key: bytes, h: int, tag: int, last: int, e: Entry) -> None:
        s = _find_quiet(d, key, h)
        if s >= 0:
            bk = d.bucket(s // WAYS)
            w = s % WAYS
            st.duplicates += 1
            if 0 < (last - bk.last[w]) & M32 < 0x80000000:
                bk.entries[w] = Entry(key, e.backend, e.backend_id)
                bk.last[w] = last
            return
        s = d.add(key, h, now, tcp_ms, udp_ms, e.backend, e.backend_id)
        if s < 0:
            st.no_room += 1
            return
        d.bucket(s // WAYS).last[s % WAYS] = last
        if tag & TAG_PROTECTED:
            d.promote(s)
        st.placed += 1

    for b in range(src.mask + 1):
        bk = src.buckets.get(b)
        if bk is None:
            continue
        for w in range(WAYS):
            tag = bk.tag[w]
            if not tag:
                continue
            last = bk.last[w]
            if (now - last) & M32 >= _timeout(tag, tcp_ms, udp_ms):
                st.expired += 1
                continue
            e = bk.entries[w]
            h = siphash13(k0, k1, e.key)
            st.live += 1
            if e.key[32:34] == b"\0\0":  # a masked key: every worker may need it
                for d in dst:
                    place(d, e.key, h, tag, last, e)
                continue
            to = reta[h >> 56] if reta is not None else ((h >> 32) & M32) % len(dst)
            place(dst[to], e.key, h, tag, last, e)
