"""No event moves an established connection off its backend unless its backend is gone.

The audit of session 8 (docs/operations.md, "What moves a connection"): every table or
connection-table event an operator or the network can cause, applied to established TCP
(IPv4 and IPv6) and UDP flows in the C data path and the Python reference, which must
agree byte for byte.  A flow may change backend only when its backend was removed from its
VIP or went down; then it takes the new tables' Maglev choice, once, and is counted as
``reselected``.  Process-level events (kill -9, restarts) are in tests/lab/ and
tests/hostile/.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from maglev import config as cfg
from maglev.datapath import DataPath, build_tables
from maglev.datapath.engine import Packet
from maglev.datapath.tables import read_tables
from maglev.testing import packets as P

from .test_dp import maglev_backend

CLIENT4 = "198.51.100.21"
CLIENT6 = "2001:db8:c::21"
VIP4 = "203.0.113.60"
VIP6 = "2001:db8:f::60"
OTHER = "203.0.113.61"
NOW = 5_000_000_000
SEC = 10**9
B4 = [f"198.18.9.{i}" for i in range(1, 6)]
B6 = [f"2001:db8:9::{i}" for i in range(1, 6)]
K4, K6, KU = f"{VIP4}:80/tcp", f"[{VIP6}]:443/tcp", f"{VIP4}:53/udp"


@dataclass
class Conf:
    """One configuration of the three VIPs under test (TCP/IPv4, TCP/IPv6, UDP/IPv4)."""

    weights: dict[int, int] = field(default_factory=dict)  # backend number -> weight (1)
    removed: frozenset[int] = frozenset()                   # backend numbers left out
    added: tuple[int, ...] = ()                            # extra backend numbers (6, 7...)
    table_size: int = 1009
    reverse: bool = False                                   # VIPs in the other order
    other_vip: str = ""                                     # "" / "first" / "last"
    hash4: str = ""                                         # hash option of the TCP/IPv4 VIP
    down: frozenset[int] = frozenset()                      # backend numbers unhealthy

    def text(self) -> str:
        nums = [n for n in (1, 2, 3, 4, 5, *self.added) if n not in self.removed]

        def vip(addr: str, port: int, proto: str, six: bool, extra: str = "") -> str:
            s = f'[[vip]]\naddress = "{addr}"\nport = {port}\nprotocol = "{proto}"\ntable_size = {self.table_size}\n'
            if proto == "tcp" and not six and self.hash4 == "dst_port":
                s += "allow_fragments = false\n"
            s += extra
            for n in nums:
                a = f"2001:db8:9::{n}" if six else f"198.18.9.{n}"
                s += f'[[vip.backend]]\naddress = "{a}"\nweight = {self.weights.get(n, 1)}\n'
            return s

        vips = [vip(VIP4, 80, "tcp", False, f'hash = "{self.hash4}"\n' if self.hash4 else ""),
                vip(VIP6, 443, "tcp", True), vip(VIP4, 53, "udp", False)]
        if self.reverse:
            vips.reverse()
        other = (f'[[vip]]\naddress = "{OTHER}"\nport = 80\nprotocol = "tcp"\ntable_size = 251\n'
                 '[[vip.backend]]\naddress = "198.18.8.1"\n')
        if self.other_vip == "first":
            vips.insert(0, other)
        elif self.other_vip == "last":
            vips.append(other)
        head = ('[instance]\nsource_ipv4 = "198.18.0.1"\nsource_ipv6 = "2001:db8:1::1"\n'
                "[conntrack]\ntcp_timeout_s = 300\nudp_timeout_s = 30\n")
        return head + "".join(vips)

    def blob(self, generation: int) -> bytes:
        down = frozenset((k, f"2001:db8:9::{n}" if k == K6 else f"198.18.9.{n}")
                         for n in self.down for k in (K4, K6, KU))
        return build_tables(cfg.loads(self.text()), down, generation=generation)


def tcp4(sport: int, flags: int = 0x10) -> bytes:
    return P.eth(P.ipv4(CLIENT4, VIP4, P.TCP, P.tcp(sport, 80, b"x", src=CLIENT4, dst=VIP4, flags=flags)))


def tcp6(sport: int, flags: int = 0x10) -> bytes:
    return P.eth(P.ipv6(CLIENT6, VIP6, P.TCP, P.tcp(sport, 443, b"x", src=CLIENT6, dst=VIP6, flags=flags)),
                 ethertype=P.ETH_IPV6)


def udp4(sport: int, flags: int = 0) -> bytes:
    return P.eth(P.ipv4(CLIENT4, VIP4, P.UDP, P.udp(sport, 53, b"q", src=CLIENT4, dst=VIP4)))


N = 150
FLOWS = [(mk, 20000 + i) for mk in (tcp4, tcp6, udp4) for i in range(N)]


def addr(blob: bytes, out) -> str:
    assert out.reason == "forward", out.reason
    return read_tables(blob).backends[out.backend_index].address


def walk(confs: list[Conf], engine: str, flows=FLOWS, gap_s: int = 1) -> tuple[list[list[str]], dict, list]:
    """Establish ``flows`` (SYN, then a second packet) on ``confs[0]``'s tables, then for
    every later config swap the tables and send one more packet of every flow.  Returns the
    backend address of every flow after each step, the final stats, and the raw outputs."""
    blobs = [c.blob(g) for g, c in enumerate(confs)]
    dp = DataPath(blobs[0], engine=engine, ct_capacity=8192)
    raw = []
    syn = dp.process([Packet(i, mk(sp, 0x02)) for i, (mk, sp) in enumerate(flows)], NOW)
    raw += syn
    t = NOW + SEC
    ack = dp.process([Packet(i, mk(sp)) for i, (mk, sp) in enumerate(flows)], t)
    raw += ack
    steps = [[addr(blobs[0], o) for o in sorted(ack, key=lambda o: o.seq)]]
    for blob in blobs[1:]:
        dp.set_tables(blob)
        t += gap_s * SEC
        out = dp.process([Packet(i, mk(sp)) for i, (mk, sp) in enumerate(flows)], t)
        raw += out
        steps.append([addr(blob, o) for o in sorted(out, key=lambda o: o.seq)])
    return steps, dp.stats(), [(o.seq, o.verdict, o.backend_index, o.data) for o in raw]


def both(confs: list[Conf], **kw) -> tuple[list[list[str]], dict]:
    """``walk`` through the C engine and the reference: identical bytes, identical counters."""
    c_steps, c_stats, c_raw = walk(confs, "c", **kw)
    p_steps, p_stats, p_raw = walk(confs, "python", **kw)
    assert c_raw == p_raw
    assert c_stats["conntrack"] == p_stats["conntrack"]
    return c_steps, c_stats


def number(address: str) -> int:
    return int(address.rsplit(".", 1)[-1].rsplit(":", 1)[-1])


# event, configs in order, backend numbers whose flows must move (re-selected) at each step
EVENTS = [
    ("identical config applied again", [Conf(), Conf(), Conf()], [set(), set()]),
    ("table_size 1009 -> 65537 -> 251", [Conf(), Conf(table_size=65537), Conf(table_size=251)], [set(), set()]),
    ("another backend's weight 1 -> 4", [Conf(), Conf(weights={2: 4})], [set()]),
    ("every weight changed", [Conf(), Conf(weights={1: 3, 2: 2, 3: 5, 4: 1, 5: 7})], [set()]),
    ("a backend drained (weight 0), then back", [Conf(), Conf(weights={3: 0}), Conf()], [set(), set()]),
    ("a backend added, then another", [Conf(), Conf(added=(6,)), Conf(added=(6, 7))], [set(), set()]),
    ("a backend removed", [Conf(), Conf(removed=frozenset({4}))], [{4}]),
    ("a backend removed then added back", [Conf(), Conf(removed=frozenset({4})), Conf()], [{4}, set()]),
    ("VIP order reversed", [Conf(), Conf(reverse=True)], [set()]),
    ("another VIP added in front, then removed",
     [Conf(), Conf(other_vip="first"), Conf()], [set(), set()]),
    ("another VIP added at the end", [Conf(), Conf(other_vip="last")], [set()]),
    ("another backend flaps: down, then up",
     [Conf(), Conf(down=frozenset({2})), Conf()], [{2}, set()]),
    ("two backends down at once, then one back",
     [Conf(), Conf(down=frozenset({1, 5})), Conf(down=frozenset({5}))], [{1, 5}, set()]),
    ("everything at once: size, order, weights, another VIP, a backend added",
     [Conf(), Conf(table_size=65537, reverse=True, weights={1: 2, 3: 0}, other_vip="first", added=(6,))],
     [set()]),
]


@pytest.mark.parametrize(("desc", "confs", "moves"), EVENTS, ids=[e[0] for e in EVENTS])
def test_established_flows_stay_through_table_events(desc, confs, moves):
    steps, stats = both(confs)
    blobs = [c.blob(g) for g, c in enumerate(confs)]
    n_moved = 0
    for k, must_move in enumerate(moves, start=1):
        before, after = steps[k - 1], steps[k]
        for i, (mk, sp) in enumerate(FLOWS):
            if number(before[i]) in must_move:
                n_moved += 1
                # a flow whose backend is gone takes the new tables' Maglev choice
                assert after[i] == maglev_backend(blobs[k], mk(sp))[1], f"{desc}: step {k} flow {i}"
            else:
                assert after[i] == before[i], f"{desc}: step {k}: flow {i} moved {before[i]} -> {after[i]}"
    assert stats["conntrack"]["reselected"] == n_moved
    if any(moves):
        assert n_moved > 0, "the case must have flows on the backend that goes"


def test_a_flapping_backend_does_not_take_back_the_flows_it_lost():
    """Down, then up: the flows re-selected while it was down stay where they went (a
    second move would break them twice); flows that sent nothing while it was down never
    noticed and stay on it."""
    confs = [Conf(), Conf(down=frozenset({2})), Conf()]
    quiet = FLOWS[::2]  # half of the flows send nothing while backend 2 is down
    for engine in ("c", "python"):
        blobs = [c.blob(g) for g, c in enumerate(confs)]
        dp = DataPath(blobs[0], engine=engine, ct_capacity=8192)
        dp.process([Packet(i, mk(sp, 0x02)) for i, (mk, sp) in enumerate(FLOWS)], NOW)
        first = dp.process([Packet(i, mk(sp)) for i, (mk, sp) in enumerate(FLOWS)], NOW + SEC)
        was = {o.seq: addr(blobs[0], o) for o in first}
        dp.set_tables(blobs[1])
        talk = [i for i, f in enumerate(FLOWS) if f not in quiet]
        mid = dp.process([Packet(i, FLOWS[i][0](FLOWS[i][1])) for i in talk], NOW + 2 * SEC)
        during = {o.seq: addr(blobs[1], o) for o in mid}
        dp.set_tables(blobs[2])
        last = dp.process([Packet(i, mk(sp)) for i, (mk, sp) in enumerate(FLOWS)], NOW + 3 * SEC)
        after = {o.seq: addr(blobs[2], o) for o in last}
        on2 = [i for i in range(len(FLOWS)) if number(was[i]) == 2]
        assert any(i in during for i in on2) and any(i not in during for i in on2)
        for i in range(len(FLOWS)):
            if i in during:
                assert after[i] == during[i]
            else:
                assert after[i] == was[i]


def tables_then_change(engine: str, capacity: int = 4096):
    blobs = [Conf().blob(0), Conf(added=(6,)).blob(1)]  # a backend added: ~1/6 of slots move
    return blobs, DataPath(blobs[0], engine=engine, ct_capacity=capacity)


def establish(dp, flows, t):
    dp.process([Packet(i, mk(sp, 0x02)) for i, (mk, sp) in enumerate(flows)], t)
    return dp.process([Packet(i, mk(sp)) for i, (mk, sp) in enumerate(flows)], t + 1_000_000)


def flood_syn(n: int, base: int) -> list[bytes]:
    """SYNs of ``n`` new flows from distinct spoofed sources (198.19.x.y, 2 bytes of n)."""
    return [P.eth(P.ipv4(f"198.19.{(base + j) >> 8 & 255}.{(base + j) & 255}", VIP4, P.TCP,
                         P.tcp(1024 + (base + j) % 50000, 80, b"", src="198.19.0.0", dst=VIP4, flags=0x02)))
            for j in range(n)]


@pytest.mark.parametrize("engine", ["c", "python"])
def test_a_syn_flood_never_evicts_an_established_flow(engine):
    """A flood of SYNs (new flows that never send a second packet) of 10x the table's
    capacity while 450 established flows sit idle: the flood churns the probation segment
    only; after a backend is added, every established flow is still on its backend."""
    blobs, dp = tables_then_change(engine)
    first = establish(dp, FLOWS, NOW)
    was = {o.seq: addr(blobs[0], o) for o in first}
    t = NOW + SEC
    for k in range(0, 40960, 256):
        out = dp.process([Packet(j, f) for j, f in enumerate(flood_syn(256, k))], t + k * 1000)
        assert all(o.reason == "forward" for o in out)
    ct = dp.stats()["conntrack"]
    assert ct["evictions"] > 30000  # the flood did fill the table and churn it
    dp.set_tables(blobs[1])
    after = dp.process([Packet(i, mk(sp)) for i, (mk, sp) in enumerate(FLOWS)], t + 2 * SEC)
    assert {o.seq: addr(blobs[1], o) for o in after} == was
    assert dp.stats()["conntrack"]["reselected"] == 0


@pytest.mark.parametrize("engine", ["c", "python"])
def test_a_connection_flood_keeps_the_flows_that_talk(engine):
    """A flood of *completed* connections (SYN then ACK: each one promoted to protected,
    as a botnet's real connections are) of 10x the capacity.  Established flows that send a
    packet now and then (here once per 1024 flood connections, a quarter of the table) stay
    in the table and on their backend; what happens to flows that stay silent through
    the whole flood is measured and printed (docs/operations.md)."""
    blobs, dp = tables_then_change(engine)
    talk, quiet = FLOWS[: len(FLOWS) // 2], FLOWS[len(FLOWS) // 2:]
    first = establish(dp, FLOWS, NOW)
    was = {o.seq: addr(blobs[0], o) for o in first}
    t = NOW + SEC
    for k in range(0, 40960, 256):
        syns = flood_syn(256, k)
        acks = [f[:47] + b"\x10" + f[48:] for f in syns]  # flags byte: SYN -> ACK (checksum unused)
        dp.process([Packet(j, f) for j, f in enumerate(syns)], t + k * 1000)
        dp.process([Packet(j, f) for j, f in enumerate(acks)], t + k * 1000 + 500)
        if k % 1024 == 0:
            dp.process([Packet(i, mk(sp)) for i, (mk, sp) in enumerate(talk)], t + k * 1000 + 700)
    dp.set_tables(blobs[1])
    after = dp.process([Packet(i, mk(sp)) for i, (mk, sp) in enumerate(FLOWS)], t + 60 * SEC)
    now = {o.seq: addr(blobs[1], o) for o in after}
    assert all(now[i] == was[i] for i in range(len(talk)))
    lost = sum(now[i] != was[i] for i in range(len(talk), len(FLOWS)))
    print(f"connection flood of 10x capacity: {len(talk)} talking flows kept; "
          f"{lost} of {len(quiet)} silent flows moved after a backend was added")


@pytest.mark.parametrize("engine", ["c", "python"])
def test_idle_timeout_decides_who_stays(engine):
    """An entry lives ``tcp_timeout_s`` (300 s here) / ``udp_timeout_s`` (30 s) after the
    flow's last packet.  A TCP flow silent for 299 s keeps its backend through a table
    change; one silent for 301 s has no entry any more and takes the Maglev choice of the
    tables then in use (it moves only if its slot changed: with a backend added, ~1/6)."""
    blobs, dp = tables_then_change(engine)
    tcp = [f for f in FLOWS if f[0] is tcp4]
    first = establish(dp, tcp, NOW)
    was = {o.seq: addr(blobs[0], o) for o in first}
    dp.set_tables(blobs[1])
    half = len(tcp) // 2
    t_last = NOW + 1_000_000
    kept = dp.process([Packet(i, mk(sp)) for i, (mk, sp) in enumerate(tcp[:half])], t_last + 299 * SEC)
    assert all(addr(blobs[1], o) == was[o.seq] for o in kept)
    late = dp.process([Packet(i, mk(sp)) for i, (mk, sp) in enumerate(tcp[half:], half)], t_last + 301 * SEC)
    moved = 0
    for o in late:
        mk, sp = tcp[o.seq]
        assert addr(blobs[1], o) == maglev_backend(blobs[1], mk(sp))[1]
        moved += addr(blobs[1], o) != was[o.seq]
    assert dp.stats()["conntrack"]["expired"] >= len(tcp) - half
    assert 0 < moved < len(tcp) - half  # some slots changed, most did not


def icmp_frag_needed(sport: int) -> bytes:
    """A router's "fragmentation needed" about the backend's DSR reply VIP:80 -> client."""
    reply = P.ipv4(VIP4, CLIENT4, P.TCP, P.tcp(80, sport, b"data", src=VIP4, dst=CLIENT4))
    return P.eth(P.ipv4("198.18.5.1", VIP4, P.ICMP, P.icmp4(3, 4, b"\0\0\x05\x00", payload=reply)))


def icmp6_too_big(sport: int) -> bytes:
    reply = P.ipv6(VIP6, CLIENT6, P.TCP, P.tcp(443, sport, b"data", src=VIP6, dst=CLIENT6))
    return P.eth(P.ipv6("2001:db8:5::1", VIP6, P.ICMPV6,
                        P.icmp6(2, 0, b"\0\0\x05\x00", payload=reply, src="2001:db8:5::1", dst=VIP6)))


@pytest.mark.parametrize("engine", ["c", "python"])
def test_pmtu_errors_reach_the_flows_backend_after_a_table_change(engine):
    """ICMP "fragmentation needed" / ICMPv6 "packet too big" about an established flow go
    to the flow's backend (a connection-table lookup of the quoted flow), also when the
    tables changed since and Maglev alone would pick another backend; they do not create
    or promote an entry."""
    blobs, dp = tables_then_change(engine)
    tcp = [f for f in FLOWS if f[0] in (tcp4, tcp6)]
    first = establish(dp, tcp, NOW)
    was = {o.seq: addr(blobs[0], o) for o in first}
    dp.set_tables(blobs[1])
    errs = [Packet(i, (icmp_frag_needed if mk is tcp4 else icmp6_too_big)(sp)) for i, (mk, sp) in enumerate(tcp)]
    out = dp.process(errs, NOW + 2 * SEC)
    assert {o.seq: addr(blobs[1], o) for o in out} == was
    differs = sum(maglev_backend(blobs[1], mk(sp))[1] != was[i] for i, (mk, sp) in enumerate(tcp))
    assert differs > 0  # the case would catch an error sent by Maglev alone
    assert dp.stats()["conntrack"]["inserts"] == len(tcp)


HASH_CHANGES = [("", "src_ip"), ("src_ip", ""), ("", "dst_port"), ("dst_port", "")]


@pytest.mark.parametrize(("old", "new"), HASH_CHANGES, ids=[f"{a or '5tuple'}->{b or '5tuple'}" for a, b in HASH_CHANGES])
def test_changing_a_vips_hash_option_keeps_established_tcp_connections(old, new):
    """A reload that changes a VIP's ``hash`` (5tuple <-> src_ip / dst_port) changes the
    key its flows are tracked by.  Established TCP connections (a packet without SYN) are
    still found under the key they were tracked by and keep their backend; new connections
    (SYN) follow the new rule -- with src_ip, all of a client's new connections go to one
    backend.  Fails on the old code: 116 of 150 connections moved for 5tuple -> src_ip."""
    tcp = [f for f in FLOWS if f[0] is tcp4]
    for engine in ("c", "python"):
        blobs = [Conf(hash4=old).blob(0), Conf(hash4=new).blob(1)]
        raw = []
        dp = DataPath(blobs[0], engine=engine, ct_capacity=8192)
        first = establish(dp, tcp, NOW)
        was = {o.seq: addr(blobs[0], o) for o in first}
        if not old:
            assert len(set(was.values())) == 5  # spread over every backend before
        dp.set_tables(blobs[1])
        new_conns = [Packet(i, tcp4(40000 + i, 0x02)) for i in range(50)]
        for rnd in range(3):  # established packets, then new connections, then again
            out = dp.process([Packet(i, mk(sp)) for i, (mk, sp) in enumerate(tcp)], NOW + (2 + rnd) * SEC)
            raw += out
            assert {o.seq: addr(blobs[1], o) for o in out} == was, f"round {rnd}"
            if rnd == 0:
                fresh = dp.process(new_conns, NOW + 2 * SEC + 1)
                raw += fresh
                for o in fresh:
                    assert addr(blobs[1], o) == maglev_backend(blobs[1], tcp4(40000 + o.seq, 0x02), ports=False)[1] \
                        if new == "src_ip" else True
                if new:  # one client, one destination port: one backend for all new connections
                    assert len({addr(blobs[1], o) for o in fresh}) == 1
        assert dp.stats()["conntrack"]["reselected"] == 0
        if engine == "c":
            c_raw = [(o.seq, o.verdict, o.backend_index, o.data) for o in raw]
        else:
            assert c_raw == [(o.seq, o.verdict, o.backend_index, o.data) for o in raw]


def test_udp_flows_take_the_new_key_when_the_hash_option_changes():
    """UDP has no mark of an established flow (every datagram looks like the first): after
    ``hash = "src_ip"`` its flows take the new key's entry, created by the first datagram
    after the change -- one backend per client, as asked.  Measured and documented."""
    udp = [f for f in FLOWS if f[0] is udp4]
    conf_old = Conf()
    conf_new = Conf()
    text_new = conf_new.text().replace('port = 53\nprotocol = "udp"\n', 'port = 53\nprotocol = "udp"\nhash = "src_ip"\n')
    blobs = [conf_old.blob(0), build_tables(cfg.loads(text_new), generation=1)]
    dp = DataPath(blobs[0], engine="c", ct_capacity=8192)
    was = {o.seq: addr(blobs[0], o) for o in establish(dp, udp, NOW)}
    dp.set_tables(blobs[1])
    out = dp.process([Packet(i, mk(sp)) for i, (mk, sp) in enumerate(udp)], NOW + 2 * SEC)
    now = {o.seq: addr(blobs[1], o) for o in out}
    assert len(set(now.values())) == 1
    moved = sum(now[i] != was[i] for i in now)
    print(f"UDP, hash 5tuple -> src_ip: {moved} of {len(udp)} flows of one client moved to its one backend")
    assert moved > 0


def udp_fragments(sport: int, ident: int) -> list[bytes]:
    """A 64-byte datagram of the UDP flow from ``sport`` to VIP4:53 in two IPv4 fragments."""
    seg = P.udp(sport, 53, bytes(range(56)), src=CLIENT4, dst=VIP4)
    return [P.eth(P.ipv4(CLIENT4, VIP4, P.UDP, seg[:32], df=False, mf=True, ident=ident)),
            P.eth(P.ipv4(CLIENT4, VIP4, P.UDP, seg[32:], df=False, frag_offset=32, ident=ident))]


@pytest.mark.parametrize("hash_opt", ["", "src_ip"])
@pytest.mark.parametrize("engine", ["c", "python"])
def test_fragments_of_a_flow_go_by_the_three_tuple(engine, hash_opt):
    """Paper 4.3: a datagram's fragments go where the 3-tuple (source, VIP, protocol)
    hashes -- every piece to one backend, on every maglev instance, without the connection
    table (non-first pieces carry no port, and reach whichever worker their 3-tuple
    steers to).  So with ``hash = "5tuple"`` a flow's fragmented datagrams reach the
    3-tuple's backend, which is the flow's own only by chance (measured and printed); with
    ``hash = "src_ip"`` the flow is keyed by that same 3-tuple and both agree while the
    backend set is unchanged.  docs/operations.md says which to use."""
    text = Conf().text()
    if hash_opt:
        text = text.replace('port = 53\nprotocol = "udp"\n', f'port = 53\nprotocol = "udp"\nhash = "{hash_opt}"\n')
    blob = build_tables(cfg.loads(text))
    udp = [f for f in FLOWS if f[0] is udp4]
    dp = DataPath(blob, engine=engine, ct_capacity=8192)
    was = {o.seq: addr(blob, o) for o in establish(dp, udp, NOW)}
    same = 0
    for i, (_mk, sp) in enumerate(udp):
        pieces = dp.process([Packet(j, f) for j, f in enumerate(udp_fragments(sp, 100 + i))], NOW + 2 * SEC)
        got = {addr(blob, o) for o in pieces}
        assert len(pieces) == 2 and len(got) == 1  # the datagram stays whole on one backend
        three = maglev_backend(blob, udp4(sp), ports=False)[1]
        assert got == {three}
        same += got == {was[i]}
    if hash_opt == "src_ip":
        assert same == len(udp)
    else:
        print(f"hash = 5tuple: fragments of {same} of {len(udp)} UDP flows reached the flow's own backend")
        assert same < len(udp)


@pytest.mark.parametrize("engine", ["c", "python"])
def test_old_key_lookups_cost_nothing_without_masked_keys(engine):
    """The src_ip / dst_port lookups for a packet of an unknown TCP connection (an ACK
    flood of made-up flows) run only while entries under such keys may exist: within a TCP
    timeout of the last packet to a src_ip / dst_port VIP (or of the start, with an adopted
    table that is not empty).  Counted by the connection table's lookups."""
    plain = Conf().blob(0)
    dp = DataPath(plain, engine=engine, ct_capacity=8192)
    acks = [Packet(i, tcp4(30000 + i)) for i in range(100)]
    dp.process(acks, NOW)
    assert dp.stats()["conntrack"]["lookups"] == 100  # one lookup each: no masked key around
    keyed = Conf(hash4="src_ip").blob(1)
    dp.set_tables(keyed)
    dp.process([Packet(0, tcp4(50000, 0x02))], NOW + SEC)  # a src_ip VIP's packet: masked keys now
    dp.set_tables(Conf().blob(2))
    before = dp.stats()["conntrack"]["lookups"]
    dp.process([Packet(i, tcp4(31000 + i)) for i in range(100)], NOW + 2 * SEC)
    # 5-tuple, then src_ip -- found: the client's src_ip entry of the SYN above (so no
    # dst_port lookup); these connections are the client's on its src_ip backend
    assert dp.stats()["conntrack"]["lookups"] - before == 200
    before = dp.stats()["conntrack"]["lookups"]
    dp.process([Packet(i, tcp4(32000 + i)) for i in range(100)], NOW + 302 * SEC)
    assert dp.stats()["conntrack"]["lookups"] - before == 100  # a TCP timeout later: off again
