"""The controller: decides which VIPs this forwarder announces over BGP (paper 2.1-2.2).

Design
------
In the paper each Maglev machine runs a controller beside the forwarder: it announces the
VIPs to the routers over BGP only while the forwarder is healthy, and withdraws them when it
is not, so the routers' ECMP stops sending packets to a broken machine.  Here the
controller lives in the supervisor process (``maglev run`` itself), because that process
already knows what the rule needs:

* **Are all actors alive?**  The supervisor's children: running, said hello, heartbeat
  younger than ``heartbeat_limit_s``.  The BGP speaker itself is left out of this test (if it
  dies its sessions close and the routers withdraw anyway; when it is back, the controller
  re-sends what it wants announced).
* **Is the data path making progress?**  From the shared-memory region, without asking
  anyone: a worker whose rx ring holds descriptors while its burst counter has not moved for
  ``stall_s`` is stuck; the same for the muxer and its tx rings, and for steering and the
  rings it reclaims from.  A ring that is empty is not a stall (no traffic is fine).
* **Does the VIP have a healthy backend?**  Only the config manager knows (health verdicts
  from the prober, weights from the config).  The controller asks it over the supervisor
  mailbox every ``query_s`` (``controller.query`` -> ``controller.vips``); the config
  manager answers with, per VIP *address*, whether at least one of that address's VIPs
  (ports/protocols) has a backend that is up and has weight > 0.  An address is announced
  when any of its services can serve: withdrawing it because one port's pool is down would
  black-hole the healthy ports too.

Decisions are debounced: the forwarder counts as unhealthy only after a problem lasted
``withdraw_after_s`` (a worker killed with -9 is replaced in ~0.3 s and should not make the
routers move every flow twice), and healthy again only after ``announce_after_s`` of no
problem.  VIP-health changes withdraw at once (the prober already applies rise/fall, and a
VIP with no backend must not attract traffic), but a VIP that keeps losing its last backend
is re-announced later each time (:class:`FlapDamping`): its withdraws count as a penalty
that halves every ``flap_half_life_s``, and the re-announce waits ``reannounce_hold_s`` x
2^(penalty-1), at most ``reannounce_hold_max_s``, after the withdraw.  A backend flapping
every second then moves the routers' ECMP ever more rarely instead of every second; a
one-off outage is re-announced as soon as the backend is back.

Withdraw everything: while unhealthy; while drained (``maglev ctl drain-instance``, undone by
``resume-instance``); and in :meth:`Controller.shutdown`, called before a clean stop --
withdraw, wait ``shutdown_wait_s`` so the routers move the traffic to the other instances
while this one still forwards, then let the supervisor stop the actors (the BGP speaker
stops first and sends CEASE).  A SIGKILL of ``maglev run`` needs no controller: the kernel
closes the BGP TCP connections and the routers withdraw on their own.

The drained state is persisted (issue 16.5, ``maglev/control/instance.py``): a new
``maglev run`` of the instance starts drained when ``<state dir>/drained.json`` says so
(:meth:`Controller.bind`, before anything is announced); a file that cannot be read counts
as drained, with an error naming the file.

Events: the speaker's ``bgp.event`` messages (session states, route announce/withdraw) and
the controller's own decisions (``controller`` events: healthy/unhealthy with reasons,
drained/resumed) are sent to the config manager, which publishes them on the control
socket's event stream, topic ``bgp``.  The controller also pushes its state there every
``query_s`` so ``maglev ctl status`` shows it.

Graceful restart: a (re)started speaker holds End-of-RIB (routers that kept our routes
flush every one not announced again when it comes).  The controller sends it
``bgp.ready`` once per speaker incarnation, right after the announces of its first real
decision (healthy with fresh VIP health, drained, or stopping), or after
``bgp_ready_after_s`` without one (docs/bgp.md, "Graceful restart").

Config changes: when the generation in ``controller.vips`` changes, the controller sends
the speaker ``bgp.reload``; the speaker re-reads ``[bgp]`` and resets only the sessions
whose settings changed (none when ``[bgp]`` is the same).

The config-manager side of that mailbox exchange (``controller.query``/``controller.vips``,
``controller.drain``, ``controller.publish``), the ops ``drain-instance``/``resume-instance``
and the table fingerprints of ``status`` are the config manager's:
``maglev/actors/config_manager.py``.  This module only judges and announces.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from maglev.control.instance import drain_path, load_drained

log = logging.getLogger("maglev.controller")

BGP_ACTOR = "bgp"
CONFIG_ACTOR = "config"
EVENT_TOPIC = "bgp"


# --------------------------------------------------------------------------- pure rules


def vip_prefix(address: str) -> str:
    """``203.0.113.10`` -> ``203.0.113.10/32``; IPv6 -> ``/128`` (a host route per VIP)."""
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def serving_addresses(config: Any, down: Iterable[tuple[str, str]]) -> dict[str, bool]:
    """Per VIP address (as a host prefix): can at least one of its VIPs serve, i.e. does it
    have a backend that is not down and has weight > 0?"""
    down_set = set(down)
    out: dict[str, bool] = {}
    for v in config.vips:
        ok = any(b.weight > 0 and (v.key, b.key) not in down_set for b in v.backends)
        p = vip_prefix(v.address)
        out[p] = out.get(p, False) or ok
    return out


@dataclass
class ChildView:
    """What the health rule needs to know about one actor."""

    name: str
    running: bool
    hb_age_s: float


def actor_problems(children: Iterable[ChildView], heartbeat_limit_s: float) -> list[str]:
    """Reasons the actors are not all alive (empty = all alive)."""
    out = []
    for c in children:
        if c.name == BGP_ACTOR:
            continue
        if not c.running:
            out.append(f"{c.name} is not running")
        elif c.hb_age_s > heartbeat_limit_s:
            out.append(f"{c.name} sent no heartbeat for {c.hb_age_s:.1f} s")
    return out


@dataclass
class _Progress:
    counter: int = -1
    since: float = 0.0


class StallDetector:
    """A consumer is stalled when its input has work queued and its progress counter has not
    moved for ``stall_s``.  Fed ``(name, queued, counter)`` samples; pure, clock passed in."""

    def __init__(self, stall_s: float = 2.0):
        self.stall_s = stall_s
        self._seen: dict[str, _Progress] = {}

    def sample(self, now: float, samples: Iterable[tuple[str, int, int]]) -> list[str]:
        out = []
        for name, queued, counter in samples:
            p = self._seen.setdefault(name, _Progress(counter, now))
            if counter != p.counter or queued == 0:
                p.counter, p.since = counter, now
                continue
            if now - p.since >= self.stall_s:
                out.append(f"{name} made no progress for {now - p.since:.1f} s with {queued} packets queued")
        return out


class Debounce:
    """Healthy/unhealthy with hold-downs: unhealthy after ``down_after_s`` of problems,
    healthy after ``up_after_s`` without.  Starts unhealthy (nothing announced at start)."""

    def __init__(self, down_after_s: float, up_after_s: float):
        self.down_after_s = down_after_s
        self.up_after_s = up_after_s
        self.healthy = False
        self._since: float | None = None  # when the current disagreement started

    def update(self, now: float, ok: bool) -> bool:
        if ok == self.healthy:
            self._since = None
            return self.healthy
        if self._since is None:
            self._since = now
        if now - self._since >= (self.up_after_s if ok else self.down_after_s):
            self.healthy = ok
            self._since = None
        return self.healthy


class FlapDamping:
    """Route-flap damping for the controller's re-announces (pure, clock passed in).

    Only re-announces are delayed; a withdraw is never held back."""

    def __init__(self, hold_s: float = 1.0, hold_max_s: float = 30.0, half_life_s: float = 30.0):
        self.hold_s = hold_s
        self.hold_max_s = hold_max_s
        self.half_life_s = half_life_s
        self._penalty: dict[str, tuple[float, float]] = {}  # prefix -> (penalty, at)
        self._withdrawn: dict[str, float] = {}  # prefix -> when its last health withdraw was

    def penalty(self, prefix: str, now: float) -> float:
        pen, at = self._penalty.get(prefix, (0.0, now))
        return pen * 0.5 ** ((now - at) / self.half_life_s) if self.half_life_s > 0 else pen

    def withdrawn(self, prefix: str, now: float) -> None:
        """``prefix`` was withdrawn because no backend could serve it."""
        self._penalty[prefix] = (self.penalty(prefix, now) + 1.0, now)
        self._withdrawn[prefix] = now

    def hold(self, prefix: str, now: float) -> float:
        """Seconds ``prefix`` must still wait before it may be announced again (0 = may)."""
        at = self._withdrawn.get(prefix)
        if at is None:
            return 0.0
        pen = self.penalty(prefix, now)
        wait = min(self.hold_max_s, self.hold_s * 2.0 ** max(0.0, pen - 1.0))
        left = at + wait - now
        if left <= 0:
            if pen < 0.05:  # forgotten: keeps the tables small
                self._penalty.pop(prefix, None)
                self._withdrawn.pop(prefix, None)
            return 0.0
        return left


def desired(healthy: bool, drained: bool, serving: dict[str, bool]) -> set[str]:
    """The prefixes to announce."""
    if not healthy or drained:
        return set()
    return {p for p, ok in serving.items() if ok}


# --------------------------------------------------------------------------- controller


@dataclass
class ControllerOptions:
    heartbeat_limit_s: float = 2.5  # actors beat every 1 s; the supervisor kills at 3 s
    stall_s: float = 2.0
    withdraw_after_s: float = 1.0
    announce_after_s: float = 1.0
    query_s: float = 0.5
    vips_stale_s: float = 5.0  # VIP health older than this is not trusted for an announce
    shutdown_wait_s: float = 1.0
    reannounce_hold_s: float = 1.0  # flap damping: the first re-announce after a VIP-health withdraw
    reannounce_hold_max_s: float = 30.0
    flap_half_life_s: float = 30.0
    # A (re)started speaker holds End-of-RIB until `bgp.ready` (graceful restart: an early
    # one makes the routers flush the routes they kept).  Sent once the first decision
    # is made (healthy with fresh VIP health, drained, or stopping), or after this long.
    bgp_ready_after_s: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)


class Controller:
    """Hook it into a run: ``ctrl = Controller(); p = Pipeline(opts, on_message=ctrl.on_message);
    ctrl.bind(p)``, then ``ctrl.tick()`` in the run loop and ``ctrl.shutdown()`` before
    ``p.stop()``."""

    def __init__(self, options: ControllerOptions | None = None, clock: Callable[[], float] = time.monotonic):
        self.o = options or ControllerOptions()
        self.clock = clock
        self.pipeline: Any = None
        self.supervisor: Any = None
        self.region: Any = None
        self.stalls = StallDetector(self.o.stall_s)
        self.health = Debounce(self.o.withdraw_after_s, self.o.announce_after_s)
        self.damping = FlapDamping(self.o.reannounce_hold_s, self.o.reannounce_hold_max_s, self.o.flap_half_life_s)
        self.held: dict[str, float] = {}  # prefixes wanted but held back by the damping -> seconds left
        self.drained = False
        self.drain_seq = 0  # the config manager's sequence of the last drain command applied
        self.problems: list[str] = []
        self.serving: dict[str, bool] = {}
        self.vips_at = 0.0
        self.vips_generation = 0
        self.announced: set[str] = set()  # what we told the speaker to announce
        self.bgp_incarnation = -1
        self.bgp_ready = False  # bgp.ready sent to the current speaker incarnation
        self.bgp_since = 0.0  # when the controller first saw that incarnation
        self.bgp_peers: list[dict[str, Any]] = []
        self.last_query = 0.0
        self.transitions = 0
        self.withdraw_reason = "starting"
        self.stopping = False
        self.commands_failed = 0

    # -- wiring ------------------------------------------------------------------------
    def bind(self, pipeline: Any) -> Controller:
        self.pipeline = pipeline
        self.supervisor = pipeline.supervisor
        self.region = pipeline.region
        config = getattr(pipeline, "config", None)
        if config is not None:  # a drained instance starts drained: nothing is ever announced
            drained, problem = load_drained(config.instance.name)
            if problem:
                log.error(problem)
            if drained:
                self.drained = True
                self.withdraw_reason = "instance drained"
                log.warning("instance drained (persisted in %s): VIPs stay withdrawn until "
                            "`maglev ctl resume-instance`", drain_path(config.instance.name))
        return self

    @property
    def has_bgp(self) -> bool:
        return self.supervisor is not None and BGP_ACTOR in self.supervisor.children

    def on_message(self, name: str, msg: dict[str, Any]) -> None:
        """Mailbox messages from actors (the supervisor's ``on_message``)."""
        t = msg.get("type")
        if t == "bgp.event" and name == BGP_ACTOR:
            body = {k: v for k, v in msg.items() if k not in ("v", "type", "name", "pid")}
            self.publish(body)
        elif t == "bgp.reply" and name == BGP_ACTOR and msg.get("op") in ("bgp.announce", "bgp.withdraw", "bgp.state", "bgp.ready"):
            if not msg.get("ok", False):
                self.commands_failed += 1
                log.error("BGP speaker refused a command", extra={"kv": {"error": msg.get("error")}})
            elif msg.get("op") == "bgp.state":
                self.bgp_peers = list(msg.get("peers") or [])
        elif t == "controller.vips" and name == CONFIG_ACTOR:
            vips = msg.get("serving")
            if isinstance(vips, dict):
                self.serving = {str(k): bool(v) for k, v in vips.items()}
                self.vips_at = self.clock()
                gen = int(msg.get("generation") or 0)
                if self.vips_generation and gen != self.vips_generation and self.has_bgp:
                    # A new config (apply, reload, SIGHUP): the speaker applies what changed
                    # in [bgp], and nothing at all when [bgp] did not change.
                    self.supervisor.send(BGP_ACTOR, "bgp.reload")
                self.vips_generation = gen
        elif t == "controller.drain" and name == CONFIG_ACTOR:
            seq = msg.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool):
                self.drain_seq = max(self.drain_seq, seq)
            self.set_drained(bool(msg.get("drained", True)))
            # Tell the config manager at once, so `status` shows the change now.
            self.last_query = 0.0

    def publish(self, body: dict[str, Any]) -> None:
        """An event on the control socket's stream (topic ``bgp``), via the config manager."""
        if self.supervisor is not None:
            self.supervisor.send(CONFIG_ACTOR, "controller.publish", topic=EVENT_TOPIC, body=body)

    def set_drained(self, drained: bool) -> None:
        if drained != self.drained:
            self.drained = drained
            log.warning("instance %s", "drained: withdrawing every VIP" if drained else "resumed")
            self.publish({"event": "controller.drain", "drained": drained})
        self._reconcile()

    # -- judging -----------------------------------------------------------------------
    def _children(self, now: float) -> list[ChildView]:
        out = []
        for name, c in self.supervisor.children.items():
            running = c.proc is not None and c.proc.poll() is None and c.hello
            out.append(ChildView(name, running, now - c.last_hb))
        return out

    def _progress_samples(self) -> list[tuple[str, int, int]]:
        from maglev.native import lib
        from maglev.rings import SLOT_MUXER, SLOT_STEERING, worker_slot

        r = self.region
        if r is None:
            return []
        out = []
        tx_queued = 0
        ret_queued = r.sent.count()
        for i in range(r.n_workers):
            out.append((f"worker-{i}", r.rx(i).count(), int(r.stats(worker_slot(i))[lib.MG_WS_BURSTS])))
            tx_queued += r.tx(i).count()
            ret_queued += r.ret(i).count()
        out.append(("muxer", tx_queued, int(r.stats(SLOT_MUXER)[lib.MG_MS_BURSTS])))
        out.append(("steering", ret_queued, int(r.stats(SLOT_STEERING)[lib.MG_SS_RECLAIMED])))
        return out

    def judge(self, now: float) -> list[str]:
        problems = actor_problems(self._children(now), self.o.heartbeat_limit_s)
        try:
            problems += self.stalls.sample(now, self._progress_samples())
        except Exception as exc:  # a closed region at the very end of a run
            problems.append(f"data path counters unreadable: {exc}")
        return problems

    # -- the loop ----------------------------------------------------------------------
    def tick(self) -> None:
        """Call from the run loop (every few tens of ms); cheap."""
        if self.supervisor is None or self.stopping:
            return
        now = self.clock()
        if now - self.last_query >= self.o.query_s:
            self.last_query = now
            self.supervisor.send(CONFIG_ACTOR, "controller.query", state=self.state())
            if self.has_bgp:
                self.supervisor.send(BGP_ACTOR, "bgp.state")
        self.problems = self.judge(now)
        was = self.health.healthy
        healthy = self.health.update(now, not self.problems)
        if healthy != was:
            self.transitions += 1
            reason = "; ".join(self.problems)
            if healthy:
                log.info("forwarder healthy")
            else:
                log.error("forwarder unhealthy: withdrawing every VIP", extra={"kv": {"reason": reason}})
            self.publish({"event": "controller.health", "healthy": healthy, "reasons": list(self.problems)})
        self._reconcile()

    def wanted(self) -> set[str]:
        fresh = self.vips_at and self.clock() - self.vips_at <= self.o.vips_stale_s
        serving = self.serving if fresh else {p: ok for p, ok in self.serving.items() if p in self.announced}
        if not fresh and not self.serving:
            return set()
        return desired(self.health.healthy, self.drained, serving)

    def _reconcile(self) -> None:
        if not self.has_bgp:
            return
        c = self.supervisor.children[BGP_ACTOR]
        if not (c.proc is not None and c.proc.poll() is None and c.hello):
            return
        now = self.clock()
        if c.incarnation != self.bgp_incarnation:  # a (re)started speaker knows nothing
            self.bgp_incarnation = c.incarnation
            self.announced = set()
            self.bgp_ready, self.bgp_since = False, now
        want = set() if self.stopping else self.wanted()
        for p in sorted(self.announced - want):
            reason = self._why_not(p)
            if reason == "no healthy backend":
                self.damping.withdrawn(p, now)
            self.supervisor.send(BGP_ACTOR, "bgp.withdraw", prefix=p)
            self.publish({"event": "controller.withdraw", "prefix": p, "reason": reason})
        held = {p: left for p in sorted(want - self.announced) if (left := self.damping.hold(p, now)) > 0}
        for p in sorted(held.keys() - self.held.keys()):
            self.publish({"event": "controller.hold", "prefix": p, "seconds": round(held[p], 1),
                          "penalty": round(self.damping.penalty(p, now), 2)})
        self.held = held
        want -= held.keys()
        for p in sorted(want - self.announced):
            self.supervisor.send(BGP_ACTOR, "bgp.announce", prefix=p)
            self.publish({"event": "controller.announce", "prefix": p})
        self.announced = want
        if not self.bgp_ready and (self._decided(now) or now - self.bgp_since >= self.o.bgp_ready_after_s):
            # After the announces above (one mailbox, in order): End-of-RIB follows them.
            self.bgp_ready = True
            self.supervisor.send(BGP_ACTOR, "bgp.ready")

    def _decided(self, now: float) -> bool:
        """The announce set is this run's judgement, not its "starting" default."""
        fresh = bool(self.vips_at) and now - self.vips_at <= self.o.vips_stale_s
        return self.stopping or self.drained or (self.health.healthy and fresh)

    def _why_not(self, prefix: str) -> str:
        if self.stopping:
            return "shutting down"
        if self.drained:
            return "instance drained"
        if not self.health.healthy:
            return "forwarder unhealthy: " + ("; ".join(self.problems) or "recovering")
        return "no healthy backend"

    def shutdown(self) -> None:
        """Withdraw every VIP, then give the routers ``shutdown_wait_s`` to move the traffic
        while this instance still forwards.  Call before stopping the pipeline."""
        if self.supervisor is None or self.stopping:
            return
        had = bool(self.announced)
        self.stopping = True
        self._reconcile()
        if had:
            deadline = self.clock() + self.o.shutdown_wait_s
            while self.clock() < deadline:
                self.supervisor.poll(0.05)

    def state(self) -> dict[str, Any]:
        return {
            "healthy": self.health.healthy,
            "problems": list(self.problems),
            "drained": self.drained,
            "drain_seq": self.drain_seq,
            "bgp": self.has_bgp,
            "announced": sorted(self.announced),
            "serving": dict(sorted(self.serving.items())),
            "peers": [{k: p.get(k) for k in ("peer", "asn", "state") if k in p} for p in self.bgp_peers],
            "transitions": self.transitions,
            "held": {p: round(left, 1) for p, left in sorted(self.held.items())},
        }
