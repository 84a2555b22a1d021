"""Tables blob: layout agreed with C, validation, VIP lookup order, health and ids."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

import pytest

from maglev import config as cfg
from maglev.datapath.tables import (
    BACKEND,
    HDR,
    VIP,
    backend_id,
    build_tables,
    port_be,
    read_tables,
)
from maglev.errors import ConfigError, PacketError
from maglev.native import ffi, lib

from .dp_helpers import DOWN, VIP4, VIP4_ANY, VIP4_DOWN, c_validate, config


def c_lookup(blob: bytes, addr: str, port: int, proto: int) -> int:
    buf = ffi.new("uint64_t[]", (len(blob) + 7) // 8)
    ffi.memmove(buf, blob, len(blob))
    a = ipaddress.ip_address(addr).packed.ljust(16, b"\0")
    return lib.mg_tables_lookup_vip(buf, a, port_be(port), proto)


def test_struct_sizes_match_c():
    assert HDR.size == ffi.sizeof("struct mg_tables_header")
    assert VIP.size == ffi.sizeof("struct mg_vip")
    assert BACKEND.size == ffi.sizeof("struct mg_backend")
    assert ffi.offsetof("struct mg_tables_header", "mtu") == 94
    assert ffi.offsetof("struct mg_vip", "table_off") == 32


def test_built_blob_validates_in_c_and_python():
    blob = build_tables(config(), DOWN)
    assert c_validate(blob) == 0
    view = read_tables(blob)
    assert view.header["n_vips"] == len(config().vips)
    assert view.header["mtu"] == 1500 and view.header["tcp_timeout_ms"] == 300_000


def test_vip_lookup_exact_then_port_zero_in_c():
    blob = build_tables(config())
    assert c_lookup(blob, VIP4, 80, 6) == 0
    assert c_lookup(blob, VIP4, 81, 6) == -1  # port-specific VIP: no fallback for other ports
    assert c_lookup(blob, VIP4, 80, 17) == -1  # protocol must match
    assert c_lookup(blob, VIP4_ANY, 5000, 17) == 1  # port 0 = every port
    assert c_lookup(blob, VIP4_ANY, 5000, 6) == 2
    assert c_lookup(blob, "203.0.113.99", 80, 6) == -1


def test_down_backend_out_of_table_but_present():
    view = read_tables(build_tables(config(), DOWN))
    vi = next(i for i, v in enumerate(view.vips) if v.address == VIP4_DOWN)
    v = view.vips[vi]
    assert v.n_healthy == 0
    assert set(view.maglev(vi)) == {-1}
    b = view.backends[v.backend_first]
    assert b.address == "198.18.5.1" and not b.healthy


def test_maglev_entries_are_global_indices_of_the_vips_backends():
    view = read_tables(build_tables(config()))
    for vi, v in enumerate(view.vips):
        entries = set(view.maglev(vi)) - {-1}
        assert entries <= set(range(v.backend_first, v.backend_first + v.backend_count))


def test_backend_id_is_stable_and_per_vip():
    a = backend_id(f"{VIP4}:80/tcp", "198.18.1.1")
    assert a == backend_id(f"{VIP4}:80/tcp", "198.18.1.1")
    assert a != backend_id(f"{VIP4_ANY}:0/udp", "198.18.1.1")


def test_generation_is_a_content_id_unless_given():
    a, b = build_tables(config()), build_tables(config())
    assert a == b
    assert read_tables(a).header["generation"] != read_tables(build_tables(config(), DOWN)).header["generation"]
    assert read_tables(build_tables(config(), generation=7)).header["generation"] == 7


def test_weight_zero_backend_drains():
    c = cfg.loads(f"""
[instance]
source_ipv4 = "198.18.0.1"
[[vip]]
address = "{VIP4}"
port = 80
table_size = 251
[[vip.backend]]
address = "198.18.1.1"
weight = 0
[[vip.backend]]
address = "198.18.1.2"
""")
    view = read_tables(build_tables(c))
    assert set(view.maglev(0)) == {1}
    assert view.backends[0].healthy  # still healthy: established flows continue


def test_l2_backend_without_mac_is_a_config_error():
    text = f"""
[[vip]]
address = "{VIP4}"
port = 80
encap = "l2"
[[vip.backend]]
address = "203.0.113.5"
"""
    with pytest.raises(ConfigError, match=r"vip\[0\].backend\[0\].mac: required"):
        cfg.loads(text)  # the loader says so (session 8), as the build always did
    c = cfg.loads(text.replace('address = "203.0.113.5"', 'address = "203.0.113.5"\nmac = "02:00:00:00:00:05"'))
    vip = dataclasses.replace(c.vips[0], backends=tuple(dataclasses.replace(b, mac="") for b in c.vips[0].backends))
    with pytest.raises(ConfigError, match=r"vip\[0\].backend\[0\].mac: required"):
        build_tables(dataclasses.replace(c, vips=(vip,)))  # a Config made in code, not loaded


@pytest.mark.parametrize(
    "what,patch",
    [
        ("magic", lambda b: b"XXXX" + b[4:]),
        ("version", lambda b: b[:4] + struct.pack("=H", 9) + b[6:]),
        ("total size", lambda b: b[:8] + struct.pack("=Q", len(b) + 8) + b[16:]),
        ("vip offset", lambda b: b[:48] + struct.pack("=I", len(b)) + b[52:]),
        ("index offset", lambda b: b[:56] + struct.pack("=I", len(b)) + b[60:]),
        ("index bits", lambda b: b[:60] + struct.pack("=I", 30) + b[64:]),
    ],
)
def test_corrupt_headers_rejected(what, patch):
    blob = patch(build_tables(config()))
    assert c_validate(blob) < 0, what
    with pytest.raises(PacketError):
        read_tables(blob)


def test_maglev_entry_out_of_range_rejected_by_c():
    blob = bytearray(build_tables(config()))
    view = read_tables(bytes(blob))
    off = view.vips[0].table_off
    blob[off : off + 4] = struct.pack("=i", 9999)
    assert c_validate(bytes(blob)) < 0
    with pytest.raises(PacketError, match="Maglev entry"):
        read_tables(bytes(blob))


def test_truncated_blob_rejected():
    blob = build_tables(config())
    assert c_validate(blob[:100]) < 0
    with pytest.raises(PacketError):
        read_tables(blob[:100])


def _idmap(view) -> tuple[int, int]:
    return view.header["idmap_off"], 1 << view.header["idmap_bits"]


def test_backend_ids_are_64_bit_and_found_through_the_id_map():
    view = read_tables(build_tables(config(), DOWN))
    assert any(b.id >> 32 for b in view.backends)  # the full 64-bit identity is stored
    for i, b in enumerate(view.backends):
        assert view.find_backend(b.id, b.vip_index) == i


@pytest.mark.parametrize("what", ["entry beyond the backends", "entry pointing at the wrong backend"])
def test_corrupt_id_map_rejected(what):
    blob = bytearray(build_tables(config()))
    view = read_tables(bytes(blob))
    off, n = _idmap(view)
    slots = list(struct.unpack_from(f"={n}I", blob, off))
    used = [i for i, e in enumerate(slots) if e]
    if what == "entry beyond the backends":
        slots[used[0]] = len(view.backends) + 1
    else:  # two slots swapped: each backend's probe now finds another id first
        slots[used[0]], slots[used[1]] = slots[used[1]], slots[used[0]]
    struct.pack_into(f"={n}I", blob, off, *slots)
    assert c_validate(bytes(blob)) < 0
    with pytest.raises(PacketError):
        read_tables(bytes(blob))
