"""Helpers for the service tests: a fake systemd notify socket and the run scenario that
the notify test and the unit-file test both drive."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from maglev.testing.notify import NotifySocket
from maglev.testing.packets import write_pcap
from tests.run_helpers import ctl_status

__all__ = ["NotifySocket"]

CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]


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


@contextlib.contextmanager
def under_notify(folder: Path, argv: list[str], env_extra: dict[str, str] | None = None,
                 unset: tuple[str, ...] = ("WATCHDOG_PID",)) -> Iterator[tuple[subprocess.Popen, NotifySocket]]:
    """Start ``argv`` in its own session under a fake NOTIFY_SOCKET (``folder/notify``), its
    state and run folders in ``folder`` and its output in ``folder/run.log``; yield the
    process and the socket.  On failure print the log's tail and the notify messages; at
    the end kill the process group if it is still running and close both."""
    ns = NotifySocket(folder / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": str(ns.path),
           "MAGLEV_STATE_DIR": str(folder / "state"), "MAGLEV_RUN_DIR": str(folder / "run")}
    for key in unset:
        env.pop(key, None)
    env.update(env_extra or {})
    log = open(folder / "run.log", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc, ns
    except BaseException:
        log.flush()
        print("--- maglev run log (tail) ---\n" + (folder / "run.log").read_text()[-4000:])
        print("--- notify messages ---\n" + "\n".join(map(str, ns.messages)))
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        ns.close()


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
    with under_notify(tmp_path, [*(prefix or []), *argv, "--config", str(conf), "--nic", f"pcap:{empty}",
                                 "--control", control, "--json", "-v"],
                      {"WATCHDOG_USEC": "400000", **(env_extra or {})}) as (proc, ns):
        i = ns.wait_for("READY", "1", 60)
        # Ready means served: the tables are published and confirmed by every worker.
        st = ctl_status(control)
        assert st["generation"] >= 1 and st["vips"] == 1, st
        assert ns.messages[i]["MAINPID"] == str(proc.pid)
        ns.wait_for("WATCHDOG", "1", 5, after=i + 1)

        # SIGHUP with a good file: RELOADING=1, then READY=1 again, and the new backend is in.
        conf.write_text(CONFIG + '[[vip.backend]]\naddress = "198.18.3.12"\nname = "be2"\n')
        proc.send_signal(signal.SIGHUP)
        j = ns.wait_for("RELOADING", "1", 10, after=i + 1)
        k = ns.wait_for("READY", "1", 30, after=j)
        assert ns.messages[k].get("STATUS") == "reloaded", ns.messages[k]
        assert ctl_status(control)["backends"] == 2

        # SIGHUP with a broken file: refused, nothing changed, still running.
        gen = ctl_status(control)["generation"]
        conf.write_text(CONFIG + "[[vip.backend]]\naddress = \"not-an-ip\"\n")
        proc.send_signal(signal.SIGHUP)
        j = ns.wait_for("RELOADING", "1", 10, after=k + 1)
        k = ns.wait_for("READY", "1", 30, after=j)
        assert ns.messages[k]["STATUS"].startswith("reload refused"), ns.messages[k]
        st = ctl_status(control)
        assert st["generation"] == gen and st["backends"] == 2 and proc.poll() is None

        # The stop itself is measured elsewhere (tests/actors); here only that it is clean.
        # The deadline is wide because a starved 2-core machine (the whole suite plus other
        # load) was seen to need more than 30 s between SIGTERM and the exit.
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        print(f"stopped in {time.monotonic() - t0:.2f} s")
        ns.wait_for("STOPPING", "1", 5, after=k)
