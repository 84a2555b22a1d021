"""The C glue of steering, worker and muxer, driven in one process over a real region:
hashing, placement, fallback, back pressure, order within a flow, crash recovery."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from maglev.native import check, ffi, lib
from maglev.nic.gen import GenNic
from maglev.nic.pcapfile import PcapReader
from maglev.rings import SLOT_MUXER, SLOT_STEERING, Region, worker_slot
from tests.region_helpers import scratch_region

K0, K1 = 0x0123456789ABCDEF, 0xFEDCBA9876543210
VIPS = [("203.0.113.10", 80, "tcp"), ("2001:db8:100::10", 443, "tcp")]


@pytest.fixture
def region():
    with scratch_region("test-glue", 2, 1024, 64) as r:
        yield r


def steer(r: Region):
    st = ffi.new("struct mg_steer *")
    check(lib.mg_steer_init(st, r.base, SLOT_STEERING, K0, K1), "init")
    # the workers here run only between steering's calls (frozen by design): stall rule off
    check(lib.mg_steer_set_stall_ns(st, 0), "stall off")
    return st


def receive(r: Region, st, gen: GenNic, n: int) -> int:
    """One steering turn: reclaim, take n frames, fill, dispatch; returns frames kept."""
    check(lib.mg_steer_reclaim(st, r.base), "reclaim")
    got = check(lib.mg_steer_take(st, r.base, n), "take")
    cnt = ffi.new("uint32_t *")
    descs = lib.mg_hand_descs(r.base, SLOT_STEERING, cnt)
    k = gen.rx_burst(r.pool_ptr, descs, got)
    return check(lib.mg_steer_dispatch(st, r.base, k, 1), "dispatch")


def meta(r: Region, idx: int):
    return ffi.cast("struct mg_frame_meta *", r.pool_ptr + idx * lib.MG_FRAME_SIZE)


def packet(r: Region, idx: int) -> bytes:
    m = meta(r, idx)
    off = idx * lib.MG_FRAME_SIZE + lib.MG_FRAME_META_SIZE + m.data_off
    return bytes(ffi.buffer(r.pool_ptr + off, m.len))


def steer_hash(pkt: bytes, n: int) -> tuple[int, int, int]:
    h = ffi.new("uint64_t *")
    fl = ffi.new("uint16_t *")
    w = lib.mg_steer_hash(pkt, len(pkt), K0, K1, n, h, fl)
    return w, int(h[0]), int(fl[0])


def test_worker_is_chosen_from_the_high_hash_bits_and_flow_hash_keeps_the_low(region):
    st = steer(region)
    gen = GenNic(VIPS, flows=100, seed=2)
    assert receive(region, st, gen, 32) == 0
    for i in range(2):
        for d in region.rx(i).snapshot():
            w, h, fl = steer_hash(packet(region, d), 2)
            assert w == i == (h >> 32) % 2
            assert meta(region, d).flow_hash == h & 0xFFFFFFFF
            assert fl == 0


def test_every_fragment_of_a_datagram_reaches_one_worker(corpus_dir):
    by_datagram = defaultdict(set)
    with PcapReader(corpus_dir / "IPv4Frag.pcap") as reader:
        for rec in reader:
            pkt = rec.data
            if pkt[12:14] != b"\x08\x00":
                continue
            w, _, fl = steer_hash(pkt, 8)
            assert fl & lib.MG_FRAME_F_FRAGMENT
            by_datagram[(pkt[26:34], pkt[18:20])].add(w)
    assert by_datagram
    assert all(len(ws) == 1 for ws in by_datagram.values())


def test_unparsable_packets_are_spread_and_counted(region):
    assert steer_hash(b"\x00" * 10, 2)[0] == -1
    st = steer(region)
    check(lib.mg_steer_take(st, region.base, 4), "take")
    cnt = ffi.new("uint32_t *")
    descs = lib.mg_hand_descs(region.base, SLOT_STEERING, cnt)
    for j in range(4):
        m = meta(region, int(descs[j]))
        m.data_off, m.len = lib.MG_FRAME_HEADROOM, 20  # 20 zero bytes: not IP
    assert lib.mg_steer_dispatch(st, region.base, 4, 1) == 0
    assert region.rx(0).count() == region.rx(1).count() == 2
    assert region.stats(SLOT_STEERING)[lib.MG_SS_UNPARSED] == 4


def test_full_ring_falls_back_then_holds_and_loses_nothing(region):
    st = steer(region)
    gen = GenNic(VIPS[:1], flows=1, ipv6=0, seed=3)  # one flow: one worker
    kept = receive(region, st, gen, 64)
    assert kept == 0
    full = 0 if region.rx(0).count() == 64 else 1
    other = 1 - full
    assert region.rx(full).count() == 64
    stats = region.stats(SLOT_STEERING)
    # The other ring is empty: packets fall back to it while it stays at least half free
    # (room 64 -> 31 after 33 packets), counted; the rest stay in the hand.
    kept = receive(region, st, gen, 40)
    assert region.rx(other).count() == 33
    assert stats[lib.MG_SS_FALLBACK] == 33
    assert kept == 7
    assert stats[lib.MG_SS_BACKPRESSURE] == 1
    # While the hand holds packets steering takes no new frames.
    assert lib.mg_steer_take(st, region.base, 8) < 0
    # Draining the full ring lets a retry place them on their own worker.
    out = ffi.new("uint64_t[]", 64)
    assert region.rx(full).dequeue(out, 64) == 64
    assert check(lib.mg_steer_dispatch(st, region.base, kept, 0), "retry") == 0
    assert region.rx(full).count() == 7
    assert stats[lib.MG_SS_RX_PACKETS] == 64 + 40  # the retry is not counted twice
    report = region.account(held={"test": [int(d) for d in ffi.unpack(out, 64)]})
    assert report.ok, str(report)


def test_order_within_a_flow_is_kept_without_fallback(region):
    st = steer(region)
    gen = GenNic(VIPS, flows=20, seed=4)
    seqs = defaultdict(list)
    out = ffi.new("uint64_t[]", 64)
    for _ in range(20):
        assert receive(region, st, gen, 24) == 0
        for i in range(2):
            n = region.rx(i).dequeue(out, 64)
            for d in ffi.unpack(out, n):
                _, h, _ = steer_hash(packet(region, d), 2)
                seqs[h].append(int(meta(region, d).seq))
                region.ret(i).enqueue(ffi.new("uint64_t[]", [d]), 1)
    assert region.stats(SLOT_STEERING)[lib.MG_SS_FALLBACK] == 0
    assert len(seqs) > 10
    assert all(s == sorted(s) for s in seqs.values())


def test_replacement_worker_finishes_counted_frames_and_drops_the_rest(region):
    from maglev.config import load_config
    from maglev.datapath.tables import build_tables

    region.tables.publish(build_tables(load_config("")), [], 1.0)
    st = steer(region)
    gen = GenNic(VIPS[:1], flows=1, ipv6=0, seed=5)
    receive(region, st, gen, 12)
    w = 0 if region.rx(0).count() else 1
    # A worker that died holding 12 frames: 3 forwarded and 2 dropped and counted (its
    # stats commit marks each frame's acct), 2 judged "forward" but not counted yet (it
    # died between its data path and its commit), 1 held fragment, 4 never judged.
    slot = worker_slot(w)
    rx_id = region.rx(w).id
    assert lib.mg_hand_pull(region.base, slot, rx_id, 12) == 12
    held = region.hand(slot).descs()
    for d in held[:3]:
        meta(region, d).verdict = lib.MG_VERDICT_FORWARD
        meta(region, d).acct = lib.MG_ACCT_COUNTED | lib.MG_VERDICT_FORWARD
    for d in held[3:5]:
        meta(region, d).verdict = 8  # a drop reason (no_vip)
        meta(region, d).acct = lib.MG_ACCT_COUNTED | 8
    for d in held[5:7]:
        meta(region, d).verdict = lib.MG_VERDICT_FORWARD  # acct still 0: not counted
    meta(region, held[7]).verdict = lib.MG_VERDICT_HELD
    meta(region, held[7]).acct = lib.MG_ACCT_COUNTED | lib.MG_VERDICT_HELD
    stats = region.stats(slot)
    stats[lib.MG_WS_PACKETS_IN] = 6  # what the dead worker had counted
    for _ in range(2):  # recovery is idempotent: a second replacement changes nothing
        worker = ffi.gc(lib.mg_worker_new(region.base, w, 1024, K0, K1, 64, time.monotonic_ns()),
                        lib.mg_worker_free)
        assert lib.mg_worker_recover(worker, region.base) in (12, 0)
        assert region.tx(w).snapshot() == held[:3]
        assert region.ret(w).snapshot() == held[3:]
        assert stats[lib.MG_WS_RESTART_DROPS] == 7
        assert stats[lib.MG_WS_PACKETS_IN] == 12  # + the 6 it had not counted
        assert region.hand(slot).count() == 0
    # The muxer takes the forwarded ones; the NIC refuses one (a forwarded packet).
    mux = ffi.new("struct mg_mux *")
    check(lib.mg_mux_init(mux, region.base, SLOT_MUXER), "mux init")
    assert lib.mg_mux_collect(mux, region.base, 64) == 3
    assert lib.mg_mux_done(mux, region.base, 2, 1) == 0
    s = region.stats(SLOT_MUXER)
    assert (s[lib.MG_MS_TX_PACKETS], s[lib.MG_MS_TX_ERRORS], s[lib.MG_MS_TX_ERRORS_FWD]) == (2, 1, 1)
    assert region.account().ok


def _hand(r: Region, slot: int) -> list[int]:
    return r.hand(slot).descs()


@pytest.mark.parametrize("when", ["taking", "marked", "counted_backpressure", "reclaiming"])
def test_replacement_steering_counts_the_packets_a_dead_one_held(region, when):
    """The batch state tells a replacement which frames in a dead steering's hand were
    received packets and whether they were counted; each is counted exactly once."""
    st = steer(region)
    gen = GenNic(VIPS, flows=50, seed=3)
    s = region.stats(SLOT_STEERING)
    cnt = ffi.new("uint32_t *")
    if when == "taking":  # died inside take (or before the NIC ran): frames, no packets
        assert lib.mg_steer_take(st, region.base, 16) == 16
        s[lib.MG_SS_BATCH] = lib.MG_SS_B_TAKING
        for d in _hand(region, SLOT_STEERING):
            meta(region, d).len = 60  # stale lengths of earlier packets: not packets now
        rx, lost = 0, 0
    elif when == "marked":  # the NIC filled 5 of 16, then the process died
        assert lib.mg_steer_take(st, region.base, 16) == 16
        assert gen.rx_burst(region.pool_ptr, lib.mg_hand_descs(region.base, SLOT_STEERING, cnt), 5) == 5
        rx, lost = 5, 5
    else:  # received and counted 64, placed what fit (rings of 64), kept the rest
        while True:
            kept = receive(region, st, gen, 64)
            if kept:
                break
        rx, lost = int(s[lib.MG_SS_RX_PACKETS]), kept
    if when == "reclaiming":
        # A worker returns 20 frames (with their packets' lengths) and steering dies with
        # them pulled into its hand behind the kept packets, before pushing them to free.
        w_slot = worker_slot(0)
        assert lib.mg_hand_pull(region.base, w_slot, region.rx(0).id, 20) == 20
        dest = ffi.new("uint16_t[]", [region.ret(0).id] * 20)
        assert lib.mg_hand_push(region.base, w_slot, dest, 20) == 20
        s[lib.MG_SS_HELD] = kept
        s[lib.MG_SS_BATCH] = lib.MG_SS_B_RECLAIMING
        assert lib.mg_hand_pull(region.base, SLOT_STEERING, region.ret(0).id, 20) == 20
        assert all(meta(region, d).len != lib.MG_FRAME_LEN_EMPTY for d in _hand(region, SLOT_STEERING))
    before_rx = int(s[lib.MG_SS_RX_PACKETS]) if when in ("counted_backpressure", "reclaiming") else 0
    on_rings = sum(region.rx(i).count() for i in range(2)) + (20 if when == "reclaiming" else 0)
    for _ in range(2):  # idempotent
        st2 = steer(region)
        region.hand(SLOT_STEERING).recover()
        assert lib.mg_steer_recover(st2, region.base) >= 0
        assert s[lib.MG_SS_RX_PACKETS] == (before_rx if before_rx else rx)
        assert s[lib.MG_SS_LOST] == lost
        assert _hand(region, SLOT_STEERING) == []
    # Every received packet is on an rx ring or counted lost.
    assert s[lib.MG_SS_RX_PACKETS] == on_rings + s[lib.MG_SS_LOST]
    assert region.account().ok


# --------------------------------------------------------------- spare frames (h-nic)
# A DF-clear packet too big for the MTU once encapsulated is split; its second piece is
# written into a spare frame (steering -> worker spare ring).  Spares are marked
# MG_ACCT_PIECE, so with exact accounting a piece is never counted as a packet: not by a
# replacement worker, not by the muxer (tx_error, muxer_restart), not by a replacement
# steering killed while topping the spare rings up.

def _big(n: int) -> list[bytes]:
    from maglev.testing import packets as P

    client, vip = "198.51.100.9", "203.0.113.20"  # sample config: UDP VIP, IPIP (+20 B)
    body = bytes(1500 - 20 - 8)
    return [P.eth(P.ipv4(client, vip, P.UDP, P.udp(1000 + i, 53, body, src=client, dst=vip), df=False))
            for i in range(n)]


def _receive_packets(r: Region, st, pkts: list[bytes]) -> None:
    """One steering turn with a NIC that fills the taken frames with ``pkts``."""
    assert check(lib.mg_steer_take(st, r.base, len(pkts)), "take") == len(pkts)
    for d, pkt in zip(_hand(r, SLOT_STEERING), pkts, strict=True):
        m = meta(r, d)
        m.data_off = lib.MG_FRAME_HEADROOM
        m.len = m.wire_len = len(pkt)
        ffi.memmove(r.pool_ptr + d * lib.MG_FRAME_SIZE + lib.MG_FRAME_META_SIZE + lib.MG_FRAME_HEADROOM,
                    pkt, len(pkt))
    assert check(lib.mg_steer_dispatch(st, r.base, len(pkts), 1), "dispatch") == 0


def _publish(r: Region) -> None:
    from maglev.config import load_config
    from maglev.datapath.tables import build_tables

    r.tables.publish(build_tables(load_config("")), [], 1.0)


def test_spares_are_marked_pieces_and_the_muxer_counts_packets_not_pieces(region):
    _publish(region)
    st = steer(region)
    assert check(lib.mg_steer_spares(st, region.base, 16), "spares") == 32
    for i in range(2):
        assert region.spare(i).count() == 16
        assert all(meta(region, d).acct == lib.MG_ACCT_PIECE for d in region.spare(i).snapshot())
    _receive_packets(region, st, _big(8))
    mux = ffi.new("struct mg_mux *")
    check(lib.mg_mux_init(mux, region.base, SLOT_MUXER), "mux init")
    fwd = 0
    for w in range(2):
        k = region.rx(w).count()
        if not k:
            continue
        worker = ffi.gc(lib.mg_worker_new(region.base, w, 1024, K0, K1, 64, time.monotonic_ns()),
                        lib.mg_worker_free)
        assert lib.mg_worker_burst(worker, region.base, time.monotonic_ns()) == k
        s = region.stats(worker_slot(w))
        assert (s[lib.MG_WS_FORWARDED], s[lib.MG_WS_SPARES_USED]) == (k, k)  # one spare per packet
        out = region.tx(w).snapshot()
        assert len(out) == 2 * k  # every packet in two pieces
        pieces = [d for d in out if meta(region, d).acct & lib.MG_ACCT_PIECE]
        assert len(pieces) == k
        assert all(meta(region, d).acct == lib.MG_ACCT_COUNTED | lib.MG_ACCT_PIECE | lib.MG_VERDICT_FORWARD
                   for d in pieces)
        fwd += k
    assert fwd == 8
    # The NIC refuses every frame: 16 tx errors, but 8 forwarded packets lost, not 16.
    assert lib.mg_mux_collect(mux, region.base, 64) == 16
    assert lib.mg_mux_done(mux, region.base, 0, 16) == 0
    m = region.stats(SLOT_MUXER)
    assert (m[lib.MG_MS_TX_ERRORS], m[lib.MG_MS_TX_ERRORS_FWD]) == (16, 8)
    assert region.account().ok


def test_replacement_worker_never_counts_a_used_spare_as_a_packet(region):
    _publish(region)
    st = steer(region)
    check(lib.mg_steer_spares(st, region.base, 16), "spares")
    _receive_packets(region, st, _big(4))
    w = 0 if region.rx(0).count() else 1
    n = region.rx(w).count()
    slot = worker_slot(w)
    # A worker that died after its data path split n packets and it pulled the n used
    # spares into its hand, before its stats commit: nothing of the burst is counted.
    assert lib.mg_hand_pull(region.base, slot, region.rx(w).id, n) == n
    assert lib.mg_hand_pull(region.base, slot, region.spare(w).id, n) == n
    held = region.hand(slot).descs()
    for d in held:
        meta(region, d).verdict = lib.MG_VERDICT_FORWARD
    stats = region.stats(slot)
    for _ in range(2):  # idempotent
        worker = ffi.gc(lib.mg_worker_new(region.base, w, 1024, K0, K1, 64, time.monotonic_ns()),
                        lib.mg_worker_free)
        assert lib.mg_worker_recover(worker, region.base) in (2 * n, 0)
        assert stats[lib.MG_WS_RESTART_DROPS] == n  # the packets, not their pieces
        assert stats[lib.MG_WS_PACKETS_IN] == n
        assert region.tx(w).count() == 0  # an uncounted piece is never sent
        assert region.ret(w).snapshot() == held
    # The same after the commit: a counted piece finishes its way (tx) like its packet,
    # and a muxer that dies holding both counts one forwarded packet lost.
    _receive_packets(region, st, _big(4))
    w2 = 0 if region.rx(0).count() else 1
    n2 = region.rx(w2).count()
    slot2 = worker_slot(w2)
    assert lib.mg_hand_pull(region.base, slot2, region.rx(w2).id, n2) == n2
    assert lib.mg_hand_pull(region.base, slot2, region.spare(w2).id, n2) == n2
    held2 = region.hand(slot2).descs()
    for d in held2:
        m = meta(region, d)
        m.verdict = lib.MG_VERDICT_FORWARD
        m.acct = lib.MG_ACCT_COUNTED | (m.acct & lib.MG_ACCT_PIECE) | lib.MG_VERDICT_FORWARD
    before = int(region.stats(slot2)[lib.MG_WS_RESTART_DROPS])
    worker = ffi.gc(lib.mg_worker_new(region.base, w2, 1024, K0, K1, 64, time.monotonic_ns()),
                    lib.mg_worker_free)
    assert lib.mg_worker_recover(worker, region.base) == 2 * n2
    assert region.stats(slot2)[lib.MG_WS_RESTART_DROPS] == before
    assert region.tx(w2).snapshot() == held2
    mux = ffi.new("struct mg_mux *")
    check(lib.mg_mux_init(mux, region.base, SLOT_MUXER), "mux init")
    assert lib.mg_mux_collect(mux, region.base, 64) == 2 * n2  # ... and the muxer dies here
    for _ in range(2):  # idempotent
        mux2 = ffi.new("struct mg_mux *")
        check(lib.mg_mux_init(mux2, region.base, SLOT_MUXER), "mux init")
        region.hand(SLOT_MUXER).recover()
        assert lib.mg_mux_recover(mux2, region.base) in (2 * n2, 0)
        assert region.stats(SLOT_MUXER)[lib.MG_MS_LOST_FWD] == n2
    assert region.account().ok


def test_spare_topup_behind_held_packets_and_a_steering_killed_inside_it(region):
    """mg_steer_spares moves free frames (with stale lengths) through the hand behind the
    packets back pressure left there: the RECLAIMING state makes a replacement count only
    those packets."""
    st = steer(region)
    gen = GenNic(VIPS, flows=50, seed=3)
    s = region.stats(SLOT_STEERING)
    while True:  # rings of 64: received and counted, what does not fit stays in the hand
        kept = receive(region, st, gen, 64)
        if kept:
            break
    assert s[lib.MG_SS_BATCH] == lib.MG_SS_B_COUNTED
    held = _hand(region, SLOT_STEERING)
    assert check(lib.mg_steer_spares(st, region.base, 8), "spares") == 16
    assert _hand(region, SLOT_STEERING) == held  # the packets stay, in order
    assert s[lib.MG_SS_BATCH] == lib.MG_SS_B_COUNTED  # restored
    assert region.spare(0).count() == region.spare(1).count() == 8
    assert region.account().ok
    # Killed inside the next top-up, after pulling free frames behind the packets (the
    # state mg_steer_spares writes before it pulls).
    out = ffi.new("uint64_t[]", 8)
    assert region.spare(0).dequeue(out, 8) == 8  # a worker used them; they came home
    region.free.enqueue(out, 8)
    s[lib.MG_SS_HELD] = kept
    s[lib.MG_SS_BATCH] = lib.MG_SS_B_RECLAIMING
    assert lib.mg_hand_pull(region.base, SLOT_STEERING, region.free.id, 8) == 8
    for d in _hand(region, SLOT_STEERING)[kept:]:
        meta(region, d).len = 60  # stale lengths of earlier packets: not packets now
    rx = int(s[lib.MG_SS_RX_PACKETS])
    on_rings = sum(region.rx(i).count() for i in range(2))
    for _ in range(2):  # idempotent
        st2 = steer(region)
        region.hand(SLOT_STEERING).recover()
        assert lib.mg_steer_recover(st2, region.base) >= 0
        assert s[lib.MG_SS_RX_PACKETS] == rx
        assert s[lib.MG_SS_LOST] == kept
    assert s[lib.MG_SS_RX_PACKETS] == on_rings + s[lib.MG_SS_LOST]
    assert region.account().ok


def test_steering_loop_takes_just_sent_frames_first_and_a_kill_inside_loses_none(region):
    """mg_steer_take_hot: the frames on the sent ring (just transmitted) go to the NIC
    before any free-list frame; mg_steer_reclaim_ret leaves sent alone; a steering
    killed after pulling them (TAKING) gives every one back to the free list."""
    st = steer(region)
    gen = GenNic(VIPS, flows=50, seed=4)
    assert receive(region, st, gen, 32) == 0
    workers = [ffi.gc(lib.mg_worker_new(region.base, w, 1024, K0, K1, 64, time.monotonic_ns()),
                      lib.mg_worker_free) for w in range(2)]
    _publish(region)
    for w in workers:
        check(lib.mg_worker_burst(w, region.base, time.monotonic_ns()), "worker burst")
    mux = ffi.new("struct mg_mux *")
    check(lib.mg_mux_init(mux, region.base, SLOT_MUXER), "mux init")
    n = check(lib.mg_mux_collect(mux, region.base, 256), "collect")
    assert check(lib.mg_mux_done(mux, region.base, n, 0), "done") == 0
    sent = region.sent.snapshot()
    assert len(sent) == n > 0
    assert check(lib.mg_steer_reclaim_ret(st, region.base), "reclaim ret") >= 0
    assert region.sent.snapshot() == sent  # left for the take
    s = region.stats(SLOT_STEERING)
    reclaimed = int(s[lib.MG_SS_RECLAIMED])
    assert check(lib.mg_steer_take_hot(st, region.base, n + 8), "take hot") == n + 8
    hand = _hand(region, SLOT_STEERING)
    assert hand[:n] == sent and not set(hand[n:]) & set(sent)  # sent first, then free
    assert region.sent.count() == 0 and int(s[lib.MG_SS_RECLAIMED]) == reclaimed + n
    assert all(meta(region, d).len == lib.MG_FRAME_LEN_EMPTY for d in hand)
    # Killed here (MARKED, nothing filled) or right after the pull (TAKING): no packet
    # is counted, every frame goes home.
    s[lib.MG_SS_BATCH] = lib.MG_SS_B_TAKING
    st2 = steer(region)
    region.hand(SLOT_STEERING).recover()
    assert lib.mg_steer_recover(st2, region.base) == n + 8
    assert _hand(region, SLOT_STEERING) == [] and int(s[lib.MG_SS_LOST]) == 0
    assert region.account().ok
