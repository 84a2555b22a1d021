"""cffi binding of the hash and Maglev-table kernels (``mg_hash.h``, ``mg_maglev.h``)."""

from __future__ import annotations

from collections.abc import Sequence

from maglev.native import check, ffi, lib


def siphash13(k0: int, k1: int, data: bytes) -> int:
    return int(lib.mg_siphash13(k0, k1, data, len(data)))


def offset_skip(m: int, name: bytes) -> tuple[int, int]:
    off = ffi.new("uint32_t *")
    skip = ffi.new("uint32_t *")
    check(lib.mg_maglev_offset_skip(m, name, len(name), off, skip), "maglev offset/skip")
    return int(off[0]), int(skip[0])


def populate_into(
    m: int, names: Sequence[bytes], weights: Sequence[int], table, counts
) -> None:
    """Fill the cffi ``int32_t[m]`` ``table`` and ``uint32_t[n]`` ``counts`` in place."""
    n = len(names)
    offs = ffi.new("uint32_t[]", n + 1)
    acc = 0
    for i, name in enumerate(names):
        offs[i] = acc
        acc += len(name)
    offs[n] = acc
    blob = b"".join(names)
    w = ffi.new("uint32_t[]", list(weights))
    check(lib.mg_maglev_build(m, n, blob, offs, w, table, counts), "maglev table build")


def populate(m: int, names: Sequence[bytes], weights: Sequence[int]) -> tuple[list[int], list[int]]:
    table = ffi.new("int32_t[]", m)
    counts = ffi.new("uint32_t[]", max(len(names), 1))
    populate_into(m, names, weights, table, counts)
    return ffi.unpack(table, m), ffi.unpack(counts, len(names))
