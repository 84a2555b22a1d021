"""`maglev conntrack drop --instance NAME` (docs/operations.md, "Removing an instance for
good"): removes the tables a run left in /dev/shm and says what it removed; refuses,
removing nothing, while a run of the instance is up or a live process holds a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from maglev.actors.pipeline import Pipeline, PipelineOptions
from maglev.native import lib
from maglev.rings import conntrack_shm as cs
from maglev.testing import unique

REPO = Path(__file__).resolve().parents[2]


def maglev(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from maglev_cli.main import main; main()", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_drop_refuses_while_the_instance_runs_then_removes_its_tables(tmp_path):
    inst = unique.name("drop")
    conf = tmp_path / "m.toml"
    conf.write_text(f'[instance]\nname = "{inst}"\nsource_ipv4 = "198.18.0.1"\n[[vip]]\naddress = "203.0.113.5"\n'
                    'port = 80\nprotocol = "tcp"\n[[vip.backend]]\naddress = "198.18.5.1"\n')
    other = unique.name("keep")  # another instance's table: never touched
    keep = cs.open_table(cs.segment_name(other, "0badcafe", 0), cs.Wanted(4096, 1, 1, 0))
    lib.mg_ct_free(keep.ct)
    keep.close()
    p = Pipeline(PipelineOptions(workers=2, config_path=str(conf), nic="gen:seconds=30,flows=500,ipv6=0"))
    try:
        p.start()
        deadline = time.monotonic() + 20
        while len(cs.list_segments(inst)) < 2:
            assert time.monotonic() < deadline, "the run made no tables in /dev/shm"
            p.poll(0.05)
        r = maglev("conntrack", "drop", "--instance", inst)
        assert r.returncode == 2, r
        assert "refused, nothing removed" in r.stderr and f"a run of instance {inst!r} is up" in r.stderr, r.stderr
        assert f"supervisor pid {os.getpid()}" in r.stderr, r.stderr  # the region is named after it
        assert len(cs.list_segments(inst)) == 2
        p.stop()
    finally:
        p.close()
    try:
        names = cs.list_segments(inst)
        assert len(names) == 2  # kept for the next run to adopt
        r = maglev("conntrack", "drop", "--instance", inst, "--dry-run")
        assert r.returncode == 0 and r.stdout.count("would remove /dev/shm/") == 2, r
        assert cs.list_segments(inst) == names
        r = maglev("conntrack", "drop", "--instance", inst, "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert sorted(out["removed"]) == names and out["bytes"] > 0
        assert cs.list_segments(inst) == []
        assert cs.list_segments(other) == [cs.segment_name(other, "0badcafe", 0)]
        r = maglev("conntrack", "drop", "--instance", inst)
        assert r.returncode == 0 and "nothing removed" in r.stdout, r
    finally:
        cs.remove_segments(inst)
        cs.remove_segments(other)


def test_drop_refuses_a_table_held_by_a_live_process_and_bad_names():
    inst = unique.name("held")
    t = cs.open_table(cs.segment_name(inst, "12345678", 0), cs.Wanted(4096, 1, 1, 0))
    try:
        r = maglev("conntrack", "drop", "--instance", inst)
        assert r.returncode == 2 and "1 table(s) held by a live process" in r.stderr, r
        assert len(cs.list_segments(inst)) == 1
        r = maglev("conntrack", "drop", "--instance", "../etc")
        assert r.returncode == 2 and "instance name '../etc'" in r.stderr, r
        r = maglev("conntrack", "drop", "--instance", inst, "--tag", "XYZ")
        assert r.returncode == 2 and "tag 'XYZ'" in r.stderr, r
    finally:
        lib.mg_ct_free(t.ct)
        t.close()
    r = maglev("conntrack", "list", "--instance", inst)
    assert r.returncode == 0 and "kept for adoption" in r.stdout, r
    r = maglev("conntrack", "drop", "--instance", inst)
    assert r.returncode == 0 and f"removed /dev/shm/{cs.segment_name(inst, '12345678', 0)}" in r.stdout, r
    assert cs.list_segments(inst) == []
