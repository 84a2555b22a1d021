"""Fragments across maglev instances (paper 4.3, docs/datapath.md "Fragments across
instances"): with ``[instance] pool`` a fragment of a fragment-enabled VIP that reached an
instance other than its owner (pool[3-tuple hash % size]) goes there in marked GRE; the
owner decapsulates it and forwards it like a fragment it received itself, and never sends
it on again.  Every case runs through both engines; expected packets are built with
maglev.testing.packets."""

from __future__ import annotations

import random

import pytest

from maglev import config as cfg
from maglev.datapath import DataPath, build_tables
from maglev.datapath.engine import Output, Packet
from maglev.testing import packets as P

from .dp_helpers import CLIENT4, CONFIG_TOML, VIP4, VIP4_ANY, VIP4_NOFRAG, VIP6
from .redirect_helpers import (
    POOL,
    REDIRECT_KEY,
    marked_gre,
    owner,
    pool_config,
    tcp6_fragments,
    udp_fragments,
)

NOW = 5_000_000_000
ENGINES = ("c", "python")
BLOBS = {own: build_tables(pool_config(own)) for own in POOL}


def run(blob: bytes, frames: list[bytes], engine: str) -> list[Output]:
    dp = DataPath(blob, engine=engine)
    return dp.process([Packet(i, f) for i, f in enumerate(frames)], NOW)


def datagram(family: int, i: int) -> list[bytes]:
    """The fragments of datagram ``i`` from client ``i`` (the owner depends on the
    3-tuple only, so the client address is what varies it)."""
    if family == 4:
        return udp_fragments(f"198.51.100.{i}", VIP4_ANY, 5000, i)
    return tcp6_fragments(f"2001:db8:c::{i:x}", VIP6, 6000, i)


def foreign_datagram(own: str, family: int) -> tuple[list[bytes], str]:
    """A datagram whose owner is not ``own`` (bounded search) and that owner."""
    for i in range(1, 200):
        frags = datagram(family, i)
        o = owner(POOL, BLOBS[own], frags[0])
        if o != own:
            return frags, o
    raise AssertionError("no datagram owned by another instance in 200 tries")


def owned_datagram(own: str, family: int) -> list[bytes]:
    for i in range(1, 200):
        frags = datagram(family, i)
        if owner(POOL, BLOBS[own], frags[0]) == own:
            return frags
    raise AssertionError("no datagram owned by this instance in 200 tries")


MAKERS = {  # which fragment of which family
    "IPv4 non-first fragment": (4, 1),
    "IPv4 last fragment": (4, -1),
    "IPv4 first fragment": (4, 0),
    "IPv6 non-first fragment (IPv4 pool)": (6, 1),
    "IPv6 first fragment (IPv4 pool)": (6, 0),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("what", list(MAKERS))
def test_fragment_owned_elsewhere_is_sent_to_its_owner_in_marked_gre(what, engine):
    own = "198.18.0.1"
    family, k = MAKERS[what]
    frags, to = foreign_datagram(own, family)
    frame = frags[k]
    (o,) = run(BLOBS[own], [frame], engine)
    assert (o.action, o.reason, o.backend_index) == ("tx", "redirected", -1)
    assert o.data == marked_gre(own, to, frame)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("what", list(MAKERS))
def test_redirected_fragment_goes_to_the_backend_the_owner_would_choose(what, engine):
    sender = "198.18.0.1"
    family, k = MAKERS[what]
    frags, to = foreign_datagram(sender, family)
    frame = frags[k]
    (redirect,) = run(BLOBS[sender], [frame], engine)
    # the owner, given the first fragment directly when this is not it, then the redirect
    # (one data path) or the original fragment (another)
    dp_redirected = DataPath(BLOBS[to], engine=engine)
    dp_direct = DataPath(BLOBS[to], engine=engine)
    if k != 0:
        dp_redirected.process([Packet(0, frags[0])], NOW)
        dp_direct.process([Packet(0, frags[0])], NOW)
    (got,) = dp_redirected.process([Packet(1, redirect.data)], NOW)
    (want,) = dp_direct.process([Packet(1, frame)], NOW)
    assert (got.action, got.reason) == ("tx", "forward")
    assert (got.vip_index, got.backend_index) == (want.vip_index, want.backend_index)
    assert got.data[14:] == want.data[14:]  # same outer IP, GRE and inner packet
    assert dp_redirected.stats()["redirect_in"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_a_redirected_fragment_is_never_redirected_again(engine):
    # A fragment owned by .3 arrives at .2 redirected from .1 (the sender disagrees about
    # the owner, e.g. during a pool change): .2 forwards it, it does not send it on.
    frags, to = foreign_datagram("198.18.0.2", 4)
    frame = frags[0]
    gre = marked_gre("198.18.0.1" if to != "198.18.0.1" else "198.18.0.3", "198.18.0.2", frame)
    (o,) = run(BLOBS["198.18.0.2"], [gre], engine)
    assert (o.action, o.reason) == ("tx", "forward")
    assert o.backend_index >= 0


@pytest.mark.parametrize("engine", ENGINES)
def test_non_fragments_and_owned_fragments_are_not_redirected(engine):
    own = "198.18.0.1"
    pkts = [
        P.eth(P.ipv4(CLIENT4, VIP4, P.TCP, P.tcp(40000 + i, 80, b"x", src=CLIENT4, dst=VIP4)))
        for i in range(20)
    ]
    pkts += owned_datagram(own, 4) + owned_datagram(own, 6)
    outs = run(BLOBS[own], pkts, engine)
    assert [o.reason for o in outs] == ["forward"] * len(pkts)


def _drop_cases() -> dict[str, tuple[bytes, str]]:
    me = "198.18.0.1"
    frag = udp_fragments(CLIENT4, VIP4_ANY, 5000, 7)[1]
    whole = P.eth(P.ipv4(CLIENT4, VIP4_ANY, P.UDP, P.udp(1, 53, b"q", src=CLIENT4, dst=VIP4_ANY)))
    nofrag = udp_fragments(CLIENT4, VIP4_NOFRAG, 5000, 7)[1]
    bad_eth = P.eth(P.ipv4("198.18.0.2", me, P.GRE, b"\x20\x00\x65\x58" + REDIRECT_KEY.to_bytes(4, "big") + frag[14:]))
    outer_frag = P.eth(P.ipv4("198.18.0.2", me, P.GRE, marked_gre("198.18.0.2", me, frag)[34:],
                              df=False, mf=True))
    return {
        "GRE from an address outside the pool": (marked_gre("198.51.100.9", me, frag), "redirect_foreign"),
        "GRE from ourselves": (marked_gre(me, me, frag), "redirect_foreign"),
        "GRE without a key": (marked_gre("198.18.0.2", me, frag, key=None), "redirect_unmarked"),
        "GRE with another key": (marked_gre("198.18.0.2", me, frag, key=1), "redirect_unmarked"),
        "marked GRE carrying a whole packet": (marked_gre("198.18.0.2", me, whole), "bad_redirect"),
        "marked GRE with a non-IP payload type": (bad_eth, "bad_redirect"),
        "marked GRE, outer packet fragmented": (outer_frag, "bad_redirect"),
        "marked GRE cut inside the GRE header": (marked_gre("198.18.0.2", me, frag)[:14 + 20 + 6], "truncated"),
        "redirected fragment of a VIP without allow_fragments": (
            marked_gre("198.18.0.2", me, nofrag), "fragment_not_allowed"),
    }


DROPS = _drop_cases()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("what", list(DROPS))
def test_bad_redirects_are_dropped_with_their_reason(what, engine):
    frame, reason = DROPS[what]
    (o,) = run(BLOBS["198.18.0.1"], [frame], engine)
    assert (o.action, o.reason) == ("drop", reason)


@pytest.mark.parametrize("engine", ENGINES)
def test_short_gre_header_is_bad_redirect(engine):
    me = "198.18.0.1"
    frame = P.eth(P.ipv4("198.18.0.2", me, P.GRE, b"\x20\x00\x08\x00\x4d\x47"))
    (o,) = run(BLOBS[me], [frame], engine)
    assert (o.action, o.reason) == ("drop", "bad_redirect")


@pytest.mark.parametrize("engine", ENGINES)
def test_without_a_pool_gre_to_us_is_an_ordinary_packet(engine):
    blob = build_tables(cfg.loads(CONFIG_TOML))
    frag = udp_fragments(CLIENT4, VIP4_ANY, 5000, 7)
    outs = run(blob, [marked_gre("198.18.0.2", "198.18.0.1", frag[1]), *frag], engine)
    assert sorted(o.reason for o in outs) == ["forward"] * len(frag) + ["no_vip"]


@pytest.mark.parametrize("engine", ENGINES)
def test_pool_of_one_never_redirects(engine):
    blob = build_tables(pool_config("198.18.0.1", ("198.18.0.1",)))
    pkts = [f for i in range(1, 30) for f in udp_fragments(CLIENT4, VIP4_ANY, 5000, i)]
    outs = run(blob, pkts, engine)
    assert [o.reason for o in outs] == ["forward"] * len(pkts)
    # and a GRE from anyone is foreign: the pool has no other member
    (o,) = run(blob, [marked_gre("198.18.0.2", "198.18.0.1", pkts[1])], engine)
    assert o.reason == "redirect_foreign"


def _big_foreign(own: str, family: int, k: int, *, df: bool = False) -> tuple[list[bytes], str]:
    """The fragments of a datagram cut into full-size (1500-byte L3) fragments, owned by
    another instance than ``own``; IPv4 fragment ``k`` with DF set when ``df``."""
    for i in range(1, 200):
        if family == 4:
            frags = udp_fragments(f"198.51.100.{i}", VIP4_ANY, 5000, i, size=4432, piece=1480)  # 3 x 1480
        else:
            frags = tcp6_fragments(f"2001:db8:c::{i:x}", VIP6, 6000, i, size=4000, piece=1448)
        o = owner(POOL, BLOBS[own], frags[0])
        if o != own:
            if df:
                l3 = frags[k][14:]
                frags[k] = P.eth(P.ipv4(f"198.51.100.{i}", VIP4_ANY, P.UDP, l3[20:], df=True,
                                        mf=bool(l3[6] & 0x20), ident=i,
                                        frag_offset=(int.from_bytes(l3[6:8], "big") & 0x1FFF) * 8))
            return frags, o
    raise AssertionError("no datagram owned by another instance in 200 tries")


def _pieces(frame: bytes, chunk: int) -> list[bytes]:
    """The IPv4 fragment ``frame`` (20-byte header) cut again by hand: ``chunk`` payload
    bytes per piece, offsets from the original datagram, MF on all but the last piece,
    which keeps the fragment's MF."""
    l3 = frame[14:]
    flags = int.from_bytes(l3[6:8], "big")
    base, more = (flags & 0x1FFF) * 8, bool(flags & 0x2000)
    src, dst = ".".join(map(str, l3[12:16])), ".".join(map(str, l3[16:20]))
    ident = int.from_bytes(l3[4:6], "big")
    payload = l3[20:]
    out = []
    for off in range(0, len(payload), chunk):
        last = off + chunk >= len(payload)
        out.append(P.eth(P.ipv4(src, dst, l3[9], payload[off : off + chunk], df=False,
                                mf=more or not last, frag_offset=base + off, ident=ident),
                         dst=frame[0:6], src=frame[6:12]))
    return out


# A fragment whose L3 length is 1500 (the lab's MTU) does not fit the 28 bytes of redirect
# GRE: IPv4 without DF is split into pieces of (1500 - 28 - 20) & ~7 = 1448 payload bytes.
BIG = {  # what -> (family, which fragment, DF, expected reason of every output)
    "IPv4 first fragment, 1500 bytes": (4, 0, False, "redirected"),
    "IPv4 middle fragment, 1500 bytes": (4, 1, False, "redirected"),
    "IPv4 last fragment (MF clear)": (4, -1, False, "redirected"),
    "IPv4 fragment with DF set": (4, 1, True, "too_big"),
    "IPv6 fragment, 1496 bytes": (6, 0, False, "too_big"),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("what", list(BIG))
def test_redirect_that_would_exceed_the_mtu_is_split_or_too_big(what, engine):
    own = "198.18.0.1"
    family, k, df, reason = BIG[what]
    frags, to = _big_foreign(own, family, k, df=df)
    frame = frags[k]
    dp = DataPath(BLOBS[own], engine=engine)
    outs = dp.process([Packet(0, frame)], NOW)
    s = dp.stats()
    if reason == "too_big":
        assert [(o.action, o.reason) for o in outs] == [("drop", "too_big")]
        assert s["redirected"] == 0 and s["split_pieces"] == 0
        return
    want = [marked_gre(own, to, piece) for piece in _pieces(frame, 1448)]
    assert len(frame) - 14 + 28 > 1500 and len(want) > 1
    assert [(o.action, o.reason, o.seq, o.backend_index) for o in outs] == [("tx", "redirected", 0, -1)] * len(want)
    assert [o.data for o in outs] == want
    assert all(len(o.data) - 14 <= 1500 for o in outs)
    if k == 0:  # the first piece keeps the whole L4 header (UDP: 8 bytes) and the ports
        assert outs[0].data[14 + 28 + 20 : 14 + 28 + 28] == frame[34:42]
    assert (s["redirected"], s["split_pieces"], s["packets_in"]) == (1, len(want) - 1, 1)


def test_split_redirects_agree_between_engines():
    own = "198.18.0.1"
    frames = []
    for family, k, df, _ in BIG.values():
        frames += _big_foreign(own, family, k, df=df)[0]
    got = {e: run(BLOBS[own], frames, e) for e in ENGINES}
    assert got["c"] == got["python"]
    assert any(o.reason == "redirected" for o in got["c"])


@pytest.mark.parametrize("engine", ENGINES)
def test_full_size_fragments_via_a_non_owner_reassemble_to_the_datagram_at_the_owner(engine):
    """Two instances of one pool at MTU 1500: every 1500-byte fragment of a datagram
    reaches the instance that does not own it; it redirects the pieces, and what the owner
    forwards (to one backend) reassembles to the original datagram."""
    pool = ("198.18.0.1", "198.18.0.2")
    blobs = {own: build_tables(pool_config(own, pool)) for own in pool}
    for i in range(1, 200):
        client = f"198.51.100.{i}"
        frags = udp_fragments(client, VIP4_ANY, 5000, i, size=4000, piece=1480)
        to = owner(pool, blobs[pool[0]], frags[0])
        if to != pool[0]:
            break
    sender = DataPath(blobs[pool[0]], engine=engine)
    owner_dp = DataPath(blobs[to], engine=engine)
    redirects = sender.process([Packet(j, f) for j, f in enumerate(frags)], NOW)
    assert all(o.reason == "redirected" and len(o.data) - 14 <= 1500 for o in redirects)
    assert len(redirects) > len(frags)  # split
    outs = owner_dp.process([Packet(j, o.data) for j, o in enumerate(redirects)], NOW)
    outs += owner_dp.flush(NOW + 10**12)
    assert [o.reason for o in outs] == ["forward"] * len(redirects)
    assert len({o.backend_index for o in outs}) == 1
    payload = bytearray(4000 + 8)
    seen = 0
    for o in outs:
        d = o.data
        inner = next(x for x in range(34, len(d) - 20)
                     if d[x] == 0x45 and int.from_bytes(d[x + 2 : x + 4], "big") == len(d) - x
                     and d[x + 12 : x + 16] == bytes(map(int, client.split("."))))
        off = (int.from_bytes(d[inner + 6 : inner + 8], "big") & 0x1FFF) * 8
        chunk = d[inner + 20 :]
        payload[off : off + len(chunk)] = chunk
        seen += len(chunk)
    assert seen == len(payload)
    want = P.udp(5000, 53, bytes((i + j) & 0xFF for j in range(4000)), src=client, dst=VIP4_ANY)
    assert bytes(payload) == want
    assert sender.stats()["split_pieces"] == len(redirects) - len(frags)
    assert owner_dp.stats()["redirect_in"] == len(redirects)


def test_split_datagrams_reach_one_backend_exactly_once_across_two_instances():
    """Two C data paths of one pool, the fragments of 40 datagrams from 40 clients (IPv4
    and IPv6) dealt to them at random, in shuffled order: every fragment leaves encapsulated exactly once,
    toward the backend of its datagram, the same from whichever instance."""
    pool = ("198.18.0.1", "198.18.0.2")
    blobs = {own: build_tables(pool_config(own, pool)) for own in pool}
    dps = {own: DataPath(blobs[own], engine="c") for own in pool}
    rnd = random.Random(7)
    frames: dict[int, bytes] = {}
    dgram_of: dict[int, int] = {}
    inbox: dict[str, list[Packet]] = {own: [] for own in pool}
    seq = 0
    for d in range(1, 41):
        for f in datagram(4 if d % 2 else 6, d):
            frames[seq], dgram_of[seq] = f, d
            inbox[rnd.choice(pool)].append(Packet(seq, f))
            seq += 1
    for own in pool:
        rnd.shuffle(inbox[own])
    addr_of = {b"\xc6\x12\x00\x01": "198.18.0.1", b"\xc6\x12\x00\x02": "198.18.0.2"}
    forwarded: dict[int, list[Output]] = {}
    now = NOW
    for _round in range(4):  # a redirect takes one more round; never two
        nxt: dict[str, list[Packet]] = {own: [] for own in pool}
        for own in pool:
            for o in dps[own].process(inbox[own], now):
                assert o.action == "tx", (o.seq, o.reason)
                if o.reason == "redirected":
                    nxt[addr_of[o.data[30:34]]].append(Packet(o.seq, o.data))
                else:
                    forwarded.setdefault(o.seq, []).append(o)
        inbox = nxt
        now += 1_000_000
    assert not any(inbox.values())
    for own in pool:
        leftover = dps[own].flush(now + 10**12)
        assert leftover == []
    assert sorted(forwarded) == sorted(frames)
    backend_of: dict[int, set[bytes]] = {}
    for s, outs in forwarded.items():
        assert len(outs) == 1 and outs[0].reason == "forward"
        o = outs[0]
        dst = o.data[30:34] if o.data[12:14] == b"\x08\x00" else o.data[38:54]
        backend_of.setdefault(dgram_of[s], set()).add(dst)
        assert o.data.endswith(frames[s][14:])  # the fragment itself, unchanged, inside
    assert all(len(b) == 1 for b in backend_of.values())
    # both instances did redirect and receive: the split really happened
    stats = {own: dps[own].stats() for own in pool}
    assert all(s["redirected"] > 0 and s["redirect_in"] > 0 for s in stats.values())
    assert sum(s["redirected"] for s in stats.values()) == sum(s["redirect_in"] for s in stats.values())


def _steer(frame: bytes, workers: int = 8) -> tuple[int, int, int]:
    from maglev.native import ffi, lib

    h, fl = ffi.new("uint64_t *"), ffi.new("uint16_t *")
    k0, k1 = pool_config(POOL[0]).flow_hash_key
    w = lib.mg_steer_hash(frame, len(frame), k0, k1, workers, h, fl)
    return w, int(h[0]), int(fl[0])


@pytest.mark.parametrize("family", [4, 6])
def test_steering_sends_a_redirected_fragment_to_the_worker_of_its_datagram(family):
    """With several workers, a redirect must meet the other fragments of its datagram in
    one worker's fragment table: steering hashes it by its inner 3-tuple."""
    for i in range(1, 6):
        for frag in datagram(family, i):
            direct = _steer(frag)
            assert direct[2] & 0x0002  # MG_FRAME_F_FRAGMENT
            assert _steer(marked_gre(POOL[1], POOL[0], frag)) == direct
            # without the marker it is an ordinary GRE packet, steered by its outer header
            unmarked = _steer(marked_gre(POOL[1], POOL[0], frag, key=None))
            assert unmarked[1] != direct[1] and not unmarked[2] & 0x0002
