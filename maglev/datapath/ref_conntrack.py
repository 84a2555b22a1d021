"""Pure-Python reference of the connection table (``include/mg_conntrack.h``).

Same geometry (buckets of 8 ways), same signature and bucket bits of the flow hash, same
millisecond ticks, same eviction order -- so after the same operations the reference
and the C table hold the same entries in the same ways, which the differential tests check
through the verdicts and backend choices of whole packet streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WAYS = 8
EVICT_MIN_IDLE_MS = 1000
MAX_CAPACITY = 1 << 26
M32 = 0xFFFFFFFF


def ticks(now_ns: int) -> int:
    return (now_ns // 1_000_000) & M32


def sig_of(h: int) -> int:
    return (h >> 32) & M32 or 1


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


@dataclass
class Bucket:
    sig: list[int] = field(default_factory=lambda: [0] * WAYS)
    last: list[int] = field(default_factory=lambda: [0] * WAYS)
    entries: list[Entry] = field(default_factory=lambda: [Entry() for _ in range(WAYS)])


def _timeout(key: bytes, tcp_ms: int, udp_ms: int) -> int:
    return tcp_ms if key[36] == 6 else udp_ms


class ConnTable:
    """Buckets are created on first touch (a dict), so a 1M-entry reference costs memory
    only for the buckets used."""

    def __init__(self, capacity: int):
        if not 0 < capacity <= MAX_CAPACITY:
            raise ValueError(f"connection table capacity {capacity} is not in 1..{MAX_CAPACITY}")
        c = WAYS
        while c < capacity:
            c <<= 1
        self.capacity = c
        self.mask = c // WAYS - 1
        self.buckets: dict[int, Bucket] = {}
        self.stats = CtStats()

    def _bucket(self, h: int) -> Bucket:
        b = h & self.mask
        bk = self.buckets.get(b)
        if bk is None:
            bk = self.buckets[b] = Bucket()
        return bk

    def find(self, key: bytes, h: int, now: int, tcp_ms: int, udp_ms: int) -> Entry | None:
        """The live entry for ``key`` (refreshed), or None; an expired match is freed."""
        bk = self._bucket(h)
        sig = sig_of(h)
        self.stats.lookups += 1
        for w in range(WAYS):
            if bk.sig[w] != sig or bk.entries[w].key != key:
                continue
            if (now - bk.last[w]) & M32 >= _timeout(key, tcp_ms, udp_ms):
                bk.sig[w] = 0
                self.stats.expired += 1
                return None
            bk.last[w] = now
            self.stats.hits += 1
            return bk.entries[w]
        return None

    def add(self, key: bytes, h: int, now: int, tcp_ms: int, udp_ms: int, backend: int,
            backend_id: int) -> int:
        """Insert (key known absent); the way used or -1 when the insert failed."""
        bk = self._bucket(h)
        way = next((w for w in range(WAYS) if bk.sig[w] == 0), -1)
        if way < 0:
            for w in range(WAYS):
                if (now - bk.last[w]) & M32 >= _timeout(bk.entries[w].key, tcp_ms, udp_ms):
                    way = w
                    self.stats.expired += 1
                    break
        if way < 0:
            oldest, lru = 0, 0
            for w in range(WAYS):
                age = (now - bk.last[w]) & M32
                if age > oldest:
                    oldest, lru = age, w
            if oldest < EVICT_MIN_IDLE_MS:
                self.stats.insert_failed += 1
                return -1
            way = lru
            self.stats.evictions += 1
        bk.sig[way] = sig_of(h)
        bk.last[way] = now
        bk.entries[way] = Entry(key, backend, backend_id)
        self.stats.inserts += 1
        return way

    def count(self) -> int:
        return sum(1 for bk in self.buckets.values() for s in bk.sig if s)
