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

import errno
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


# ---------------------------------------------------------------------------------------
# Hand journal (maglev/_cffi_src/include/mg_hand.h), over RingModel objects.

HAND_MAX = 512
HAND_KEEP = 0xFFFF
OP_NONE, OP_PULL, OP_PUSH = 0, 1, 2


class HandError(Exception):
    """The C hand's -errno, as the model reports it (``errno`` attribute)."""

    def __init__(self, errno_: int):
        super().__init__(errno_)
        self.errno = errno_


class Fault(Exception):
    """The move stopped at a fault-injection step (the C code returns -EINTR)."""


class HandModel:
    """One actor's hand: two buffers, a state (active buffer, op in flight), a pull record
    and a push journal.  ``rings`` maps ring id -> RingModel.  ``fault`` = the step at
    which to stop, like ``mg_hand_fault_at`` (1, 2: pull; 11, 12, 13: push)."""

    def __init__(self, rings: dict[int, RingModel]):
        self.rings = rings
        self.bufs: list[list[int]] = [[], []]
        self.active = 0
        self.op = OP_NONE
        self.pull_ring = self.pull_commit = self.pull_from = 0
        self.dest: list[int] = []
        self.commit: dict[int, int] = {}

    def descs(self) -> list[int]:
        return list(self.bufs[self.active])

    def pull(self, ring_id: int, max_n: int, fault: int = 0) -> int:
        r = self.rings.get(ring_id)
        if r is None:
            raise HandError(errno.EINVAL)
        if self.op != OP_NONE or r.c_head != r.cons:
            raise HandError(errno.EBUSY)
        have = self.bufs[self.active]
        k, idx = r.peek(min(max_n, HAND_MAX - len(have)))
        if k == 0:
            return 0
        b = self.active ^ 1
        self.bufs[b] = have + [r.read(idx + i) for i in range(k)]
        self.pull_ring, self.pull_from, self.pull_commit = ring_id, len(have), (r.cons + k) & U32
        self.active, self.op = b, OP_PULL
        if fault == 1:
            raise Fault(1)
        r.release(k)
        if fault == 2:
            raise Fault(2)
        self.op = OP_NONE
        return k

    def push(self, dest: Sequence[int], fault: int = 0) -> int:
        if self.op != OP_NONE:
            raise HandError(errno.EBUSY)
        a = self.active
        hand = self.bufs[a]
        if len(dest) != len(hand) or any(d != HAND_KEEP and d not in self.rings for d in dest):
            raise HandError(errno.EINVAL)
        order = list(dict.fromkeys(d for d in dest if d != HAND_KEEP))  # first appearance
        want = {d: sum(1 for x in dest if x == d) for d in order}
        granted: dict[int, int] = {}
        commit: dict[int, int] = {}
        for d in order:
            r = self.rings[d]
            if r.p_head != r.prod:
                for e in granted:  # undo our reservations, refuse
                    self.rings[e].p_head = self.rings[e].prod
                raise HandError(errno.EBUSY)
            got, _ = r.reserve(want[d])
            granted[d] = got
            commit[d] = (r.prod + got) & U32
        left_in_ring = dict(granted)
        journal, leftovers, pushed = [], [], 0
        for d, desc in zip(dest, hand, strict=True):
            if d != HAND_KEEP and left_in_ring[d]:
                r = self.rings[d]
                r.write(commit[d] - left_in_ring[d], desc)
                left_in_ring[d] -= 1
                journal.append(d)
                pushed += 1
            else:
                journal.append(HAND_KEEP)
                leftovers.append(desc)
        self.bufs[a ^ 1] = leftovers
        self.dest, self.commit = journal, commit
        self.op = OP_PUSH
        if fault == 11:
            raise Fault(11)
        for d in order:
            if granted[d]:
                self.rings[d].submit(granted[d])
            if fault == 12:
                raise Fault(12)
        if fault == 13:
            raise Fault(13)
        self.active, self.op = a ^ 1, OP_NONE
        return pushed

    def settled(self) -> list[int]:
        """The frames in the hand once the move in flight is settled (no writes)."""
        hand = self.bufs[self.active]
        if self.op == OP_PULL:
            if self.rings[self.pull_ring].cons != self.pull_commit:
                return hand[: self.pull_from]  # the pulled frames are still in the ring
            return list(hand)
        if self.op == OP_PUSH:
            return [
                desc
                for d, desc in zip(self.dest, hand, strict=True)
                if d == HAND_KEEP or self.rings[d].prod != self.commit[d]
            ]
        return list(hand)

    def recover(self) -> list[int]:
        if self.op != OP_NONE:
            other = self.active ^ 1
            self.bufs[other] = self.settled()
            self.active, self.op = other, OP_NONE
        return self.descs()
