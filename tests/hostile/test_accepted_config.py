"""Every actor (re)start uses the run's last *accepted* config, never the operator's file as
it is on disk now.

A real ``maglev run`` (generator NIC under load, config manager, health prober, BGP speaker
toward a BGP peer on 127.0.0.1, the controller): the config file is overwritten with
garbage, then each actor is killed with -9 in turn.  Each comes back (on the accepted
config: the run's ``config.json``, maglev/control/persist.py), ``status`` stays healthy,
traffic keeps flowing, the VIP is announced again after the speaker's restart, and a reload
of the broken file -- over the control socket and by SIGHUP -- is refused with the file's
path and line, changing nothing.  An edited, valid, not yet reloaded file is not picked up
by a restart either; its reload then applies it."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from maglev.control.client import ControlClient
from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing import unique
from maglev.testing.ports import free_port
from maglev.testing.wait import wait_until
from tests.scaleout.conftest import RouterThread, bgp_instance_toml

pytestmark = pytest.mark.slow

VIP = "203.0.113.10:80/tcp"
PREFIX = "203.0.113.10/32"
CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]


def _vips(backends: list[str]) -> str:
    return '\n[[vip]]\naddress = "203.0.113.10"\nport = 80\nprotocol = "tcp"\n' + "".join(
        f'[[vip.backend]]\naddress = "{b}"\n' for b in backends)


def _started(log: Path) -> dict[str, list[int]]:
    """actor name -> pids of its incarnations, from the supervisor's "actor started" lines."""
    out: dict[str, list[int]] = {}
    for m in re.finditer(r'msg="actor started" child=(\S+) child_pid=(\d+)', log.read_text(errors="replace")):
        out.setdefault(m.group(1), []).append(int(m.group(2)))
    return out


def test_every_actor_restarts_on_the_accepted_config_while_the_file_is_broken(shortdir):
    name = unique.name("acc")
    router = RouterThread(free_port()).start()
    conf = shortdir / "maglev.toml"
    head = bgp_instance_toml(name, router.port, f'flow_hash_secret = "{secrets.token_hex(16)}"')
    conf.write_text(head + _vips(["198.18.1.11", "198.18.1.12"]))
    control = f"ipc://{shortdir}/ctl.sock"
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run")}
    out_f, log = shortdir / "out.json", shortdir / "run.log"
    with open(out_f, "w") as out, open(log, "w") as err:
        proc = subprocess.Popen(
            [*CLI, "run", "--config", str(conf), "--workers", "2", "--control", control, "--json", "-v",
             "--nic", "gen:seconds=120,flows=200,rate=20000,ipv6=0"],
            stdout=out, stderr=err, env=env, start_new_session=True)  # fmt: skip
    c = None
    try:
        wait_until(lambda: (shortdir / "ctl.sock").exists() or proc.poll() is not None, 60, "the control socket")
        c = ControlClient(control, timeout=10)

        def status() -> dict | None:
            try:
                return c.call("status", timeout=2)
            except Exception:
                return None

        def healthy() -> dict | None:
            s = status()
            return s if s and (s.get("controller") or {}).get("healthy") and s["live_workers"] == [0, 1] else None

        def forwarded() -> int:
            return c.call("stats", timeout=5)["totals"]["forwarded"]

        wait_until(healthy, 60, "the run to be healthy")
        wait_until(lambda: router.received() == {PREFIX}, 30, "the VIP announced")
        accepted = c.call("get-config")["config"]
        generation = c.call("status")["generation"]

        conf.write_text("[instance\nname = = 'broken'\n\x00garbage")  # the operator's file, broken
        descendants = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        for actor in ("worker-0", "config", "health", "bgp", "steering", "muxer", "worker-1"):
            before = _started(log)[actor]
            n, pid = len(before), before[-1]
            assert pid in descendants or pid in {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda a=actor, n=n: len(_started(log).get(a, [])) > n, 30, f"{actor} restarted")
            st = wait_until(healthy, 30, f"a healthy run after {actor} was killed")
            assert c.call("get-config")["config"] == accepted, actor
            if actor == "config":
                assert st["resumed"] is True and st["generation"] >= 1
            n0 = forwarded()
            wait_until(lambda n=n0: forwarded() > n + 1000, 20, f"traffic flowing after {actor} was killed")
            assert proc.poll() is None, f"the run stopped after {actor} was killed"
        wait_until(lambda: router.received() == {PREFIX}, 30, "the VIP announced after the restarts")

        # A reload of the broken file: refused, path-precise, nothing changed.
        gen = c.call("status")["generation"]
        r = subprocess.run([*CLI, "ctl", "--control", control, "reload"], capture_output=True, text=True,
                           timeout=30, env=env)  # fmt: skip
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert f"{conf}: TOML syntax error" in r.stderr and "line 1" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: "SIGHUP: reload refused" in log.read_text(errors="replace"), 20, "SIGHUP refused")
        assert c.call("get-config")["config"] == accepted
        assert c.call("status")["generation"] == gen >= generation

        # Edited, valid, not reloaded: a restart does not pick it up; the reload does.
        conf.write_text(head + _vips(["198.18.1.11", "198.18.1.12", "198.18.1.13"]))
        for actor in ("worker-0", "config"):
            n = len(_started(log)[actor])
            os.kill(_started(log)[actor][-1], signal.SIGKILL)
            wait_until(lambda a=actor, n=n: len(_started(log).get(a, [])) > n, 30, f"{actor} restarted")
            wait_until(healthy, 30, f"a healthy run after {actor} was killed")
            assert c.call("get-config")["config"] == accepted, actor
        res = c.call("reload", timeout=30)
        assert res["changed"] is True
        rows = c.call("backends", {"vip": VIP})["backends"]
        assert sorted(b["backend"] for b in rows) == ["198.18.1.11", "198.18.1.12", "198.18.1.13"]

        # A reload that changes what the data path fixes at start (flow hash secret,
        # [conntrack]): accepted, but a restarted worker keeps the run's first values, so
        # it still adopts its connection table and agrees with steering.
        fixed = head.replace('flow_hash_secret = "', 'flow_hash_secret = "f' + "0" * 31 + '"\n#')
        conf.write_text(fixed + "\n[conntrack]\ncapacity = 4096\n" + _vips(["198.18.1.11", "198.18.1.12"]))
        assert c.call("reload", timeout=30)["changed"] is True
        n = len(_started(log)["worker-1"])
        os.kill(_started(log)["worker-1"][-1], signal.SIGKILL)
        wait_until(lambda: len(_started(log).get("worker-1", [])) > n, 30, "worker-1 restarted")
        new_pid = _started(log)["worker-1"][-1]
        wait_until(lambda: f'actor=worker-1 pid={new_pid} msg="connection table adopted"' in log.read_text(), 30,
                   "the restarted worker adopting its table (the run's own secret and capacity)")
        wait_until(healthy, 30, "a healthy run after the last kill")

        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        summary = json.loads(out_f.read_text())
        assert summary["pool"]["ok"], summary["pool"]
        assert summary["restarts"]["worker-0"] == 2 and summary["restarts"]["config"] == 2, summary["restarts"]
        assert summary["restarts"]["worker-1"] == 2, summary["restarts"]
        assert all(summary["restarts"][a] == 1 for a in ("health", "bgp", "steering", "muxer"))
        assert summary["forwarded"] > 0
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        # errors expected: the controller's withdraw while an actor is dead, the refused SIGHUP
        expected = ("forwarder unhealthy", "SIGHUP: reload refused")
        errors = [ln for ln in text.splitlines() if "level=error" in ln and not any(e in ln for e in expected)]
        assert not errors, errors
    finally:
        if c is not None:
            c.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        router.close()
        remove_recorded(str(shortdir / "state"))
