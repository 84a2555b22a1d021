"""Stateful model test of the hand journal: the C hand (in a real region, with fault
injection standing in for the owner's death at each step) against ``HandModel``.

After every step: same hand, same settled view, same ring indices, counters and
contents, and every frame of the pool in exactly one place (``Region.account``).
"Another actor" may keep using its own side of the rings while the owner is dead, but
(the protocol in docs/rings.md) not consume the dead owner's input ring nor produce
into its output rings before recovery.  MG_HAND_EXAMPLES=600 for a longer search."""

from __future__ import annotations

import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from maglev.errors import NativeError
from maglev.native import ffi, lib
from maglev.rings import HAND_KEEP, SLOT_STEERING, Region
from maglev.rings.reference import OP_PULL, OP_PUSH, Fault, HandError, HandModel, RingModel
from maglev.testing import unique


class HandMachine(RuleBasedStateMachine):
    region: Region | None = None

    @initialize()
    def setup(self):
        self.region = Region.create(
            unique.name("test-hand-"), 2, n_frames=12, ring_size=4,
            tables_bytes=0,
        )
        self.rings = {}
        self.models = {}
        for ring in self.region.all_rings():
            m = RingModel(ring.size)
            snap = ring.snapshot()
            for i, d in enumerate(snap):
                m.write(i, d)
            m.prod = m.p_head = len(snap)
            self.rings[ring.id] = ring
            self.models[ring.id] = m
        self.ids = sorted(self.rings)
        self.hand = self.region.hand(SLOT_STEERING)
        self.model = HandModel(self.models)
        self.held: list[int] = []  # frames the test itself holds
        self.buf = ffi.new("uint64_t[]", 16)

    def teardown(self):
        lib.mg_hand_fault_at = 0
        if self.region is not None:
            self.region.close()
            self.region.unlink()

    def _both(self, c_call, m_call):
        """Run the C and the model operation; they must agree on result or error."""
        c_res = c_err = m_res = m_err = None
        try:
            c_res = c_call()
        except NativeError as exc:
            c_err = exc.errno
        finally:
            lib.mg_hand_fault_at = 0
        try:
            m_res = m_call()
        except HandError as exc:
            m_err = exc.errno
        except Fault:
            m_err = 4  # EINTR, what the C code returns at a fault-injection step
        assert (c_res, c_err) == (m_res, m_err)

    @rule(data=st.data(), max_n=st.integers(0, 8), fault=st.sampled_from([0, 0, 0, 1, 2]))
    def pull(self, data, max_n, fault):
        rid = data.draw(st.sampled_from(self.ids))
        lib.mg_hand_fault_at = fault
        self._both(lambda: self.hand.pull(self.rings[rid], max_n),
                   lambda: self.model.pull(rid, max_n, fault))

    @rule(data=st.data(), fault=st.sampled_from([0, 0, 0, 11, 12, 13]))
    def push(self, data, fault):
        n = len(self.model.descs())
        choices = [*self.ids, HAND_KEEP, HAND_KEEP]
        dest = data.draw(st.lists(st.sampled_from(choices), min_size=n, max_size=n))
        if data.draw(st.integers(0, 9)) == 0:  # now and then a bad call
            dest = data.draw(st.sampled_from([dest + [HAND_KEEP], [len(self.ids) + 3] * n]))
        lib.mg_hand_fault_at = fault
        self._both(lambda: self.hand.push(dest), lambda: self.model.push(dest, fault))

    @rule(data=st.data(), fault=st.sampled_from([0, 0, 0, 11, 12, 13]))
    def push_to_one_ring(self, data, fault):
        """Every entry to one ring: mg_hand_push's fast path (block copies), which must
        write the same journal and leave the same state as the general path."""
        n = len(self.model.descs())
        dest = [data.draw(st.sampled_from(self.ids))] * n
        lib.mg_hand_fault_at = fault
        self._both(lambda: self.hand.push(dest), lambda: self.model.push(dest, fault))

    @rule()
    def owner_replaced(self):
        """The owner died: its replacement recovers the hand and takes over every ring."""
        assert self.hand.recover() == self.model.recover()
        for rid in self.ids:
            self.rings[rid].reset_producer()
            self.rings[rid].reset_consumer()
            self.models[rid].reset_producer()
            self.models[rid].reset_consumer()

    @rule(data=st.data(), n=st.integers(0, 6))
    def another_actor_consumes(self, data, n):
        rid = data.draw(st.sampled_from(self.ids))
        if self.model.op == OP_PULL and rid == self.model.pull_ring:
            return  # the protocol: nobody consumes a dead owner's input ring before recovery
        k = self.rings[rid].dequeue(self.buf, n)
        got = ffi.unpack(self.buf, k)
        assert got == self.models[rid].dequeue(n)
        self.held += got

    @rule(data=st.data(), n=st.integers(0, 6))
    def another_actor_produces(self, data, n):
        rid = data.draw(st.sampled_from(self.ids))
        if self.model.op == OP_PUSH and rid in self.model.commit:
            return  # ... nor produces into its output rings (consuming them is fine)
        descs = self.held[:n]
        k = self.rings[rid].enqueue(descs, len(descs))
        assert k == self.models[rid].enqueue(descs)
        self.held = self.held[k:]

    @invariant()
    def same_state_and_pool_whole(self):
        if self.region is None:
            return
        assert self.hand.descs() == self.model.descs()
        out = ffi.new("uint64_t[]", 512)
        n = lib.mg_hand_settled(self.region.base, SLOT_STEERING, out, 512)
        assert ffi.unpack(out, n) == self.model.settled()
        for rid in self.ids:
            r, m = self.rings[rid].ptr, self.models[rid]
            assert (r.prod, r.cons, r.p_head, r.c_head) == (m.prod, m.cons, m.p_head, m.c_head)
            assert (r.p_full, r.c_empty) == (m.p_full, m.c_empty)
            assert self.rings[rid].snapshot() == m.snapshot()
        rep = self.region.account({"test": self.held})
        assert rep.ok, str(rep)


HandMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("MG_HAND_EXAMPLES", "60")), stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHandModel = HandMachine.TestCase
