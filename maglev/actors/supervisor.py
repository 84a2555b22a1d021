"""The supervisor: starts every actor, watches it, restarts it, stops everything in order.

Design
------
The supervisor is ``maglev run`` itself.  It owns a private run directory (mode 0700)
holding the mailbox socket, binds a ZeroMQ ROUTER there, and starts each actor described
by an :class:`ActorDef` with ``python -m maglev.actors.launch`` in its own session (a
terminal Ctrl-C reaches only the supervisor, which then stops the actors in order).
Adding an actor to a run is adding one ``ActorDef`` to the list: the control-plane actors
(config manager, health prober, BGP speaker) are entries like the data-path ones.

Watching: a child that exits while the run is not stopping is restarted at once with
``incarnation + 1``: each child's pidfd is polled together with the mailbox, so a
``kill -9`` wakes the supervisor at once even while it sleeps for a second.
The replacement is a *standby* process started in advance with the runtime's modules
already imported (``launch --standby``), so it is running the actor's setup within
milliseconds instead of after ~1 s of interpreter start and imports;
a child whose heartbeats stop for ``heartbeat_timeout_s`` is killed (SIGKILL, by PID) and
restarted the same way.  A restart counter per actor is kept and reported.  An actor that
fails its setup (exit code 3, e.g. a bad config) is not restarted: the run stops with an
error.  An actor that keeps dying is restarted with a back-off instead: the first
``max_restarts`` deaths in a row (each incarnation lived less than ``restart_window_s``)
are restarted at once, every further one after ``restart_backoff_s`` doubled each time up
to ``restart_backoff_max_s``; an incarnation that stays up ``restart_window_s`` clears the
streak.  So a crash loop (or an operator's ``kill -9`` twenty times in a row) neither
spins the CPU -- each restart costs a new standby's imports, about a CPU-second -- nor
takes the rest of the run down (it used to stop the whole run after 5 deaths in 10 s;
meanwhile the controller counts the run unhealthy and withdraws its VIPs).

Stopping: actors carry a ``stop_group``; groups stop in ascending order, each getting a
``stop`` message (and SIGTERM as a fallback) and ``stop_timeout_s`` to drain and exit,
then SIGKILL.  For the data path that order is steering (stops receiving, waits until
every frame is back in its free pool), then workers, then the muxer (flushes the output),
then the control plane.  Nothing waits in a fixed sleep: the ``wake`` hook (the pipeline
raises a doorbell alert) reaches an actor asleep on its futex, the next group starts as
soon as every member said ``bye``, and all processes are reaped together at the end.

Leftovers: the run folder holds ``owner.json`` (pid + process start time), so the next
run can remove the folder and region of a supervisor killed with -9 and never a live
one's (:mod:`maglev.actors.leftovers`).

Every message is a msgpack dict with ``v`` (protocol version), ``type``, ``name``.
Actor -> supervisor: ``hello``, ``hb`` (with ``stats``), ``bye`` (final ``stats``),
``fatal`` (setup or loop error), ``eof`` (steering: the input is drained), and anything
else goes to ``on_message``.  Supervisor -> actor: ``stop``, and ``actor_up`` /
``actor_down`` events (so e.g. table publication can exclude a dead worker until its
replacement reports in).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from maglev.actors.base import PROTOCOL_VERSION, ActorSpec
from maglev.actors.launch import actor_argv
from maglev.errors import MaglevError

log = logging.getLogger("maglev.supervisor")

SETUP_FAILED_RC = 3


class SupervisorError(MaglevError, RuntimeError):
    """An actor could not be started or kept running."""


@dataclass
class ActorDef:
    name: str
    target: str  # "module:Class"
    params: dict[str, Any] = field(default_factory=dict)
    cpus: list[int] | None = None
    stop_group: int = 0  # lower groups stop first
    restart: bool = True
    # Its process holds packets (a data-path actor): when it dies during the stop, or is
    # waiting for a back-off restart when the stop begins, a replacement is started to
    # drain (ActorSpec.drain_only) before its group counts as stopped.
    drain_after_death: bool = False


@dataclass
class _Child:
    d: ActorDef
    proc: subprocess.Popen | None = None
    incarnation: int = 0
    restarts: int = 0
    started_at: float = 0.0
    last_hb: float = 0.0
    hello: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    bye: bool = False
    stopping: bool = False
    stop_sent_at: float = 0.0  # monotonic: when stop() asked it to stop (diagnostics)
    bye_at: float = 0.0  # monotonic: when its bye arrived
    exit_code: int | None = None
    error: str = ""
    streak: int = 0  # deaths in a row, each incarnation up less than restart_window_s
    restart_at: float = 0.0  # monotonic: a restart delayed by the back-off is due (0: none)
    cause: str = ""  # how its last incarnation died
    drains: int = 0  # drain-only incarnations started during this stop


def make_run_dir(instance: str, region: str = "") -> str:
    """A private run folder (mode 0700) with ``owner.json`` (this process's pid and start
    time, and the region), so the next run can tell it is dead (``leftovers``)."""
    from maglev.actors.leftovers import run_base, write_owner
    from maglev.record import note

    d = tempfile.mkdtemp(prefix=f"maglev-{instance}-", dir=run_base())
    note("dir", d)  # $MAGLEV_RECORD (test harness)
    try:
        write_owner(d, instance, region)
    except OSError:
        shutil.rmtree(d, ignore_errors=True)
        raise
    return d


class Supervisor:
    """Start, watch, restart and stop a list of actors."""

    tick_s = 0.02

    def __init__(
        self,
        defs: list[ActorDef],
        *,
        instance: str = "mg1",
        run_dir: str | None = None,
        otlp_endpoint: str = "",
        log_level: str = "WARNING",
        heartbeat_timeout_s: float = 3.0,
        startup_timeout_s: float = 15.0,
        stop_timeout_s: float = 5.0,
        max_restarts: int = 5,
        restart_window_s: float = 10.0,
        restart_backoff_s: float = 0.25,
        restart_backoff_max_s: float = 4.0,
        on_message: Callable[[str, dict[str, Any]], None] | None = None,
        wake: Callable[[str], None] | None = None,
        region: str = "",
        may_hold_packets: Callable[[str], bool] | None = None,
    ):
        names = [d.name for d in defs]
        if len(set(names)) != len(names):
            raise SupervisorError(f"duplicate actor names in {names}")
        self.instance = instance
        self.own_run_dir = run_dir is None
        self.run_dir = run_dir or make_run_dir(instance, region)
        self.mailbox_endpoint = f"ipc://{self.run_dir}/supervisor.sock"
        self.otlp_endpoint = otlp_endpoint
        self.log_level = log_level
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.restart_backoff_s = restart_backoff_s
        self.restart_backoff_max_s = restart_backoff_max_s
        self.on_message = on_message
        # Called with an actor's name right after its ``stop`` message: an actor asleep on
        # something other than its mailbox (a data-path actor's futex doorbell) is woken
        # through it (the pipeline raises a doorbell alert), instead of at its next tick.
        self.wake = wake
        # Whether actor ``name`` may hold packets now (None: assume so).  ``maglev run``
        # says no before "go": a data-path actor killed by the stop's SIGTERM while still
        # importing holds nothing, and a drain replacement (a cold start) only slowed the
        # stop down.
        self.may_hold_packets = may_hold_packets
        self.children = {d.name: _Child(d) for d in defs}
        self.events: list[tuple[float, str, str]] = []  # (time, actor, what)
        self.failed: str = ""
        self.stopping = False
        self._ctx: Any = None
        self._sock: Any = None
        self._tracer: Any = None
        self.use_standby = True
        self._standby: subprocess.Popen | None = None
        self._standby_started = 0.0  # monotonic time of the last standby start
        self.standby_deaths = 0  # standby processes found dead (kill -9) and replaced
        # pid -> pidfd of each live child: polled with the mailbox, so a death wakes the
        # supervisor at once however long it sleeps (no busy polling of waitpid).
        self._pidfds: dict[int, int] = {}
        # Extra file descriptors that end a poll() early (``maglev run`` adds the
        # signal.set_wakeup_fd pipe, so Ctrl-C/SIGTERM is handled at once); drained here.
        self.wakeup_fds: list[int] = []
        self._poller: Any = None
        self._last_poll_end = 0.0  # monotonic: when the last poll() returned (_forgive_own_stall)
        self._poller_key: tuple = ()

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        import zmq

        self._ctx = zmq.Context(1)
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted actor reuses its name
        self._sock.bind(self.mailbox_endpoint)
        os.chmod(f"{self.run_dir}/supervisor.sock", 0o600)
        try:
            from maglev.telemetry import get_tracer

            self._tracer = get_tracer("maglev.supervisor")
        except ImportError:
            self._tracer = None
        for c in self.children.values():
            self._spawn(c)
        self._new_standby()

    def _spec(self, c: _Child, drain_only: bool = False) -> ActorSpec:
        return ActorSpec(
            name=c.d.name,
            target=c.d.target,
            run_dir=self.run_dir,
            instance=self.instance,
            mailbox=self.mailbox_endpoint,
            cpus=c.d.cpus,
            params=c.d.params,
            otlp_endpoint=self.otlp_endpoint,
            log_level=self.log_level,
            incarnation=c.incarnation,
            parent_pid=os.getpid(),
            drain_only=drain_only,
        )

    def _new_standby(self) -> None:
        if not self.use_standby or self.stopping:
            return
        mods = sorted({c.d.target.partition(":")[0] for c in self.children.values()})
        self._standby_started = time.monotonic()
        self._standby = subprocess.Popen(
            actor_argv("--standby", ",".join(mods)),
            start_new_session=True,
            stdin=subprocess.PIPE,
        )

    def _take_standby(self, spec: ActorSpec) -> subprocess.Popen | None:
        sb, self._standby = self._standby, None
        if sb is None or sb.poll() is not None:
            return None
        # A frozen standby (SIGSTOP) would read the spec only when continued: the new actor
        # was killed at the start-up timeout (15 s of a dead actor), then started cold.
        self._kill(sb, signal.SIGCONT)
        try:
            sb.stdin.write((spec.to_json() + "\n").encode())
            sb.stdin.close()
        except OSError:
            self._kill(sb)
            sb.wait(timeout=5)
            return None
        return sb

    def _release_standby(self) -> subprocess.Popen | None:
        """Close the standby's pipe (end of input: it exits by itself); return it unreaped."""
        sb, self._standby = self._standby, None
        if sb is None:
            return None
        try:
            sb.stdin.close()
        except OSError:
            self._kill(sb)
        return sb

    def _reap(self, proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            proc.wait(timeout=5)

    def _close_standby(self) -> None:
        sb = self._release_standby()
        if sb is not None:
            self._reap(sb)

    def _spawn(self, c: _Child, drain_only: bool = False) -> None:
        spec = self._spec(c, drain_only)
        took = self._standby is not None
        proc = self._take_standby(spec) if c.incarnation else None
        if proc is None:
            proc = subprocess.Popen(
                actor_argv(spec.to_json()),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        if c.incarnation and took:  # used, or found dead: the next restart needs one too
            self._new_standby()
        c.proc = proc
        try:
            self._pidfds[proc.pid] = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # old kernel: deaths are seen at the next poll
            pass
        c.started_at = c.last_hb = time.monotonic()
        c.hello = False
        c.bye = False
        c.exit_code = None
        self.events.append((time.time(), c.d.name, f"started pid {c.proc.pid}"))
        log.info("actor started", extra={"kv": {"child": c.d.name, "child_pid": c.proc.pid}})

    def wait_ready(self, timeout_s: float | None = None,
                   abort: Callable[[], bool] | None = None) -> bool:
        """Block until every actor said hello (True); raise if one failed first.  Returns
        False as soon as ``abort()`` is true (a stop requested during start-up)."""
        deadline = time.monotonic() + (timeout_s or self.startup_timeout_s)
        while not all(c.hello for c in self.children.values()):
            if abort is not None and abort():
                return False
            self.poll(0.05)
            if self.failed:
                raise SupervisorError(self.failed)
            if time.monotonic() > deadline:
                late = [n for n, c in self.children.items() if not c.hello]
                raise SupervisorError(f"actors did not start in time: {', '.join(late)}")
        return True

    # ------------------------------------------------------------------ watch
    def send(self, name: str, type_: str, **body: Any) -> None:
        import zmq

        msg = msgpack.packb({"v": PROTOCOL_VERSION, "type": type_, **body}, use_bin_type=True)
        try:
            self._sock.send_multipart([name.encode(), msg], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # actor not connected (yet / any more)
            log.debug("send failed", extra={"kv": {"actor": name, "error": exc}})

    def broadcast(self, type_: str, **body: Any) -> None:
        for n, c in self.children.items():
            if c.hello and c.proc is not None and c.proc.poll() is None:
                self.send(n, type_, **body)

    def _forget_pidfd(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def poll(self, timeout_s: float = 0.0) -> None:
        """Wait up to ``timeout_s`` for mailbox traffic or a child's death, handle the
        messages, then check every child (deaths, heartbeats)."""
        import zmq

        # One poller while the set of descriptors stays the same (rebuilt after a death,
        # a restart or a new wake-up fd): ``maglev run`` polls 20 times a second.
        key = (self._sock, *self._pidfds.values(), None, *self.wakeup_fds)
        if self._poller_key != key:
            poller = zmq.Poller()
            poller.register(self._sock, zmq.POLLIN)
            for fd in self._pidfds.values():
                poller.register(fd, zmq.POLLIN)
            for fd in self.wakeup_fds:
                poller.register(fd, zmq.POLLIN)
            self._poller, self._poller_key = poller, key
        due = [c.restart_at for c in self.children.values() if c.restart_at]
        if due:  # a delayed restart (back-off) is not made late by a long wait
            timeout_s = max(0.0, min(timeout_s, min(due) - time.monotonic()))
        t0 = time.monotonic()
        events = dict(self._poller.poll(int(timeout_s * 1000)))
        self._forgive_own_stall(t0, time.monotonic(), timeout_s)
        for fd in self.wakeup_fds:
            if fd in events:
                try:
                    while os.read(fd, 4096):
                        pass
                except OSError:  # empty (non-blocking) or closed
                    pass
        if self._sock in events:
            self._recv_all()
        self._check_children({pid for pid, fd in self._pidfds.items() if fd in events})

    # Longer than this without watching (outside poll(), or past its timeout inside it):
    # the supervisor itself did not run.
    own_stall_s = 1.0

    def _forgive_own_stall(self, t0: float, t1: float, timeout_s: float) -> None:
        """Time the supervisor itself did not run does not count against the actors'
        heartbeats.  A supervisor frozen for 5 s (SIGSTOP, a paused VM, a starved process
        under load) found every actor silent when it woke -- their heartbeats were still
        on their way through its ZeroMQ thread, frozen with it -- and killed them all
        (every actor of a ``maglev run`` restarted, 38659 packets of dead workers dropped)."""
        last, self._last_poll_end = self._last_poll_end, t1
        if not last:
            return
        stalled = (t0 - last) + max(0.0, (t1 - t0) - timeout_s)
        if stalled > self.own_stall_s:
            for c in self.children.values():
                c.last_hb = min(t1, c.last_hb + stalled)
            log.warning("the supervisor did not run for a while; heartbeats missed meanwhile are not held "
                        "against the actors", extra={"kv": {"stalled_s": round(stalled, 2)}})

    def _recv_all(self) -> None:
        """Handle every mailbox message waiting now."""
        import zmq

        while True:
            try:
                ident, raw = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue  # wrong frame count: not one of ours
            self._dispatch(ident.decode(errors="replace"), raw)

    def _read_mailbox(self, timeout_s: float, until: Callable[[], bool]) -> None:
        """Handle mailbox messages only (no child checks) until ``until()`` or the timeout."""
        import zmq

        deadline = time.monotonic() + timeout_s
        while not until():
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                return
            self._recv_all()

    def _dispatch(self, name: str, raw: bytes) -> None:
        try:
            msg = msgpack.unpackb(raw, raw=False)
            if not isinstance(msg, dict) or msg.get("v") != PROTOCOL_VERSION:
                raise ValueError("not a version-1 message")
        except Exception as exc:
            log.warning("bad message dropped", extra={"kv": {"from": name, "error": exc}})
            return
        c = self.children.get(name)
        if c is None:
            return
        # A message from a previous incarnation (still queued) must not count for the new one.
        if c.proc is not None and msg.get("pid") not in (None, c.proc.pid):
            return
        t = msg.get("type")
        now = time.monotonic()
        c.last_hb = now
        if isinstance(msg.get("stats"), dict):
            c.stats = msg["stats"]
        if t == "hello":
            c.hello = True
            self.events.append((time.time(), name, f"ready (incarnation {c.incarnation})"))
            self.broadcast("actor_up", actor=name, incarnation=c.incarnation)
        elif t == "bye":
            c.bye = True
            c.bye_at = time.monotonic()
        elif t == "fatal":
            c.error = str(msg.get("error", "unknown error"))
            log.error("actor reported a fatal error", extra={"kv": {"actor": name, "error": c.error}})
        if t not in ("hello", "hb", "bye") and self.on_message is not None:
            self.on_message(name, msg)

    def _check_standby(self, now: float) -> None:
        """A standby killed while it waits (kill -9 of every process of a run) is reaped and
        replaced: before, it stayed a zombie and every later restart was a cold start (the
        imports, ~1 s more of a dead worker's flows counted ``owner_stalled``).  At most one
        replacement a second, so a standby that cannot start does not spin."""
        sb = self._standby
        if sb is None or self.stopping or now - self._standby_started < 1.0 or sb.poll() is None:
            return
        self._standby = None
        self.standby_deaths += 1
        self.events.append((time.time(), "standby", f"died ({sb.returncode}); started another"))
        log.warning("standby process died; starting another", extra={"kv": {"exit": sb.returncode}})
        self._new_standby()

    def _check_children(self, exited: set[int] | None = None) -> None:
        """Deaths and missed heartbeats.  ``exited``: the children whose pidfd the poll saw
        readable; a child with a pidfd that is not among them is alive, so it costs no
        waitpid() (a pidfd stays readable once its process exited: a death between the
        poll and here is seen at the next poll)."""
        now = time.monotonic()
        self._check_standby(now)
        for c in self.children.values():
            if c.proc is None:
                if c.restart_at and now >= c.restart_at and not self.stopping:
                    c.restart_at = 0.0
                    self._restart(c, c.cause)
                continue
            pid = c.proc.pid
            if exited is not None and pid in self._pidfds and pid not in exited:
                rc = c.proc.returncode  # set if something else reaped it meanwhile
            else:
                rc = c.proc.poll()
            if rc is not None:
                self._forget_pidfd(c.proc.pid)
            if rc is None:
                limit = self.heartbeat_timeout_s if c.hello else self.startup_timeout_s
                if not c.stopping and not self.stopping and now - c.last_hb > limit:
                    log.error("actor stopped heart-beating; killing it", extra={"kv": {"actor": c.d.name}})
                    self._kill(c.proc)
                continue
            c.exit_code = rc
            if c.stopping or self.stopping:
                continue
            self._on_death(c, rc, now)

    def _on_death(self, c: _Child, rc: int, now: float) -> None:
        how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        self.events.append((time.time(), c.d.name, f"died ({how})"))
        log.warning("actor died", extra={"kv": {"actor": c.d.name, "how": how}})
        self.broadcast("actor_down", actor=c.d.name)
        if rc == SETUP_FAILED_RC:
            if not c.error:  # its "fatal" message (sent before it exited) may still be in flight
                self._read_mailbox(1.0, until=lambda: bool(c.error))
            self.failed = f"{c.d.name} failed to start: {c.error or how}"
            c.proc = None
            return
        if not c.d.restart:
            if rc != 0:
                self.failed = f"{c.d.name} died ({how}) and is not restartable"
            c.proc = None
            return
        # A crash loop is restarted with a back-off, never given up on: the streak counts
        # deaths of incarnations that did not stay up restart_window_s.
        c.streak = c.streak + 1 if now - c.started_at < self.restart_window_s else 1
        c.proc = None
        c.cause = how
        if c.streak > self.max_restarts:
            delay = min(self.restart_backoff_max_s,
                        self.restart_backoff_s * 2 ** (c.streak - self.max_restarts - 1))
            c.restart_at = now + delay
            self.events.append((time.time(), c.d.name, f"restart in {delay:.2f} s (death {c.streak} in a row)"))
            log.warning("actor keeps dying; restarting it after a back-off",
                        extra={"kv": {"actor": c.d.name, "deaths_in_a_row": c.streak, "delay_s": round(delay, 2)}})
            return
        self._restart(c, how)

    def _restart(self, c: _Child, cause: str) -> None:
        c.restarts += 1
        c.incarnation += 1
        if self._tracer is not None:
            with self._tracer.start_as_current_span("supervisor.restart") as span:
                span.set_attribute("maglev.actor", c.d.name)
                span.set_attribute("maglev.cause", cause)
                span.set_attribute("maglev.restarts", c.restarts)
        self._spawn(c)

    @staticmethod
    def _kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass

    # ------------------------------------------------------------------ queries
    @property
    def restarts(self) -> dict[str, int]:
        return {n: c.restarts for n, c in self.children.items()}

    def stats(self) -> dict[str, dict[str, Any]]:
        return {n: c.stats for n, c in self.children.items()}

    def pid(self, name: str) -> int | None:
        c = self.children[name]
        return c.proc.pid if c.proc is not None else None

    def alive(self, name: str) -> bool:
        c = self.children[name]
        return c.proc is not None and c.proc.poll() is None and c.hello

    # ------------------------------------------------------------------ stop
    def stop(self, reason: str = "stop") -> None:
        """Stop every actor, group by group; always returns with no child left."""
        self.stopping = True
        pending = set()
        for c in self.children.values():
            if c.restart_at:  # a restart delayed by the back-off is not made any more
                pending.add(c.d.name)  # (but one that holds packets gets its drain)
            c.restart_at = 0.0
            # A frozen process (SIGSTOP, a debugger) acts on neither the stop message nor
            # SIGTERM: the stop waited 7 s for it, then killed it with what waited on its
            # rings (and a frozen muxer held up the workers' drain).  Every one, now.
            if c.proc is not None and c.proc.poll() is None:
                self._kill(c.proc, signal.SIGCONT)
        # The standby holds nothing (no region, no socket), and one started moments ago
        # reads its pipe only after ~1 s of imports: kill it, reap it at the end.
        standby, self._standby = self._standby, None
        if standby is not None:
            self._kill(standby)
            try:
                standby.stdin.close()
            except OSError:
                pass
        groups = sorted({c.d.stop_group for c in self.children.values()})
        for g in groups:
            members = [c for c in self.children.values() if c.d.stop_group == g]
            for c in members:
                c.stopping = True
                c.stop_sent_at = time.monotonic()
                if self._needs_drain(c, pending):
                    self._start_drain(c)
                    continue
                if c.proc is not None and c.proc.poll() is None:
                    if c.hello:
                        self.send(c.d.name, "stop", reason=reason)
                    else:  # still starting: not connected yet, a message would be lost
                        self._kill(c.proc, signal.SIGTERM)
                    if self.wake is not None:
                        try:
                            self.wake(c.d.name)
                        except Exception as exc:  # the stop message and SIGTERM still work
                            log.warning("wake failed", extra={"kv": {"actor": c.d.name, "error": exc}})
            self._await_exit(members, self.stop_timeout_s, signal.SIGTERM, drain=True)
        # Everyone said bye (or was killed): reap them all at once, with a deadline.
        self._await_exit([c for c in self.children.values() if c.proc is not None], 2.0, signal.SIGKILL,
                         wait_for_exit=True)
        if standby is not None:
            self._reap(standby)

    # Drain-only incarnations one actor gets in one stop (each one killed in turn gets
    # another, up to this many): bounded, so a stop always ends.
    max_drains = 2

    def _needs_drain(self, c: _Child, pending: set[str] | frozenset[str] = frozenset()) -> bool:
        """``c`` holds packets and has no process left to drain them: it died (killed, or
        failed; not at setup) without saying ``bye``, or its back-off restart was pending."""
        if not (c.d.drain_after_death and c.d.restart) or c.bye or c.drains >= self.max_drains:
            return False
        if self.may_hold_packets is not None and not self.may_hold_packets(c.d.name):
            return False
        if c.proc is None:
            return c.d.name in pending
        rc = c.proc.poll()  # 0: it drained and exited (its bye may still be on its way)
        return rc is not None and rc not in (0, SETUP_FAILED_RC)

    def _start_drain(self, c: _Child) -> None:
        how = f"exit code {c.proc.returncode}" if c.proc is not None else "its restart was pending"
        if c.proc is not None:
            self._forget_pidfd(c.proc.pid)
        c.drains += 1
        c.restarts += 1
        c.incarnation += 1
        self.events.append((time.time(), c.d.name, f"drain after a death during the stop ({how})"))
        log.warning("actor died during the stop; starting a replacement to drain what it held",
                    extra={"kv": {"actor": c.d.name, "how": how}})
        self._spawn(c, drain_only=True)

    def _await_exit(self, members: list[_Child], timeout_s: float, fallback: int,
                    wait_for_exit: bool = False, drain: bool = False) -> None:
        """Wait until every member said ``bye`` (it has drained and released its resources;
        only interpreter shutdown is left, reaped at the end of :meth:`stop` with the others
        in parallel) or exited; SIGTERM then SIGKILL the late ones.  ``drain``: a member
        that dies first without ``bye`` gets a drain-only replacement (``_needs_drain``),
        waited for in its turn."""
        deadline = time.monotonic() + timeout_s
        sent_fallback = False
        while True:
            if drain:
                for c in members:
                    if self._needs_drain(c):
                        self._start_drain(c)
                        deadline, sent_fallback = time.monotonic() + timeout_s, False
            alive = [c for c in members if c.proc is not None and c.proc.poll() is None
                     and (wait_for_exit or not c.bye)]
            if not alive:
                break
            now = time.monotonic()
            if now > deadline:
                if sent_fallback:
                    for c in alive:
                        log.error("actor did not stop; killing", extra={"kv": {"actor": c.d.name}})
                        self._kill(c.proc)
                    for c in alive:
                        c.proc.wait(timeout=5)
                    if drain:  # what they held is drained by a replacement, if any is left
                        drain = any(self._needs_drain(c) for c in alive)
                        if drain:
                            continue
                    break
                for c in alive:  # the mailbox may be wedged: try the signal too
                    self._kill(c.proc, signal.SIGCONT)  # (a frozen process acts on no signal but KILL)
                    self._kill(c.proc, fallback)
                sent_fallback = True
                deadline = now + 2.0
            self.poll(0.02)
        # Collect final stats that are still in flight: an actor that exited cleanly sent
        # its ``bye`` (with its last stats) before exiting, but the message may still be on
        # its way through the mailbox socket on a busy machine; wait for those briefly.
        self.poll(0.0)
        late = time.monotonic() + 1.0
        while time.monotonic() < late and any(
                c.proc is not None and c.proc.poll() == 0 and not c.bye for c in members):
            self.poll(0.02)
        for c in members:
            if c.proc is not None:
                c.exit_code = c.proc.poll()

    def close(self) -> None:
        """Stop (if needed), close the mailbox and remove the run directory."""
        if not self.stopping:
            self.stop("close")
        self._close_standby()
        for c in self.children.values():
            if c.proc is not None and c.proc.poll() is None:
                self._kill(c.proc)
                c.proc.wait(timeout=5)
        for pid in list(self._pidfds):
            self._forget_pidfd(pid)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self.own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
