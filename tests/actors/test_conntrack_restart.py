"""A worker killed with -9 is replaced by one that adopts its connection table from
/dev/shm (issue 16.5): the entries are still there, the table was adopted once, and the
replacement forwards with it.  (Flows keeping their backend across such a kill while the
backend set changes: tests/rings/test_conntrack_shm.py; across a restart of `maglev run`
in the lab: tests/lab/test_restart_adoption.py.)"""

from __future__ import annotations

import os
import signal
import time

from maglev.actors.pipeline import Pipeline, PipelineOptions
from maglev.control.endpoints import state_dir
from maglev.native import ffi
from maglev.rings import conntrack_shm as cs
from maglev.testing import unique
from tests.run_helpers import pipeline_summary, wait_worker_packets


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
        sup = p.supervisor
        deadline = time.monotonic() + 15
        while int(_header(seg).n_used) < 500:  # the worker's table fills as flows arrive
            assert time.monotonic() < deadline, "worker 0's table in /dev/shm got no entries"
            p.poll(0.05)
        before = _header(seg)
        used, adoptions, inode = int(before.n_used), int(before.adoptions), os.stat(seg).st_ino
        old = sup.pid("worker-0")
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic()
        while not (sup.alive("worker-0") and sup.pid("worker-0") != old):
            assert time.monotonic() - t0 < 5, "no replacement"
            p.poll(0.01)
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
        (line,) = _run_once(conf, 3, caplog)
        assert "adopting 0 of 3" in line and "made by a run of 2 workers, this run has 3" in line
    finally:
        cs.remove_segments(inst)
