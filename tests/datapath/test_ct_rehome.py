"""mg_ct_rehome (C) = ref_conntrack.rehome (Python): a previous run's connection table
re-homed into this run's tables, every slot compared (tag, last-used tick, key, backend),
for random tables of every state (probation, protected, expired, masked keys, duplicates),
plain and weighted flow -> worker maps, smaller and larger capacities.  The run-level
test (another worker count at restart keeps every connection) is
tests/actors/test_conntrack_restart.py."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from maglev.datapath.ref_conntrack import WAYS, ConnTable, RehomeStats, rehome, ticks
from maglev.hashing.reference import siphash13
from maglev.native import ffi, lib
from maglev.testing import unique

TCP_MS, UDP_MS = 300_000, 30_000
MS = 1_000_000
K0, K1 = 0x0123456789ABCDEF, 0x0FEDCBA987654321


def key(n: int, proto: int, masked: bool) -> bytes:
    return struct.pack("!4s12x4s12xHHBBxx", n.to_bytes(4, "big"), b"\xcb\x00\x71\x0a",
                       0 if masked else 1024 + n, 80, proto, 4)


def c_table(cap: int):
    ct = lib.mg_ct_new_mode(cap, lib.MG_CT_PAGES_SMALL)
    assert ct != ffi.NULL
    return ffi.gc(ct, lib.mg_ct_free)


def slots(ct) -> list[tuple[int, int, bytes, int, int]]:
    """Every slot of a C table: (tag, last, key, backend, backend id)."""
    base = ffi.cast("char *", ct)
    n_b = int(ct.n_buckets)
    meta = ffi.buffer(base + int(ct.meta_off), n_b * 64)[:]
    ents = ffi.buffer(base + int(ct.entries_off), n_b * WAYS * 64)[:]
    out = []
    for s in range(n_b * WAYS):
        b, w = divmod(s, WAYS)
        tag, last = struct.unpack_from("<I", meta, b * 64 + 4 * w)[0], struct.unpack_from("<I", meta, b * 64 + 32 + 4 * w)[0]
        k, be, _r, bid = struct.unpack_from("<40siIQ", ents, s * 64)
        out.append((tag, last, k, be, bid) if tag else (0, 0, b"", 0, 0))
    return out


def ref_slots(t: ConnTable) -> list[tuple[int, int, bytes, int, int]]:
    out = []
    for s in range(t.capacity):
        bk = t.buckets.get(s // WAYS)
        w = s % WAYS
        if bk is None or not bk.tag[w]:
            out.append((0, 0, b"", 0, 0))
            continue
        e = bk.entries[w]
        out.append((bk.tag[w], bk.last[w], e.key, e.backend, e.backend_id))
    return out


OPS = st.lists(st.tuples(st.integers(0, 80), st.sampled_from([6, 17]), st.booleans(), st.booleans(),
                         st.integers(0, 400)), max_size=120)


@settings(max_examples=150, deadline=None)
@given(OPS, st.sampled_from([16, 64]), st.integers(1, 4), st.sampled_from([8, 32, 128]), st.booleans(),
       st.integers(0, 40))
def test_c_and_reference_rehome_agree(ops, src_cap, n_dst, dst_cap, weighted, later_s):
    c_src, r_src = c_table(src_cap), ConnTable(src_cap)
    ck = ffi.new("struct mg_flow_key *")
    now = 0
    for n, proto, masked, promote, dt in ops:
        now += dt * 100 * MS
        k = key(n, proto, masked)
        h = (n * 0x9E3779B97F4A7C15 + proto) & 0xFFFFFFFFFFFFFFFF  # any hash: rehome recomputes it
        ffi.memmove(ck, k, 40)
        cs = lib.mg_ct_lookup_slot(c_src, ck, h, now, TCP_MS, UDP_MS, int(promote))
        rs = r_src.find_slot(k, h, ticks(now), TCP_MS, UDP_MS)
        if rs >= 0 and promote:
            r_src.promote(rs)
        assert cs == rs
        if rs == -1:
            assert lib.mg_ct_insert(c_src, ck, h, now, TCP_MS, UDP_MS, n, n + 1000) == \
                r_src.add(k, h, ticks(now), TCP_MS, UDP_MS, n, n + 1000)
    at = now + later_s * 1000 * MS  # some entries idle past their timeout by now
    reta = bytes((i * 7) % n_dst for i in range(256)) if weighted else None
    c_dst = [c_table(dst_cap) for _ in range(n_dst)]
    arr = ffi.new("struct mg_ct *[]", c_dst)
    c_st = ffi.new("struct mg_ct_rehome_stats *")
    c_reta = ffi.new("uint8_t[]", reta) if reta else ffi.NULL
    assert lib.mg_ct_rehome(c_src, arr, n_dst, K0, K1, c_reta, at, TCP_MS, UDP_MS, c_st) == 0
    r_dst = [ConnTable(dst_cap) for _ in range(n_dst)]
    r_st = RehomeStats()
    rehome(r_src, r_dst, K0, K1, reta, at, TCP_MS, UDP_MS, r_st)
    assert {f: int(getattr(c_st, f)) for f in ("live", "placed", "duplicates", "no_room", "expired")} == vars(r_st)
    for c, r in zip(c_dst, r_dst, strict=True):
        assert slots(c) == ref_slots(r)
        assert int(c.n_used) == r.n_used and int(c.n_protected) == r.n_protected


def test_every_live_entry_lands_on_the_worker_steering_picks_with_its_backend():
    """Direct check, without the reference: 3000 flows of one 2-worker run's table re-homed
    into 3 workers; each found (lookup with the new secret) in the worker ``(h >> 32) % 3``
    with its backend id; protected stays protected; masked keys are in every worker."""
    src = c_table(8192)
    ck = ffi.new("struct mg_flow_key *")
    flows = [key(n, 6, n % 50 == 0) for n in range(3000)]
    for n, k in enumerate(flows):
        ffi.memmove(ck, k, 40)
        assert lib.mg_ct_insert(src, ck, siphash13(9, 9, k), 10 * MS, TCP_MS, UDP_MS, n % 7, 500 + n % 7) >= 0
        if n % 2:
            lib.mg_ct_lookup_slot(src, ck, siphash13(9, 9, k), 11 * MS, TCP_MS, UDP_MS, 1)
    dst = [c_table(4096) for _ in range(3)]
    st_ = ffi.new("struct mg_ct_rehome_stats *")
    assert lib.mg_ct_rehome(src, ffi.new("struct mg_ct *[]", dst), 3, K0, K1, ffi.NULL, 20 * MS,
                            TCP_MS, UDP_MS, st_) == 0
    assert st_.live == 3000 and st_.no_room == 0 and st_.expired == 0
    for n, k in enumerate(flows):
        h = siphash13(K0, K1, k)
        ffi.memmove(ck, k, 40)
        homes = range(3) if n % 50 == 0 else [((h >> 32) & 0xFFFFFFFF) % 3]
        for w in range(3):
            slot = lib.mg_ct_lookup_slot(dst[w], ck, h, 21 * MS, TCP_MS, UDP_MS, 0)
            if w not in homes:
                assert slot == -1
                continue
            assert slot >= 0
            ent = ffi.cast("struct mg_ct_entry *", ffi.cast("char *", dst[w]) + int(dst[w].entries_off)) + slot
            assert ent.backend_id == 500 + n % 7
            assert bool(lib.mg_ct_tag(dst[w], slot) & lib.MG_CT_TAG_PROTECTED) == bool(n % 2)
    assert lib.mg_ct_rehome(src, ffi.new("struct mg_ct *[]", dst), 0, K0, K1, ffi.NULL, 0, 1, 1, st_) == -22


def test_rehome_run_changes_capacity_secret_and_worker_count_and_every_flow_is_found(tmp_path):
    """``conntrack_shm.rehome_run`` on real /dev/shm tables: 3 workers' tables (capacity
    4096, secret A) become 2 tables of capacity 8192 under secret B; each table is then
    adopted as it is by its worker (``open_table``), every live flow is in the table of
    the worker (h >> 32) % 2 with its backend id, the idle one is dropped, and the third
    old table is gone.  Nothing to do a second time ("")."""

    from maglev.rings import conntrack_shm as cs

    inst = unique.name("rt")
    state, conf = str(tmp_path / "state"), str(tmp_path / "m.toml")
    tag = cs.identity_tag(state, conf)
    key_a, key_b = (11, 12), (21, 22)
    now = 1_000_000 * MS
    flows = [key(n, 6, False) for n in range(600)]
    opened = []
    try:
        for i in range(3):
            o = cs.open_table(cs.segment_name(inst, tag, i), cs.Wanted(4096, cs.key_fingerprint(*key_a), 3, i))
            opened.append(o)
        ck = ffi.new("struct mg_flow_key *")
        for n, k in enumerate(flows):
            h = siphash13(*key_a, k)
            ffi.memmove(ck, k, 40)
            t = now - (400_000 * MS if n == 0 else 0)  # flow 0: idle past the TCP timeout
            assert lib.mg_ct_insert(opened[((h >> 32) & 0xFFFFFFFF) % 3].ct, ck, h, t, TCP_MS, UDP_MS, 1, 900 + n) >= 0
        for o in opened:
            lib.mg_ct_free(o.ct)
            o.close()
        opened = []
        line = cs.rehome_run(inst, state, conf, 8192, key_b, 2, 0, None, TCP_MS, UDP_MS, now_ns=now)
        assert line.startswith("connection tables: re-homed 599 live entries of the previous run's 3 table(s) "
                               "into 2 fresh ones"), line
        assert "capacity 4096 entries" in line and "1 idle past their timeout dropped" in line, line
        assert len(cs.list_segments(inst, tag)) == 2
        for i in range(2):
            o = cs.open_table(cs.segment_name(inst, tag, i), cs.Wanted(8192, cs.key_fingerprint(*key_b), 2, i))
            assert o.adopted, o.reason
            opened.append(o)
        for n, k in enumerate(flows[1:], 1):
            h = siphash13(*key_b, k)
            ffi.memmove(ck, k, 40)
            w = ((h >> 32) & 0xFFFFFFFF) % 2
            slot = lib.mg_ct_lookup_slot(opened[w].ct, ck, h, now, TCP_MS, UDP_MS, 0)
            assert slot >= 0, n
            ent = ffi.cast("struct mg_ct_entry *", ffi.cast("char *", opened[w].ct) + int(opened[w].ct.entries_off)) + slot
            assert ent.backend_id == 900 + n
            assert lib.mg_ct_lookup_slot(opened[1 - w].ct, ck, h, now, TCP_MS, UDP_MS, 0) == -1
        for o in opened:
            lib.mg_ct_free(o.ct)
            o.close()
        opened = []
        assert cs.rehome_run(inst, state, conf, 8192, key_b, 2, 0, None, TCP_MS, UDP_MS, now_ns=now) == ""
    finally:
        for o in opened:
            lib.mg_ct_free(o.ct)
            o.close()
        cs.remove_segments(inst)
