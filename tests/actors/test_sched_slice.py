"""The data-path actors' optional short EEVDF slice (maglev/actors/sched.py,
MAGLEV_SCHED_SLICE_US): off by default, every data-path actor has it when asked."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from maglev.actors.pipeline import Pipeline, PipelineOptions
from maglev.actors.sched import current_slice_ns, set_wakeup_slice


def _kernel_has_custom_slices() -> bool:
    code = ("from maglev.actors.sched import set_wakeup_slice as s; import sys; "
            "sys.exit(0 if s(100) == 100000 else 1)")
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()}).returncode == 0


needs_slices = pytest.mark.skipif(not _kernel_has_custom_slices(),
                                  reason="this kernel has no custom EEVDF slices (Linux >= 6.12)")


def _in_child(body: str) -> str:
    r = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@needs_slices
def test_set_and_read_back_in_a_fresh_process():
    assert _in_child("from maglev.actors.sched import set_wakeup_slice as s; print(s(250))") == "250000"
    # the default (off) and 0 leave the kernel's default alone
    out = _in_child("import os; os.environ.pop('MAGLEV_SCHED_SLICE_US', None)\n"
                    "from maglev.actors.sched import set_wakeup_slice as s, current_slice_ns as c\n"
                    "d = c(); print(s(), c() == d)")
    assert out == "0 True"


def test_nothing_asked_changes_nothing():
    before = current_slice_ns()
    assert set_wakeup_slice(0) == 0
    assert current_slice_ns() == before


@needs_slices
def test_every_data_path_actor_runs_with_the_short_slice_when_asked(monkeypatch):
    monkeypatch.setenv("MAGLEV_SCHED_SLICE_US", "100")
    # SCHED_OTHER throughout: a slice is a SCHED_OTHER setting (SCHED_FIFO, the default
    # while light, has none; tests/actors/test_rt.py)
    p = Pipeline(PipelineOptions(workers=2, nic="gen:packets=2000,flows=10", rt_prio=0))
    try:
        p.start()
        names = [n for n in p.supervisor.children if n in ("steering", "muxer") or n.startswith("worker-")]
        assert len(names) == 4
        assert {n: current_slice_ns(p.supervisor.pid(n)) for n in names} == dict.fromkeys(names, 100_000)
        p.stop()
    finally:
        p.close()
