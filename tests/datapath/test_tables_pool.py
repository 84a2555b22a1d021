"""The maglev pool in the tables blob (format version 3, mg_tables.h): canonical order,
this instance's index, and strict validation in C and Python."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from maglev.datapath.tables import HDR, build_tables, read_tables
from maglev.native import ffi, lib

from .dp_helpers import c_validate, config
from .redirect_helpers import POOL, pool_config

OFF = {name: ffi.offsetof("struct mg_tables_header", name)
       for name in ("pool_off", "n_pool", "pool_self", "pool_family")}


def test_header_layout_matches_c():
    assert HDR.size == ffi.sizeof("struct mg_tables_header") == 160
    assert lib.MG_TABLES_VERSION == 5  # 5: VIP matching across clusters (mg_tables.h)


@pytest.mark.parametrize("own", POOL)
def test_pool_is_sorted_the_same_everywhere_with_own_index(own):
    view = read_tables(build_tables(pool_config(own)))
    members = sorted(ipaddress.ip_address(a).packed + bytes(12) for a in POOL)
    assert view.pool == tuple(members)
    assert view.header["n_pool"] == 3 and view.header["pool_family"] == 4
    assert view.pool[view.header["pool_self"]][:4] == ipaddress.ip_address(own).packed
    assert c_validate(build_tables(pool_config(own))) == 0


def test_no_pool_is_empty_and_valid():
    blob = build_tables(config())
    view = read_tables(blob)
    assert view.pool == () and view.header["n_pool"] == 0
    assert c_validate(blob) == 0


def _patch(blob: bytes, field: str, fmt: str, value: int) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, OFF[field], value)
    return bytes(b)


def _swap_members(blob: bytes) -> bytes:
    b = bytearray(blob)
    off = read_tables(blob).header["pool_off"]
    b[off : off + 16], b[off + 16 : off + 32] = b[off + 16 : off + 32], b[off : off + 16]
    return bytes(b)


def _dup_member(blob: bytes) -> bytes:
    b = bytearray(blob)
    off = read_tables(blob).header["pool_off"]
    b[off + 16 : off + 32] = b[off : off + 16]
    return bytes(b)


BAD = {
    "pool index out of range": lambda b: _patch(b, "pool_self", "=H", 3),
    "pool index names another member": lambda b: _patch(
        b, "pool_self", "=H", (read_tables(b).header["pool_self"] + 1) % 3),
    "family not 4 or 6": lambda b: _patch(b, "pool_family", "=B", 5),
    "IPv6 pool without source_ipv6 match": lambda b: _patch(b, "pool_family", "=B", 6),
    "too many members": lambda b: _patch(b, "n_pool", "=H", 65),
    "pool beyond the end": lambda b: _patch(b, "pool_off", "=I", len(b) - 8),
    "members not sorted": _swap_members,
    "duplicate member": _dup_member,
}


@pytest.mark.parametrize("what", list(BAD))
def test_bad_pool_rejected_by_c_and_python(what):
    blob = BAD[what](build_tables(pool_config("198.18.0.2")))
    assert c_validate(blob) < 0, what
    with pytest.raises(Exception, match="pool"):
        read_tables(blob)


def test_pool_fields_without_a_pool_rejected():
    blob = _patch(build_tables(config()), "pool_self", "=H", 1)
    assert c_validate(blob) < 0
    with pytest.raises(Exception, match="pool"):
        read_tables(blob)
