"""Steering's flow -> worker map (maglev/actors/dispatch.py): the weights from the CPU
placement, the indirection table, the C dispatch against its Python reference, fragments,
and the map's part in adopting connection tables."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from maglev.actors.dispatch import RETA_SIZE, DispatchMap, build_reta, dispatch_map, worker_weights
from maglev.actors.pipeline import plan_cpus
from maglev.native import check, ffi, lib
from maglev.nic.gen import GenNic
from maglev.nic.pcapfile import PcapReader
from maglev.rings import SLOT_STEERING, Region, worker_slot
from maglev.rings import conntrack_shm as cs
from maglev.testing import unique
from maglev.testing.slots import SlotHolder, serving
from tests.region_helpers import scratch_region
from tests.run_helpers import NO_LOAD_STALL_MS

K0, K1 = 0x0123456789ABCDEF, 0xFEDCBA9876543210
VIPS = [("203.0.113.10", 80, "tcp"), ("2001:db8:100::10", 443, "tcp")]


def test_the_c_table_size_is_the_python_one():
    assert int(lib.MG_STEER_RETA) == RETA_SIZE


def test_apart_keeps_every_worker_off_steerings_cpu_and_the_map_plain():
    """The default placement: no worker shares steering's CPU, so the weights are equal
    whatever steer_cost says (nothing to make up for)."""
    for n, cpus in ((2, [0, 1]), (8, [0, 1]), (4, [0, 1, 2])):
        plan = plan_cpus(n, cpus)
        assert all(plan[f"worker-{i}"] != [cpus[0]] for i in range(n))
        assert worker_weights(plan, n, 0.7) == pytest.approx([1 / n] * n)
        assert dispatch_map(n, plan, 0.7).reta is None


def test_two_cpus_give_the_worker_sharing_steerings_cpu_the_smaller_share():
    plan = plan_cpus(2, [0, 1], "spread")  # steering, muxer, worker-1 on 0; worker-0 on 1
    w = worker_weights(plan, 2, 0.7)
    assert w == pytest.approx([0.85, 0.15])
    m = dispatch_map(2, plan, 0.7)
    assert m.reta is not None and len(m.reta) == RETA_SIZE
    assert m.shares() == pytest.approx([0.85, 0.15], abs=1 / RETA_SIZE)
    # 8 workers: the four on CPU 1 share its 0.85, the four on CPU 0 the 0.15
    w8 = worker_weights(plan_cpus(8, [0, 1], "spread"), 8, 0.7)
    assert w8[0::2] == pytest.approx([0.85 / 4] * 4) and w8[1::2] == pytest.approx([0.15 / 4] * 4)
    assert sum(w8) == pytest.approx(1.0)


@pytest.mark.parametrize(("n", "cpus", "cost"), [
    (1, [0, 1], 0.7),        # one worker
    (2, [0, 1], 0.0),        # weights off
    (2, [0, 1, 2], 0.7),     # steering's CPU runs no worker
    (4, [0], 0.7),           # everything on one CPU
    (3, [0, 1, 2, 3], 0.7),  # every worker alone on its core
])
def test_equal_weights_keep_the_plain_map(n, cpus, cost):
    m = dispatch_map(n, plan_cpus(n, cpus, "spread"), cost)
    assert m.reta is None and m.fp == 0
    assert [m.worker_of(h) for h in (0, 1 << 32, 5 << 32, (1 << 64) - 1)] == \
        [((h >> 32) & 0xFFFFFFFF) % n for h in (0, 1 << 32, 5 << 32, (1 << 64) - 1)]


def test_a_cpu_too_busy_for_a_worker_still_gives_it_one_slot():
    m = dispatch_map(2, plan_cpus(2, [0, 1], "spread"), 5.0)
    assert m.reta is not None and m.reta.count(1) == 1 and m.reta.count(0) == RETA_SIZE - 1


def test_the_table_apportions_every_slot_and_the_fingerprint_names_the_map():
    for weights in ([0.5, 0.25, 0.25], [0.9, 0.1], [1e-6, 1.0, 1.0], [1.0] * 64):
        reta = build_reta(weights)
        assert len(reta) == RETA_SIZE and set(reta) == set(range(len(weights)))
        for i, w in enumerate(weights):
            assert abs(reta.count(i) - w / sum(weights) * RETA_SIZE) <= 2
    a = dispatch_map(2, plan_cpus(2, [0, 1], "spread"), 0.7)
    b = dispatch_map(2, plan_cpus(2, [0, 1], "spread"), 0.5)
    assert a.fp == dispatch_map(2, plan_cpus(2, [0, 1], "spread"), 0.7).fp != 0  # stable for the same map
    assert b.fp not in (0, a.fp)
    assert DispatchMap(3, a.reta, a.weights).fp != a.fp  # the worker count is part of it


@pytest.fixture
def region():
    with scratch_region("test-dispatch", 3, 2048, 512) as r:
        yield r


def test_steering_dispatches_by_the_table_like_its_python_reference(region):
    m = dispatch_map(3, plan_cpus(3, [0, 1], "spread"), 0.7)  # worker-1 shares CPU 0: 0.425 / 0.15 / 0.425
    assert m.reta is not None
    st = ffi.new("struct mg_steer *")
    check(lib.mg_steer_init(st, region.base, SLOT_STEERING, K0, K1), "init")
    bad = ffi.new("uint8_t[]", bytes([3]) * RETA_SIZE)  # worker 3 of 3: refused
    assert lib.mg_steer_set_reta(st, bad, RETA_SIZE) == -22
    assert lib.mg_steer_set_reta(st, bad, 7) == -22
    check(lib.mg_steer_set_reta(st, m.reta, RETA_SIZE), "reta")
    gen = GenNic(VIPS, flows=2000, seed=3)
    check(lib.mg_steer_take(st, region.base, 256), "take")
    cnt = ffi.new("uint32_t *")
    descs = lib.mg_hand_descs(region.base, SLOT_STEERING, cnt)
    k = gen.rx_burst(region.pool_ptr, descs, 256)
    assert lib.mg_steer_dispatch(st, region.base, k, 1) == 0
    seen = [0, 0, 0]
    for i in range(3):
        for d in region.rx(i).snapshot():
            meta = ffi.cast("struct mg_frame_meta *", region.pool_ptr + d * lib.MG_FRAME_SIZE)
            h = int(meta.flow_hash_hi) << 32 | int(meta.flow_hash)
            assert m.worker_of(h) == i
            seen[i] += 1
    assert sum(seen) == k == 256
    assert seen[1] < seen[0] and seen[1] < seen[2]  # the smaller share
    stats = region.stats(SLOT_STEERING).snapshot()
    assert int(stats[lib.MG_SS_FALLBACK]) == 0


def test_every_fragment_of_a_datagram_reaches_one_worker_with_a_weighted_map(corpus_dir):
    m = dispatch_map(4, plan_cpus(4, [0, 1], "spread"), 0.7)
    assert m.reta is not None
    h = ffi.new("uint64_t *")
    fl = ffi.new("uint16_t *")
    by_datagram = defaultdict(set)
    with PcapReader(corpus_dir / "IPv4Frag.pcap") as reader:
        for rec in reader:
            pkt = rec.data
            if pkt[12:14] != b"\x08\x00":
                continue
            assert lib.mg_steer_hash(pkt, len(pkt), K0, K1, 4, h, fl) >= 0
            assert fl[0] & lib.MG_FRAME_F_FRAGMENT
            by_datagram[(pkt[26:34], pkt[18:20])].add(m.worker_of(int(h[0])))
    assert by_datagram and all(len(ws) == 1 for ws in by_datagram.values())


def test_a_run_with_another_map_does_not_adopt_the_tables_and_says_why():
    inst = unique.name("t")
    tag = cs.identity_tag("/nonexistent/state", "/nonexistent/cfg")
    fp = cs.key_fingerprint(K0, K1)
    weighted = dispatch_map(2, plan_cpus(2, [0, 1], "spread"), 0.7)
    try:
        for i in range(2):
            t = cs.open_table(cs.segment_name(inst, tag, i), cs.Wanted(4096, fp, 2, i, weighted.fp))
            assert t is not None and not t.adopted
            lib.mg_ct_free(t.ct)
            t.close()
        for wanted_fp, adopted in ((weighted.fp, True), (0, False)):
            for i in range(2):
                ok, why = cs.preview(cs.segment_name(inst, tag, i), cs.Wanted(4096, fp, 2, i, wanted_fp))
                assert ok is adopted
                assert adopted or "another flow -> worker map" in why
    finally:
        cs.remove_segments(inst)


@pytest.fixture
def small_region():
    with scratch_region("test-dispatch", 2, 1024, 64) as r:
        yield r


def test_with_a_weighted_map_a_full_ring_that_is_consumed_holds_its_flows_back(small_region):
    """The big worker's full ring is normal with a weighted map: its packets wait in the
    hand while the worker keeps consuming, and fall back only once it stopped consuming
    for the stuck time (set here: 10 s, then 0 = any look without progress is stuck)."""
    region = small_region
    st = ffi.new("struct mg_steer *")
    check(lib.mg_steer_init(st, region.base, SLOT_STEERING, K0, K1), "init")
    assert lib.MG_STEER_STUCK_NS == 1_000_000  # 1 ms: a healthy worker's burst is ~50 us
    gen = GenNic(VIPS[:1], flows=1, ipv6=0, seed=3)  # one flow
    cnt = ffi.new("uint32_t *")

    def receive(n: int, fresh: int = 1) -> int:
        check(lib.mg_steer_reclaim(st, region.base), "reclaim")
        got = check(lib.mg_steer_take(st, region.base, n), "take")
        descs = lib.mg_hand_descs(region.base, SLOT_STEERING, cnt)
        return check(lib.mg_steer_dispatch(st, region.base, gen.rx_burst(region.pool_ptr, descs, got), fresh),
                     "dispatch")

    # the flow's slot -> worker 0, one other slot -> worker 1 (a weighted map)
    h, fl = ffi.new("uint64_t *"), ffi.new("uint16_t *")
    probe = gen.rx_burst(region.pool_ptr, ffi.new("uint64_t[]", [0]), 1)
    assert probe == 1
    m = ffi.cast("struct mg_frame_meta *", region.pool_ptr)
    pkt = bytes(ffi.buffer(region.pool_ptr + lib.MG_FRAME_META_SIZE + m.data_off, m.len))
    assert lib.mg_steer_hash(pkt, len(pkt), K0, K1, 2, h, fl) >= 0
    slot = int(h[0]) >> 56
    reta = bytearray(RETA_SIZE)
    reta[(slot + 1) % RETA_SIZE] = 1
    check(lib.mg_steer_set_reta(st, bytes(reta), RETA_SIZE), "reta")
    assert receive(64) == 0 and region.rx(0).count() == 64
    stats = region.stats(SLOT_STEERING)
    out = ffi.new("uint64_t[]", 64)
    assert region.rx(0).dequeue(out, 4) == 4  # the worker takes 4: progress
    # 4 fit; the ring is full again, its worker alive (it consumed since the last look):
    # the other 4 wait in the hand, no fallback although worker 1's ring is empty
    kept = receive(8)
    assert kept == 4 and region.rx(0).count() == 64
    assert stats[lib.MG_SS_FALLBACK] == 0 and region.rx(1).count() == 0
    assert stats[lib.MG_SS_BACKPRESSURE] == 1
    # it moved since the last look: 1 fits, the rest waits (a stuck time no preemption of
    # this test reaches)
    check(lib.mg_steer_set_stuck_ns(st, 10**10), "stuck")
    assert region.rx(0).dequeue(out + 4, 1) == 1
    kept = check(lib.mg_steer_dispatch(st, region.base, kept, 0), "retry")
    assert kept == 3 and stats[lib.MG_SS_FALLBACK] == 0
    # no progress since that look and a stuck time of 0: stuck, the rest falls back
    check(lib.mg_steer_set_stuck_ns(st, 0), "stuck")
    kept = check(lib.mg_steer_dispatch(st, region.base, kept, 0), "retry")
    assert kept == 0 and region.rx(1).count() == 3 and stats[lib.MG_SS_FALLBACK] == 3
    report = region.account(held={"test": [int(d) for d in ffi.unpack(out, 5)]})
    assert report.ok, str(report)


def test_a_run_with_a_weighted_map_gives_the_lone_worker_the_bulk_and_records_the_map():
    """End to end: Pipeline(steer_cost=0.7) on two CPUs hands steering the table and the
    workers its fingerprint; worker 0 (alone on CPU 1) gets most packets, its share of the
    table's slots; the tables the run keeps carry the map, so a run with the plain map
    refuses them and says why.

    The traffic is paced (10 kpps, a 2048-slot ring fills in ~0.24 s): unpaced, the split
    is the two workers' speeds, not the map -- a full ring's packets fall back to the other
    worker after 1 ms (MG_STEER_STUCK_NS), and on a loaded machine worker 0 is not alone on
    its CPU (seen: 8133 against 11867 at load 25)."""
    import os

    from maglev.actors.pipeline import Pipeline, PipelineOptions, parse_cpus
    from maglev.control.endpoints import state_dir
    from maglev.testing.state import private_run_state

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs: with one, every actor shares it and the map is plain")
    with private_run_state("mgt-dispatch-"):
        p = Pipeline(PipelineOptions(workers=2, nic="gen:packets=20000,flows=1000,rate=10000", cpus="0,1",
                                     placement="spread", steer_cost=0.7, stall_ms=NO_LOAD_STALL_MS))
        try:
            m = dispatch_map(2, plan_cpus(2, parse_cpus("0,1"), "spread"), 0.7)
            assert p.dispatch == m and m.fp
            defs = {d.name: d.params for d in p.actor_defs()}
            assert bytes(defs["steering"]["reta"]) == m.reta
            assert defs["worker-0"]["map_fp"] == defs["worker-1"]["map_fp"] == m.fp
            p.start()
            deadline = time.monotonic() + 30
            while not p.eof:
                assert time.monotonic() < deadline, "no eof in time"
                p.poll(0.05)
            p.stop()
            s = p.summary()
        finally:
            p.close()
        assert s["pool"]["ok"], s["pool"]
        assert s["forwarded"] + sum(s["dropped"].values()) == s["packets_in"] == 20000
        got = [int(w["packets_in"]) for w in s["per_worker"]]
        assert sum(got) == 20000 and got[0] > got[1], got
        # 1000 flows over the table's 256 slots: the packets follow the slots' split (the
        # plain map would give ~50%)
        share = m.reta.count(0) / len(m.reta)
        print(f"\nworker packets {got}, share {got[0] / 20000:.3f} (the map: {share:.3f})")
        assert abs(got[0] / 20000 - share) < 0.08, (got, share)
        cfg = p.config
        inst = cfg.instance.name
        tag = cs.identity_tag(str(state_dir(inst)), "")
        fp = cs.key_fingerprint(*cfg.flow_hash_key)
        for i in range(2):
            name = cs.segment_name(inst, tag, i)
            assert cs.preview(name, cs.Wanted(cfg.conntrack.capacity, fp, 2, i, m.fp)) == (True, "")
            ok, why = cs.preview(name, cs.Wanted(cfg.conntrack.capacity, fp, 2, i, 0))
            assert not ok and "another flow -> worker map" in why


def _one_flow_of_worker_0(region: Region) -> GenNic:
    """A generator of one flow whose owner (plain map, 2 workers) is worker 0."""
    h, fl = ffi.new("uint64_t *"), ffi.new("uint16_t *")
    m = ffi.cast("struct mg_frame_meta *", region.pool_ptr)
    for seed in range(1, 64):
        gen = GenNic(VIPS[:1], flows=1, ipv6=0, seed=seed)
        assert gen.rx_burst(region.pool_ptr, ffi.new("uint64_t[]", [0]), 1) == 1
        pkt = bytes(ffi.buffer(region.pool_ptr + lib.MG_FRAME_META_SIZE + m.data_off, m.len))
        if lib.mg_steer_hash(pkt, len(pkt), K0, K1, 2, h, fl) == 0:
            return GenNic(VIPS[:1], flows=1, ipv6=0, seed=seed)
    pytest.fail("no seed gave a flow of worker 0")


def test_a_full_ring_nobody_consumes_drops_its_packets_after_the_stall_time(small_region):
    """Any map: a full rx ring whose worker has had packets waiting without consuming any
    (dead or frozen: here a ring nobody reads) for less than the stall time falls back as
    before; past it (MG_STEER_STALL_NS, 50 ms) its packets are dropped before enqueue and
    counted (MG_SS_OWNER_STALLED), never moved: another worker has no entries for those
    flows.  A worker that consumed since steering's last burst, one whose tx ring is full
    (held back by the muxer), or a stall time of 0 (off), keeps the fallback rule.  Every frame stays accounted for."""
    from maglev.rings.stats import edge_drops, muxer_counters, steering_counters

    region = small_region
    st = ffi.new("struct mg_steer *")
    check(lib.mg_steer_init(st, region.base, SLOT_STEERING, K0, K1), "init")
    assert lib.MG_STEER_STALL_NS == 50_000_000
    stall_s = lib.MG_STEER_STALL_NS / 1e9
    gen = _one_flow_of_worker_0(region)
    cnt = ffi.new("uint32_t *")
    stats = region.stats(SLOT_STEERING)

    def receive(n: int) -> None:
        check(lib.mg_steer_reclaim(st, region.base), "reclaim")
        got = check(lib.mg_steer_take(st, region.base, n), "take")
        assert got == n
        descs = lib.mg_hand_descs(region.base, SLOT_STEERING, cnt)
        filled = gen.rx_burst(region.pool_ptr, descs, got)
        assert filled == n
        # nothing waits in the hand: every packet is placed or dropped
        assert check(lib.mg_steer_dispatch(st, region.base, filled, 1), "dispatch") == 0

    def counts() -> tuple[int, int, int, int]:
        return (region.rx(0).count(), region.rx(1).count(), int(stats[lib.MG_SS_FALLBACK]),
                int(stats[lib.MG_SS_OWNER_STALLED]))

    receive(64)
    assert counts() == (64, 0, 0, 0)  # worker 0's ring is full, nobody consumes it
    # below the stall time (set to 60 s here: no preemption of this test reaches it) the
    # owner may just be slow: fall back
    check(lib.mg_steer_set_stall_ns(st, 60 * 10**9), "stall 60 s")
    receive(8)
    assert counts() == (64, 8, 8, 0)
    check(lib.mg_steer_set_stall_ns(st, lib.MG_STEER_STALL_NS), "stall default")
    time.sleep(stall_s * 1.5)  # packets waiting, none consumed for longer than the stall time
    receive(8)
    assert counts() == (64, 8, 8, 8)  # dropped, counted, not moved
    check(lib.mg_steer_set_stall_ns(st, 0), "stall off")  # off: the fallback rule alone
    receive(8)
    assert counts() == (64, 16, 16, 8)
    check(lib.mg_steer_set_stall_ns(st, lib.MG_STEER_STALL_NS), "stall on")
    out = ffi.new("uint64_t[]", 4)
    assert region.rx(0).dequeue(out, 4) == 4  # the owner consumes: alive, however late
    time.sleep(stall_s * 1.5)
    receive(8)  # 4 fit; the ring moved since the last burst, so the other 4 fall back
    assert counts() == (64, 20, 20, 8)
    time.sleep(stall_s * 1.5)  # and stops again
    receive(8)
    assert counts() == (64, 20, 20, 16)
    # a worker whose tx ring is full is held back by the muxer, not stalled: fallback
    tx = ffi.new("uint64_t[]", region.tx(0).free_count())
    n_tx = region.free.dequeue(tx, len(tx))
    assert n_tx == len(tx) and region.tx(0).enqueue(tx, n_tx) == n_tx and region.tx(0).free_count() == 0
    receive(8)
    assert counts() == (64, 28, 28, 16)
    # the muxer drains the tx ring long before steering's next look (steering did not run
    # meanwhile): the worker's time starts at that look, not at the one that saw the ring
    # full -- it has had no chance to run yet (a muxer kill under load, 2026-12-07)
    assert region.tx(0).dequeue(tx, n_tx) == n_tx and region.free.enqueue(tx, n_tx) == n_tx
    time.sleep(stall_s * 1.5)
    receive(4)  # (4: worker 1's ring keeps half its room, the fallback's condition)
    assert counts() == (64, 32, 32, 16)  # fallback, not dropped
    time.sleep(stall_s * 1.5)  # and now it really does not consume
    receive(4)
    assert counts() == (64, 32, 32, 20)
    assert stats[lib.MG_SS_RX_PACKETS] == 64 + 6 * 8 + 2 * 4
    assert stats[lib.MG_SS_DISPATCHED] == 64 + 32 + 4
    st_c = steering_counters(stats.snapshot())
    mx_c = muxer_counters(region.stats(int(lib.MG_SLOT_MUXER)).snapshot())
    assert st_c["owner_stalled"] == 20 and edge_drops(st_c, mx_c) == ({"owner_stalled": 20}, 0)
    report = region.account(held={"test": [int(d) for d in ffi.unpack(out, 4)]})
    assert report.ok, str(report)


def test_a_dead_workers_full_ring_drops_at_once_whatever_the_stall_time():
    """A worker slot whose holder died holding its life lock (the kernel marked the robust
    mutex owner-dead at the exit, mg_shm.h) is dead, and steering drops what its full
    ring cannot hold at once -- below the stall time, and with the stall rule off --
    instead of moving it to the other worker; once a replacement has claimed the slot the
    paper's fallback applies again.  Here the "worker" is a thread that holds slot 0 and
    exits without giving it back, as a killed process does."""
    from maglev.rings.stats import steering_counters

    with scratch_region("test-dispatch", 2, 1024, 64) as region:
        w0 = worker_slot(0)
        assert lib.mg_slot_dead(region.base, w0) == 0  # never taken (in-process tests): alive
        holder = SlotHolder(region.base, [w0])
        assert lib.mg_slot_dead(region.base, w0) == 0
        st = ffi.new("struct mg_steer *")
        check(lib.mg_steer_init(st, region.base, SLOT_STEERING, K0, K1), "init")
        check(lib.mg_steer_set_stall_ns(st, 0), "stall rule off: only the slot says dead")
        gen = _one_flow_of_worker_0(region)
        cnt = ffi.new("uint32_t *")
        stats = region.stats(SLOT_STEERING)

        def receive(n: int) -> tuple[int, int, int, int]:
            check(lib.mg_steer_reclaim(st, region.base), "reclaim")
            assert check(lib.mg_steer_take(st, region.base, n), "take") == n
            descs = lib.mg_hand_descs(region.base, SLOT_STEERING, cnt)
            assert gen.rx_burst(region.pool_ptr, descs, n) == n
            assert check(lib.mg_steer_dispatch(st, region.base, n, 1), "dispatch") == 0
            return (region.rx(0).count(), region.rx(1).count(), int(stats[lib.MG_SS_FALLBACK]),
                    int(stats[lib.MG_SS_OWNER_STALLED]))

        assert receive(64) == (64, 0, 0, 0)  # full, its worker alive (holds the lock)
        assert receive(8) == (64, 8, 8, 0)   # alive and full: the fallback, as before
        holder.die()                         # the thread ends holding the lock: "killed"
        assert lib.mg_slot_dead(region.base, w0) == 1
        assert receive(8) == (64, 8, 8, 8)   # dropped at once, counted, not moved
        assert receive(8) == (64, 8, 8, 16)
        out = ffi.new("uint64_t[]", 64)
        with serving(region, [w0]):          # the replacement claims the dead one's lock
            assert lib.mg_slot_dead(region.base, w0) == 0
            assert receive(8) == (64, 16, 16, 16)  # alive again: fallback
            assert region.rx(0).dequeue(out, 64) == 64  # and it drains its ring
            assert receive(8)[0] == 8
        st_c = steering_counters(stats.snapshot())
        assert st_c["owner_stalled"] == 16
        assert stats[lib.MG_SS_RX_PACKETS] == 64 + 5 * 8
        report = region.account(held={"test": [int(d) for d in ffi.unpack(out, 64)]})
        assert report.ok, str(report)


def test_an_idle_worker_whose_ring_one_burst_fills_is_not_stalled(small_region):
    """The stall time counts only while packets wait: a worker that had nothing to do for
    longer than it, then gets more than its ring holds in one burst, is not dropped from --
    the overflow falls back (its ring was empty when the burst began)."""
    region = small_region
    st = ffi.new("struct mg_steer *")
    check(lib.mg_steer_init(st, region.base, SLOT_STEERING, K0, K1), "init")
    gen = _one_flow_of_worker_0(region)
    cnt = ffi.new("uint32_t *")
    stats = region.stats(SLOT_STEERING)

    def receive(n: int) -> int:
        check(lib.mg_steer_reclaim(st, region.base), "reclaim")
        got = check(lib.mg_steer_take(st, region.base, n), "take")
        descs = lib.mg_hand_descs(region.base, SLOT_STEERING, cnt)
        return check(lib.mg_steer_dispatch(st, region.base, gen.rx_burst(region.pool_ptr, descs, got), 1),
                     "dispatch")

    assert receive(1) == 0 and region.rx(0).count() == 1
    out = ffi.new("uint64_t[]", 1)
    assert region.rx(0).dequeue(out, 1) == 1  # consumed: the ring is empty, nothing waits
    time.sleep(lib.MG_STEER_STALL_NS / 1e9 * 1.5)
    assert receive(64 + 8) == 0  # 64 fill the ring, 8 fall back: none dropped
    assert region.rx(0).count() == 64 and region.rx(1).count() == 8
    assert stats[lib.MG_SS_FALLBACK] == 8 and stats[lib.MG_SS_OWNER_STALLED] == 0
    time.sleep(lib.MG_STEER_STALL_NS / 1e9 * 1.5)  # now 64 wait, none consumed: stalled
    assert receive(8) == 0
    assert stats[lib.MG_SS_OWNER_STALLED] == 8 and region.rx(1).count() == 8
    report = region.account(held={"test": [int(out[0])]})
    assert report.ok, str(report)


# ----------------------------------------------------------------------------- which packets may fall back

def _to_worker0(make, n_workers: int = 2) -> bytes:
    """The first packet ``make(sport)`` gives that steering sends to worker 0."""
    h, fl = ffi.new("uint64_t *"), ffi.new("uint16_t *")
    for sport in range(40000, 41000):
        pkt = make(sport)
        if lib.mg_steer_hash(pkt, len(pkt), K0, K1, n_workers, h, fl) == 0:
            return pkt
    raise AssertionError("no source port of 1000 hashes to worker 0")


def _packets() -> dict[str, bytes]:
    from maglev.testing import packets as P

    c4, c6, v4, v6 = "198.51.100.7", "2001:db8:c::7", "203.0.113.10", "2001:db8:100::10"

    def seg4(flags: int):
        return lambda sp: P.eth(P.ipv4(c4, v4, P.TCP, P.tcp(sp, 80, src=c4, dst=v4, flags=flags)))

    def seg6(flags: int):
        return lambda sp: P.eth(P.ipv6(c6, v6, P.TCP, P.tcp(sp, 443, src=c6, dst=v6, flags=flags)))

    return {
        "syn4": _to_worker0(seg4(0x02)),
        "syn6": _to_worker0(seg6(0x02)),
        "ack4": _to_worker0(seg4(0x10)),
        "data6": _to_worker0(seg6(0x18)),
        "synack4": _to_worker0(seg4(0x12)),
        "fin4": _to_worker0(seg4(0x11)),
        "udp4": _to_worker0(lambda sp: P.eth(P.ipv4(c4, v4, P.UDP, P.udp(sp, 53, b"q", src=c4, dst=v4)))),
        "junk": b"\x00" * 60,  # no flow: the parser rejects it (spread round-robin)
    }


@pytest.mark.parametrize(("mode", "moved"), [
    ("MG_STEER_FB_ANY", {"syn4", "syn6", "ack4", "data6", "synack4", "fin4", "udp4"}),
    ("MG_STEER_FB_NEW_FLOWS", {"syn4", "syn6"}),
    ("MG_STEER_FB_NEVER", set()),
])
def test_only_the_packets_the_fallback_policy_allows_leave_their_full_ring(small_region, mode, moved):
    """Worker 0's ring is full and nobody consumes it (the stall rule off, so no packet is
    dropped for that).  A packet whose flow may have an entry in worker 0's connection
    table must not go to worker 1, which would pick the backend by the *current* Maglev
    table (after a backend change: another backend, a TCP reset).  With NEW_FLOWS only a
    TCP SYN (no worker has an entry for it yet) falls back; every other packet of a flow
    waits in the hand, in order, and reaches worker 0 once it consumes.  Before
    2026-12-07 (session 9) every packet fell back (the ANY row: the paper's rule, still
    the C default)."""
    region = small_region
    st = ffi.new("struct mg_steer *")
    check(lib.mg_steer_init(st, region.base, SLOT_STEERING, K0, K1), "init")
    check(lib.mg_steer_set_stall_ns(st, 0), "stall rule off")
    check(lib.mg_steer_set_fallback(st, getattr(lib, mode)), "fallback")
    assert lib.mg_steer_set_fallback(st, 3) == -22
    pkts = _packets()
    cnt = ffi.new("uint32_t *")
    pool = region.pool_ptr

    def receive(frames: list[bytes], fresh: int = 1) -> int:
        got = check(lib.mg_steer_take(st, region.base, len(frames)), "take")
        assert got == len(frames)
        descs = lib.mg_hand_descs(region.base, SLOT_STEERING, cnt)
        for i, pkt in enumerate(frames):
            idx = int(descs[i]) & 0xFFFFFFFF
            meta = ffi.cast("struct mg_frame_meta *", pool + idx * lib.MG_FRAME_SIZE)
            meta.data_off, meta.len, meta.wire_len, meta.flags = lib.MG_FRAME_HEADROOM, len(pkt), len(pkt), 0
            ffi.memmove(pool + idx * lib.MG_FRAME_SIZE + lib.MG_FRAME_META_SIZE + lib.MG_FRAME_HEADROOM, pkt, len(pkt))
        return check(lib.mg_steer_dispatch(st, region.base, len(frames), fresh), "dispatch")

    def frame(desc: int) -> bytes:
        at = pool + (int(desc) & 0xFFFFFFFF) * lib.MG_FRAME_SIZE
        meta = ffi.cast("struct mg_frame_meta *", at)
        return bytes(ffi.buffer(at + lib.MG_FRAME_META_SIZE + meta.data_off, meta.len))

    ring = 64  # small_region's ring size
    assert receive([pkts["ack4"]] * ring) == 0 and region.rx(0).count() == ring  # worker 0's ring: full
    names = [n for n in pkts if n != "junk"] + ["junk"]
    kept = receive([pkts[n] for n in names])
    stats = region.stats(SLOT_STEERING)
    flows = [n for n in names if n != "junk"]
    assert kept == len(flows) - len(moved)
    # what moved went to worker 1, counted -- the junk frame too (round-robin picked worker
    # 0 for it, whose ring is full; it belongs to no flow, a worker counts its drop)
    on1 = region.rx(1).snapshot()
    assert len(on1) == len(moved) + 1 and stats[lib.MG_SS_FALLBACK] == len(moved) + 1
    assert [n for d in on1 for n in names if pkts[n] == frame(d)] == [n for n in names if n in moved or n == "junk"]
    assert stats[lib.MG_SS_BACKPRESSURE] == (1 if kept else 0)
    # worker 0 consumes everything: what waited follows its ring's packets, in order
    out = ffi.new("uint64_t[]", ring)
    assert region.rx(0).dequeue(out, ring) == ring
    assert check(lib.mg_steer_dispatch(st, region.base, kept, 0), "retry") == 0
    assert [n for d in region.rx(0).snapshot() for n in flows if pkts[n] == frame(d)] == \
        [n for n in flows if n not in moved]
    report = region.account(held={"test": [int(d) for d in ffi.unpack(out, ring)]})
    assert report.ok, str(report)
