"""Connection table: the C table and the Python reference driven with the same operations
give the same answers; the eviction rule, timeouts and full-key compare hold."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from maglev.datapath.ref_conntrack import EVICT_MIN_IDLE_MS, WAYS, ConnTable
from maglev.native import ffi, lib

MS = 1_000_000
TCP_MS, UDP_MS = 300_000, 30_000


class CTable:
    def __init__(self, capacity: int):
        self.ct = ffi.gc(lib.mg_ct_new(capacity), lib.mg_ct_free)
        self.key = ffi.new("struct mg_flow_key *")

    def _k(self, key: bytes):
        ffi.memmove(self.key, key, 40)
        return self.key

    def lookup(self, key: bytes, h: int, now_ns: int) -> int:
        return lib.mg_ct_lookup(self.ct, self._k(key), h, now_ns, TCP_MS, UDP_MS)

    def insert(self, key: bytes, h: int, now_ns: int, backend: int) -> int:
        return lib.mg_ct_insert(self.ct, self._k(key), h, now_ns, TCP_MS, UDP_MS, backend, backend + 100)


def key(n: int, proto: int = 6) -> bytes:
    return struct.pack("!4s12x4s12xHHBBxx", n.to_bytes(4, "big"), b"\xcb\x00\x71\x0a", n & 0xFFFF, 80, proto, 4)


def ref_lookup(t: ConnTable, k: bytes, h: int, now_ns: int) -> int:
    e = t.find(k, h, now_ns // MS & 0xFFFFFFFF, TCP_MS, UDP_MS)
    return -1 if e is None else e.backend


def test_capacity_rounds_up_and_memory_is_stated():
    c = lib.mg_ct_new(1000)
    try:
        assert lib.mg_ct_capacity(c) == 1024
    finally:
        lib.mg_ct_free(c)
    assert lib.mg_ct_bytes(1 << 20) == (1 << 20) * 72  # 72 bytes per entry (8 metadata + 64)
    assert lib.mg_ct_new(0) == ffi.NULL
    assert lib.mg_ct_new(lib.MG_CT_MAX_CAPACITY + 1) == ffi.NULL


def test_full_key_compare_never_hash_only():
    c = CTable(64)
    h = 0xDEADBEEF_00000005
    assert c.insert(key(1), h, 10 * MS, 3) >= 0
    assert c.lookup(key(1), h, 11 * MS) == 3
    assert c.lookup(key(2), h, 11 * MS) == -1  # same hash, same signature, other key


def test_idle_timeout_tcp_and_udp():
    c = CTable(64)
    c.insert(key(1, 6), 1 << 32, 0, 1)
    c.insert(key(2, 17), 2 << 32, 0, 2)
    assert c.lookup(key(2, 17), 2 << 32, (UDP_MS - 1) * MS) == 2  # refreshes
    assert c.lookup(key(2, 17), 2 << 32, (2 * UDP_MS) * MS) == -1  # idle a full timeout
    assert c.lookup(key(1, 6), 1 << 32, (TCP_MS - 1) * MS) == 1


def test_full_set_evicts_lru_only_after_min_idle():
    c = CTable(WAYS)  # one bucket
    for i in range(WAYS):
        assert c.insert(key(i), (i + 1) << 32, i * MS, i) == i
    # all 8 ways younger than the floor: the insert fails (forward statelessly)
    assert c.insert(key(99), 99 << 32, 10 * MS, 9) == -1
    later = (EVICT_MIN_IDLE_MS + 50) * MS
    c.lookup(key(0), 1 << 32, later - MS)  # touch way 0: way 1 is now the LRU
    assert c.insert(key(99), 99 << 32, later, 9) == 1
    stats = lib.mg_ct_count(c.ct)
    assert stats == WAYS


OPS = st.lists(
    st.tuples(st.sampled_from(["lookup", "insert"]), st.integers(0, 40), st.integers(0, 3),
              st.integers(0, 400)),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_c_and_reference_agree(ops):
    c = CTable(16)  # two buckets: lots of contention
    r = ConnTable(16)
    now = 0
    for op, n, proto_sel, dt in ops:
        now += dt * 10 * MS
        k = key(n, 17 if proto_sel == 0 else 6)
        h = (n * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        if op == "lookup":
            assert c.lookup(k, h, now) == ref_lookup(r, k, h, now)
        elif ref_lookup(r, k, h, now) == -1 and c.lookup(k, h, now) == -1:
            got = c.insert(k, h, now, n)
            want = r.add(k, h, now // MS & 0xFFFFFFFF, TCP_MS, UDP_MS, n, n + 100)
            assert got == want
    assert lib.mg_ct_count(c.ct) == r.count()
