"""The burst kernel's software prefetches are really in the built code.

GCC treats ``__builtin_prefetch`` as free of side effects: a helper that only prefetches and
is not inlined early gets marked ``const`` and every call to it is deleted.  That happened to
the connection table's prefetch helpers (mg_conntrack.h), silently: the 1M-flow case paid its
DRAM misses in line for months.  This test disassembles the extension that is imported and
checks that the kernels which are meant to prefetch do contain prefetch instructions."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest

import maglev._native as native

pytestmark = pytest.mark.skipif(
    shutil.which("objdump") is None or platform.machine() not in ("x86_64", "AMD64"),
    reason="needs binutils' objdump on x86-64 to read the extension's machine code")


def _function_text(name: str) -> str:
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", native.__file__],
                         check=True, capture_output=True, text=True).stdout
    m = re.search(rf"^[0-9a-f]+ <{name}>:\n(.*?)(?:\n\n|\Z)", out, re.S | re.M)
    assert m, f"{name} not found in {native.__file__}"
    return m.group(1)


@pytest.mark.parametrize("func,least", [
    ("mg_dp_burst", 4),      # bucket line + entry line, prologue and pipelined loop
    ("mg_worker_burst", 2),  # the frames of the next descriptors
])
def test_kernel_has_prefetch_instructions(func: str, least: int) -> None:
    n = len(re.findall(r"\bprefetch\w*", _function_text(func)))
    assert n >= least, f"{func}: {n} prefetch instructions, expected >= {least} (see mg_common.h)"
