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

The exposition itself is ``prometheus_client``'s: each scrape builds its metric families
(``CounterMetricFamily``, ``GaugeMetricFamily``, ``HistogramMetricFamily``) from one
snapshot in a custom collector (:class:`SnapshotCollector`), and the client library's
encoder writes them -- the Prometheus text format 0.0.4, or OpenMetrics 1.0 when the
scraper's ``Accept`` header asks for ``application/openmetrics-text`` (its
``choose_encoder``).  The HTTP server stays ours (a small ``http.server`` thread), for
the 503 while starting and a scrape that must never take the supervisor down.

Only ``GET /metrics`` (and ``/``) is served; anything else is 404.  Bind it to 127.0.0.1
or a management address: the endpoint has no authentication.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector, CollectorRegistry

from maglev.errors import ConfigError

log = logging.getLogger("maglev.telemetry")

__all__ = ["MetricsHost", "MetricsServer", "SnapshotCollector", "families", "parse_listen", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Out:
    """Collects the families of one snapshot as prometheus_client metric families."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []
        self._seen: set[str] = set()

    def _name(self, name: str) -> None:
        if name in self._seen:
            raise ValueError(f"metric family {name} rendered twice")
        self._seen.add(name)

    def family(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[dict[str, Any], float]]) -> None:
        rows = list(samples)
        self._name(name)
        labels = list(rows[0][0]) if rows else []
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        m = cls(name, help_, labels=labels)  # a counter's "_total" is the library's suffix
        for lab, value in rows:
            if list(lab) != labels:
                raise ValueError(f"{name}: labels {list(lab)} differ from {labels}")
            m.add_metric([str(lab[k]) for k in labels], float(value))
        self.metrics.append(m)

    def histogram(self, name: str, help_: str, h: dict[str, Any]) -> None:
        """``h``: {"buckets": [[le, cumulative], ..., ["+Inf", count]], "sum", "count"}."""
        self._name(name)
        buckets = [(b if b == "+Inf" else repr(float(b)), float(n)) for b, n in h["buckets"]]
        self.metrics.append(HistogramMetricFamily(name, help_, buckets=buckets, sum_value=float(h["sum"])))


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


class SnapshotCollector(Collector):
    """A prometheus_client collector over the shared-memory counters: every ``collect``
    takes a fresh snapshot (``snapshot()``, e.g. :meth:`MetricsHost.snapshot`)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.snapshot()))


def registry_of(collector: Collector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)  # never collect at registration
    reg.register(collector)
    return reg


def encode(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """(body, content type) for a scraper's ``Accept`` header (OpenMetrics when asked)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def render(s: dict[str, Any], openmetrics: bool = False) -> str:
    """A :func:`~maglev.observability.metrics.collect` snapshot as Prometheus text format
    (or OpenMetrics)."""
    from prometheus_client.exposition import generate_latest

    reg = registry_of(_Fixed(families(s)))
    return (generate_openmetrics if openmetrics else generate_latest)(reg).decode()


C, G = "counter", "gauge"

# The families that are one value per row, in output order: (name, type, help, key), key
# the row's field or a function of the row.  families() gives each table its rows.
_TOP = (  # one row: the totals, steering and the muxer
    ("maglev_received_packets_total", C, "Packets received from the NIC by steering.", "packets_in"),
    ("maglev_received_bytes_total", C, "Bytes received from the NIC by steering.", "bytes_in"),
    ("maglev_transmitted_packets_total", C, "Packets the muxer handed to the NIC.", "tx_packets"),
    ("maglev_forwarded_packets_total", C,
     "Packets the workers forwarded (to a backend, or a fragment to its owning instance); those the NIC then "
     "refused or a killed muxer held are also drops (tx_error, muxer_restart).", "forwarded_by_workers"),
)
_STEERING = (
    ("maglev_fallback_packets_total", C,
     "Packets steered to another worker than their hash because its ring was full (may reorder).", "fallback"),
    ("maglev_backpressure_events_total", C, "Steering turns in which every candidate rx ring was full.",
     "backpressure"),
    ("maglev_shed_packets_total", C,
     "Packets steering dropped before enqueue under overload (VIP priority below the rx ring's fill).", "shed"),
    ("maglev_owner_stalled_packets_total", C,
     "Packets steering dropped before enqueue: their worker's rx ring was full and not consumed for the "
     "stall time (dead or frozen worker; not moved to another worker).", "owner_stalled"),
    ("maglev_unparsed_packets_total", C, "Packets steering could not parse (spread round-robin).", "unparsed"),
)
_NIC = (  # one row: the NIC's own counters (steering's and the muxer's blocks)
    ("maglev_nic_rx_link_down_total", C,
     "Link-down reports the receiving NIC's socket gave (AF_PACKET ENETDOWN).", "rx_link_down"),
    ("maglev_nic_tx_link_down_total", C,
     "Transmits the NIC refused because the link was down (their packets are tx_error drops).", "tx_link_down"),
    ("maglev_nic_kernel_drops_total", C,
     "Packets the kernel dropped before the receiving socket (its ring full): never received.", "kernel_drops"),
    ("maglev_nic_reopens_total", C,
     "Receive sockets reopened because the interface was deleted and created again.", "reopens"),
)
_WORKER_TRAFFIC = (  # label worker; then maglev_worker_drops_total
    ("maglev_worker_packets_total", C, "Packets a worker processed.", "packets_in"),
    ("maglev_worker_forwarded_packets_total", C, "Packets a worker sent to a backend.", "forwarded"),
    ("maglev_worker_received_bytes_total", C, "Bytes a worker processed.", "bytes_in"),
    ("maglev_worker_transmitted_bytes_total", C, "Bytes a worker put on its tx ring (encapsulated).", "bytes_out"),
)
_WORKER_STATE = (  # then maglev_worker_quic_packets_total
    ("maglev_worker_tables_generation", G, "Tables generation a worker uses.", "tables_generation"),
    ("maglev_worker_held_fragments", G, "IP fragments a worker holds waiting for their first fragment.", "held"),
    ("maglev_worker_fragments_total", C, "IP fragments a worker forwarded (first and non-first).", "fragments"),
    ("maglev_worker_icmp_sent_total", C, "ICMP errors a worker generated (packet too big).", "icmp_sent"),
    ("maglev_worker_icmp_forwarded_total", C, "Inbound ICMP errors a worker sent to a flow's backend.",
     "icmp_forwarded"),
)
_WORKER_CLUSTER = (
    ("maglev_worker_cluster_gre_in_packets_total", C,
     "VIP matching: GRE from a peer cluster's forwarders a worker decapsulated.", "cluster_in"),
    ("maglev_worker_cluster_matched_packets_total", C,
     "VIP matching: packets to a peer cluster's address a worker served as the local VIP.", "cluster_matched"),
    ("maglev_worker_backup_packets_total", C,
     "VIP matching: packets of a VIP without a healthy backend a worker sent to the backup cluster.", "backup_out"),
    ("maglev_worker_table_swaps_total", C, "Tables generation switches a worker made.", "table_swaps"),
)
_RING = (  # label ring
    ("maglev_ring_used_slots", G, "Descriptors waiting on a ring.", "count"),
    ("maglev_ring_capacity_slots", G, "Slots of a ring.", "size"),
    ("maglev_ring_occupancy_ratio", G, "Used / capacity of a ring.", "occupancy"),
)
_CONNTRACK = (  # label worker, a worker's conntrack stats
    ("maglev_conntrack_entries", G,
     "Connection-table entries (inserts - evictions - expirations: an upper bound).", "entries"),
    ("maglev_conntrack_lookups_total", C, "Connection-table lookups.", "lookups"),
    ("maglev_conntrack_hits_total", C, "Connection-table hits.", "hits"),
    ("maglev_conntrack_inserts_total", C, "Connection-table inserts.", "inserts"),
    ("maglev_conntrack_evictions_total", C, "Live probation entries replaced (LRU) by an insert.", "evictions"),
    ("maglev_conntrack_table_full_total", C,
     "Inserts that found no way (table full): the packet was forwarded statelessly.", "insert_failed"),
    ("maglev_conntrack_expirations_total", C, "Entries found idle past their timeout.", "expired"),
    ("maglev_conntrack_reselections_total", C, "Hits whose backend was gone or down: re-selected.", "reselected"),
    ("maglev_conntrack_promotions_total", C, "Probation entries promoted to the protected segment.", "promoted"),
    ("maglev_conntrack_demotions_total", C, "Protected entries demoted (protected quota reached).", "demoted"),
    ("maglev_conntrack_moves_total", C, "Entries moved to their alternate bucket (cuckoo).", "moved"),
    ("maglev_conntrack_rate_guard_total", C,
     "New flows above conntrack.new_flows_per_s: forwarded by Maglev hash, not inserted.", "rate_guard_hits"),
)
_VIP_WORKER = (  # labels vip, worker
    ("maglev_vip_packets_total", C, "Packets forwarded for a VIP (per worker; resets on a tables switch).", "packets"),
    ("maglev_vip_bytes_total", C, "Bytes forwarded for a VIP (per worker; resets on a tables switch).", "bytes"),
)
_BACKEND = (  # labels vip, backend; then maglev_backend_pool_info
    ("maglev_packets_total", C, "Packets sent to a backend (all workers, since their last tables switch).",
     "packets"),
    ("maglev_bytes_total", C, "Bytes sent to a backend (all workers, since their last tables switch).", "bytes"),
    ("maglev_backend_up", G, "1 when the backend is healthy in the published tables.",
     lambda b: b["health"] == "up"),
    ("maglev_backend_weight", G, "Configured weight of the backend (for a pooled VIP: its effective weight).",
     "weight"),
)
_BACKEND_TABLE = (
    ("maglev_table_entries", G, "Maglev lookup-table entries of a backend.", "entries"),
)
_VIP = (  # label vip
    ("maglev_table_entries_min", G, "Fewest table entries of a live backend of the VIP.", "entries_min"),
    ("maglev_table_entries_max", G, "Most table entries of a live backend of the VIP.", "entries_max"),
    ("maglev_table_size_entries", G, "Maglev lookup-table size M of the VIP.", "table_size"),
    ("maglev_vip_priority", G, "A VIP's priority under overload (0..7, higher is shed later).", "priority"),
    ("maglev_vip_shed_packets_total", C,
     "Packets of a VIP steering dropped under overload (VIP priority; by VIP key, kept across tables switches).",
     "shed"),
)
_TRACER = (  # one row, 0 when the tracer has not reported
    ("maglev_traced_packets_total", C, "Packets marked by the packet tracer.", "marked"),
    ("maglev_trace_records_lost_total", C, "Traced packets whose record was dropped (log full).", "lost"),
)

_Table = tuple[tuple[str, str, str, "str | Callable[[dict[str, Any]], Any]"], ...]


def _per_row(o: _Out, table: _Table, rows: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """One family per table entry, one sample per (labels, row)."""
    for name, kind, help_, key in table:
        o.family(name, kind, help_, [(lab, key(r) if callable(key) else r[key]) for lab, r in rows])


def families(s: dict[str, Any]) -> list[Metric]:
    """The metric families of one snapshot."""
    o = _Out()
    t, mx = s["totals"], s["muxer"]
    _per_row(o, _TOP, [({}, {"packets_in": t["packets_in"], "bytes_in": t["bytes_in"],
                             "tx_packets": mx["tx_packets"],
                             "forwarded_by_workers": t.get("forwarded_by_workers", t.get("forwarded", 0))})])
    o.family("maglev_drops_total", C, "Packets dropped, by reason (data path reasons, worker restarts, NIC errors).",
             [({"reason": k}, v) for k, v in s["drops"].items()])
    _per_row(o, _STEERING, [({}, s["steering"])])
    _per_row(o, _NIC, [({}, {k: 0 for k in ("rx_link_down", "tx_link_down", "kernel_drops", "reopens")}
                        | (s.get("nic") or {}))])
    w_rows = s["workers"]
    per_w = [({"worker": w["worker"]}, w) for w in w_rows]
    _per_row(o, _WORKER_TRAFFIC, per_w)
    o.family("maglev_worker_drops_total", C, "Packets a worker dropped, by reason.",
             [({"worker": w["worker"], "reason": k}, v) for w in w_rows for k, v in w["dropped"].items()])
    _per_row(o, _WORKER_STATE, per_w)
    o.family("maglev_worker_quic_packets_total", C,
             "Packets of QUIC VIPs by how the backend was chosen: cid (the connection ID's server ID) or hashed.",
             [({"worker": w["worker"], "routing": r}, w.get(f"quic_{k}", 0))
              for w in w_rows for r, k in (("cid", "cid_routed"), ("hashed", "hashed"))])
    _per_row(o, _WORKER_CLUSTER, per_w)
    ft_rows = [(w["worker"], w["fragment_table"]) for w in w_rows if w.get("fragment_table")]
    for key in (ft_rows[0][1] if ft_rows else {}):
        o.family(f"maglev_fragment_table_{key}_total", C,
                 f"Fragment table: {key.replace('_', ' ')} (struct mg_frag_stats, mg_frag.h).",
                 [({"worker": i}, ft[key]) for i, ft in ft_rows])
    rings = [w[f"{kind}_ring"] for w in w_rows for kind in ("rx", "tx", "ret")]
    _per_row(o, _RING, [({"ring": r["ring"]}, r) for r in rings]
             + [({"ring": n}, s["rings"][n]) for n in ("free", "sent")])
    _per_row(o, _CONNTRACK, [({"worker": w["worker"]}, w["conntrack"]) for w in w_rows if w.get("conntrack")])
    _per_row(o, _VIP_WORKER, [({"vip": r["vip"], "worker": r["worker"]}, r) for r in s.get("vip_workers", [])])
    be = [(v, b) for v in s["vips"] for b in v["backends"]]
    per_be = [({"vip": v["vip"], "backend": b["backend"]}, b) for v, b in be]
    _per_row(o, _BACKEND, per_be)
    o.family("maglev_backend_pool_info", G, "1 for a pooled VIP's backend; label pool = its pool path (a/b).",
             [({"vip": v["vip"], "backend": b["backend"], "pool": b["pool"]}, 1) for v, b in be if "pool" in b])
    _per_row(o, _BACKEND_TABLE, per_be)
    _per_row(o, _VIP, [({"vip": v["vip"]}, v) for v in s["vips"]])
    o.family("maglev_tables_generation", G, "Tables generation now published.", [({}, s["generation"])])
    _per_row(o, _TRACER, [({}, {"marked": 0, "lost": 0, **(s.get("tracer") or {})})])
    if s.get("restarts") is not None:
        o.family("maglev_actor_restarts_total", C, "Restarts of an actor by the supervisor.",
                 [({"actor": k}, v) for k, v in sorted(s["restarts"].items())])
    bgp = s.get("bgp")
    if isinstance(bgp, dict):
        nums = [(k, v) for k, v in sorted(bgp.items()) if isinstance(v, int | float) and not isinstance(v, bool)]
        o.family("maglev_bgp_state", G, "BGP speaker state from its heartbeat (key = field).",
                 [({"key": k}, v) for k, v in nums])
    if s.get("uptime_s") is not None:
        o.family("maglev_uptime_seconds", G, "Seconds since maglev run started.", [({}, float(s["uptime_s"]))])
    if isinstance(s.get("config_apply"), dict):
        o.histogram("maglev_config_apply_seconds",
                    "Config change request (ctl apply/reload, SIGHUP) to every worker running the new tables.",
                    s["config_apply"])
    return o.metrics


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
    """``GET /metrics`` on a daemon thread; ``produce(accept)`` -> (body, content type) is
    called per scrape (a plain ``text()`` callable is served as the 0.0.4 text format)."""

    def __init__(self, host: str, port: int, produce: Callable[..., Any]):
        import inspect

        if not inspect.signature(produce).parameters:
            text = produce

            def produce(accept: str) -> tuple[bytes, str]:
                return text().encode(), CONTENT_TYPE

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served")
                    return
                ctype = CONTENT_TYPE
                try:
                    body, ctype = produce(self.headers.get("Accept", ""))
                    code = 200
                except Starting as exc:
                    body, code = f"# {exc}\n".encode(), 503
                except Exception as exc:  # a scrape must never take the supervisor down
                    log.exception("metrics scrape failed")
                    body = f"# scrape failed: {type(exc).__name__}: {exc}\n".encode()
                    code = 500
                self.send_response(code)
                self.send_header("Content-Type", ctype)
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
        self.registry = registry_of(SnapshotCollector(self.snapshot))
        if listen:
            host, port = parse_listen(listen)
            self.server = MetricsServer(host, port, self.scrape)

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

    def scrape(self, accept: str = "") -> tuple[bytes, str]:
        return encode(self.registry, accept)

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
            apply = (sup.stats().get("config") or {}).get("apply_latency") if "config" in sup.children else None
            write_supervisor_view(sup.run_dir, {"restarts": sup.restarts, "bgp": bgp, "config_apply": apply,
                                                "uptime_s": round(now - self.started, 3)})
        except OSError as exc:
            log.debug("supervisor view not written: %s", exc)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
