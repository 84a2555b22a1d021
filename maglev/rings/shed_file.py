"""Steering's per-VIP overload drops (VIP priority, ``mg_shed.h``) as a file of the run.

The total is exact and crash-safe in steering's stats block (``MG_SS_SHED``, drop reason
``priority_shed``); the split by VIP is counted by C in steering's private memory, indexed
like the tables steering loaded, and the steering actor moves it to VIP keys and writes
``shed-steering.json`` (``{"ADDR:PORT/PROTO": packets, "(no VIP)": packets}``) in the
run's private directory at most four times a second (atomic replace).  A replacement
steering continues from the file; what the dead one counted after its last write is in
the total but not in the split.  Readers: ``maglev.observability.metrics``.
"""

from __future__ import annotations

import json
import os

from maglev import files

SHED_FILE = "shed-steering.json"
NO_VIP = "(no VIP)"  # shed packets that matched no VIP (priority 0)


def shed_path(run_dir: str | os.PathLike) -> str:
    return os.path.join(run_dir, SHED_FILE)


def read_shed(run_dir: str | os.PathLike | None) -> dict[str, int]:
    """VIP key -> packets steering shed; {} when nothing was written (or unreadable)."""
    if not run_dir:
        return {}
    try:
        data = files.read_json(shed_path(run_dir))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}


def write_shed(path: str, counts: dict[str, int]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(counts, f, sort_keys=True)
    os.replace(tmp, path)
