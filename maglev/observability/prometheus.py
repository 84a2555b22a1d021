"""The Prometheus text endpoint (``maglev run --metrics ADDR:PORT``).

Design
------
Where it runs: in ``maglev run`` itself (the supervisor process), on a small
``http.server`` thread.  The supervisor already maps the shared-memory region, knows every
actor's restarts and heartbeat stats, and outlives every actor it restarts, so the
endpoint stays up while actors come and go -- which is when an operator looks at it.  A
scrape runs :func:`maglev.observability.metrics.collect` on the HTTP thread: it only *reads*
shared memory (stats blocks, ring indices, the published tables, the workers' pages), so
it neither locks nor slows an actor, and the supervisor's own loop is not involved
beyond the GIL for the few milliseconds of a scrape.  The supervisor's loop calls
:meth:`MetricsHost.tick` once a second to write its view (restarts, BGP) into the run
directory, where ``maglev ctl stats`` (served by the config manager) finds it too.

Names follow the Prometheus conventions: ``maglev_`` prefix, base units in the name
(``_bytes``, ``_seconds``), ``_total`` for counters, ``_ratio`` for 0..1 gauges, every
family with ``# HELP`` and ``# TYPE``.  Per-VIP and per-backend counters carry a
``worker`` label because each worker's series restarts from zero when it switches tables
generation (``rate()`` handles a reset per series; a sum over workers would not).

Only ``GET /metrics`` (and ``/``) is served; anything else is 404.  Bind it to 127.0.0.1
or a management address: the endpoint has no authentication.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from maglev.errors import ConfigError

log = logging.getLogger("maglev.telemetry")

__all__ = ["MetricsHost", "MetricsServer", "parse_listen", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._seen: set[str] = set()

    def family(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[dict[str, Any], float]]) -> None:
        rows = list(samples)
        if name in self._seen:
            raise ValueError(f"metric family {name} rendered twice")
        self._seen.add(name)
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in rows:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{lab}}} {_num(value)}" if lab else f"{name} {_num(value)}")


def _num(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


# Families with one sample per worker, from a key of the worker's row: (name, type, help, key).
# ``dropped`` (a reason label too) is rendered in its place in the list.
_WORKER_FAMILIES = (
    ("maglev_worker_packets_total", "counter", "Packets a worker processed.", "packets_in"),
    ("maglev_worker_forwarded_packets_total", "counter", "Packets a worker sent to a backend.", "forwarded"),
    ("maglev_worker_received_bytes_total", "counter", "Bytes a worker processed.", "bytes_in"),
    ("maglev_worker_transmitted_bytes_total", "counter", "Bytes a worker put on its tx ring (encapsulated).",
     "bytes_out"),
    ("maglev_worker_drops_total", "counter", "Packets a worker dropped, by reason.", "dropped"),
    ("maglev_worker_tables_generation", "gauge", "Tables generation a worker uses.", "tables_generation"),
    ("maglev_worker_held_fragments", "gauge", "IP fragments a worker holds waiting for their first fragment.",
     "held"),
    ("maglev_worker_fragments_total", "counter", "IP fragments a worker forwarded (first and non-first).",
     "fragments"),
    ("maglev_worker_icmp_sent_total", "counter", "ICMP errors a worker generated (packet too big).", "icmp_sent"),
    ("maglev_worker_icmp_forwarded_total", "counter", "Inbound ICMP errors a worker sent to a flow's backend.",
     "icmp_forwarded"),
    ("maglev_worker_table_swaps_total", "counter", "Tables generation switches a worker made.", "table_swaps"),
)

# Connection-table families, one sample per worker: (key of struct mg_ct_stats, name, help).
_CONNTRACK_FAMILIES = (
    ("lookups", "maglev_conntrack_lookups_total", "Connection-table lookups."),
    ("hits", "maglev_conntrack_hits_total", "Connection-table hits."),
    ("inserts", "maglev_conntrack_inserts_total", "Connection-table inserts."),
    ("evictions", "maglev_conntrack_evictions_total", "Live probation entries replaced (LRU) by an insert."),
    ("insert_failed", "maglev_conntrack_table_full_total",
     "Inserts that found no way (table full): the packet was forwarded statelessly."),
    ("expired", "maglev_conntrack_expirations_total", "Entries found idle past their timeout."),
    ("reselected", "maglev_conntrack_reselections_total", "Hits whose backend was gone or down: re-selected."),
    ("promoted", "maglev_conntrack_promotions_total", "Probation entries promoted to the protected segment."),
    ("demoted", "maglev_conntrack_demotions_total", "Protected entries demoted (protected quota reached)."),
    ("moved", "maglev_conntrack_moves_total", "Entries moved to their alternate bucket (cuckoo)."),
    ("rate_guard_hits", "maglev_conntrack_rate_guard_total",
     "New flows above conntrack.new_flows_per_s: forwarded by Maglev hash, not inserted."),
)

# Per (VIP, backend) families: (name, type, help, value of a backend row).
_BACKEND_FAMILIES: tuple[tuple[str, str, str, Callable[[dict[str, Any]], Any]], ...] = (
    ("maglev_packets_total", "counter", "Packets sent to a backend (all workers, since their last tables switch).",
     lambda b: b["packets"]),
    ("maglev_bytes_total", "counter", "Bytes sent to a backend (all workers, since their last tables switch).",
     lambda b: b["bytes"]),
    ("maglev_backend_up", "gauge", "1 when the backend is healthy in the published tables.",
     lambda b: b["health"] == "up"),
    ("maglev_backend_weight", "gauge", "Configured weight of the backend.", lambda b: b["weight"]),
    ("maglev_table_entries", "gauge", "Maglev lookup-table entries of a backend.", lambda b: b["entries"]),
)

# Per-VIP table families: (name, help, key of the VIP row); all gauges.
_VIP_TABLE_FAMILIES = (
    ("maglev_table_entries_min", "Fewest table entries of a live backend of the VIP.", "entries_min"),
    ("maglev_table_entries_max", "Most table entries of a live backend of the VIP.", "entries_max"),
    ("maglev_table_size_entries", "Maglev lookup-table size M of the VIP.", "table_size"),
)


def render(s: dict[str, Any]) -> str:
    """A :func:`~maglev.observability.metrics.collect` snapshot as Prometheus text format."""
    o = _Out()
    t, st, mx = s["totals"], s["steering"], s["muxer"]
    c = "counter"
    g = "gauge"
    for name, help_, value in (
        ("maglev_received_packets_total", "Packets received from the NIC by steering.", t["packets_in"]),
        ("maglev_received_bytes_total", "Bytes received from the NIC by steering.", t["bytes_in"]),
        ("maglev_transmitted_packets_total", "Packets the muxer handed to the NIC.", mx["tx_packets"]),
    ):
        o.family(name, c, help_, [({}, value)])
    o.family("maglev_drops_total", c, "Packets dropped, by reason (data path reasons, worker restarts, NIC errors).",
             [({"reason": k}, v) for k, v in s["drops"].items()])
    for name, help_, value in (
        ("maglev_fallback_packets_total",
         "Packets steered to another worker than their hash because its ring was full (may reorder).",
         st["fallback"]),
        ("maglev_backpressure_events_total", "Steering turns in which every candidate rx ring was full.",
         st["backpressure"]),
        ("maglev_unparsed_packets_total", "Packets steering could not parse (spread round-robin).", st["unparsed"]),
    ):
        o.family(name, c, help_, [({}, value)])
    w_rows = s["workers"]
    for name, kind, help_, key in _WORKER_FAMILIES:
        if key == "dropped":
            o.family(name, kind, help_,
                     [({"worker": w["worker"], "reason": k}, v) for w in w_rows for k, v in w["dropped"].items()])
        else:
            o.family(name, kind, help_, [({"worker": w["worker"]}, w[key]) for w in w_rows])
    ft_rows = [(w["worker"], w["fragment_table"]) for w in w_rows if w.get("fragment_table")]
    for key in (ft_rows[0][1] if ft_rows else {}):
        o.family(f"maglev_fragment_table_{key}_total", c,
                 f"Fragment table: {key.replace('_', ' ')} (struct mg_frag_stats, mg_frag.h).",
                 [({"worker": i}, ft[key]) for i, ft in ft_rows])
    rings = []
    for w in w_rows:
        for kind in ("rx", "tx", "ret"):
            r = w[f"{kind}_ring"]
            rings.append((r["ring"], r))
    rings += [("free", s["rings"]["free"]), ("sent", s["rings"]["sent"])]
    for name, help_, key in (
        ("maglev_ring_used_slots", "Descriptors waiting on a ring.", "count"),
        ("maglev_ring_capacity_slots", "Slots of a ring.", "size"),
        ("maglev_ring_occupancy_ratio", "Used / capacity of a ring.", "occupancy"),
    ):
        o.family(name, g, help_, [({"ring": n}, r[key]) for n, r in rings])
    ct_rows = [(w["worker"], w["conntrack"]) for w in w_rows if w.get("conntrack")]
    o.family("maglev_conntrack_entries", g,
             "Connection-table entries (inserts - evictions - expirations: an upper bound).",
             [({"worker": i}, ct["entries"]) for i, ct in ct_rows])
    for key, name, help_ in _CONNTRACK_FAMILIES:
        o.family(name, c, help_, [({"worker": i}, ct[key]) for i, ct in ct_rows])
    vw = s.get("vip_workers", [])
    for key in ("packets", "bytes"):
        o.family(f"maglev_vip_{key}_total", c,
                 f"{key.capitalize()} forwarded for a VIP (per worker; resets on a tables switch).",
                 [({"vip": r["vip"], "worker": r["worker"]}, r[key]) for r in vw])
    be = [(v, b) for v in s["vips"] for b in v["backends"]]
    for name, kind, help_, value in _BACKEND_FAMILIES:
        o.family(name, kind, help_, [({"vip": v["vip"], "backend": b["backend"]}, value(b)) for v, b in be])
    for name, help_, key in _VIP_TABLE_FAMILIES:
        o.family(name, g, help_, [({"vip": v["vip"]}, v[key]) for v in s["vips"]])
    o.family("maglev_tables_generation", g, "Tables generation now published.", [({}, s["generation"])])
    tr = s.get("tracer") or {}
    o.family("maglev_traced_packets_total", c, "Packets marked by the packet tracer.", [({}, tr.get("marked", 0))])
    o.family("maglev_trace_records_lost_total", c, "Traced packets whose record was dropped (log full).",
             [({}, tr.get("lost", 0))])
    if s.get("restarts") is not None:
        o.family("maglev_actor_restarts_total", c, "Restarts of an actor by the supervisor.",
                 [({"actor": k}, v) for k, v in sorted(s["restarts"].items())])
    bgp = s.get("bgp")
    if isinstance(bgp, dict):
        nums = [(k, v) for k, v in sorted(bgp.items()) if isinstance(v, int | float) and not isinstance(v, bool)]
        o.family("maglev_bgp_state", g, "BGP speaker state from its heartbeat (key = field).",
                 [({"key": k}, v) for k, v in nums])
    if s.get("uptime_s") is not None:
        o.family("maglev_uptime_seconds", g, "Seconds since maglev run started.", [({}, float(s["uptime_s"]))])
    return "\n".join(o.lines) + "\n"


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT``; port 0 = any free port) -> (host, port)."""
    s = text.strip()
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_s = s.rpartition(":")
    if not host or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ConfigError([f"--metrics {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:9108"])
    return host, int(port_s)


class Starting(Exception):
    """No pipeline yet: a scrape answers 503."""


class MetricsServer:
    """``GET /metrics`` on a daemon thread; ``text()`` is called per scrape."""

    def __init__(self, host: str, port: int, text: Callable[[], str]):
        produce = text

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served")
                    return
                try:
                    body = produce().encode()
                    code = 200
                except Starting as exc:
                    body, code = f"# {exc}\n".encode(), 503
                except Exception as exc:  # a scrape must never take the supervisor down
                    log.exception("metrics scrape failed")
                    body = f"# scrape failed: {type(exc).__name__}: {exc}\n".encode()
                    code = 500
                self.send_response(code)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("metrics: " + fmt, *args)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError([f"--metrics {host}:{port}: cannot listen: {exc.strerror or exc}"]) from None
        self.httpd.daemon_threads = True
        self.httpd.timeout = 1.0
        self._t = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                   name="maglev-metrics", daemon=True)
        self._t.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._t.join(timeout=5)


class MetricsHost:
    """What ``maglev run`` runs: the optional endpoint plus the supervisor view file."""

    def __init__(self, listen: str = "", pipeline: Any = None):
        self.p = pipeline
        self.started = time.monotonic()
        self._next = 0.0
        self.server: MetricsServer | None = None
        if listen:
            host, port = parse_listen(listen)
            self.server = MetricsServer(host, port, self.text)

    def attach(self, pipeline: Any) -> None:
        """The pipeline whose region and supervisor the endpoint reports (until then a
        scrape gets 503: starting)."""
        self.p = pipeline

    def snapshot(self) -> dict[str, Any]:
        from maglev.observability.metrics import collect

        if self.p is None:
            raise Starting("maglev is starting")
        return collect(self.p.region, self.p.supervisor.run_dir, instance=self.p.config.instance.name)

    def text(self) -> str:
        return render(self.snapshot())

    def tick(self, now: float | None = None) -> None:
        """Once a second: restarts and the BGP speaker's stats -> ``supervisor.json``."""
        now = time.monotonic() if now is None else now
        if now < self._next or self.p is None:
            return
        self._next = now + 1.0
        from maglev.observability.metrics import write_supervisor_view

        sup = self.p.supervisor
        bgp = sup.stats().get("bgp") if "bgp" in sup.children else None
        try:
            write_supervisor_view(sup.run_dir, {"restarts": sup.restarts, "bgp": bgp,
                                                "uptime_s": round(now - self.started, 3)})
        except OSError as exc:
            log.debug("supervisor view not written: %s", exc)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
