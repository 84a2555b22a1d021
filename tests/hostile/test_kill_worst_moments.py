"""kill -9 at the worst moments of a live ``maglev run`` under load (session 10), beyond
tests/hostile/test_kill_every_process.py.

- One worker killed 20 times in a row, each replacement as soon as it is started: the
  supervisor used to give up after the sixth death within 10 s and stop the whole run
  (``worker-0 died 6 times in 10 s (signal SIGKILL); giving up``, exit 2).  Now it
  restarts with a back-off (docs/actors.md, "A crash loop is restarted with a back-off"):
  the run stays up, is healthy again after the last kill, balances and stops on SIGTERM.
- ``maglev run`` itself frozen (SIGSTOP) for 5 s: on waking it killed every actor for
  missed heartbeats that were only waiting in its own frozen ZeroMQ thread.

After every scenario the summary balances exactly, the pool is whole, no log line carries
a traceback, and nothing is left behind (the ``lab`` fixture and the leak guard).
"""

from __future__ import annotations

import os
import re
import signal
import time

import psutil
import pytest

from maglev.testing.wait import wait_until
from tests.hostile.test_accepted_config import _started
from tests.hostile.test_kill_every_process import Run, balanced, lab

pytestmark = pytest.mark.slow


def test_one_worker_killed_20_times_in_a_row_is_restarted_with_a_back_off_and_the_run_recovers(shortdir):
    with lab(shortdir) as (conf, env):
        r = Run(shortdir, conf, env, "loop")
        try:
            wait_until(r.healthy, 60, "the run to be healthy")
            r.flowing("before the kills")
            for i in range(20):
                n = len(_started(r.log)["worker-0"])
                pid = r.pid("worker-0")
                assert pid in {p.pid for p in psutil.Process(r.proc.pid).children()}
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda n=n: len(_started(r.log)["worker-0"]) > n or r.proc.poll() is not None, 60,
                           f"worker-0 restarted after kill {i + 1}")
                assert r.proc.poll() is None, f"the run ended after kill {i + 1}: " + r.log.read_text()[-2000:]
            wait_until(r.healthy, 60, "a healthy run after 20 kills")
            r.flowing("after 20 kills")
            s = r.stop()
        finally:
            r.close()
        assert s["restarts"]["worker-0"] == 20, s["restarts"]
        assert sum(s["restarts"].values()) == 20, s["restarts"]
        balanced(s, r.log)
        delays = [float(d) for d in re.findall(r'restarting it after a back-off" actor_=worker-0 '
                                               r'deaths_in_a_row=\d+ delay_s=([\d.]+)', r.log.read_text())]
        # deaths 6.. in a row waited 0.25, 0.5, 1, 2, then 4 s each (never a restart spin)
        assert delays[:5] == [0.25, 0.5, 1.0, 2.0, 4.0], delays


def test_a_supervisor_frozen_for_5_s_kills_no_actor_when_it_wakes(shortdir):
    """SIGSTOP of ``maglev run`` itself for 5 s under load, then SIGCONT.  Its actors went on
    beating, but their heartbeats waited in its frozen ZeroMQ thread: on waking it found
    every actor silent for more than the 3 s limit and killed them all (every actor
    restarted once, a dead worker's packets dropped).  The time it did not run is not held
    against them now: nothing restarts, the run stays healthy and balances."""
    with lab(shortdir) as (conf, env):
        r = Run(shortdir, conf, env, "frozen")
        try:
            wait_until(r.healthy, 60, "the run to be healthy")
            r.flowing("before the freeze")
            before = {a: len(p) for a, p in _started(r.log).items()}
            os.kill(r.proc.pid, signal.SIGSTOP)
            try:
                t = time.monotonic() + 5
                while time.monotonic() < t:  # the freeze itself (the actors keep running)
                    assert r.proc.poll() is None
                    time.sleep(0.1)
            finally:
                os.kill(r.proc.pid, signal.SIGCONT)

            def woke() -> bool:
                text = r.log.read_text(errors="replace")
                return "the supervisor did not run for a while" in text or "stopped heart-beating" in text
            wait_until(woke, 30, "the supervisor to notice its own freeze")
            r.flowing("after the freeze")
            wait_until(r.healthy, 60, "a healthy run after the freeze")
            after = {a: len(p) for a, p in _started(r.log).items()}
            s = r.stop()
        finally:
            r.close()
        assert after == before, (before, after)
        assert "stopped heart-beating" not in r.log.read_text(errors="replace")
        assert sum(s["restarts"].values()) == 0, s["restarts"]
        balanced(s, r.log)
