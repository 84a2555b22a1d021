"""Build the benchmark-only C into its own module, ``_mgbench`` (next to this file).

The production extension ``maglev._native`` holds no benchmark loops; the loops here
(``src/*.c``: ring producer/consumer, ``mg_dp_bench``, ``mg_encap_bench``,
``mg_dp_calibrate``) call the production kernels, so this module compiles the production
sources once more beside its own and *includes* the production cffi declarations
(``ffi.include``): a ``struct mg_ring *`` or ``struct mg_dp *`` made by ``maglev.native``
is accepted as it is.  The two copies of the kernels share no global state the loops
depend on (every loop works on the structures it is given).

``python3 bench/native/build.py`` (or ``just bench-ext``) rebuilds it; the benchmark
scripts build it on demand through :func:`load` when a source is newer than the module.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MODULE = "_mgbench"


def _production() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_maglev_build", ROOT / "maglev" / "_cffi_src" / "build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sources() -> list[Path]:
    prod = ROOT / "maglev" / "_cffi_src"
    return sorted((HERE / "src").glob("*.c")) + sorted((prod / "src").glob("*.c"))


def _inputs() -> list[Path]:
    prod = ROOT / "maglev" / "_cffi_src"
    out = _sources() + [Path(__file__)]
    for d in (HERE / "include", HERE / "cdef", prod / "include", prod / "cdef"):
        out += sorted(d.glob("*.h"))
    return out


def build() -> Path:
    """Compile the module into bench/native; returns the path of the .so."""
    prod = _production()
    builder = _cffi_builder(prod)
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    so = Path(builder.compile(tmpdir=str(out)))
    for stale in HERE.glob(f"{MODULE}*.so"):
        stale.unlink()
    target = HERE / so.name
    target.write_bytes(so.read_bytes())
    return target


def _cffi_builder(prod: ModuleType):  # type: ignore[no-untyped-def]
    from cffi import FFI

    builder = FFI()
    builder.include(prod.make_ffibuilder())
    builder.cdef("\n".join(p.read_text() for p in sorted((HERE / "cdef").glob("*.h"))))
    # the included declarations are checked against the production headers as well
    prod_inc = ROOT / "maglev" / "_cffi_src" / "include"
    headers = sorted(p.name for p in prod_inc.glob("*.h")) + sorted(p.name for p in (HERE / "include").glob("*.h"))
    builder.set_source(
        MODULE,
        "\n".join(f'#include "{name}"' for name in headers),
        sources=[str(p) for p in _sources()],
        include_dirs=[str(HERE / "include"), str(prod_inc)],
        extra_compile_args=prod._compile_args(),
        extra_link_args=prod._link_args(),
    )
    return builder


def _stale() -> bool:
    built = sorted(HERE.glob(f"{MODULE}*.so"))
    if not built:
        return True
    t = built[0].stat().st_mtime
    return any(p.stat().st_mtime > t for p in _inputs())


def load() -> ModuleType:
    """The benchmark module (``.ffi``, ``.lib``), built first when missing or stale."""
    if _stale():
        print(f"building the benchmark module {MODULE} (bench/native/build.py) ...", file=sys.stderr)
        build()
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(MODULE)


if __name__ == "__main__":
    os.chdir(ROOT)
    print(build())
