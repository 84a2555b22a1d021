"""Session 8: the config manager under big and hostile changes (docs/operations.md,
"Hostile sweep, session 8").

Each test names the hole it closes; every one of them failed on the code before the fix.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from maglev.actors.supervisor import ActorDef, Supervisor
from maglev.control.client import ControlClient
from maglev.hashing import next_prime

CONFIG_ACTOR = "maglev.actors.testing_config:ThreadedConfigManager"
BUSY = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < {s}:\n    pass\n"


def toml_config(name: str, vips: int = 1, backends: int = 4, size: int = 251) -> str:
    out = [f'[instance]\nname = "{name}"\nsource_ipv4 = "198.19.0.1"\n']
    for i in range(vips):
        out.append(f'[[vip]]\naddress = "203.0.113.{1 + i // 200}"\nport = {1000 + i % 200}\n'
                   f'protocol = "tcp"\ntable_size = {size}\n')
        for j in range(backends):
            out.append(f'[[vip.backend]]\naddress = "198.18.{j // 250}.{1 + j % 250}"\n')
    return "\n".join(out)


class CpuLoad:
    """Busy loops in child processes (bounded in time, killed by PID when done)."""

    def __init__(self, n: int = 2, seconds: float = 60.0):
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY.format(s=seconds)]) for _ in range(n)]

    def __enter__(self) -> CpuLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait(10)


def wait_for(cond: Any, timeout: float, sup: Supervisor) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        sup.poll(0.02)
        if cond():
            return
    raise AssertionError("condition not met in time")


def call_polling(sup: Supervisor, endpoint: str, op: str, args: dict[str, Any],
                 timeout: float = 60.0) -> tuple[dict[str, Any], float]:
    """Send one request from a thread while this thread runs the supervisor (as ``maglev
    run`` does); return (result or error, the longest the supervisor went without hearing
    from the config manager meanwhile)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            with ControlClient(endpoint, timeout) as c:
                out["result"] = c.call(op, args, timeout=timeout)
        except Exception as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    child = sup.children["config"]
    worst = 0.0
    while t.is_alive():
        sup.poll(0.02)
        worst = max(worst, time.monotonic() - child.last_hb)
    t.join()
    return out, worst


@pytest.fixture
def config_run(shortdir: Path):
    """A supervisor running only the config manager (over ThreadedPublisher, one worker
    stalled so every publication waits out the confirm timeout)."""
    runs: list[Supervisor] = []

    def start(text: str, **params: Any) -> tuple[Supervisor, str]:
        path = shortdir / "maglev.toml"
        path.write_text(text)
        ctl = f"ipc://{shortdir}/ctl.sock"
        sup = Supervisor([ActorDef("config", CONFIG_ACTOR, {"config": str(path), "control": ctl,
                                                             "state": str(shortdir / "state.json"), **params})],
                         instance=f"s8g-{secrets.token_hex(3)}", heartbeat_timeout_s=3.0, startup_timeout_s=60.0)
        runs.append(sup)
        sup.use_standby = False
        sup.start()
        wait_for(lambda: sup.children["config"].hello or bool(sup.failed), 60, sup)
        assert not sup.failed, sup.failed
        return sup, ctl

    yield start
    for sup in runs:
        sup.close()


# -- heartbeats while a change works -------------------------------------------------------

def test_a_long_change_under_cpu_load_never_gets_the_config_manager_killed(config_run):
    """The config manager was killed for its heartbeats during a big change at load 14:
    only the table build ran on a helper thread; the publication after it (up to 2 s for
    the workers to leave the idle copy, then ``confirm_timeout`` for them to switch) ran on
    the actor thread without a heartbeat.  Here a worker never switches (confirm_timeout
    4 s, longer than the supervisor's 3 s) and the tables are big, under two busy loops:
    the change is answered, the actor is never killed, the supervisor hears from it."""
    size = next_prime(2_000_000)
    sup, ctl = config_run(toml_config("s8g-hb", size=size), stall=1, confirm_timeout=4.0)
    pid = sup.pid("config")
    with CpuLoad(2, 60):
        r, worst = call_polling(sup, ctl, "set-weight", {"vip": "203.0.113.1:1000/tcp",
                                                          "backend": "198.18.0.1", "weight": 3})
    assert "error" not in r, r
    res = r["result"]
    assert res["changed"] and res["confirmed"] is False and res["wait_ms"] >= 3900, res
    assert sup.pid("config") == pid and sup.children["config"].incarnation == 0, sup.events
    assert not [e for e in sup.events if "died" in e[2]], sup.events
    assert worst < sup.heartbeat_timeout_s, f"{worst:.2f} s without a heartbeat"
