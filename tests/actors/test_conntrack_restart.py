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


def _header(path: str):
    with open(path, "rb") as f:
        raw = f.read(cs.HDR_SIZE)
    return ffi.cast("struct mg_ct *", ffi.from_buffer(raw))


def test_a_worker_killed_with_9_resumes_with_its_table():
    p = Pipeline(PipelineOptions(workers=2, nic="gen:seconds=20,flows=3000,ipv6=0", ring_size=256))
    inst = p.config.instance.name
    seg = os.path.join(cs.SHM_DIR, cs.segment_name(inst, cs.identity_tag(str(state_dir(inst)), ""), 0))
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
        n = p.counters()["per_worker"][0]["packets_in"]
        deadline = time.monotonic() + 10
        while p.counters()["per_worker"][0]["packets_in"] < n + 2000:
            assert time.monotonic() < deadline, "the replacement does not process packets"
            p.poll(0.02)
        p.stop()
        s = p.summary()
    finally:
        p.close()
    assert s["restarts"]["worker-0"] == 1
    assert s["pool"]["ok"], s["pool"]["detail"]
