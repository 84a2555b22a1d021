"""VIP matching across clusters (paper 4.2, tables format 5): a packet to another
cluster's VIP (its prefix + the service's suffix) is served as this cluster's VIP with the
same suffix, directly or GRE-encapsulated from that cluster's forwarders; a local VIP with
no healthy backend sends its packets in GRE to the first backup cluster's forwarders (and
a packet that came from a peer cluster is never sent on again).  C kernel == Python
reference, byte for byte, on fixed cases and on mutated streams."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maglev.datapath import DataPath, build_tables
from maglev.datapath.engine import DROP_NAMES, Packet
from maglev.datapath.tables import read_tables
from maglev.native import ffi, lib

from . import test_differential as td
from .cluster_helpers import (
    A_DOWN,
    A_DOWN_SET,
    A_SRC4,
    A_SRC6,
    A_WEB,
    A_WEB6,
    B_DOWN,
    B_FWD,
    B_FWD6,
    B_NONE,
    B_WEB,
    B_WEB6,
    C_FWD,
    C_WEB,
    OUTSIDE,
    a_config,
    b_config,
    gre_from,
    outer_gre,
    tcp4,
    tcp6,
)

BLOB = build_tables(a_config(), A_DOWN_SET)
VIEW = read_tables(BLOB)


def vip_index(addr: str, port: int) -> int:
    return next(i for i, v in enumerate(VIEW.vips) if v.address == addr and v.port == port)


def run_both(blob: bytes, frames: list[bytes]) -> list:
    """The outputs of both engines (asserted equal)."""
    outs = {}
    for e in ("c", "python"):
        dp = DataPath(blob, engine=e)
        outs[e] = [(o.action, o.verdict, o.data, o.vip_index, o.backend_index)
                   for o in dp.process([Packet(i, f) for i, f in enumerate(frames)], 10**9)]
    assert outs["c"] == outs["python"]
    return outs["c"]


def drop_name(o) -> str:
    return DROP_NAMES[o[1]] if o[0] == "drop" else o[0]


def test_tables_carry_the_clusters_and_both_validators_accept_them():
    h = VIEW.header
    assert h["version"] == 5 and h["n_clusters"] == 3 and h["n_fwd"] == 4
    assert lib.mg_tables_validate(BLOB, len(BLOB)) == 0
    own, b, c = VIEW.clusters
    assert (own.len4, own.len6, own.n_fwd, own.backup_rank) == (26, 64, 0, 0)
    assert (b.backup_rank, c.backup_rank, h["backup_cluster"]) == (1, 2, 1)
    assert [VIEW.forwarders[i][1] for i in range(4)] == [4, 4, 6, 4]


def test_cluster_map_c_equals_reference():
    import ipaddress

    for addr in (B_WEB, B_NONE, C_WEB, A_WEB, OUTSIDE, "203.0.113.127", "203.0.113.64", B_WEB6,
                 "2001:db8:b::ffff:1", "2001:db8:c::10", A_WEB6):
        ip = ipaddress.ip_address(addr)
        a16 = ip.packed.ljust(16, b"\0")
        out = ffi.new("uint8_t[16]")
        c = lib.mg_tables_cluster_match(BLOB, a16, ip.version, out)
        peer, local = VIEW.cluster_map(a16, ip.version)
        assert c == peer
        if peer:
            assert bytes(out) == local
    assert VIEW.cluster_map(ipaddress.ip_address(B_WEB).packed + bytes(12), 4)[1][:4] == \
        ipaddress.ip_address(A_WEB).packed
    assert VIEW.cluster_map(ipaddress.ip_address(B_WEB6).packed, 6)[1] == ipaddress.ip_address(A_WEB6).packed


def test_a_peer_clusters_address_is_served_as_the_local_service():
    outs = run_both(BLOB, [tcp4(B_WEB), tcp4(C_WEB), tcp6(B_WEB6), tcp4(B_NONE), tcp4(B_WEB, dport=81)])
    web, web6 = vip_index(A_WEB, 80), vip_index(A_WEB6, 443)
    assert [(drop_name(o), o[3]) for o in outs[:3]] == [("tx", web), ("tx", web), ("tx", web6)]
    assert [drop_name(o) for o in outs[3:]] == ["no_vip", "no_vip"]  # no service with that suffix/port
    src, dst, inner = outer_gre(outs[0][2])
    assert src == A_SRC4 and dst in ("198.18.1.1", "198.18.1.2")
    assert inner == tcp4(B_WEB)[14:]  # the packet as the client sent it (to b's address)


def test_gre_from_a_peer_forwarder_is_decapsulated_and_served():
    frames = [gre_from(B_FWD[1], A_SRC4, tcp4(B_WEB)), gre_from(B_FWD[0], A_SRC4, tcp4(A_WEB)),
              gre_from("198.51.100.99", A_SRC4, tcp4(B_WEB)),  # not a forwarder: an ordinary packet
              gre_from(B_FWD[0], A_SRC4, tcp4(B_WEB), flags=0x2000),  # keyed GRE: not ours
              gre_from(B_FWD[0], A_SRC4, gre_from(B_FWD[0], A_SRC4, tcp4(B_WEB)))]  # GRE in GRE
    outs = run_both(BLOB, frames)
    assert [drop_name(o) for o in outs] == ["tx", "tx", "no_vip", "bad_cluster_gre", "bad_cluster_gre"]
    assert outs[0][3] == outs[1][3] == vip_index(A_WEB, 80)
    assert outer_gre(outs[0][2])[2] == tcp4(B_WEB)[14:]


def test_no_healthy_backend_goes_to_the_first_backup_clusters_forwarders():
    frames = [tcp4(A_DOWN, sport=40000 + i) for i in range(40)]
    outs = run_both(BLOB, frames)
    assert all(o[0] == "tx" and o[3] == vip_index(A_DOWN, 80) and o[4] == -1 for o in outs)
    dsts = set()
    for o, f in zip(outs, frames, strict=True):
        src, dst, inner = outer_gre(o[2])
        assert src == (A_SRC4 if "." in dst else A_SRC6) and inner == f[14:]
        dsts.add(dst)
    assert dsts == {*B_FWD, B_FWD6}  # b's IPv4 and IPv6 forwarders, chosen by flow hash; never c's
    # ... unless there is no backup order: dropped as before
    plain = build_tables(a_config("[]"), A_DOWN_SET)
    assert [drop_name(o) for o in run_both(plain, frames[:3])] == ["no_backend"] * 3
    # a packet that came from a peer cluster is never sent on (no loops, at most one hop)
    back = run_both(BLOB, [gre_from(B_FWD[0], A_SRC4, tcp4(B_DOWN))])
    assert [drop_name(o) for o in back] == ["no_backend"]


def test_backup_traffic_is_served_by_the_backup_cluster():
    """Cluster a's backup output, given to cluster b's engine (b's instance is the
    forwarder 198.18.9.1), reaches b's backend for the same suffix: a's 203.0.113.20 is
    b's 203.0.113.84.  The other forwarders' share is not this instance's (no_vip here)."""
    frames = [tcp4(A_DOWN, sport=40000 + i) for i in range(30)]
    out_a = run_both(BLOB, frames)
    to_b0 = [(o, f) for o, f in zip(out_a, frames, strict=True) if outer_gre(o[2])[1] == B_FWD[0]]
    assert to_b0
    got = run_both(build_tables(b_config()), [o[2] for o, _ in to_b0])
    for g, (_o, f) in zip(got, to_b0, strict=True):
        assert g[0] == "tx", DROP_NAMES[g[1]]
        bsrc, bdst, inner = outer_gre(g[2])
        assert (bsrc, bdst) == (B_FWD[0], "198.18.7.1") and inner == f[14:]
    other = [o[2] for o in out_a if outer_gre(o[2])[1] == B_FWD[1]]
    assert [drop_name(g) for g in run_both(build_tables(b_config()), other)] == ["no_vip"] * len(other)


def _seeds() -> list[bytes]:
    s = [tcp4(B_WEB), tcp4(C_WEB), tcp6(B_WEB6), tcp4(B_NONE), tcp4(A_DOWN), tcp4(A_WEB), tcp4(OUTSIDE)]
    s += [gre_from(B_FWD[0], A_SRC4, tcp4(B_WEB)), gre_from(B_FWD[1], A_SRC4, tcp4(B_DOWN)),
          gre_from(C_FWD, A_SRC4, tcp4(A_DOWN)), gre_from(B_FWD[0], A_SRC4, tcp6(B_WEB6)),
          gre_from("198.51.100.99", A_SRC4, tcp4(B_WEB)), gre_from(B_FWD[0], A_SRC4, tcp4(B_WEB), flags=0x2000)]
    s.append(tcp4(A_DOWN, payload=bytes(1460)))  # too big once in GRE: ICMP to the client
    return s


SEEDS = _seeds()
cluster_mutation = st.tuples(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)),
                                                            max_size=3), st.integers(0, 30), st.booleans())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.one_of(cluster_mutation, st.tuples(st.sampled_from(SEEDS), st.just([]), st.just(0),
                                                                st.just(False))), min_size=1, max_size=12),
                min_size=1, max_size=4),
       st.lists(st.integers(0, 3_000_000_000), min_size=4, max_size=4))
def test_engines_agree_with_clusters(bursts, gaps):
    sc, sp = td._run_stream_on_both(BLOB, bursts, gaps)
    for k in ("packets_in", "forwarded", "icmp_sent", "drops", "conntrack", "vips", "backends", "bytes_out",
              "cluster_in", "cluster_matched", "backup_out"):
        assert sc[k] == sp[k], k
    assert sc["forwarded"] + sum(sc["drops"].values()) == sc["packets_in"]


def test_whereis_says_which_rule_matched_and_where_backup_traffic_goes():
    from maglev.observability.whereis import cluster_names, parse_flow, whereis_blob, whereis_config

    c = a_config()
    r = whereis_config(c, parse_flow("198.51.100.1:1234", f"{B_WEB}:80/tcp"))
    assert r["rule"].startswith(f"VIP matching (paper 4.2): {B_WEB} is cluster b's address")
    assert r["vip"] == f"{A_WEB}:80/tcp" and r["backend"] in ("198.18.1.1", "198.18.1.2")
    r6 = whereis_config(c, parse_flow("[2001:db8:c::1]:1234", f"[{B_WEB6}]:443/tcp"))
    assert r6["vip"] == f"[{A_WEB6}]:443/tcp" and "cluster b's address" in r6["rule"]
    assert whereis_config(c, parse_flow("198.51.100.1:1", f"{A_WEB}:80/tcp"))["rule"].startswith("VIP (exact")
    none = whereis_config(c, parse_flow("198.51.100.1:1", f"{B_NONE}:80/tcp"))
    assert "vip" not in none and "203.0.113.11 has no VIP" in none["rule"]
    # backup: the forwarder whereis names is the one the kernel sends to
    blob = build_tables(c, A_DOWN_SET)
    for sport in range(1000, 1010):
        r = whereis_blob(blob, parse_flow(f"198.51.100.1:{sport}", f"{A_DOWN}:80/tcp"), cluster_names=cluster_names(c))
        assert r["backup_cluster"] == "b" and r["verdict"] == "forward"
        out = DataPath(blob, engine="c").process([Packet(0, tcp4(A_DOWN, sport=sport, src="198.51.100.1",
                                                                   payload=b""))], 10**9)
        assert outer_gre(out[0].data)[1] == r["backup_forwarder"]


def test_cluster_counters_in_both_engines():
    frames = [tcp4(B_WEB), tcp4(C_WEB), gre_from(B_FWD[0], A_SRC4, tcp4(B_WEB)), gre_from(B_FWD[0], A_SRC4, tcp4(A_WEB)),
              tcp4(A_DOWN), tcp4(A_DOWN, sport=1), tcp4(B_NONE), gre_from(B_FWD[1], A_SRC4, tcp4(B_DOWN))]
    for e in ("c", "python"):
        dp = DataPath(BLOB, engine=e)
        dp.process([Packet(i, f) for i, f in enumerate(frames)], 10**9)
        s = dp.stats()
        assert (s["cluster_matched"], s["cluster_in"], s["backup_out"]) == (4, 3, 2), (e, s)
