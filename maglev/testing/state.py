"""A private state and run directory for a benchmark or a test that runs forwarders in
process, removed afterwards with the connection tables its runs kept in /dev/shm
(``[conntrack] shared``: tables outlive a run for the next one to adopt)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def private_run_state(prefix: str = "mgb-") -> Iterator[str]:
    """Point MAGLEV_STATE_DIR and MAGLEV_RUN_DIR at a fresh folder (unless already set) for
    the block; afterwards remove that folder and every connection table recorded in it."""
    from maglev.rings.conntrack_shm import remove_recorded

    base = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("MAGLEV_STATE_DIR", "MAGLEV_RUN_DIR")}
    os.environ.setdefault("MAGLEV_STATE_DIR", os.path.join(base, "state"))
    os.environ.setdefault("MAGLEV_RUN_DIR", os.path.join(base, "run"))
    try:
        yield base
    finally:
        if saved["MAGLEV_STATE_DIR"] is None:
            remove_recorded(os.environ["MAGLEV_STATE_DIR"])
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
        shutil.rmtree(base, ignore_errors=True)
