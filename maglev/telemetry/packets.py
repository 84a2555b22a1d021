"""The packet tracer's span side: records of sampled packets, turned into spans.

Design
------
A *sampled packet* crosses steering, a worker and the muxer in C, in processes that must
never wait for a collector, yet belongs in a trace.  The data path writes it down in
shared memory and the steering actor's once-per-tick Python turns it into OpenTelemetry
spans, off the packet path.

C half and the per-packet costs: ``mg_trace.h``.  A request -- a sampling rate
(``[tracing].packet_sample_rate``, 1 in N) and/or a filter from ``maglev ctl trace --vip
... [--src ...] [--count N]`` -- is published by the config manager into the *trace block*
(``maglev.rings.trace_block``; C writes the words behind a seqlock).  Steering marks
matching packets (``MG_FRAME_F_TRACE``, a random 128-bit trace id, ``ts_steer_ns``); the
worker's data path stamps ``ts_worker_ns`` at the start of its burst, flags conntrack
hit/reselect, and records when the frame left the worker; the muxer stamps ``ts_tx_ns``;
steering's reclaim copies the metadata of every traced frame that comes home into a
process-local log, with what the data path's own parser reads from the frame (the outer
destination -- the backend -- and the client's flow inside the tunnel).
:class:`SteeringTracer` (the steering actor's tick) drains the log and emits, per packet,
one trace:

    packet                      [rx (or steering) .. tx (or the worker, if dropped)]
      steering                  [rx_ts .. ts_steer]          receive + hash + dispatch
      worker                    [ts_worker .. worker done]   parse, VIP, conntrack, Maglev,
                                                             encapsulation; verdict
      muxer                     [worker done .. ts_tx]       tx ring wait + NIC transmit

with attributes naming the VIP, the backend the packet went to (from the tables of the
generation it used), conntrack hit/miss/reselected, encapsulation and verdict.  The
spans go through the process's BatchSpanProcessor, so a slow or dead collector costs the
data path nothing; a full log drops records and counts them (``lost``).  The last few
records also go to ``packet-traces.json`` in the run directory, for ``maglev ctl trace``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

from maglev import files
from maglev.rings import trace_block

log = logging.getLogger("maglev.telemetry")

__all__ = ["SteeringTracer", "read_traces", "record_to_dict", "steering_sample_rate", "write_traces"]

TRACES_FILE = "packet-traces.json"


# ---------------------------------------------------------------------- packet records


def _drop_name(verdict: int) -> str:
    from maglev.datapath.engine import DROP_NAMES
    from maglev.native import lib

    if verdict == lib.MG_VERDICT_FORWARD:
        return "forward"
    if verdict == lib.MG_VERDICT_ICMP:
        return "icmp"
    if verdict == lib.MG_VERDICT_HELD:
        return "held"
    return f"drop:{DROP_NAMES[verdict]}" if 0 < verdict < len(DROP_NAMES) else f"verdict:{verdict}"


def _flow_text(k: Any) -> tuple[str, str]:
    """(destination address, ``src -> dst/proto`` text) of a ``struct mg_flow_key``."""
    from maglev.native import ffi

    fam = int(k.family)
    raw_src, raw_dst = bytes(ffi.buffer(k.src, 16)), bytes(ffi.buffer(k.dst, 16))
    if fam == 4:
        src, dst = str(ipaddress.IPv4Address(raw_src[:4])), str(ipaddress.IPv4Address(raw_dst[:4]))
    else:
        src, dst = str(ipaddress.IPv6Address(raw_src)), str(ipaddress.IPv6Address(raw_dst))
    proto = int(k.proto)
    name = {6: "tcp", 17: "udp"}.get(proto, str(proto))
    if proto in (6, 17):
        sp, dp = socket.ntohs(int(k.sport)), socket.ntohs(int(k.dport))

        def hp(a: str, p: int) -> str:
            return f"[{a}]:{p}" if ":" in a else f"{a}:{p}"

        return dst, f"{hp(src, sp)} -> {hp(dst, dp)}/{name}"
    return dst, f"{src} -> {dst}/{name}"


def record_to_dict(rec: Any) -> dict[str, Any]:
    """One collected ``struct mg_trace_rec`` as plain values."""
    from maglev.native import lib

    m = rec.meta
    fl = int(m.flags)
    decoded: dict[str, str] = {}
    if int(rec.decoded) & lib.MG_TRACE_D_OUTER and int(m.verdict) == int(lib.MG_VERDICT_FORWARD):
        decoded["outer_dst"] = _flow_text(rec.outer)[0]
    if int(rec.decoded) & lib.MG_TRACE_D_FLOW:
        decoded["flow"] = _flow_text(rec.flow)[1]
    return {
        **decoded,
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
        "worker_ns": int(m.worker_ns),
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
        from maglev.telemetry.tracing import current_provider

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
        from maglev.datapath.tables import tables_info

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
            write_traces(self.run_dir, self.sampled + self.filtered)  # for `maglev ctl trace`
        base = self.region.base
        fin = trace_block.status(self.region)["finished"]
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



def read_traces(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records steering wrote last (``maglev ctl trace``)."""
    try:
        data = files.read_json(Path(run_dir) / TRACES_FILE)
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def write_traces(run_dir: str | Path, records: list[dict[str, Any]]) -> None:
    path = Path(run_dir) / TRACES_FILE
    tmp = path.with_suffix(f".{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(path)
