"""How the config manager hands tables to the workers: the ``TablePublisher`` protocol.

The real publisher is the shared-memory table area of ``maglev.rings`` (double-buffered,
quiescent-state reclamation: docs/rings.md, "Table publication").  The config manager
needs two verbs from it -- publish a blob and learn its generation, then wait until every
live worker has reported that generation -- and nothing else, so tests and benchmarks can
substitute :class:`ThreadedPublisher`, an in-process model with one thread per simulated
worker that switches when it "starts a burst".

:class:`RegionPublisher` adapts the rings developer's region object
(``region.tables.publish(blob, live_workers, timeout)`` and
``region.tables.wait_all_seen(generation, live_workers, timeout)``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TablePublisher(Protocol):
    def publish(self, blob: bytes) -> int:
        """Make ``blob`` the active tables; return its generation.  Raises on failure, in
        which case the previous tables stay active."""
        ...

    def wait_all_seen(self, generation: int, timeout: float) -> bool:
        """True once every live worker runs ``generation`` (or newer); False on timeout."""
        ...


# Optional, besides the protocol (looked up with getattr): ``capacity`` -- the largest blob
# it can publish (None: no limit), and ``prepare(size)`` -- everything of a publication of
# ``size`` bytes that can fail, done before the config manager persists the change
# (raises like publish; changes nothing the workers see).


class RegionPublisher:
    """The shared-memory publisher of a running forwarder (maglev.rings)."""

    def __init__(self, region: Any, live_workers: Callable[[], Sequence[int]], publish_timeout: float = 2.0):
        self.region = region
        self.live_workers = live_workers
        self.publish_timeout = publish_timeout

    @property
    def capacity(self) -> int:
        return int(self.region.tables.capacity)

    # The waits below look at the set of live workers again every SLICE_S: a worker the
    # supervisor declares dead meanwhile (``actor_down``, handled by the config-manager
    # actor while the request runs) stops holding the change up at once.  Before, the set
    # was read once: a change arriving while a hung worker was being killed and restarted
    # waited out the whole timeout and failed (``publish-failed``) though the dead worker
    # no longer mattered.
    SLICE_S = 0.05

    def prepare(self, size: int) -> None:
        from maglev.rings import TablesBusyError

        deadline = time.monotonic() + self.publish_timeout
        while True:
            left = deadline - time.monotonic()
            try:
                self.region.tables.prepare(size, list(self.live_workers()), max(0.0, min(self.SLICE_S, left)))
                return
            except TablesBusyError:
                if left <= self.SLICE_S:
                    raise

    def publish(self, blob: bytes) -> int:
        # Workers report their switch as a child of the current span (the config manager's
        # publish span): its context goes next to the generation *before* they can see it.
        from maglev.telemetry.spans import store_generation_context

        self.prepare(len(blob))  # at once after the config manager's own prepare()
        store_generation_context(self.region, self.region.tables.generation() + 1)
        return int(self.region.tables.publish(blob, list(self.live_workers()), self.publish_timeout))

    def wait_all_seen(self, generation: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            r = self.region.tables.wait_all_seen(generation, list(self.live_workers()),
                                                 max(0.0, min(self.SLICE_S, left)))
            # The region returns a bool or None; a timeout there may also raise TimeoutError.
            if r is None or bool(r):
                return True
            if left <= self.SLICE_S:
                return False


class ThreadedPublisher:
    """An in-process model of the shared-memory publisher: ``workers`` threads wake on each
    publish, wait ``lag_s`` (the rest of a burst) and report the generation they saw.
    ``stall(i)`` freezes worker i to test timeouts.  Close it when done."""

    def __init__(self, workers: int = 2, lag_s: float = 0.0, capacity: int | None = None):
        self.capacity = capacity  # the largest blob it takes (None: any), like a region's area
        self.blob = b""
        self.generation = 0
        self.seen = [0] * workers
        self.history: list[tuple[int, bytes]] = []
        self.fail_next: BaseException | None = None
        self._stalled: set[int] = set()
        self._cv = threading.Condition()
        self._stop = False
        self._lag_s = lag_s
        self._threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def _worker(self, i: int) -> None:
        with self._cv:
            while not self._stop:
                if i not in self._stalled and self.seen[i] != self.generation:
                    gen = self.generation
                    if self._lag_s:
                        self._cv.release()
                        time.sleep(self._lag_s)
                        self._cv.acquire()
                    self.seen[i] = gen
                    self._cv.notify_all()
                    continue
                self._cv.wait()

    def publish(self, blob: bytes) -> int:
        with self._cv:
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            if self.capacity is not None and len(blob) > self.capacity:
                raise ValueError(f"table blob of {len(blob)} bytes exceeds the capacity {self.capacity}")
            self.generation += 1
            self.blob = bytes(blob)
            self.history.append((self.generation, self.blob))
            self._cv.notify_all()
            return self.generation

    def wait_all_seen(self, generation: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while any(s < generation for s in self.seen):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def stall(self, worker: int, stalled: bool = True) -> None:
        with self._cv:
            (self._stalled.add if stalled else self._stalled.discard)(worker)
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=2)

    def __enter__(self) -> ThreadedPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
