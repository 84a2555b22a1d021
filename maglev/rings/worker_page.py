"""A worker's metrics page: the counters only a worker process holds, for any reader.

What a worker's data path counts privately -- connection-table and fragment-table
counters, per-VIP and per-backend packets and bytes -- is copied by the worker's
housekeeping tick (about 4 times a second, :meth:`WorkerPage.publish`) into a small file
``obs-worker-<i>`` in the run's private directory, which readers map
(:func:`read_worker_page`).  A restarted worker's page goes on from its predecessor's
connection-table and fragment-table counters, and from its per-VIP and per-backend ones while
it runs the same tables (``mg_obs_page_adopt``).  The layout and both sides of its seqlock are C
(``mg_obs.h``): the writer makes the sequence odd, copies, makes it even; the reader
copies and re-checks the sequence *in the mapping*, retrying a torn copy.  Python only
names fields of ``struct mg_obs_page_hdr``.

The per-VIP/per-backend counters are indexed like the tables the worker uses; a page
whose counters describe another tables blob than the one the worker reports carries none
(C leaves both counts 0), so a reader never maps indices to the wrong names.
"""

from __future__ import annotations

import errno
import mmap
import os
import time
from pathlib import Path
from typing import Any

from maglev.native import ffi, lib

__all__ = ["PAGE_BYTES", "WorkerPage", "page_path", "read_worker_page"]

PAGE_BYTES = int(lib.mg_obs_page_bytes())
MAX_VIPS = int(lib.MG_OBS_MAX_VIPS)
MAX_BACKENDS = int(lib.MG_OBS_MAX_BACKENDS)


def _fields(ctype: str) -> tuple[str, ...]:
    return tuple(name for name, _ in ffi.typeof(ctype).fields)


CT_FIELDS = _fields("struct mg_ct_stats")
FRAG_FIELDS = _fields("struct mg_frag_stats")


def page_path(run_dir: str | os.PathLike, worker: int) -> Path:
    return Path(run_dir) / f"obs-worker-{worker}"


class WorkerPage:
    """The writer side, in a worker process.  Cheap (a few copies of the used range); call
    :meth:`publish` from the actor's tick, never per burst."""

    def __init__(self, region: Any, run_dir: str | os.PathLike, worker: int, native_worker: Any,
                 period_s: float = 0.25):
        self.region = region
        self.worker = worker
        self.period_s = period_s
        self._next = 0.0
        self._w = native_worker
        fd = os.open(page_path(run_dir, worker), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, PAGE_BYTES)
            self._mm = mmap.mmap(fd, PAGE_BYTES, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self._buf: Any = ffi.from_buffer("uint8_t[]", self._mm)
        # A restarted worker finds its killed predecessor's page: its connection-table and
        # fragment-table counters become the base the new ones add to, so they never go
        # backwards across the restart (mg_obs_page_adopt; docs/metrics.md).
        # So do its per-VIP and per-backend counters while it runs the same tables.
        self._prev: Any = ffi.new("struct mg_obs_prev *")
        rc = lib.mg_obs_page_adopt(self._buf, PAGE_BYTES, self._prev)
        if rc == 0 and (self._prev.hdr.n_vips or self._prev.hdr.n_backends):
            self._keep = (ffi.new("struct mg_dp_counter[]", max(1, int(self._prev.hdr.n_vips))),
                          ffi.new("struct mg_dp_counter[]", max(1, int(self._prev.hdr.n_backends))))
            self._prev.vips, self._prev.backends = self._keep
            rc = lib.mg_obs_page_adopt(self._buf, PAGE_BYTES, self._prev)
        if rc < 0 and rc != -errno.ENODATA:
            raise OSError(-rc, f"worker {worker}: metrics page adopt failed")

    def publish(self, now: float | None = None, force: bool = False) -> bool:
        now = time.monotonic() if now is None else now
        if not force and now < self._next:
            return False
        self._next = now + self.period_s
        rc = lib.mg_obs_page_publish(self._buf, PAGE_BYTES, self.region.base, self._w, time.monotonic_ns(),
                                     self._prev)
        if rc < 0:
            raise OSError(-rc, f"worker {self.worker}: metrics page publish failed")
        return True

    def close(self) -> None:
        if self._buf is not None:
            ffi.release(self._buf)
            self._buf = None
            self._mm.close()


class _ReadBuffers:
    """The reader's output arrays (1 MiB for the backends), allocated once per process."""

    hdr: Any = None
    vips: Any = None
    backends: Any = None

    @classmethod
    def get(cls) -> type[_ReadBuffers]:
        if cls.hdr is None:
            cls.hdr = ffi.new("struct mg_obs_page_hdr *")
            cls.vips = ffi.new("struct mg_dp_counter[]", MAX_VIPS)
            cls.backends = ffi.new("struct mg_dp_counter[]", MAX_BACKENDS)
        return cls


def read_worker_page(run_dir: str | os.PathLike, worker: int, tries: int = 64) -> dict[str, Any] | None:
    """A whole copy of worker ``worker``'s page, or None (no page yet, unreadable, or
    still torn after ``tries`` attempts)."""
    try:
        fd = os.open(page_path(run_dir, worker), os.O_RDONLY)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size < PAGE_BYTES:
            return None
        mm = mmap.mmap(fd, PAGE_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    b = _ReadBuffers.get()
    try:
        with ffi.from_buffer("uint8_t[]", mm) as page:
            rc = lib.mg_obs_page_read(page, PAGE_BYTES, b.hdr, b.vips, b.backends, tries)
    finally:
        mm.close()
    if rc < 0:
        return None
    h = b.hdr
    return {
        "age_s": max(0.0, (time.monotonic_ns() - int(h.mono_ns)) / 1e9),
        "generation": int(h.generation),
        "tables_generation": int(h.tables_generation),
        "conntrack": {f: int(getattr(h.ct, f)) for f in CT_FIELDS},
        "fragments": {f: int(getattr(h.frag, f)) for f in FRAG_FIELDS},
        "vip_counters": [(int(c.packets), int(c.bytes)) for c in b.vips[0:int(h.n_vips)]],
        "backend_counters": [(int(c.packets), int(c.bytes)) for c in b.backends[0:int(h.n_backends)]],
    }
