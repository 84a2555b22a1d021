"""`maglev ctl stats`, the Prometheus endpoint and `maglev run --json` tell the same story
(issue 12): after the replay of a fragmented capture, every counter the three share is
equal -- per worker (packets, bytes, forwarded, drops by reason, fragments forwarded and
held, the fragment table's and the connection table's counters), steering's and the
muxer's.  They are built by one decoder (maglev.rings.stats and the worker pages), so a
disagreement means a reader, not the data path, is wrong -- like the worker page whose
per-VIP counters overwrote the fragment-table counters before this test existed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from maglev.config import SAMPLE_CONFIG
from maglev.nic.pcapfile import PcapWriter
from maglev.testing import packets as P
from maglev.testing import unique
from maglev.testing.ports import free_port

from .metrics_doc import documented
from .promparse import parse_prometheus

pytestmark = pytest.mark.slow

MAGLEV = [sys.executable, "-c", "from maglev_cli.main import main; main()"]
DNS_VIP = "203.0.113.20"
WEB_VIP = "203.0.113.10"


def _udp_fragments(src: str, ident: int, sport: int, size: int = 1200, step: int = 400) -> list[bytes]:
    """One UDP datagram to the DNS VIP as IPv4 fragments of ``step`` payload bytes."""
    dgram = P.udp(sport, 53, bytes(i & 0xFF for i in range(size)), src=src, dst=DNS_VIP)
    out = []
    for off in range(0, len(dgram), step):
        part = dgram[off:off + step]
        out.append(P.eth(P.ipv4(src, DNS_VIP, 17, part, ident=ident, df=False,
                                mf=off + step < len(dgram), frag_offset=off)))
    return out


def _capture(path: Path, corpus_dir: Path) -> int:
    """Write the capture; returns its packet count."""
    pkts: list[bytes] = []
    for i in range(40):  # plain TCP to the web VIP
        src = f"198.19.{i // 200}.{i % 200 + 1}"
        pkts.append(P.eth(P.ipv4(src, WEB_VIP, 6, P.tcp(10000 + i, 80, b"", src=src, dst=WEB_VIP))))
    for i in range(6):  # whole datagrams in order: the first fragment leads
        pkts += _udp_fragments(f"198.19.8.{i + 1}", 0x100 + i, 20000 + i)
    for i in range(4):  # non-first fragments before the first one: held, then released
        frags = _udp_fragments(f"198.19.9.{i + 1}", 0x200 + i, 21000 + i)
        pkts += frags[1:] + frags[:1]
    for i in range(3):  # orphans: their first fragment never comes (still held at the end)
        pkts.append(_udp_fragments(f"198.19.10.{i + 1}", 0x300 + i, 22000 + i)[2])
    pkts.append(b"\x01\x02\x03")  # too short for Ethernet: steering cannot parse it
    with PcapWriter(path) as w:
        for k, p in enumerate(pkts):
            w.write(p, ts_ns=1_000_000 * k)
    n = len(pkts)
    # Third-party fragments too (no VIP of ours): append the corpus records as they are.
    for name in ("IPv4Frag.pcap", "frag_http_req.pcap"):
        raw = (corpus_dir / name).read_bytes()
        assert struct.unpack_from("<I", raw)[0] in (0xA1B2C3D4, 0xA1B23C4D), name  # classic pcap, LE
        off, body = 24, bytearray()
        while off + 16 <= len(raw):
            caplen = struct.unpack_from("<I", raw, off + 8)[0]
            body += raw[off:off + 16 + caplen]
            off += 16 + caplen
            n += 1
        with open(path, "ab") as f:
            f.write(body)
    return n


def _prom(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return parse_prometheus(r.read().decode())


def _sample(fams: dict, name: str, **labels: str) -> float:
    got = [v for lab, v in fams[name]["samples"] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(got) == 1, (name, labels, fams.get(name))
    return got[0]


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="mga-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_ctl_stats_prometheus_and_run_json_agree(workdir, corpus_dir):
    name = unique.name("agr")
    cap = workdir / "frag.pcap"
    n = _capture(cap, corpus_dir)
    (workdir / "maglev.toml").write_text(SAMPLE_CONFIG.read_text().replace('name = "mg1"', f'name = "{name}"'))
    control = f"ipc://{workdir}/control.sock"
    port = free_port()
    env = {**os.environ, "MAGLEV_RUN_DIR": str(workdir / "run"), "MAGLEV_STATE_DIR": str(workdir / "state")}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
    out_file = open(workdir / "run.out", "w+")  # closed in finally
    err_file = open(workdir / "run.err", "w+")
    proc = subprocess.Popen(
        [*MAGLEV, "run", "--workers", "2", "--config", str(workdir / "maglev.toml"), "--nic", f"pcap:{cap}",
         "--out", "null", "--json", "--metrics", f"127.0.0.1:{port}", "--control", control],
        env=env, stdout=out_file, stderr=err_file, start_new_session=True)

    def ctl_stats() -> dict | None:
        r = subprocess.run([*MAGLEV, "ctl", "--control", control, "stats", "--json"], env=env,
                           capture_output=True, text=True, timeout=30)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout else None

    try:
        # Wait for the whole capture to be through and the counters to settle: held
        # fragments expire a little later, and the worker pages follow about 4 times a
        # second -- so until two snapshots a second apart are equal.
        def settled(s: dict) -> list:
            return [{k: v for k, v in w.items() if not k.endswith("_ring") and k != "page_age_s"}
                    for w in s["workers"]]

        deadline = time.monotonic() + 60
        prev = None
        while True:
            assert proc.poll() is None, f"maglev run exited early: {(workdir / 'run.err').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the capture was not replayed (and settled) within 60 s"
            s = ctl_stats() if Path(control[len("ipc://"):]).exists() else None
            done = s is not None and s["totals"]["packets_in"] == n == sum(w["packets_in"] for w in s["workers"])
            if done and prev is not None and settled(s) == prev:
                break
            prev = settled(s) if done else None
            time.sleep(1.0)
        prom = _prom(port)
        stats = ctl_stats()
        assert stats is not None
        os.killpg(proc.pid, signal.SIGINT)  # our own child's group: a clean stop
        assert proc.wait(timeout=60) == 0, (workdir / "run.err").read_text()[-2000:]
        out_file.seek(0)
        run = json.loads(out_file.read().strip().splitlines()[-1])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        out_file.close()
        err_file.close()
        for shm in Path("/dev/shm").glob(f"maglev-{name}-*"):
            shm.unlink(missing_ok=True)

    # The capture did what it was made for.
    assert stats["totals"]["packets_in"] == run["packets_in"] == n
    assert sum(w["fragments"] for w in stats["workers"]) > 0
    ft = [w["fragment_table"] for w in stats["workers"]]
    assert sum(f["held"] for f in ft) >= 4 + 3  # out of order, and the orphans
    assert sum(f["released"] for f in ft) > 0 and sum(f["first"] for f in ft) >= 10
    assert stats["drops"].get("no_vip", 0) > 0

    # ctl stats == run --json, per worker, on every counter both carry.
    by_worker = {w["worker"]: w for w in run["per_worker"]}
    for w in stats["workers"]:
        r = by_worker[w["worker"]]
        for key in ("packets_in", "bytes_in", "forwarded", "bytes_out", "icmp_sent", "icmp_forwarded",
                    "fragments", "held", "table_swaps", "bursts", "tables_generation", "dropped",
                    "fragment_table"):
            assert w[key] == r[key], (w["worker"], key, w[key], r[key])
        assert {k: v for k, v in w["conntrack"].items() if k != "entries"} == r["conntrack"], w["worker"]
    assert stats["drops"] == run["dropped"]
    assert stats["totals"]["forwarded"] == run["forwarded"]
    assert stats["muxer"]["tx_packets"] == run["tx_packets"]
    assert stats["steering"]["fallback"] == run["fallback"]
    assert stats["steering"]["backpressure"] == run["backpressure"]

    # docs/metrics.md and the endpoint name the same families, with the same type and labels
    # (rows marked "Only when/under" may be absent: BGP is not configured here).
    doc = documented()
    assert set(prom) - set(doc) == set(), "exported but not documented"
    assert {n for n, d in doc.items() if not d["conditional"]} - set(prom) == set(), "documented, not exported"
    for n, f in prom.items():
        assert f["type"] == doc[n]["type"], n
        for labels, _ in f["samples"]:  # (a histogram's buckets add "le")
            assert set(labels) - ({"le"} if f["type"] == "histogram" else set()) == doc[n]["labels"], (n, labels)

    # ctl stats == Prometheus (the scrape came first: counters were already final).
    assert _sample(prom, "maglev_received_packets_total") == stats["totals"]["packets_in"]
    assert _sample(prom, "maglev_received_bytes_total") == stats["totals"]["bytes_in"]
    assert _sample(prom, "maglev_transmitted_packets_total") == stats["muxer"]["tx_packets"]
    assert _sample(prom, "maglev_unparsed_packets_total") == stats["steering"]["unparsed"]
    assert {lab["reason"]: v for lab, v in prom["maglev_drops_total"]["samples"]} == stats["drops"]
    for w in stats["workers"]:
        i = str(w["worker"])
        for fam, key in (("maglev_worker_packets_total", "packets_in"),
                         ("maglev_worker_forwarded_packets_total", "forwarded"),
                         ("maglev_worker_received_bytes_total", "bytes_in"),
                         ("maglev_worker_transmitted_bytes_total", "bytes_out"),
                         ("maglev_worker_held_fragments", "held"),
                         ("maglev_worker_fragments_total", "fragments"),
                         ("maglev_worker_icmp_sent_total", "icmp_sent"),
                         ("maglev_worker_table_swaps_total", "table_swaps")):
            assert _sample(prom, fam, worker=i) == w[key], (fam, i)
        assert {lab["reason"]: v for lab, v in prom["maglev_worker_drops_total"]["samples"]
                if lab["worker"] == i} == w["dropped"]
        for key, v in w["fragment_table"].items():
            assert _sample(prom, f"maglev_fragment_table_{key}_total", worker=i) == v, key
        assert _sample(prom, "maglev_conntrack_lookups_total", worker=i) == w["conntrack"]["lookups"]
        assert _sample(prom, "maglev_conntrack_inserts_total", worker=i) == w["conntrack"]["inserts"]
