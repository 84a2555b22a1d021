"""Per-VIP hashing options (tables format 4, docs/datapath.md "Per-VIP hashing"): hash on
the source address only, on the destination port only, UDP without the source port, and no
connection table -- the C kernel and the Python reference agree byte for byte, and each
option changes exactly the inputs it says it does."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maglev import config as cfg
from maglev.datapath import DataPath, build_tables
from maglev.datapath.engine import Packet
from maglev.datapath.tables import (
    VIP,
    VIP_F_HASH_DST_PORT,
    VIP_F_HASH_SRC_IP,
    VIP_F_NO_CONNTRACK,
    VIP_F_UDP_NO_SPORT,
    read_tables,
    select_key,
)
from maglev.errors import PacketError
from maglev.native import ffi, lib
from maglev.testing import packets as P

from . import test_differential as td
from .dp_helpers import (
    CLIENT4,
    CLIENT6,
    CONFIG_TOML,
    DOWN,
    VIP4,
    VIP4_ANY,
    VIP4_NOFRAG,
    VIP6,
    c_validate,
)

# VIP4 tcp:80 sticky (src_ip); VIP4_ANY udp (every port) without source port and without
# conntrack; VIP4_NOFRAG udp:53 on the destination port; VIP6 tcp:443 sticky.
OPTIONS = {
    (VIP4, "tcp"): {"hash": "src_ip"},
    (VIP4_ANY, "udp"): {"udp_ignore_src_port": True, "conntrack": False},
    (VIP4_NOFRAG, "udp"): {"hash": "dst_port"},
    (VIP6, "tcp"): {"hash": "src_ip"},
}


def hashing_config() -> cfg.Config:
    """dp_helpers' config with the options above, through the validating parser."""
    d = cfg.loads(CONFIG_TOML).to_dict()
    for v in d["vip"]:
        v.update(OPTIONS.get((v["address"], v["protocol"]), {}))
    return cfg.Config.from_dict(d)


CONF = hashing_config()
BLOB = build_tables(CONF, DOWN)
VIEW = read_tables(BLOB)


def vip_index(addr: str, proto: str) -> int:
    return next(i for i, v in enumerate(CONF.vips) if v.address == addr and v.protocol == proto)


def tcp4(src: str, sport: int, dst: str, dport: int, flags: int = 0x02) -> bytes:
    return P.eth(P.ipv4(src, dst, P.TCP, P.tcp(sport, dport, b"", src=src, dst=dst, flags=flags)))


def udp4(src: str, sport: int, dst: str, dport: int) -> bytes:
    return P.eth(P.ipv4(src, dst, P.UDP, P.udp(sport, dport, b"q" * 8, src=src, dst=dst)))


def tcp6(src: str, sport: int, dst: str, dport: int) -> bytes:
    return P.eth(P.ipv6(src, dst, P.TCP, P.tcp(sport, dport, b"", src=src, dst=dst, flags=0x02)))


def backends(blob: bytes, pkts: list[bytes], engine: str = "c") -> list[int]:
    dp = DataPath(blob, engine=engine)
    outs = dp.process([Packet(i, p) for i, p in enumerate(pkts)], 10**9)
    return [o.backend_index for o in sorted(outs, key=lambda o: o.seq)]


def test_flags_are_in_the_blob():
    flags = {(v.address, v.proto): v.flags for v in VIEW.vips}
    assert flags[(VIP4, 6)] & VIP_F_HASH_SRC_IP
    assert flags[(VIP4_ANY, 17)] & (VIP_F_UDP_NO_SPORT | VIP_F_NO_CONNTRACK) == VIP_F_UDP_NO_SPORT | VIP_F_NO_CONNTRACK
    assert flags[(VIP4_NOFRAG, 17)] & VIP_F_HASH_DST_PORT
    assert flags[(VIP4_ANY, 6)] & (VIP_F_HASH_SRC_IP | VIP_F_HASH_DST_PORT | VIP_F_NO_CONNTRACK) == 0


@pytest.mark.parametrize("engine", ["c", "python"])
def test_src_ip_is_sticky_across_source_ports(engine):
    """Every connection of one client goes to one backend; clients still spread."""
    per_client = {}
    for c in range(40):
        src = f"198.51.100.{c + 1}"
        got = set(backends(BLOB, [tcp4(src, 1000 + 7 * p, VIP4, 80) for p in range(30)], engine))
        assert len(got) == 1 and -1 not in got, (src, got)
        per_client[src] = got.pop()
    assert len(set(per_client.values())) == 3  # 40 clients over 3 backends
    got6 = set(backends(BLOB, [tcp6(CLIENT6, 2000 + p, VIP6, 443) for p in range(30)], engine))
    assert len(got6) == 1


@pytest.mark.parametrize("engine", ["c", "python"])
def test_five_tuple_vip_spreads_one_client(engine):
    """The control: without the option one client's connections use several backends."""
    blob = build_tables(cfg.loads(CONFIG_TOML), DOWN)
    got = set(backends(blob, [tcp4(CLIENT4, 1000 + p, VIP4, 80) for p in range(60)], engine))
    assert len(got) == 3


@pytest.mark.parametrize("engine", ["c", "python"])
def test_dst_port_ignores_the_client(engine):
    pkts = [udp4(f"198.51.{c}.{c + 3}", 1000 + 13 * c, VIP4_NOFRAG, 53) for c in range(50)]
    got = set(backends(BLOB, pkts, engine))
    assert len(got) == 1 and -1 not in got


def test_udp_ignore_src_port_keeps_address_and_destination_port():
    """Same client and destination port: one backend whatever the source port; the
    destination port (a port-0 VIP serves every port) still spreads flows."""
    for c in range(10):
        src = f"198.51.100.{c + 1}"
        got = set(backends(BLOB, [udp4(src, 1024 + 101 * p, VIP4_ANY, 5000) for p in range(25)]))
        assert len(got) == 1
    by_dport = set(backends(BLOB, [udp4(CLIENT4, 4000, VIP4_ANY, 5000 + d) for d in range(40)]))
    assert len(by_dport) == 2


def test_conntrack_false_adds_no_entries_and_5tuple_does():
    dp = DataPath(BLOB, engine="c")
    dp.process([Packet(i, udp4(CLIENT4, 1000 + i, VIP4_ANY, 53)) for i in range(50)], 10**9)
    ct = dp.stats()["conntrack"]
    assert ct["lookups"] == ct["inserts"] == 0
    dp.process([Packet(100 + i, tcp4(CLIENT4, 1000 + i, VIP4_ANY, 80)) for i in range(50)], 10**9)
    ct = dp.stats()["conntrack"]
    assert ct["lookups"] == ct["inserts"] == 50
    assert dp.stats()["forwarded"] == 100


@pytest.mark.parametrize("engine", ["c", "python"])
def test_sticky_client_keeps_its_backend_for_new_connections_after_a_change(engine):
    """src_ip: the connection-table entry is per client, so after a backend is added a
    *new* connection of a client that is already established stays where it was; with
    the 5-tuple the new connection goes where the new table says."""
    base = cfg.loads(CONFIG_TOML)

    def with_backend(conf: cfg.Config, sticky: bool, extra: bool) -> bytes:
        vips = []
        for v in conf.vips:
            if v.address == VIP4 and v.protocol == "tcp":
                bes = v.backends + ((cfg.Backend(address="198.18.1.9"),) if extra else ())
                v = dataclasses.replace(v, backends=bes, hash="src_ip" if sticky else "5tuple")
            vips.append(v)
        return build_tables(dataclasses.replace(conf, vips=tuple(vips)), DOWN)

    for sticky in (True, False):
        old, new = with_backend(base, sticky, False), with_backend(base, sticky, True)
        view_new = read_tables(new)
        moved = 0
        for c in range(60):
            src = f"198.51.100.{c + 1}"
            dp = DataPath(old, engine=engine)
            first = dp.process([Packet(0, tcp4(src, 1111, VIP4, 80))], 10**9)[0].backend_index
            dp.set_tables(new)
            later = dp.process([Packet(1, tcp4(src, 2222, VIP4, 80))], 2 * 10**9)[0].backend_index
            fresh = backends(new, [tcp4(src, 2222, VIP4, 80)], engine)[0]
            if sticky:
                assert view_new.backends[later].address == read_tables(old).backends[first].address
            else:
                assert later == fresh
            moved += fresh != later
        if sticky:
            assert moved > 0  # some clients' slots did move: the entry is what kept them


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=40, max_size=40), st.integers(0, len(VIEW.vips) - 1), st.sampled_from([6, 17, 1]))
def test_select_key_c_and_python_agree(raw, vi, proto):
    key = raw[:36] + bytes([proto]) + raw[37:]
    k = ffi.new("struct mg_flow_key *")
    ffi.memmove(k, key, 40)
    buf = ffi.new("uint64_t[]", (len(BLOB) + 7) // 8)
    ffi.memmove(buf, BLOB, len(BLOB))
    assert lib.mg_tables_select_key(buf, vi, k) == 0
    assert bytes(ffi.buffer(k, 40)) == select_key(VIEW.vips[vi].flags, key)
    assert lib.mg_tables_select_key(buf, len(VIEW.vips), k) != 0


@pytest.mark.parametrize("flags,priority", [(VIP_F_HASH_SRC_IP | VIP_F_HASH_DST_PORT, 0), (0x40, 0), (0, 8)])
def test_bad_vip_flags_or_priority_are_rejected_by_both_validators(flags, priority):
    off = VIEW.header["vip_off"]
    rec = list(VIP.unpack_from(BLOB, off))
    rec[5], rec[13] = flags, priority
    bad = BLOB[:off] + VIP.pack(*rec) + BLOB[off + VIP.size:]
    assert c_validate(bad) != 0
    with pytest.raises(PacketError):
        read_tables(bad)


def _seeds() -> list[bytes]:
    s = list(td.SEEDS)
    for i in range(4):
        s.append(udp4(CLIENT4, 3000 + i, VIP4_NOFRAG, 53))
        s.append(udp4(f"198.51.100.{i + 20}", 3000, VIP4_ANY, 7000 + i))
        s.append(tcp4(CLIENT4, 4000 + i, VIP4, 80, flags=0x10))
        s.append(tcp6(CLIENT6, 5000 + i, VIP6, 443))
    return s


SEEDS = _seeds()
mutation = st.tuples(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4),
                     st.integers(0, 60), st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(mutation, min_size=1, max_size=12), min_size=1, max_size=4),
       st.lists(st.integers(0, 3_000_000_000), min_size=4, max_size=4))
def test_engines_agree_with_hashing_options(bursts, gaps):
    """The differential streams of test_differential over VIPs with every option: same
    verdicts, backends, bytes and counters (conntrack included)."""
    sc, sp = td._run_stream_on_both(BLOB, bursts, gaps)  # asserts the outputs are equal
    for k in ("packets_in", "forwarded", "icmp_sent", "drops", "conntrack", "vips", "backends", "held"):
        assert sc[k] == sp[k], k
