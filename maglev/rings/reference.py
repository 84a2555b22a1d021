"""Pure-Python reference of the SPSC ring in ``maglev/_cffi_src/include/mg_ring.h``.

Same verbs, same results, same counters, no shared memory and no speed tricks: the
readable statement of what the C ring does, used by the stateful model test
(tests/rings/test_ring_model.py) and for debugging.  Indices are free-running 32-bit
integers, so a model started near 2**32 exercises the wrap-around like the C ring.

``reserve``/``peek`` grant up to ``n`` (0 when full/empty); ``submit``/``release`` act on
the oldest reserved/peeked slots.  The C ring keeps cached copies of the other side's
index; they change *when* the other side's line is read, never the answer, so the model
reads the true index every time.
"""

from __future__ import annotations

from collections.abc import Sequence

U32 = 0xFFFFFFFF


class RingModel:
    def __init__(self, size: int, start: int = 0):
        if size < 2 or size & (size - 1):
            raise ValueError(f"ring size {size} must be a power of two >= 2")
        self.size = size
        self.mask = size - 1
        self.slots = [0] * size
        # shared indices
        self.prod = start & U32
        self.cons = start & U32
        # private: next slot to reserve / to peek
        self.p_head = self.prod
        self.c_head = self.cons
        self.p_full = 0
        self.c_empty = 0

    # -- producer -------------------------------------------------------------------
    def reserve(self, n: int) -> tuple[int, int]:
        room = self.size - ((self.p_head - self.cons) & U32)
        k = min(n, room)
        if k < n:
            self.p_full += 1
        idx = self.p_head
        self.p_head = (self.p_head + k) & U32
        return k, idx

    def write(self, idx: int, desc: int) -> None:
        self.slots[idx & self.mask] = desc

    def submit(self, n: int) -> None:
        if n > (self.p_head - self.prod) & U32:
            raise ValueError(f"submit {n}: only {(self.p_head - self.prod) & U32} reserved")
        self.prod = (self.prod + n) & U32

    def fill_submit(self, descs: Sequence[int]) -> None:
        """Write ``descs`` into the oldest reserved slots and submit them."""
        if len(descs) > (self.p_head - self.prod) & U32:
            raise ValueError(f"submit {len(descs)}: only {(self.p_head - self.prod) & U32} reserved")
        for i, d in enumerate(descs):
            self.write(self.prod + i, d)
        self.submit(len(descs))

    def enqueue(self, descs: Sequence[int]) -> int:
        if self.p_head != self.prod:
            return 0  # as the C ring: no shortcut while reservations are outstanding
        k, idx = self.reserve(len(descs))
        for i in range(k):
            self.write(idx + i, descs[i])
        if k:
            self.submit(k)
        return k

    def free_count(self) -> int:
        return self.size - ((self.p_head - self.cons) & U32)

    # -- consumer -------------------------------------------------------------------
    def peek(self, n: int) -> tuple[int, int]:
        avail = (self.prod - self.c_head) & U32
        k = min(n, avail)
        if n > 0 and k == 0:
            self.c_empty += 1
        idx = self.c_head
        self.c_head = (self.c_head + k) & U32
        return k, idx

    def read(self, idx: int) -> int:
        return self.slots[idx & self.mask]

    def release(self, n: int) -> None:
        if n > (self.c_head - self.cons) & U32:
            raise ValueError(f"release {n}: only {(self.c_head - self.cons) & U32} peeked")
        self.cons = (self.cons + n) & U32

    def peek_copy(self, n: int) -> list[int]:
        k, idx = self.peek(n)
        return [self.read(idx + i) for i in range(k)]

    def dequeue(self, n: int) -> list[int]:
        if self.c_head != self.cons:
            return []  # as the C ring: no copy-and-release while peeks are outstanding
        out = self.peek_copy(n)
        if out:
            self.release(len(out))
        return out

    # -- anyone ---------------------------------------------------------------------
    def count(self) -> int:
        return (self.prod - self.cons) & U32

    def snapshot(self) -> list[int]:
        return [self.read(self.cons + i) for i in range(self.count())]

    def reset_producer(self) -> None:
        self.p_head = self.prod

    def reset_consumer(self) -> None:
        self.c_head = self.cons
