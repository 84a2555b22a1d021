"""Build script for the one native extension, ``maglev._native`` (cffi API mode, out of line).

Layout (each C module ``foo`` owns three files, so modules can be added without editing
this script):

* ``include/foo.h`` -- the real C header (types, inline helpers, prototypes);
* ``cdef/foo.h``    -- the declarations cffi exposes to Python (a subset cffi can parse);
* ``src/foo.c``     -- the translation unit.

Every ``cdef/*.h`` is concatenated into the cdef; every ``include/*.h`` is included by the
generated module; every ``src/*.c`` is compiled and linked in.  Flags:
``-O2 -Wall -Wextra`` always; ``MAGLEV_SANITIZE=1`` adds ASan+UBSan; ``MAGLEV_CFLAGS``
appends anything else (for example ``-march=native``).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _read_cdefs() -> str:
    parts = []
    for path in sorted((HERE / "cdef").glob("*.h")):
        parts.append(f"/* --- {path.name} --- */\n" + path.read_text())
    return "\n".join(parts)


def _compile_args() -> list[str]:
    args = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-fno-strict-aliasing"]
    if os.environ.get("MAGLEV_SANITIZE") == "1":
        args += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
    args += shlex.split(os.environ.get("MAGLEV_CFLAGS", ""))
    return args


def _link_args() -> list[str]:
    if os.environ.get("MAGLEV_SANITIZE") == "1":
        return ["-fsanitize=address,undefined"]
    return []


ffibuilder = FFI()
ffibuilder.cdef(_read_cdefs())
_headers = sorted(p.name for p in (HERE / "include").glob("*.h"))
ffibuilder.set_source(
    "maglev._native",
    "\n".join(f'#include "{name}"' for name in _headers),
    sources=[str(p) for p in sorted((HERE / "src").glob("*.c"))],
    include_dirs=[str(HERE / "include")],
    extra_compile_args=_compile_args(),
    extra_link_args=_link_args(),
    libraries=[],
)

if __name__ == "__main__":
    # In-place developer build: `python maglev/_cffi_src/build.py` from the repo root.
    os.chdir(HERE.parent.parent)
    ffibuilder.compile(tmpdir="build/cffi", verbose=False)
    import shutil

    for so in Path("build/cffi/maglev").glob("_native*.so"):
        shutil.copy2(so, "maglev/")
