"""The forwarder pipeline end to end: steering, workers and muxer as processes on the
shared-memory rings, under the supervisor.  Every test checks the frame accounting (each
frame in exactly one place at the end) and that the shm region and run directory are gone."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from maglev.actors.pipeline import Pipeline, PipelineOptions
from maglev.config import SAMPLE_CONFIG
from maglev.native import ffi, lib
from maglev.nic.gen import GenNic
from maglev.nic.pcapfile import PcapReader, PcapWriter
from tests.run_helpers import (
    NO_LOAD_STALL_MS,
    kill_until_replaced,
    pipeline_summary,
    poll_until_eof,
    wait_standby_ready,
    wait_worker_packets,
)

FRAME = int(lib.MG_FRAME_SIZE)
META = int(lib.MG_FRAME_META_SIZE)
CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]


def cli_env(tmp: Path) -> dict[str, str]:
    """The config manager resumes the last accepted config of an instance from its state
    directory; a test run must not pick up another run's changes."""
    return {**os.environ, "MAGLEV_STATE_DIR": str(tmp)}


def gone(p: Pipeline) -> None:
    assert not os.path.exists(f"/dev/shm/maglev-{p.region_name}")
    assert not os.path.exists(p.supervisor.run_dir)


def balanced(s: dict, slack: int = 0) -> None:
    total = s["forwarded"] + sum(s["dropped"].values())
    assert abs(s["packets_in"] - total) <= slack, s


def test_generator_run_accounts_for_every_packet():
    # unpaced: a worker off the CPU for 50 ms would be judged frozen (run_helpers.NO_LOAD_STALL_MS)
    p, s = pipeline_summary(PipelineOptions(workers=2, nic="gen:packets=20000,flows=500,ipv6=0.2",
                                            stall_ms=NO_LOAD_STALL_MS))
    gone(p)
    assert s["packets_in"] == 20000
    balanced(s)
    assert s["forwarded"] == 20000  # every generated packet is for a configured VIP
    assert s["tx_packets"] == s["forwarded"]
    assert sum(w["packets_in"] for w in s["per_worker"]) == 20000
    assert all(w["packets_in"] > 0 for w in s["per_worker"])
    assert s["pool"]["ok"], s["pool"]["detail"]
    assert s["restarts"] == {"steering": 0, "worker-0": 0, "worker-1": 0, "muxer": 0}


def write_capture(path: Path, bursts: int, extra: list[bytes] = ()) -> int:
    """Generated packets toward the sample VIPs plus one VIP that is not configured (drops),
    and any extra raw frames; timestamps 1 us apart."""
    vips = [("203.0.113.10", 80, "tcp"), ("203.0.113.20", 0, "udp"),
            ("2001:db8:100::10", 443, "tcp"), ("203.0.113.99", 80, "tcp")]
    g = GenNic(vips, flows=300, syn=0.3, size=100, ipv6=0.2, seed=5)
    pool = ffi.new("uint8_t[]", 256 * FRAME)
    descs = ffi.new("uint64_t[]", list(range(256)))
    n = 0
    with PcapWriter(path) as w:
        for _ in range(bursts):
            k = g.rx_burst(pool, descs, 256)
            for i in range(k):
                m = ffi.cast("struct mg_frame_meta *", pool + i * FRAME)
                w.write(ffi.buffer(pool + i * FRAME + META + m.data_off, m.len)[:], 10**9 + n * 1000)
                n += 1
        for raw in extra:
            w.write(raw, 10**9 + n * 1000)
            n += 1
    return n


def test_capture_run_gives_the_same_packets_as_replay(tmp_path, corpus_dir):
    from maglev import config
    from maglev.datapath.replay import replay

    extra = []
    for name in ("IPv4Frag.pcap", "icmp6.pcap", "802.1ad_QinQ.pcap"):
        with PcapReader(corpus_dir / name) as reader:
            extra += [r.data for r in reader if r.ok]
    cap = tmp_path / "in.pcap"
    n = write_capture(cap, 12, extra)
    out_run, out_replay = tmp_path / "run.pcap", tmp_path / "replay.pcap"
    r = subprocess.run(
        [*CLI, "run", "--workers", "3", "--config", str(SAMPLE_CONFIG), "--nic", f"pcap:{cap}",
         "--out", str(out_run), "--exit-on-eof", "--json", "--stall-ms", str(NO_LOAD_STALL_MS)],
        capture_output=True, text=True, timeout=90, env=cli_env(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    ref = replay(cap, config.load(SAMPLE_CONFIG), out=out_replay)
    assert s["packets_in"] == ref["packets_in"] == n
    assert s["forwarded"] == ref["forwarded"]
    assert s["dropped"] == ref["dropped"]
    assert s["pool"]["ok"]
    with PcapReader(out_run) as a, PcapReader(out_replay) as b:
        mine = Counter(rec.data for rec in a)
        theirs = Counter(rec.data for rec in b)
    assert sum(mine.values()) == ref["forwarded"] + ref["icmp_sent"]
    assert mine == theirs


def test_kill_9_worker_is_replaced_within_a_second_and_the_pool_stays_whole():
    p = Pipeline(PipelineOptions(workers=2, nic="gen:seconds=20,flows=1000", ring_size=256))
    try:
        t_cold = time.monotonic()
        p.start()
        cold = time.monotonic() - t_cold  # this run's cold start: interpreters and imports
        sup = p.supervisor
        standby = wait_standby_ready(sup)
        deadline = time.monotonic() + 10
        while p.counters()["per_worker"][0]["packets_in"] < 2000:
            assert time.monotonic() < deadline, "worker 0 got no traffic"
            p.poll(0.02)
        took = kill_until_replaced(p, "worker-0", 5)
        assert sup.pid("worker-0") == standby, "the replacement is not the standby process"
        wait_worker_packets(p, 2000, "the replacement does not process packets")
        p.stop()
        s = p.summary()
    finally:
        p.close()
    gone(p)
    # Under a second on a quiet machine; on a loaded one the standby still spares the
    # replacement the interpreter start and imports that this run's cold start paid.
    assert took < max(1.0, cold), f"replacement took {took:.2f} s (cold start {cold:.2f} s)"
    assert s["restarts"]["worker-0"] == 1
    assert sum(s["restarts"].values()) == 1
    assert s["pool"]["ok"], s["pool"]["detail"]
    # Exact: what the dead worker held is counted once (tests/actors/test_accounting.py).
    balanced(s)


def test_sigterm_stops_cleanly_with_a_summary_and_leaves_nothing(tmp_path):
    proc = subprocess.Popen([*CLI, "run", "--workers", "2", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(tmp_path))
    try:
        me = psutil.Process(proc.pid)
        deadline = time.monotonic() + 30
        while len(me.children()) < 5:  # steering, 2 workers, muxer, config manager
            assert time.monotonic() < deadline, "actors did not start"
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        children = me.children()
        # Wait until traffic flows (steering's receive counter in the region moves).
        from maglev.rings import SLOT_STEERING, Region

        name = Path(glob.glob(f"/dev/shm/maglev-mg1-{proc.pid}-*")[0]).name.removeprefix("maglev-")
        with Region.attach(name) as region:
            while region.stats(SLOT_STEERING)[lib.MG_SS_RX_PACKETS] == 0:
                assert time.monotonic() < deadline, "no traffic"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    s = json.loads(out)
    assert s["packets_in"] > 0
    assert s["pool"]["ok"]
    assert set(s) >= {"packets_in", "forwarded", "dropped", "per_worker", "restarts", "elapsed_s"}
    assert not glob.glob(f"/dev/shm/maglev-*-{proc.pid}-*")  # region names carry the pid
    for c in children:
        assert not c.is_running() or c.status() == psutil.STATUS_ZOMBIE


def test_eight_idle_workers_use_almost_no_cpu():
    p = Pipeline(PipelineOptions(workers=8, nic="gen:packets=1000"))
    try:
        p.start()
        poll_until_eof(p)
        procs = [psutil.Process(p.supervisor.pid(n)) for n in p.supervisor.children]
        time.sleep(0.5)
        c0 = sum(sum(pr.cpu_times()[:2]) for pr in procs)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            p.poll(0.05)
        used = (sum(sum(pr.cpu_times()[:2]) for pr in procs) - c0) / (time.monotonic() - t0)
        p.stop()
        s = p.summary()
    finally:
        p.close()
    print(f"idle CPU of 10 actors (8 workers): {used * 100:.2f}% of one core")
    assert used < 0.10  # aim < 2%; the bound leaves room for a busy shared machine
    assert s["pool"]["ok"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nic", "pcap:/nonexistent/x.pcap"], "no such file"),
        (["--nic", "gen:flows=-1"], "flows=-1 is out of range"),
        (["--cpus", "4096"], "not available here"),
        (["--config", "/nonexistent.toml"], "cannot read"),
        # found by the config manager / the muxer after every process had started (2026-12-07)
        (["--control", "tcp://"], "--control 'tcp://': expected ipc://PATH or tcp://HOST:PORT"),
        (["--control", "tcp://127.0.0.1"], "expected tcp://HOST:PORT (the events socket takes PORT+1)"),
        (["--out", "/nonexistent-maglev-dir/x.pcap"], "--out /nonexistent-maglev-dir/x.pcap: no such folder"),
    ],
)
def test_bad_arguments_are_one_clear_line_and_leave_nothing(args, message, tmp_path):
    proc = subprocess.Popen([*CLI, "run", "--json", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(tmp_path))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert message in err
    assert "Traceback" not in err
    assert not glob.glob(f"/dev/shm/maglev-*-{proc.pid}-*")


def test_supervisor_killed_with_9_actors_exit_and_the_region_is_reclaimed(tmp_path, shortdir):
    from maglev.actors.leftovers import remove_dead_runs
    from maglev.rings import remove_stale_regions

    # The run folder in a private XDG_RUNTIME_DIR: in the shared /tmp, the dead run's folder
    # is also every other session's to remove (and once, with a second copy of the suite
    # running, it was still there at teardown).
    xdg = shortdir / "xdg"
    xdg.mkdir()
    proc = subprocess.Popen([*CLI, "run", "--workers", "2", "--json"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**cli_env(tmp_path), "XDG_RUNTIME_DIR": str(xdg)})
    try:
        me = psutil.Process(proc.pid)
        deadline = time.monotonic() + 30
        while len(me.children()) < 5 or not glob.glob(f"/dev/shm/maglev-mg1-{proc.pid}-*"):
            assert time.monotonic() < deadline, "actors did not start"
            time.sleep(0.1)
        children = me.children()
        proc.kill()
        proc.wait(timeout=10)
        gone_, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"orphans left: {alive}"
        # Nobody removes it until the next run of the instance looks (on this shared
        # machine another run of "mg1" may be the one that does, hence no assertion on
        # which call removed it).
        remove_stale_regions("mg1")
        assert not glob.glob(f"/dev/shm/maglev-mg1-{proc.pid}-*")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in glob.glob(f"/dev/shm/maglev-mg1-{proc.pid}-*"):
            os.unlink(p)
        # The killed supervisor's run folder: the next run of any instance removes a dead
        # run's folder (leftovers.py); this test is that next look, so nothing is left.
        remove_dead_runs(str(xdg))
    assert not list(xdg.iterdir()), list(xdg.iterdir())


@pytest.mark.parametrize("ring_size", [256, 2048])
def test_full_size_df_clear_packets_are_split_not_dropped_under_load(tmp_path, ring_size):
    """MTU 1500 (the sample config's default) and 1500-byte DF-clear IPv4 packets to a UDP
    VIP: each is split in two by GRE's overhead, so every packet needs a spare frame.  The
    capture is read as fast as steering can, through small and big rings: not one packet
    may be dropped for lack of a frame (the workers' spare rings, mg_steer.h)."""
    from maglev.testing import packets as P

    client, vip = "198.51.100.9", "203.0.113.20"
    n = 6000
    cap = tmp_path / "big.pcap"
    with PcapWriter(cap) as w:
        for i in range(n):
            body = bytes(1500 - 20 - 8)
            pkt = P.eth(P.ipv4(client, vip, P.UDP, P.udp(1000 + i % 500, 53, body, src=client, dst=vip), df=False))
            w.write(pkt, 10**9 + i * 1000)
    out = tmp_path / "out.pcap"
    p, s = pipeline_summary(PipelineOptions(workers=2, nic=f"pcap:{cap}", out=str(out), ring_size=ring_size,
                                            stall_ms=NO_LOAD_STALL_MS), 60)
    gone(p)
    assert s["packets_in"] == n
    assert s["dropped"] == {}, s["dropped"]
    assert s["forwarded"] == n
    assert sum(w["spares_used"] for w in s["per_worker"]) == n  # one spare per packet
    assert s["tx_packets"] == 2 * n
    assert s["pool"]["ok"], s["pool"]["detail"]
    with PcapReader(out) as r:
        assert sum(1 for _ in r) == 2 * n
