"""The packet tracer and the table-switch trace: spans made from shared-memory records.

Design
------
Two things in a running forwarder happen in C, in processes that must never wait for a
collector, yet belong in a trace: a *sampled packet* crossing steering, a worker and the
muxer, and each *worker's switch* to a newly published tables generation.  Both are
written down in shared memory by the data path and turned into OpenTelemetry spans later,
off the packet path, by the actor's once-per-tick Python.

**Packet tracer** (C half and the per-packet costs: ``mg_trace.h``).  A request -- a
sampling rate (``[tracing].packet_sample_rate``, 1 in N) and/or a filter from ``maglev ctl
trace --vip ... [--src ...] [--count N]`` -- is written by the config manager into the
*trace block* (the stats block of reserved slot 6) behind a sequence lock
(:func:`arm_request`).  Steering marks matching packets (``MG_FRAME_F_TRACE``, a random
128-bit trace id, ``ts_steer_ns``); the worker's data path stamps ``ts_worker_ns`` at the
start of its burst, flags conntrack hit/reselect, and records when the frame left the
worker; the muxer stamps ``ts_tx_ns``; steering's reclaim copies the metadata of every
traced frame that comes home into a process-local log.  :class:`SteeringTracer` (the
steering actor's tick) drains the log and emits, per packet, one trace:

    packet                      [rx (or steering) .. tx (or the worker, if dropped)]
      steering                  [rx_ts .. ts_steer]          receive + hash + dispatch
      worker                    [ts_worker .. worker done]   parse, VIP, conntrack, Maglev,
                                                             encapsulation; verdict
      muxer                     [worker done .. ts_tx]       tx ring wait + NIC transmit

with attributes naming the VIP, the backend the packet went to (from the tables of the
generation it used), conntrack hit/miss/reselected, encapsulation and verdict.  The
spans go through the process's BatchSpanProcessor, so a slow or dead collector costs the
data path nothing; a full log drops records and counts them (``lost``).

**Table switch** (issue 8: one ``maglev ctl set-weight`` = one trace).  When the config
manager publishes generation g inside its ``config.publish`` span, it stores that span's
W3C context next to g in the trace block (:func:`store_generation_context`).  Each worker
notices in its tick that its stats block reports a new generation, reads the stored
context (checking it is for *that* generation) and emits ``worker.generation_switch`` as
a child of ``config.publish``, from the publication time to the moment it noticed
(:class:`GenerationWatch`).  Storing the context in shared memory rather than sending it
through the supervisor's mailboxes keeps it exactly as fresh as the tables themselves: a
worker reads the context of the generation it actually switched to, and a restarted
worker finds it too.  If two publications happen within one worker tick, the worker only
reports the last one (the one it runs).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("maglev.telemetry")

__all__ = [
    "GenerationWatch",
    "client_span",
    "SteeringTracer",
    "TraceRequestError",
    "arm_request",
    "load_generation_context",
    "record_to_dict",
    "request_status",
    "store_generation_context",
]

# Words of the trace block the config manager owns for the generation context (16..31).
GW_SEQ, GW_GEN, GW_TID_HI, GW_TID_LO, GW_SPAN, GW_FLAGS, GW_PUB_NS = 16, 17, 18, 19, 20, 21, 22
PROTO = {"tcp": 6, "udp": 17}


class TraceRequestError(ValueError):
    """A trace request that cannot be armed (bad VIP, address or count)."""


def _block(region: Any) -> Any:
    from maglev.native import lib

    return region.stats(int(lib.MG_SLOT_TRACE))


# ---------------------------------------------------------------------- requests


def _addr_words(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    raw = ip.packed.ljust(16, b"\0")
    return struct.unpack("<QQ", raw)


def parse_vip(text: str) -> tuple[Any, int, int]:
    """``ADDR[:PORT][/PROTO]`` (IPv6 in brackets when a port is given) -> (ip, port, proto)."""
    s = text.strip()
    proto = 0
    if "/" in s:
        s, _, p = s.rpartition("/")
        if p.lower() not in PROTO:
            raise TraceRequestError(f"--vip {text!r}: protocol must be tcp or udp")
        proto = PROTO[p.lower()]
    port = 0
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise TraceRequestError(f"--vip {text!r}: expected [ADDR]:PORT")
            port = _port(rest[1:], text)
    elif s.count(":") == 1:
        host, _, p = s.partition(":")
        port = _port(p, text)
    else:
        host = s
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise TraceRequestError(f"--vip {text!r}: {host!r} is not an IP address") from None
    return ip, port, proto


def _port(p: str, text: str) -> int:
    if not p.isdigit() or not 0 <= int(p) <= 65535:
        raise TraceRequestError(f"{text!r}: port {p!r} must be 0..65535")
    return int(p)


def parse_src(text: str) -> tuple[Any, int, int]:
    """``ADDR[/PLEN][:PORT]`` or ``[V6ADDR]:PORT`` -> (ip, prefix length, port)."""
    s = text.strip()
    port = 0
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise TraceRequestError(f"--src {text!r}: expected [ADDR]:PORT")
            port = _port(rest[1:], text)
        s = host
    elif s.count(":") == 1:
        s, _, p = s.partition(":")
        port = _port(p, text)
    try:
        net = ipaddress.ip_network(s, strict=False)
    except ValueError:
        raise TraceRequestError(f"--src {text!r}: not an address or prefix") from None
    return net.network_address, net.prefixlen, port


def arm_request(region: Any, *, vip: str | None = None, src: str | None = None, count: int = 0,
                seconds: float = 0.0, sample_every: int | None = None, req_id: int = 0) -> dict[str, Any]:
    """Write a trace request into the trace block (config manager only: single writer).

    ``count`` packets matching ``vip``/``src`` are marked (within ``seconds`` if > 0);
    ``sample_every`` (when not None) overrides the configured sampling rate (0 = off).
    Returns what was armed."""
    from maglev.native import lib

    if count < 0 or count > 1_000_000:
        raise TraceRequestError(f"count {count} must be 0..1000000")
    if (vip or src) and count == 0:
        raise TraceRequestError("a filter needs a packet count (--count N)")
    if count and not (vip or src):
        raise TraceRequestError("a packet count needs a filter (--vip and/or --src)")
    if sample_every is not None and not 0 <= sample_every <= 1 << 30:
        raise TraceRequestError(f"sample rate {sample_every} must be 0..2^30")
    if seconds < 0 or seconds > 86400:
        raise TraceRequestError(f"seconds {seconds} must be 0..86400")
    w = {i: 0 for i in range(16)}
    armed: dict[str, Any] = {"count": count}
    if vip:
        ip, port, proto = parse_vip(vip)
        w[lib.MG_TW_DST], w[lib.MG_TW_DST + 1] = _addr_words(ip)
        w[lib.MG_TW_DST_META] = (
            int.from_bytes(port.to_bytes(2, "big"), "little") | proto << 16 | ip.version << 24 | 1 << 32
        )
        armed["vip"] = {"address": str(ip), "port": port, "proto": proto}
    if src:
        ip, plen, port = parse_src(src)
        w[lib.MG_TW_SRC], w[lib.MG_TW_SRC + 1] = _addr_words(ip)
        w[lib.MG_TW_SRC_META] = (
            int.from_bytes(port.to_bytes(2, "big"), "little") | ip.version << 24 | 1 << 32 | plen << 40
        )
        armed["src"] = {"address": str(ip), "prefix": plen, "port": port}
    w[lib.MG_TW_COUNT] = count
    w[lib.MG_TW_DEADLINE] = time.monotonic_ns() + int(seconds * 1e9) if seconds and count else 0
    w[lib.MG_TW_REQ_ID] = req_id
    if sample_every is not None:
        w[lib.MG_TW_SAMPLE] = sample_every
        w[lib.MG_TW_FLAGS] = lib.MG_TW_F_SAMPLE_SET
        armed["sample_every"] = sample_every
    b = _block(region)
    seq = int(b[lib.MG_TW_SEQ])
    if seq & 1:
        seq += 1  # a writer died mid-request: finish its odd phase
    b[lib.MG_TW_SEQ] = seq + 1  # odd: writing (plain stores: x86-TSO keeps them in order)
    for i in range(1, 16):
        b[i] = w[i]
    b[lib.MG_TW_SEQ] = seq + 2
    armed["seq"] = seq + 2
    return armed


def set_sampling(region: Any, sample_every: int) -> None:
    """Change only the sampling rate of the current request (config manager only).  An
    armed filter keeps its remaining count (steering re-reads the whole request)."""
    from maglev.native import lib

    if not 0 <= sample_every <= 1 << 30:
        raise TraceRequestError(f"sample rate {sample_every} must be 0..2^30")
    b = _block(region)
    seq = int(b[lib.MG_TW_SEQ])
    if seq & 1:
        seq += 1
    left = max(0, int(b[lib.MG_TW_COUNT]) - int(b[lib.MG_TW_REQ_MARKED]))
    b[lib.MG_TW_SEQ] = seq + 1
    b[lib.MG_TW_COUNT] = left
    b[lib.MG_TW_SAMPLE] = sample_every
    b[lib.MG_TW_FLAGS] = int(b[lib.MG_TW_FLAGS]) | lib.MG_TW_F_SAMPLE_SET
    b[lib.MG_TW_SEQ] = seq + 2


def request_status(region: Any) -> dict[str, Any]:
    from maglev.native import lib

    b = _block(region)
    return {
        "seq": int(b[lib.MG_TW_SEQ]), "applied": int(b[lib.MG_TW_APPLIED]),
        "marked": int(b[lib.MG_TW_MARKED]), "request_marked": int(b[lib.MG_TW_REQ_MARKED]),
        "finished": int(b[lib.MG_TW_FINISHED]), "lost": int(b[lib.MG_TW_LOST]),
        "resyncs": int(b[lib.MG_TW_RESYNCS]), "count": int(b[lib.MG_TW_COUNT]),
        "sample_every": int(b[lib.MG_TW_SAMPLE]) if int(b[lib.MG_TW_FLAGS]) & 1 else None,
    }


# ---------------------------------------------------------------------- ctl client span


@contextmanager
def client_span(op: str, instance: str = "") -> Iterator[Any]:
    """``maglev ctl``: when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT``
    or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), run the request inside a CLIENT span
    ``ctl <op>`` -- the root of the change's trace, its context travels in the envelope --
    and flush it before the command exits.  Otherwise nothing is imported or exported."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        yield None
        return
    from opentelemetry.trace import SpanKind

    from maglev.telemetry import get_tracer, setup_tracing, shutdown_tracing

    setup_tracing("ctl", instance or "maglev")
    try:
        with get_tracer("maglev.ctl").start_as_current_span(
            f"ctl {op}", kind=SpanKind.CLIENT, attributes={"maglev.control.op": op}
        ) as span:
            yield span
    finally:
        shutdown_tracing()


# ---------------------------------------------------------------------- generation context


def store_generation_context(region: Any, generation: int) -> None:
    """Config manager, right after publishing ``generation``: remember the current span."""
    from opentelemetry import trace

    sc = trace.get_current_span().get_span_context()
    b = _block(region)
    seq = int(b[GW_SEQ]) | 1
    b[GW_SEQ] = seq  # odd
    b[GW_GEN] = generation
    b[GW_TID_HI] = sc.trace_id >> 64 if sc.is_valid else 0
    b[GW_TID_LO] = sc.trace_id & (2**64 - 1) if sc.is_valid else 0
    b[GW_SPAN] = sc.span_id if sc.is_valid else 0
    b[GW_FLAGS] = int(sc.trace_flags) if sc.is_valid else 0
    b[GW_PUB_NS] = time.time_ns()
    b[GW_SEQ] = seq + 1


def load_generation_context(region: Any, generation: int) -> tuple[Any, int] | None:
    """(OpenTelemetry Context whose parent is the publish span, publication time in epoch
    ns) for ``generation``, or None when the stored context is for another generation."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    b = _block(region)
    for _ in range(4):
        s1 = int(b[GW_SEQ])
        if s1 & 1:
            continue
        vals = [int(b[i]) for i in range(GW_GEN, GW_PUB_NS + 1)]
        if int(b[GW_SEQ]) != s1:
            continue
        gen, hi, lo, span, flags, pub = vals
        if gen != generation or not (hi or lo) or not span:
            return None
        sc = SpanContext(trace_id=hi << 64 | lo, span_id=span, is_remote=True, trace_flags=TraceFlags(flags))
        return trace.set_span_in_context(NonRecordingSpan(sc)), pub
    return None


class GenerationWatch:
    """Worker side: emit ``worker.generation_switch`` when the worker starts using a new
    tables generation (its stats block's generation word moved)."""

    def __init__(self, region: Any, worker: int):
        from maglev.native import lib
        from maglev.telemetry import get_tracer

        self.region = region
        self.worker = worker
        self._block = region.stats(int(lib.MG_SLOT_WORKER0) + worker)
        self._word = int(lib.MG_WS_GENERATION)
        self.last = int(self._block[self._word])
        self._tracer = get_tracer("maglev.worker")
        self.emitted = 0

    def poll(self) -> bool:
        gen = int(self._block[self._word])
        if gen == self.last or gen == 0:
            return False
        prev, self.last = self.last, gen
        found = load_generation_context(self.region, gen)
        if found is None:
            return False  # not published under a trace (start-up, or superseded)
        ctx, pub_ns = found
        now = time.time_ns()
        span = self._tracer.start_span("worker.generation_switch", context=ctx,
                                       start_time=min(pub_ns, now))
        span.set_attribute("maglev.worker", self.worker)
        span.set_attribute("maglev.generation", gen)
        span.set_attribute("maglev.previous_generation", prev)
        span.end(end_time=now)
        self.emitted += 1
        return True


# ---------------------------------------------------------------------- packet records


def _drop_name(verdict: int) -> str:
    from maglev.actors.pipeline import drop_names
    from maglev.native import lib

    if verdict == lib.MG_VERDICT_FORWARD:
        return "forward"
    if verdict == lib.MG_VERDICT_ICMP:
        return "icmp"
    if verdict == lib.MG_VERDICT_HELD:
        return "held"
    names = drop_names()
    return f"drop:{names[verdict]}" if 0 < verdict < len(names) else f"verdict:{verdict}"


def _ip_at(b: bytes, off: int) -> tuple[str, str, int, int] | None:
    """(src, dst, protocol, header length) of the IP header at ``off``."""
    if len(b) >= off + 20 and b[off] >> 4 == 4:
        ihl = (b[off] & 15) * 4
        return (str(ipaddress.IPv4Address(b[off + 12:off + 16])), str(ipaddress.IPv4Address(b[off + 16:off + 20])),
                b[off + 9], ihl)
    if len(b) >= off + 40 and b[off] >> 4 == 6:
        return (str(ipaddress.IPv6Address(b[off + 8:off + 24])), str(ipaddress.IPv6Address(b[off + 24:off + 40])),
                b[off + 6], 40)
    return None


def _eth_l3(b: bytes) -> int:
    off, et = 12, 0
    while len(b) >= off + 2:
        et = int.from_bytes(b[off:off + 2], "big")
        if et in (0x8100, 0x88A8):
            off += 4
            continue
        break
    return off + 2 if et in (0x0800, 0x86DD) else -1


def decode_head(head: bytes, forwarded: bool) -> dict[str, str]:
    """What the first bytes of a traced frame say: for a forwarded (encapsulated) packet
    the outer destination -- the backend it went to -- and the inner flow."""
    out: dict[str, str] = {}
    l3 = _eth_l3(head)
    ip = _ip_at(head, l3) if l3 >= 0 else None
    if ip is None:
        return out
    inner_off = -1
    if forwarded:
        out["outer_dst"] = ip[1]
        if ip[2] == 47 and len(head) >= l3 + ip[3] + 4:  # GRE (RFC 2784, no options)
            inner_off = l3 + ip[3] + 4
        elif ip[2] in (4, 41):  # IPIP / IPv6-in-IP
            inner_off = l3 + ip[3]
        elif ip[2] == 17 and len(head) >= l3 + ip[3] + 16:  # VXLAN: UDP + VXLAN + inner Ethernet
            e = _eth_l3(head[l3 + ip[3] + 16:])
            inner_off = l3 + ip[3] + 16 + e if e >= 0 else -1
        inner = _ip_at(head, inner_off) if inner_off >= 0 else None
    else:
        inner, inner_off = ip, l3
    if inner is not None:
        l4 = inner_off + inner[3]
        proto = {6: "tcp", 17: "udp"}.get(inner[2], str(inner[2]))
        if inner[2] in (6, 17) and len(head) >= l4 + 4:
            sp, dp = int.from_bytes(head[l4:l4 + 2], "big"), int.from_bytes(head[l4 + 2:l4 + 4], "big")

            def hp(a: str, p: int) -> str:
                return f"[{a}]:{p}" if ":" in a else f"{a}:{p}"

            out["flow"] = f"{hp(inner[0], sp)} -> {hp(inner[1], dp)}/{proto}"
        else:
            out["flow"] = f"{inner[0]} -> {inner[1]}/{proto}"
    return out


def record_to_dict(rec: Any) -> dict[str, Any]:
    """One collected ``struct mg_trace_rec`` as plain values."""
    from maglev.native import ffi, lib

    m = rec.meta
    fl = int(m.flags)
    head = bytes(ffi.buffer(rec.head, min(int(rec.head_len), int(lib.MG_TRACE_HEAD))))
    fwd = int(m.verdict) == int(lib.MG_VERDICT_FORWARD)
    return {
        **decode_head(head, fwd),
        "trace_id": f"{int(m.trace_id_hi):016x}{int(m.trace_id_lo):016x}",
        "flags": fl,
        "verdict": _drop_name(int(m.verdict)),
        "verdict_code": int(m.verdict),
        "vip_index": int(m.vip_index),
        "backend_index": int(m.backend_index),
        "worker": int(m.worker),
        "len": int(m.len),
        "rx_ts_ns": int(m.rx_ts_ns),
        "ts_steer_ns": int(m.ts_steer_ns),
        "ts_worker_ns": int(m.ts_worker_ns),
        "worker_ns": int(m.reserved0),
        "ts_tx_ns": int(m.ts_tx_ns),
        "conntrack": ("reselected" if fl & lib.MG_TRACE_F_CT_RESELECT
                      else "hit" if fl & lib.MG_TRACE_F_CT_HIT else "miss"),
        "fragment": bool(fl & lib.MG_FRAME_F_FRAGMENT),
        "marked_by": "filter" if fl & lib.MG_TRACE_F_FILTER else "sample",
    }


def _fixed_ids() -> Any:
    """An IdGenerator whose next trace id is the packet's (span ids stay random)."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class FixedIds(RandomIdGenerator):
        next_trace_id = 0

        def generate_trace_id(self) -> int:
            return self.next_trace_id or super().generate_trace_id()

    return FixedIds()


class SteeringTracer:
    """Steering side: apply the configured sampling rate, drain collected records, emit one
    trace per packet.  ``tick()`` from the steering actor's housekeeping."""

    stuck_s = 2.0  # in flight with nothing coming home for this long: resync

    def __init__(self, region: Any, sample_every: int = 0, instance: str = "", run_dir: str = ""):
        from maglev.native import ffi, lib
        from maglev.telemetry import current_provider

        self._ffi, self._lib = ffi, lib
        self.region = region
        self.instance = instance
        self.run_dir = run_dir
        lib.mg_trace_steer_default(int(sample_every))
        self._out = ffi.new("struct mg_trace_rec[]", 256)
        self._ids = _fixed_ids()
        provider = current_provider()
        self._tracer = provider.get_tracer("maglev.packet") if provider is not None else None
        if self._tracer is not None and hasattr(self._tracer, "id_generator"):
            self._tracer.id_generator = self._ids
        else:
            self._tracer = None
        self._names: tuple[int, Any] | None = None
        self._last_progress = time.monotonic()
        self._last_finished = -1
        self.emitted = 0
        self.failed = False
        # The last few records, for `maglev ctl trace`: filter matches are kept apart so a
        # busy sampler cannot push them out before the operator's poll sees them.
        self.sampled: list[dict[str, Any]] = []
        self.filtered: list[dict[str, Any]] = []
        self.keep = 64

    def _tables(self) -> Any:
        from maglev.telemetry.metrics import tables_info

        try:
            return tables_info(self.region)
        except Exception:  # a tables blob we cannot read must not stop steering
            return None

    def tick(self, now: float | None = None) -> int:
        """Never raises into steering: a failure is logged once and tracing switched off."""
        if self.failed:
            return 0
        try:
            return self._tick(now)
        except Exception:
            self.failed = True
            log.exception("packet tracer failed; packet spans switched off")
            return 0

    def _tick(self, now: float | None) -> int:
        lib = self._lib
        now = time.monotonic() if now is None else now
        n_total = 0
        while True:
            n = lib.mg_trace_drain(self._out, 256)
            if n <= 0:
                break
            n_total += n
            recs = [record_to_dict(self._out[i]) for i in range(n)]
            info = self._tables()
            for r in recs:
                self._name(r, info)
                self._emit(r)
            self.filtered = (self.filtered + [r for r in recs if r["marked_by"] == "filter"])[-self.keep:]
            self.sampled = (self.sampled + [r for r in recs if r["marked_by"] != "filter"])[-self.keep // 4:]
        if n_total and self.run_dir:
            from maglev.telemetry.ops import write_traces

            write_traces(self.run_dir, self.sampled + self.filtered)  # for `maglev ctl trace`
        base = self.region.base
        fin = int(_block(self.region)[lib.MG_TW_FINISHED])
        if fin != self._last_finished or not lib.mg_trace_inflight(base):
            self._last_finished = fin
            self._last_progress = now
        elif now - self._last_progress > self.stuck_s:
            lib.mg_trace_resync(base)  # traced frames lost on the way (a worker restart)
            self._last_progress = now
        return n_total

    @staticmethod
    def _name(r: dict[str, Any], info: Any) -> None:
        if info is None:
            return
        vips = info["vips"]
        if 0 <= r["vip_index"] < len(vips) and r["verdict_code"] != 0:
            v = vips[r["vip_index"]]
            r["vip"] = v["vip"]
            r["encap"] = v["encap"]
            for b in v["backends"]:
                if b["index"] == r["backend_index"]:
                    r["backend"] = b["address"]

    def _emit(self, r: dict[str, Any]) -> None:
        if self._tracer is None:
            return
        from opentelemetry import trace
        from opentelemetry.context import Context

        off = time.time_ns() - time.monotonic_ns()  # CLOCK_MONOTONIC -> epoch
        steer = r["ts_steer_ns"]
        rx = r["rx_ts_ns"] if 0 < r["rx_ts_ns"] <= steer else steer
        # ts_worker_ns is the clock the worker read just before its burst; a worker that was
        # descheduled between reading it and pulling the ring shows a time before steering
        # placed the packet: the span starts no earlier than the hand-off.
        tw = r["ts_worker_ns"] or steer
        w1 = max(tw + r["worker_ns"] if r["worker_ns"] else tw, steer)
        w0 = min(max(tw, steer), w1)
        tx = r["ts_tx_ns"]
        end = tx if tx >= w1 else w1
        attrs: dict[str, Any] = {"maglev.verdict": r["verdict"], "maglev.worker": r["worker"],
                                 "maglev.packet.len": r["len"], "maglev.trace.marked_by": r["marked_by"]}
        for k in ("vip", "backend", "encap", "outer_dst", "flow"):
            if k in r:
                attrs[f"maglev.{k}"] = r[k]
        self._ids.next_trace_id = int(r["trace_id"], 16)
        try:
            root = self._tracer.start_span("packet", context=Context(), start_time=rx + off, attributes=attrs)
        finally:
            self._ids.next_trace_id = 0
        ctx = trace.set_span_in_context(root)
        s = self._tracer.start_span("steering", context=ctx, start_time=rx + off,
                                    attributes={"maglev.fragment": r["fragment"]})
        s.end(end_time=steer + off)
        wattrs = {**attrs, "maglev.conntrack": r["conntrack"], "maglev.queue_ns": max(0, tw - steer)}
        s = self._tracer.start_span("worker", context=ctx, start_time=w0 + off, attributes=wattrs)
        s.end(end_time=w1 + off)
        if tx:
            s = self._tracer.start_span("muxer", context=ctx, start_time=w1 + off,
                                        attributes={"maglev.tx": True})
            s.end(end_time=tx + off)
        root.end(end_time=end + off)
        self.emitted += 1


def steering_sample_rate(config: Any) -> int:
    t = getattr(config, "tracing", None)
    return int(getattr(t, "packet_sample_rate", 0) or 0)

