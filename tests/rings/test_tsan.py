"""ThreadSanitizer run of the ring / doorbell / table-publication C code (see
tests/rings/c/tsan_rings.c).  Skips, saying why, when gcc or libtsan is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent / "maglev" / "_cffi_src"
UNITS = ["mg_shm.c", "mg_ring.c", "mg_bell.c", "mg_doorbell.c", "mg_hand.c", "mg_tables_pub.c"]


def test_no_data_race_under_thread_sanitizer(tmp_path):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the ThreadSanitizer harness")
    exe = tmp_path / "tsan_rings"
    build = subprocess.run(
        [gcc, "-O1", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Wno-tsan", "-fsanitize=thread",
         f"-I{SRC / 'include'}", str(HERE / "c" / "tsan_rings.c"),
         *[str(SRC / "src" / u) for u in UNITS], "-o", str(exe), "-lpthread"],
        capture_output=True, text=True, timeout=120,
    )
    if build.returncode != 0:
        if "tsan" in build.stderr.lower() and "cannot find" in build.stderr.lower():
            pytest.skip(f"libtsan is not installed: {build.stderr.strip()[:200]}")
        pytest.fail(build.stderr)
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    run = subprocess.run([str(exe), "200000", "200"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert "ThreadSanitizer" not in run.stderr, run.stderr[:4000]
    assert run.returncode == 0, (run.stdout, run.stderr[:2000])
    assert "ring errors 0" in run.stdout and "errors 0" in run.stdout.splitlines()[-1]
