"""Metrics: one snapshot of a running forwarder, read from shared memory.

Design
------
Everything an operator counts already lives in memory that any process of the run can
map, so the collector is a *reader*, never a participant: it does not ask an actor for
anything and cannot slow the data path down.

* **Stats blocks** (``maglev.rings``: one 64-word block per actor slot, single writer):
  steering (received, dispatched, fallback, back pressure, unparsed), the muxer
  (transmitted, NIC errors), each worker (packets, bytes, forwarded, drops by reason,
  tables generation in use, held fragments).
* **Rings**: occupancy of every rx/tx/ret ring and of the free list, read from the ring
  indices (a moving pipeline gives an instantaneous, slightly skewed picture).
* **The tables blob** now published (``Region.tables.current()``): VIPs, backends, their
  weights and health flags, and each VIP's Maglev table -- hence table entries per
  backend and their min/max per VIP (what Envoy exports as
  ``lb_maglev_min_entries_per_host`` / ``max``).  Parsed once per generation.
* **Worker pages**: what only a worker process holds -- its connection-table counters
  (lookups, hits, inserts, insert failures = table full, evictions, expirations) and the
  data path's per-VIP and per-backend packet/byte counters -- are copied by the worker's
  housekeeping tick (about 4 times a second, :class:`WorkerPage`) into a small file
  ``obs-worker-<i>`` in the run's private directory, behind a sequence lock.  The
  per-VIP/per-backend counters are indexed like the tables the worker uses and restart
  from zero when it switches generation (that is the data path's choice); they are
  exported per worker so that Prometheus' ``rate()`` treats each switch as an ordinary
  counter reset.  A page whose tables generation differs from the published one is not
  mapped to names (its indices could mean other backends).
* **Supervisor view** (optional): restarts per actor and the BGP speaker's heartbeat
  stats, written by ``maglev run`` to ``supervisor.json`` in the run directory once a
  second (:func:`write_supervisor_view`).

:func:`collect` returns a plain dict (JSON- and msgpack-safe); ``maglev ctl stats`` serves
it over the control socket, :mod:`maglev.telemetry.prometheus` renders it as the
Prometheus text format, ``maglev top`` draws it.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

from maglev.datapath.ref_conntrack import CT_STAT_NAMES

__all__ = [
    "WorkerPage",
    "collect",
    "read_worker_page",
    "read_supervisor_view",
    "write_supervisor_view",
    "WorkerObserver",
]

PAGE_MAGIC = 0x31474150534F474D  # "MGOSPAG1"
# magic, seq, mono_ns, region generation, dp tables generation, n_vips, n_backends
_HDR = struct.Struct("<QQQQQII")
_CT_FIELDS = CT_STAT_NAMES  # the one list of connection-table counters (struct mg_ct_stats)
_FRAG_FIELDS = ("first", "forwarded", "held", "released", "expired", "evicted", "evictions",
                "drop_table_full", "drop_hold_limit")
_CT = struct.Struct(f"<{len(_CT_FIELDS)}Q")
_FRAG = struct.Struct(f"<{len(_FRAG_FIELDS)}Q")
_BODY_OFF = 256
assert _HDR.size + _CT.size + _FRAG.size <= _BODY_OFF, "page header overlaps the counters"
MAX_VIPS = 4096
MAX_BACKENDS = 65536
PAGE_BYTES = _BODY_OFF + 16 * (MAX_VIPS + MAX_BACKENDS)
SUPERVISOR_VIEW = "supervisor.json"
PROTO_NAMES = {6: "tcp", 17: "udp"}
ENCAP_NAMES = {0: "gre", 1: "ipip", 2: "vxlan", 3: "l2"}


def page_path(run_dir: str | os.PathLike, worker: int) -> Path:
    return Path(run_dir) / f"obs-worker-{worker}"


class WorkerPage:
    """The writer side, in a worker process: ``publish()`` copies the data path's private
    counters into the page.  Cheap (a few memcpy of the used range); call it from the
    actor's tick, never per burst."""

    def __init__(self, region: Any, run_dir: str | os.PathLike, worker: int, native_worker: Any,
                 period_s: float = 0.25):
        from maglev.native import ffi, lib

        self._ffi, self._lib = ffi, lib
        self.region = region
        self.worker = worker
        self.period_s = period_s
        self._next = 0.0
        self._dp = lib.mg_obs_worker_dp(native_worker)
        path = page_path(run_dir, worker)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, PAGE_BYTES)
            self._mm = mmap.mmap(fd, PAGE_BYTES, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self._buf = ffi.from_buffer("uint8_t[]", self._mm)
        self._seq = struct.unpack_from("<Q", self._mm, 8)[0] & ~1
        self._stats_block = region.stats(int(lib.MG_SLOT_WORKER0) + worker)

    def _tables_counts(self, gen: int) -> tuple[int, int, int]:
        """(n_vips, n_backends, blob generation) of the copy the worker uses."""
        if gen == 0:
            return 0, 0, 0
        ffi, lib = self._ffi, self._lib
        hdr = ffi.cast("struct mg_tables_header *", lib.mg_tables_copy(self.region.base, gen & 1))
        return min(int(hdr.n_vips), MAX_VIPS), min(int(hdr.n_backends), MAX_BACKENDS), int(hdr.generation)

    def publish(self, now: float | None = None, force: bool = False) -> bool:
        now = time.monotonic() if now is None else now
        if not force and now < self._next:
            return False
        self._next = now + self.period_s
        ffi, lib = self._ffi, self._lib
        d = lib.mg_dp_stats(self._dp)
        gen = int(self._stats_block[lib.MG_WS_GENERATION])
        n_vips, n_backends, blob_gen = self._tables_counts(gen)
        dp_gen = int(d.tables_generation)
        if blob_gen != dp_gen:
            n_vips = n_backends = 0  # the counters describe other tables: do not name them
        mm = self._mm
        self._seq += 1  # odd: writing
        struct.pack_into("<Q", mm, 8, self._seq)
        _HDR.pack_into(mm, 0, PAGE_MAGIC, self._seq, time.monotonic_ns(), gen, dp_gen, n_vips, n_backends)
        ct = d.ct
        _CT.pack_into(mm, _HDR.size, *(int(getattr(ct, f)) for f in _CT_FIELDS))
        fr = d.frag
        _FRAG.pack_into(mm, _HDR.size + _CT.size, *(int(getattr(fr, f)) for f in _FRAG_FIELDS))
        if n_vips:
            ffi.memmove(self._buf + _BODY_OFF, lib.mg_dp_vip_counters(self._dp), 16 * n_vips)
        if n_backends:
            ffi.memmove(self._buf + _BODY_OFF + 16 * MAX_VIPS, lib.mg_dp_backend_counters(self._dp),
                        16 * n_backends)
        self._seq += 1  # even: stable
        struct.pack_into("<Q", mm, 8, self._seq)
        return True

    def close(self) -> None:
        if self._buf is not None:
            self._ffi.release(self._buf)
            self._buf = None
            self._mm.close()


def read_worker_page(run_dir: str | os.PathLike, worker: int, tries: int = 5) -> dict[str, Any] | None:
    """A consistent copy of worker ``worker``'s page, or None (no page yet / unreadable)."""
    try:
        with open(page_path(run_dir, worker), "rb") as f:
            raw = f.read(PAGE_BYTES)
    except OSError:
        return None
    for _ in range(tries):
        if len(raw) < _BODY_OFF:
            return None
        magic, seq, mono, gen, dp_gen, n_vips, n_backends = _HDR.unpack_from(raw, 0)
        if magic != PAGE_MAGIC or seq & 1 or n_vips > MAX_VIPS or n_backends > MAX_BACKENDS:
            time.sleep(0.001)
            try:
                with open(page_path(run_dir, worker), "rb") as f:
                    raw = f.read(PAGE_BYTES)
            except OSError:
                return None
            continue
        ct = dict(zip(_CT_FIELDS, _CT.unpack_from(raw, _HDR.size), strict=True))
        frag = dict(zip(_FRAG_FIELDS, _FRAG.unpack_from(raw, _HDR.size + _CT.size), strict=True))
        vips = struct.unpack_from(f"<{2 * n_vips}Q", raw, _BODY_OFF)
        bes = struct.unpack_from(f"<{2 * n_backends}Q", raw, _BODY_OFF + 16 * MAX_VIPS)
        if struct.unpack_from("<Q", raw, 8)[0] != seq:
            continue
        return {
            "age_s": max(0.0, (time.monotonic_ns() - mono) / 1e9),
            "generation": gen,
            "tables_generation": dp_gen,
            "conntrack": ct,
            "fragments": frag,
            "vip_counters": [(vips[2 * i], vips[2 * i + 1]) for i in range(n_vips)],
            "backend_counters": [(bes[2 * i], bes[2 * i + 1]) for i in range(n_backends)],
        }
    return None


# ---------------------------------------------------------------------- supervisor view


def write_supervisor_view(run_dir: str | os.PathLike, view: dict[str, Any]) -> None:
    """Atomically replace ``supervisor.json`` (restarts, BGP heartbeat stats)."""
    path = Path(run_dir) / SUPERVISOR_VIEW
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(view, default=str))
    os.replace(tmp, path)


def read_supervisor_view(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / SUPERVISOR_VIEW).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------- tables view

_tables_cache: dict[tuple[str, int], Any] = {}


def vip_key(v: Any) -> str:
    addr = v.address
    host = f"[{addr}]" if ":" in addr else addr
    return f"{host}:{v.port}/{PROTO_NAMES.get(v.proto, str(v.proto))}"


def tables_info(region: Any) -> dict[str, Any] | None:
    """The published tables, parsed and summarised (cached per region and generation)."""
    gen, blob = region.tables.current()
    if gen == 0:
        return None
    ck = (region.name, gen)
    hit = _tables_cache.get(ck)
    if hit is not None:
        return hit
    from maglev.datapath.tables import read_tables

    view = read_tables(blob)
    vips = []
    for i, v in enumerate(view.vips):
        entries = Counter(view.maglev(i))
        entries.pop(-1, None)
        backends = []
        for b in range(v.backend_first, v.backend_first + v.backend_count):
            be = view.backends[b]
            backends.append({"index": b, "address": be.address, "weight": be.weight,
                             "healthy": be.healthy, "entries": entries.get(b, 0)})
        live = [b["entries"] for b in backends if b["healthy"] and b["weight"] > 0]
        vips.append({
            "index": i, "vip": vip_key(v), "encap": ENCAP_NAMES.get(v.encap, str(v.encap)),
            "table_size": v.table_size, "backends": backends,
            "entries_min": min(live) if live else 0, "entries_max": max(live) if live else 0,
        })
    info = {"generation": gen, "blob_generation": view.header["generation"], "vips": vips,
            "n_backends": len(view.backends), "view": view}
    if len(_tables_cache) > 8:
        _tables_cache.clear()
    _tables_cache[ck] = info
    return info


# ---------------------------------------------------------------------- collect


def _ring(r: Any) -> dict[str, Any]:
    n = r.count()
    return {"ring": r.name, "count": n, "size": r.size, "occupancy": round(n / r.size, 4) if r.size else 0.0}


def collect(region: Any, run_dir: str | os.PathLike | None = None, *, instance: str = "",
            manager: Any = None) -> dict[str, Any]:
    """The whole snapshot (see the module docstring).  ``manager`` (a ConfigManager) adds
    the health verdicts' details; ``run_dir`` adds worker pages and the supervisor view."""
    from maglev.actors.pipeline import drop_names, worker_stats
    from maglev.actors.steering import SS_NIC_DROPS
    from maglev.native import lib
    from maglev.rings import SLOT_MUXER, SLOT_STEERING, worker_slot

    st = region.stats(SLOT_STEERING)
    mx = region.stats(SLOT_MUXER)
    info = tables_info(region)
    drops: Counter[str] = Counter()
    workers = []
    vip_tot: dict[int, list[int]] = {}
    be_tot: dict[int, list[int]] = {}
    per_worker_vip: list[dict[str, Any]] = []
    for i in range(region.n_workers):
        w = worker_stats(region.stats(worker_slot(i)))
        drops.update(w["dropped"])
        row: dict[str, Any] = {"worker": i, **w, "dropped": dict(sorted(w["dropped"].items())),
                               "rx_ring": _ring(region.rx(i)), "tx_ring": _ring(region.tx(i)),
                               "ret_ring": _ring(region.ret(i))}
        page = read_worker_page(run_dir, i) if run_dir else None
        if page is not None:
            ct = page["conntrack"]
            # Live entries are not counted by the table itself; inserts minus evictions and
            # expirations is an upper bound (an idle entry is "expired" only once found).
            ct = {**ct, "entries": max(0, ct["inserts"] - ct["evictions"] - ct["expired"])}
            row["conntrack"] = ct
            row["fragment_table"] = page["fragments"]
            row["page_age_s"] = round(page["age_s"], 3)
            if info is not None and page["tables_generation"] == info["blob_generation"]:
                for vi, (p, b) in enumerate(page["vip_counters"]):
                    t = vip_tot.setdefault(vi, [0, 0])
                    t[0] += p
                    t[1] += b
                    if p:
                        per_worker_vip.append({"worker": i, "vip_index": vi, "packets": p, "bytes": b})
                for bi, (p, b) in enumerate(page["backend_counters"]):
                    t = be_tot.setdefault(bi, [0, 0])
                    t[0] += p
                    t[1] += b
        workers.append(row)
    for reason, word in SS_NIC_DROPS.items():
        if int(st[word]):
            drops[reason] += int(st[word])
    if int(mx[lib.MG_MS_TX_ERRORS]):
        drops["tx_error"] += int(mx[lib.MG_MS_TX_ERRORS])
    health_detail: dict[tuple[str, str], str] = {}
    if manager is not None:
        for (vk, bk), e in getattr(manager, "health", {}).items():
            health_detail[(vk, bk)] = e.detail
    vips = []
    if info is not None:
        for v in info["vips"]:
            p, b = vip_tot.get(v["index"], (0, 0))
            rows = []
            for be in v["backends"]:
                bp, bb = be_tot.get(be["index"], (0, 0))
                rows.append({"backend": be["address"], "weight": be["weight"],
                             "health": "up" if be["healthy"] else "down", "entries": be["entries"],
                             "packets": bp, "bytes": bb,
                             "detail": health_detail.get((v["vip"], be["address"]), "")})
            vips.append({"vip": v["vip"], "encap": v["encap"], "table_size": v["table_size"],
                         "packets": p, "bytes": b, "entries_min": v["entries_min"],
                         "entries_max": v["entries_max"], "backends": rows})
    names = {v["index"]: v["vip"] for v in info["vips"]} if info else {}
    for r in per_worker_vip:
        r["vip"] = names.get(r.pop("vip_index"), "?")
    trace_blk = region.stats(int(lib.MG_SLOT_TRACE))
    snap: dict[str, Any] = {
        "time": time.time(),
        "instance": instance,
        "workers_n": region.n_workers,
        "generation": info["generation"] if info else 0,
        "totals": {
            "packets_in": int(st[lib.MG_SS_RX_PACKETS]) + sum(int(st[w]) for w in SS_NIC_DROPS.values()),
            "bytes_in": int(st[lib.MG_SS_RX_BYTES]),
            "forwarded": sum(w["forwarded"] for w in workers),
            "bytes_out": sum(w["bytes_out"] for w in workers),
            "dropped": sum(drops.values()),
            "tx_packets": int(mx[lib.MG_MS_TX_PACKETS]),
        },
        "drops": dict(sorted(drops.items())),
        "drop_reasons": [n for n in drop_names() if n and n != "none"],
        "steering": {
            "rx_packets": int(st[lib.MG_SS_RX_PACKETS]), "rx_bytes": int(st[lib.MG_SS_RX_BYTES]),
            "dispatched": int(st[lib.MG_SS_DISPATCHED]), "fallback": int(st[lib.MG_SS_FALLBACK]),
            "backpressure": int(st[lib.MG_SS_BACKPRESSURE]), "unparsed": int(st[lib.MG_SS_UNPARSED]),
            "fragments": int(st[lib.MG_SS_FRAGMENTS]), "no_free": int(st[lib.MG_SS_NO_FREE]),
            "recovered": int(st[lib.MG_SS_RECOVERED]), "bursts": int(st[lib.MG_SS_BURSTS]),
        },
        "muxer": {"tx_packets": int(mx[lib.MG_MS_TX_PACKETS]), "tx_errors": int(mx[lib.MG_MS_TX_ERRORS]),
                  "recovered": int(mx[lib.MG_MS_RECOVERED]), "bursts": int(mx[lib.MG_MS_BURSTS])},
        "rings": {"free": _ring(region.free), "sent": _ring(region.sent), "frames": region.n_frames},
        "workers": workers,
        "vips": vips,
        "vip_workers": per_worker_vip,
        "tracer": {"marked": int(trace_blk[lib.MG_TW_MARKED]), "finished": int(trace_blk[lib.MG_TW_FINISHED]),
                   "lost": int(trace_blk[lib.MG_TW_LOST]), "resyncs": int(trace_blk[lib.MG_TW_RESYNCS])},
    }
    sv = read_supervisor_view(run_dir) if run_dir else None
    if sv is not None:
        snap["restarts"] = sv.get("restarts", {})
        snap["bgp"] = sv.get("bgp")
        snap["uptime_s"] = sv.get("uptime_s")
    return snap



class WorkerObserver:
    """What a worker actor runs in its tick: publish its page, report generation switches
    as spans (:class:`maglev.telemetry.tracer.GenerationWatch`).  Never raises into the
    worker: an observability failure is logged once and the feature switched off."""

    def __init__(self, actor: Any):
        import logging

        self._log = logging.getLogger("maglev.telemetry")
        self.page: WorkerPage | None = None
        self.watch: Any = None
        try:
            self.page = WorkerPage(actor.region, actor.spec.run_dir, actor.index, actor.w)
        except OSError as exc:
            self._log.warning("worker metrics page unavailable: %s", exc)
        try:
            from maglev.telemetry.tracer import GenerationWatch

            self.watch = GenerationWatch(actor.region, actor.index)
        except Exception as exc:  # tracing is optional for forwarding
            self._log.warning("generation-switch spans unavailable: %s", exc)

    def tick(self, now: float) -> None:
        try:
            if self.page is not None:
                self.page.publish(now)
            if self.watch is not None:
                self.watch.poll()
        except Exception:
            self._log.exception("worker observability failed; switched off")
            self.page = self.watch = None

    def close(self) -> None:
        if self.page is not None:
            self.page.publish(force=True)
            self.page.close()
            self.page = None
