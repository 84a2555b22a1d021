"""IP fragments (Maglev paper section 4.3): the per-worker fragment table and IPv4
splitting -- public API and the thin cffi wrapper of ``mg_frag``.

The rules (capacity, expiry, eviction, hold limits, output queue) are in
``maglev/_cffi_src/include/mg_frag.h`` and docs/encapsulation.md.  :class:`FragTable`
owns one C table (a single block, no pointers inside) and mirrors
:class:`maglev.datapath.ref_frag.FragTable` call for call; ``make_table(engine=...)``
picks one.  :func:`split_ipv4` fragments a DF-clear IPv4 packet that would exceed the MTU
once encapsulated.
"""

from __future__ import annotations

import errno

from maglev.datapath import ref_frag
from maglev.datapath.encap import ENGINES, ScratchPool
from maglev.datapath.ref_frag import STATS, frag_key
from maglev.errors import NativeError
from maglev.native import check, ffi, lib

__all__ = ["FragTable", "R_EVICTED", "R_EXPIRED", "R_RELEASED", "frag_key", "make_table", "split_ipv4"]

R_RELEASED = lib.MG_FRAG_R_RELEASED
R_EXPIRED = lib.MG_FRAG_R_EXPIRED
R_EVICTED = lib.MG_FRAG_R_EVICTED


class FragTable:
    """The C fragment table.  Results are the reference's: ``first`` -> frames released,
    ``next`` -> (0, backend, vip) / (1, -1, 0) / (-ENOSPC or -ENOBUFS, -1, 0)."""

    def __init__(self, entries: int = lib.MG_FRAG_DEFAULT_ENTRIES,
                 hold_max: int = lib.MG_FRAG_DEFAULT_HOLD_FRAMES,
                 hold_bytes_max: int = lib.MG_FRAG_DEFAULT_HOLD_BYTES,
                 timeout_ns: int = lib.MG_FRAG_DEFAULT_TIMEOUT_MS * 10**6,
                 key: tuple[int, int] = (0, 0)):
        if not (0 <= entries <= 0xFFFFFFFF and 0 <= hold_max <= 0xFFFFFFFF and 0 <= hold_bytes_max <= 0xFFFFFFFF):
            raise NativeError(errno.EINVAL, "frag table: size out of range")
        self.nbytes = int(lib.mg_frag_table_size(entries, hold_max))
        if self.nbytes == 0:
            raise NativeError(errno.EINVAL, "frag table: entries or hold_max out of range")
        self._mem = ffi.new("uint8_t[]", self.nbytes)
        self._t = ffi.cast("struct mg_frag_table *", self._mem)
        check(lib.mg_frag_table_init(self._t, entries, hold_max, hold_bytes_max, timeout_ns, *key),
              "frag table init")
        self._key = ffi.new("struct mg_frag_key *")
        self._backend = ffi.new("int32_t *")
        self._vip = ffi.new("uint16_t *")
        self._out = ffi.new("struct mg_frag_out[]", 256)

    @property
    def c_table(self):
        """The ``struct mg_frag_table *`` for C callers (the burst kernel)."""
        return self._t

    def _set_key(self, key: bytes) -> None:
        if len(key) != 40:
            raise NativeError(errno.EINVAL, "frag: a key is 40 bytes")
        ffi.memmove(self._key, key, 40)

    def first(self, key: bytes, backend: int, vip_index: int, now_ns: int) -> int:
        self._set_key(key)
        if not (-(1 << 31) <= backend < (1 << 31) and 0 <= vip_index <= 0xFFFF):
            raise NativeError(errno.EINVAL, "frag first: backend or VIP index out of range")
        return check(lib.mg_frag_first(self._t, self._key, backend, vip_index, now_ns), "frag first")

    def next(self, key: bytes, frame: int, length: int, now_ns: int) -> tuple[int, int, int]:
        self._set_key(key)
        if not (0 <= frame <= 0xFFFFFFFF and 0 <= length <= 0xFFFFFFFF):
            raise NativeError(errno.EINVAL, "frag next: frame or length out of range")
        rc = lib.mg_frag_next(self._t, self._key, frame, length, now_ns, self._backend, self._vip)
        if rc == -errno.EINVAL:
            check(rc, "frag next")
        if rc == 0:
            return 0, int(self._backend[0]), int(self._vip[0])
        return rc, -1, 0

    def expire(self, now_ns: int, max_buckets: int) -> int:
        return check(lib.mg_frag_expire(self._t, now_ns, max_buckets), "frag expire")

    def drain(self, cap: int) -> list[tuple[int, int, int, int]]:
        out = []
        while len(out) < cap:
            n = check(lib.mg_frag_drain(self._t, self._out, min(cap - len(out), 256)), "frag drain")
            out += [(o.frame, o.backend, o.vip_index, o.reason) for o in self._out[0:n]]
            if n < 256:
                break
        return out

    @property
    def queued(self) -> int:
        return int(self._t.out_count)

    @property
    def hold_count(self) -> int:
        return int(self._t.hold_count)

    @property
    def hold_bytes(self) -> int:
        return int(self._t.hold_bytes)

    @property
    def stats(self) -> dict[str, int]:
        return {name: int(getattr(self._t.stats, name)) for name in STATS}


def make_table(engine: str = "c", **kw) -> FragTable | ref_frag.FragTable:
    if engine == "c":
        return FragTable(**kw)
    if engine == "python":
        return ref_frag.FragTable(**kw)
    raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")


def split_ipv4(packet: bytes, l3_off: int, max_l3_len: int, nspare: int = 8,
               engine: str = "c") -> list[bytes]:
    """Fragment a DF-clear IPv4 packet (Ethernet frame, L3 at ``l3_off``) so every piece's
    L3 length is at most ``max_l3_len``; returns the pieces in order (``[packet]`` if it
    fits).  NativeError ENOSPC when more than ``nspare`` extra frames would be needed."""
    if engine == "python":
        return ref_frag.split_ipv4(packet, l3_off, max_l3_len, nspare)
    if engine != "c":
        raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    if not (0 <= l3_off <= 0xFFFFFFFF and 0 <= max_l3_len <= 0xFFFFFFFF and 0 <= nspare <= 4096):
        raise NativeError(errno.EINVAL, "split: argument out of range")
    pool = ScratchPool(1 + nspare)
    pool.put(0, packet)
    spare = ffi.new("uint32_t[]", max(nspare, 1))
    for i in range(nspare):
        spare[i] = i + 1
    n = check(lib.mg_frag_split_ipv4(pool.buf, 0, l3_off, max_l3_len, spare, nspare), "split ipv4")
    return [pool.get(i) for i in range(n + 1)]
