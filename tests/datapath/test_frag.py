"""Fragment table (paper 4.3) and IPv4 splitting: behaviour tests on both engines,
step-by-step C vs Python differential tests, and tshark reassembly of split packets."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maglev.datapath import encap as E
from maglev.datapath import frag as F
from maglev.datapath import icmp as I
from maglev.datapath import ref_encap
from maglev.datapath import ref_frag as R
from maglev.errors import NativeError
from maglev.native import lib
from maglev.testing import packets as P

ENGINES = ("c", "python")
MS = 10**6
C4, V4 = "198.51.100.7", "203.0.113.10"


def key(ident: int, src: str = C4, dst: str = V4, proto: int = P.UDP, family: int = 4) -> bytes:
    return F.frag_key(family, src, dst, proto, ident)


@pytest.fixture(params=ENGINES)
def table(request):
    return lambda **kw: F.make_table(request.param, timeout_ns=kw.pop("timeout_ns", 100 * MS), key=(1, 2), **kw)


def test_first_then_next_forwards(table):
    t = table()
    assert t.first(key(1), 3, 7, 0) == 0
    assert t.next(key(1), 100, 1000, 10 * MS) == (0, 3, 7)
    assert t.next(key(2), 101, 1000, 10 * MS)[0] == 1  # other datagram: held
    assert t.stats["forwarded"] == 1 and t.stats["held"] == 1


def test_early_fragments_are_held_then_released_in_order(table):
    t = table()
    assert [t.next(key(5), f, 500, 0)[0] for f in (10, 11, 12)] == [1, 1, 1]
    assert t.hold_count == 3 and t.hold_bytes == 1500
    assert t.drain(10) == []
    assert t.first(key(5), 2, 4, 1 * MS) == 3
    assert t.hold_count == 0 and t.queued == 3
    assert t.drain(2) == [(10, 2, 4, F.R_RELEASED), (11, 2, 4, F.R_RELEASED)]
    assert t.drain(5) == [(12, 2, 4, F.R_RELEASED)]
    assert t.next(key(5), 13, 500, 2 * MS) == (0, 2, 4)
    assert t.stats["released"] == 3


def test_expiry_drops_held_frames_with_reason(table):
    t = table(timeout_ns=50 * MS)
    t.next(key(9), 20, 100, 0)
    t.next(key(9), 21, 100, 10 * MS)
    assert t.expire(49 * MS, 1 << 20) == 0
    assert t.expire(50 * MS, 1 << 20) == 2  # 50 ms after the entry was made
    assert t.drain(10) == [(20, -1, 0, F.R_EXPIRED), (21, -1, 0, F.R_EXPIRED)]
    # a late first fragment starts a new entry; nothing left to release
    assert t.first(key(9), 1, 1, 60 * MS) == 0
    assert t.stats["expired"] == 2


def test_decision_expires_too(table):
    t = table(timeout_ns=50 * MS)
    t.first(key(1), 3, 0, 0)
    assert t.next(key(1), 1, 100, 49 * MS)[0] == 0
    assert t.next(key(1), 2, 100, 50 * MS)[0] == 1  # expired: held again, waits for a first


def test_hold_limits(table):
    t = table(hold_max=60, hold_bytes_max=10_000)
    per = lib.MG_FRAG_HOLD_PER_DATAGRAM
    assert all(t.next(key(1), i, 10, 0)[0] == 1 for i in range(per))
    assert t.next(key(1), 999, 10, 0) == (-errno.ENOBUFS, -1, 0)  # per datagram
    assert t.next(key(2), 1000, 9_481, 0) == (-errno.ENOBUFS, -1, 0)  # bytes: 520 held + 9481 > 10000
    assert t.next(key(2), 1000, 9_480, 0)[0] == 1
    t2 = table(hold_max=2)
    t2.next(key(1), 1, 10, 0)
    t2.next(key(2), 2, 10, 0)
    assert t2.next(key(3), 3, 10, 0) == (-errno.ENOBUFS, -1, 0)  # frames
    assert t2.first(key(1), 0, 0, 0) == 1
    # released but not drained: the slot is still in use
    assert t2.next(key(3), 3, 10, 0) == (-errno.ENOBUFS, -1, 0)
    assert len(t2.drain(10)) == 1
    assert t2.next(key(3), 3, 10, 0)[0] == 1
    assert t.stats["drop_hold_limit"] == 2 and t2.stats["drop_hold_limit"] == 2


def test_full_bucket_strays_dropped_firsts_evict_oldest(table):
    t = table(entries=4)  # one bucket of 4 ways: every key collides
    for i in range(4):
        assert t.next(key(i), 100 + i, 10, i * MS)[0] == 1
    assert t.next(key(9), 200, 10, 5 * MS) == (-errno.ENOSPC, -1, 0)  # strays never evict
    assert t.first(key(9), 1, 0, 5 * MS) == 0  # a decision does: the oldest entry (key 0)
    assert t.drain(10) == [(100, -1, 0, F.R_EVICTED)]
    assert t.stats["evictions"] == 1 and t.stats["drop_table_full"] == 1
    assert t.first(key(1), 2, 0, 6 * MS) == 1  # key 1's held frame is still there


def test_bad_keys_and_arguments(table):
    t = table()
    for bad in (key(1)[:39], key(1)[:37] + b"\x05\0\0", key(1)[:38] + b"\x01\0",
                b"\x01" * 16 + bytes(24)[:20] + bytes([17, 4, 0, 0])):
        with pytest.raises(NativeError) as ei:
            t.first(bad, 1, 0, 0)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(NativeError):
            t.next(bad, 1, 10, 0)
    with pytest.raises(NativeError):
        t.first(key(1), -1, 0, 0)
    for kw in ({"entries": 0}, {"hold_max": 0}, {"timeout_ns": 0}, {"entries": (1 << 24) + 1}):
        with pytest.raises(NativeError):
            table(**kw)


def test_no_frame_is_lost_or_duplicated(table):
    t = table(entries=8, hold_max=40, timeout_ns=5 * MS)
    owned = set()  # frames the table accepted
    out = []
    frame = 0
    for step in range(400):
        now = step * MS // 4
        k = key(step % 13)
        if step % 7 == 0:
            t.first(k, step % 3, 0, now)
        else:
            frame += 1
            rc, _, _ = t.next(k, frame, 100, now)
            if rc == 1:
                owned.add(frame)
        t.expire(now, 2)
        out += t.drain(3)
    t.expire(10**12, 1 << 20)
    for e in t.entries if hasattr(t, "entries") else ():
        assert e.expire_ns == 0 or not e.held
    out += t.drain(1000)
    frames = [o[0] for o in out]
    assert len(frames) == len(set(frames)) and set(frames) == owned
    assert t.hold_count == 0 and t.hold_bytes == 0 and t.queued == 0


def test_memory_is_stated():
    t = F.FragTable(entries=4096, hold_max=256)
    assert t.nbytes == lib.mg_frag_table_size(4096, 256) == 136 + 4096 * 64 + 256 * 20
    assert lib.mg_frag_table_size(0, 1) == 0 and lib.mg_frag_table_size(1, 0) == 0


def test_constants_match():
    assert (R.WAYS, R.HOLD_PER_DATAGRAM, R.DEFAULT_TIMEOUT_MS) == (
        lib.MG_FRAG_WAYS, lib.MG_FRAG_HOLD_PER_DATAGRAM, lib.MG_FRAG_DEFAULT_TIMEOUT_MS)
    assert (R.R_RELEASED, R.R_EXPIRED, R.R_EVICTED) == (F.R_RELEASED, F.R_EXPIRED, F.R_EVICTED)
    assert (R.MAX_ENTRIES, R.MAX_HOLD) == (lib.MG_FRAG_MAX_ENTRIES, lib.MG_FRAG_MAX_HOLD)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["first", "next", "next", "next", "expire", "drain"]),
        st.integers(0, 9),  # datagram id (few, to collide)
        st.integers(0, 3),  # backend
        st.integers(0, 1500),  # length
        st.sampled_from([0, 0, 1, 2, 5, 45]),  # time step (ms); timeout is 40
        st.integers(0, 4),  # cap / buckets
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(OPS, st.sampled_from([4, 4, 8, 16]), st.integers(1, 24), st.integers(0, 40_000))
def test_c_and_python_tables_agree_step_by_step(ops, entries, hold_max, hold_bytes):
    kw = dict(entries=entries, hold_max=hold_max, hold_bytes_max=hold_bytes, timeout_ns=40 * MS, key=(7, 9))
    c, p = F.make_table("c", **kw), F.make_table("python", **kw)
    now, frame = 0, 0
    for op, ident, backend, length, dt, n in ops:
        now += dt * MS
        k = key(ident, proto=P.UDP if ident % 2 else P.TCP)
        if op == "first":
            got = (c.first(k, backend, ident, now), p.first(k, backend, ident, now))
        elif op == "next":
            frame += 1
            got = (c.next(k, frame, length, now), p.next(k, frame, length, now))
        elif op == "expire":
            got = (c.expire(now, n), p.expire(now, n))
        else:
            got = (c.drain(n), p.drain(n))
        assert got[0] == got[1], (op, got)
    assert c.stats == p.stats
    assert (c.hold_count, c.hold_bytes, c.queued) == (p.hold_count, p.hold_bytes, p.queued)
    assert c.drain(100) == p.drain(100)


# ------------------------------------------------------------------------ splitting

def udp_frame(size: int, *, df: bool = False, options: bytes = b"", frag_offset: int = 0, mf: bool = False,
              ident: int = 0x777):
    body = bytes(i * 7 & 0xFF for i in range(size - 20 - len(options) - 8))
    return P.eth(P.ipv4(C4, V4, P.UDP, P.udp(40000, 40001, body, src=C4, dst=V4), df=df, options=options,
                        frag_offset=frag_offset, mf=mf, ident=ident))


def reassemble(pieces: list[bytes]) -> tuple[bytes, list[tuple[int, bool, int]]]:
    data = {}
    info = []
    for pc in pieces:
        ip = pc[14:]
        ihl = (ip[0] & 0xF) * 4
        tot, fr = struct.unpack_from("!H", ip, 2)[0], struct.unpack_from("!H", ip, 6)[0]
        assert P.checksum(ip[:ihl]) == 0
        info.append(((fr & 0x1FFF) * 8, bool(fr & 0x2000), tot))
        data[(fr & 0x1FFF) * 8] = ip[ihl:tot]
    out, pos = b"", min(data)
    for off in sorted(data):
        assert off == pos
        out += data[off]
        pos += len(data[off])
    return out, info


@pytest.mark.parametrize("engine", ENGINES)
def test_split_full_size_packet(engine):
    frame = udp_frame(1500)
    pieces = F.split_ipv4(frame, 14, 1476, engine=engine)
    payload, info = reassemble(pieces)
    assert payload == frame[34:]
    assert info == [(0, True, 1476), (1456, False, 44)]
    for pc in pieces:
        assert pc[:14] == frame[:14] and len(pc) - 14 <= 1476


@pytest.mark.parametrize("engine", ENGINES)
def test_split_copies_only_copied_options(engine):
    ra = b"\x94\x04\0\0"  # router alert: copied flag set
    rr = b"\x07\x07\x04" + bytes(4) + b"\0"  # record route: not copied (padded to 8)
    frame = udp_frame(1200, options=ra + rr)
    pieces = F.split_ipv4(frame, 14, 600, engine=engine)
    assert len(pieces) == 3
    assert pieces[0][14] & 0xF == 8 and pieces[0][34:46] == ra + rr
    for pc in pieces[1:]:
        assert pc[14] & 0xF == 6 and pc[34:38] == ra
    assert reassemble(pieces)[0] == frame[14 + 32:]


@pytest.mark.parametrize("engine", ENGINES)
def test_split_of_a_fragment_keeps_offsets_and_more_flag(engine):
    middle = udp_frame(1000, frag_offset=2960, mf=True)
    pieces = F.split_ipv4(middle, 14, 500, engine=engine)
    _, info = reassemble(pieces)
    assert [i[0] for i in info] == [2960, 2960 + 480, 2960 + 960]
    assert all(i[1] for i in info)  # the original had MF: every piece keeps it
    last = udp_frame(1000, frag_offset=2960)
    assert [i[1] for i in reassemble(F.split_ipv4(last, 14, 500, engine=engine))[1]] == [True, True, False]


@pytest.mark.parametrize("engine", ENGINES)
def test_split_errors_and_fit(engine):
    assert F.split_ipv4(udp_frame(500), 14, 500, engine=engine) == [udp_frame(500)]
    cases = [
        (udp_frame(1500, df=True), 1476, 8, errno.EINVAL),
        (udp_frame(1500), 27, 8, errno.EINVAL),
        (udp_frame(1500), 600, 1, errno.ENOSPC),
        (udp_frame(1500)[:100], 600, 8, errno.EINVAL),
        (udp_frame(1500, options=b"\x94\x09\0\0"), 600, 8, errno.EINVAL),  # option overruns
        (udp_frame(1000, frag_offset=65000, mf=False), 500, 8, errno.EINVAL),
    ]
    for frame, mtu, nspare, err in cases:
        with pytest.raises(NativeError) as ei:
            F.split_ipv4(frame, 14, mtu, nspare, engine=engine)
        assert ei.value.errno == err, (mtu, nspare)


def test_c_split_rejects_spare_equal_to_source_and_sets_metadata():
    pool = E.ScratchPool(3)
    pool.put(0, udp_frame(1500))
    pool.meta(0).vip_index = 5
    same = E.ffi.new("uint32_t[]", [0, 2])
    assert lib.mg_frag_split_ipv4(pool.buf, 0, 14, 1000, same, 2) == -errno.EINVAL
    dup = E.ffi.new("uint32_t[]", [1, 1])
    assert lib.mg_frag_split_ipv4(pool.buf, 0, 14, 600, dup, 2) == -errno.EINVAL
    ok = E.ffi.new("uint32_t[]", [2, 1])
    assert lib.mg_frag_split_ipv4(pool.buf, 0, 14, 1000, ok, 2) == 1
    assert pool.meta(2).vip_index == 5 and pool.meta(2).flags & lib.MG_FRAME_F_FRAGMENT
    assert pool.meta(2).data_off == lib.MG_FRAME_HEADROOM


@settings(max_examples=200, deadline=None)
@given(st.integers(28, 1700), st.integers(0, 1800), st.sampled_from([b"", b"\x94\x04\0\0", b"\x07\x07\x04" + bytes(5),
       b"\x01\x83\x07\x04" + bytes(8), b"\x44\x03"]), st.integers(0, 400), st.booleans(),
       st.integers(0, 12), st.booleans())
def test_split_c_equals_python(size, mtu, opts, off8, mf, nspare, mutate):
    opts = opts + b"\0" * (-len(opts) % 4)
    frame = udp_frame(max(size, 28 + len(opts) + 8), options=opts, frag_offset=off8 * 8, mf=mf)
    if mutate:
        frame = frame[:20] + b"\xff" + frame[21:]  # flags byte: DF + MF + offset bits

    def run(engine):
        try:
            return F.split_ipv4(frame, 14, mtu, nspare, engine=engine)
        except NativeError as exc:
            return exc.errno

    assert run("c") == run("python")


def test_df_clear_path_end_to_end_with_tshark(tmp_path):
    """pmtu_check says FRAGMENT -> split to MTU - overhead -> encapsulate every piece with
    GRE: every outer packet fits the MTU and tshark reassembles the inner datagram."""
    if reason := P.why_no_tshark():
        pytest.skip(reason)
    mtu = 1500
    frame = udp_frame(1500)
    ov = E.overhead("gre", 4)
    assert I.pmtu_check(frame, 14, 4, P.UDP, 34, ov, mtu) == I.PMTU_FRAGMENT
    prm = ref_encap.EncapParams(type=ref_encap.GRE, outer_family=4, src=P.addr("198.18.0.1"),
                                dst=P.addr("198.18.1.2"), eth_src=P.mac("02:00:00:00:aa:01"),
                                eth_dst=P.mac("02:00:00:00:bb:02"))
    out = [E.encap(pc, 14, 4, 1234, prm) for pc in F.split_ipv4(frame, 14, mtu - ov)]
    assert len(out) == 2 and all(len(o) - 14 <= mtu for o in out)
    rows = P.tshark_fields(tmp_path, out, ["ip.checksum.status", "udp.checksum.status", "ip.flags.mf",
                                            "frame.protocols", "_ws.malformed"])
    for row in rows:
        assert row["ip.checksum.status"] == [P.TSHARK_GOOD, P.TSHARK_GOOD], row
        assert not row["_ws.malformed"], row
    assert rows[0]["ip.flags.mf"][1] == "1" and rows[1]["ip.flags.mf"][1] == "0"
    # the reassembled UDP datagram's checksum is verified on the last piece
    assert rows[1]["udp.checksum.status"] == [P.TSHARK_GOOD], rows[1]
    assert "udp" in rows[1]["frame.protocols"][0]


@pytest.mark.parametrize("seed", range(6))
def test_c_and_python_tables_agree_on_long_random_walks(seed):
    """Long walks (hypothesis keeps its sequences short): crowded buckets, so evictions,
    releases, expiry and every drop reason all happen."""
    import random

    rnd = random.Random(seed)
    kw = dict(entries=rnd.choice([4, 8]), hold_max=rnd.choice([8, 32]), hold_bytes_max=rnd.choice([3000, 30_000]),
              timeout_ns=20 * MS, key=(seed, 99))
    c, p = F.make_table("c", **kw), F.make_table("python", **kw)
    now = frame = 0
    for _ in range(3000):
        now += rnd.choice([0, 0, 100_000, 1 * MS, 3 * MS])
        k = key(rnd.randrange(24))
        r = rnd.random()
        if r < 0.2:
            b = rnd.randrange(4)
            assert c.first(k, b, 1, now) == p.first(k, b, 1, now)
        elif r < 0.85:
            frame += 1
            n = rnd.randrange(1500)
            assert c.next(k, frame, n, now) == p.next(k, frame, n, now)
        elif r < 0.92:
            assert c.expire(now, 1) == p.expire(now, 1)
        else:
            m = rnd.randrange(6)
            assert c.drain(m) == p.drain(m)
    assert c.stats == p.stats
    assert all(v > 0 for v in c.stats.values()), c.stats
