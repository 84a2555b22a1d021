"""Metrics: one snapshot of a running forwarder, read from shared memory.

Design
------
Everything an operator counts already lives in memory that any process of the run can
map, so the collector is a *reader*, never a participant: it does not ask an actor for
anything and cannot slow the data path down.

* **Stats blocks** (``maglev.rings.stats``: one 128-word block per actor slot, single
  writer, each word read whole through C; decoded by ``forwarder_counters``, the same
  code ``maglev run --json`` uses):
  steering (received, dispatched, fallback, back pressure, unparsed, overload shed), the muxer
  (transmitted, NIC errors), the NIC's own counters steering and the muxer copy there
  (link-down reports, kernel drops, sockets reopened), each worker (packets, bytes, forwarded, drops by reason,
  tables generation in use, held fragments).
* **Rings**: occupancy of every rx/tx/ret ring and of the free list, read from the ring
  indices (a moving pipeline gives an instantaneous, slightly skewed picture).
* **The tables blob** now published (``Region.tables.current()``): VIPs, backends, their
  weights and health flags, and each VIP's Maglev table -- hence table entries per
  backend and their min/max per VIP (what Envoy exports as
  ``lb_maglev_min_entries_per_host`` / ``max``).  Parsed once per generation.
* **Worker pages**: what only a worker process holds -- its connection-table counters
  (lookups, hits, inserts, insert failures = table full, evictions, expirations), its
  fragment-table counters and the data path's per-VIP and per-backend packet/byte
  counters -- are copied by the worker's housekeeping tick (about 4 times a second) into
  a small file ``obs-worker-<i>`` in the run's private directory, behind a seqlock that C
  writes and checks (:mod:`maglev.rings.worker_page`).  The
  per-VIP/per-backend counters are indexed like the tables the worker uses and restart
  from zero when it switches generation (that is the data path's choice); they are
  exported per worker so that Prometheus' ``rate()`` treats each switch as an ordinary
  counter reset.  A page whose tables generation differs from the published one is not
  mapped to names (its indices could mean other backends).
* **Steering's shed file** (``maglev.rings.shed_file``): packets steering dropped under
  overload by VIP priority, split by VIP key (the exact total is in its stats block).
* **Supervisor view** (optional): restarts per actor and the BGP speaker's heartbeat
  stats, written by ``maglev run`` to ``supervisor.json`` in the run directory once a
  second (:func:`write_supervisor_view`).

This is the high telemetry floor (``maglev.observability``): it reads actors' memory
through ``maglev.rings`` and may import anything below it; no actor, ring or data-path
module imports it.  :func:`collect` returns a plain dict (JSON- and msgpack-safe);
``maglev ctl stats`` serves it over the control socket,
:mod:`maglev.observability.prometheus` renders it as the Prometheus text format,
``maglev top`` draws it.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from maglev import files
from maglev.datapath.engine import DROP_NAMES
from maglev.datapath.tables import tables_info
from maglev.rings import forwarder_counters, trace_block
from maglev.rings.shed_file import NO_VIP, read_shed
from maglev.rings.worker_page import read_worker_page

__all__ = ["collect", "read_supervisor_view", "write_supervisor_view"]

SUPERVISOR_VIEW = "supervisor.json"


# ---------------------------------------------------------------------- supervisor view


def write_supervisor_view(run_dir: str | os.PathLike, view: dict[str, Any]) -> None:
    """Atomically replace ``supervisor.json`` (restarts, BGP heartbeat stats)."""
    path = Path(run_dir) / SUPERVISOR_VIEW
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(view, default=str))
    os.replace(tmp, path)


def read_supervisor_view(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    try:
        view = files.read_json(Path(run_dir) / SUPERVISOR_VIEW)
    except (OSError, ValueError):
        return None
    return view if isinstance(view, dict) else None


# ---------------------------------------------------------------------- collect


def _ring(r: Any) -> dict[str, Any]:
    n = r.count()
    return {"ring": r.name, "count": n, "size": r.size, "occupancy": round(n / r.size, 4) if r.size else 0.0}


def collect(region: Any, run_dir: str | os.PathLike | None = None, *, instance: str = "",
            manager: Any = None) -> dict[str, Any]:
    """The whole snapshot (see the module docstring).  ``manager`` (a ConfigManager) adds
    the health verdicts' details; ``run_dir`` adds worker pages and the supervisor view."""
    counters = forwarder_counters(region)
    st, mx = counters["steering"], counters["muxer"]
    info = tables_info(region)
    drops: Counter[str] = Counter(counters["dropped"])
    workers = []
    vip_tot: dict[int, list[int]] = {}
    be_tot: dict[int, list[int]] = {}
    per_worker_vip: list[dict[str, Any]] = []
    for i, w in enumerate(counters["workers"]):
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
    health_detail: dict[tuple[str, str], str] = {}
    if manager is not None:
        for (vk, bk), e in getattr(manager, "health", {}).items():
            health_detail[(vk, bk)] = e.detail
    pool_of: dict[tuple[str, str], str] = {}  # (VIP key, backend address) -> pool path
    mgr_config = getattr(manager, "config", None)
    for v in getattr(mgr_config, "vips", ()):
        if v.pools:
            paths = {leaf.backend: "/".join(leaf.path) for leaf in v.leaves}
            for b in v.backends:
                pool_of[(v.key, b.address)] = paths.get(b.key, "")
    vips = []
    shed = read_shed(run_dir)  # per-VIP overload drops (VIP priority), by VIP key
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
                if (pool := pool_of.get((v["vip"], be["address"]))) is not None:
                    rows[-1]["pool"] = pool
            vips.append({"vip": v["vip"], "encap": v["encap"], "table_size": v["table_size"],
                         "priority": v["priority"], "shed": shed.get(v["vip"], 0),
                         "packets": p, "bytes": b, "entries_min": v["entries_min"],
                         "entries_max": v["entries_max"], "backends": rows})
    names = {v["index"]: v["vip"] for v in info["vips"]} if info else {}
    for r in per_worker_vip:
        r["vip"] = names.get(r.pop("vip_index"), "?")
    tr = trace_block.status(region)
    snap: dict[str, Any] = {
        "time": time.time(),
        "instance": instance,
        "workers_n": region.n_workers,
        "generation": info["generation"] if info else 0,
        "totals": {
            "packets_in": st["packets_in"],
            "bytes_in": st["rx_bytes"],
            "forwarded": counters["forwarded"],
            "bytes_out": sum(w["bytes_out"] for w in workers),
            "dropped": sum(drops.values()),
            "tx_packets": mx["tx_packets"],
            # received, not judged yet: fragments a worker holds for their first fragment
            # (at rest, packets_in == forwarded + dropped + held)
            "held": sum(w["held"] for w in workers),
            # the workers' forward verdicts, including those the NIC refused or a killed
            # muxer held afterwards (tx_error / muxer_restart drops): never goes back
            "forwarded_by_workers": sum(w["forwarded"] + w["redirected"] for w in workers),
        },
        "drops": dict(sorted(drops.items())),
        "drop_reasons": [n for n in DROP_NAMES if n and n != "none"],
        "steering": {k: st[k] for k in ("rx_packets", "rx_bytes", "dispatched", "fallback", "backpressure",
                                        "unparsed", "fragments", "no_free", "recovered", "bursts", "shed",
                                        "owner_stalled")},
        "shed_no_vip": shed.get(NO_VIP, 0),
        "nic": counters["nic"],  # the NIC's link-down reports, kernel drops, reopens
        "muxer": mx,
        "rings": {"free": _ring(region.free), "sent": _ring(region.sent), "frames": region.n_frames},
        "workers": workers,
        "vips": vips,
        "vip_workers": per_worker_vip,
        "tracer": {k: tr[k] for k in ("marked", "finished", "lost", "resyncs")},
    }
    sv = read_supervisor_view(run_dir) if run_dir else None
    if sv is not None:
        snap["restarts"] = sv.get("restarts", {})
        snap["bgp"] = sv.get("bgp")
        snap["uptime_s"] = sv.get("uptime_s")
        snap["config_apply"] = sv.get("config_apply")  # the apply-latency histogram
    return snap
