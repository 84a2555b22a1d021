"""The actors' C loops (mg_loop.h) driven in one process over a real region: why each
returns (idle, budget, back pressure, eof, stop), every frame accounted for at the end;
and steering's hash that the worker reuses (MG_FRAME_F_HASHED) gives the very decisions
the worker makes when it hashes itself."""

from __future__ import annotations

import time

import pytest

from maglev.actors.pipeline import latency_us
from maglev.config import load_config
from maglev.datapath.tables import build_tables
from maglev.native import check, ffi, lib
from maglev.nic.gen import GenNic, vip_targets
from maglev.rings import SLOT_MUXER, SLOT_STEERING, Region
from tests.region_helpers import scratch_region
from tests.run_helpers import poll_until_eof

FRAME = int(lib.MG_FRAME_SIZE)
CFG = load_config("")
K0, K1 = CFG.flow_hash_key
BLOB = build_tables(CFG)


@pytest.fixture
def region(request):
    with scratch_region("test-loops", 2, 1024, getattr(request, "param", 64), blob=BLOB) as r:
        yield r


def glue(r: Region):
    st = ffi.new("struct mg_steer *")
    mux = ffi.new("struct mg_mux *")
    check(lib.mg_steer_init(st, r.base, SLOT_STEERING, K0, K1), "steer init")
    # the workers here run only between steering's calls (frozen by design): stall rule off
    check(lib.mg_steer_set_stall_ns(st, 0), "stall off")
    check(lib.mg_mux_init(mux, r.base, SLOT_MUXER), "mux init")
    now = time.monotonic_ns()
    ws = [ffi.gc(lib.mg_worker_new(r.base, i, 4096, K0, K1, 64, now), lib.mg_worker_free)
          for i in range(r.n_workers)]
    return st, mux, ws


def ctl(burst: int = 64, max_bursts: int = 0, budget_ns: int = 10**10, stop=ffi.NULL):
    return ffi.new("struct mg_loop_ctl *", {"budget_ns": budget_ns, "max_bursts": max_bursts,
                                             "burst": burst, "stop": stop})


def test_loops_move_every_packet_and_say_why_they_return(region):
    st, mux, ws = glue(region)
    gen = GenNic(vip_targets(CFG), flows=300, syn=0.2, ipv6=0.2, seed=3)
    src = ffi.new("struct mg_loop_gen *", {"gen": gen._g, "left": 3000, "deadline_ns": 0})
    out = ffi.new("struct mg_loop_out *")
    c = ctl()
    reasons = {"steer": set(), "worker": set(), "mux": set()}
    received = sent = worked = 0
    for _ in range(2000):
        check(lib.mg_steer_loop(st, region.base, src, c, out), "steer loop")
        reasons["steer"].add(out.reason)
        received += out.packets
        if out.reason == lib.MG_LOOP_EOF and not lib.mg_hand_count(region.base, SLOT_STEERING) \
                and sent == 3000:
            break
        for w in ws:
            check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
            reasons["worker"].add(out.reason)
            worked += out.packets
        check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
        reasons["mux"].add(out.reason)
        sent += out.packets
        assert out.last_ns > 0
    for _ in range(10):  # the muxer may still hold what the full sent ring refused
        check(lib.mg_steer_reclaim(st, region.base), "reclaim")
        check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
    check(lib.mg_steer_reclaim(st, region.base), "reclaim")
    assert received == worked == sent == 3000 == src.left + 3000
    # 64-slot rings and 3000 packets: steering meets full rx rings, workers full tx rings,
    # the muxer a full sent ring (steering reclaims only at its next turn)
    assert reasons["steer"] >= {lib.MG_LOOP_STALL, lib.MG_LOOP_EOF}
    assert lib.MG_LOOP_STALL in reasons["worker"] and lib.MG_LOOP_IDLE in reasons["worker"]
    assert lib.MG_LOOP_STALL in reasons["mux"]
    assert reasons["mux"] <= {lib.MG_LOOP_STALL, lib.MG_LOOP_IDLE}
    assert region.stats(SLOT_MUXER)[lib.MG_MS_TX_PACKETS] == 3000
    assert region.stats(SLOT_STEERING)[lib.MG_SS_RX_PACKETS] == 3000
    rep = region.account()
    assert rep.ok, str(rep)
    assert region.free.count() == region.n_frames


def test_budget_and_stop_end_a_busy_loop(region):
    st, mux, ws = glue(region)
    gen = GenNic(vip_targets(CFG), flows=50, seed=4)
    src = ffi.new("struct mg_loop_gen *", {"gen": gen._g, "left": 2**64 - 1, "deadline_ns": 0})
    out = ffi.new("struct mg_loop_out *")
    check(lib.mg_steer_loop(st, region.base, src, ctl(burst=8, max_bursts=2), out), "steer loop")
    assert (out.reason, out.bursts, out.packets) == (lib.MG_LOOP_BUDGET, 2, 16)
    check(lib.mg_steer_loop(st, region.base, src, ctl(burst=8, budget_ns=0), out), "steer loop")
    assert (out.reason, out.bursts) == (lib.MG_LOOP_BUDGET, 1)  # a zero budget: one burst
    stop = ffi.new("uint32_t *", 1)
    check(lib.mg_worker_loop(ws[0], region.base, ctl(stop=stop), out), "worker loop")
    assert out.reason == lib.MG_LOOP_STOP and out.bursts == 1
    # an expired deadline is eof before any frame is taken
    src.deadline_ns = time.monotonic_ns() - 1
    check(lib.mg_steer_loop(st, region.base, src, ctl(), out), "steer loop")
    assert (out.reason, out.packets) == (lib.MG_LOOP_EOF, 0)
    bad = ffi.new("struct mg_loop_ctl *", {"budget_ns": 1, "burst": 0})
    assert lib.mg_steer_loop(st, region.base, src, bad, out) == -22
    assert lib.mg_mux_loop(mux, region.base, bad, out) == -22
    too_many = ctl()
    too_many.spares = lib.MG_SPARE_RING_SIZE + 1
    assert lib.mg_steer_loop(st, region.base, src, too_many, out) == -22


def test_the_steering_loop_keeps_the_spare_rings_topped_up(region):
    """With a spare reserve the loop tops up every worker's spare ring each round, as the
    Python step does; at the end every frame is home (free list or a spare ring) and the
    accounting holds."""
    st, mux, ws = glue(region)
    gen = GenNic(vip_targets(CFG), flows=200, syn=0.2, ipv6=0.2, seed=8)
    src = ffi.new("struct mg_loop_gen *", {"gen": gen._g, "left": 2000, "deadline_ns": 0})
    out = ffi.new("struct mg_loop_out *")
    c = ctl()
    c.spares = 32
    sent = 0
    for _ in range(2000):
        check(lib.mg_steer_loop(st, region.base, src, c, out), "steer loop")
        assert all(region.spare(i).count() >= 16 for i in range(region.n_workers))
        if out.reason == lib.MG_LOOP_EOF and not lib.mg_hand_count(region.base, SLOT_STEERING) \
                and sent == 2000:
            break
        for w in ws:
            check(lib.mg_worker_loop(w, region.base, c, out), "worker loop")
        check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
        sent += out.packets
    for _ in range(10):
        check(lib.mg_steer_reclaim(st, region.base), "reclaim")
        check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
    check(lib.mg_steer_reclaim(st, region.base), "reclaim")
    assert sent == 2000 == region.stats(SLOT_STEERING)[lib.MG_SS_RX_PACKETS]
    assert region.stats(SLOT_STEERING)[lib.MG_SS_SPARE_RESERVE] == 32
    spares = sum(region.spare(i).count() for i in range(region.n_workers))
    assert spares >= 16 * region.n_workers
    assert region.free.count() + spares == region.n_frames
    rep = region.account()
    assert rep.ok, str(rep)


def _judge(dp, pool, frames: list[int], blob: bytes = BLOB) -> list[tuple]:
    tables = ffi.new("uint8_t[]", blob)
    n = len(frames)
    io = ffi.new("struct mg_dp_io *")
    fr = ffi.new("uint32_t[]", frames)
    tx, drop = ffi.new("uint32_t[]", n + 64), ffi.new("uint32_t[]", n + 64)
    io.pool, io.frames, io.n, io.tx, io.tx_cap, io.drop, io.drop_cap = pool, fr, n, tx, n + 64, drop, n + 64
    check(lib.mg_dp_burst(dp, tables, time.monotonic_ns(), io), "dp burst")
    out = []
    for i in frames:
        m = ffi.cast("struct mg_frame_meta *", pool + i * FRAME)
        data = bytes(ffi.buffer(pool + i * FRAME + lib.MG_FRAME_META_SIZE + m.data_off, m.len))
        out.append((int(m.verdict), int(m.backend_index), int(m.vip_index), data))
    return out


def _steered(region: Region, cfg, seed: int, ipv6: float) -> list[int]:
    """Steering takes and dispatches one burst of 256 generated frames (flows to the VIPs
    of ``cfg``); the frames it put on the two workers' rx rings."""
    st, _mux, _ws = glue(region)
    gen = GenNic(vip_targets(cfg), flows=2000, syn=0.3, ipv6=ipv6, seed=seed)
    check(lib.mg_steer_take(st, region.base, 256), "take")
    cnt = ffi.new("uint32_t *")
    descs = lib.mg_hand_descs(region.base, SLOT_STEERING, cnt)
    k = gen.rx_burst(region.pool_ptr, descs, 256)
    assert check(lib.mg_steer_dispatch(st, region.base, k, 1), "dispatch") == 0
    return [d for i in range(2) for d in region.rx(i).snapshot()]


def _pool_copy(region: Region, frames: list[int], hashed: bool, tamper: bool = False):
    """A copy of the frame pool where steering hashed every frame; without the hashed flag
    (the worker must hash), or with a corrupted hash (``tamper``)."""
    size = region.n_frames * FRAME
    p = ffi.new("uint8_t[]", size)
    ffi.memmove(p, region.pool_ptr, size)
    for d in frames:
        m = ffi.cast("struct mg_frame_meta *", p + d * FRAME)
        assert m.flags & lib.MG_FRAME_F_HASHED
        if not hashed:
            m.flags &= ~lib.MG_FRAME_F_HASHED
        if tamper:
            m.flow_hash_hi ^= 0x5A5A5A5A
    return p


def _dp(k0: int = K0, k1: int = K1):
    return ffi.gc(lib.mg_dp_new(4096, 0, k0, k1, time.monotonic_ns()), lib.mg_dp_free)


@pytest.mark.parametrize("region", [256], indirect=True)
def test_the_worker_reuses_steerings_hash_with_the_same_result(region):
    frames = _steered(region, CFG, seed=5, ipv6=0.2)
    assert len(frames) == 256
    h, fl = ffi.new("uint64_t *"), ffi.new("uint16_t *")
    pool = region.pool_ptr
    for d in frames:
        m = ffi.cast("struct mg_frame_meta *", pool + d * FRAME)
        assert m.flags & lib.MG_FRAME_F_HASHED
        pkt = bytes(ffi.buffer(pool + d * FRAME + lib.MG_FRAME_META_SIZE + m.data_off, m.len))
        lib.mg_steer_hash(pkt, len(pkt), K0, K1, 2, h, fl)
        assert (m.flow_hash_hi << 32 | m.flow_hash) == h[0]
    reused = _judge(_dp(), _pool_copy(region, frames, True), frames)
    hashed_here = _judge(_dp(), _pool_copy(region, frames, False), frames)
    other_secret = _judge(_dp(K0 ^ 1), _pool_copy(region, frames, True, tamper=True), frames)  # keys differ: rehash
    assert reused == hashed_here == other_secret
    assert sum(v == lib.MG_VERDICT_FORWARD for v, *_ in reused) == 256
    # ... and the reuse is real: a wrong hash from "steering" moves flows
    tampered = _judge(_dp(), _pool_copy(region, frames, True, tamper=True), frames)
    assert [b for _, b, *_ in tampered] != [b for _, b, *_ in reused]


MASKED_CONF = """
[instance]
source_ipv4 = "198.18.0.1"
{vips}
"""
MASKED_VIPS = [("203.0.113.71", 80, "tcp", 'hash = "src_ip"'),
               ("203.0.113.72", 80, "tcp", 'hash = "dst_port"\nallow_fragments = false'),
               ("203.0.113.73", 53, "udp", "udp_ignore_src_port = true"),
               ("203.0.113.74", 53, "udp", "udp_ignore_src_port = true\nconntrack = false"),
               ("203.0.113.75", 80, "tcp", "")]


@pytest.mark.parametrize("region", [256], indirect=True)
def test_the_worker_rehashes_when_the_vip_masks_the_key(region):
    """A VIP whose flow key is masked (hash = src_ip / dst_port, udp_ignore_src_port) must
    not reuse steering's 5-tuple hash: the decisions with the hash carried (and even with a
    corrupted one) are those of a worker that hashes itself, for every masked VIP; only the
    plain 5-tuple VIP beside them uses it."""
    from maglev.config import loads

    vips = "".join(
        f'[[vip]]\naddress = "{a}"\nport = {p}\nprotocol = "{pr}"\n{extra}\n'
        + "".join(f'[[vip.backend]]\naddress = "198.18.1.{i}"\n' for i in range(1, 9))
        for a, p, pr, extra in MASKED_VIPS)
    cfg = loads(MASKED_CONF.format(vips=vips))
    blob = build_tables(cfg)
    frames = _steered(region, cfg, seed=9, ipv6=0)
    reused = _judge(_dp(), _pool_copy(region, frames, True), frames, blob)
    hashed_here = _judge(_dp(), _pool_copy(region, frames, False), frames, blob)
    assert reused == hashed_here
    assert sum(v == lib.MG_VERDICT_FORWARD for v, *_ in reused) == len(frames)
    tampered = _judge(_dp(), _pool_copy(region, frames, True, tamper=True), frames, blob)
    plain_vip = len(MASKED_VIPS) - 1
    masked = [i for i, (_, _, vip, _) in enumerate(reused) if vip != plain_vip]
    assert len(masked) > 100 and len(masked) < len(frames)
    assert [tampered[i] for i in masked] == [reused[i] for i in masked]  # never reused
    plain = [i for i in range(len(frames)) if i not in masked]
    assert [tampered[i][1] for i in plain] != [reused[i][1] for i in plain]  # reused


def test_latency_buckets_are_quarter_octaves():
    assert [lib.mg_lat_bucket(ns) for ns in (0, 255, 256, 319, 320, 383, 384, 447, 448, 511, 512)] == \
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    for b in range(1, int(lib.MG_MS_LAT_N)):
        lo = lib.mg_lat_floor_ns(b)
        assert lib.mg_lat_bucket(lo) == b and lib.mg_lat_bucket(lo - 1) == b - 1
        if b + 1 < int(lib.MG_MS_LAT_N):  # an upper edge at most 25% above the floor
            assert lo < lib.mg_lat_floor_ns(b + 1) <= lo * 5 // 4
    assert lib.mg_lat_bucket(2**63) == lib.MG_MS_LAT_N - 1
    assert lib.MG_MS_LAT0 + lib.MG_MS_LAT_N <= lib.MG_STATS_WORDS  # inside the muxer's stats block
    h = [0] * int(lib.MG_MS_LAT_N)
    h[lib.mg_lat_bucket(40_000)] = 999  # 40 us -> bucket [32.8, 41.0) us
    h[lib.mg_lat_bucket(3_000_000)] = 1
    assert latency_us(h) == {"packets": 1000, "p50": 40.96, "p99": 40.96, "p999": 40.96}
    assert latency_us([0] * int(lib.MG_MS_LAT_N))["p99"] == 0.0


def test_the_muxer_loop_records_each_packets_latency(region):
    st, mux, ws = glue(region)
    gen = GenNic(vip_targets(CFG), flows=20, seed=6)
    src = ffi.new("struct mg_loop_gen *", {"gen": gen._g, "left": 40, "deadline_ns": 0})
    out = ffi.new("struct mg_loop_out *")
    t0 = time.monotonic_ns()  # before the generator stamps rx_ts_ns
    check(lib.mg_steer_loop(st, region.base, src, ctl(), out), "steer loop")
    for w in ws:
        check(lib.mg_worker_loop(w, region.base, ctl(), out), "worker loop")
    hist = ffi.new("uint64_t[]", int(lib.MG_MS_LAT_N))
    c = ctl()
    c.lat_hist = hist
    check(lib.mg_mux_loop(mux, region.base, c, out), "mux loop")
    assert out.packets == 40 == sum(hist)
    top = max(b for b in range(int(lib.MG_MS_LAT_N)) if hist[b])
    assert lib.mg_lat_floor_ns(top) <= time.monotonic_ns() - t0  # no packet older than the test
    assert hist[0] == 0  # ... and every one stamped (0 would mean no rx_ts_ns)


def test_a_paced_generator_gives_only_what_is_due():
    gen = GenNic(vip_targets(CFG), flows=20, seed=7, rate=1000)
    pool = ffi.new("uint8_t[]", 256 * FRAME)
    descs = ffi.new("uint64_t[]", list(range(256)))
    t0 = time.monotonic()
    got = gen.rx_burst(pool, descs, 256)  # the clock starts here: nothing is due yet
    time.sleep(0.05)
    got += gen.rx_burst(pool, descs, 256)
    elapsed = time.monotonic() - t0
    assert got <= elapsed * 1000 + 1
    assert got >= 25  # ~50 due after 50 ms
    from maglev.nic import NicSpecError
    from maglev.nic.gen import validate_options

    with pytest.raises(NicSpecError, match="rate"):
        validate_options({"rate": "-1"})


def test_a_paced_generator_says_how_many_frames_are_due():
    """Steering takes only the frames a paced generator will fill (GenNic.due)."""
    gen = GenNic(vip_targets(CFG), flows=20, seed=7, rate=1000)
    assert gen.due(256) == 256  # before the clock starts: rx_burst decides
    pool = ffi.new("uint8_t[]", 256 * FRAME)
    descs = ffi.new("uint64_t[]", list(range(256)))
    t0 = time.monotonic()  # before the clock starts (in rx_burst): a bound whatever runs between
    gen.rx_burst(pool, descs, 256)
    time.sleep(0.03)
    due = gen.due(256)
    assert 1 <= due <= (time.monotonic() - t0) * 1000 + 1  # ~30 due after 30 ms
    assert gen.rx_burst(pool, descs, due) == due  # later, so at least as many are due
    assert gen.due(1) in (0, 1) and GenNic(vip_targets(CFG), flows=5).due(64) == 64  # unpaced: all


def test_a_paced_pipeline_measures_every_packets_latency():
    from maglev.actors.pipeline import Pipeline, PipelineOptions
    from maglev.rings import SLOT_MUXER

    p = Pipeline(PipelineOptions(workers=1, nic="gen:rate=5000,packets=500,flows=50", latency=True))
    try:
        p.start()
        poll_until_eof(p)
        p.stop()
        s = p.summary()
        lat0 = int(lib.MG_MS_LAT0)
        hist = [int(x) for x in p.region.stats(SLOT_MUXER).snapshot()[lat0:lat0 + int(lib.MG_MS_LAT_N)]]
    finally:
        p.close()
    assert s["pool"]["ok"], s["pool"]
    assert s["tx_packets"] == 500 == sum(hist)
    lat = latency_us(hist)
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p999"]
