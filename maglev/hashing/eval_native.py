"""cffi binding of the evaluation kernels (``mg_eval.h``): Karger and Rendezvous table
fills, entry counts and table differences.  Tables are ``array('i')`` (int32)."""

from __future__ import annotations

import errno
from array import array
from collections.abc import Sequence

from maglev.native import check, ffi, lib

NAME_MAX = int(lib.MG_EVAL_NAME_MAX)


class Names:
    """Backend names packed once for repeated C calls (blob + offsets)."""

    def __init__(self, names: Sequence[bytes]):
        self.n = len(names)
        offs = [0]
        for name in names:
            offs.append(offs[-1] + len(name))
        self._blob = ffi.new("uint8_t[]", b"".join(names) or b"\0")
        self._offs = ffi.new("uint32_t[]", offs)

    def args(self) -> tuple:
        return self.n, self._blob, self._offs


def _alive_arg(n: int, alive: Sequence[bool] | None):
    if alive is None:
        return ffi.NULL
    if len(alive) != n:
        raise ValueError(f"alive has {len(alive)} flags for {n} backends")
    return ffi.new("uint8_t[]", [1 if a else 0 for a in alive])


class KargerRing:
    """The Karger ring of a backend set (``vnodes`` points per backend), built once;
    :meth:`fill` makes tables for any subset of alive backends."""

    def __init__(self, names: Names, vnodes: int):
        n, blob, offs = names.args()
        self.n = n
        self.count = n * vnodes
        if self.count > int(lib.MG_EVAL_MAX_POINTS):
            check(-errno.E2BIG, "karger ring")
        self._ring = ffi.new("struct mg_eval_point[]", max(self.count, 1))
        self._start = ffi.new("uint32_t[]", int(lib.MG_EVAL_RING_INDEX))
        check(lib.mg_eval_karger_ring(n, blob, offs, vnodes, self._ring, self._start), "karger ring")

    def fill(self, m: int, alive: Sequence[bool] | None = None) -> array:
        table = array("i", bytes(4 * m))
        buf = ffi.from_buffer("int32_t[]", table)
        rc = lib.mg_eval_karger_lookup(
            m, self._ring, self.count, self._start, _alive_arg(self.n, alive), buf
        )
        check(rc, "karger fill")
        return table


def karger_fill(
    m: int, names: Names, vnodes: int, alive: Sequence[bool] | None = None
) -> array:
    return KargerRing(names, vnodes).fill(m, alive)


def rendezvous_fill(m: int, names: Names, alive: Sequence[bool] | None = None) -> array:
    table = array("i", bytes(4 * m))
    n, blob, offs = names.args()
    buf = ffi.from_buffer("int32_t[]", table)
    check(lib.mg_eval_rendezvous_fill(m, n, blob, offs, _alive_arg(n, alive), buf), "rendezvous fill")
    return table


class RendezvousTop:
    """Every slot's ``depth`` best-scoring backends, computed once (one full pass);
    :meth:`fill` then builds the table for any subset of alive backends in O(m * depth),
    identical to :func:`rendezvous_fill` (slots whose candidates all failed are
    recomputed in full; ``last_rescans`` counts them)."""

    def __init__(self, m: int, names: Names, depth: int = 8):
        n, blob, offs = names.args()
        self.m, self.depth, self._names = m, depth, names
        self._top = ffi.new("int32_t[]", m * depth)
        check(lib.mg_eval_rendezvous_top(m, n, blob, offs, depth, self._top), "rendezvous top")
        self.last_rescans = 0

    def fill(self, alive: Sequence[bool] | None = None) -> array:
        table = array("i", bytes(4 * self.m))
        n, blob, offs = self._names.args()
        buf = ffi.from_buffer("int32_t[]", table)
        rc = lib.mg_eval_rendezvous_pick(
            self.m, n, blob, offs, self.depth, self._top, _alive_arg(n, alive), buf
        )
        self.last_rescans = check(rc, "rendezvous fill")
        return table


def count(table: array, n: int) -> tuple[list[int], int]:
    """(entries per backend 0..n-1, entries naming no backend)."""
    counts = ffi.new("uint32_t[]", max(n, 1))
    none = lib.mg_eval_count(len(table), ffi.from_buffer("int32_t[]", table), n, counts)
    return ffi.unpack(counts, n), int(none)


def diff(a: array, b: array, b_remap: Sequence[int] | None = None) -> int:
    """Slots where ``a`` differs from ``b`` (b's indices translated by ``b_remap``)."""
    if len(a) != len(b):
        raise ValueError("tables of different sizes")
    remap = ffi.new("int32_t[]", list(b_remap)) if b_remap else ffi.NULL
    return int(
        lib.mg_eval_diff(
            len(a),
            ffi.from_buffer("int32_t[]", a),
            ffi.from_buffer("int32_t[]", b),
            remap,
            len(b_remap) if b_remap else 0,
        )
    )
