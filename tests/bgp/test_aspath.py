"""AS_PATH and AS4_PATH in both negotiation states (RFC 4271 4.3, RFC 6793, RFC 7606 7.2).

Without the 4-octet capability on both sides AS_PATH carries 2-octet ASNs, with AS_TRANS
(23456) standing in for each ASN above 65535, and AS4_PATH (type 17, optional transitive)
carries the real ones; the receiver merges the two (RFC 6793 4.2.3).  With it, AS_PATH is
4-octet and an AS4_PATH is discarded (RFC 6793 6).  Each case below spells its bytes.
"""

from __future__ import annotations

import struct

import pytest

from maglev.bgp import messages as m

H = b"\xff" * 16
ORIGIN = bytes.fromhex("40010100")
NEXTHOP = bytes.fromhex("400304c6120002")
NLRI = bytes.fromhex("20cb00710a")  # 203.0.113.10/32
T = m.AS_TRANS


def update(attrs: bytes, nlri: bytes = NLRI) -> bytes:
    body = b"\x00\x00" + struct.pack("!H", len(attrs)) + attrs + nlri
    return H + struct.pack("!HB", 19 + len(body), 2) + body


def seg(seg_type: int, asns: list[int], width: int) -> bytes:
    return bytes([seg_type, len(asns)]) + b"".join(a.to_bytes(width, "big") for a in asns)


def as_path(*segments: bytes, flags: int = 0x40) -> bytes:
    v = b"".join(segments)
    return bytes([flags, 2, len(v)]) + v


def as4_path(*segments: bytes, flags: int = 0xC0) -> bytes:
    v = b"".join(segments)
    return bytes([flags, 17, len(v)]) + v


def parse(attrs: bytes, asn4: bool, ebgp: bool = True) -> m.Update:
    return m.Update.parse(update(ORIGIN + attrs + NEXTHOP), asn4=asn4, ebgp=ebgp)


SEQ, SET, CSEQ, CSET = m.AS_SEQUENCE, m.AS_SET, m.AS_CONFED_SEQUENCE, m.AS_CONFED_SET


# ----------------------------------------------------------------------------- well-formed paths


def test_four_octet_session_reads_four_octet_asns():
    u = parse(as_path(seg(SEQ, [4200000001, 64512], 4)), asn4=True)
    assert not u.errors
    assert u.full_as_path() == ((SEQ, (4200000001, 64512)),)


def test_two_octet_session_reads_two_octet_asns():
    u = parse(as_path(seg(SEQ, [64512, 64496], 2)), asn4=False)
    assert not u.errors
    assert u.full_as_path() == ((SEQ, (64512, 64496)),)


def test_two_octet_peer_as_trans_is_replaced_from_as4_path():
    # A 2-octet peer (AS 64512) passes on a route that 4-octet AS 4200000001 originated:
    # AS_PATH [64512 23456], AS4_PATH [4200000001].  AS_PATH counts 2, AS4_PATH 1, so the
    # leading 1 ASN of AS_PATH stays and AS4_PATH follows (RFC 6793 4.2.3).
    u = parse(as_path(seg(SEQ, [64512, T], 2)) + as4_path(seg(SEQ, [4200000001], 4)), asn4=False)
    assert not u.errors
    assert u.full_as_path() == ((SEQ, (64512, 4200000001)),)


def test_as4_path_covering_the_whole_path():
    u = parse(as_path(seg(SEQ, [T, T], 2)) + as4_path(seg(SEQ, [4200000001, 4200000002], 4)), asn4=False)
    assert u.full_as_path() == ((SEQ, (4200000001, 4200000002)),)


def test_as4_path_longer_than_as_path_is_ignored():
    # A 2-octet speaker dropped ASNs (or AS4_PATH is bogus): AS_PATH is the path.
    u = parse(as_path(seg(SEQ, [64512], 2)) + as4_path(seg(SEQ, [4200000001, 4200000002], 4)), asn4=False)
    assert u.full_as_path() == ((SEQ, (64512,)),)


def test_as_set_counts_as_one_when_merging():
    # AS_PATH [64512 {64496 64497}] counts 2; AS4_PATH [{4200000001 64497}] counts 1.
    u = parse(
        as_path(seg(SEQ, [64512], 2), seg(SET, [T, 64497], 2)) + as4_path(seg(SET, [4200000001, 64497], 4)),
        asn4=False,
    )
    assert u.full_as_path() == ((SEQ, (64512,)), (SET, (4200000001, 64497)))


def test_aggregator_with_a_real_asn_makes_as4_path_ignored():
    agg = bytes.fromhex("c00706") + struct.pack("!H", 64500) + bytes([198, 18, 0, 9])
    u = parse(as_path(seg(SEQ, [64512, T], 2)) + agg + as4_path(seg(SEQ, [4200000001], 4)), asn4=False)
    assert u.full_as_path() == ((SEQ, (64512, T)),)
    agg_trans = bytes.fromhex("c00706") + struct.pack("!H", T) + bytes([198, 18, 0, 9])
    u = parse(as_path(seg(SEQ, [64512, T], 2)) + agg_trans + as4_path(seg(SEQ, [4200000001], 4)), asn4=False)
    assert u.full_as_path() == ((SEQ, (64512, 4200000001)),)


def test_leading_confederation_segments_stay_in_front():
    u = parse(
        as_path(seg(CSEQ, [65001], 2), seg(SEQ, [64512, T], 2)) + as4_path(seg(SEQ, [4200000001], 4)),
        asn4=False,
        ebgp=False,
    )
    assert not u.errors
    assert u.full_as_path() == ((CSEQ, (65001,)), (SEQ, (64512, 4200000001)))


def test_as4_path_on_a_four_octet_session_is_discarded():
    # RFC 6793 6: a NEW speaker never sends AS4_PATH to a NEW speaker; one that arrives
    # is discarded and the UPDATE processed.
    u = parse(as_path(seg(SEQ, [4200000001], 4)) + as4_path(seg(SEQ, [4200000099], 4)), asn4=True)
    assert [e.key for e in u.errors] == ["AS4_PATH/from-4-octet-speaker/attribute-discard"]
    assert u.get(m.A_AS4_PATH) is None and not u.treat_as_withdraw
    assert u.full_as_path() == ((SEQ, (4200000001,)),)
    assert u.announced()


def test_as4_path_confederation_segments_are_dropped():
    u = parse(as_path(seg(SEQ, [T], 2)) + as4_path(seg(CSEQ, [65001], 4), seg(SEQ, [4200000001], 4)), asn4=False)
    assert [e.key for e in u.errors] == ["AS4_PATH/confed-segments/attribute-discard"]
    assert u.get(m.A_AS4_PATH) == m.As4Path(((SEQ, (4200000001,)),))
    assert u.full_as_path() == ((SEQ, (4200000001,)),)
    assert u.announced()


def test_our_own_announcement_to_a_two_octet_peer_reads_back():
    [u] = m.build_announce([m.Update.parse(update(ORIGIN + as_path() + NEXTHOP)).nlri[0]],
                           local_asn=4200000001, ebgp=True, asn4=False, next_hop="198.18.0.2")
    back = m.Update.parse(bytes(u), asn4=False)
    assert back.get(m.A_AS_PATH) == m.AsPath(((SEQ, (T,)),), asn4=False)
    assert back.full_as_path() == ((SEQ, (4200000001,)),)


def test_empty_as_path_is_fine_for_ibgp():
    u = parse(as_path(), asn4=True, ebgp=False)
    assert not u.errors and u.full_as_path() == ()


# ----------------------------------------------------------------------------- malformed AS_PATH -> treat-as-withdraw

BAD_AS_PATHS = [
    # (description, AS_PATH value, asn4)
    ("zero-length AS_SEQUENCE", bytes([SEQ, 0]), True),
    ("zero-length AS_SET after a good segment", seg(SEQ, [64512], 4) + bytes([SET, 0]), True),
    ("segment type 0", seg(0, [64512], 4), True),
    ("segment type 5", seg(5, [64512], 4), True),
    ("segment overruns (count 2, one ASN)", bytes([SEQ, 2]) + (64512).to_bytes(4, "big"), True),
    ("one octet left after the last segment", seg(SEQ, [64512], 4) + b"\x02", True),
    ("2-octet ASNs read on a 4-octet session", seg(SEQ, [64512, 64513], 2), True),
    ("4-octet ASNs read on a 2-octet session (length not a multiple)", bytes([SEQ, 1]) + (4200000001).to_bytes(4, "big"), False),
    ("AS 0 (RFC 7607)", seg(SEQ, [64512, 0], 4), True),
    ("AS 0 on a 2-octet session", seg(SEQ, [0], 2), False),
]


@pytest.mark.parametrize(("value", "asn4"), [c[1:] for c in BAD_AS_PATHS], ids=[c[0] for c in BAD_AS_PATHS])
def test_malformed_as_path_is_treat_as_withdraw(value, asn4):
    u = parse(bytes([0x40, 2, len(value)]) + value, asn4=asn4)
    assert [e.key for e in u.errors] == ["AS_PATH/value/treat-as-withdraw"], u.errors
    assert u.treat_as_withdraw and u.announced() == ()
    assert [str(p) for p in u.withdrawn_all()] == ["203.0.113.10/32"]


def test_confederation_segments_from_an_external_peer_are_malformed():
    u = parse(as_path(seg(CSEQ, [65001], 4), seg(SEQ, [64512], 4)), asn4=True, ebgp=True)
    assert [e.key for e in u.errors] == ["AS_PATH/confed-from-ebgp/treat-as-withdraw"]
    u = parse(as_path(seg(CSET, [65001, 65002], 4)), asn4=True, ebgp=False)
    assert not u.errors


BAD_AS4_PATHS = [
    ("zero-length segment", bytes([SEQ, 0])),
    ("segment overruns", bytes([SEQ, 3]) + bytes(8)),
    ("2-octet ASNs", seg(SEQ, [64512, 64513], 2) + b"\x00"),
    ("AS 0", seg(SEQ, [0], 4)),
]


@pytest.mark.parametrize("value", [c[1] for c in BAD_AS4_PATHS], ids=[c[0] for c in BAD_AS4_PATHS])
def test_malformed_as4_path_is_discarded_and_as_path_used(value):
    u = parse(as_path(seg(SEQ, [64512, T], 2)) + bytes([0xC0, 17, len(value)]) + value, asn4=False)
    assert [e.key for e in u.errors] == ["AS4_PATH/value/attribute-discard"], u.errors
    assert not u.treat_as_withdraw and u.announced()
    assert u.full_as_path() == ((SEQ, (64512, T)),)
