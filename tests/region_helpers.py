"""A scratch shared-memory region for a test: created under a random name, removed
(closed and unlinked) when the test is done, also when it fails."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from maglev.rings import Region
from maglev.testing import unique


@contextlib.contextmanager
def scratch_region(prefix: str, n_workers: int, n_frames: int, ring_size: int, tables_bytes: int = 1 << 20,
                   blob: bytes | None = None) -> Iterator[Region]:
    """``Region.create(prefix-XXXXXXXX, ...)``; with ``blob``, its tables are published first
    (and the tables area is made big enough for two copies of it)."""
    if blob is not None:
        tables_bytes = max(tables_bytes, 2 * len(blob))
    r = Region.create(unique.name(f"{prefix}-"), n_workers, n_frames, ring_size, tables_bytes)
    try:
        if blob is not None:
            r.tables.publish(blob, [], 1.0)
        yield r
    finally:
        r.close()
        r.unlink()
