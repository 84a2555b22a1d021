"""Hold actor slots' life locks from a thread: a worker that lives and dies, in-process.

A worker process takes its slot's life lock (``mg_slot_claim``, mg_shm.h) once it has
adopted its rings; when it dies holding it the kernel marks the lock owner-dead and
steering treats the worker as dead (its full ring's packets are dropped, never moved)
until a replacement claims the slot.  :class:`SlotHolder` plays that worker from a thread
(:meth:`SlotHolder.die` ends the thread holding the locks, as a kill does), so a test can
check the rule without processes.  The locks are held
by a thread of their own, given back and the thread joined before the region is unmapped
(glibc threads a thread's robust mutexes on a list through the mutexes themselves).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from maglev.native import lib


class SlotHolder:
    """A thread holding the life locks of ``slots``; :meth:`die` ends it without giving
    them back (the kernel marks them owner-dead, as for a killed process)."""

    def __init__(self, base: Any, slots: Iterable[int]):
        self.base, self.slots = base, list(slots)
        self._ready, self._go = threading.Event(), threading.Event()
        self._release = True
        self.error = ""
        self._t = threading.Thread(target=self._run, name="slot-holder", daemon=True)
        self._t.start()
        self._ready.wait(10)
        if self.error:
            raise OSError(self.error)

    def _run(self) -> None:
        for s in self.slots:
            rc = int(lib.mg_slot_claim(self.base, s))
            if rc:
                self.error = f"slot {s}: {os.strerror(-rc)}"
        self._ready.set()
        self._go.wait()
        if self._release:
            for s in reversed(self.slots):
                lib.mg_slot_release(self.base, s)

    def release(self) -> None:
        self._go.set()
        self._t.join(10)

    def die(self) -> None:
        """End the thread holding the locks; return once every lock reads owner-dead.
        ``join`` returns when the Python thread is done, a moment before the OS thread
        exits and its robust list is walked (1 run in 12 read the lock still held)."""
        self._release = False
        self.release()
        deadline = time.monotonic() + 10
        while not all(lib.mg_slot_dead(self.base, s) == 1 for s in self.slots):
            if time.monotonic() > deadline:
                raise TimeoutError(f"slots {self.slots}: not owner-dead 10 s after their holder ended")
            time.sleep(0.001)


@contextmanager
def serving(region: Any, slots: Iterable[int]) -> Iterator[SlotHolder]:
    """Hold ``slots`` of ``region`` (a :class:`maglev.rings.Region`) for the block."""
    h = SlotHolder(region.base, slots)
    try:
        yield h
    finally:
        h.release()
