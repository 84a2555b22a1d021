"""A restart of `maglev run` in place (no ECMP, one instance) keeps every long-lived TCP
connection on its backend (issue 16.6, second test): the new run adopts the connection
tables the old one left in /dev/shm, while the backend set changes across the restart --
so that Maglev hashing alone would move some of the connections, and only the adopted
tables keep them.  Through the real forwarder (`--nic afpacket:eth0`) in the namespace lab.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from maglev.config import Config
from maglev.datapath import build_tables
from maglev.lab import topology as topo
from maglev.lab.talkers import Talkers
from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing import packets as P
from maglev.testing import unique
from tests.datapath.test_dp import maglev_backend
from tests.lab.lab_helpers import lab_config, spawn_run, write_config
from tests.lab.test_long_lived import KeepAlive

pytestmark = pytest.mark.root

N_CONNS = 200
PERIOD_S = 0.1  # each connection sends a request every 100 ms (one selector loop: maglev/lab/talkers.py)


def _write(cfg: Path, data: dict, names: set[str]) -> Config:
    """Write ``data`` with only the backends ``names`` to ``cfg``."""
    return write_config(cfg, {**data, "vip": [{**v, "backend": [b for b in v["backend"] if b["name"] in names]}
                                              for v in data["vip"]]})



def _would_move(conf: Config, conns: list[KeepAlive], first: list[str], backends: list[dict]) -> int:
    """How many of the connections Maglev hashing over ``conf`` alone (no connection
    table) would send to another backend than ``first``, the one each started on."""
    blob = build_tables(conf)
    n = 0
    for c, was in zip(conns, first, strict=True):
        ip, port = c.s.getsockname()[:2]
        pkt = P.eth(P.ipv4(ip, topo.VIP_V4, P.TCP, P.tcp(port, topo.HTTP_PORT, b"", src=ip, dst=topo.VIP_V4)))
        addr = maglev_backend(blob, pkt)[1]
        n += next(b["name"] for b in backends if b["ipv4"] == addr) != was
    return n


def _progress(talk: Talkers, when: str) -> None:
    """Wait (30 s at most) for 20 more rounds of requests on every connection."""
    rounds = talk.rounds
    deadline = time.monotonic() + 30
    while talk.rounds < rounds + 20:
        assert time.monotonic() < deadline, f"the connections made no progress {when}"
        time.sleep(0.1)


@pytest.mark.slow
def test_restart_in_place_adopts_the_tables_and_every_connection_keeps_its_backend(make_lab):
    lab = make_lab(encap="gre", backends=4, forwarder=False)
    st = lab.state
    data = lab_config(lab)
    data["instance"]["name"] = "labrs"
    short = Path(tempfile.mkdtemp(prefix="mgrs", dir="/tmp"))  # ipc:// paths must be short
    cfg = short / "maglev.toml"
    conns: list[KeepAlive] = []
    talk: Talkers | None = None
    try:
        _write(cfg, data, {"be1", "be2", "be3"})  # be4 exists but is not in the config yet
        spawn_run(lab, short, 2)
        lab._wait_ready(topo.LabSpec(forwarder=True), 40)
        conns = [KeepAlive(st["client"]["ns"]) for _ in range(N_CONNS)]
        for c in conns:
            c.s.settimeout(20)  # a request sent while no forwarder runs waits for TCP's retransmission
        first = [c.get() for c in conns]
        assert set(first) == {"be1", "be2", "be3"}, first
        talk = Talkers([c.s for c in conns], first, PERIOD_S).start()
        time.sleep(1.0)

        # The upgrade: stop (SIGTERM, clean), change the backend set, start the new run.
        lab.stop_process("maglev")
        after = _write(cfg, data, {"be1", "be2", "be3", "be4"})
        t_down = time.monotonic()
        spawn_run(lab, short, 2)
        lab._wait_ready(topo.LabSpec(forwarder=True), 40)
        gap = time.monotonic() - t_down
        _progress(talk, "after the restart")  # 2 s of requests through the new run
        talk.finish()
        assert talk.error is None, talk.error

        # Without the adopted tables, Maglev over the new set would move these:
        would_move = _would_move(after, conns, first, st["backends"])
        kept = N_CONNS - len(talk.lost)
        print(f"restart in place: {kept}/{N_CONNS} connections kept their backend = {kept / N_CONNS:.4f} "
              f"({talk.rate():.2f} requests/s per connection, target {1 / PERIOD_S:g}; {talk.requests} requests; "
              f"restart gap {gap:.2f} s; Maglev alone would have moved {would_move})")
        log = (lab.state_dir / "logs" / "maglev.log").read_text()
        assert "adopting the previous run's tables of all 2 workers" in log, log[-2000:]
        assert would_move > 0, "the backend change must move some connections without conntrack"
        assert talk.lost == {}, talk.lost
    finally:
        _clean_up(talk, conns, lab, short)



def _clean_up(talk, conns, lab, short: Path) -> None:
    """What both tests leave behind, also when they fail: the talker, the connections, the
    forwarder and its run folder."""
    if talk is not None:
        talk.finish()
    for c in conns:
        c.close()
    lab.stop_process("maglev")
    remove_recorded(str(short))
    shutil.rmtree(short, ignore_errors=True)


def _lock_holder(path: str) -> int:
    """The pid holding a flock on ``path`` (from /proc/locks), or 0."""
    import os

    ino = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if len(f) >= 6 and f[1] == "FLOCK" and f[5].rsplit(":", 1)[-1] == str(ino):
            return int(f[4])
    return 0


@pytest.mark.slow
def test_kill_9_of_every_worker_while_a_backend_is_added_keeps_every_connection(make_lab):
    """Both packet workers killed with -9; while they are dead a backend is added (the
    config manager publishes new tables); the replacements adopt their tables from
    /dev/shm: every long-lived connection keeps its backend."""
    import glob
    import os
    import signal

    from maglev.control.client import ControlClient
    from tests.lab.test_long_lived import VIP_KEY

    lab = make_lab(encap="gre", backends=4, forwarder=False)
    st = lab.state
    be = {b["name"]: b for b in st["backends"]}
    data = lab_config(lab)
    # An instance name of this run's own: the table files are found by name in /dev/shm,
    # and another session (CI, a colleague) may run this test at the same time.
    inst = unique.name("labk")
    data["instance"]["name"] = inst
    short = Path(tempfile.mkdtemp(prefix="mgk9", dir="/tmp"))
    cfg = short / "maglev.toml"
    conns: list[KeepAlive] = []
    talk: Talkers | None = None
    try:
        before = _write(cfg, data, {"be1", "be2", "be3"})
        spawn_run(lab, short, 2)
        lab._wait_ready(topo.LabSpec(forwarder=True), 40)
        conns = [KeepAlive(st["client"]["ns"]) for _ in range(N_CONNS)]
        for c in conns:
            c.s.settimeout(20)
        first = [c.get() for c in conns]
        talk = Talkers([c.s for c in conns], first, PERIOD_S).start()
        time.sleep(1.0)
        # each worker holds the flock of its table file: /proc/locks names the pid
        segs = sorted(glob.glob(f"/dev/shm/maglev-{inst}-ct-*"))
        assert len(segs) == 2, segs
        old = [_lock_holder(s) for s in segs]
        assert all(old), old
        for p in old:
            os.kill(p, signal.SIGKILL)
        with ControlClient(f"ipc://{short}/run/{inst}/control.sock", timeout=10) as ctl:
            ctl.call("add-backend", {"vip": VIP_KEY, "backend": {
                "address": be["be4"]["ipv4"], "name": "be4", "mac": be["be4"]["mac"], "weight": 1}})
        deadline = time.monotonic() + 20
        while any(_lock_holder(s) in (0, o) for s, o in zip(segs, old, strict=True)):
            assert time.monotonic() < deadline, "no replacement workers holding the tables"
            time.sleep(0.05)
        assert sorted(glob.glob(f"/dev/shm/maglev-{inst}-ct-*")) == segs
        _progress(talk, "after the kill")
        talk.finish()
        assert talk.error is None, talk.error
        after = data_after = _write(short / "after.toml", data, {"be1", "be2", "be3", "be4"})
        would_move = _would_move(after, conns, first, st["backends"])
        kept = N_CONNS - len(talk.lost)
        print(f"kill -9 of both workers + a backend added: {kept}/{N_CONNS} connections kept their backend = "
              f"{kept / N_CONNS:.4f} ({talk.rate():.2f} requests/s per connection; Maglev alone would have "
              f"moved {would_move})")
        assert before.vips and data_after.vips
        assert would_move > 0, "the backend change must move some connections without conntrack"
        assert talk.lost == {}, talk.lost
    finally:
        _clean_up(talk, conns, lab, short)
