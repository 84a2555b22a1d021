"""Benchmark-only C lives in its own module (issue 12): ``bench/native`` builds ``_mgbench``;
the production extension ``maglev._native`` exports none of its functions and compiles none
of its sources."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from maglev.native import ffi, lib
from maglev.rings import Region
from maglev.testing import unique

ROOT = Path(__file__).resolve().parents[2]
BENCH_C = ROOT / "bench" / "native"
PROD_C = ROOT / "maglev" / "_cffi_src"


def _bench_functions() -> set[str]:
    text = "\n".join(p.read_text() for p in (BENCH_C / "cdef").glob("*.h"))
    return set(re.findall(r"\b(mg_\w+)\s*\(", text))


def test_bench_functions_are_known() -> None:
    names = _bench_functions()
    assert {"mg_ring_bench_produce", "mg_ring_bench_consume", "mg_ring_bench_local", "mg_dp_bench",
            "mg_encap_bench", "mg_dp_calibrate"} <= names


def test_production_extension_has_no_bench_symbols() -> None:
    exported = set(dir(lib))
    assert not _bench_functions() & exported
    assert not [n for n in exported if "bench" in n.lower()]


def test_production_sources_hold_no_bench_code() -> None:
    names = _bench_functions()
    for path in sorted(PROD_C.rglob("*")):
        if path.suffix not in (".c", ".h"):
            continue
        assert "bench" not in path.name, path
        text = path.read_text()
        found = sorted(n for n in names if re.search(rf"\b{n}\s*\(", text))
        assert not found, f"{path.relative_to(ROOT)} declares or defines {found}"


def test_bench_module_runs_on_production_structures() -> None:
    """The benchmark module takes a ring made through maglev.native as it is (ffi.include)."""
    spec = importlib.util.spec_from_file_location("bench_native_build", BENCH_C / "build.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    blib = build.load().lib
    name = unique.name("t-bench-")
    with Region.create(name, 1, n_frames=64, ring_size=1024, tables_bytes=0) as region:
        try:
            errors = ffi.new("uint64_t *")
            assert blib.mg_ring_bench_local(region.rx(0).ptr, 10_000, 32, errors) == 10_000
            assert errors[0] == 0
        finally:
            region.unlink()
