"""Helpers shared by test folders that start a whole ``maglev run``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

MAGLEV = [sys.executable, "-c", "from maglev_cli.main import main; main()"]


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
