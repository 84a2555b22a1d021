"""The data path (paper sections 3.2-3.4, 4.3): parse, VIP match, connection tracking,
Maglev selection, encapsulation, fragments, path MTU.

Public surface:

* :func:`build_tables` (``maglev.datapath.tables``) -- config -> the tables blob workers read;
* :func:`DataPath` -- a worker's data path over packets in memory, engine ``"c"`` (the
  burst kernel ``mg_dp_burst``) or ``"python"`` (the reference, identical results);
* :data:`DROP_NAMES` -- the drop-reason names, read from the C module (one list).

This package imports nothing heavy at import time: :func:`DataPath` loads the engine it is
asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maglev.native import ENGINES

if TYPE_CHECKING:  # pragma: no cover
    from maglev.datapath.native import CDataPath
    from maglev.datapath.ref_dp import RefDataPath

__all__ = ["DROP_NAMES", "ENGINES", "DataPath", "build_tables"]


def DataPath(
    tables: bytes, *, engine: str = "c", ct_capacity: int = 65536, worker: int = 0, now_ns: int = 0
) -> CDataPath | RefDataPath:
    """A data path using ``tables`` (from :func:`build_tables`).  Both engines offer
    ``process(packets, now_ns) -> list[Output]``, ``flush(now_ns)``, ``set_tables(blob)``
    and ``stats()``."""
    if engine == "c":
        from maglev.datapath.native import CDataPath

        return CDataPath(tables, ct_capacity=ct_capacity, worker=worker, now_ns=now_ns)
    if engine == "python":
        from maglev.datapath.ref_dp import RefDataPath

        return RefDataPath(tables, ct_capacity=ct_capacity, worker=worker, now_ns=now_ns)
    raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")


def build_tables(*args, **kwargs) -> bytes:
    """See :func:`maglev.datapath.tables.build_tables`."""
    from maglev.datapath.tables import build_tables as _build

    return _build(*args, **kwargs)


def __getattr__(name: str):
    if name == "DROP_NAMES":
        from maglev.datapath.engine import DROP_NAMES

        return DROP_NAMES
    raise AttributeError(name)
