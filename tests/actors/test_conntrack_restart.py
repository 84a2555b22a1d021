"""A worker killed with -9 is replaced by one that adopts its connection table from
/dev/shm (issue 16.5): the entries are still there, the table was adopted once, and the
replacement forwards with it.  (Flows keeping their backend across such a kill while the
backend set changes: tests/rings/test_conntrack_shm.py; across a restart of `maglev run`
in the lab: tests/lab/test_restart_adoption.py.)"""

from __future__ import annotations

import os
import time

from maglev.actors.pipeline import Pipeline, PipelineOptions
from maglev.control.endpoints import state_dir
from maglev.native import ffi
from maglev.rings import conntrack_shm as cs
from maglev.testing import unique
from tests.run_helpers import kill_until_replaced, pipeline_summary, wait_worker_packets


def _header(path: str):
    with open(path, "rb") as f:
        raw = f.read(cs.HDR_SIZE)
    return ffi.cast("struct mg_ct *", ffi.from_buffer(raw))


def test_a_worker_killed_with_9_resumes_with_its_table():
    p = Pipeline(PipelineOptions(workers=2, nic="gen:seconds=20,flows=3000,ipv6=0", ring_size=256))
    inst = p.config.instance.name
    tag = cs.identity_tag(str(state_dir(inst)), "")
    seg = os.path.join(cs.SHM_DIR, cs.segment_name(inst, tag, 0))
    try:
        p.start()
        deadline = time.monotonic() + 15
        while int(_header(seg).n_used) < 500:  # the worker's table fills as flows arrive
            assert time.monotonic() < deadline, "worker 0's table in /dev/shm got no entries"
            p.poll(0.05)
        before = _header(seg)
        used, adoptions, inode = int(before.n_used), int(before.adoptions), os.stat(seg).st_ino
        t0 = time.monotonic()
        kill_until_replaced(p, "worker-0", 5)
        while int(_header(seg).adoptions) == adoptions:  # the replacement's setup adopts it
            assert time.monotonic() - t0 < 10, "the replacement did not adopt the table"
            p.poll(0.01)
        after = _header(seg)
        assert os.stat(seg).st_ino == inode, "the replacement made a fresh table instead of adopting"
        assert int(after.adoptions) == adoptions + 1
        assert int(after.n_used) >= used  # nothing lost (the generator's flows keep coming)
        wait_worker_packets(p, 2000, "the replacement does not process packets")
        p.stop()
        s = p.summary()
    finally:
        p.close()
        cs.remove_segments(inst, tag)  # the tables this run kept for adoption (this identity only)
    assert s["restarts"]["worker-0"] == 1
    assert s["pool"]["ok"], s["pool"]["detail"]


def _run_once(conf, workers: int, caplog) -> list[str]:
    caplog.clear()
    pipeline_summary(PipelineOptions(workers=workers, config_path=str(conf), nic="gen:packets=20000,flows=500,ipv6=0"))
    return [r.getMessage() for r in caplog.records if r.name == "maglev.conntrack"]


def test_a_new_run_adopts_the_tables_when_it_can_and_says_why_not_when_it_cannot(tmp_path, caplog):

    inst = unique.name("adopt")
    conf = tmp_path / "m.toml"
    conf.write_text(f'[instance]\nname = "{inst}"\nsource_ipv4 = "198.18.0.1"\n[[vip]]\naddress = "203.0.113.5"\n'
                    'port = 80\nprotocol = "tcp"\n[[vip.backend]]\naddress = "198.18.5.1"\n'
                    '[[vip.backend]]\naddress = "198.18.5.2"\n')
    caplog.set_level("INFO", "maglev.conntrack")
    try:
        assert _run_once(conf, 2, caplog) == [
            "connection tables: none from a previous run of this instance; 2 fresh tables"]
        assert _run_once(conf, 2, caplog) == ["connection tables: adopting the previous run's tables of all 2 workers"]
        segs = cs.list_segments(inst)
        assert len(segs) == 2 and all(int(_header(os.path.join(cs.SHM_DIR, s)).adoptions) == 1 for s in segs)
        # a build with another layout version left worker 1's table: refused, fresh
        with open(os.path.join(cs.SHM_DIR, segs[1]), "r+b") as f:
            f.seek(8)
            f.write((3).to_bytes(4, "little"))
        assert _run_once(conf, 2, caplog) == [
            "connection tables: adopting 1 of 2; the others start fresh: layout version 3, this build uses 2 "
            "(worker 1)"]
        assert int(_header(os.path.join(cs.SHM_DIR, segs[1])).adoptions) == 0  # the fresh one
        # another worker count: the entries are re-homed into 3 fresh tables (by steering's
        # map), which the workers adopt (before session 8: "adopting 0 of 3", all fresh)
        rehomed, line = _run_once(conf, 3, caplog)
        assert rehomed.startswith("connection tables: re-homed ") and "made by a run of 2 workers, this run has 3" in rehomed
        assert line == "connection tables: adopting the previous run's tables of all 3 workers"
    finally:
        cs.remove_segments(inst)


def _flows_to_backends(path) -> dict[tuple[bytes, int, bytes, int], str]:
    """From a capture of maglev's output (GRE over IPv4): inner (src, sport, dst, dport) ->
    the backend (outer destination) it went to; asserts a flow went to one backend."""
    import ipaddress
    import struct

    from maglev.nic.pcapfile import PcapReader

    out: dict[tuple[bytes, int, bytes, int], str] = {}
    with PcapReader(path) as r:
        for rec in r:
            ip = rec.data[14:]
            assert ip[9] == 47, "GRE"
            inner = ip[(ip[0] & 15) * 4 + 4:]
            ihl = (inner[0] & 15) * 4
            sport, dport = struct.unpack_from("!HH", inner, ihl)
            k = (inner[12:16], sport, inner[16:20], dport)
            be = str(ipaddress.ip_address(ip[16:20]))
            assert out.setdefault(k, be) == be, f"flow {k} went to two backends in one run"
    return out


def test_a_restart_with_another_worker_count_rehomes_the_tables_and_no_connection_moves(tmp_path, caplog):
    """Run 1: two workers, backends .1 and .2.  Then a backend (.3) is added to the file and
    the run restarted with **three** workers: the old tables cannot be adopted as they are
    (flows land on other workers), so before the workers start their live entries are
    re-homed into three fresh tables by steering's map, which the workers adopt.  Every
    flow of run 1 goes to the same backend in run 2 and .3 gets none of them, though Maglev
    alone would move about a third of them there (checked).  On the old code the tables
    started fresh ("adopting 0 of 3") and those flows moved."""

    from maglev import config as cfg
    from maglev.datapath import build_tables
    from maglev.testing import packets as P
    from tests.datapath.test_dp import maglev_backend

    inst = unique.name("rh")
    conf = tmp_path / "m.toml"
    head = (f'[instance]\nname = "{inst}"\nsource_ipv4 = "198.18.0.1"\n[[vip]]\naddress = "203.0.113.5"\n'
            'port = 80\nprotocol = "tcp"\n[[vip.backend]]\naddress = "198.18.5.1"\n'
            '[[vip.backend]]\naddress = "198.18.5.2"\n')
    gen = "gen:packets=12000,flows=300,ipv6=0,seed=7,rate=20000"
    caplog.set_level("INFO", "maglev.conntrack")
    try:
        conf.write_text(head)
        pipeline_summary(PipelineOptions(workers=2, config_path=str(conf), nic=gen, ring_size=16384,
                                         out=f"pcap:{tmp_path / 'run1.pcap'}"))
        conf.write_text(head + '[[vip.backend]]\naddress = "198.18.5.3"\n')
        caplog.clear()
        pipeline_summary(PipelineOptions(workers=3, config_path=str(conf), nic=gen, ring_size=16384,
                                         out=f"pcap:{tmp_path / 'run2.pcap'}"))
        lines = [r.getMessage() for r in caplog.records if r.name == "maglev.conntrack"]
        n_tables = len(cs.list_segments(inst))
    finally:
        cs.remove_segments(inst)
    run1, run2 = _flows_to_backends(tmp_path / "run1.pcap"), _flows_to_backends(tmp_path / "run2.pcap")
    both = set(run1) & set(run2)
    assert len(both) >= 250, (len(run1), len(run2))
    moved = {k: (run1[k], run2[k]) for k in both if run1[k] != run2[k]}
    assert len(moved) == 0, f"{len(moved)} of {len(both)} flows moved"
    assert any(m.startswith("connection tables: re-homed") and "made by a run of 2 workers" in m
               for m in lines), lines
    assert "connection tables: adopting the previous run's tables of all 3 workers" in lines
    assert n_tables == 3
    blob = build_tables(cfg.loads(conf.read_text()))
    would = sum(maglev_backend(blob, P.eth(P.ipv4(".".join(map(str, k[0])), ".".join(map(str, k[2])), P.TCP,
                P.tcp(k[1], k[3], b"", src=".".join(map(str, k[0])), dst=".".join(map(str, k[2]))))))[1] != run1[k]
                for k in both)
    assert would > len(both) // 6, f"Maglev alone would move only {would} of {len(both)}"
