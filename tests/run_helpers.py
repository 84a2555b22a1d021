"""Helpers shared by test folders that start a whole ``maglev run`` (the command, or its
processes as a Pipeline)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from maglev.actors.pipeline import Pipeline, PipelineOptions
from maglev.actors.supervisor import Supervisor

MAGLEV = [sys.executable, "-c", "from maglev_cli.main import main; main()"]

# The stall time (``PipelineOptions.stall_ms``, ``maglev run --stall-ms``) for a run whose
# test is not about the stall judgement but demands that no packet be dropped, or none
# under a reason other than the kills it makes.  With an unpaced input a worker's rx ring
# is full most of the time, and a worker kept off the CPU for over the default 50 ms (a
# loaded two-core machine: load 12+, two suites at once) is judged frozen by steering and
# its packets are dropped as ``owner_stalled`` (1373 of 60000 once in
# tests/control/test_run.py).  A worker that really stops still fails these tests: its
# packets are dropped after 5 s, or the run misses its deadline.  The judgement itself has
# its own tests with the default (tests/hostile/test_kill_flows.py, tests/actors/test_dispatch.py).
NO_LOAD_STALL_MS = 5000.0


def run_to_eof(workdir: Path, name: str, args: list[str], timeout: float = 120.0) -> dict:
    """``maglev run ARGS --exit-on-eof --json`` for instance ``name``, its run and state
    directories in ``workdir``: assert it exits 0 and return its JSON summary (the last
    line of its output).  The instance's shared memory (the connection tables a run keeps
    for adoption) and the run directory are removed, also when the run fails."""
    env = {**os.environ, "MAGLEV_RUN_DIR": str(workdir / "run"), "MAGLEV_STATE_DIR": str(workdir / "state")}
    try:
        r = subprocess.run([*MAGLEV, "run", *args, "--exit-on-eof", "--json"],
                           env=env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        for shm in Path("/dev/shm").glob(f"maglev-{name}-*"):
            shm.unlink(missing_ok=True)
        shutil.rmtree(workdir / "run", ignore_errors=True)


def poll_until_eof(p: Pipeline, timeout: float = 30.0, what: str = "no eof in time") -> None:
    """Poll the started Pipeline ``p`` until its input ended; fail with ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not p.eof:
        assert time.monotonic() < deadline, what
        p.poll(0.05)


def kill_until_replaced(p: Pipeline, actor: str, timeout: float = 10.0) -> float:
    """kill -9 ``actor`` of the started Pipeline ``p`` and poll until the supervisor runs a
    replacement; returns the seconds that took (fails after ``timeout``)."""
    sup = p.supervisor
    old = sup.pid(actor)
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    while not (sup.alive(actor) and sup.pid(actor) != old):
        assert time.monotonic() - t0 < timeout, f"no replacement for {actor}"
        p.poll(0.01)
    return time.monotonic() - t0


def pipeline_summary(opts: PipelineOptions, timeout: float = 30.0) -> tuple[Pipeline, dict]:
    """Start a Pipeline of ``opts``, run it until its input ended, stop it; return it
    (closed, also when it failed) and its summary."""
    p = Pipeline(opts)
    try:
        p.start()
        poll_until_eof(p, timeout)
        p.stop()
        return p, p.summary()
    finally:
        p.close()


def maglev_ctl(control: str, *args: str) -> subprocess.CompletedProcess:
    """``maglev ctl --control CONTROL ARGS`` (30 s at most), its output captured."""
    return subprocess.run([*MAGLEV, "ctl", "--control", control, *args], capture_output=True, text=True, timeout=30)


def ctl_status(control: str) -> dict:
    """``maglev ctl status --json`` of the run at ``control``; asserts that it answered."""
    r = maglev_ctl(control, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_worker_packets(p: Pipeline, more: int, what: str, worker: int = 0, timeout: float = 10.0) -> None:
    """Poll the Pipeline ``p`` until worker ``worker`` took ``more`` packets beyond its count
    now; fail with ``what`` after ``timeout`` seconds."""
    n = p.counters()["per_worker"][worker]["packets_in"]
    deadline = time.monotonic() + timeout
    while p.counters()["per_worker"][worker]["packets_in"] < n + more:
        assert time.monotonic() < deadline, what
        p.poll(0.02)


def _blocked_reading_stdin(pid: int) -> bool:
    """Whether process ``pid`` sits in ``read(0, ...)`` (``/proc/PID/syscall``: number 0,
    first argument 0 on x86-64; ``read`` is 63 on arm64)."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return len(fields) > 1 and fields[0] in ("0", "63") and int(fields[1], 16) == 0


def wait_standby_ready(sup: Supervisor, timeout: float = 60.0) -> int:
    """Poll the started Supervisor ``sup`` until its standby process (``launch --standby``,
    the one a restart takes) finished its imports and waits for a spec on stdin; return its
    pid.  A test timing a restart waits for this first: a standby started with the run
    competes with the actors' own start-up, and on a loaded machine may still be importing
    when the test kills an actor (then the restart includes the rest of its imports)."""
    deadline = time.monotonic() + timeout
    while True:
        sb = sup._standby
        if sb is not None and sb.poll() is None and _blocked_reading_stdin(sb.pid):
            return sb.pid
        assert time.monotonic() < deadline, f"the standby did not finish its imports in {timeout:.0f} s"
        sup.poll(0.02)
