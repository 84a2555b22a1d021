"""The steering actor (paper 3.2): NIC receive into free frames, flow hash, rx rings.

Every frame it touches moves through its journalled hand (``mg_steer.c``), so a killed
steering process is replaced without losing a frame.  One loop turn is four C calls
(reclaim, take, the NIC's ``rx_burst``, dispatch) for up to ``burst`` packets.  Back
pressure: when every candidate rx ring is full, the packets stay in the hand and no new
frames are taken until they are placed -- the right thing for a capture or a generator
(nothing is lost); a NIC ring simply fills up meanwhile, as a real NIC's does.

At the end of a finite input (capture, ``packets=``/``seconds=`` generator) steering
tells the supervisor ``eof`` once its hand and every rx ring are empty; the supervisor's
ordered stop then lets workers and muxer drain.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from maglev.actors.base import Actor
from maglev.actors.pipeline import load_config, open_region
from maglev.native import check, ffi, lib
from maglev.nic import open_rx, parse_nic

log = logging.getLogger("maglev.steering")

# Stats words (after the MG_SS_* ones the C glue writes) for records a capture NIC could
# not turn into frames: they count as received and dropped with these reasons.
SS_NIC_DROPS = {"unsupported_linktype": 16, "frame_overflow": 17}


class Steering(Actor):
    kind = "steering"

    def setup(self) -> None:
        from maglev.nic.gen import vip_targets
        from maglev.rings import BELL_STEERING, SLOT_STEERING

        p = self.params
        self.region = open_region(p["region"])
        self.base = self.region.base
        self.pool = self.region.pool_ptr
        self.slot = SLOT_STEERING
        cfg = load_config(p.get("config", ""))
        k0, k1 = cfg.flow_hash_key
        self.st = ffi.new("struct mg_steer *")
        check(lib.mg_steer_init(self.st, self.base, self.slot, k0, k1), "steering init")
        self.stats_block = self.region.stats(self.slot)
        self._nic_drop_base = {w: int(self.stats_block[w]) for w in SS_NIC_DROPS.values()}
        recovered = self._recover()
        self.burst = int(p.get("burst", 256))
        self.nic = open_rx(parse_nic(p["nic"]), vips=vip_targets(cfg), seed=int(p.get("seed", 1)))
        if self.spec.incarnation and hasattr(self.nic, "skip"):
            # A capture replay continues after what the dead steering read (dispatched,
            # dropped by the NIC, or recovered from its hand), instead of sending the
            # start of the file again.
            s = self.stats_block
            done = int(s[lib.MG_SS_RX_PACKETS]) + sum(int(s[w]) for w in SS_NIC_DROPS.values())
            self.nic.skip(done + recovered)
        self.bell = self.region.bell(BELL_STEERING)
        from maglev.telemetry.tracer import SteeringTracer, steering_sample_rate

        self.tracer = SteeringTracer(self.region, steering_sample_rate(cfg), self.spec.instance, self.spec.run_dir)
        self.n_workers = self.region.n_workers
        self._cnt = ffi.new("uint32_t *")
        self.eof_sent = False
        self.draining = False
        # A first start waits for the supervisor's "go" (every worker attached), so the
        # rx rings do not fill while workers are still starting; a restart goes at once.
        self.going = self.spec.incarnation > 0 or not p.get("wait_go", True)

    def handle(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "go":
            self.going = True

    def _recover(self) -> int:
        """Take over from a dead predecessor (a no-op on a first start): settle its hand,
        own the rings' producer/consumer sides, send what it held back to the free list.
        Packets it had received but not placed are dropped (at-most-once)."""
        r = self.region
        held = r.hand(self.slot).recover()
        for i in range(r.n_workers):
            r.rx(i).reset_producer()
            r.ret(i).reset_consumer()
        r.sent.reset_consumer()
        r.free.reset_producer()
        r.free.reset_consumer()
        if held:
            left = check(lib.mg_steer_dispatch(self.st, self.base, 0, 0), "steering recover")
            if left:
                raise RuntimeError(f"steering recovery left {left} frames in the hand")
            self.stats_block[lib.MG_SS_RECOVERED] += len(held)
            log.warning("recovered frames from a dead steering", extra={"kv": {"frames": len(held)}})
        return len(held)

    def step(self) -> int:
        base, st = self.base, self.st
        check(lib.mg_steer_reclaim(st, base), "steering reclaim")
        holding = check(lib.mg_hand_count(base, self.slot), "hand count")
        if holding:
            left = check(lib.mg_steer_dispatch(st, base, holding, 0), "steering dispatch")
            return holding - left
        if self.draining or self.nic.eof:
            self._maybe_eof()
            return 0
        if not self.going:
            return 0
        n = check(lib.mg_steer_take(st, base, self.burst), "steering take")
        if n == 0:
            return 0
        descs = lib.mg_hand_descs(base, self.slot, self._cnt)
        try:
            k = self.nic.rx_burst(self.pool, descs, n)
        except Exception:
            # Give the frames back before failing: the pool must stay whole.
            lib.mg_steer_dispatch(st, base, 0, 0)
            raise
        check(lib.mg_steer_dispatch(st, base, k, 1), "steering dispatch")
        return k

    def _poll_mailbox_now(self) -> None:
        if self.mailbox is not None:
            self._poll_mailbox()

    def tick(self, now: float) -> None:
        self._sync_nic_drops()
        self.tracer.tick(now)  # packet tracer: collected records -> spans
        super().tick(now)

    def _sync_nic_drops(self) -> None:
        drops = getattr(getattr(self, "nic", None), "drops", None)
        if drops:
            for reason, word in SS_NIC_DROPS.items():
                self.stats_block[word] = self._nic_drop_base[word] + drops.get(reason, 0)

    def _maybe_eof(self) -> None:
        if self.eof_sent or not self.nic.eof:
            return
        self._sync_nic_drops()
        if any(self.region.rx(i).count() for i in range(self.n_workers)):
            return
        self.eof_sent = True
        self.send("eof", stats=self.stats())

    def wait(self, timeout_s: float) -> None:
        if not self.going:  # waiting for "go": sleep on the mailbox, not the rings
            super().wait(timeout_s)
            self._poll_mailbox_now()
            return
        if not self.nic.eof and not self.draining and self.nic.kind == "afpacket":
            self.nic.wait(timeout_s)
        else:
            self.bell.wait(int(timeout_s * 1000))

    def drain(self) -> None:
        """Stop receiving; place what is in the hand; wait (bounded) until every frame the
        workers and muxer will hand back is home."""
        self.draining = True
        deadline = time.monotonic() + float(self.params.get("drain_s", 2.0))
        free = self.region.free
        n_frames = self.region.n_frames
        while time.monotonic() < deadline:
            self.step()
            if free.count() >= n_frames:
                break
            self.bell.wait(20)

    def teardown(self) -> None:
        nic = getattr(self, "nic", None)
        if nic is not None:
            self._sync_nic_drops()
            nic.close()

    def stats(self) -> dict[str, Any]:
        s = getattr(self, "stats_block", None)
        if s is None:
            return {}
        out = {
            "rx_packets": int(s[lib.MG_SS_RX_PACKETS]),
            "rx_bytes": int(s[lib.MG_SS_RX_BYTES]),
            "dispatched": int(s[lib.MG_SS_DISPATCHED]),
            "fallback": int(s[lib.MG_SS_FALLBACK]),
            "backpressure": int(s[lib.MG_SS_BACKPRESSURE]),
            "unparsed": int(s[lib.MG_SS_UNPARSED]),
            "fragments": int(s[lib.MG_SS_FRAGMENTS]),
            "recovered": int(s[lib.MG_SS_RECOVERED]),
            "eof": bool(getattr(self, "nic", None) is not None and self.nic.eof),
        }
        nic = getattr(self, "nic", None)
        if nic is not None:
            out["nic"] = nic.stats()
        return out
