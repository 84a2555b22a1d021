"""Long-lived TCP connections through the real forwarder keep their backend across a
restart of `maglev run` with **another worker count** (session 8, docs/operations.md
"What moves a connection"): the new run cannot adopt the old tables as they are (steering
sends each flow to another worker now), so it re-homes their entries by steering's new map
into fresh tables that its workers adopt.  A backend is added across the restart, so that
Maglev hashing alone would move some of the connections.  On the old code the tables
started fresh ("adopting 0 of 3") and those connections broke."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from maglev.lab import topology as topo
from maglev.lab.talkers import Talkers
from tests.lab.lab_helpers import lab_config, spawn_run
from tests.lab.test_long_lived import KeepAlive
from tests.lab.test_restart_adoption import (
    N_CONNS,
    PERIOD_S,
    _clean_up,
    _progress,
    _would_move,
    _write,
)

pytestmark = pytest.mark.root


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 1)])
def test_restart_with_another_worker_count_keeps_every_connection(make_lab, before, after):
    lab = make_lab(encap="gre", backends=4, forwarder=False)
    st = lab.state
    data = lab_config(lab)
    data["instance"]["name"] = f"s8c-w{before}{after}"
    short = Path(tempfile.mkdtemp(prefix="s8c", dir="/tmp"))  # ipc:// paths must be short
    cfg = short / "maglev.toml"
    conns: list[KeepAlive] = []
    talk: Talkers | None = None
    try:
        _write(cfg, data, {"be1", "be2", "be3"})
        spawn_run(lab, short, before)
        lab._wait_ready(topo.LabSpec(forwarder=True), 40)
        conns = [KeepAlive(st["client"]["ns"]) for _ in range(N_CONNS)]
        for c in conns:
            c.s.settimeout(20)  # a request sent while no forwarder runs waits for TCP's retransmission
        first = [c.get() for c in conns]
        assert set(first) == {"be1", "be2", "be3"}, first
        talk = Talkers([c.s for c in conns], first, PERIOD_S).start()
        time.sleep(1.0)

        lab.stop_process("maglev")
        conf_after = _write(cfg, data, {"be1", "be2", "be3", "be4"})
        spawn_run(lab, short, after)
        lab._wait_ready(topo.LabSpec(forwarder=True), 40)
        _progress(talk, "after the restart")
        talk.finish()
        assert talk.error is None, talk.error

        would_move = _would_move(conf_after, conns, first, st["backends"])
        kept = N_CONNS - len(talk.lost)
        print(f"restart {before} -> {after} workers: {kept}/{N_CONNS} connections kept their backend "
              f"({talk.requests} requests; Maglev alone would have moved {would_move})")
        log = (lab.state_dir / "logs" / "maglev.log").read_text()
        assert "connection tables: re-homed" in log, log[-2000:]
        assert f"adopting the previous run's tables of all {after} workers" in log, log[-2000:]
        assert would_move > 0, "the backend change must move some connections without conntrack"
        assert talk.lost == {}, talk.lost
    finally:
        _clean_up(talk, conns, lab, short)
