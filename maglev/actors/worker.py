"""The packet worker actor: rx ring -> C burst kernel -> tx ring / ret ring.

All per-packet work is one C call per burst (``mg_worker_burst``: pull into the hand,
acquire the tables generation, ``mg_dp_burst``, push by verdict).  When its rx ring is
empty the worker reports itself quiescent to the table publisher (so a table update never
waits on an idle worker) and sleeps on its doorbell.

Restart semantics (``mg_worker.h``): a replacement takes over the same rings; frames the
dead worker held are returned to steering and counted as ``worker_restart`` drops
(at-most-once for in-flight packets); frames still on its rx ring are processed normally.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from maglev.actors.base import Actor
from maglev.native import check, ffi, lib
from maglev.rings import Region, worker_counters, worker_slot

log = logging.getLogger("maglev.worker")
LOOP_BUDGET_NS = 1_000_000  # longest C loop (mg_loop.h) between Python's housekeeping
# C loop returns after which the actor calls again without waiting (base.Actor.loop_deadlines)
BACK_AT_ONCE = (int(lib.MG_LOOP_BUDGET), int(lib.MG_LOOP_DEADLINE))


class Worker(Actor):
    caps_after_setup = ()  # rings and tables only: no socket of its own
    kind = "worker"

    def setup(self) -> None:
        self.sched_setup()  # slice and real-time class (Actor.sched_setup, maglev/actors/sched.py)
        from maglev.rings import worker_bell

        p = self.params
        self.index = int(p["index"])
        self.region = Region.attach(p["region"])
        self.base = self.region.base
        cfg = self.accepted_config()
        k0, k1 = cfg.flow_hash_key
        self.burst = int(p.get("burst", 256))
        # Doorbell busy-poll rounds (0 when the CPU is shared: pipeline.doorbell_spin).
        self.spin = int(p.get("spin", lib.MG_BELL_SPIN_DEFAULT))
        ctc = cfg.conntrack
        from maglev.datapath.ctmem import PAGE_MODES, check_memory, page_mode_name

        self.ct_file = open_shared_table(cfg, p.get("config", ""), self.index, self.region.n_workers,
                                         int(p.get("map_fp", 0))) \
            if ctc.shared else None
        if self.ct_file is not None:  # in /dev/shm: survives this process (conntrack_shm.py)
            w = lib.mg_worker_new_ct(self.base, self.index, self.ct_file.ct, k0, k1, self.burst,
                                     time.monotonic_ns())
        else:
            check_memory(ctc.capacity, ctc.huge_pages)  # a clear error before anything is allocated
            check(lib.mg_ct_set_default_pages(PAGE_MODES[ctc.huge_pages]), "conntrack page mode")
            w = lib.mg_worker_new(
                self.base, self.index, cfg.conntrack.capacity, k0, k1, self.burst, time.monotonic_ns()
            )
        if w == ffi.NULL:
            raise RuntimeError(f"worker {self.index}: cannot allocate the data path")
        self.w = ffi.gc(w, lib.mg_worker_free)
        ct = lib.mg_dp_conntrack(lib.mg_worker_dp(self.w))
        check(lib.mg_ct_set_policy(ct, ctc.protected_percent, ctc.new_flows_per_s), "conntrack policy")
        log.info("connection table ready", extra={"kv": {
            "entries": int(lib.mg_ct_capacity(ct)), "bytes": int(ct.map_bytes), "pages": page_mode_name(ct),
            "protected_percent": ctc.protected_percent, "new_flows_per_s": ctc.new_flows_per_s,
            "segment": self.ct_file.path if self.ct_file else "", "adopted_entries": int(ct.n_used)}})
        stats = self.region.stats(worker_slot(self.index))
        lost = int(stats[lib.MG_WS_RESTART_DROPS])
        recovered = check(lib.mg_worker_recover(self.w, self.base), "worker recover")
        if recovered:
            log.warning("took over the frames a dead predecessor held", extra={"kv": {
                "frames": recovered, "dropped": int(stats[lib.MG_WS_RESTART_DROPS]) - lost}})
        self.bell = self.region.bell(worker_bell(self.index))
        self.stats_block = self.region.stats(worker_slot(self.index))
        self.region.set_slot_pid(worker_slot(self.index))
        self.observe = WorkerObserver(self)  # metrics page + generation-switch spans

    def tick(self, now: float) -> None:
        super().tick(now)
        self.observe.tick(now)

    # Back-off when an output ring is full (retry soon, but without spinning: with more
    # workers than spare cores a spinning worker takes the core the muxer or steering
    # needs to make that room).
    stall_sleep_s = 0.0002
    _stalled = False

    _loop_ctl: Any = None
    _claimed = False

    def _claim_slot(self) -> None:
        """Take the slot's life lock (mg_shm.h) for the rest of this process's life, right
        before the first burst.  Until now steering knew the slot vacant (the predecessor
        died: the kernel marked its lock) and dropped, never moved, what the full ring could
        not hold; from now on the stall time is the only rule.  Claimed at the first burst,
        not when the ring was adopted: the set-up between the two (observer, telemetry, the
        actor's loop) would otherwise be a window in which a live worker does not consume
        its full ring and, with the stall rule off, steering moves its flows elsewhere."""
        self._claimed = True
        rc = int(lib.mg_slot_claim(self.base, worker_slot(self.index)))
        if rc:
            log.error("worker slot held by another live process", extra={"kv": {
                "slot": worker_slot(self.index), "error": os.strerror(-rc)}})

    def step(self) -> int:
        """Bursts until the rx ring is empty, an output ring is full or ~1 ms passed, in
        one C call (``mg_worker_loop``, mg_loop.h)."""
        if self._loop_ctl is None:
            self._loop_ctl = ffi.new("struct mg_loop_ctl *", {"budget_ns": LOOP_BUDGET_NS})
            self._loop_out = ffi.new("struct mg_loop_out *")
            from maglev.rings import worker_bell

            self.init_idle(self._loop_ctl, worker_bell(self.index))  # adaptive idle (mg_loop.h)
            self.init_sleep(self._loop_ctl, worker_bell(self.index))  # sleeps in the loop
        if not self._claimed:
            self._claim_slot()
        out, ctl = self._loop_out, self._loop_ctl
        self.loop_deadlines(ctl)
        check(lib.mg_worker_loop(self.w, self.base, ctl, out), "worker loop")
        if out.reason == lib.MG_LOOP_STALL:
            self._stalled = True  # output ring full: wait() backs off briefly
        # BUDGET, DEADLINE (slept in the call): housekeeping, then call again -- no wait()
        return int(out.packets) or int(out.reason in BACK_AT_ONCE)

    def wait(self, timeout_s: float) -> None:
        if self._stalled:
            self._stalled = False
            time.sleep(self.stall_sleep_s)
            return
        lib.mg_tables_quiesce(self.base, self.index)
        self.bell.wait(int(timeout_s * 1000), spin=self.spin)

    def drain(self) -> None:
        """Process what is on the rx ring, then release every held fragment (expired as of
        far in the future) and push everything out; bounded in time."""
        deadline = time.monotonic() + float(self.params.get("drain_s", 2.0))
        while time.monotonic() < deadline:
            rc = self.step()
            if rc == 0:
                break
        far = time.monotonic_ns() + 3600 * 10**9
        while time.monotonic() < deadline:
            left = check(lib.mg_worker_flush(self.w, self.base, far), "worker flush")
            if left == 0:
                break
            time.sleep(0.001)
        lib.mg_tables_quiesce(self.base, self.index)

    def stats(self) -> dict[str, Any]:
        s = getattr(self, "stats_block", None)
        return worker_counters(s.snapshot()) if s is not None else {}


def open_shared_table(cfg: Any, config_path: str, index: int, n_workers: int, map_fp: int = 0) -> Any:
    """This worker's connection table in /dev/shm (adopted or fresh; one log line says
    which and why), or None when another live process holds it (then a private table)."""
    from maglev.control.endpoints import state_dir
    from maglev.datapath.ctmem import check_memory
    from maglev.rings.conntrack_shm import (
        Wanted,
        identity_tag,
        key_fingerprint,
        open_table,
        record,
        segment_name,
    )

    name = cfg.instance.name
    sd = str(state_dir(name))
    seg = segment_name(name, identity_tag(sd, config_path), index)
    record(sd, seg)
    want = Wanted(cfg.conntrack.capacity, key_fingerprint(*cfg.flow_hash_key), n_workers, index, map_fp)
    if not os.path.exists(f"/dev/shm/{seg}"):
        check_memory(cfg.conntrack.capacity, "off")  # a clear error before anything is allocated
    return open_table(seg, want)


class WorkerObserver:
    """What a worker actor runs in its tick: publish its metrics page
    (:class:`maglev.rings.worker_page.WorkerPage`), report generation switches as spans
    (:class:`maglev.telemetry.spans.GenerationWatch`).  Never raises into the worker: an
    observability failure is logged once and the feature switched off."""

    def __init__(self, actor: Any):
        from maglev.rings.worker_page import WorkerPage

        self._log = logging.getLogger("maglev.telemetry")
        self.page: WorkerPage | None = None
        self.watch: Any = None
        try:
            self.page = WorkerPage(actor.region, actor.spec.run_dir, actor.index, actor.w)
        except OSError as exc:
            self._log.warning("worker metrics page unavailable: %s", exc)
        try:
            from maglev.telemetry.spans import GenerationWatch

            self.watch = GenerationWatch(actor.region, actor.index)
        except Exception as exc:  # tracing is optional for forwarding
            self._log.warning("generation-switch spans unavailable: %s", exc)

    def tick(self, now: float) -> None:
        try:
            if self.page is not None:
                self.page.publish(now)
            if self.watch is not None:
                self.watch.poll()
        except Exception:
            self._log.exception("worker observability failed; switched off")
            self.page = self.watch = None

    def close(self) -> None:
        if self.page is not None:
            self.page.publish(force=True)
            self.page.close()
            self.page = None
