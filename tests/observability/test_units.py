"""In-process tests of the observability pieces: the collector over a real shared-memory
region, the Prometheus text, the packet tracer's request block and C filter, the
generation-switch span, whereis against an independent reference, top's frame."""

from __future__ import annotations

import os
import struct
import time
import urllib.error
import urllib.request

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from maglev.config import SAMPLE_CONFIG, load
from maglev.datapath.engine import DROP_CODES
from maglev.datapath.tables import build_tables, read_tables
from maglev.errors import ConfigError, MaglevError
from maglev.hashing.reference import siphash13
from maglev.native import ffi, lib
from maglev.observability.metrics import collect
from maglev.observability.ops import TraceRequestError, arm_request, set_sampling
from maglev.observability.prometheus import MetricsServer, parse_listen, render
from maglev.observability.whereis import WhereisError, parse_flow, whereis_blob, whereis_config
from maglev.rings import Region
from maglev.rings.trace_block import status as request_status
from maglev.rings.worker_page import WorkerPage, read_worker_page
from maglev.telemetry import get_tracer, setup_tracing, shutdown_tracing
from maglev.telemetry.packets import record_to_dict
from maglev.telemetry.spans import GenerationWatch, store_generation_context
from maglev.testing import packets as P

from .promparse import parse_prometheus

WEB_VIP = "203.0.113.10:80/tcp"


@pytest.fixture
def region(tmp_path):
    name = f"obsu{os.getpid()}"
    Region.unlink_name(name)
    cfg = load(SAMPLE_CONFIG)
    blob = build_tables(cfg)
    r = Region.create(name, 2, 256, 64, max(2 * len(blob), 1 << 20))
    try:
        r.tables.publish(blob, [], 1.0)
        yield r
    finally:
        lib.mg_trace_reset()
        r.close()
        r.unlink()


def test_collect_and_render_a_region(region, tmp_path):
    s = collect(region, tmp_path, instance="t")
    assert s["generation"] == 1 and s["workers_n"] == 2
    web = next(v for v in s["vips"] if v["vip"] == WEB_VIP)
    assert sum(b["entries"] for b in web["backends"]) == web["table_size"] == 65537
    assert web["entries_min"] == min(b["entries"] for b in web["backends"])
    fams = parse_prometheus(render(s))
    entries = {lab["backend"]: v for lab, v in fams["maglev_table_entries"]["samples"] if lab["vip"] == WEB_VIP}
    assert sum(entries.values()) == 65537 and len(entries) == 4
    assert fams["maglev_received_packets_total"]["samples"] == [({}, 0.0)]
    assert fams["maglev_backend_up"]["type"] == "gauge"
    assert "maglev_actor_restarts_total" not in fams  # no supervisor view in this directory


def test_worker_page_round_trip(region, tmp_path):
    cfg = load(SAMPLE_CONFIG)
    k0, k1 = cfg.flow_hash_key
    w = ffi.gc(lib.mg_worker_new(region.base, 1, 1024, k0, k1, 64, time.monotonic_ns()), lib.mg_worker_free)
    page = WorkerPage(region, tmp_path, 1, w)
    try:
        assert page.publish(force=True)
        got = read_worker_page(tmp_path, 1)
        assert got is not None and got["conntrack"]["lookups"] == 0
        assert got["vip_counters"] == [] and got["generation"] == 0  # no burst yet: no tables in use
        assert read_worker_page(tmp_path, 0) is None  # no page for worker 0
    finally:
        page.close()


def test_trace_request_block_and_c_filter(region):
    pkt = P.eth(P.ipv4("198.19.0.53", "203.0.113.10", 6, P.tcp(1395, 80, b"", src="198.19.0.53", dst="203.0.113.10")))
    cases = [(None, True), ("198.19.0.0/16", True), ("198.19.0.53:1395", True), ("198.19.0.53:1396", False),
             ("10.0.0.0/8", False)]
    for src, want in cases:
        armed = arm_request(region, vip=WEB_VIP, src=src, count=5)
        assert armed["count"] == 5 and armed["seq"] % 2 == 0
        lib.mg_trace_steer_burst(region.base)
        m = ffi.new("struct mg_frame_meta *")
        m.len = len(pkt)
        lib.mg_trace_steer_packet(region.base, m, pkt)
        assert bool(m.flags & lib.MG_FRAME_F_TRACE) is want, src
        if want:
            assert m.flags & lib.MG_TRACE_F_FILTER and (m.trace_id_hi or m.trace_id_lo) and m.ts_steer_ns
    st = request_status(region)
    assert st["applied"] == st["seq"] and st["marked"] == 3
    # The wrong VIP port never matches.
    arm_request(region, vip="203.0.113.10:81/tcp", count=1)
    lib.mg_trace_steer_burst(region.base)
    m = ffi.new("struct mg_frame_meta *")
    m.len = len(pkt)
    lib.mg_trace_steer_packet(region.base, m, pkt)
    assert not m.flags & lib.MG_FRAME_F_TRACE


def test_set_sampling_keeps_the_filter_remaining_count(region):
    arm_request(region, vip=WEB_VIP, count=10)
    region.stats(int(lib.MG_SLOT_TRACE))[lib.MG_TW_REQ_MARKED] = 4  # steering marked 4 so far
    set_sampling(region, 250)
    st = request_status(region)
    assert st["sample_every"] == 250 and st["count"] == 6 and st["seq"] % 2 == 0


@pytest.mark.parametrize("kw, msg", [
    ({"vip": "nope", "count": 1}, "not an IP address"),
    ({"vip": "203.0.113.10:99999", "count": 1}, "port"),
    ({"vip": "203.0.113.10:80/sctp", "count": 1}, "tcp or udp"),
    ({"src": "198.19.0.0/99", "count": 1}, "not an address or prefix"),
    ({"vip": WEB_VIP}, "needs a packet count"),
    ({"count": 3}, "needs a filter"),
    ({"vip": WEB_VIP, "count": -1}, "count"),
    ({"sample_every": -2}, "sample rate"),
    # NaN passed "seconds < 0 or seconds > 86400": accepted alone, and with a filter a
    # bare ValueError from int(nan * 1e9) (session 10)
    ({"seconds": float("nan")}, "seconds nan must be 0..86400"),
    ({"vip": WEB_VIP, "count": 1, "seconds": float("nan")}, "seconds nan must be 0..86400"),
    ({"vip": WEB_VIP, "count": 1, "seconds": float("inf")}, "seconds inf must be 0..86400"),
])
def test_trace_request_errors(region, kw, msg):
    with pytest.raises(TraceRequestError, match=msg) as info:
        arm_request(region, **kw)
    assert isinstance(info.value, MaglevError)


def test_generation_switch_span_is_a_child_of_publish(region):
    exporter = InMemorySpanExporter()
    provider = setup_tracing("test", "t1", exporter=exporter)
    try:
        watch = GenerationWatch(region, 0)
        with get_tracer("test").start_as_current_span("config.publish") as pub:
            store_generation_context(region, 2)
        blk = region.stats(int(lib.MG_SLOT_WORKER0))
        blk[lib.MG_WS_GENERATION] = 2  # what the worker's C glue writes after its switch
        assert watch.poll() and not watch.poll()
        blk[lib.MG_WS_GENERATION] = 3  # a generation published without a stored context
        assert not watch.poll()
        provider.force_flush()
        sw = [s for s in exporter.get_finished_spans() if s.name == "worker.generation_switch"]
        assert len(sw) == 1
        assert sw[0].context.trace_id == pub.get_span_context().trace_id
        assert sw[0].parent.span_id == pub.get_span_context().span_id
        assert sw[0].attributes["maglev.generation"] == 2
    finally:
        shutdown_tracing()


def _reference_answer(cfg, src: str, sport: int, dst: str, dport: int) -> str:
    """Independent of the C code: the flow key layout of mg_flow.h, SipHash-1-3 from the
    Python reference, the Maglev table from the blob."""
    import ipaddress

    view = read_tables(build_tables(cfg))
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    key = (s.packed.ljust(16, b"\0") + d.packed.ljust(16, b"\0") + struct.pack("!HH", sport, dport)
           + bytes([6, s.version, 0, 0]))
    h = siphash13(view.header["hash_k0"], view.header["hash_k1"], key)
    vi = view.find_vip(d.packed.ljust(16, b"\0"), dport, 6)
    v = view.vips[vi]
    return view.backends[view.maglev(vi)[h % v.table_size]].address


def test_whereis_offline_agrees_with_an_independent_reference():
    cfg = load(SAMPLE_CONFIG)
    for i in range(40):
        src, sport = f"198.19.{i // 7}.{i * 5 % 250 + 1}", 1024 + 977 * i % 60000
        ans = whereis_config(cfg, parse_flow(f"{src}:{sport}", "203.0.113.10:80/tcp"), workers=4)
        assert ans["backend"] == _reference_answer(cfg, src, sport, "203.0.113.10", 80)
        assert ans["verdict"] == "forward" and 0 <= ans["worker"] < 4
        assert ans["slot_backend_index"] == ans["backend_index"]
    six = whereis_config(cfg, parse_flow("[2001:db8:c1::5]:4000", "[2001:db8:100::10]:443/tcp"))
    assert six["vip"].startswith("[2001:db8:100::10]:443") and six["backend"]
    none = whereis_config(cfg, parse_flow("198.19.0.1:1", "203.0.113.99:80/tcp"))
    assert "vip" not in none and none["verdict"] == "no_vip"


def test_whereis_all_backends_down_says_so():
    cfg = load(SAMPLE_CONFIG)
    v = next(v for v in cfg.vips if v.key == WEB_VIP)
    blob = build_tables(cfg, down=frozenset((v.key, b.key) for b in v.backends))
    ans = whereis_blob(blob, parse_flow("198.19.0.1:1000", "203.0.113.10:80/tcp"))
    assert ans["verdict"] == "no_backend" and "every backend is down" in ans["why"]


@pytest.mark.parametrize("src, dst, msg", [
    ("198.19.0.1", "203.0.113.10:80/tcp", "expected ADDR:PORT"),
    ("198.19.0.1:1", "203.0.113.10:80/icmp", "tcp or udp"),
    ("x:1", "203.0.113.10:80", "not an IP address"),
    ("198.19.0.1:70000", "203.0.113.10:80", "port must be"),
    ("[2001:db8::1]:1", "203.0.113.10:80", "must both be IPv4 or both IPv6"),
    ("2001:db8::1:5", "[2001:db8::2]:80", "expected ADDR:PORT"),
])
def test_whereis_bad_flows(src, dst, msg):
    with pytest.raises(WhereisError, match=msg):
        parse_flow(src, dst)


def _collect_one(region, frame: bytes, verdict: int) -> dict:
    """Put ``frame`` in pool frame 0 as a traced frame with ``verdict``, let steering's C
    reclaim collect it, and decode the record."""
    m = ffi.cast("struct mg_frame_meta *", region.pool_ptr)
    m.flags, m.verdict, m.len, m.data_off = lib.MG_FRAME_F_TRACE, verdict, len(frame), lib.MG_FRAME_HEADROOM
    ffi.memmove(region.pool_ptr + lib.MG_FRAME_META_SIZE + lib.MG_FRAME_HEADROOM, frame, len(frame))
    lib.mg_trace_collect(region.base, region.pool_ptr, ffi.new("uint64_t[]", [0]), 1)
    out = ffi.new("struct mg_trace_rec[]", 4)
    assert lib.mg_trace_drain(out, 4) == 1
    return record_to_dict(out[0])


def test_tracer_decodes_with_the_data_path_parser(region):
    inner = P.ipv4("198.19.0.9", "203.0.113.10", 6, P.tcp(5555, 80, b"x" * 300, src="198.19.0.9", dst="203.0.113.10"))
    gre = struct.pack("!HH", 0, 0x0800) + inner
    fwd = int(lib.MG_VERDICT_FORWARD)
    got = _collect_one(region, P.eth(P.ipv4("198.18.0.10", "198.18.1.12", 47, gre)), fwd)
    assert got["outer_dst"] == "198.18.1.12" and got["flow"] == "198.19.0.9:5555 -> 203.0.113.10:80/tcp"
    got = _collect_one(region, P.eth(P.ipv4("198.18.0.10", "198.18.1.13", 4, inner)), fwd)  # IP-in-IP
    assert got["outer_dst"] == "198.18.1.13" and got["flow"] == "198.19.0.9:5555 -> 203.0.113.10:80/tcp"
    got = _collect_one(region, P.eth(inner), DROP_CODES["no_backend"])  # dropped: the packet itself
    assert "outer_dst" not in got and got["flow"] == "198.19.0.9:5555 -> 203.0.113.10:80/tcp"
    assert got["verdict"] == "drop:no_backend"
    got = _collect_one(region, b"\0" * 10, fwd)  # nothing a parser can read
    assert "outer_dst" not in got and "flow" not in got


def test_metrics_server_serves_and_refuses():
    srv = MetricsServer("127.0.0.1", 0, lambda: "# HELP maglev_x x\n# TYPE maglev_x gauge\nmaglev_x 1\n")
    try:
        host, port = srv.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
            assert r.status == 200 and r.read().endswith(b"maglev_x 1\n")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://{host}:{port}/other", timeout=5)
        assert e.value.code == 404
        e.value.close()
    finally:
        srv.close()
    for bad in ("9108", "host:", "127.0.0.1:99999", ""):
        with pytest.raises(ConfigError, match="ADDR:PORT"):
            parse_listen(bad)
    assert parse_listen("[::1]:9108") == ("::1", 9108)


def test_top_frame_from_two_snapshots(region, tmp_path):
    from maglev_cli.top import render_frame

    a = collect(region, tmp_path)
    b = collect(region, tmp_path)
    b["totals"]["packets_in"] += 1000
    lines = render_frame(a, b, 1.0)
    text = "\n".join(lines)
    assert "1000 pps" in text.replace("   ", " ").replace("  ", " ") or " 1.00k pps" in text
    assert WEB_VIP in text and "198.18.1.14" in text and "worker" in text.lower()


@pytest.mark.parametrize("listen, message", [("127.0.0.1:xyz", "expected ADDR:PORT"),
                                             ("nonsense", "expected ADDR:PORT")])
def test_run_with_a_bad_metrics_address_is_one_line_and_starts_nothing(tmp_path, listen, message):
    import subprocess
    import sys

    env = {**os.environ, "MAGLEV_RUN_DIR": str(tmp_path / "run"), "MAGLEV_STATE_DIR": str(tmp_path / "state")}
    r = subprocess.run([sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--json",
                        "--metrics", listen, "--nic", "gen:seconds=1"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_metrics_host_answers_503_until_attached():
    from maglev.observability.prometheus import MetricsHost

    host = MetricsHost("127.0.0.1:0")
    try:
        h, port = host.server.address
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://{h}:{port}/metrics", timeout=5)
        assert e.value.code == 503
        e.value.close()
        host.tick()  # nothing to write yet, and no error
    finally:
        host.close()


def test_config_manager_spans_and_health_transition_events(tmp_path):
    """validate / build_tables / publish spans under the request's span, and a health
    transition as a span event carrying VIP, backend and generation."""
    from maglev.control.manager import ConfigManager
    from maglev.control.protocol import Request
    from maglev.control.publisher import ThreadedPublisher

    toml = SAMPLE_CONFIG.read_text().replace('encap = "gre"', 'encap = "gre"\n\n  [vip.health]\n  type = "tcp"', 1)
    path = tmp_path / "health.toml"
    path.write_text(toml)
    cfg = load(path)
    web = next(v for v in cfg.vips if v.key == WEB_VIP)
    assert web.health.type == "tcp"
    exporter = InMemorySpanExporter()
    provider = setup_tracing("config", "t1", exporter=exporter)
    try:
        with ThreadedPublisher(workers=2) as pub:
            m = ConfigManager(cfg, pub)
            m._publish_initial()
            tracer = get_tracer("test")
            with tracer.start_as_current_span("control set-weight") as root:
                rep = m.handle(Request(op="set-weight", args={"vip": WEB_VIP, "backend": "198.18.1.12", "weight": 3},
                                       id=1))
            assert rep.ok, rep.error
            with tracer.start_as_current_span("control health-report"):
                m.report_health([{"vip": WEB_VIP, "backend": web.backends[0].key, "up": False, "detail": "refused"}])
        provider.force_flush()
        spans = exporter.get_finished_spans()
        kids = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == root.get_span_context().span_id}
        assert {"config.validate", "config.build_tables", "config.publish"} <= set(kids)
        assert kids["config.publish"].attributes["maglev.generation"] == rep.result["generation"]
        hr = next(s for s in spans if s.name == "control health-report")
        ev = [e for e in hr.events if e.name == "health.transition"]
        assert ev and ev[0].attributes["maglev.up"] is False and ev[0].attributes["maglev.vip"] == WEB_VIP
        assert ev[0].attributes["maglev.backend"] == web.backends[0].key
        assert ev[0].attributes["maglev.generation"] == m.generation
    finally:
        shutdown_tracing()


@pytest.mark.parametrize("key", ["vip", "src"])
def test_trace_op_refuses_an_empty_filter(region, tmp_path, key):
    """``trace {"vip": ""}`` was taken as no filter and armed an empty request (session 10)."""
    from types import SimpleNamespace

    from maglev.control.protocol import ProtocolError
    from maglev.observability.ops import _trace

    actor = SimpleNamespace(region=region, spec=SimpleNamespace(run_dir=str(tmp_path)))
    before = request_status(region)["seq"]
    with pytest.raises(ProtocolError, match=f"argument '{key}' must be a non-empty string"):
        _trace(actor, {key: "", "count": 1})
    assert request_status(region)["seq"] == before  # nothing armed
