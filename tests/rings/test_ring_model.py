"""Stateful model test: the C ring (in a real region) against the pure-Python reference.

Every rule applies the same operation to both and compares the answers; the invariant
compares every observable (fill level, free slots, contents, counters).  The indices
start near 2**32 so the free-running wrap-around is crossed in most runs.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from maglev.errors import NativeError
from maglev.native import ffi
from maglev.rings import Region
from maglev.rings.reference import RingModel
from maglev.testing import unique

U64 = st.integers(0, 2**64 - 1)


class RingMachine(RuleBasedStateMachine):
    region: Region | None = None

    @initialize(size_log=st.integers(1, 4), start=st.integers(2**32 - 40, 2**32 - 1) | st.just(0))
    def setup(self, size_log, start):
        size = 1 << size_log
        self.region = Region.create(
            unique.name("test-model-"), 1, n_frames=8,
            ring_size=size, tables_bytes=0,
        )
        self.ring = self.region.rx(0)
        r = self.ring.ptr
        r.prod = r.cons = r.p_head = r.c_head = r.p_cached_cons = r.c_cached_prod = start
        self.model = RingModel(size, start)
        self.buf = ffi.new("uint64_t[]", size + 4)

    def teardown(self):
        if self.region is not None:
            self.region.close()
            self.region.unlink()

    @rule(descs=st.lists(U64, max_size=20))
    def enqueue(self, descs):
        assert self.ring.enqueue(descs, len(descs)) == self.model.enqueue(descs)

    @rule(n=st.integers(0, 20))
    def dequeue(self, n):
        n = min(n, self.model.size + 4)
        k = self.ring.dequeue(self.buf, n)
        assert ffi.unpack(self.buf, k) == self.model.dequeue(n)

    @rule(n=st.integers(0, 20))
    def reserve(self, n):
        assert self.ring.reserve(n) == self.model.reserve(n)[0]

    @rule(data=st.data())
    def submit(self, data):
        outstanding = (self.model.p_head - self.model.prod) & 0xFFFFFFFF
        m = data.draw(st.integers(0, outstanding + 2))
        descs = data.draw(st.lists(U64, min_size=m, max_size=m))
        if m > outstanding:
            with pytest.raises(NativeError):
                self.ring.submit(descs, m)
            with pytest.raises(ValueError):
                self.model.fill_submit(descs)
        else:
            self.ring.submit(descs, m)
            self.model.fill_submit(descs)

    @rule(n=st.integers(0, 20))
    def peek(self, n):
        n = min(n, self.model.size + 4)
        k = self.ring.peek(self.buf, n)
        assert ffi.unpack(self.buf, k) == self.model.peek_copy(n)

    @rule(data=st.data())
    def release(self, data):
        outstanding = (self.model.c_head - self.model.cons) & 0xFFFFFFFF
        m = data.draw(st.integers(0, outstanding + 2))
        if m > outstanding:
            with pytest.raises(NativeError):
                self.ring.release(m)
            with pytest.raises(ValueError):
                self.model.release(m)
        else:
            self.ring.release(m)
            self.model.release(m)

    @precondition(lambda self: self.model.p_head != self.model.prod)
    @rule()
    def producer_dies_and_is_replaced(self):
        self.ring.reset_producer()
        self.model.reset_producer()

    @precondition(lambda self: self.model.c_head != self.model.cons)
    @rule()
    def consumer_dies_and_is_replaced(self):
        self.ring.reset_consumer()
        self.model.reset_consumer()

    @invariant()
    def same_observables(self):
        if self.region is None:
            return
        r = self.ring.ptr
        m = self.model
        assert self.ring.count() == m.count()
        assert self.ring.free_count() == m.free_count()
        assert self.ring.snapshot() == m.snapshot()
        assert (r.prod, r.cons, r.p_head, r.c_head) == (m.prod, m.cons, m.p_head, m.c_head)
        assert (r.p_full, r.c_empty) == (m.p_full, m.c_empty)
        assert 0 <= m.count() <= m.size


RingMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRingModel = RingMachine.TestCase
