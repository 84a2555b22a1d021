"""The muxer actor: drains every worker's tx ring, transmits bursts, returns the frames.

One turn: ``mg_mux_collect`` (up to ``burst`` frames from the tx rings, round-robin start),
the NIC's ``tx_burst``, ``mg_mux_done`` (count, push every frame to the sent ring).  A
frame the NIC refuses is counted as a tx error and freed, never retried (at-most-once);
frames a killed muxer held are freed by its replacement the same way.

Waiting for room.  The sent ring is smaller than the pool, so when steering is slow to
reclaim (it shares the muxer's core) the muxer can hold a transmitted burst it cannot
hand back.  It must not spin then: its doorbell says "work" at once (the tx rings are
full of it), and a spinning muxer takes the very core steering needs to make room --
measured: 88 000 of 110 000 muxer turns were such spins in a 3 s W=1 run, the muxer
burning ~300 ns of CPU per packet instead of ~30.  So a turn that could not move
anything backs off for a fraction of a millisecond (the ring drains in ~0.1 ms once
steering runs) instead of waiting on the doorbell.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from maglev.actors.base import Actor
from maglev.native import check, ffi, lib
from maglev.nic import open_tx, parse_nic, parse_out

log = logging.getLogger("maglev.muxer")
LOOP_BUDGET_NS = 1_000_000  # longest C loop (mg_loop.h) between Python's housekeeping
# C loop returns after which the actor calls again without waiting (base.Actor.loop_deadlines)
BACK_AT_ONCE = (int(lib.MG_LOOP_BUDGET), int(lib.MG_LOOP_DEADLINE))


class Muxer(Actor):
    kind = "muxer"
    # Back-off when the sent ring had no room for a single frame (see the module doc).
    stall_sleep_s = 0.0002

    def setup(self) -> None:
        self.sched_setup()  # slice and real-time class (Actor.sched_setup, maglev/actors/sched.py)
        from maglev.rings import BELL_MUXER, SLOT_MUXER, Region

        p = self.params
        self.region = Region.attach(p["region"])
        self.base = self.region.base
        self.pool = self.region.pool_ptr
        self.slot = SLOT_MUXER
        self.mux = ffi.new("struct mg_mux *")
        check(lib.mg_mux_init(self.mux, self.base, self.slot), "muxer init")
        self.stats_block = self.region.stats(self.slot)
        self.region.set_slot_pid(self.slot)
        self._recover()
        from maglev.rings.stats import MS_NIC_COUNTERS, NicCounters

        self._nic_counters = NicCounters(self.stats_block, MS_NIC_COUNTERS)  # the NIC's link-down refusals
        self.burst = int(p.get("burst", 256))
        # Doorbell busy-poll rounds (0 when the CPU is shared: pipeline.doorbell_spin).
        self.spin = int(p.get("spin", lib.MG_BELL_SPIN_DEFAULT))
        self.nic = open_tx(parse_out(p.get("out") or None, parse_nic(p["nic"])), run_dir=self.spec.run_dir,
                           resume=self.spec.incarnation > 0)
        self.bell = self.region.bell(BELL_MUXER)
        self._cnt = ffi.new("uint32_t *")
        self._stalled = False
        # MAGLEV_NIC_LOOP=0 keeps the per-burst Python step for AF_PACKET/AF_XDP (measurements).
        self._nic_loop = os.environ.get("MAGLEV_NIC_LOOP", "1") != "0"

    def _recover(self) -> None:
        r = self.region
        held = r.hand(self.slot).recover()
        for i in range(r.n_workers):
            r.tx(i).reset_consumer()
        r.sent.reset_producer()
        if held:
            # Counted once (recovered; the forwarded ones it had not counted as sent or
            # failed also as lost: they may or may not have left), then back to steering.
            check(lib.mg_mux_recover(self.mux, self.base), "muxer recover")
            log.warning("freed frames a dead muxer held", extra={"kv": {"frames": len(held)}})

    _loop_ctl: Any = None

    def _step_loop(self) -> int:
        """The null sink takes everything: collect -> count -> sent in one C call for
        ~1 ms of bursts (``mg_mux_loop``, mg_loop.h)."""
        if self._loop_ctl is None:
            self._loop_ctl = ffi.new("struct mg_loop_ctl *", {"budget_ns": LOOP_BUDGET_NS, "burst": self.burst})
            self._loop_out = ffi.new("struct mg_loop_out *")
            self.init_idle(self._loop_ctl, int(lib.MG_BELL_MUXER))  # adaptive idle (mg_loop.h)
            self.init_sleep(self._loop_ctl, int(lib.MG_BELL_MUXER))  # sleeps in the loop
            if self.params.get("latency"):  # rx -> tx histogram in the stats block (benchmarks)
                self._loop_ctl.lat_hist = lib.mg_region_stats(self.base, self.slot) + lib.MG_MS_LAT0
        out = self._loop_out
        self.loop_deadlines(self._loop_ctl)
        check(lib.mg_mux_loop(self.mux, self.base, self._loop_ctl, out), "muxer loop")
        self.nic.packets += int(out.packets)
        self.nic.calls += int(out.bursts)
        self._stalled = out.reason == lib.MG_LOOP_STALL
        return int(out.packets) or int(out.reason in BACK_AT_ONCE)

    def _step_nic_loop(self, sink: Any) -> int:
        """AF_PACKET/AF_XDP: collect -> the NIC's tx -> done, many bursts in one C call
        (``mg_mux_loop_nic``)."""
        if self._loop_ctl is None:
            self._loop_ctl = ffi.new("struct mg_loop_ctl *", {"budget_ns": LOOP_BUDGET_NS, "burst": self.burst})
            self._loop_out = ffi.new("struct mg_loop_out *")
            self.init_idle(self._loop_ctl, int(lib.MG_BELL_MUXER))  # adaptive idle (mg_loop.h)
            self.init_sleep(self._loop_ctl, int(lib.MG_BELL_MUXER))  # sleeps in the loop
            if self.params.get("latency"):
                self._loop_ctl.lat_hist = lib.mg_region_stats(self.base, self.slot) + lib.MG_MS_LAT0
        out = self._loop_out
        self.loop_deadlines(self._loop_ctl)
        rc = lib.mg_mux_loop_nic(self.mux, self.base, sink.ptr, self._loop_ctl, out)
        if rc < 0 and hasattr(self.nic, "loop_error"):
            self.nic.loop_error(rc)  # AF_XDP: the frames were failed; fallback from now on
            return 1
        check(rc, "muxer loop")
        if hasattr(self.nic, "packets"):
            self.nic.packets += int(out.packets)
        self._stalled = out.reason == lib.MG_LOOP_STALL
        return int(out.packets) or int(out.reason in BACK_AT_ONCE)

    def step(self) -> int:
        if getattr(self.nic, "kind", "") == "null":
            return self._step_loop()
        get_sink = getattr(self.nic, "nic_loop_tx", None)
        if get_sink is not None and self._nic_loop:
            sink = get_sink()
            if sink is not None:
                return self._step_nic_loop(sink)
        base, mux = self.base, self.mux
        holding = check(lib.mg_hand_count(base, self.slot), "hand count")
        if holding:
            left = check(lib.mg_mux_done(mux, base, 0, 0), "muxer push")
            self._stalled = left == holding
            return holding - left
        n = check(lib.mg_mux_collect(mux, base, self.burst), "muxer collect")
        if n == 0:
            return 0
        descs = lib.mg_hand_descs(base, self.slot, self._cnt)
        try:
            sent = int(self.nic.tx_burst(self.pool, descs, n))
        except Exception:
            lib.mg_mux_done(mux, base, 0, n)  # free the frames before failing
            raise
        sent = max(0, min(sent, n))
        check(lib.mg_mux_done(mux, base, sent, n - sent), "muxer done")
        return n

    def tick(self, now: float) -> None:
        maintain = getattr(self.nic, "maintain", None)
        if maintain is not None:  # AF_XDP: let go of a dead steering's sockets (afxdp.py)
            maintain()
        self._nic_counters.sync(getattr(self, "nic", None), now)
        super().tick(now)

    def wait(self, timeout_s: float) -> None:
        if self._stalled:  # no room on sent: let steering run (module doc)
            self._stalled = False
            time.sleep(self.stall_sleep_s)
            return
        self.bell.wait(int(timeout_s * 1000), spin=self.spin)

    def drain(self) -> None:
        deadline = time.monotonic() + float(self.params.get("drain_s", 2.0))
        while time.monotonic() < deadline:
            if self.step() == 0:
                break

    def teardown(self) -> None:
        nic = getattr(self, "nic", None)
        if nic is not None:
            if getattr(self, "_nic_counters", None) is not None:
                self._nic_counters.sync(nic, time.monotonic(), force=True)
            nic.close()  # flushes a capture file

    def stats(self) -> dict[str, Any]:
        s = getattr(self, "stats_block", None)
        if s is None:
            return {}
        out = {
            "tx_packets": int(s[lib.MG_MS_TX_PACKETS]),
            "tx_errors": int(s[lib.MG_MS_TX_ERRORS]),
            "recovered": int(s[lib.MG_MS_RECOVERED]),
            "tx_errors_forwarded": int(s[lib.MG_MS_TX_ERRORS_FWD]),
            "lost_forwarded": int(s[lib.MG_MS_LOST_FWD]),
        }
        nic = getattr(self, "nic", None)
        if nic is not None:
            out["nic"] = nic.stats()
        return out
