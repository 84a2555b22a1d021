"""The packet tracer's block of shared memory (slot ``MG_SLOT_TRACE``), through C only.

Layout, ownership and both seqlocks are in ``mg_trace.h``: words 0..31 belong to the
config manager (the trace request behind one seqlock, the generation context behind
another), words 32..63 to steering (counters).  This module turns Python values into the
C structs ``mg_trace_req`` / ``mg_trace_gen_ctx`` and back; C packs and publishes them.
Parsing what an operator typed is the caller's business (``maglev.observability.ops``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from maglev.native import ffi, lib

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def arm(region: Any, *, dst: tuple[Address, int, int] | None = None,
        src: tuple[Address, int, int] | None = None, count: int = 0, deadline_ns: int = 0,
        sample_every: int | None = None, req_id: int = 0) -> int:
    """Publish a trace request (config manager only: the single writer).  ``dst`` =
    (VIP address, port or 0, protocol or 0); ``src`` = (client address, prefix length,
    port or 0); ``sample_every`` None keeps the configured rate.  Returns its sequence."""
    q = ffi.new("struct mg_trace_req *")
    q.count, q.deadline_ns, q.req_id = count, deadline_ns, req_id
    if sample_every is not None:
        q.sample_set, q.sample_every = 1, sample_every
    if dst is not None:
        ip, port, proto = dst
        q.dst_on, q.dst_family, q.dst_port, q.proto = 1, ip.version, port, proto
        q.dst_addr = ip.packed.ljust(16, b"\0")
    if src is not None:
        ip, plen, port = src
        q.src_on, q.src_family, q.src_plen, q.src_port = 1, ip.version, plen, port
        q.src_addr = ip.packed.ljust(16, b"\0")
    return int(lib.mg_trace_arm(region.base, q))


def set_sampling(region: Any, sample_every: int) -> int:
    """Change only the sampling rate (config manager only); an armed filter keeps its
    remaining count.  Returns the request's new sequence."""
    return int(lib.mg_trace_set_sampling(region.base, sample_every))


def status(region: Any) -> dict[str, Any]:
    s = ffi.new("struct mg_trace_status *")
    lib.mg_trace_status(region.base, s)
    return {
        "seq": int(s.seq), "applied": int(s.applied), "marked": int(s.marked),
        "request_marked": int(s.request_marked), "finished": int(s.finished), "lost": int(s.lost),
        "resyncs": int(s.resyncs), "count": int(s.count),
        "sample_every": int(s.sample_every) if s.sample_set else None,
    }


def store_generation(region: Any, generation: int, trace_id: int, span_id: int, trace_flags: int,
                     published_ns: int) -> None:
    """Config manager: the span context that published ``generation`` (0s: none)."""
    c = ffi.new("struct mg_trace_gen_ctx *")
    c.generation, c.span_id, c.trace_flags, c.published_ns = generation, span_id, trace_flags, published_ns
    c.trace_id_hi, c.trace_id_lo = trace_id >> 64, trace_id & (2**64 - 1)
    lib.mg_trace_gen_store(region.base, c)


def load_generation(region: Any) -> dict[str, int] | None:
    """The stored generation context, or None when the writer kept it busy."""
    c = ffi.new("struct mg_trace_gen_ctx *")
    if lib.mg_trace_gen_load(region.base, c) < 0:
        return None
    return {"generation": int(c.generation), "trace_id": int(c.trace_id_hi) << 64 | int(c.trace_id_lo),
            "span_id": int(c.span_id), "trace_flags": int(c.trace_flags), "published_ns": int(c.published_ns)}
