"""ICMP on the data path: path-MTU errors and inbound ICMP errors (public API + thin cffi
wrapper of ``mg_icmp``).  The design, the choice of the VIP as the error's source and the
DF-clear policy are in ``maglev/_cffi_src/include/mg_icmp.h`` and docs/encapsulation.md.

Every function takes ``engine="c"`` (the C kernel, on a scratch frame laid out like the
real pool) or ``engine="python"`` (:mod:`maglev.datapath.ref_icmp`); both give the same
results and raise the same :class:`~maglev.errors.NativeError`.
"""

from __future__ import annotations

import errno

from maglev.datapath import ref_icmp
from maglev.datapath.encap import ENGINES, scratch_pool
from maglev.errors import NativeError
from maglev.native import check, ffi, lib

__all__ = [
    "PMTU_DROP",
    "PMTU_FITS",
    "PMTU_FRAGMENT",
    "PMTU_ICMP",
    "QUOTE_3TUPLE",
    "QUOTE_5TUPLE",
    "RateLimit",
    "pmtu_check",
    "quoted_flow",
    "too_big",
]

PMTU_FITS = lib.MG_PMTU_FITS
PMTU_ICMP = lib.MG_PMTU_ICMP
PMTU_FRAGMENT = lib.MG_PMTU_FRAGMENT
PMTU_DROP = lib.MG_PMTU_DROP
QUOTE_5TUPLE = lib.MG_QUOTE_5TUPLE
QUOTE_3TUPLE = lib.MG_QUOTE_3TUPLE

def _engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")


def _u32(*values: int) -> None:
    if not all(0 <= v <= 0xFFFFFFFF for v in values):
        raise NativeError(errno.EINVAL, "icmp: argument out of range")


class RateLimit:
    """The per-worker token bucket (``struct mg_ratelimit``) driven from Python."""

    def __init__(self, rate_per_s: int = lib.MG_ICMP_RATE_PER_S, burst: int = lib.MG_ICMP_BURST,
                 now_ns: int = 0):
        _u32(rate_per_s, burst)
        self._rl = ffi.new("struct mg_ratelimit *")
        check(lib.mg_ratelimit_init(self._rl, rate_per_s, burst, now_ns), "ratelimit init")

    def take(self, now_ns: int) -> bool:
        return bool(lib.mg_ratelimit_take(self._rl, now_ns))


def pmtu_check(packet: bytes, l3_off: int, family: int, l4_proto: int, l4_off: int,
               overhead: int, mtu: int, engine: str = "c") -> int:
    """PMTU_FITS / PMTU_ICMP / PMTU_FRAGMENT / PMTU_DROP (see mg_icmp.h)."""
    _engine(engine)
    if engine == "python":
        return ref_icmp.pmtu_check(packet, l3_off, family, l4_proto, l4_off, overhead, mtu)
    _u32(l3_off, l4_off, overhead, mtu)
    return check(lib.mg_pmtu_check(packet, len(packet), l3_off, family, l4_proto,
                                   l4_off, overhead, mtu), "pmtu check")


def too_big(packet: bytes, l3_off: int, family: int, mtu: int,
            headroom: int = lib.MG_FRAME_HEADROOM, engine: str = "c") -> bytes:
    """The "fragmentation needed" / "packet too big" error answering ``packet``, reporting
    ``mtu`` (configured MTU minus the encapsulation overhead)."""
    _engine(engine)
    if engine == "python":
        return ref_icmp.too_big(packet, l3_off, family, mtu, headroom)
    _u32(l3_off, mtu)
    pool = scratch_pool()
    pool.put(0, packet, headroom)
    check(lib.mg_icmp_too_big(pool.buf, 0, l3_off, family, mtu), "icmp too big")
    return pool.get(0)


def quoted_flow(packet: bytes, l3_off: int, family: int, l4_off: int,
                engine: str = "c") -> tuple[int, bytes]:
    """(QUOTE_5TUPLE or QUOTE_3TUPLE, the 40-byte client -> VIP ``struct mg_flow_key``)
    from an inbound ICMP error; NativeError ENOMSG (not an error) / EBADMSG (bad quote)."""
    _engine(engine)
    if engine == "python":
        return ref_icmp.quoted_flow(packet, l3_off, family, l4_off)
    _u32(l3_off, l4_off)
    key = ffi.new("struct mg_flow_key *")
    kind = check(lib.mg_icmp_quoted_flow(packet, len(packet), l3_off, family, l4_off, key),
                 "icmp quoted flow")
    return kind, bytes(ffi.buffer(key))
