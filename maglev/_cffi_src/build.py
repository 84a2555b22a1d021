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
# setuptools wants paths relative to the project root (where setup.py is).
ROOT = HERE.parent.parent


def _rel(p: Path) -> str:
    return os.path.relpath(p, ROOT) if Path.cwd().resolve() == ROOT else str(p)


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


def make_ffibuilder() -> FFI:
    builder = FFI()
    builder.cdef(_read_cdefs())
    headers = sorted(p.name for p in (HERE / "include").glob("*.h"))
    builder.set_source(
        "maglev._native",
        "\n".join(f'#include "{name}"' for name in headers),
        sources=[_rel(p) for p in sorted((HERE / "src").glob("*.c"))],
        include_dirs=[_rel(HERE / "include")],
        extra_compile_args=_compile_args(),
        extra_link_args=_link_args(),
    )
    return builder


# The XDP program of the afxdp NIC: BPF bytecode built from bpf/mg_xdp.bpf.c by clang's
# BPF target.  Optional: without clang (or its BPF target) the extension builds anyway
# and `--nic afxdp` says the program was not built and which --nic to use instead.
BPF_SRC = HERE / "bpf" / "mg_xdp.bpf.c"
BPF_OBJ = ROOT / "maglev" / "data" / "mg_xdp.bpf.o"


def build_bpf(out: Path = BPF_OBJ) -> str:
    """Compile the XDP program into ``out``; returns "" or why it was not built."""
    import shutil
    import subprocess

    clang = os.environ.get("MAGLEV_BPF_CLANG") or shutil.which("clang")
    if not clang:
        return "clang is not installed (apt-get install clang)"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    try:
        r = subprocess.run([clang, "-O2", "-g0", "-target", "bpf", "-Wall", "-Wextra", "-Werror",
                            "-c", str(BPF_SRC), "-o", str(tmp)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{clang} could not run: {e}"
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        return f"clang -target bpf failed: {r.stderr.strip()[-300:]}"
    tmp.replace(out)
    return ""


ffibuilder = make_ffibuilder()
# pip/setuptools import this module to build the extension: build the BPF object too.
if __name__ != "__main__" and not BPF_OBJ.exists():
    build_bpf()

if __name__ == "__main__":
    # Quick developer rebuild without pip: compile in build/inplace (absolute paths, no
    # project files there to confuse setuptools) and copy the module next to the sources
    # under the name `pip install -e .` gives it, removing any other copy.
    import shutil

    out = ROOT / "build" / "inplace"
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)
    so = Path(make_ffibuilder().compile(tmpdir=str(out)))
    if why := build_bpf():
        print(f"note: the XDP program (--nic afxdp) was not built: {why}")
    for stale in (ROOT / "maglev").glob("_native*.so"):
        stale.unlink()
    shutil.copy2(so, ROOT / "maglev" / so.name)
