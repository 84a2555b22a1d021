"""RFC 7606 revised UPDATE error handling, table-driven.

Every attribute error RFC 7606 (and RFC 6793 6 / RFC 7607 / RFC 8092 for the attributes
it leaves to them) lists is one row: the bytes, the session kind (4-octet AS or not,
eBGP or iBGP) and the expected outcome (the counter keys, and whether the UPDATE's
routes are treated as withdrawn).  The same table is then sent by a scripted peer to a
live speaker: the session must stay Established, count every case, and keep working.
The errors that still reset the session are in test_messages.py (MALFORMED).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
import time

import pytest

from maglev.bgp import messages as m
from tests.bgp.test_session import established, run, speaker_config

H = b"\xff" * 16
ORIGIN = bytes.fromhex("40010100")
ASPATH = bytes.fromhex("400206 0201 0000fc00")  # [64512]: the scripted peer's own AS
NEXTHOP = bytes.fromhex("400304c6120002")
GOOD = ORIGIN + ASPATH + NEXTHOP
W, D = "treat-as-withdraw", "attribute-discard"


def attr(flags: int, code: int, value: bytes) -> bytes:
    if flags & 0x10:
        return struct.pack("!BBH", flags, code, len(value)) + value
    return struct.pack("!BBB", flags, code, len(value)) + value


def mp_reach6(flags: int = 0x80) -> bytes:
    # AFI 2 SAFI 1, next hop 2001:db8:18::2, NLRI 2001:db8:100::10/128
    v = bytes.fromhex("0002 01 10 20010db8001800000000000000000002 00 80 20010db8010000000000000000000010")
    return attr(flags, 14, v)


def nlri(i: int) -> bytes:
    return bytes([32, 198, 51, 100, i])  # 198.51.100.i/32


# (id, attributes, has classic NLRI, asn4, ebgp, expected keys, treat-as-withdraw)
CASES = [
    # ORIGIN (7.1)
    ("origin-length", bytes.fromhex("4001020000") + ASPATH + NEXTHOP, True, True, True, ["ORIGIN/length/" + W], True),
    ("origin-value", bytes.fromhex("40010103") + ASPATH + NEXTHOP, True, True, True, ["ORIGIN/value/" + W], True),
    ("origin-flags-optional", bytes.fromhex("c0010100") + ASPATH + NEXTHOP, True, True, True, ["ORIGIN/flags/" + W], True),
    ("origin-flags-partial", bytes.fromhex("60010100") + ASPATH + NEXTHOP, True, True, True, ["ORIGIN/flags/" + W], True),
    # AS_PATH (7.2)
    ("as-path-zero-segment", ORIGIN + bytes.fromhex("4002020200") + NEXTHOP, True, True, True, ["AS_PATH/value/" + W], True),
    ("as-path-overrun", ORIGIN + bytes.fromhex("400206 0202 0000fc00") + NEXTHOP, True, True, True, ["AS_PATH/value/" + W], True),
    ("as-path-flags", ORIGIN + bytes.fromhex("c00206 0201 0000fc00") + NEXTHOP, True, True, True, ["AS_PATH/flags/" + W], True),
    ("as-path-confed-ebgp", ORIGIN + bytes.fromhex("400206 0301 0000fde9") + NEXTHOP, True, True, True, ["AS_PATH/confed-from-ebgp/" + W], True),
    # NEXT_HOP (7.3)
    ("next-hop-length", ORIGIN + ASPATH + bytes.fromhex("400303c61200"), True, True, True, ["NEXT_HOP/length/" + W], True),
    ("next-hop-zero", ORIGIN + ASPATH + bytes.fromhex("40030400000000"), True, True, True, ["NEXT_HOP/value/" + W], True),
    ("next-hop-multicast", ORIGIN + ASPATH + bytes.fromhex("400304e0000001"), True, True, True, ["NEXT_HOP/value/" + W], True),
    ("next-hop-without-nlri", ORIGIN + ASPATH + bytes.fromhex("400303c61200") + mp_reach6(), False, True, True, ["NEXT_HOP/length/" + D], False),
    # MULTI_EXIT_DISC (7.4)
    ("med-length", GOOD + bytes.fromhex("8004020001"), True, True, True, ["MULTI_EXIT_DISC/length/" + W], True),
    ("med-flags", GOOD + bytes.fromhex("400404 00000001"), True, True, True, ["MULTI_EXIT_DISC/flags/" + W], True),
    # LOCAL_PREF (7.5)
    ("local-pref-ebgp", GOOD + bytes.fromhex("400504 00000064"), True, True, True, ["LOCAL_PREF/from-ebgp/" + D], False),
    ("local-pref-length-ibgp", ORIGIN + bytes.fromhex("400200") + NEXTHOP + bytes.fromhex("4005020064"), True, True, False, ["LOCAL_PREF/length/" + W], True),
    # ATOMIC_AGGREGATE (7.6)
    ("atomic-aggregate-length", GOOD + bytes.fromhex("40060100"), True, True, True, ["ATOMIC_AGGREGATE/length/" + D], False),
    ("atomic-aggregate-flags", GOOD + bytes.fromhex("c00600"), True, True, True, ["ATOMIC_AGGREGATE/flags/" + D], False),
    # AGGREGATOR (7.7, RFC 7607)
    ("aggregator-length", GOOD + bytes.fromhex("c00707 0000fc00 c61200"), True, True, True, ["AGGREGATOR/length/" + D], False),
    ("aggregator-2-octet-on-4-octet", GOOD + bytes.fromhex("c00706 fc00 c6120001"), True, True, True, ["AGGREGATOR/length/" + D], False),
    ("aggregator-as-0", GOOD + bytes.fromhex("c00708 00000000 c6120001"), True, True, True, ["AGGREGATOR/value/" + D], False),
    # COMMUNITIES (7.8)
    ("communities-length", GOOD + bytes.fromhex("c00803 fc0001"), True, True, True, ["COMMUNITIES/length/" + W], True),
    ("communities-empty", GOOD + bytes.fromhex("c00800"), True, True, True, ["COMMUNITIES/length/" + W], True),
    ("communities-flags", GOOD + bytes.fromhex("800804 fc000001"), True, True, True, ["COMMUNITIES/flags/" + W], True),
    # ORIGINATOR_ID (7.9), CLUSTER_LIST (7.10)
    ("originator-id-ibgp-length", ORIGIN + bytes.fromhex("400200") + NEXTHOP + bytes.fromhex("800903 c61200"), True, True, False, ["ORIGINATOR_ID/length/" + W], True),
    ("originator-id-ebgp", GOOD + bytes.fromhex("800904 c6120001"), True, True, True, ["ORIGINATOR_ID/from-ebgp/" + D], False),
    ("cluster-list-ibgp-length", ORIGIN + bytes.fromhex("400200") + NEXTHOP + bytes.fromhex("800a06 c6120001 0000"), True, True, False, ["CLUSTER_LIST/length/" + W], True),
    ("cluster-list-ebgp", GOOD + bytes.fromhex("800a04 c6120001"), True, True, True, ["CLUSTER_LIST/from-ebgp/" + D], False),
    # MP_REACH_NLRI / MP_UNREACH_NLRI flags (3(c); their value errors reset the session)
    ("mp-reach-flags", ORIGIN + ASPATH + mp_reach6(0xC0), False, True, True, ["MP_REACH_NLRI/flags/" + W], True),
    ("mp-unreach-flags", attr(0xC0, 15, bytes.fromhex("000201 80 20010db8010000000000000000000010")), False, True, True, ["MP_UNREACH_NLRI/flags/" + W], True),
    # Extended communities (7.14), IPv6 extended communities (7.15), large communities (RFC 8092)
    ("ext-communities-length", GOOD + bytes.fromhex("c01004 00020001"), True, True, True, ["EXTENDED_COMMUNITIES/length/" + W], True),
    ("ipv6-ext-communities-length", GOOD + attr(0xC0, 25, bytes(10)), True, True, True, ["IPV6_EXTENDED_COMMUNITIES/length/" + W], True),
    ("large-communities-length", GOOD + attr(0xC0, 32, bytes(8)), True, True, True, ["LARGE_COMMUNITIES/length/" + W], True),
    # AS4_PATH / AS4_AGGREGATOR (RFC 6793 6)
    ("as4-path-on-4-octet", GOOD + bytes.fromhex("c01106 0201 fa56ea01"), True, True, True, ["AS4_PATH/from-4-octet-speaker/" + D], False),
    ("as4-path-malformed", ORIGIN + bytes.fromhex("400204 0201 fc00") + NEXTHOP + bytes.fromhex("c0110202 00"), True, False, True, ["AS4_PATH/value/" + D], False),
    ("as4-aggregator-length", ORIGIN + bytes.fromhex("400204 0201 fc00") + NEXTHOP + bytes.fromhex("c01206 fa56ea01 c612"), True, False, True, ["AS4_AGGREGATOR/length/" + D], False),
    ("as4-aggregator-on-4-octet", GOOD + bytes.fromhex("c01208 fa56ea01 c6120001"), True, True, True, ["AS4_AGGREGATOR/from-4-octet-speaker/" + D], False),
    # Duplicates (3(g)): all but the first discarded
    ("duplicate-origin", GOOD + ORIGIN, True, True, True, ["ORIGIN/duplicate/" + D], False),
    ("duplicate-med", GOOD + bytes.fromhex("80040400000001 80040400000002"), True, True, True, ["MULTI_EXIT_DISC/duplicate/" + D], False),
    # Missing well-known attributes (3(d))
    ("missing-origin", ASPATH + NEXTHOP, True, True, True, ["ORIGIN/missing/" + W], True),
    ("missing-as-path", ORIGIN + NEXTHOP, True, True, True, ["AS_PATH/missing/" + W], True),
    ("missing-next-hop", ORIGIN + ASPATH, True, True, True, ["NEXT_HOP/missing/" + W], True),
    # Attribute lengths that do not add up inside the attribute list (section 4)
    ("attribute-overruns-list", ORIGIN + ASPATH + bytes.fromhex("400308c6120002"), True, True, True, ["NEXT_HOP/overrun/" + W], True),
    ("attribute-header-truncated", GOOD + b"\x40\x05", True, True, True, ["attributes/overrun/" + W], True),
    ("extended-header-truncated", GOOD + b"\x50\x05\x00", True, True, True, ["attributes/overrun/" + W], True),
    # Several errors: the most severe wins, each is counted
    ("discard-and-withdraw", bytes.fromhex("40010103") + ASPATH + NEXTHOP + bytes.fromhex("40060100"), True, True, True, ["ORIGIN/value/" + W, "ATOMIC_AGGREGATE/length/" + D], True),
]


def build(attrs: bytes, with_nlri: bool, i: int = 1) -> bytes:
    tail = nlri(i) if with_nlri else b""
    body = b"\x00\x00" + struct.pack("!H", len(attrs)) + attrs + tail
    return H + struct.pack("!HB", 19 + len(body), 2) + body


@pytest.mark.parametrize(("attrs", "with_nlri", "asn4", "ebgp", "keys", "withdraw"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_update_error_table(attrs, with_nlri, asn4, ebgp, keys, withdraw):
    u = m.parse_message(build(attrs, with_nlri), asn4=asn4, ebgp=ebgp)
    assert isinstance(u, m.Update)
    assert [e.key for e in u.errors] == keys, u.errors
    assert u.treat_as_withdraw == withdraw
    if withdraw:
        assert u.announced() == ()
        assert set(u.withdrawn_all()) >= set(u.nlri)
    elif with_nlri:
        assert u.announced() == (ipaddress.ip_network("198.51.100.1/32"),)
    # The attributes that had errors are not in the parsed message; the rest are.
    bad = {e.type_code for e in u.errors if e.kind not in ("duplicate", "missing")}
    assert not bad & {a.TYPE for a in u.attributes if a.TYPE not in (m.A_MP_REACH, m.A_MP_UNREACH)}


def test_every_rule_in_the_table_has_a_case():
    covered = {k.split("/")[0] for c in CASES for k in c[5]}
    assert {r.name for r in m.ATTR_RULES.values()} <= covered, sorted({r.name for r in m.ATTR_RULES.values()} - covered)


def test_a_peer_sending_every_malformed_update_keeps_the_session(caplog):
    """The scripted peer sends the whole table, each case followed by a valid UPDATE for
    a fresh prefix.  The session stays Established (no NOTIFICATION, no close), every
    error is counted in the speaker's state, treat-as-withdraw removes the prefix it
    carried, and each kind of error is logged once."""

    cases = [c for c in CASES if c[3] and c[4]]  # the live session is 4-octet eBGP

    async def go():
        async with established(speaker_config()) as (sp, peer, _):
            for i, (_, attrs, with_nlri, *_rest) in enumerate(cases, start=1):
                # First announce the prefix the bad UPDATE is about, so a withdraw shows.
                for u in m.build_announce([ipaddress.ip_network(f"198.51.100.{i}/32")], local_asn=64512, ebgp=True, asn4=True, next_hop="127.0.0.1"):
                    await peer.send(u)
                await peer.send(build(attrs, with_nlri, i))
            for u in m.build_announce([ipaddress.ip_network("192.0.2.1/32")], local_asn=64512, ebgp=True, asn4=True, next_hop="127.0.0.1"):
                await peer.send(u)
            want = len(cases) * 2 + 1
            deadline = time.monotonic() + 10
            while sp.peers_state()[0]["updates_in"] < want:
                assert time.monotonic() < deadline, sp.peers_state()[0]
                await asyncio.sleep(0.02)
            st = sp.peers_state()[0]
            assert st["state"] == "Established" and st["notifications_out"] == 0, st
            expected: dict[str, int] = {}
            for c in cases:
                for k in c[5]:
                    expected[k] = expected.get(k, 0) + 1
            assert st["update_errors"] == dict(sorted(expected.items()))
            assert st["updates_treat_as_withdraw"] == sum(c[6] for c in cases)
            assert st["attributes_discarded"] == sum(v for k, v in expected.items() if k.endswith(D))
            # Withdrawn: the prefixes whose bad UPDATE was treat-as-withdraw; still there:
            # the others, plus the last good one.
            gone = {i for i, c in enumerate(cases, start=1) if c[6] and c[2]}
            assert st["received"] == len(cases) - len(gone) + 1
            # Still a working session: an announcement of ours goes through.
            sp.announce("203.0.113.10/32")
            u = await peer.expect(m.Update)
            assert u.announced() == (ipaddress.ip_network("203.0.113.10/32"),)
            await peer.close()

    with caplog.at_level(logging.WARNING, logger="maglev.bgp"):
        run(go())
    lines = [r.getMessage() for r in caplog.records if "UPDATE error" in r.getMessage()]
    kinds = {k for c in cases for k in c[5]}
    assert len(lines) == len(kinds), lines  # once per kind, however often it happened


def test_repeated_errors_are_logged_once_per_interval(caplog):
    async def go():
        async with established(speaker_config()) as (sp, peer, _):
            bad = build(bytes.fromhex("4001020000") + ASPATH + NEXTHOP, True)
            for _ in range(50):
                await peer.send(bad)
            deadline = time.monotonic() + 10
            while sp.peers_state()[0]["updates_treat_as_withdraw"] < 50:
                assert time.monotonic() < deadline, sp.peers_state()[0]
                await asyncio.sleep(0.02)
            assert sp.peers_state()[0]["update_errors"] == {"ORIGIN/length/" + W: 50}
            await peer.close()

    with caplog.at_level(logging.WARNING, logger="maglev.bgp"):
        run(go())
    assert len([r for r in caplog.records if "UPDATE error" in r.getMessage()]) == 1

