"""VIP priority under overload (mg_shed.h): steering's drop decision in C equals the
Python reference (maglev.datapath.ref_shed) -- the marks, the VIP a packet is counted
under, exemptions (fragments, ICMP, unparsable frames) and the verdict for every ring
fill -- and mg_steer_dispatch really sheds that way over a real region."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maglev.config import loads
from maglev.datapath import build_tables
from maglev.datapath.ref_shed import EXEMPT, NEVER, Shed, marks
from maglev.native import check, ffi, lib
from maglev.rings import SLOT_STEERING, Region
from maglev.testing import packets as P
from maglev.testing import unique

HI4, LO4, LO6, ANY = "203.0.113.10", "203.0.113.11", "2001:db8:100::11", "203.0.113.12"


def conf(prios: tuple[int, int, int, int]) -> str:
    out = '[instance]\nsource_ipv4 = "198.18.0.1"\nsource_ipv6 = "2001:db8:ff::1"\n'
    for (addr, port, proto), pr in zip(
        [(HI4, 80, "tcp"), (LO4, 80, "tcp"), (LO6, 53, "udp"), (ANY, 0, "udp")], prios, strict=True
    ):
        out += (f'[[vip]]\naddress = "{addr}"\nport = {port}\nprotocol = "{proto}"\npriority = {pr}\n'
                f'[[vip.backend]]\naddress = "198.18.1.1"\n')
    return out


def c_shed(blob: bytes, ring: int, hw: int):
    sh = ffi.new("struct mg_shed *")
    buf = ffi.new("uint8_t[]", blob)
    assert lib.mg_shed_load(sh, buf, len(blob), ring, hw) == 0
    return sh, buf


def c_packet(sh, pkt: bytes, used: int) -> tuple[bool, int]:
    vip = ffi.new("int32_t *")
    return bool(lib.mg_shed_packet(sh, pkt, len(pkt), used, vip)), int(vip[0])


def pkt_for(kind: int, dst_choice: int, dport: int, sport: int) -> bytes:
    dst4 = [HI4, LO4, ANY, "203.0.113.99"][dst_choice % 4]
    if kind == 0:
        return P.eth(P.ipv4("198.19.0.1", dst4, P.TCP, P.tcp(sport, dport, src="198.19.0.1", dst=dst4)))
    if kind == 1:
        return P.eth(P.ipv4("198.19.0.1", dst4, P.UDP, P.udp(sport, dport, src="198.19.0.1", dst=dst4)))
    if kind == 2:
        dst6 = [LO6, "2001:db8:100::99"][dst_choice % 2]
        return P.eth(P.ipv6("2001:db8:c1::1", dst6, P.UDP, P.udp(sport, dport, src="2001:db8:c1::1", dst=dst6)))
    if kind == 3:  # a first fragment: exempt
        seg = P.tcp(sport, dport, b"x" * 40, src="198.19.0.1", dst=dst4)
        return P.eth(P.ipv4("198.19.0.1", dst4, P.TCP, seg[:24], df=False, mf=True))
    if kind == 4:  # ICMP to a VIP address: exempt
        return P.eth(P.ipv4("198.19.0.1", dst4, P.ICMP, P.icmp4(8, 0)))
    return bytes([dport & 0xFF]) * (sport % 60)  # garbage: exempt


def test_marks_are_spread_between_the_high_water_mark_and_full():
    assert marks(1024, 50, [0, 7]) == [512, 585, 658, 731, 804, 877, 950, NEVER]
    assert marks(1024, 50, [2, 5]) == [512, 614, 716, 819, 921, NEVER, NEVER, NEVER]
    assert marks(1024, 50, [3, 3, 3]) == [NEVER] * 8  # one priority: never shed
    assert marks(1024, 50, []) == [NEVER] * 8


@pytest.mark.parametrize("prios,ring,hw", [((7, 0, 3, 1), 1024, 50), ((2, 2, 2, 2), 256, 50),
                                           ((1, 0, 0, 1), 64, 90), ((0, 7, 7, 5), 4096, 1)])
def test_c_marks_equal_the_reference(prios, ring, hw):
    blob = build_tables(loads(conf(prios)))
    sh, _buf = c_shed(blob, ring, hw)
    ref = Shed.load(blob, ring, hw)
    assert list(sh.mark) == ref.mark
    assert bool(sh.on) == ref.on == (len(set(prios)) > 1)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prios=st.tuples(*[st.integers(0, 7)] * 4), ring=st.sampled_from([64, 256, 1024]),
       hw=st.integers(1, 100),
       pkts=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7), st.sampled_from([53, 80, 81, 443]),
                               st.integers(1, 65535), st.integers(0, 1100)), min_size=1, max_size=20))
def test_decision_c_equals_reference(prios, ring, hw, pkts):
    blob = build_tables(loads(conf(prios)))
    sh, _buf = c_shed(blob, ring, hw)
    ref = Shed.load(blob, ring, hw)
    for kind, dst, dport, sport, used in pkts:
        pkt = pkt_for(kind, dst, dport, sport)
        used = used % (ring + 1)
        assert c_packet(sh, pkt, used) == ref.packet(pkt, used), (kind, dst, dport, used)


def test_classification_names_the_vip_and_exempts_what_it_cannot_judge():
    blob = build_tables(loads(conf((7, 0, 3, 1))))
    ref = Shed.load(blob, 1024)
    sh, _buf = c_shed(blob, 1024, 50)
    cases = [(pkt_for(0, 0, 80, 1000), 0), (pkt_for(0, 1, 80, 1000), 1), (pkt_for(2, 0, 53, 5), 2),
             (pkt_for(1, 2, 9999, 5), 3),  # the port-0 VIP
             (pkt_for(0, 3, 80, 1), -1), (pkt_for(0, 1, 81, 1), -1),  # no VIP: priority 0
             (pkt_for(3, 0, 80, 1), EXEMPT), (pkt_for(4, 1, 0, 0), EXEMPT), (b"\x01" * 30, EXEMPT)]
    for pkt, want in cases:
        assert ref.classify(pkt)[0] == want
        assert c_packet(sh, pkt, 0)[1] == want
    # A full ring: everything but the top priority and the exempt packets is shed.
    for pkt, want in cases:
        assert c_packet(sh, pkt, 1024)[0] == (want not in (0, EXEMPT))


def test_a_bad_blob_turns_shedding_off():
    blob = bytearray(build_tables(loads(conf((7, 0, 0, 0)))))
    blob[0] ^= 1
    sh = ffi.new("struct mg_shed *")
    assert lib.mg_shed_load(sh, ffi.from_buffer(blob), len(blob), 1024, 50) < 0
    assert not sh.on and list(sh.mark) == [NEVER] * 8
    assert lib.mg_shed_load(sh, ffi.from_buffer(blob), len(blob), 1024, 0) < 0


# ------------------------------------------------------------------ through the glue


@pytest.fixture
def region():
    r = Region.create(unique.name("test-shed-"), 1, 2048, 64, 1 << 20)
    try:
        yield r
    finally:
        r.close()
        r.unlink()


def _fill_and_dispatch(r: Region, st, pkts: list[bytes]) -> int:
    check(lib.mg_steer_reclaim(st, r.base), "reclaim")
    n = check(lib.mg_steer_take(st, r.base, len(pkts)), "take")
    assert n == len(pkts)
    cnt = ffi.new("uint32_t *")
    descs = lib.mg_hand_descs(r.base, SLOT_STEERING, cnt)
    for j, pkt in enumerate(pkts):
        idx = int(descs[j]) & 0xFFFFFFFF
        m = ffi.cast("struct mg_frame_meta *", r.pool_ptr + idx * lib.MG_FRAME_SIZE)
        m.data_off = 0
        m.len = len(pkt)
        ffi.memmove(r.pool_ptr + idx * lib.MG_FRAME_SIZE + lib.MG_FRAME_META_SIZE, pkt, len(pkt))
    return check(lib.mg_steer_dispatch(st, r.base, len(pkts), 1), "dispatch")


def test_dispatch_sheds_low_priority_packets_above_the_mark_like_the_reference(region):
    blob = build_tables(loads(conf((7, 0, 3, 1))))
    st = ffi.new("struct mg_steer *")
    check(lib.mg_steer_init(st, region.base, SLOT_STEERING, 1, 2), "init")
    sh, _buf = c_shed(blob, region.ring_size, 50)
    check(lib.mg_steer_set_shed(st, sh), "set shed")
    ref = Shed.load(blob, region.ring_size)
    hi, lo, mid = pkt_for(0, 0, 80, 7), pkt_for(0, 1, 80, 7), pkt_for(2, 0, 53, 7)
    size = region.ring_size  # 64: priority 0 is shed from 32 packets on, 3 from 45
    placed = []
    room = [size]
    for burst in ([hi] * 20 + [lo] * 20, [mid] * 20, [lo, mid, hi] * 8):
        before = region.rx(0).count()
        kept = _fill_and_dispatch(region, st, burst)
        assert kept == 0 or region.rx(0).count() == size
        want = ref.dispatch(burst, [0] * len(burst), room, size)
        placed.append(region.rx(0).count() - before)
        assert placed[-1] == sum(1 for w in want if w >= 0) - kept
    stats = region.stats(SLOT_STEERING).snapshot()
    assert int(stats[lib.MG_SS_SHED]) == sum(ref.drops.values()) > 0
    assert int(stats[lib.MG_SS_RX_PACKETS]) == 40 + 20 + 24
    # 20 top + 12 priority-0 up to the mark (32); priority 3 up to 45; then only the top.
    assert placed == [32, 13, 8]
    assert int(stats[lib.MG_SS_DISPATCHED]) == 53
    assert {i: int(sh.drops[i]) for i in range(4) if sh.drops[i]} == ref.drops
    assert ref.drops.get(0, 0) == 0  # the top priority is never shed


def test_a_peer_clusters_address_has_the_local_services_priority():
    """VIP matching (paper 4.2): steering classifies a packet to cluster b's address like
    the data path serves it, as the local VIP with the same suffix."""
    from .cluster_helpers import A_DOWN, A_WEB, B_DOWN, B_NONE, B_WEB, a_toml, tcp4

    text = a_toml().replace(f'address = "{A_WEB}"\nport = 80\n', f'address = "{A_WEB}"\nport = 80\npriority = 6\n')
    text = text.replace(f'address = "{A_DOWN}"\nport = 80\n', f'address = "{A_DOWN}"\nport = 80\npriority = 2\n')
    blob = build_tables(loads(text))
    sh, _buf = c_shed(blob, 1024, 50)
    ref = Shed.load(blob, 1024)
    view = ref.view
    idx = {v.address: i for i, v in enumerate(view.vips)}
    for pkt, want in ((tcp4(B_WEB), idx[A_WEB]), (tcp4(B_DOWN), idx[A_DOWN]), (tcp4(B_NONE), -1)):
        assert ref.classify(pkt)[0] == want == c_packet(sh, pkt, 0)[1]
        for used in (0, 600, 900, 1024):
            assert c_packet(sh, pkt, used) == ref.packet(pkt, used)
