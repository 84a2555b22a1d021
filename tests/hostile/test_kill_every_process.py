"""kill -9 of every process of a run under load: twice in a row, during a reload, during the
stop's drain, and of the supervisor itself.

A real ``maglev run`` (generator NIC, two packet workers, config manager, health prober,
BGP speaker toward a peer on 127.0.0.1).  After every scenario the run's summary must
balance exactly (``packets_in == forwarded + sum(dropped)``, every drop under a named
reason), the frame pool must be whole, and no log line may carry a traceback.  A killed
supervisor must take its actors with it (they see their parent gone and stop), and the
next ``maglev run`` of the same config must start clean (it removes the dead run's folder
and region, adopts the connection tables) and balance in its turn.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from maglev.control.client import ControlClient
from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing import unique
from maglev.testing.ports import free_port
from maglev.testing.wait import wait_until
from tests.hostile.test_accepted_config import _started, _vips
from tests.run_helpers import NO_LOAD_STALL_MS
from tests.scaleout.conftest import RouterThread, bgp_instance_toml

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]
ACTORS = ("steering", "worker-0", "worker-1", "muxer", "config", "health", "bgp")
# What a kill may legitimately cost, by reason (everything else is a finding).
KILL_REASONS = {"steering_restart", "worker_restart", "muxer_restart", "owner_stalled"}


class Run:
    """One ``maglev run`` in ``d``: its process, log, control client."""

    def __init__(self, d: Path, conf: Path, env: dict[str, str], tag: str, extra: tuple[str, ...] = ()):
        self.d, self.log, self.out_f = d, d / f"{tag}.log", d / f"{tag}.json"
        self.control = f"ipc://{d}/{tag}.sock"
        with open(self.out_f, "w") as out, open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [*CLI, "run", "--config", str(conf), "--workers", "2", "--control", self.control, "--json", "-v",
                 "--nic", "gen:seconds=300,flows=300,rate=20000,ipv6=0", *extra],
                stdout=out, stderr=err, env=env, start_new_session=True)  # fmt: skip
        wait_until(lambda: (d / f"{tag}.sock").exists() or self.proc.poll() is not None, 60, "the control socket")
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
        self.c: ControlClient | None = ControlClient(self.control, timeout=10)

    def call(self, op: str, args: dict | None = None, timeout: float = 5) -> Any:
        assert self.c is not None
        return self.c.call(op, args or {}, timeout=timeout)

    def healthy(self) -> dict | None:
        try:
            s = self.call("status", timeout=2)
        except Exception:
            return None
        return s if (s.get("controller") or {}).get("healthy") and s["live_workers"] == [0, 1] else None

    def forwarded(self) -> int:
        try:
            return int(self.call("stats")["totals"]["forwarded"])
        except Exception:  # the config manager (which answers) is being replaced
            return 0

    def flowing(self, what: str, n: int = 5000) -> None:
        n0 = wait_until(self.forwarded, 30, f"stats ({what})")
        wait_until(lambda: self.forwarded() > n0 + n, 30, f"traffic flowing ({what})")

    def pid(self, actor: str) -> int:
        return _started(self.log)[actor][-1]

    def kill(self, actor: str, times: int = 1) -> None:
        """kill -9 ``actor``, then each replacement as soon as the supervisor started it
        (while it is still setting up: recovering rings, adopting its table...)."""
        for _ in range(times):
            n = len(_started(self.log)[actor])
            pid = self.pid(actor)
            assert pid in {p.pid for p in psutil.Process(self.proc.pid).children()}, actor
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda n=n: len(_started(self.log).get(actor, [])) > n, 30, f"{actor} restarted")

    def stop(self) -> dict:
        self.close_client()
        os.killpg(self.proc.pid, signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.log.read_text(errors="replace")[-3000:]
        return json.loads(self.out_f.read_text())

    def close_client(self) -> None:
        if self.c is not None:
            self.c.close()
            self.c = None

    def close(self) -> None:
        self.close_client()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def balanced(s: dict, log: Path) -> None:
    assert s["pool"]["ok"], s["pool"]
    assert s["packets_in"] == s["forwarded"] + sum(s["dropped"].values()), s
    assert set(s["dropped"]) <= KILL_REASONS, s["dropped"]
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[text.find("Traceback") - 2000:][:6000]


@contextmanager
def lab(shortdir: Path):
    name = unique.name("ke")
    router = RouterThread(free_port()).start()
    conf = shortdir / "maglev.toml"
    head = bgp_instance_toml(name, router.port, f'flow_hash_secret = "{secrets.token_hex(16)}"')
    conf.write_text(head + _vips(["198.18.1.11", "198.18.1.12"]))
    # run folders in a private XDG_RUNTIME_DIR: another run on this machine may otherwise
    # remove a dead run's folder before our next run does (maglev/actors/leftovers.py)
    (shortdir / "xdg").mkdir(mode=0o700)
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run"),
           "XDG_RUNTIME_DIR": str(shortdir / "xdg")}
    try:
        yield conf, env
    finally:
        router.close()
        remove_recorded(str(shortdir / "state"))


def test_every_process_killed_twice_in_a_row_and_during_reloads_balances(shortdir):
    with lab(shortdir) as (conf, env):
        r = Run(shortdir, conf, env, "a")
        try:
            wait_until(r.healthy, 60, "the run to be healthy")
            for actor in ACTORS:
                r.kill(actor, times=2)
                wait_until(r.healthy, 60, f"a healthy run after {actor} was killed twice")
                r.flowing(f"after {actor} was killed twice")
            # kill -9 while reloads are in flight: the config manager (mid-request) and a
            # worker (mid-switch to the new tables); a reload may fail, never half-apply
            results: list[int] = []

            def reloads() -> None:
                for _ in range(6):
                    p = subprocess.run([*CLI, "ctl", "--control", r.control, "reload"], capture_output=True,
                                       text=True, timeout=60, env=env)  # fmt: skip
                    results.append(p.returncode)
                    assert "Traceback" not in p.stderr, p.stderr

            for actor in ("config", "worker-1"):
                t = threading.Thread(target=reloads)
                t.start()
                wait_until(lambda: results, 60, "a first reload")
                r.kill(actor)
                t.join(120)
                assert not t.is_alive()
                wait_until(r.healthy, 60, f"a healthy run after {actor} was killed during reloads")
                r.flowing(f"after {actor} was killed during reloads")
            assert set(results) <= {0, 1, 2}, results
            s = r.stop()
        finally:
            r.close()
        assert s["restarts"] == {**s["restarts"], **{a: 2 for a in ACTORS if a not in ("config", "worker-1")},
                                 "config": 3, "worker-1": 3}, s["restarts"]
        balanced(s, r.log)


@pytest.mark.parametrize("actor", ["steering", "worker-0", "muxer"])
def test_a_kill_during_the_stops_drain_still_balances(shortdir, actor):
    """SIGTERM to the run, then kill -9 of a data-path actor while the ordered stop drains
    (no restart now, only a drain-only replacement since 2026-12-08,
    tests/actors/test_stop_deaths.py): what it held and what waits on its rings must still
    be counted, and the pool whole."""
    with lab(shortdir) as (conf, env):
        r = Run(shortdir, conf, env, "d")
        try:
            wait_until(r.healthy, 60, "the run to be healthy")
            r.flowing("before the stop")
            pid = r.pid(actor)
            if actor != "steering":  # let it fall behind, so its rings hold packets at the stop
                os.kill(pid, signal.SIGSTOP)
            os.killpg(r.proc.pid, signal.SIGTERM)
            os.kill(pid, signal.SIGKILL)
            assert r.proc.wait(timeout=60) in (0, 1)
            text = r.out_f.read_text()
            s = json.loads(text)
        finally:
            r.close()
        balanced(s, r.log)


def test_a_killed_supervisor_takes_its_actors_along_and_the_next_run_starts_clean(shortdir):
    with lab(shortdir) as (conf, env):
        r = Run(shortdir, conf, env, "s1")
        try:
            wait_until(r.healthy, 60, "the run to be healthy")
            r.flowing("before the supervisor is killed")
            children = psutil.Process(r.proc.pid).children()
            assert len(children) >= len(ACTORS)
            os.kill(r.proc.pid, signal.SIGKILL)
            r.proc.wait(timeout=10)
            gone, alive = psutil.wait_procs(children, timeout=20)
            assert not alive, [(p.pid, p.cmdline()[-1][:80]) for p in alive]  # no orphan keeps running
        finally:
            r.close()
            for p in psutil.Process().children(recursive=True):  # pragma: no cover - cleanup
                if p.pid in {c.pid for c in children}:
                    p.kill()
        text = r.log.read_text(errors="replace")
        assert "Traceback" not in text, text[text.find("Traceback") - 2000:][:6000]
        # nothing is killed in this run, so no drop at all (no stall judgement of the load:
        # run_helpers.NO_LOAD_STALL_MS)
        r2 = Run(shortdir, conf, env, "s2", extra=("--stall-ms", str(NO_LOAD_STALL_MS)))
        try:
            wait_until(r2.healthy, 60, "the next run to be healthy")
            r2.flowing("in the next run")
            s = r2.stop()
        finally:
            r2.close()
        t2 = r2.log.read_text(errors="replace")
        assert "removed the run folder of a dead run" in t2, t2[-3000:]
        assert "adopting the previous run's tables of all 2 workers" in t2, t2[-3000:]
        balanced(s, r2.log)
        assert s["dropped"] == {}, s["dropped"]
