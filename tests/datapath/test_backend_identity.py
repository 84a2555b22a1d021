"""Connection-table entries follow their backend by identity across table rebuilds.

Removing or adding a backend shifts the indices of the backend array, so an entry's stored
index is only a hint; the stored 64-bit backend id finds the backend again through the
blob's id map (mg_tables.h).  Table driven: establish a few hundred flows on one set of
tables, swap to a changed set, and check every flow's backend by address -- flows whose
backend is still present and healthy keep it (including a drained, weight-0 one), flows
whose backend was removed or went down get the new tables' Maglev choice and are counted
as re-selected.  Each case runs through the C engine and the Python reference, and the two
must produce identical output bytes.
"""

from __future__ import annotations

import pytest

from maglev import config as cfg
from maglev.datapath import DataPath, build_tables
from maglev.datapath.engine import Packet
from maglev.datapath.tables import backend_id, read_tables
from maglev.native import ffi, lib
from maglev.testing import packets as P

from .test_dp import maglev_backend

CLIENT = "198.51.100.9"
VIP = "203.0.113.50"
OTHER_VIP = "203.0.113.51"
VKEY = f"{VIP}:80/tcp"
NOW = 7_000_000_000
N_FLOWS = 300
BASE = [("198.18.7.1", 1), ("198.18.7.2", 1), ("198.18.7.3", 1), ("198.18.7.4", 1), ("198.18.7.5", 1)]


def conf(backends: list[tuple[str, int]], other_vip_first: bool = False) -> cfg.Config:
    """A config with VIP on port 80 and the given (address, weight) backends; optionally
    another VIP before it (so removing that VIP shifts VIP and backend indices)."""
    text = '[instance]\nsource_ipv4 = "198.18.0.1"\n'
    if other_vip_first:
        text += (f'[[vip]]\naddress = "{OTHER_VIP}"\nport = 80\nprotocol = "tcp"\ntable_size = 251\n'
                 '[[vip.backend]]\naddress = "198.18.8.1"\n[[vip.backend]]\naddress = "198.18.8.2"\n')
    text += f'[[vip]]\naddress = "{VIP}"\nport = 80\nprotocol = "tcp"\ntable_size = 1009\n'
    for addr, weight in backends:
        text += f'[[vip.backend]]\naddress = "{addr}"\nweight = {weight}\n'
    return cfg.loads(text)


def flow(sport: int, flags: int = 0x10) -> bytes:
    return P.eth(P.ipv4(CLIENT, VIP, P.TCP, P.tcp(sport, 80, b"", src=CLIENT, dst=VIP, flags=flags)))


def addr_of(blob: bytes, index: int) -> str:
    return read_tables(blob).backends[index].address


without = lambda name: [b for b in BASE if b[0] != name]  # noqa: E731

# description, tables before, tables after (config, down), backends whose flows must move
CASES = [
    ("remove a middle backend", (conf(BASE), frozenset()), (conf(without("198.18.7.3")), frozenset()),
     {"198.18.7.3"}),
    ("remove the first backend (every index shifts)", (conf(BASE), frozenset()),
     (conf(without("198.18.7.1")), frozenset()), {"198.18.7.1"}),
    ("add a backend in front (every index shifts)", (conf(BASE), frozenset()),
     (conf([("198.18.7.9", 1), *BASE]), frozenset()), set()),
    ("add a backend at the end", (conf(BASE), frozenset()), (conf([*BASE, ("198.18.7.9", 1)]), frozenset()),
     set()),
    ("a backend goes down", (conf(BASE), frozenset()), (conf(BASE), frozenset({(VKEY, "198.18.7.2")})),
     {"198.18.7.2"}),
    ("a backend is drained (weight 0): established flows stay", (conf(BASE), frozenset()),
     (conf([(a, 0 if a == "198.18.7.4" else w) for a, w in BASE]), frozenset()), set()),
    ("drained backend plus another removed", (conf(BASE), frozenset()),
     (conf([(a, 0 if a == "198.18.7.4" else w) for a, w in BASE if a != "198.18.7.1"]), frozenset()),
     {"198.18.7.1"}),
    ("the VIP before this one is removed (VIP and backend indices shift)",
     (conf(BASE, other_vip_first=True), frozenset()), (conf(BASE), frozenset()), set()),
    ("a removed backend comes back (same identity)", (conf(without("198.18.7.5")), frozenset()),
     (conf(BASE), frozenset()), set()),
]


@pytest.mark.parametrize(("desc", "before", "after", "moved"), CASES, ids=[c[0] for c in CASES])
def test_flows_follow_their_backend_across_a_rebuild(desc, before, after, moved):
    blob1, blob2 = build_tables(*before), build_tables(*after)
    pkts = [flow(20000 + i, flags=0x02) for i in range(N_FLOWS)]
    results = {}
    for engine in ("c", "python"):
        dp = DataPath(blob1, engine=engine, ct_capacity=4096)
        first = sorted(dp.process([Packet(i, p) for i, p in enumerate(pkts)], NOW), key=lambda o: o.seq)
        assert all(o.reason == "forward" for o in first)
        dp.set_tables(blob2)
        later = [flow(20000 + i) for i in range(N_FLOWS)]
        again = sorted(dp.process([Packet(i, p) for i, p in enumerate(later)], NOW + 10**9),
                       key=lambda o: o.seq)
        n_moved = 0
        for o1, o2, pkt in zip(first, again, later, strict=True):
            assert o2.reason == "forward"
            was, now = addr_of(blob1, o1.backend_index), addr_of(blob2, o2.backend_index)
            if was in moved:
                n_moved += 1
                assert now == maglev_backend(blob2, pkt)[1], f"{desc}: a moved flow takes the Maglev choice"
            else:
                assert now == was, f"{desc}: flow {o1.seq} left its backend {was} for {now}"
        assert dp.stats()["conntrack"]["reselected"] == n_moved
        if moved:
            assert n_moved > 0, "the case must exercise moved flows"
        # a third packet goes straight to the followed index (the entry was updated)
        third = dp.process([Packet(0, later[0])], NOW + 2 * 10**9)[0]
        assert third.backend_index == again[0].backend_index
        results[engine] = [(o.seq, o.verdict, o.backend_index, o.data) for o in first + again + [third]]
    assert results["c"] == results["python"]


def test_drained_backend_keeps_flows_but_gets_no_new_ones():
    blob1 = build_tables(conf(BASE))
    blob2 = build_tables(conf([(a, 0 if a == "198.18.7.4" else w) for a, w in BASE]))
    for engine in ("c", "python"):
        dp = DataPath(blob1, engine=engine, ct_capacity=4096)
        old = dp.process([Packet(i, flow(20000 + i, 0x02)) for i in range(N_FLOWS)], NOW)
        on_drained = {o.seq for o in old if addr_of(blob1, o.backend_index) == "198.18.7.4"}
        assert on_drained
        dp.set_tables(blob2)
        new = dp.process([Packet(i, flow(30000 + i, 0x02)) for i in range(N_FLOWS)], NOW + 10**9)
        assert all(addr_of(blob2, o.backend_index) != "198.18.7.4" for o in new)
        kept = dp.process([Packet(i, flow(20000 + i)) for i in sorted(on_drained)], NOW + 10**9)
        assert {addr_of(blob2, o.backend_index) for o in kept} == {"198.18.7.4"}


def test_id_map_lookup_agrees_in_c_and_python():
    blob = build_tables(conf(BASE, other_vip_first=True), frozenset({(VKEY, "198.18.7.2")}))
    view = read_tables(blob)
    buf = ffi.new("uint64_t[]", (len(blob) + 7) // 8)
    ffi.memmove(buf, blob, len(blob))
    for i, be in enumerate(view.backends):
        assert be.id == backend_id(f"{VIP if be.vip_index else OTHER_VIP}:80/tcp", be.address)
        assert view.find_backend(be.id, be.vip_index) == i == lib.mg_tables_backend_by_id(buf, be.id, be.vip_index)
        assert lib.mg_tables_backend_by_id(buf, be.id, -1) == i
        other = 1 - be.vip_index  # the right id in the wrong VIP is not found
        assert view.find_backend(be.id, other) == -1 == lib.mg_tables_backend_by_id(buf, be.id, other)
    gone = backend_id(VKEY, "198.18.7.99")
    assert view.find_backend(gone, 1) == -1 == lib.mg_tables_backend_by_id(buf, gone, 1)


def test_per_backend_and_per_vip_counters_follow_identity_across_generations():
    """Counters are indexed like the tables in use but carried to each backend's / VIP's new
    index when a rebuild renumbers them; a removed backend's count is dropped."""
    before = conf(BASE, other_vip_first=True)
    after = conf([("198.18.7.9", 1), *without("198.18.7.3")])  # other VIP gone, .3 gone, .9 new
    blob1, blob2 = build_tables(before), build_tables(after)
    results = {}
    for engine in ("c", "python"):
        dp = DataPath(blob1, engine=engine, ct_capacity=4096)
        dp.process([Packet(i, flow(20000 + i, 0x02)) for i in range(N_FLOWS)], NOW)
        s1 = dp.stats()
        by_addr1 = {addr_of(blob1, i): c for i, c in s1["backends"].items()}
        assert sum(c[0] for c in by_addr1.values()) == N_FLOWS
        dp.set_tables(blob2)
        # both engines switch at the next burst; until then the counters keep the old indices
        assert dp.stats()["backends"] == s1["backends"]
        # one packet to no VIP (counts nothing) makes the switch
        stray = P.eth(P.ipv4(CLIENT, "203.0.113.99", P.TCP, P.tcp(1, 80, b"", src=CLIENT, dst="203.0.113.99")))
        assert dp.process([Packet(0, stray)], NOW)[0].reason == "no_vip"
        s_swap = dp.stats()
        by_addr_swap = {addr_of(blob2, i): c for i, c in s_swap["backends"].items()}
        assert by_addr_swap == {a: c for a, c in by_addr1.items() if a != "198.18.7.3"}
        assert s_swap["vips"] == {0: s1["vips"][1]}  # the VIP moved from index 1 to 0
        dp.process([Packet(i, flow(20000 + i)) for i in range(N_FLOWS)], NOW + 10**9)
        s2 = dp.stats()
        by_addr2 = {addr_of(blob2, i): c[0] for i, c in s2["backends"].items()}
        for addr, (packets, _bytes) in by_addr_swap.items():
            assert by_addr2[addr] >= packets + 1  # kept its count and its flows
        assert sum(by_addr2.values()) == 2 * N_FLOWS - by_addr1["198.18.7.3"][0]
        assert s2["vips"][0][0] == 2 * N_FLOWS
        results[engine] = (s_swap["backends"], s2["backends"], s2["vips"])
    assert results["c"] == results["python"]
