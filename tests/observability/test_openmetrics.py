"""The exposition through prometheus_client: OpenMetrics when the scraper asks for it (and
the client library's own strict parser reads it back), the 0.0.4 text format otherwise,
and the config apply-latency histogram filled by a real `ctl reload` of a running
`maglev run`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from maglev.control.manager import APPLY_BUCKETS, LatencyHistogram
from maglev.observability.prometheus import render
from maglev.testing.packets import write_pcap
from maglev.testing.ports import free_port

from .promparse import parse_prometheus

MAGLEV = [sys.executable, "-c", "from maglev_cli.main import main; main()"]
OM = "application/openmetrics-text; version=1.0.0"


def test_latency_histogram_is_cumulative():
    h = LatencyHistogram()
    for v in (0.001, 0.007, 0.3, 0.3, 42.0):
        h.observe(v)
    d = h.to_dict()
    assert d["count"] == 5 and abs(d["sum"] - 42.608) < 1e-9
    le = dict((str(b), n) for b, n in d["buckets"])
    assert le["0.005"] == 1 and le["0.01"] == 2 and le["0.25"] == 2 and le["0.5"] == 4 and le["10.0"] == 4
    assert le["+Inf"] == 5 and len(d["buckets"]) == len(APPLY_BUCKETS) + 1


def _snapshot_with_histogram() -> dict:
    h = LatencyHistogram()
    h.observe(0.02)
    return {
        "totals": {"packets_in": 7, "bytes_in": 700}, "steering": {"fallback": 0, "backpressure": 0, "shed": 0,
                                                                 "owner_stalled": 0, "unparsed": 0},
        "muxer": {"tx_packets": 5}, "drops": {"no_vip": 2}, "workers": [], "rings": {
            "free": {"count": 1, "size": 8, "occupancy": 0.125}, "sent": {"count": 0, "size": 8, "occupancy": 0.0}},
        "vips": [], "vip_workers": [], "generation": 3, "tracer": {}, "config_apply": h.to_dict(),
    }


def test_text_and_openmetrics_of_one_snapshot():
    s = _snapshot_with_histogram()
    text = parse_prometheus(render(s))
    assert text["maglev_received_packets_total"]["samples"] == [({}, 7.0)]
    assert text["maglev_config_apply_seconds"]["type"] == "histogram"
    om = render(s, openmetrics=True)
    assert om.endswith("# EOF\n")
    fams = {f.name: f for f in text_string_to_metric_families(om)}  # the library's strict parser
    assert fams["maglev_received_packets"].type == "counter"
    assert [x.value for x in fams["maglev_received_packets"].samples if x.name.endswith("_total")] == [7.0]
    h = fams["maglev_config_apply_seconds"]
    assert h.type == "histogram"
    count = [x.value for x in h.samples if x.name.endswith("_count")]
    assert count == [1.0]
    assert {x.labels["reason"]: x.value for x in fams["maglev_drops"].samples} == {"no_vip": 2.0}


CONFIG = """
[instance]
name = "omtest"
source_ipv4 = "198.18.5.2"

[[vip]]
address = "203.0.113.50"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.5.11"
"""


def _get(port: int, accept: str = "") -> tuple[int, str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        e.close()
        return e.code, e.headers["Content-Type"], body
    except OSError:
        return 0, "", ""


def test_run_exports_apply_latency_and_negotiates_openmetrics(tmp_path):
    conf = tmp_path / "maglev.toml"
    conf.write_text(CONFIG)
    empty = write_pcap(tmp_path / "empty.pcap", [])
    control = f"ipc://{tmp_path}/ctl.sock"
    port = free_port()
    env = {**os.environ, "MAGLEV_RUN_DIR": str(tmp_path / "run"), "MAGLEV_STATE_DIR": str(tmp_path / "state")}
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([*MAGLEV, "run", "--config", str(conf), "--nic", f"pcap:{empty}", "--workers", "2",
                             "--control", control, "--metrics", f"127.0.0.1:{port}", "--json"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def tail() -> str:
        return (tmp_path / "run.log").read_text()[-3000:]

    def apply_count() -> float | None:
        code, _, body = _get(port)
        if code != 200:
            return None
        fams = parse_prometheus(body)
        h = fams.get("maglev_config_apply_seconds")
        return None if h is None else next(v for k, _, v in h["parts"] if k == "count")

    try:
        deadline = time.monotonic() + 60
        while apply_count() is None:  # up, and the supervisor view carries the histogram
            assert proc.poll() is None and time.monotonic() < deadline, tail()
            time.sleep(0.2)
        assert apply_count() == 0  # the start-up publication is not a request

        conf.write_text(CONFIG + '[[vip.backend]]\naddress = "198.18.5.12"\n')
        r = subprocess.run([*MAGLEV, "ctl", "--control", control, "reload"], capture_output=True, text=True,
                           timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        while apply_count() != 1:  # the config actor's heartbeat, then the supervisor's view (1 s each)
            assert proc.poll() is None and time.monotonic() < deadline, tail()
            time.sleep(0.2)
        code, ctype, body = _get(port, accept=OM)
        assert code == 200 and ctype.startswith("application/openmetrics-text"), ctype
        assert body.endswith("# EOF\n")
        fams = {f.name: f for f in text_string_to_metric_families(body)}
        h = fams["maglev_config_apply_seconds"]
        total = [x.value for x in h.samples if x.name.endswith("_sum")][0]
        assert 0 < total < 30
        code, ctype, body = _get(port)  # no Accept: the classic text format
        assert ctype.startswith("text/plain; version=0.0.4") and "# EOF" not in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, tail()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
