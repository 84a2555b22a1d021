"""Two shards through `maglev run` with the generator NIC: each is its own supervisor with
its own region, CPU, control socket and state.  Shard a's generator floods it (as fast as
it takes packets) and its worker is killed with -9 three times; shard b's generator sends a
paced 20 kpps.  b's forwarded rate and its receive-to-transmit latency (the muxer's
histogram, `maglev run --latency`) during the kills are compared with before, b's worker is
never restarted and b drops nothing.  A reload with a broken section of shard a is refused
by a (path-precise) and does not stop b's own reload.  Each shard's BGP speaker announces
only that shard's VIPs, to a scripted peer on its own listener."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from maglev.actors.pipeline import latency_us
from maglev.control.client import ControlClient
from maglev.control.protocol import ProtocolError
from maglev.native import lib
from maglev.rings import SLOT_MUXER, SLOT_STEERING, Region, RegionError, worker_slot
from maglev.testing import unique

CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]

CONF = """
[instance]
name = "{name}"
source_ipv4 = "198.18.0.1"

[[shard]]
name = "a"
cpus = "{cpu_a}"
workers = 1
nic = "gen:seconds=40,flows=2000,ipv6=0"
[[shard.vip]]
address = "203.0.113.10"
port = 80
[[shard.vip.backend]]
address = "198.18.1.1"

[[shard]]
name = "b"
cpus = "{cpu_b}"
workers = 1
nic = "gen:seconds=40,flows=200,ipv6=0,rate=20000"
[[shard.vip]]
address = "203.0.113.20"
port = 80
[[shard.vip.backend]]
address = "{b_backend}"
"""


def _two_cpus() -> list[int]:
    """Two CPUs this process may use (one per shard), or skip."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("two shards on their own cores need two CPUs; this process may use one")
    return cpus


def _start(cfg: Path, text: str, *args: str) -> subprocess.Popen:
    """Write ``text`` to ``cfg`` and start ``maglev run --config CFG ARGS --json`` on it,
    its run and state directories beside ``cfg``."""
    cfg.write_text(text)
    env = {**os.environ, "MAGLEV_RUN_DIR": str(cfg.parent / "run"), "MAGLEV_STATE_DIR": str(cfg.parent / "state")}
    return subprocess.Popen([*CLI, "run", "--config", str(cfg), *args, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _attach(pattern: str, proc: subprocess.Popen, deadline: float) -> Region:
    while True:
        found = glob.glob(pattern)
        if found:
            try:
                return Region.attach(Path(found[0]).name.removeprefix("maglev-"))
            except RegionError:  # still being initialised
                pass
        assert time.monotonic() < deadline and proc.poll() is None, f"no region {pattern}"
        time.sleep(0.05)


def _snap(region: Region) -> tuple[float, int, list[int]]:
    """(time, forwarded by worker 0, the muxer's latency histogram) of ``region``."""
    mux = region.stats(SLOT_MUXER)
    hist = [int(mux[lib.MG_MS_LAT0 + i]) for i in range(lib.MG_MS_LAT_N)]
    return time.monotonic(), int(region.stats(worker_slot(0))[lib.MG_WS_FORWARDED]), hist


def _window(a: tuple[float, int, list[int]], b: tuple[float, int, list[int]]) -> tuple[float, dict[str, float]]:
    """Forwarded packets per second and latency quantiles (us) between two snapshots."""
    return (b[1] - a[1]) / (b[0] - a[0]), latency_us([y - x for x, y in zip(a[2], b[2], strict=True)])


@pytest.mark.slow
def test_killing_and_flooding_one_shard_leaves_the_other_alone():
    cpus = _two_cpus()
    base = Path(tempfile.mkdtemp(prefix="mgs-", dir="/tmp"))
    name = unique.name("shr")
    cfg = base / "maglev.toml"
    proc = _start(cfg, CONF.format(name=name, cpu_a=cpus[0], cpu_b=cpus[1], b_backend="198.18.1.2"),
                  "--latency", "--ring-size", "256")
    regions: list[Region] = []
    try:
        deadline = time.monotonic() + 60
        ra = _attach(f"/dev/shm/maglev-{name}-a-*", proc, deadline)
        regions.append(ra)
        rb = _attach(f"/dev/shm/maglev-{name}-b-*", proc, deadline)
        regions.append(rb)
        assert ra.name != rb.name
        while not (ra.slot_pid(worker_slot(0)) and rb.slot_pid(worker_slot(0))
                   and rb.stats(SLOT_STEERING)[lib.MG_SS_RX_PACKETS] > 20_000
                   and ra.stats(SLOT_STEERING)[lib.MG_SS_RX_PACKETS] > 50_000):
            assert time.monotonic() < deadline and proc.poll() is None, "no traffic"
            time.sleep(0.05)
        b_worker = rb.slot_pid(worker_slot(0))
        s0 = _snap(rb)
        time.sleep(3.0)
        s1 = _snap(rb)
        before, lat_before = _window(s0, s1)
        # During: kill a's worker (each replacement once it took the slot over; three
        # times: the supervisor gives up after five deaths in 10 s) while a's generator
        # keeps flooding its rings (what a's dead worker cannot take is a's drops, never b's).
        # The window lasts 4 s, or until the third kill if the replacements are slower
        # (each takes ~1 s; more under load: a fixed 4 s saw only two kills at times).
        kills, last = 0, 0
        t0 = time.monotonic()
        while kills < 3 or time.monotonic() - t0 < 4.0:
            pid = ra.slot_pid(worker_slot(0))
            if pid and pid != last and kills < 3:
                os.kill(pid, signal.SIGKILL)
                kills, last = kills + 1, pid
            assert time.monotonic() - t0 < 60 and proc.poll() is None, f"only {kills} kills"
            time.sleep(0.1)
        during, lat_during = _window(s1, _snap(rb))
        assert kills == 3
        assert rb.slot_pid(worker_slot(0)) == b_worker, "shard b's worker was replaced"
        print(f"\nshard b: {before:.0f} pps, latency {lat_before} before; {during:.0f} pps, latency "
              f"{lat_during} while shard a's worker was killed {kills} times (rate ratio {during / before:.3f})")
        # b is paced at 20 kpps on its own core and rings: it keeps the rate (a stall shared
        # with a would cost it the ~1 s each restart of a's worker takes)
        assert 0.9 * before < during < 1.1 * before
        assert lat_before["packets"] > 10_000 and lat_during["packets"] > 10_000

        # Reload: a broken section of shard a; b's own change still applies.  First let a's
        # last replacement worker start: an actor reads the file when it starts, so one
        # starting after the bad edit would fail (as in any run: docs/operations.md).
        while True:
            f0 = ra.stats(worker_slot(0))[lib.MG_WS_FORWARDED]
            time.sleep(0.2)
            if ra.slot_pid(worker_slot(0)) and ra.stats(worker_slot(0))[lib.MG_WS_FORWARDED] > f0:
                break
            assert time.monotonic() < deadline + 30 and proc.poll() is None, \
                f"shard a's worker never came back: {proc.communicate(timeout=60)[1]}"
        # b's median latency during the kills, against the worse of two calm windows (before
        # the kills, and now that a's worker is back): the load of other jobs on this VM
        # drifts over these seconds (p50 4.2 ms during the kills at load 18 failed the old
        # bound, 2 x before + 1 ms).  The bound's reason: a stall shared with a's restarts
        # (~1 s each, three in the 4 s window) would hold b's packets in its full 256-slot
        # ring, 12.8 ms at 20 kpps, for most of the window, adding about that much to the
        # median; half of it is allowed.  The tail is printed only: it moves with load alone.
        s2 = _snap(rb)
        time.sleep(2.0)
        _, lat_after = _window(s2, _snap(rb))
        calm = max(lat_before["p50"], lat_after["p50"])
        print(f"shard b latency after: {lat_after}")
        assert lat_during["p50"] < calm + 256 / 20_000 / 2 * 1e6, (lat_before, lat_during, lat_after)
        ctl_a = f"ipc://{base}/run/{name}-a/control.sock"
        ctl_b = f"ipc://{base}/run/{name}-b/control.sock"
        cfg.write_text(CONF.format(name=name, cpu_a=cpus[0], cpu_b=cpus[1], b_backend="198.18.1.3")
                       .replace('address = "198.18.1.1"', 'address = "198.18.1.x"'))
        with ControlClient(ctl_a, timeout=20) as c:
            with pytest.raises(ProtocolError) as ei:
                c.call("reload", {})
            assert "shard[0].vip[0].backend[0].address: '198.18.1.x' is not an IP address" in ei.value.message
            assert c.call("get-config", {})["config"]["vip"][0]["backend"][0]["address"] == "198.18.1.1"
        with ControlClient(ctl_b, timeout=20) as c:
            assert c.call("reload", {})["changed"]
            assert c.call("get-config", {})["config"]["vip"][0]["backend"][0]["address"] == "198.18.1.3"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        for r in regions:
            r.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):  # a failed test must not leave them to the GC
            pipe.close()  # (a ResourceWarning there failed the next test under filterwarnings=error)
        shutil.rmtree(base, ignore_errors=True)
    assert proc.returncode == 0, err
    s = json.loads(out)
    assert s["exit_codes"] == {"a": 0, "b": 0}
    a, b = s["shards"]["a"], s["shards"]["b"]
    assert a["restarts"]["worker-0"] == 3 and not any(b["restarts"].values())
    for x in (a, b):
        assert x["packets_in"] == x["forwarded"] + sum(x["dropped"].values()), x
        assert x["pool"]["ok"], x["pool"]["detail"]
    assert sum(b["dropped"].values()) == 0, b["dropped"]


BGP_CONF = """
[instance]
name = "{name}"
source_ipv4 = "198.18.0.1"
{shards}
"""
BGP_SHARD = """
[[shard]]
name = "{shard}"
cpus = "{cpu}"
workers = 1
nic = "gen:seconds=30,flows=100,ipv6=0,rate=2000"
[shard.bgp]
local_asn = 64513
router_id = "198.18.0.{rid}"
listen_address = "127.0.0.1"
listen_port = {port}
connect_retry_time = 1
[[shard.bgp.peer]]
address = "127.0.0.1"
asn = 64512
passive = true
[[shard.vip]]
address = "{vip}"
port = 80
[[shard.vip.backend]]
address = "198.18.1.{rid}"
"""


@pytest.mark.slow
def test_each_shard_announces_only_its_own_vips_over_its_own_bgp_session():
    from maglev.bgp import messages as m
    from maglev.testing.ports import free_port
    from tests.bgp.test_actor import BlockingPeer

    cpus = _two_cpus()
    base = Path(tempfile.mkdtemp(prefix="mgs-", dir="/tmp"))
    name = unique.name("shg")
    ports = {"a": free_port(), "b": free_port()}
    vips = {"a": "203.0.113.10", "b": "203.0.113.20"}
    shards = "".join(BGP_SHARD.format(shard=s, cpu=cpus[i], rid=i + 1, port=ports[s], vip=vips[s])
                     for i, s in enumerate(("a", "b")))
    proc = _start(base / "maglev.toml", BGP_CONF.format(name=name, shards=shards))
    peers = []
    try:
        announced: dict[str, set[str]] = {}
        for s in ("a", "b"):
            deadline = time.monotonic() + 60
            while True:
                try:
                    peer = BlockingPeer(ports[s])
                    break
                except OSError:
                    assert time.monotonic() < deadline and proc.poll() is None, f"shard {s}: no BGP listener"
                    time.sleep(0.1)
            peers.append(peer)
            peer.handshake()
            got: set[str] = set()
            while not got:
                msg = peer.recv()
                if isinstance(msg, m.Update):
                    got |= {str(n) for n in msg.nlri}
                assert time.monotonic() < deadline + 30, f"shard {s} announced nothing"
            announced[s] = got
        print(f"\nannounced: {announced}")
        assert announced == {"a": {"203.0.113.10/32"}, "b": {"203.0.113.20/32"}}
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        for p in peers:
            p.sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):  # a failed test must not leave them to the GC
            pipe.close()  # (a ResourceWarning there failed the next test under filterwarnings=error)
        shutil.rmtree(base, ignore_errors=True)
    assert proc.returncode == 0, err
    assert json.loads(out)["exit_codes"] == {"a": 0, "b": 0}
