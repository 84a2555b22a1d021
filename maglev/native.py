"""The one door to the C extension ``maglev._native``.

Domain wrappers (``maglev/hashing/native.py``, ``maglev/datapath/native.py``, ...) import
``ffi``, ``lib`` and ``check`` from here; nothing else touches ``lib``.  C returns a count
or ``-errno``; :func:`check` turns the negative case into :class:`NativeError`.
"""

from __future__ import annotations

import errno
import os

from maglev.errors import NativeError

try:
    from maglev._native import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "maglev's C extension is not built: run `pip install -e .` "
        "(or `python maglev/_cffi_src/build.py`) in the source tree"
    ) from exc

__all__ = ["ENGINES", "ffi", "lib", "check"]

# The engines every kernel comes in: the C extension, or its pure-Python reference
# (maglev/datapath/ref_*.py, maglev/hashing/reference.py).  The one list of their names.
ENGINES = ("c", "python")

_MESSAGES = {
    errno.EINVAL: "invalid argument",
    errno.ENOMEM: "out of memory",
    errno.ENOSPC: "no space left in the table or ring",
    errno.E2BIG: "argument too large",
}


def check(rc: int, what: str) -> int:
    """Return ``rc`` when it is a count; raise :class:`NativeError` when it is -errno."""
    if rc < 0:
        code = -rc
        msg = _MESSAGES.get(code) or os.strerror(code)
        raise NativeError(code, f"{what}: {msg}")
    return rc
