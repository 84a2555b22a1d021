"""``drain-instance`` survives a restart of ``maglev run`` (issue 16.5): the drained state is
written to the instance's state directory before the reply, a new run starts drained and
announces nothing until ``resume-instance``; a damaged file counts as drained, with the
problem in words."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maglev.control import instance as ctl
from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing.packets import write_pcap
from maglev.testing.ports import free_port
from maglev.testing.wait import wait_until
from tests.run_helpers import maglev_ctl

from .conftest import RouterThread, bgp_instance_toml

VIP = "203.0.113.10/32"


def _config(tmp: Path, router_port: int) -> Path:
    p = tmp / "maglev.toml"
    p.write_text(bgp_instance_toml("drainp", router_port) + """
[[vip]]
address = "203.0.113.10"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.2.11"
name = "be1"
""")
    return p


def test_load_drained_reads_what_save_wrote_and_a_damaged_file_counts_as_drained(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGLEV_STATE_DIR", str(tmp_path))
    assert ctl.load_drained("i1") == (False, "")  # no file: not drained
    ctl.save_drained("i1", True)
    assert ctl.load_drained("i1") == (True, "")
    ctl.save_drained("i1", False)
    assert ctl.load_drained("i1") == (False, "")
    for bad in (b"{not json", b'{"format": "other", "drained": false}', b'{"format": "maglev-drain-1"}', b"\xff"):
        ctl.drain_path("i1").write_bytes(bad)
        drained, problem = ctl.load_drained("i1")
        assert drained and str(ctl.drain_path("i1")) in problem and "staying drained" in problem, problem


@pytest.mark.slow
def test_a_drained_instance_stays_drained_across_a_restart(tmp_path):
    router = RouterThread(free_port()).start()
    conf = _config(tmp_path, router.port)
    empty = write_pcap(tmp_path / "empty.pcap", [])
    control = f"ipc://{tmp_path}/ctl.sock"
    env = {**os.environ, "MAGLEV_STATE_DIR": str(tmp_path / "state"), "MAGLEV_RUN_DIR": str(tmp_path / "run")}
    argv = [sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--config", str(conf),
            "--nic", f"pcap:{empty}", "--workers", "1", "--control", control]
    procs: list[subprocess.Popen] = []
    logs = []

    def start() -> subprocess.Popen:
        log = open(tmp_path / f"run{len(procs)}.log", "w")
        logs.append(log)
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(p)
        return p

    def stop(p: subprocess.Popen) -> None:
        os.killpg(p.pid, signal.SIGTERM)
        assert p.wait(timeout=30) == 0

    try:
        p = start()
        wait_until(lambda: router.received() == {VIP}, 30, "the VIP announced")
        r = maglev_ctl(control, "drain-instance")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: router.received() == set(), 10, "the VIP withdrawn on drain-instance")
        stop(p)
        assert ctl.load_drained("drainp") == (False, "")  # (this process's state dir is another)
        assert b'"drained": true' in (tmp_path / "state" / "drainp" / ctl.DRAIN_FILE).read_bytes()

        p = start()  # the restart: a drained instance comes up drained
        wait_until(lambda: router.state() == "ESTABLISHED", 30, "the BGP session of the new run")
        wait_until(lambda: "DRAINED" in maglev_ctl(control, "status").stdout, 20, "status: drained")
        t_end = time.monotonic() + 3.0  # 3x announce_after_s: a healthy undrained run would announce
        while time.monotonic() < t_end:
            assert router.received() == set(), "a drained instance announced after its restart"
            time.sleep(0.1)
        r = maglev_ctl(control, "resume-instance")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: router.received() == {VIP}, 10, "the VIP announced after resume-instance")
        stop(p)
        assert "instance drained (persisted in" in (tmp_path / "run1.log").read_text()
        assert b'"drained": false' in (tmp_path / "state" / "drainp" / ctl.DRAIN_FILE).read_bytes()
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        for log in logs:
            log.close()
        router.close()
        remove_recorded(str(tmp_path))  # the connection tables the runs kept for adoption
