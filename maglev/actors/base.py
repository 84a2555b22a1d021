"""The actor base class: one OS process per actor, a mailbox to the supervisor, a loop.

Design
------
Every actor (steering, packet worker, muxer, config manager, health prober, BGP speaker)
is a separate OS process started by the supervisor with ``python -m maglev.actors.launch``
-- a fresh interpreter, never a fork of a process that holds ZeroMQ contexts, open
shared-memory mappings or OpenTelemetry threads (fork would duplicate all three).  The
process receives an :class:`ActorSpec` (JSON on argv), imports the class it names and
calls :meth:`Actor.main`.

Lifecycle, in order: ignore nothing but handle SIGTERM and SIGINT as "stop gracefully";
pin to the CPUs in the spec (psutil); set up logging (logfmt lines on stderr, one line per
event, keys ``ts level actor pid msg ...``); set up tracing through
:mod:`maglev.telemetry` (a ``start`` span, or ``restart`` when the supervisor restarted
it; a ``stop`` span at the end); connect a ZeroMQ DEALER to the supervisor's ROUTER on an
``ipc://`` socket in the private run directory; say ``hello``; run :meth:`setup`; loop;
on stop run :meth:`drain` (finish what is in the actor's input rings), :meth:`teardown`,
say ``bye`` with final stats, exit 0.

The loop alternates :meth:`step` (one burst of work, returns how much it did) with a
housekeeping tick (mailbox, heartbeat, parent check) at most every ``tick_s``.  When a step
did nothing the actor backs off: optionally a few ``os.sched_yield()`` rounds (off by
default, see ``yield_rounds``), then :meth:`wait`, which data-path actors implement by
sleeping on their ring doorbell with a timeout (the doorbell spins briefly on the rings
first, never with more processes than cores in mind: spinning there collapses
throughput), so an idle actor costs a few wake-ups per second and nothing else.  ``time.sleep(0)`` is never used as a backoff: it sleeps ~76 us here.
A stop request never waits for that sleep to end: data-path actors (``self.bell`` set)
take a doorbell alert every turn (the supervisor raises it with the ``stop`` message),
asyncio actors sleep in :meth:`Actor.run_loop_for` (returns when mail arrives), and the
mailbox is read after every idle wait.  ``launch`` leaves with ``os._exit`` once ``main``
returned (teardown done, ``bye`` sent): interpreter finalization cost 0.2-0.5 s.

Orphans: actors run in their own session (a Ctrl-C in the terminal reaches only the
supervisor, which then stops the actors in order); an actor whose parent vanished
(supervisor killed with -9) notices on its next tick (``getppid`` changed) and stops.

Heartbeats go over the mailbox every ``heartbeat_s`` with a small stats dict; the
supervisor restarts an actor whose process died or whose heartbeats stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from maglev.telemetry.logs import setup_logging

PROTOCOL_VERSION = 1
log = logging.getLogger("maglev.actor")


@dataclass
class ActorSpec:
    """Everything a fresh actor process needs; JSON-serialisable."""

    name: str  # unique within a run: "steering", "worker-3", "muxer", "config", ...
    target: str  # "package.module:Class"
    run_dir: str  # private directory of this run (mailbox socket lives there)
    instance: str = "mg1"
    mailbox: str = ""  # ZeroMQ endpoint of the supervisor's ROUTER
    cpus: list[int] | None = None  # pin to these CPUs; None = no pinning
    params: dict[str, Any] = field(default_factory=dict)
    otlp_endpoint: str = ""
    log_level: str = "WARNING"
    incarnation: int = 0  # 0 = first start, n = n-th restart
    # The supervisor's pid.  Compared with getppid() rather than getppid() at start: on a
    # busy machine an actor can still be importing when its supervisor dies, and would
    # then take init for its parent and never notice.
    parent_pid: int = 0
    # Set up, then drain and stop at once: the supervisor starts such an incarnation when
    # the previous one died during the run's stop (docs/actors.md, "Stop"), so what it
    # held and what waits on its rings is still processed and counted.
    drain_only: bool = False

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ActorSpec:
        return cls(**json.loads(text))


# Log formats (logfmt / journal / JSON) and the warning rate limit: maglev/telemetry/logs.py


def pin_cpus(cpus: list[int] | None) -> list[int] | None:
    """Pin this process to ``cpus`` (psutil); return the affinity now in force."""
    if not cpus:
        return None
    import psutil

    p = psutil.Process()
    try:
        p.cpu_affinity(list(cpus))
    except (ValueError, OSError) as exc:
        log.warning("cannot pin", extra={"kv": {"cpus": cpus, "error": exc}})
    return p.cpu_affinity()


class Actor:
    """Base class.  Subclasses override :meth:`setup`, :meth:`step`, :meth:`wait`,
    :meth:`drain`, :meth:`teardown`, :meth:`handle` and :meth:`stats` as needed."""

    kind = "actor"
    tick_s = 0.1  # housekeeping period while busy: mailbox, heartbeat, parent check
    heartbeat_s = 1.0  # the supervisor declares an actor hung after 3 s without one
    # Longest sleep in wait(): bounds how late an idle actor sees a mailbox message, and
    # sets the idle cost (two wake-ups a second per actor).
    idle_wait_s = 0.5
    # sched_yield rounds before wait().  0: the doorbell wait already spins briefly on the
    # rings; on a shared two-core machine yielding handed the CPU to other jobs for a whole
    # time slice (measured: W=1 pipeline 0.35 -> 0.50 Mpps with 0 instead of 16).
    yield_rounds = 0
    # Capabilities this actor still needs once setup() is done: None keeps what it was
    # started with (the run's kept set: steering and the muxer detach/close NIC sockets at
    # teardown, the BGP speaker holds its port); () drops them all.  A restart is a new
    # process from the supervisor, which keeps the run's set, so nothing is lost by it.
    caps_after_setup: tuple[str, ...] | None = None

    def __init__(self, spec: ActorSpec):
        self.spec = spec
        self.name = spec.name
        self.params = spec.params
        self.stopping = False
        self.stop_reason = ""
        self._ctx: Any = None
        self.mailbox: Any = None
        self._ppid = spec.parent_pid or os.getppid()
        self._last_tick = 0.0
        self._last_hb = 0.0
        self._tracer: Any = None
        self.started_at = time.monotonic()
        # The doorbell a data-path actor sleeps on (set in setup): the supervisor's stop
        # request arrives as an alert on it (a futex wait cannot also watch the mailbox).
        self.bell: Any = None
        # SCHED_FIFO of a data-path actor (sched_setup / _rt_govern): 0 = not asked/refused
        self._rt_prio = 0
        self._rt_on = False
        self._rt_mark = (0.0, 0)
        self._rt_fd = -1
        self.rt_demotions = 0

    # ------------------------------------------------------------------ hooks

    def accepted_config(self) -> Any:
        """The config this run has accepted (``<run dir>/config.json``, written by the
        supervisor before any actor starts and by the config manager at every accepted
        change), never the operator's file as it is on disk now: that may be broken, or
        edited and not yet reloaded, when this actor is restarted.  The settings the data
        path fixes at start (flow hash secret, ``[conntrack]``) stay the run's first ones
        (``persist.start_only``).  Outside a ``maglev run`` (no such file) the file named
        by the ``config`` param.

        A run folder whose ``config.json`` is damaged or gone (truncated, garbage, deleted)
        while ``config-start.json`` is whole gives the start's config, with an error in the
        log: for steering and the packet workers, the only callers, it is the same config
        (they read the flow hash secret, ``[conntrack]`` and the instance name, all fixed at
        start), and the config manager writes ``config.json`` whole again at its next
        accepted change.  Before, the restart failed and with it the whole run (session 10:
        "steering failed to start: ... config.json: not a maglev state file")."""
        from maglev.config import load_config
        from maglev.control.persist import load_run_config, run_config_path, start_only
        from maglev.errors import ConfigError

        def load(start: bool) -> tuple[Any, list[str]]:
            try:
                return load_run_config(self.spec.run_dir, start=start), []
            except ConfigError as exc:
                return None, list(exc.problems)

        run, bad = load(False)
        started, bad_start = load(True)
        if run is not None:
            if bad_start:  # (the same values unless a reload changed them: then a table is not adopted)
                log.error("the config the run started with is not usable (%s); taking the flow hash secret "
                          "and [conntrack] from its accepted config", "; ".join(bad_start))
            return start_only(run[0], started[0]) if started is not None else run[0]
        if started is not None:
            log.error("the run's accepted config is not usable (%s); starting on the config the run started "
                      "with (the same flow hash secret and [conntrack])",
                      "; ".join(bad) or f"{run_config_path(self.spec.run_dir)} is missing")
            return started[0]
        if bad or bad_start:
            raise ConfigError(bad + bad_start)
        return load_config(self.params.get("config", ""))

    def setup(self) -> None:
        """Attach shared memory, open the NIC, ... (runs before the loop)."""

    def step(self) -> int:
        """Do one burst of work; return how much was done (0 = idle)."""
        return 0

    def wait(self, timeout_s: float) -> None:
        """Sleep until work may be there or ``timeout_s`` passed.  The default waits on
        the mailbox; data-path actors sleep on their ring doorbell instead."""
        if self.mailbox is not None:
            self.mailbox.poll(int(timeout_s * 1000))
        else:
            time.sleep(timeout_s)

    def init_idle(self, ctl: Any, bell: int) -> None:
        """Give a C loop's ``struct mg_loop_ctl`` this actor's adaptive idle policy (the
        pipeline's ``idle_us`` / ``idle_mode`` params, mg_loop.h): the loop then polls its
        doorbell's rings for that window after the last packet it moved, and returns
        ``MG_LOOP_IDLE`` only when the window passed -- so :meth:`wait` sleeps at once
        (no second spin in Python).  The ``nap_us`` param turns on the nap under load
        (``ctl->nap_ns``)."""
        us = int(self.params.get("idle_us", 0))
        nap_us = int(self.params.get("nap_us", 0))
        if us <= 0 and nap_us <= 0:
            return
        from maglev.native import ffi, lib

        self.idle_state = ffi.new("struct mg_idle_state *")
        ctl.idle = self.idle_state
        ctl.idle_mode = int(self.params.get("idle_mode", lib.MG_IDLE_YIELD))
        ctl.bell = bell
        # Nap under load (mg_loop.h): a heavy stream sleeps on the clock between looks
        # instead of on the doorbell, so its producers pay no wake-ups.
        ctl.nap_ns = max(0, nap_us) * 1000
        if us > 0:
            ctl.idle_ns = us * 1000
            self.spin = 0

    # Sleeping in the C loop (mg_loop.h, ctl->sleep_until_ns; 2026-12-07 session 7): a
    # data-path actor's C loop sleeps on its doorbell itself when its rings run dry and goes
    # on in the same call when woken, so a packet at a trickle never waits for this Python
    # loop (mailbox look, clock, alert, the call rebuilt) on any hop.  MAGLEV_LOOP_SLEEP=0
    # keeps the old way -- the loop returns MG_LOOP_IDLE and wait() sleeps (measurements).
    _sleep_in_c = False

    def init_sleep(self, ctl: Any, bell: int) -> None:
        """Let the C loop of ``ctl`` sleep on doorbell ``bell`` itself (with this actor's
        busy-poll rounds ``self.spin``); :meth:`loop_deadlines` then gives it its deadlines
        before every call."""
        if os.environ.get("MAGLEV_LOOP_SLEEP", "1") == "0":
            return
        ctl.bell = bell
        ctl.spin = int(getattr(self, "spin", 0))
        self._sleep_in_c = True

    def loop_deadlines(self, ctl: Any) -> None:
        """Before a C loop call: how long it may sleep in the call -- ``idle_wait_s`` from
        now (as long as :meth:`wait` would), or to the next housekeeping tick once it moved
        a packet (``ctl->tick_ns``), so ticks, heartbeats and the mailbox run as often as
        before.  Never while stopping: :meth:`drain` needs the loop back when the rings
        are empty."""
        if not self._sleep_in_c or self.stopping:
            ctl.sleep_until_ns = 0
            return
        ctl.sleep_until_ns = time.monotonic_ns() + int(self.idle_wait_s * 1e9)
        ctl.tick_ns = int((self._last_tick + self.tick_s) * 1e9)

    def sched_setup(self) -> None:
        """A data-path actor's scheduling at setup (maglev/actors/sched.py): the optional
        short EEVDF slice, and SCHED_FIFO at the run's ``rt_prio`` param for this kind
        (0 = stay SCHED_OTHER) while the actor is lightly loaded (:meth:`_rt_govern`)."""
        from maglev.actors.sched import open_schedstat, rt_prio_for, set_rt, set_wakeup_slice

        set_wakeup_slice()
        self._rt_prio = rt_prio_for(self.kind, int(self.params.get("rt_prio", 0)))
        self._rt_on = set_rt(self._rt_prio)
        if not self._rt_on:
            self._rt_prio = 0
        elif self.caps_after_setup is not None and "CAP_SYS_NICE" not in self.caps_after_setup:
            import resource

            if resource.getrlimit(resource.RLIMIT_RTPRIO)[0] < self._rt_prio:
                # The governor must be able to come back to SCHED_FIFO after a busy spell:
                # keep CAP_SYS_NICE (set_rt could not raise RLIMIT_RTPRIO: no CAP_SYS_RESOURCE).
                self.caps_after_setup = (*self.caps_after_setup, "CAP_SYS_NICE")
        self._rt_mark = (0.0, 0)  # the first tick starts the first span (not setup's work)
        self._rt_fd = open_schedstat()

    def _rt_govern(self, now: float) -> None:
        """SCHED_FIFO only while light: over each span of at least ``RT_PERIOD_S`` (judged
        at the housekeeping tick) the actor's *asleep* share -- wall time neither on a CPU
        nor waiting for one (``/proc/thread-self/schedstat``) -- says whether its work
        leaves it idle.  Asleep less than ``RT_BUSY_SLEEP`` of the span: it is saturated (a
        flood; or it shares a CPU with a higher-priority actor that keeps it waiting), so it
        drops to SCHED_OTHER -- a flood must not starve the control plane or the host.
        Asleep more than ``RT_CALM_SLEEP``: back to SCHED_FIFO."""
        from maglev.actors.sched import (
            RT_BUSY_SLEEP,
            RT_CALM_SLEEP,
            RT_PERIOD_S,
            busy_ns,
            set_other,
            set_rt,
        )

        t0, b0 = self._rt_mark
        if now - t0 < RT_PERIOD_S:
            return
        busy = busy_ns(self._rt_fd)
        self._rt_mark = (now, busy)
        if not t0:
            return  # the first tick starts the first span
        asleep = 1.0 - (busy - b0) / 1e9 / (now - t0)
        if self._rt_on and asleep < RT_BUSY_SLEEP:
            set_other()
            self._rt_on = False
            self.rt_demotions += 1
            log.debug("busy: SCHED_OTHER", extra={"kv": {"asleep": round(asleep, 2)}})
        elif not self._rt_on and asleep > RT_CALM_SLEEP:
            self._rt_on = set_rt(self._rt_prio)

    def _leave_rt(self) -> None:
        """Back to SCHED_OTHER before :meth:`drain`: a draining actor waits for its
        neighbours' frames in a loop the governor does not watch, and as SCHED_FIFO it kept
        the SCHED_OTHER workers of its CPU (crowded workers are never SCHED_FIFO) from
        running until the kernel's RT throttling let them: `maglev run --workers 8` took
        1-2.4 s instead of ~0.2 s to stop once SCHED_FIFO really applied under `maglev run`
        (2026-12-07 session 6)."""
        if self._rt_on:
            from maglev.actors.sched import set_other

            set_other()
            self._rt_on = False

    def drain(self) -> None:
        """Finish the work already queued for this actor before it exits."""

    def teardown(self) -> None:
        """Release what setup acquired."""

    def handle(self, msg: dict[str, Any]) -> None:
        """A mailbox message other than ``stop`` (``actor_up``/``actor_down`` events are
        broadcast to everyone; actors that do not care ignore them)."""
        log.debug("message ignored", extra={"kv": {"type": msg.get("type")}})

    def stats(self) -> dict[str, Any]:
        """Counters reported with every heartbeat and in ``bye``."""
        return {}

    # ------------------------------------------------------------------ helpers
    def run_loop_for(self, loop: Any, timeout_s: float) -> None:
        """Run an asyncio ``loop`` for ``timeout_s`` or until the mailbox has a message,
        whichever is first: the ``wait()`` of actors built on asyncio, so a stop request is
        seen at once instead of after the idle slice."""
        import asyncio

        import zmq

        mb = self.mailbox
        if mb is None:
            loop.run_until_complete(asyncio.sleep(timeout_s))
            return
        fut = loop.create_future()

        def ready() -> None:
            # ZMQ_FD is edge-triggered: EVENTS says whether a message is really there.
            if not fut.done() and mb.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                fut.set_result(None)

        fd = mb.getsockopt(zmq.FD)
        loop.add_reader(fd, ready)
        timer = loop.call_later(timeout_s, lambda: fut.done() or fut.set_result(None))
        try:
            ready()  # mail that arrived before the reader was registered
            loop.run_until_complete(fut)
        finally:
            timer.cancel()
            loop.remove_reader(fd)

    def send(self, type_: str, **body: Any) -> None:
        if self.mailbox is None:
            return
        msg = {"v": PROTOCOL_VERSION, "type": type_, "name": self.name, "pid": os.getpid(), **body}
        try:
            import zmq

            self.mailbox.send(msgpack.packb(msg, use_bin_type=True), zmq.NOBLOCK)
        except Exception as exc:  # a full or closed mailbox must not stop the data path
            log.debug("mailbox send failed", extra={"kv": {"type": type_, "error": exc}})

    def request_stop(self, reason: str) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_reason = reason

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.request_stop(signal.Signals(signum).name)

    def _span(self, what: str, **attrs: Any) -> None:
        if self._tracer is None:
            return
        with self._tracer.start_as_current_span(f"{self.kind}.{what}") as span:
            span.set_attribute("maglev.actor", self.name)
            span.set_attribute("maglev.incarnation", self.spec.incarnation)
            for k, v in attrs.items():
                span.set_attribute(k, v)

    def _setup_tracing(self) -> None:
        try:
            from maglev.telemetry import get_tracer, setup_tracing
        except ImportError:  # telemetry is optional for the data path to run
            return
        setup_tracing(self.name, self.spec.instance, self.spec.otlp_endpoint or None)
        self._tracer = get_tracer("maglev.actors")

    def _connect(self) -> None:
        if not self.spec.mailbox:
            return
        import zmq

        self._ctx = zmq.Context(1)
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, self.name.encode())
        s.setsockopt(zmq.LINGER, 200)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.connect(self.spec.mailbox)
        self.mailbox = s

    def _poll_mailbox(self) -> None:
        import zmq

        while True:
            try:
                raw = self.mailbox.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = msgpack.unpackb(raw, raw=False)
                if not isinstance(msg, dict) or msg.get("v") != PROTOCOL_VERSION:
                    raise ValueError("not a version-1 message")
            except Exception as exc:
                log.warning("bad mailbox message dropped", extra={"kv": {"error": exc}})
                continue
            if msg.get("type") == "stop":
                self.request_stop(str(msg.get("reason", "supervisor")))
            else:
                self.handle(msg)

    def tick(self, now: float) -> None:
        """Housekeeping; called from the loop at most every ``tick_s``."""
        self._last_tick = now
        if self._rt_prio:
            self._rt_govern(now)
        if self.mailbox is not None:
            self._poll_mailbox()
        if os.getppid() != self._ppid:
            self.request_stop("parent exited")
        if now - self._last_hb >= self.heartbeat_s:
            self._last_hb = now
            self.send("hb", stats=self.stats())

    def _drop_caps(self) -> None:
        if self.caps_after_setup is None:
            return
        from maglev.service.privileges import PrivilegeError, cap_sets, drop_to

        try:
            if cap_sets().get("CapPrm", 0) or cap_sets().get("CapAmb", 0):
                r = drop_to(set(self.caps_after_setup))
                log.debug("capabilities dropped after setup", extra={"kv": {"kept": ",".join(r["kept"]) or "none"}})
        except (PrivilegeError, OSError) as exc:  # never fatal: the run's set is already small
            log.warning("could not drop capabilities: %s", exc)

    # ------------------------------------------------------------------ main
    def main(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        setup_logging(self.name, self.spec.log_level, instance=self.spec.instance)
        affinity = pin_cpus(self.spec.cpus)
        self._setup_tracing()
        self._connect()
        self._span("restart" if self.spec.incarnation else "start", **{"maglev.cpus": str(affinity)})
        try:
            self.setup()
        except Exception as exc:
            from maglev.errors import MaglevError

            if isinstance(exc, MaglevError):  # bad input, said in one line: no traceback
                log.error("setup failed: %s", exc)
            else:
                log.exception("setup failed")
            self.send("fatal", error=f"{type(exc).__name__}: {exc}")
            self._close()
            return 3
        self._drop_caps()
        self.send("hello", incarnation=self.spec.incarnation, cpus=affinity)
        log.info("started", extra={"kv": {"cpus": affinity, "incarnation": self.spec.incarnation}})
        if self.spec.drain_only:
            self.request_stop("drain after a death during the stop")
        rc = 0
        try:
            self._loop()
            self._leave_rt()
            self.drain()
        except Exception as exc:
            log.exception("actor failed")
            self.send("fatal", error=f"{type(exc).__name__}: {exc}")
            rc = 1
        finally:
            try:
                self.teardown()
            except Exception:
                log.exception("teardown failed")
                rc = rc or 1
            self.send("bye", stats=self.stats(), reason=self.stop_reason, rc=rc)
            self._span("stop", **{"maglev.reason": self.stop_reason})
            self._close()
        return rc

    def _take_alert(self) -> bool:
        """Take the doorbell alert (data-path actors set ``self.bell``); True = the
        supervisor asked this actor to stop (``Doorbell.alert``)."""
        bell = self.bell
        if bell is not None and bell.take_alert():
            self.request_stop("supervisor")
            return True
        return False

    def _loop(self) -> None:
        import zmq

        idle = 0
        mono = time.monotonic
        sched_yield = os.sched_yield
        take_alert = self._take_alert if self.bell is not None else None
        while not self.stopping:
            now = mono()
            if now - self._last_tick >= self.tick_s:
                self.tick(now)
                if self.stopping:
                    break
            if take_alert is not None and take_alert():
                break  # a stop request through the doorbell: every turn, busy or not
            if self.step():
                idle = 0
                continue
            idle += 1
            if idle <= self.yield_rounds:
                sched_yield()
            else:
                self.wait(self.idle_wait_s)
                # Woken by the mailbox (or anything): read it now, not at the next tick,
                # so a stop is seen at once (never up to idle_wait_s later).
                mb = self.mailbox
                if mb is not None and mb.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    self._poll_mailbox()

    def _close(self) -> None:
        try:
            from maglev.telemetry import shutdown_tracing

            shutdown_tracing()
        except ImportError:
            pass
        if self.mailbox is not None:
            self.mailbox.close()
            self.mailbox = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None


def load_target(target: str) -> type[Actor]:
    """Import ``package.module:Class`` and check it is an Actor subclass."""
    import importlib

    mod_name, _, cls_name = target.partition(":")
    if not mod_name or not cls_name:
        raise ValueError(f"actor target {target!r} must be 'module:Class'")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    if not (isinstance(cls, type) and issubclass(cls, Actor)):
        raise TypeError(f"{target} is not an Actor subclass")
    return cls
