"""Helpers for the service tests: a fake systemd notify socket and the run scenario that
the notify test and the unit-file test both drive."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from maglev.testing.packets import write_pcap

CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; collects every message."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def collect(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(4096).decode()
                self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))
                self.sock.settimeout(0.001)
        except (TimeoutError, BlockingIOError):
            pass

    def wait_for(self, key: str, value: str, timeout: float, after: int = 0) -> int:
        """Index of the first message at or after ``after`` with key=value."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.messages[after:], after):
                if m.get(key) == value:
                    return i
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}={value} within {timeout} s; got {self.messages}")
            self.collect(min(left, 0.2))

    def close(self) -> None:
        self.sock.close()


CONFIG = """
[instance]
name = "sdtest"
source_ipv4 = "198.18.3.2"

[[vip]]
address = "203.0.113.30"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.3.11"
name = "be1"
"""


def _status(control: str) -> dict:
    r = subprocess.run([*CLI, "ctl", "--control", control, "status", "--json"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def run_notify_scenario(tmp_path: Path, argv: list[str], env_extra: dict[str, str] | None = None,
                        prefix: list[str] | None = None) -> None:
    """Start ``argv`` (a `maglev run` command line without --config/--nic/--control) under a
    fake NOTIFY_SOCKET, then: READY=1 only once the tables are published; the watchdog is
    fed; SIGHUP with a good file reloads (RELOADING=1, READY=1, new backend in); SIGHUP with
    a broken file changes nothing and the run goes on; SIGTERM stops with STOPPING=1."""
    conf = tmp_path / "maglev.toml"
    conf.write_text(CONFIG)
    empty = write_pcap(tmp_path / "empty.pcap", [])
    control = f"ipc://{tmp_path}/ctl.sock"
    ns = NotifySocket(tmp_path / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "400000",
           "MAGLEV_STATE_DIR": str(tmp_path / "state"), "MAGLEV_RUN_DIR": str(tmp_path / "run")}
    env.pop("WATCHDOG_PID", None)
    env.update(env_extra or {})
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([*(prefix or []), *argv, "--config", str(conf), "--nic", f"pcap:{empty}",
                             "--control", control, "--json"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        i = ns.wait_for("READY", "1", 60)
        # Ready means served: the tables are published and confirmed by every worker.
        st = _status(control)
        assert st["generation"] >= 1 and st["vips"] == 1, st
        assert ns.messages[i]["MAINPID"] == str(proc.pid)
        ns.wait_for("WATCHDOG", "1", 5, after=i + 1)

        # SIGHUP with a good file: RELOADING=1, then READY=1 again, and the new backend is in.
        conf.write_text(CONFIG + '[[vip.backend]]\naddress = "198.18.3.12"\nname = "be2"\n')
        proc.send_signal(signal.SIGHUP)
        j = ns.wait_for("RELOADING", "1", 10, after=i + 1)
        k = ns.wait_for("READY", "1", 30, after=j)
        assert ns.messages[k].get("STATUS") == "reloaded", ns.messages[k]
        assert _status(control)["backends"] == 2

        # SIGHUP with a broken file: refused, nothing changed, still running.
        gen = _status(control)["generation"]
        conf.write_text(CONFIG + "[[vip.backend]]\naddress = \"not-an-ip\"\n")
        proc.send_signal(signal.SIGHUP)
        j = ns.wait_for("RELOADING", "1", 10, after=k + 1)
        k = ns.wait_for("READY", "1", 30, after=j)
        assert ns.messages[k]["STATUS"].startswith("reload refused"), ns.messages[k]
        st = _status(control)
        assert st["generation"] == gen and st["backends"] == 2 and proc.poll() is None

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        ns.wait_for("STOPPING", "1", 5, after=k)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        ns.close()
