"""A census of a connection table that a writer rewrites while it is read (tests/rings/c/
census_race.c): every slot the census accepts pairs a key with the backend id written with
that key (include/mg_ct_census.h: put()'s store order + the census's read order).  Skips,
saying why, without gcc."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent / "maglev" / "_cffi_src"
UNITS = ["mg_ct_census.c", "mg_conntrack.c", "mg_hash.c"]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the census race harness")
    exe = tmp_path_factory.mktemp("census") / "census_race"
    build = subprocess.run([gcc, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{SRC / 'include'}",
                            str(HERE / "c" / "census_race.c"), *[str(SRC / "src" / u) for u in UNITS],
                            "-o", str(exe), "-lpthread"], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    return exe


def _run(exe: Path, *args: str) -> tuple[int, dict[str, int], str]:
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
    last = r.stdout.strip().splitlines()[-1]
    nums = {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", last)}
    print(" ".join(args), "->", r.stdout.strip().replace("\n", "; "))
    return r.returncode, nums, r.stderr


@pytest.mark.parametrize("capacity", ["16", "512"])
def test_census_of_a_table_rewritten_by_put_pairs_every_key_with_its_own_backend(harness, capacity):
    rc, n, err = _run(harness, "2000000", capacity)
    assert rc == 0 and n["errors"] == 0, err
    assert n["checked"] > 100000 and n["census"] > 10  # it really read while the writer ran


def test_a_preempted_writer_in_puts_order_is_never_miscounted(harness):
    rc, n, err = _run(harness, "200000", "64", "slow")
    assert rc == 0 and n["errors"] == 0, err
    assert n["checked"] > 10000 and n["torn"] > 0  # slots caught mid-rewrite were skipped


def test_the_harness_catches_a_writer_that_stores_the_key_first(harness):
    rc, n, err = _run(harness, "200000", "64", "slow-keyfirst")
    assert rc == 1 and n["errors"] > 0 and "with backend id" in err
