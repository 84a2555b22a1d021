"""Every packet accounted: ``packets_in == forwarded + sum(dropped)`` exactly after any run,
also after ``kill -9`` of any data-path actor under load (at random instants, several times
per run).  What a dead actor held is counted under its own reason (``steering_restart``,
``worker_restart``, ``muxer_restart``), and the frame pool is whole at the end."""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from maglev.actors.pipeline import Pipeline, PipelineOptions
from maglev.native import lib
from maglev.rings import SLOT_MUXER, SLOT_STEERING, Region, RegionError, worker_slot
from tests.run_helpers import (
    NO_LOAD_STALL_MS,
    kill_until_replaced,
    pipeline_summary,
    poll_until_eof,
)

CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]
KILLS = 5


def exact(s: dict) -> None:
    assert s["packets_in"] == s["forwarded"] + sum(s["dropped"].values()), s
    assert s["pool"]["ok"], s["pool"]["detail"]


@pytest.mark.parametrize("victim", ["steering", "worker-0", "worker-1", "muxer"])
def test_kill_9_under_load_keeps_every_packet_accounted(victim):
    rnd = random.Random(f"{victim}-{os.getpid()}")
    # Small rings: back pressure is frequent, so a dead steering often holds packets.
    # A killed worker's full ring is what the stall judgement (50 ms) is for; with steering
    # or the muxer killed, a stall is only the machine's load (run_helpers.NO_LOAD_STALL_MS).
    stall_ms = 50.0 if victim.startswith("worker") else NO_LOAD_STALL_MS
    p = Pipeline(PipelineOptions(workers=2, nic="gen:flows=1000", ring_size=256, stall_ms=stall_ms))
    try:
        p.start()
        deadline = time.monotonic() + 20
        while p.counters()["packets_in"] < 20000:
            assert time.monotonic() < deadline, "no traffic"
            p.poll(0.02)
        for _ in range(KILLS):
            t = time.monotonic() + rnd.uniform(0.05, 0.4)
            while time.monotonic() < t:
                p.poll(0.01)
            kill_until_replaced(p, victim)
        before = p.counters()["packets_in"]
        deadline = time.monotonic() + 20
        while p.counters()["packets_in"] < before + 20000:  # the pipeline still flows
            assert time.monotonic() < deadline, "traffic stopped after the kills"
            p.poll(0.02)
        p.stop()
        s = p.summary()
    finally:
        p.close()
    print(f"\n{victim} killed {KILLS}x: in={s['packets_in']} fwd={s['forwarded']} dropped={s['dropped']}")
    assert s["restarts"][victim] == KILLS
    assert sum(s["restarts"].values()) == KILLS
    exact(s)
    # owner_stalled: a dead worker's packets steering dropped rather than move (mg_steer.h)
    expected = {"steering_restart", "worker_restart", "muxer_restart"} | (
        {"owner_stalled"} if victim.startswith("worker") else set())
    unexpected = set(s["dropped"]) - expected
    assert not unexpected, s["dropped"]  # generated packets all hit a VIP


def test_a_clean_run_is_exact_and_has_no_restart_drops():
    # unpaced: a worker off the CPU for 50 ms would be judged frozen (run_helpers.NO_LOAD_STALL_MS)
    _, s = pipeline_summary(PipelineOptions(workers=3, nic="gen:packets=30000,flows=500,ipv6=0.2",
                                            stall_ms=NO_LOAD_STALL_MS))
    exact(s)
    assert s["packets_in"] == s["forwarded"] == 30000 and s["dropped"] == {}


def test_maglev_run_with_generator_survives_kill_9_of_every_actor_and_balances(tmp_path):
    """``maglev run --nic gen:...``: kill steering, each worker and the muxer (the process
    serving each slot, read from the region) while traffic flows; the run ends by itself
    and its JSON summary balances exactly."""
    env = {**os.environ, "MAGLEV_STATE_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [*CLI, "run", "--workers", "2", "--nic", "gen:seconds=6,flows=1000", "--ring-size", "256",
         "--json", "--control", f"ipc://{tmp_path}/ctl.sock"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed = []
    try:
        deadline = time.monotonic() + 60
        while not glob.glob(f"/dev/shm/maglev-mg1-{proc.pid}-*"):
            assert time.monotonic() < deadline and proc.poll() is None, "no region"
            time.sleep(0.05)
        name = Path(glob.glob(f"/dev/shm/maglev-mg1-{proc.pid}-*")[0]).name.removeprefix("maglev-")
        while True:
            try:
                region = Region.attach(name)
                break
            except RegionError:  # still being initialised
                assert time.monotonic() < deadline and proc.poll() is None, "region never ready"
                time.sleep(0.05)
        with region:
            slots = [SLOT_STEERING, worker_slot(0), worker_slot(1), SLOT_MUXER]
            while region.stats(SLOT_STEERING)[lib.MG_SS_RX_PACKETS] < 20000 or not all(
                    region.slot_pid(s) for s in slots):
                assert time.monotonic() < deadline and proc.poll() is None, "no traffic"
                time.sleep(0.05)
            for slot in slots:
                pid = region.slot_pid(slot)
                assert pid in {c.pid for c in psutil.Process(proc.pid).children()}
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                while region.slot_pid(slot) == pid:  # its replacement took the slot over
                    assert time.monotonic() < deadline and proc.poll() is None, "no replacement"
                    time.sleep(0.02)
                time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    s = json.loads(out)
    print(f"\nmaglev run, 4 actors killed: in={s['packets_in']} fwd={s['forwarded']} dropped={s['dropped']}")
    assert s["restarts"] == {**s["restarts"], "steering": 1, "worker-0": 1, "worker-1": 1, "muxer": 1}
    exact(s)


def _split_capture(path: Path, n: int) -> None:
    """n full-size DF-clear UDP packets to the sample config's IPIP VIP: each one is split
    in two by the encapsulation at MTU 1500, so every packet takes a spare frame."""
    from maglev.nic.pcapfile import PcapWriter
    from maglev.testing import packets as P

    client, vip = "198.51.100.9", "203.0.113.20"
    body = bytes(1500 - 20 - 8)
    flows = [P.eth(P.ipv4(client, vip, P.UDP, P.udp(1000 + i, 53, body, src=client, dst=vip), df=False))
             for i in range(256)]
    with PcapWriter(path) as w:
        for i in range(n):
            w.write(flows[i % len(flows)], 10**9 + i * 1000)


@pytest.mark.parametrize("victim", ["steering", "worker-0", "muxer"])
def test_kill_9_while_packets_are_split_into_spare_frames_stays_exact(tmp_path, victim):
    """Spare frames (steering -> worker spare rings) under kill -9: a worker that dies with
    used spares in its hand, a muxer holding both pieces of packets, a steering killed
    while topping the spare rings up -- packets_in == forwarded + sum(dropped) exactly,
    pieces are never counted as packets, and the pool (spare rings included) is whole."""
    rnd = random.Random(f"split-{victim}-{os.getpid()}")
    cap = tmp_path / "big.pcap"
    n = 40000
    _split_capture(cap, n)
    # A killed worker's full ring is what the stall judgement (50 ms) is for; with steering
    # or the muxer killed, a stall is only the machine's load (owner_stalled seen at load
    # 12+ with two suites at once), so those runs give it 5 s (run_helpers.NO_LOAD_STALL_MS).
    stall_ms = 50.0 if victim.startswith("worker") else NO_LOAD_STALL_MS
    p = Pipeline(PipelineOptions(workers=2, nic=f"pcap:{cap}", ring_size=256, stall_ms=stall_ms))
    kills = 5
    try:
        p.start()
        deadline = time.monotonic() + 60
        while p.counters()["packets_in"] < 1000:
            assert time.monotonic() < deadline, "no traffic"
            p.poll(0.02)
        under_load = 0
        for _ in range(kills):
            t = time.monotonic() + rnd.uniform(0.02, 0.15)
            while time.monotonic() < t:
                p.poll(0.01)
            under_load += p.counters()["packets_in"] < n
            kill_until_replaced(p, victim)
        poll_until_eof(p, 120, "the replay never ended")
        p.stop()
        s = p.summary()
    finally:
        p.close()
    print(f"\n{victim} killed {kills}x ({under_load} during the replay) while splitting: in={s['packets_in']} "
          f"fwd={s['forwarded']} dropped={s['dropped']} spares_used={sum(w['spares_used'] for w in s['per_worker'])}")
    assert under_load >= 1, "every kill landed after the replay: nothing was tested under load"
    assert s["restarts"][victim] == kills
    exact(s)
    assert s["packets_in"] == n  # a restarted steering continues the replay where it was
    # owner_stalled: a dead worker's packets steering dropped rather than move (mg_steer.h)
    expected = {"steering_restart", "worker_restart", "muxer_restart"} | (
        {"owner_stalled"} if victim.startswith("worker") else set())
    unexpected = set(s["dropped"]) - expected
    assert not unexpected, s["dropped"]  # in particular no no_spare_frame, no too_big
    assert sum(w["spares_used"] for w in s["per_worker"]) >= s["forwarded"] > 0
