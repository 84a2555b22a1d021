"""``maglev ctl watch`` when the run it watches stops and comes back.

Before: a SUB socket cannot tell a quiet publisher from a gone one, so after the run
stopped the watch sat silent for ever (found with ``ctl watch | head -1``: 10 minutes and
counting).  Now a line on stderr says the events socket closed, another when a new run on
the same endpoint is back, and the events of the new run are shown (and one when the
watch first connects)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing import unique
from maglev.testing.wait import wait_until

CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample.toml"


def _run(d: Path, conf: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(d / "run.log", "a") as log:  # the child keeps its own descriptor
        p = subprocess.Popen([*CLI, "run", "--config", str(conf), "--workers", "1", "--control", f"ipc://{d}/c.sock",
                              "--nic", "gen:seconds=120,rate=500"], stdout=subprocess.DEVNULL,
                             stderr=log, env=env, start_new_session=True)
    wait_until(lambda: (d / "c.sock").exists() or p.poll() is not None, 60, "the control socket")
    assert p.poll() is None, (d / "run.log").read_text()[-3000:]
    return p


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


def test_watch_says_when_the_run_stops_and_when_it_is_back(shortdir):
    d = shortdir
    conf = d / "m.toml"
    conf.write_text(SAMPLE.read_text().replace('name = "mg1"', f'name = "{unique.name("wl")}"', 1))
    env = {**os.environ, "MAGLEV_STATE_DIR": str(d / "state"), "MAGLEV_RUN_DIR": str(d / "run")}
    runs: list[subprocess.Popen] = []
    watch = None
    try:
        runs.append(_run(d, conf, env))
        with open(d / "w.out", "w") as out, open(d / "w.err", "w") as err:
            watch = subprocess.Popen([*CLI, "ctl", "--control", f"ipc://{d}/c.sock", "watch", "--json"],
                                     stdout=out, stderr=err)
        wait_until(lambda: "watch: connected (" in (d / "w.err").read_text(), 30, "the watch connected")
        _stop(runs[0])
        wait_until(lambda: "events socket closed" in (d / "w.err").read_text(), 30, "the watch saying the run stopped")
        assert watch.poll() is None, "the watch should wait for the run to come back"
        lines_before = (d / "w.out").read_text().count("\n")
        runs.append(_run(d, conf, env))
        wait_until(lambda: "connected again" in (d / "w.err").read_text(), 30, "the watch saying the run is back")
        # the new run's events reach the watch (the controller's health event comes at start)
        wait_until(lambda: (d / "w.out").read_text().count("\n") > lines_before, 30, "an event of the new run")
        err = (d / "w.err").read_text()
        assert "Traceback" not in err and err.count("events socket closed") == 1, err
    finally:
        if watch is not None and watch.poll() is None:
            watch.send_signal(signal.SIGINT)
            try:
                watch.wait(timeout=10)
            except subprocess.TimeoutExpired:
                watch.kill()
                watch.wait()
        for p in runs:
            _stop(p)
        remove_recorded(str(d / "state"))
