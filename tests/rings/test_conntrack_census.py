"""mg_ct_census (change preview's exact flow count) against its Python reference, on a
private table and on a /dev/shm table mapped read-only (maglev/rings/conntrack_shm.py)."""

from __future__ import annotations

import random

from maglev.datapath.ref_conntrack import census
from maglev.native import ffi, lib
from maglev.rings import conntrack_shm as cs
from maglev.testing import unique

K0, K1 = 0x0123456789ABCDEF, 0xFEDCBA9876543210
TCP_MS, UDP_MS = 300_000, 30_000
T0 = 500_000_000_000
IDS = [0x1111, 0x2222, 0x3333, 0x4444]


def _key(rng: random.Random, proto: int):
    k = ffi.new("struct mg_flow_key *")
    k.proto = proto
    k.sport = rng.randrange(1, 65536)
    k.dport = 443
    k.src[0:4] = rng.randbytes(4)
    k.dst[0:4] = bytes([203, 0, 113, 7])
    return k


def _fill(ct, n: int, seed: int) -> list:
    """n flows: TCP and UDP, some inserted long ago (expired at T0 + 1 s), backend ids from
    IDS and one id outside it; returns the slots taken."""
    rng = random.Random(seed)
    slots = []
    for i in range(n):
        k = _key(rng, 6 if i % 3 else 17)
        h = int(lib.mg_siphash13(K0, K1, ffi.buffer(k)[:], 40))
        t = T0 - (200_000_000_000 if i % 7 == 0 else 0)  # 200 s ago: UDP expired, TCP alive
        if i % 13 == 1:
            t = T0 + 5 * 10**9  # refreshed by a worker after the census read its clock: live
        bid = 0x9999 if i % 11 == 0 else IDS[i % len(IDS)]
        s = lib.mg_ct_insert(ct, k, h, t, TCP_MS, UDP_MS, i % 4, bid)
        if s >= 0:
            slots.append(s)
    return slots


def _c(ct, ids=IDS, now=T0 + 10**9):
    return cs.census_table(ct, (K0, K1), now, TCP_MS, UDP_MS, ids)


def test_census_equals_the_reference_on_a_filled_table():
    ct = lib.mg_ct_new(4096)
    try:
        slots = _fill(ct, 3000, 1)
        # a torn entry: another flow's key under this tag (mg_ct_add writes the tag first)
        e = ffi.cast("struct mg_ct_entry *", ffi.cast("char *", ct) + ct.entries_off)
        e[slots[5]].key.sport ^= 0x5A5A
        raw = bytes(ffi.buffer(ct, int(ct.map_bytes)))
        for ids in (IDS, IDS[:2], []):
            c = _c(ct, ids)
            r = census(raw, K0, K1, T0 + 10**9, TCP_MS, UDP_MS, ids)
            assert (c.counts, c.live, c.expired, c.torn, c.unknown) == \
                (r.counts, r.live, r.expired, r.torn, r.unknown)
        c = _c(ct)
        assert c.torn == 1 and c.expired > 100 and c.unknown > 100
        udp_fresh = sum(1 for i in range(3000) if i % 3 == 0 and i % 13 == 1 and i % 7 != 0)
        assert c.live > udp_fresh > 0
        assert c.live + c.expired + c.torn == int(lib.mg_ct_count(ct))
        assert sum(c.counts.values()) + c.unknown == c.live
        # the census reads only: counters and tags unchanged
        assert bytes(ffi.buffer(ct, int(ct.map_bytes))) == raw
    finally:
        lib.mg_ct_free(ct)


def test_census_rejects_unsorted_ids():
    ct = lib.mg_ct_new(64)
    try:
        ids = ffi.new("uint64_t[]", [5, 3])
        counts = ffi.new("uint64_t[]", 2)
        out = ffi.new("struct mg_ct_census *")
        assert lib.mg_ct_census(ct, K0, K1, T0, TCP_MS, UDP_MS, ids, 2, counts, out) < 0
    finally:
        lib.mg_ct_free(ct)


def test_census_of_an_instance_reads_its_shm_tables_read_only():
    inst = unique.name("t")
    tag = cs.identity_tag("/nonexistent/state", "/nonexistent/cfg")
    fp = cs.key_fingerprint(K0, K1)
    opened = []
    try:
        for i in range(2):
            o = cs.open_table(cs.segment_name(inst, tag, i), cs.Wanted(2048, fp, 3, i))
            assert o is not None
            opened.append(o)
            _fill(o.ct, 1200, 10 + i)
        before = [bytes(ffi.buffer(o.ct, int(o.ct.map_bytes))) for o in opened]
        live = cs.census_instance(inst, tag, 3, (K0, K1), TCP_MS, UDP_MS, IDS, now_ns=T0 + 10**9)
        assert live.tables == 2
        assert len(live.problems) == 1 and "-2:" in live.problems[0]  # worker 2 has none
        want = census(before[0], K0, K1, T0 + 10**9, TCP_MS, UDP_MS, IDS)
        want.add(census(before[1], K0, K1, T0 + 10**9, TCP_MS, UDP_MS, IDS))
        got = live.census
        assert (got.counts, got.live, got.expired, got.torn) == (want.counts, want.live, want.expired, want.torn)
        assert got.live > 1000
        assert [bytes(ffi.buffer(o.ct, int(o.ct.map_bytes))) for o in opened] == before
        # another secret: the table is refused, not misread
        other = cs.census_instance(inst, tag, 2, (K0 + 1, K1), TCP_MS, UDP_MS, IDS, now_ns=T0 + 10**9)
        assert other.tables == 0 and all("secret" in p for p in other.problems)
    finally:
        for o in opened:
            lib.mg_ct_free(o.ct)
            o.close()
        cs.remove_segments(inst)
    assert not cs.list_segments(inst)


def test_census_says_how_many_entries_changed_while_it_read():
    """A writer inserting while the census reads (both release the GIL in their cffi
    calls): ``changed`` is the inserts made during the scan -- the bound within which a live
    census is exact (0 for a table nobody writes)."""
    import threading

    ct = lib.mg_ct_new(1 << 20)
    try:
        _fill(ct, 200_000, 3)
        assert _c(ct).changed == 0  # nobody writes: exact
        rng = random.Random(4)
        keys = []
        for _ in range(50_000):
            k = _key(rng, 6)
            keys.append((k, int(lib.mg_siphash13(K0, K1, ffi.buffer(k)[:], 40))))
        started, stop = threading.Event(), threading.Event()
        done = [0]

        def writer():
            started.set()
            for k, h in keys:
                if stop.is_set():
                    break
                lib.mg_ct_insert(ct, k, h, T0, TCP_MS, UDP_MS, 0, IDS[0])
                done[0] += 1

        t = threading.Thread(target=writer)
        t.start()
        started.wait(5)
        seen = []  # (changed, inserts done before the scan, inserts done after it)
        try:
            while t.is_alive() and len(seen) < 20 and not any(ch for ch, _, _ in seen):
                a = done[0]
                c = _c(ct)
                seen.append((c.changed, a, done[0]))
        finally:
            stop.set()
            t.join(30)
        # the writer's done[] lags its insert by one at most, at each end of the window
        assert all(ch <= b - a + 2 for ch, a, b in seen), seen
        assert any(ch > 0 for ch, _, _ in seen), seen  # a scan overlapped the inserts
        print(f"census of 2^20 slots while a writer inserted: (changed, before, after) = {seen[-1]}")
    finally:
        lib.mg_ct_free(ct)
