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

Waiting on two things at once.  Steering is the consumer of the ``ret`` and ``sent``
rings *and* the receiver of a NIC whose readiness is a file descriptor (AF_PACKET).  It
once slept in ``poll()`` on the NIC alone, with the actors' 0.5 s idle timeout, and the
rings' doorbell rang a futex nobody waited on.  After a burst of traffic the frames
still in flight came home to ``sent`` while steering slept; once ``sent`` was full the
muxer could not give its frames back, stopped collecting from the tx rings, and every
packet behind them (the next request after the burst) waited for the timeout -- an HTTP
p99 of ~0.5 s in the lab, multiples of 0.5 s per probe in ``tests/actors/test_latency.py``.
A futex cannot be polled together with a socket, so a small thread
(:class:`_BellPipe`, its body in C: ``mg_bellpipe_run``) turns the futex doorbell into a
readable pipe: it sleeps on the doorbell only while the main thread sleeps in ``poll()``
(armed -- by this Python wait, or by the C loop, which since session 7 sleeps in its own
``ppoll()`` on the NIC and the pipe, mg_loop.h), writes one byte when a ring has work,
and waits to be armed again, so it never spins and costs nothing while steering is busy.  No wake-up is lost: the doorbell's own protocol (need_wakeup, fence,
re-check) covers submits that race with the thread going to sleep, and the byte stays
in the pipe until the main thread's next idle turn drains it, so a signal that races with
the main thread going back to ``poll()`` makes that poll return at once.  The rejected
alternatives: a short poll timeout (bounded latency but hundreds of wake-ups a second
when idle) or rings deep enough that no producer ever waits for steering (a region
layout change, and the ``ret`` rings would have to hold the whole pool each).

Spare frames: every loop turn first keeps each worker's spare ring stocked
(``mg_steer_spares``, see ``mg_steer.h``): the frames a DF-clear IPv4 packet's split
pieces need at the default MTU of 1500 come from there, and the free frames the spare
rings are owed are never handed to the NIC, so a refill never waits for traffic.
``params["spares"]`` sets the reserve per worker (default ``MG_SPARE_RESERVE``, one
burst; 0 turns it off).

Back pressure needs no doorbell: while steering holds packets it cannot place, it backs
off for a fraction of a millisecond (a worker drains a burst in ~0.1 ms) instead of
sleeping until its own rings or the NIC have news, which could be 0.5 s.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from maglev.actors.base import Actor
from maglev.native import check, ffi, lib
from maglev.nic import open_rx, parse_nic
from maglev.rings import SS_NIC_DROPS, Region
from maglev.rings.shed_file import NO_VIP, read_shed, shed_path, write_shed
from maglev.rings.stats import SS_NIC_COUNTERS, NicCounters

log = logging.getLogger("maglev.steering")
# Longest stretch the actors' C loops (mg_loop.h) run before Python's housekeeping.
LOOP_BUDGET_NS = 1_000_000
# C loop returns after which the actor calls again without waiting (base.Actor.loop_deadlines)
BACK_AT_ONCE = (int(lib.MG_LOOP_BUDGET), int(lib.MG_LOOP_DEADLINE))

class _BellPipe:
    """Steering's futex doorbell as a readable pipe, for a ``poll()`` on the NIC too.

    The helper thread runs ``mg_bellpipe_run`` (mg_loop.h; cffi releases the GIL for the
    whole call): it waits on the doorbell only after :meth:`arm` (steering is about to
    sleep in ``poll()`` -- this Python wait, or the C loop's own ``ppoll``, which arms it
    from C); a doorbell wake with ring work writes one byte and the thread waits to be
    armed again.  Arming first drains the pipe: every ring work signalled before that is
    reclaimed by the round that preceded the sleep (a round always reclaims first), and
    anything later makes the re-armed thread find the work at once (the doorbell re-checks
    the rings before it sleeps) and write a new byte.
    """

    def __init__(self, region: Any, bell: Any, name: str = "steering-bell"):
        self.bell = bell
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.ptr = ffi.new("struct mg_bellpipe *", {
            "rfd": self.r, "wfd": self.w, "base": region.base, "bell": bell.index})
        self._region = region  # the mapping the helper thread uses outlives it
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rc = int(lib.mg_bellpipe_run(self.ptr))
        if rc < 0:
            log.error("doorbell pipe thread failed", extra={"kv": {"error": os.strerror(-rc)}})

    @property
    def signals(self) -> int:
        return int(self.ptr.signals)

    def arm(self) -> None:
        lib.mg_bellpipe_arm(self.ptr)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        lib.mg_bellpipe_stop(self.ptr)  # out of a doorbell wait now, not at its timeout
        self._thread.join(2.0)
        if not self._thread.is_alive():
            os.close(self.r)
            os.close(self.w)


class Steering(Actor):
    kind = "steering"
    # Back-off while packets wait in the hand for room on an rx ring (back pressure).
    backpressure_sleep_s = 0.0002

    def setup(self) -> None:
        self.sched_setup()  # slice and real-time class (Actor.sched_setup, maglev/actors/sched.py)
        from maglev.nic.gen import vip_targets
        from maglev.rings import BELL_STEERING, SLOT_STEERING

        p = self.params
        self.region = Region.attach(p["region"])
        self.base = self.region.base
        self.pool = self.region.pool_ptr
        self.slot = SLOT_STEERING
        cfg = self.accepted_config()
        k0, k1 = cfg.flow_hash_key
        self.st = ffi.new("struct mg_steer *")
        check(lib.mg_steer_init(self.st, self.base, self.slot, k0, k1), "steering init")
        reta = bytes(p.get("reta") or b"")  # weighted flow -> worker map (maglev/actors/dispatch.py)
        if reta:
            check(lib.mg_steer_set_reta(self.st, reta, len(reta)), "steering flow -> worker map")
        # a dead or frozen worker's packets: dropped and counted, never moved (mg_steer.h)
        stall_ns = int(p.get("stall_ns", lib.MG_STEER_STALL_NS))
        if not 0 <= stall_ns <= 60 * 10**9:
            raise ValueError(f"stall_ns: {stall_ns} is not within 0..60 s")
        check(lib.mg_steer_set_stall_ns(self.st, stall_ns), "steering stall time")
        # which packets may fall back to another worker (PipelineOptions.fallback); a params
        # dict without the key (tests that build steering by hand) keeps the paper's rule
        fallback = {"any": lib.MG_STEER_FB_ANY, "new-flows": lib.MG_STEER_FB_NEW_FLOWS,
                    "never": lib.MG_STEER_FB_NEVER}.get(p.get("fallback", "any"))
        if fallback is None:
            raise ValueError(f"fallback: {p.get('fallback')!r} is not any, new-flows or never")
        check(lib.mg_steer_set_fallback(self.st, fallback), "steering fallback")
        self.stats_block = self.region.stats(self.slot)
        self.region.set_slot_pid(self.slot)  # who serves the slot now (tools, tests)
        self._nic_drop_base = {w: int(self.stats_block[w]) for w in SS_NIC_DROPS.values()}
        self._nic_counters = NicCounters(self.stats_block, SS_NIC_COUNTERS)  # link down, kernel drops
        self._recover()
        self.burst = int(p.get("burst", 256))
        self.spares = int(p.get("spares", lib.MG_SPARE_RESERVE))
        if not 0 <= self.spares <= lib.MG_SPARE_RING_SIZE:
            raise ValueError(f"spares: {self.spares} is not within 0..{lib.MG_SPARE_RING_SIZE}")
        check(lib.mg_steer_spares(self.st, self.base, self.spares), "steering spares")
        # Doorbell busy-poll rounds (0 when the CPU is shared: pipeline.doorbell_spin).
        self.spin = int(p.get("spin", lib.MG_BELL_SPIN_DEFAULT))
        self.nic = open_rx(parse_nic(p["nic"]), vips=vip_targets(cfg), seed=int(p.get("seed", 1)))
        if hasattr(self.nic, "publish"):  # AF_XDP: the muxer transmits through these sockets
            self.nic.publish(self.spec.run_dir)
        self._vip_gen = 0
        self._sync_nic_vips()
        if self.spec.incarnation and hasattr(self.nic, "skip"):
            # A capture replay continues after what the dead steering read (received --
            # including what it held when it died, counted as received by the recovery
            # -- or dropped by the NIC), instead of sending the start of the file again.
            s = self.stats_block
            done = int(s[lib.MG_SS_RX_PACKETS]) + sum(int(s[w]) for w in SS_NIC_DROPS.values())
            self.nic.skip(done)
        self.bell = self.region.bell(BELL_STEERING)
        self.bell_pipe: _BellPipe | None = None
        if hasattr(self.nic, "wake_on"):  # an fd-based NIC: poll it and the doorbell
            self.bell_pipe = _BellPipe(self.region, self.bell)
            self.nic.wake_on(self.bell_pipe.r)
        from maglev.telemetry.packets import SteeringTracer, steering_sample_rate

        self.tracer = SteeringTracer(self.region, steering_sample_rate(cfg), self.spec.instance, self.spec.run_dir)
        self.n_workers = self.region.n_workers
        self._cnt = ffi.new("uint32_t *")
        self.eof_sent = False
        self.draining = False
        # A first start waits for the supervisor's "go" (every worker attached), so the
        # rx rings do not fill while workers are still starting; a restart goes at once.
        self.going = self.spec.incarnation > 0 or not p.get("wait_go", True)
        # The generator NIC runs in C: the whole receive loop is one mg_steer_loop call
        # per ~1 ms (mg_loop.h); other NICs keep the per-burst step below.
        # A generator paced by `rate` alone runs in the C loop too (it fills what is due and
        # waits for the next packet's time inside the call); flood mode keeps the step.
        unpaced_gen = getattr(self.nic, "kind", "") == "gen" and not self.nic.flood and \
            float(self.nic.rate).is_integer()
        self._paced = getattr(self.nic, "kind", "") == "gen" and self.nic.paced
        self._loop_src = ffi.new("struct mg_loop_gen *") if unpaced_gen else None
        self._loop_ctl = ffi.new("struct mg_loop_ctl *", {
            "budget_ns": LOOP_BUDGET_NS, "burst": self.burst, "spares": self.spares})
        if self._loop_src is not None:  # the generator's C loop polls (adaptive idle, mg_loop.h)
            self.init_idle(self._loop_ctl, int(lib.MG_BELL_STEERING))
            self.init_sleep(self._loop_ctl, int(lib.MG_BELL_STEERING))  # and sleeps in the call
        if self._paced:  # sleeps as fine as the pace: 1 us timer slack, not the default 50
            from maglev.actors.sched import set_timer_slack_ns

            set_timer_slack_ns(1000)
        # AF_PACKET and AF_XDP run in C too: rx -> dispatch for many bursts per call
        # (mg_steer_loop_nic).  MAGLEV_NIC_LOOP=0 keeps the per-burst step (measurements).
        src = getattr(self.nic, "nic_loop_rx", None)
        self._loop_nic = src() if src is not None and os.environ.get("MAGLEV_NIC_LOOP", "1") != "0" else None
        if self._loop_nic is not None and self.bell_pipe is not None:
            # the NIC loop sleeps in the call: ppoll() on the NIC and the doorbell's pipe
            self._loop_nic.ptr.pipe = self.bell_pipe.ptr
            self.init_sleep(self._loop_ctl, int(lib.MG_BELL_STEERING))
        self._loop_out = ffi.new("struct mg_loop_out *")
        self._shed_setup(p)

    def handle(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "go":
            self.going = True

    def _recover(self) -> int:
        """Take over from a dead predecessor (a no-op on a first start): settle its hand,
        own the rings' producer/consumer sides, send what it held back to the free list.
        Packets it had received but not placed are dropped (at-most-once) and counted:
        as received if they were not yet, and as ``steering_restart`` drops
        (``mg_steer_recover``: the hand's batch state tells packets from unused frames)."""
        r = self.region
        r.hand(self.slot).recover()
        for i in range(r.n_workers):
            r.rx(i).reset_producer()
            r.ret(i).reset_consumer()
            r.spare(i).reset_producer()
        r.sent.reset_consumer()
        r.free.reset_producer()
        r.free.reset_consumer()
        lost = int(self.stats_block[lib.MG_SS_LOST])
        n = check(lib.mg_steer_recover(self.st, self.base), "steering recover")
        if n:
            log.warning("recovered frames from a dead steering", extra={"kv": {
                "frames": n, "packets_dropped": int(self.stats_block[lib.MG_SS_LOST]) - lost}})
        return n

    def step(self) -> int:
        if self._loop_src is not None and self.going and not self.draining and not self.nic.eof:
            return self._step_loop()
        if self._loop_nic is not None and self.going and not self.draining:
            return self._step_nic_loop()
        base, st = self.base, self.st
        check(lib.mg_steer_reclaim(st, base), "steering reclaim")
        if not self.draining:
            check(lib.mg_steer_spares(st, base, self.spares), "steering spares")
        holding = check(lib.mg_hand_count(base, self.slot), "hand count")
        if holding:
            left = check(lib.mg_steer_dispatch(st, base, holding, 0), "steering dispatch")
            return holding - left
        if self.draining or self.nic.eof:
            self._maybe_eof()
            return 0
        if not self.going:
            return 0
        want = self.nic.due(self.burst) if self._paced else self.burst
        if want == 0:  # a paced generator with nothing due yet: wait() sleeps briefly
            return 0
        n = check(lib.mg_steer_take(st, base, want), "steering take")
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

    def _step_loop(self) -> int:
        """Many bursts in one C call (generator NIC): returns after ~1 ms, when out of free
        frames, on back pressure (wait() then backs off: frames are in the hand) or eof."""
        src, out = self._loop_src, self._loop_out
        self.nic.loop_source(src)
        self.loop_deadlines(self._loop_ctl)
        check(lib.mg_steer_loop(self.st, self.base, src, self._loop_ctl, out), "steering loop")
        if out.reason == lib.MG_LOOP_EOF:
            self.nic.eof = True
        return int(out.packets) or int(out.reason in BACK_AT_ONCE)

    def _step_nic_loop(self) -> int:
        """AF_PACKET/AF_XDP: reclaim -> take -> the NIC's rx -> dispatch, many bursts in one
        C call; back to Python when the NIC is empty (wait() polls it), on back pressure
        or after ~1 ms (housekeeping)."""
        out = self._loop_out
        self.loop_deadlines(self._loop_ctl)
        rc = lib.mg_steer_loop_nic(self.st, self.base, self._loop_nic.ptr, self._loop_ctl, out)
        check(rc, f"steering loop on {getattr(self.nic, 'iface', 'the NIC')}")
        return int(out.packets) or int(out.reason in BACK_AT_ONCE)

    def _poll_mailbox_now(self) -> None:
        if self.mailbox is not None:
            self._poll_mailbox()

    def _sync_nic_vips(self) -> None:
        """AF_XDP: the XDP program redirects the VIPs of the tables in force, so a VIP
        added or removed at run time (control socket, SIGHUP reload) changes what reaches
        the sockets at the next housekeeping tick."""
        set_vips = getattr(self.nic, "set_vips", None)
        if set_vips is None:
            return
        tables = self.region.tables
        if tables.generation() == self._vip_gen:
            return
        from maglev.datapath.tables import read_tables
        from maglev.errors import MaglevError

        gen, blob = tables.current()
        if not gen:
            return
        self._vip_gen = gen
        try:
            added, removed = set_vips(v.address for v in read_tables(blob).vips)
        except MaglevError as e:  # e.g. the map is full: logged, the data path goes on
            log.error("XDP program not updated", extra={"kv": {"generation": gen, "error": str(e)}})
            return
        if added or removed:
            log.info("XDP program follows the VIPs", extra={"kv": {
                "generation": gen, "added": ",".join(added), "removed": ",".join(removed)}})

    # ------------------------------------------------------------ overload shedding

    def _shed_setup(self, p: dict[str, Any]) -> None:
        """VIP priority under overload (mg_shed.h): a private, validated copy of the
        published tables for steering's per-packet VIP lookup, reloaded by :meth:`tick`
        when the generation changes; per-VIP drops go to ``shed-steering.json`` in the
        run directory (VIP key -> packets, continued by a replacement steering)."""
        self.shed_high_water_pct = int(p.get("shed_high_water_pct", lib.MG_SHED_HIGH_WATER_PCT))
        if not 1 <= self.shed_high_water_pct <= 100:
            raise ValueError(f"shed_high_water_pct: {self.shed_high_water_pct} is not within 1..100")
        self.shed = ffi.new("struct mg_shed *")
        check(lib.mg_shed_load(self.shed, ffi.NULL, 0, 0, 0), "shed init")
        check(lib.mg_steer_set_shed(self.st, self.shed), "steering shed")
        self._shed_blob: Any = None
        self._shed_gen = 0
        self._shed_keys: list[str] = []
        self._shed_file = shed_path(self.spec.run_dir) if self.spec.run_dir else None
        self.shed_by_vip: dict[str, int] = read_shed(self.spec.run_dir) if self.spec.run_dir else {}
        self._shed_dirty = False
        self._shed_next_write = 0.0
        self._shed_reload()

    def _shed_collect(self) -> None:
        """Move the C per-VIP drop counts (indexed like the loaded blob) to VIP keys."""
        if self._shed_blob is None:
            return
        drops = self.shed.drops
        for i, key in enumerate(self._shed_keys):
            n = int(drops[i])
            if n:
                self.shed_by_vip[key] = self.shed_by_vip.get(key, 0) + n
                drops[i] = 0
                self._shed_dirty = True
        n = int(drops[lib.MG_SHED_NO_VIP])
        if n:
            self.shed_by_vip[NO_VIP] = self.shed_by_vip.get(NO_VIP, 0) + n
            drops[lib.MG_SHED_NO_VIP] = 0
            self._shed_dirty = True

    def _shed_reload(self) -> None:
        gen = int(lib.mg_tables_generation(self.base))
        if gen == self._shed_gen:
            return
        from maglev.datapath.tables import read_vip_keys

        self._shed_collect()
        gen, blob = self.region.tables.current()
        if gen == 0:
            return
        try:  # the VIPs only: walking every table entry took seconds for the largest tables
            keys = read_vip_keys(blob)
        except Exception as e:  # a blob the workers refuse too: shed nothing
            log.warning("overload shedding off: tables unreadable", extra={"kv": {"error": str(e)}})
            keys = []
        buf = ffi.new("uint8_t[]", blob)
        rc = lib.mg_shed_load(self.shed, buf, len(blob), self.region.ring_size,
                              self.shed_high_water_pct) if keys else -1
        if rc != 0:
            lib.mg_shed_load(self.shed, ffi.NULL, 0, 0, 0)
            buf, keys = None, []
        self._shed_blob, self._shed_keys, self._shed_gen = buf, keys, gen

    def _shed_publish(self, now: float, force: bool = False) -> None:
        self._shed_collect()
        if self._shed_file is None or not self._shed_dirty or (now < self._shed_next_write and not force):
            return
        write_shed(self._shed_file, self.shed_by_vip)
        self._shed_dirty = False
        self._shed_next_write = now + 0.25

    def tick(self, now: float) -> None:
        self._maintain_nic()
        self._sync_nic_vips()
        self._shed_reload()
        self._shed_publish(now)
        self._sync_nic_drops()
        self._nic_counters.sync(getattr(self, "nic", None), now)
        self.tracer.tick(now)  # packet tracer: collected records -> spans
        super().tick(now)

    _nic_reopens = 0

    def _maintain_nic(self) -> None:
        """AF_PACKET: reopen the receive socket(s) when the interface was deleted and
        created again under the same name (a driver reload, a NIC reset): a socket bound to
        the old interface index would receive nothing for ever.  The C loop's device
        structs stay the same objects (their descriptors change), so the loop goes on; the
        check itself runs at most once a second (``AfPacketNic.maintain``).  AF_XDP the
        same way (``AfXdpNic.maintain``: new sockets and XDP program, moved into the
        structs the C loop points at, and a new hand-off the muxer takes)."""
        nic = getattr(self, "nic", None)
        if getattr(nic, "kind", "") not in ("afpacket", "afxdp") or not hasattr(nic, "maintain"):
            return
        nic.maintain()
        reopens = int(getattr(nic, "reopens", 0))
        if reopens != self._nic_reopens:
            self._nic_reopens = reopens
            log.warning(f"{nic.kind}: interface created again; receive socket reopened",
                        extra={"kv": {"iface": getattr(nic, "iface", ""), "reopens": reopens}})

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
        if check(lib.mg_hand_count(self.base, self.slot), "hand count"):
            # Back pressure: room appears on an rx ring when a worker pulls, and nobody
            # rings steering for that; back off briefly instead of sleeping.
            time.sleep(self.backpressure_sleep_s)
        elif getattr(self.nic, "paced", False) and not self.nic.eof and not self.draining:
            self.nic.wait(timeout_s)  # a paced generator sleeps until its next packets are due
        elif self.bell_pipe is not None and not self.nic.eof and not self.draining:
            self.bell_pipe.arm()
            self.nic.wait(timeout_s)
        else:
            self.bell.wait(int(timeout_s * 1000), spin=self.spin)

    def drain(self) -> None:
        """Stop receiving; place what is in the hand; wait (bounded) until every frame the
        workers and muxer will hand back is home."""
        self.draining = True
        if self.bell_pipe is not None:  # drain waits on the doorbell itself
            if self._loop_nic is not None:
                self._loop_nic.ptr.pipe = ffi.NULL
            self.bell_pipe.close()
        deadline = time.monotonic() + float(self.params.get("drain_s", 2.0))
        free = self.region.free
        spares = [self.region.spare(i) for i in range(self.n_workers)]
        n_frames = self.region.n_frames
        r = self.region
        from maglev.rings import worker_slot

        held = [r.stats(worker_slot(i)) for i in range(self.n_workers)]
        while time.monotonic() < deadline:
            self.step()
            # Home: the free list and the spare rings (nobody refills those any more; a
            # spare a worker takes now comes back through ret or sent).  Fragments a
            # worker holds come home only when it stops (its drain releases them): do
            # not wait for those.
            home = free.count() + sum(sp.count() for sp in spares)
            if home + sum(int(h[lib.MG_WS_HELD]) for h in held) >= n_frames:
                break
            self.bell.wait(20)

    def teardown(self) -> None:
        if getattr(self, "bell_pipe", None) is not None:
            self.bell_pipe.close()
        if getattr(self, "shed", None) is not None:
            self._shed_publish(time.monotonic(), force=True)
        nic = getattr(self, "nic", None)
        if nic is not None:
            self._sync_nic_drops()
            if getattr(self, "_nic_counters", None) is not None:
                self._nic_counters.sync(nic, time.monotonic(), force=True)
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
            "lost": int(s[lib.MG_SS_LOST]),
            "spare_reserve": int(s[lib.MG_SS_SPARE_RESERVE]),
            "spares_sent": int(s[lib.MG_SS_SPARES_SENT]),
            "spare_short": int(s[lib.MG_SS_SPARE_SHORT]),
            "shed": int(s[lib.MG_SS_SHED]),
            "eof": bool(getattr(self, "nic", None) is not None and self.nic.eof),
        }
        nic = getattr(self, "nic", None)
        if nic is not None:
            out["nic"] = nic.stats()
        return out
