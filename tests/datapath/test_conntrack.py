"""Connection table: the C table and the Python reference driven with the same operations
give the same slots, tags and counters; the insert rule, segments, rate guard, timeouts,
full-key compare and the memory check hold."""

from __future__ import annotations

import errno
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maglev.datapath.ctmem import ConntrackMemoryError, check_memory, plan
from maglev.datapath.ref_conntrack import (
    CT_STAT_NAMES,
    TAG_PROTECTED,
    TAG_TCP,
    WAYS,
    ConnTable,
    sig_of,
)
from maglev.native import ffi, lib

MS = 1_000_000
TCP_MS, UDP_MS = 300_000, 30_000


class CTable:
    def __init__(self, capacity: int, mode: int = lib.MG_CT_PAGES_AUTO):
        ct = lib.mg_ct_new_mode(capacity, mode)
        assert ct != ffi.NULL
        self.ct = ffi.gc(ct, lib.mg_ct_free)
        self.key = ffi.new("struct mg_flow_key *")

    def _k(self, key: bytes):
        ffi.memmove(self.key, key, 40)
        return self.key

    def lookup(self, key: bytes, h: int, now_ns: int) -> int:
        return lib.mg_ct_lookup(self.ct, self._k(key), h, now_ns, TCP_MS, UDP_MS)

    def slot(self, key: bytes, h: int, now_ns: int, promote: bool = False) -> int:
        return lib.mg_ct_lookup_slot(self.ct, self._k(key), h, now_ns, TCP_MS, UDP_MS, int(promote))

    def insert(self, key: bytes, h: int, now_ns: int, backend: int) -> int:
        return lib.mg_ct_insert(self.ct, self._k(key), h, now_ns, TCP_MS, UDP_MS, backend, backend + 100)

    def stats(self) -> dict[str, int]:
        return {k: int(getattr(self.ct.stats, k)) for k in CT_STAT_NAMES}


def key(n: int, proto: int = 6) -> bytes:
    return struct.pack("!4s12x4s12xHHBBxx", n.to_bytes(4, "big"), b"\xcb\x00\x71\x0a", n & 0xFFFF, 80, proto, 4)


def hash_in(bucket: int, sig: int) -> int:
    return (sig << 32) | bucket


def ref_now(now_ns: int) -> int:
    return now_ns // MS & 0xFFFFFFFF


def test_capacity_rounds_up_and_memory_is_stated():
    c = lib.mg_ct_new(1000)
    try:
        assert lib.mg_ct_capacity(c) == 1024
        assert c.magic == 0x314B5254434D474D and c.version == lib.MG_CT_LAYOUT_VERSION
        assert c.meta_off == lib.MG_CT_HDR_SIZE and c.entries_off == lib.MG_CT_HDR_SIZE + 128 * 64
        assert lib.mg_ct_page_mode(c) in (lib.MG_CT_PAGES_HUGETLB, lib.MG_CT_PAGES_THP, lib.MG_CT_PAGES_SMALL)
    finally:
        lib.mg_ct_free(c)
    # one contiguous mapping: header + 72 bytes per entry (8 metadata + 64 entry)
    assert lib.mg_ct_bytes(1 << 20) == lib.MG_CT_HDR_SIZE + (1 << 20) * 72
    assert lib.mg_ct_new(0) == ffi.NULL
    assert lib.mg_ct_new(lib.MG_CT_MAX_CAPACITY + 1) == ffi.NULL
    assert ffi.sizeof("struct mg_ct") == lib.MG_CT_HDR_SIZE


def test_struct_stats_and_name_list_agree():
    names = [f[0] for f in ffi.typeof("struct mg_ct_stats").fields]
    assert tuple(names) == CT_STAT_NAMES


def test_full_key_compare_never_hash_only():
    c = CTable(64)
    h = 0xDEADBEEF_00000005
    assert c.insert(key(1), h, 10 * MS, 3) >= 0
    assert c.lookup(key(1), h, 11 * MS) == 3
    assert c.lookup(key(2), h, 11 * MS) == -1  # same hash, same signature, other key


def test_signature_match_at_every_way_and_in_both_buckets():
    """The 8 tags of a bucket are compared at once (mg_ct_match, SSE2): whichever way holds
    the flow, whatever its segment and timeout bits, and however many ways share its
    signature, the lookup finds exactly its entry -- in the primary bucket or the
    alternate -- like the reference."""
    c, ref = CTable(64), ConnTable(64)
    h = hash_in(3, 0x2ABCDEF1)  # one signature and one primary bucket for every key
    keys = [key(i, 6 if i % 2 else 17) for i in range(1, 17)]  # 8 fill b1, 8 go to b2
    for i, k in enumerate(keys):
        s = c.insert(k, h, 10 * MS, i)
        assert s >= 0 and s == ref.add(k, h, ref_now(10 * MS), TCP_MS, UDP_MS, i, i + 100)
    for i in range(0, 16, 3):  # promote some (PROTECTED bit set in their tags)
        s = c.slot(keys[i], h, 11 * MS, promote=True)
        assert s >= 0 and s == ref.find_slot(keys[i], h, ref_now(11 * MS), TCP_MS, UDP_MS)
        ref.promote(s)
    slots = set()
    for i, k in enumerate(keys):
        s = c.slot(k, h, 12 * MS)
        assert s >= 0 and c.lookup(k, h, 12 * MS) == i
        slots.add(s)
    assert len(slots) == 16 and {s // WAYS for s in slots} == {3, ref.alt(3, 0x2ABCDEF1)}
    assert c.lookup(key(99), h, 12 * MS) == -1  # same signature, no such key in either bucket
    assert [lib.mg_ct_tag(c.ct, s) for s in range(64)] == [ref.tag(s) for s in range(64)]


def test_idle_timeout_tcp_and_udp():
    c = CTable(64)
    c.insert(key(1, 6), 1 << 32, 0, 1)
    c.insert(key(2, 17), 2 << 32, 0, 2)
    assert c.lookup(key(2, 17), 2 << 32, (UDP_MS - 1) * MS) == 2  # refreshes
    assert c.lookup(key(2, 17), 2 << 32, (2 * UDP_MS) * MS) == -1  # idle a full timeout
    assert c.lookup(key(1, 6), 1 << 32, (TCP_MS - 1) * MS) == 1
    assert c.stats()["expired"] == 1 and c.ct.n_used == 1


def test_tag_holds_segment_and_timeout_class():
    c = CTable(64)
    s = c.insert(key(1, 6), hash_in(3, 77), 0, 1)
    assert lib.mg_ct_tag(c.ct, s) == 77 | TAG_TCP
    c.slot(key(1, 6), hash_in(3, 77), MS, promote=True)
    assert lib.mg_ct_tag(c.ct, s) == 77 | TAG_TCP | TAG_PROTECTED
    u = c.insert(key(2, 17), hash_in(3, 78), 0, 1)
    assert lib.mg_ct_tag(c.ct, u) == 78


def test_probation_is_evicted_first_and_protected_stays():
    c = CTable(WAYS)  # one bucket: the alternate bucket is the same one
    assert lib.mg_ct_set_policy(c.ct, 100, 0) == 0  # the quota is not what this test is about
    for i in range(WAYS):
        assert c.insert(key(i), (i + 1) << 32, i * MS, i) == i
    for i in (0, 2, 4):  # flows 0, 2, 4 send a second packet: protected
        assert c.slot(key(i), (i + 1) << 32, 20 * MS, promote=True) == i
    assert c.ct.n_protected == 3
    # new flows take the least recently used probation ways: 1, 3, 5, 6, 7, then 1 again...
    got = [c.insert(key(100 + j), (100 + j) << 32, (30 + j) * MS, 9) for j in range(6)]
    assert got == [1, 3, 5, 6, 7, 1]
    for i in (0, 2, 4):  # no flood of new flows evicts an established flow
        assert c.lookup(key(i), (i + 1) << 32, 40 * MS) == i
    for i in range(WAYS):
        c.slot(key(100 + i), (100 + i) << 32, 41 * MS, promote=True)
    # every way protected now: a new flow's insert fails (forwarded statelessly)
    assert c.insert(key(999), 999 << 32, 50 * MS, 9) == -1
    assert c.stats()["insert_failed"] == 1 and c.stats()["evictions"] == 6


def test_protected_quota_demotes_the_bucket_lru():
    c = CTable(WAYS)
    lib.mg_ct_set_policy(c.ct, 25, 0)  # quota: 2 of 8
    assert c.ct.protected_max == 2
    for i in range(3):
        c.insert(key(i), (i + 1) << 32, i * MS, i)
    c.slot(key(0), 1 << 32, 10 * MS, promote=True)
    c.slot(key(1), 2 << 32, 11 * MS, promote=True)
    c.slot(key(2), 3 << 32, 12 * MS, promote=True)  # quota reached: flow 0 (LRU) demoted
    tags = [lib.mg_ct_tag(c.ct, s) & TAG_PROTECTED for s in range(3)]
    assert tags == [0, TAG_PROTECTED, TAG_PROTECTED]
    assert c.stats()["demoted"] == 1 and c.stats()["promoted"] == 3 and c.ct.n_protected == 2


def test_cuckoo_move_makes_room_in_the_primary_bucket():
    c = CTable(64)  # 8 buckets
    r = ConnTable(64)
    sig = 5
    b1 = 2
    b2 = r.alt(b1, sig)
    # fill b1 with entries whose signatures send them elsewhere, then b2
    for i in range(WAYS):
        assert c.insert(key(i), hash_in(b1, 1000 + i), 0, i) == b1 * WAYS + i
    for i in range(WAYS):
        s = c.insert(key(50 + i), hash_in(b2, 2000 + i), 0, i)
        assert s // WAYS in (b2, r.alt(b2, 2000 + i))
    s = c.insert(key(99), hash_in(b1, sig), MS, 7)
    assert s >= 0 and c.stats()["moved"] >= 0
    assert c.lookup(key(99), hash_in(b1, sig), 2 * MS) == 7
    for i in range(WAYS):  # every earlier entry is still found, wherever it moved
        assert c.lookup(key(i), hash_in(b1, 1000 + i), 2 * MS) == i
        assert c.lookup(key(50 + i), hash_in(b2, 2000 + i), 2 * MS) == i
    assert c.ct.n_used == lib.mg_ct_count(c.ct) == 17


def test_no_insert_failure_below_70_percent():
    rnd = random.Random(7)
    cap = 1 << 15
    c = CTable(cap)
    for i in range(int(cap * 0.70)):
        h = rnd.getrandbits(64)
        assert c.insert(key(i), h, 0, 1) >= 0
    st_ = c.stats()
    assert st_["insert_failed"] == 0 and st_["evictions"] == 0 and st_["moved"] > 0
    assert c.ct.n_used == lib.mg_ct_count(c.ct) == int(cap * 0.70)


def test_rate_guard_token_bucket():
    c = CTable(64)
    lib.mg_ct_set_policy(c.ct, 90, 100)  # 100 new flows/s, burst 10
    t = 5_000 * MS
    admitted = sum(lib.mg_ct_admit_at(c.ct, t) for _ in range(50))
    assert admitted == 10 and c.stats()["rate_guard_hits"] == 40
    assert lib.mg_ct_admit_at(c.ct, t + 5 * MS) == 0  # 0.5 of a flow earned
    assert lib.mg_ct_admit_at(c.ct, t + 10 * MS) == 1  # 1 earned after 10 ms
    lib.mg_ct_set_policy(c.ct, 90, 0)
    assert all(lib.mg_ct_admit_at(c.ct, t) for _ in range(1000))  # 0 = no limit
    assert lib.mg_ct_set_policy(c.ct, 0, 0) == -errno.EINVAL
    assert lib.mg_ct_set_policy(c.ct, 101, 0) == -errno.EINVAL


def test_huge_table_maps_lazily_without_memset():
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    before = rss()
    c = lib.mg_ct_new_mode(1 << 24, lib.MG_CT_PAGES_SMALL)  # 1.1 GiB mapping
    try:
        assert c != ffi.NULL and c.map_bytes >= (1 << 24) * 72
        assert rss() - before < 4 << 20  # untouched: fresh anonymous pages are zero
    finally:
        lib.mg_ct_free(c)


def test_capacity_larger_than_the_machine_is_refused_with_numbers():
    p = plan(1 << 26, "off", copies=64)
    assert not p.ok and p.table_bytes * 64 > p.mem_available
    with pytest.raises(ConntrackMemoryError, match=r"conntrack.capacity = 67108864: .* GiB .* MemAvailable"):
        check_memory(1 << 26, "off", copies=64)
    huge = plan(1 << 26, "hugetlb")
    if not huge.ok:  # the usual case: not 2304 huge pages reserved
        with pytest.raises(ConntrackMemoryError, match=r"huge pages of 2 MiB, but HugePages_Free is"):
            check_memory(1 << 26, "hugetlb")
        with open("/proc/self/statm") as f:
            vm_before = int(f.read().split()[0])
        assert lib.mg_ct_new_mode(1 << 26, lib.MG_CT_PAGES_HUGETLB) == ffi.NULL
        assert ffi.errno == errno.ENOMEM
        with open("/proc/self/statm") as f:
            assert int(f.read().split()[0]) == vm_before  # nothing mapped


def test_pipeline_refuses_tables_that_do_not_fit_before_starting(tmp_path):
    from maglev.actors.pipeline import Pipeline, PipelineOptions

    conf = tmp_path / "big.toml"
    conf.write_text('[instance]\nsource_ipv4 = "198.18.0.1"\n[conntrack]\ncapacity = 67108864\n'
                    'huge_pages = "off"\n[[vip]]\naddress = "203.0.113.10"\nport = 80\n'
                    '[[vip.backend]]\naddress = "198.18.1.1"\n')
    need = plan(1 << 26, "off").table_bytes
    workers = min(64, plan(1 << 26, "off").mem_available // need + 1)
    if workers > 64 or plan(1 << 26, "off", copies=workers).ok:
        pytest.skip(f"this machine has room for {workers} tables of {need} bytes")
    with pytest.raises(ConntrackMemoryError, match=f"x {workers} workers"):
        Pipeline(PipelineOptions(workers=workers, config_path=str(conf)))


def test_config_keys_are_validated():
    from maglev import config as cfg
    from maglev.errors import ConfigError

    c = cfg.loads('[conntrack]\nprotected_percent = 50\nnew_flows_per_s = 20000\nhuge_pages = "thp"\n')
    assert (c.conntrack.protected_percent, c.conntrack.new_flows_per_s, c.conntrack.huge_pages) == (50, 20000, "thp")
    with pytest.raises(ConfigError) as ei:
        cfg.loads('[conntrack]\nprotected_percent = 0\nnew_flows_per_s = -1\nhuge_pages = "yes"\n')
    text = str(ei.value)
    assert "conntrack.protected_percent: 0 is out of range 1..100" in text
    assert "conntrack.new_flows_per_s: -1 is out of range" in text
    assert "conntrack.huge_pages: 'yes' is not one of auto, hugetlb, thp, off" in text


OPS = st.lists(
    st.tuples(st.sampled_from(["lookup", "promote", "insert", "admit"]), st.integers(0, 60),
              st.integers(0, 3), st.integers(0, 400)),
    max_size=150,
)


@settings(max_examples=200, deadline=None)
@given(OPS, st.sampled_from([8, 16, 64]), st.integers(1, 100), st.sampled_from([0, 50, 5000]))
def test_c_and_reference_agree(ops, cap, pct, rate):
    c = CTable(cap)  # 1, 2 or 8 buckets: lots of contention, moves, evictions
    r = ConnTable(cap, pct, rate)
    assert lib.mg_ct_set_policy(c.ct, pct, rate) == 0
    now = 0
    for op, n, proto_sel, dt in ops:
        now += dt * 10 * MS
        k = key(n, 17 if proto_sel == 0 else 6)
        h = (n * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        t = ref_now(now)
        if op == "admit":
            assert lib.mg_ct_admit_at(c.ct, now) == int(r.admit(t))
        elif op in ("lookup", "promote"):
            got = c.slot(k, h, now, promote=op == "promote")
            want = r.find_slot(k, h, t, TCP_MS, UDP_MS)
            if want >= 0 and op == "promote":
                r.promote(want)
            assert got == want
        else:
            rs, cs = r.find_slot(k, h, t, TCP_MS, UDP_MS), c.slot(k, h, now)
            assert rs == cs
            if rs == -1:
                assert c.insert(k, h, now, n) == r.add(k, h, t, TCP_MS, UDP_MS, n, n + 100)
    assert c.stats() == r.stats.as_dict()
    assert c.ct.n_used == r.n_used == lib.mg_ct_count(c.ct) == r.count()
    assert c.ct.n_protected == r.n_protected
    for s in range(lib.mg_ct_capacity(c.ct)):
        assert lib.mg_ct_tag(c.ct, s) == r.tag(s)
    for n in range(61):
        for proto in (6, 17):
            k = key(n, proto)
            h = (n * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
            assert c.lookup(k, h, now) == (-1 if (e := r.find(k, h, ref_now(now), TCP_MS, UDP_MS)) is None
                                           else e.backend)


def test_sig_of_never_zero():
    assert sig_of(0) == 1 and sig_of(1 << 62) == 1 and sig_of(0x3FFFFFFF << 32) == 0x3FFFFFFF
