"""Shutdown reacts at once: a stop request wakes every actor where it sleeps (doorbell alert
for the data path, the mailbox for the others), stop groups follow each other as soon as
their members said ``bye``, and actor processes skip interpreter finalization.  The issue's
target is <= 0.5 s from SIGTERM to the exit of ``maglev run --workers 8`` (without BGP
peers); the assertions are generous because this two-core machine is shared, and the
measured figures are printed."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from maglev.actors.pipeline import Pipeline, PipelineOptions
from maglev.native import lib
from tests.run_helpers import poll_until_eof

CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]


def _wait_for_traffic(proc: subprocess.Popen, n_children: int, timeout: float = 60.0) -> list:
    from maglev.rings import SLOT_STEERING, Region

    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while len(me.children()) < n_children or not glob.glob(f"/dev/shm/maglev-mg1-{proc.pid}-*"):
        assert time.monotonic() < deadline, "actors did not start"
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    name = Path(glob.glob(f"/dev/shm/maglev-mg1-{proc.pid}-*")[0]).name.removeprefix("maglev-")
    with Region.attach(name) as region:
        while region.stats(SLOT_STEERING)[lib.MG_SS_RX_PACKETS] < 10000:
            assert time.monotonic() < deadline, "no traffic"
            time.sleep(0.05)
    return me.children()


def _stop_timed(proc: subprocess.Popen, sig: int) -> tuple[str, str, float]:
    """Send ``sig`` to ``proc`` and wait for its exit (30 s at most); returns its stdout,
    its stderr and the seconds from the signal to the exit."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return out, err, time.monotonic() - t0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_maglev_run_with_8_workers_exits_quickly_after_a_signal(tmp_path, sig):
    env = {**os.environ, "MAGLEV_STATE_DIR": str(tmp_path)}
    proc = subprocess.Popen([*CLI, "run", "--workers", "8", "--nic", "gen:flows=1000", "--json",
                             "--control", f"ipc://{tmp_path}/ctl.sock"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        children = _wait_for_traffic(proc, 12)  # steering, 8 workers, muxer, config, health
        out, err, took = _stop_timed(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"\nshutdown of maglev run --workers 8 under load ({sig.name} -> exit): {took * 1000:.0f} ms")
    assert proc.returncode == 0, err
    s = json.loads(out)
    assert s["pool"]["ok"], s["pool"]["detail"]
    assert s["packets_in"] == s["forwarded"] + sum(s["dropped"].values())
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive
    assert took < 2.0, f"shutdown took {took:.2f} s (target 0.5 s)"


def test_stop_of_idle_actors_does_not_wait_for_their_idle_timeouts():
    """Idle data-path actors sleep up to 0.5 s on their doorbell: the stop alert wakes them,
    so each stop group takes milliseconds, not an idle slice."""
    p = Pipeline(PipelineOptions(workers=8, nic="gen:packets=2000"))
    try:
        p.start()
        poll_until_eof(p, what="no eof")
        p.poll(1.0)  # every actor is asleep on its doorbell now
        t0 = time.monotonic()
        p.stop()
        took = time.monotonic() - t0
        s = p.summary()
        # how long each actor took from its stop request to its bye (the supervisor's clock)
        kids = p.supervisor.children.values()
        byes = {c.d.name: round(c.bye_at - c.stop_sent_at, 3) for c in kids if c.bye_at}
        groups: dict[int, float] = {}
        for c in kids:  # a group lasts from its stop request to its last bye
            groups[c.d.stop_group] = max(groups.get(c.d.stop_group, 0.0), c.bye_at - c.stop_sent_at)
    finally:
        p.close()
    # What the test is about is the groups: an actor that slept through its alert would
    # hold its group for up to an idle slice.  The reap after the last bye (every process
    # exiting at once) is CPU work that a loaded machine stretches: printed, not judged
    # here (test_maglev_run_with_8_workers_exits_quickly_after_a_signal times the whole).
    in_groups = sum(groups.values())
    print(f"\nstop of 8 idle workers + steering + muxer: {took * 1000:.0f} ms, of which the stop groups "
          f"{in_groups * 1000:.0f} ms; request -> bye: {byes}")
    assert s["pool"]["ok"], s["pool"]["detail"]
    assert s["packets_in"] == 2000 == s["forwarded"] + sum(s["dropped"].values())
    assert len(byes) == 10, byes  # every actor said bye (none was killed)
    assert in_groups < 1.5, (f"the stop groups took {in_groups:.2f} s (all of stop {took:.2f} s); request -> bye "
                             f"by actor (s): {byes}; load {os.getloadavg()}")


def test_a_signal_during_start_up_stops_at_once_and_leaves_nothing(tmp_path):
    """SIGTERM while the actors are still importing: the supervisor does not wait for the
    start-up to finish (SIGTERM to actors not connected yet, the standby is killed), exits
    0 with a whole pool, and leaves no process, region or run folder."""
    env = {**os.environ, "MAGLEV_STATE_DIR": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    proc = subprocess.Popen([*CLI, "run", "--workers", "8", "--nic", "gen:flows=1000", "--json",
                             "--control", f"ipc://{tmp_path}/ctl.sock"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        me = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while len(me.children()) < 12:  # spawned, not ready: imports take ~1 s each
            assert time.monotonic() < deadline and proc.poll() is None, "actors were not spawned"
            time.sleep(0.02)
        children = me.children()
        out, err, took = _stop_timed(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"\nshutdown during start-up (SIGTERM -> exit): {took * 1000:.0f} ms")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    s = json.loads(out)
    assert s["pool"]["ok"], s["pool"]["detail"]
    assert s["packets_in"] == s["forwarded"] + sum(s["dropped"].values())
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive
    assert not glob.glob(f"/dev/shm/maglev-*-{proc.pid}-*")
    assert not glob.glob(f"{tmp_path}/maglev-*")
    assert took < 2.0, f"shutdown took {took:.2f} s"
