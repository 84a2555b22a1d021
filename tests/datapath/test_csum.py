"""The one Internet checksum of each language agree: ``mg_csum.h`` and ``ref_csum.py``."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from maglev.datapath.ref_csum import checksum, csum_add, csum_fold
from maglev.native import ffi, lib


def _c_add(s: int, data: bytes) -> int:
    return int(lib.mg_csum_add(s, ffi.from_buffer(data), len(data)))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFFFFFFFF // 2), st.binary(max_size=300), st.binary(max_size=41))
def test_c_and_python_agree_also_chained(s, a, b):
    a = a[: len(a) & ~1]  # chained pieces are even except the last (mg_csum.h)
    assert _c_add(s, a) == csum_add(s, a)
    assert int(lib.mg_csum_fold(_c_add(_c_add(s, a), b))) == csum_fold(csum_add(csum_add(s, a), b))
    assert int(lib.mg_ip_checksum(ffi.from_buffer(a + b), len(a + b))) == checksum(a + b)


def test_a_header_with_its_checksum_sums_to_zero():
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    c = checksum(hdr)
    assert c == 0xB861  # a well-known worked IPv4 header example
    fixed = hdr[:10] + c.to_bytes(2, "big") + hdr[12:]
    assert checksum(fixed) == 0 and int(lib.mg_ip_checksum(ffi.from_buffer(fixed), 20)) == 0
