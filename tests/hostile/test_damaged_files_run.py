"""A real ``maglev run`` over damaged files of its own (session 10).

1. It starts although its state file holds JSON nested 100,000 deep: the file is set aside
   (``state.json.invalid``) and the run serves the operator's file.  Before, ``maglev run``
   died at start with a RecursionError traceback (and with a ValueError one for a number
   of 5000 digits): the readers caught ``JSONDecodeError`` only.
2. With the run folder's ``config.json`` truncated, steering and a packet worker are killed
   with -9: each comes back (on ``config-start.json``, the same flow hash secret and
   ``[conntrack]``), the run stays up and healthy and traffic flows, the next change is
   accepted and writes ``config.json`` whole again.  Before, the restart failed and the
   supervisor stopped the whole run ("steering failed to start: ConfigError: ...")."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from maglev.control import persist
from maglev.control.client import ControlClient
from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing import unique
from maglev.testing.wait import wait_until

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]
VIP = "203.0.113.10:80/tcp"


def _started(log: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m in re.finditer(r'msg="actor started" child=(\S+) child_pid=(\d+)', log.read_text(errors="replace")):
        out.setdefault(m.group(1), []).append(int(m.group(2)))
    return out


def _run_dir(pid: int) -> Path:
    """The run folder, from an actor's command line (its spec names it)."""
    for p in psutil.Process(pid).children(recursive=True):
        for arg in p.cmdline():
            if arg.startswith("{") and '"run_dir"' in arg:
                return Path(json.loads(arg)["run_dir"])
    raise AssertionError("no actor names the run folder")


def test_a_run_starts_over_a_damaged_state_file_and_survives_a_damaged_run_folder(shortdir):
    name = unique.name("dmg")
    conf = shortdir / "maglev.toml"
    conf.write_text(f'[instance]\nname = "{name}"\nsource_ipv4 = "198.18.0.1"\n'
                    f'flow_hash_secret = "{"5a" * 16}"\n'
                    '[[vip]]\naddress = "203.0.113.10"\nport = 80\ntable_size = 251\n'
                    '[[vip.backend]]\naddress = "198.18.1.11"\n[[vip.backend]]\naddress = "198.18.1.12"\n')
    state = shortdir / "state" / name / "state.json"
    state.parent.mkdir(parents=True)
    damaged = b"[" * 100_000 + b"]" * 100_000
    state.write_bytes(damaged)
    control = f"ipc://{shortdir}/ctl.sock"
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run")}
    out_f, log = shortdir / "out.json", shortdir / "run.log"
    with open(out_f, "w") as out, open(log, "w") as err:
        proc = subprocess.Popen(
            [*CLI, "run", "--config", str(conf), "--workers", "1", "--control", control, "--json", "-v",
             "--nic", "gen:seconds=120,flows=100,rate=5000,ipv6=0"],
            stdout=out, stderr=err, env=env, start_new_session=True)  # fmt: skip
    c = None
    try:
        wait_until(lambda: (shortdir / "ctl.sock").exists() or proc.poll() is not None, 60, "the control socket")
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        c = ControlClient(control, timeout=10)

        def healthy() -> dict | None:
            try:
                s = c.call("status", timeout=2)
            except Exception:
                return None
            return s if (s.get("controller") or {}).get("healthy") and s["live_workers"] == [0] else None

        def forwarded() -> int:
            return c.call("stats", timeout=5)["totals"]["forwarded"]

        wait_until(healthy, 60, "the run to be healthy")
        assert state.with_name("state.json.invalid").read_bytes() == damaged  # set aside, kept
        assert persist.load_state(state) is not None  # and a good one written
        run_cfg = _run_dir(proc.pid) / persist.RUN_CONFIG
        accepted = c.call("get-config")["config"]

        run_cfg.write_bytes(run_cfg.read_bytes()[:50])  # truncated
        for actor in ("steering", "worker-0"):
            before = _started(log)[actor]
            n = len(before)
            os.kill(before[-1], signal.SIGKILL)
            wait_until(lambda a=actor, n=n: len(_started(log).get(a, [])) > n, 30, f"{actor} restarted")
            wait_until(healthy, 30, f"a healthy run after {actor} was killed")
            assert proc.poll() is None, f"the run stopped after {actor} was killed"
            assert c.call("get-config")["config"] == accepted
            n0 = forwarded()
            wait_until(lambda n=n0: forwarded() > n + 500, 20, f"traffic flowing after {actor} was killed")
        r = c.call("set-weight", {"vip": VIP, "backend": "198.18.1.11", "weight": 3}, timeout=30)
        assert r["changed"] is True
        assert persist.load_state(run_cfg)[0].vips[0].backends[0].weight == 3  # whole again

        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        summary = json.loads(out_f.read_text())
        assert summary["pool"]["ok"], summary["pool"]
        assert summary["restarts"]["steering"] == 1 and summary["restarts"]["worker-0"] == 1, summary["restarts"]
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        assert text.count("the run's accepted config is not usable") == 2, text[-3000:]
        assert "state.json is not usable" in text and "moved to" in text
    finally:
        if c is not None:
            c.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        remove_recorded(str(shortdir / "state"))
