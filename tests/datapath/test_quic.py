"""QUIC connection-ID routing (mg_quic.h, docs/datapath.md "QUIC connection IDs"): a
short-header packet whose destination connection ID carries a known server ID goes to that
server whatever its addresses and ports; Initial (long-header) packets, unknown server IDs,
unhealthy servers and packets too short for the ID go by Maglev hashing.  The C kernel and
the Python reference agree byte for byte and counter for counter."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maglev import config as cfg
from maglev.datapath import DataPath, build_tables
from maglev.datapath.engine import Packet
from maglev.datapath.tables import QUIC_SID, VIP, read_tables
from maglev.errors import PacketError
from maglev.native import ffi, lib
from maglev.testing import packets as P

from . import test_differential as td
from .dp_helpers import c_validate

VIPQ = "203.0.113.50"
VIPQ6 = "2001:db8:f::50"
QUIC_TOML = f"""
[instance]
source_ipv4 = "198.18.0.1"
source_ipv6 = "2001:db8:1::1"

[conntrack]
capacity = 4096

[[vip]]
address = "{VIPQ}"
port = 443
protocol = "udp"
table_size = 1009
quic = {{ server_id_offset = 1, server_id_length = 2, cid_length = 8 }}
[[vip.backend]]
address = "198.18.7.1"
quic_server_id = "0a01"
[[vip.backend]]
address = "198.18.7.2"
quic_server_id = "0a02"
[[vip.backend]]
address = "198.18.7.3"
quic_server_id = "0a03"
[[vip.backend]]
address = "198.18.7.4"

[[vip]]
address = "{VIPQ6}"
port = 443
protocol = "udp"
table_size = 1009
quic = {{ server_id_offset = 0, server_id_length = 1, cid_length = 4 }}
[[vip.backend]]
address = "2001:db8:7::1"
quic_server_id = "01"
[[vip.backend]]
address = "2001:db8:7::2"
quic_server_id = "02"
"""
CONF = cfg.loads(QUIC_TOML)
DOWN = frozenset({(CONF.vips[0].key, "198.18.7.3")})  # server 0a03 is unhealthy
BLOB = build_tables(CONF, DOWN)
VIEW = read_tables(BLOB)
PLAIN = cfg.loads(QUIC_TOML.replace("quic = {", "# quic = {").replace("quic_server_id", "# quic_server_id"))
PLAIN_BLOB = build_tables(PLAIN, DOWN)
ENGINES = ["c", "python"]


def short_header(sid: bytes, nonce: bytes = b"\x11\x22\x33\x44\x55", first: int = 0x41, body: bytes = b"p" * 24) -> bytes:
    """A 1-RTT packet: flags byte (top bit clear), an 8-byte DCID = one config byte, the
    server ID, a nonce; then (opaque, encrypted) payload."""
    return bytes([first]) + (b"\x07" + sid + nonce)[:8] + body


def initial(dcid: bytes = b"\x99" * 8) -> bytes:
    """A long-header Initial: flags 0xc0, version 1, DCID length + DCID, empty SCID."""
    return b"\xc0\x00\x00\x00\x01" + bytes([len(dcid)]) + dcid + b"\x00" + b"i" * 40


def udp4(src: str, sport: int, payload: bytes, dst: str = VIPQ, dport: int = 443) -> bytes:
    return P.eth(P.ipv4(src, dst, P.UDP, P.udp(sport, dport, payload, src=src, dst=dst)))


def udp6(src: str, sport: int, payload: bytes) -> bytes:
    return P.eth(P.ipv6(src, VIPQ6, P.UDP, P.udp(sport, 443, payload, src=src, dst=VIPQ6)))


def run(blob: bytes, pkts: list[bytes], engine: str) -> tuple[list[int], dict]:
    dp = DataPath(blob, engine=engine)
    outs = dp.process([Packet(i, p) for i, p in enumerate(pkts)], 10**9)
    return [o.backend_index for o in sorted(outs, key=lambda o: o.seq)], dp.stats()


def addr(i: int) -> str:
    return VIEW.backends[i].address


def test_blob_holds_the_server_ids():
    v = VIEW.vips[0]
    assert (v.quic_sid_off, v.quic_sid_len, v.quic_n) == (1, 2, 3)
    assert [(sid, addr(b)) for sid, b in VIEW.quic_sids(0)] == [
        (0x0A01, "198.18.7.1"), (0x0A02, "198.18.7.2"), (0x0A03, "198.18.7.3")]
    assert VIEW.vips[1].quic_sid_len == 1 and VIEW.quic_sids(1) == [(1, 4), (2, 5)]
    assert all(v.quic_sid_len == 0 and v.quic_n == 0 for v in read_tables(PLAIN_BLOB).vips)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_migrating_client_stays_on_the_server_its_connection_id_names(engine):
    """One connection ID from 200 different addresses and ports: always server 0a02; the
    same packets without `quic` spread over the backends (the control)."""
    pkts = [udp4(f"198.51.{c % 200}.{c % 250 + 1}", 1024 + 37 * c, short_header(b"\x0a\x02")) for c in range(200)]
    got, st_ = run(BLOB, pkts, engine)
    assert {addr(b) for b in got} == {"198.18.7.2"}
    assert st_["quic_cid_routed"] == 200 and st_["quic_hashed"] == 0
    assert st_["conntrack"]["inserts"] == 0  # the connection ID is the state
    plain, _ = run(PLAIN_BLOB, pkts, engine)
    assert len(set(plain)) > 1
    got6, _ = run(BLOB, [udp6(f"2001:db8:c::{c + 1:x}", 5000 + c, b"\x40" + b"\x01" + b"abc" + b"x" * 20)
                         for c in range(50)], engine)
    assert {addr(b) for b in got6} == {"2001:db8:7::1"}


@pytest.mark.parametrize("engine", ENGINES)
def test_initial_unknown_unhealthy_and_short_packets_go_by_hashing(engine):
    clients = [(f"198.51.100.{c + 1}", 2000 + c) for c in range(60)]
    cases = {
        "initial": [udp4(s, p, initial(b"\x07\x0a\x01" + b"\x00" * 5)) for s, p in clients],  # even with a known ID
        "unknown": [udp4(s, p, short_header(b"\x0b\x01")) for s, p in clients],
        "unhealthy": [udp4(s, p, short_header(b"\x0a\x03")) for s, p in clients],
        "short": [udp4(s, p, b"\x41\x07\x0a") for s, p in clients],  # the ID's second byte is missing
    }
    for name, pkts in cases.items():
        got, st_ = run(BLOB, pkts, engine)
        plain, _ = run(PLAIN_BLOB, pkts, engine)
        assert got == plain, name  # exactly what hashing (and the connection table) decides
        assert st_["quic_hashed"] == 60 and st_["quic_cid_routed"] == 0, name
        assert "198.18.7.3" not in {addr(b) for b in got}, name
        assert st_["conntrack"]["inserts"] == 60, name


@pytest.mark.parametrize("engine", ENGINES)
def test_a_drained_server_keeps_its_connections(engine):
    """weight 0 (draining): no new flows by hashing, but packets naming it still reach it."""
    d = CONF.to_dict()
    d["vip"][0]["backend"][0]["weight"] = 0
    blob = build_tables(cfg.Config.from_dict(d), DOWN)
    got, _ = run(blob, [udp4(f"198.51.100.{c + 1}", 3000 + c, short_header(b"\x0a\x01")) for c in range(20)], engine)
    assert {read_tables(blob).backends[b].address for b in got} == {"198.18.7.1"}
    hashed, _ = run(blob, [udp4(f"198.51.100.{c + 1}", 3000 + c, initial()) for c in range(60)], engine)
    assert "198.18.7.1" not in {read_tables(blob).backends[b].address for b in hashed}


def test_c_route_function_and_reference_agree_on_every_first_byte_and_id():
    buf = ffi.new("uint64_t[]", (len(BLOB) + 7) // 8)
    ffi.memmove(buf, BLOB, len(BLOB))
    from maglev.datapath.ref_parse import parse

    for first in range(0, 256, 5):
        for sid in (b"\x0a\x01", b"\x0a\x02", b"\x0a\x03", b"\x0a\x04", b"\x00\x00"):
            pkt = udp4("198.51.100.9", 4444, short_header(sid, first=first))
            p = ffi.new("struct mg_parsed *")
            assert lib.mg_parse(pkt, len(pkt), p) == 0
            rc, rp = parse(pkt)
            assert rc == 0
            assert lib.mg_quic_route(buf, 0, pkt, p) == VIEW.quic_route(0, pkt, rp)


def _corrupt(field: int, value: int) -> bytes:
    off = VIEW.header["vip_off"]
    rec = list(VIP.unpack_from(BLOB, off))
    rec[field] = value
    return BLOB[:off] + VIP.pack(*rec) + BLOB[off + VIP.size:]


def _sid_swap() -> bytes:
    """The first VIP's server-ID array out of order."""
    v = VIEW.vips[0]
    a = BLOB[v.quic_off:v.quic_off + QUIC_SID.size]
    b = BLOB[v.quic_off + QUIC_SID.size:v.quic_off + 2 * QUIC_SID.size]
    return BLOB[:v.quic_off] + b + a + BLOB[v.quic_off + 2 * QUIC_SID.size:]


@pytest.mark.parametrize("bad", [
    _corrupt(18, 9),  # server ID longer than 8 bytes
    _corrupt(17, 19),  # offset + length beyond a 20-byte connection ID
    _corrupt(16, 5),  # more IDs than backends
    _corrupt(15, 4),  # array offset not aligned
    _corrupt(15, 1 << 30),  # array beyond the end
    _corrupt(2, 6),  # a TCP VIP with QUIC routing
    _sid_swap(),
])
def test_bad_quic_fields_are_rejected_by_both_validators(bad):
    assert c_validate(bad) != 0
    with pytest.raises(PacketError):
        read_tables(bad)


def _seeds() -> list[bytes]:
    s = list(td.SEEDS)
    for i in range(3):
        s.append(udp4(f"198.51.100.{i + 1}", 6000 + i, short_header(bytes([0x0a, 1 + i]))))
        s.append(udp4(f"198.51.100.{i + 1}", 6000 + i, initial()))
        s.append(udp4(f"198.51.100.{i + 1}", 6000 + i, short_header(bytes([0x0b, i]))))
        s.append(udp6(f"2001:db8:c::{i + 1}", 7000 + i, b"\x40" + bytes([1 + i]) + b"zzz" + b"y" * 16))
    s.append(udp4("198.51.100.9", 6100, b"\x41\x07"))
    return s


SEEDS = _seeds()
mutation = st.tuples(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 90), st.integers(0, 255)), max_size=4),
                     st.integers(0, 60), st.booleans())


@settings(max_examples=int(os.environ.get("MAGLEV_HYPOTHESIS_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(mutation, min_size=1, max_size=12), min_size=1, max_size=4),
       st.lists(st.integers(0, 3_000_000_000), min_size=4, max_size=4))
def test_engines_agree_on_quic_streams(bursts, gaps):
    """Mutated QUIC packets (flags byte, connection ID, lengths, ports) and the general
    differential seeds, in bursts over time: same outputs and counters."""
    sc, sp = td._run_stream_on_both(BLOB, bursts, gaps)  # asserts the outputs are equal
    for k in ("packets_in", "forwarded", "drops", "conntrack", "vips", "backends", "quic_cid_routed", "quic_hashed"):
        assert sc[k] == sp[k], k


def test_whereis_shows_the_quic_rule_and_the_decision(tmp_path):
    from click.testing import CliRunner

    from maglev.observability.whereis import WhereisError, parse_cid, parse_flow, whereis_config
    from maglev_cli.main import cli

    flow = parse_flow("198.51.100.1:5555", f"{VIPQ}:443/udp")
    plain = whereis_config(CONF, flow)
    assert plain["quic"]["server_ids"] == {"0a01": "198.18.7.1", "0a02": "198.18.7.2", "0a03": "198.18.7.3"}
    assert not plain["quic"]["routed"] and "hashed" in plain["quic"]["packet"]
    routed = whereis_config(CONF, flow, quic_cid=parse_cid("07:0a:03:aa:bb:cc:dd:ee"))
    assert routed["quic"]["routed"] and routed["backend"] == "198.18.7.3"  # offline: every backend healthy
    assert routed["why"].startswith("QUIC short header: server ID 0a03 (connection ID bytes 1..2)")
    unknown = whereis_config(CONF, flow, quic_cid=parse_cid("070b03aabbccddee"))
    assert not unknown["quic"]["routed"] and unknown["backend"] == plain["backend"]
    assert "not one of this VIP's" in unknown["quic"]["packet"]
    with pytest.raises(WhereisError, match="QUIC allows 1-20"):
        parse_cid("00" * 21)
    with pytest.raises(WhereisError, match="needs a UDP flow"):
        whereis_config(CONF, parse_flow("198.51.100.1:5555", f"{VIPQ}:443/tcp"), quic_cid=b"\x07\x0a\x01")
    f = tmp_path / "q.toml"
    f.write_text(QUIC_TOML)
    r = CliRunner().invoke(cli, ["whereis", "--config", str(f), "198.51.100.1:5555", f"{VIPQ}:443/udp",
                                 "--quic-cid", "070a02aabbccddee"])
    assert r.exit_code == 0, r.output
    assert "this packet: server ID 0a02 -> 198.18.7.2" in r.output and "backend    198.18.7.2" in r.output
