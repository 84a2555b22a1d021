"""The config-manager actor: the ConfigManager behind the control sockets, in its own process.

It attaches the run's shared-memory region, resumes the last accepted config (or reads the
TOML file), publishes its tables, and serves the control protocol (maglev/control) until
stopped.  The table publisher waits only for *live* workers: the supervisor's
``actor_down``/``actor_up`` messages remove a dead worker from the set until its
replacement reports in (docs/rings.md, "Table publication").

Endpoints (each a ROUTER + PUB pair):

1. a private ``ipc://`` socket in the supervisor's run directory (unique per run) -- the
   health prober uses it, so it always reaches *this* run's config manager;
2. the well-known ``ipc://`` socket for ``maglev ctl`` (``--control`` when it is ipc, else
   ``/run/maglev/<instance>/control.sock``, see maglev/control/endpoints.py).  If the
   *default* path is held by another live instance with the same name, the actor warns and
   goes on with the private socket only; an endpoint the operator named is never skipped;
3. a ``tcp://`` endpoint (``--control`` or ``[control] endpoint``) with CURVE.  CURVE is a
   per-socket setting, which is why it is a socket of its own and the local ones stay
   key-less.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from pathlib import Path
from typing import Any

from maglev.actors.base import Actor, ActorSpec
from maglev.actors.controller import serving_addresses
from maglev.control import endpoints, optable
from maglev.control.instance import drain_path, flow_secret_warning, save_drained
from maglev.control.manager import ConfigManager
from maglev.control.protocol import NOT_FOUND, PERSIST_FAILED, ProtocolError, Reply, Request
from maglev.control.publisher import RegionPublisher, TablePublisher
from maglev.control.tables import vip_fingerprint
from maglev.errors import ControlError

log = logging.getLogger("maglev.config")

# The ops this actor serves for the supervisor's controller (owner "scaleout" in the table).
SCALEOUT_OPS = ("drain-instance", "resume-instance")


class ConfigManagerActor(Actor):
    caps_after_setup = ()  # its control sockets are bound in setup
    kind = "config"
    # wait() wakes on every socket and the mailbox; this only bounds how late a signal
    # (SIGTERM) or a vanished parent is noticed.
    idle_wait_s = 0.1

    def __init__(self, spec: ActorSpec):
        super().__init__(spec)
        self.region: Any = None
        self.manager: ConfigManager | None = None
        self.servers: list[Any] = []
        self.live: set[int] = set()
        self._poller: Any = None
        # The supervisor's controller (maglev/actors/controller.py): its last pushed state,
        # and the drain commands sent to it (sequence, intent) so a stale push cannot undo
        # what a drain reply promised.
        self.controller_state: dict[str, Any] | None = None
        self.drain_seq = 0
        self.drain_intent: bool | None = None
        self._fingerprints: tuple[int, dict[str, dict[str, Any]]] | None = None
        # A request (or the start-up) runs on a helper thread (_beating); mailbox messages
        # that must not interleave with it wait here.
        self._busy = False
        self._deferred: list[dict[str, Any]] = []
        self._outbox: list[tuple[str, dict[str, Any]]] = []  # mailbox sends of the helper thread
        self.max_busy_s = float(spec.params.get("max_busy_s", 900.0))

    # -- overridable for tests -------------------------------------------------
    def make_publisher(self) -> TablePublisher:
        from maglev.rings import Region

        self.region = Region.attach(self.params["region"])
        self.live = set(range(self.region.n_workers))
        return RegionPublisher(self.region, lambda: sorted(self.live))

    def setup(self) -> None:
        from maglev.control.server import ControlServer

        p = self.params
        source = p.get("config") or None
        instance = self.spec.instance
        state = p.get("state") or str(endpoints.state_dir(instance) / "state.json")
        publisher = self.make_publisher()
        # Opening builds and publishes the tables (seconds for the largest ones, more under
        # load): heartbeats go on meanwhile, so a restart with big tables is not "hung".
        self.manager = self._beating(
            ConfigManager.open,
            publisher,
            source_path=source,
            state_path=state,
            emit=self._emit,
            confirm_timeout=float(p.get("confirm_timeout", 2.0)),
            run_dir=self.spec.run_dir,
            restart=self.spec.incarnation > 0,
        )
        self.manager.backend_packets = self._backend_packets  # `ctl apply --dry-run` weights
        self.manager.flow_census = self._flow_census  # `ctl apply --dry-run`: exact flows
        ctl = self.manager.config.control
        # 1. The private socket in the supervisor's run directory (unique per run): the
        #    health prober and other local actors use it.
        private = f"ipc://{Path(self.spec.run_dir) / endpoints.CONTROL_SOCKET}"
        self.servers.append(ControlServer(self.handle_request, private, endpoints.events_for(private)))
        # 2. The well-known local socket for `maglev ctl`.
        explicit = p.get("control") or ctl.endpoint
        local = explicit if explicit.startswith("ipc://") else endpoints.default_control(instance)
        try:
            self.servers.append(ControlServer(self.handle_request, local, endpoints.events_for(local)))
        except ControlError as exc:
            if local == explicit or "in use" not in str(exc):
                raise
            log.warning("default control socket is held by another running instance; "
                        "use --control with the private endpoint",
                        extra={"kv": {"busy": local, "endpoint": private}})
        # 3. tcp:// with CURVE, when asked for.
        if explicit.startswith("tcp://"):
            self.servers.append(
                ControlServer(
                    self.handle_request,
                    explicit,
                    ctl.events_endpoint or endpoints.events_for(explicit),
                    server_secret_key_file=ctl.server_secret_key_file,
                    authorized_keys_file=ctl.authorized_keys_file,
                )
            )
        log.info("control plane ready", extra={"kv": {"endpoints": ",".join(s.bound_endpoint for s in self.servers),
                                                      "generation": self.manager.generation,
                                                      "resumed": self.manager.resumed}})

    def handle_request(self, req: Request) -> Reply:
        """Serve one request on a helper thread while this thread keeps beating (see
        :meth:`_beating`): any request may take seconds with big tables under load."""
        return self._beating(self._handle_request, req)

    def _handle_request(self, req: Request) -> Reply:
        assert self.manager is not None
        from maglev.observability import ops as observability

        try:  # the op and its argument names, from the one table (maglev/control/optable.py)
            owner = optable.check(req.op, req.args).owner
        except ProtocolError as exc:
            return Reply.failure(req.id, exc)
        if owner == "observability":  # stats, trace, whereis (maglev/observability/ops.py)
            return observability.handle(self, req)
        if owner == "scaleout":  # drain-instance, resume-instance
            return self._drain_op(req)
        reply = self.manager.handle(req)
        observability.after_request(self, req, reply)  # [tracing].packet_sample_rate -> steering
        if req.op == "backends" and reply.ok:
            self._add_backend_packets(reply.result)
        if req.op == "status" and reply.ok:
            reply.result["endpoints"] = [s.bound_endpoint for s in self.servers]
            reply.result["live_workers"] = sorted(self.live)
            self._status_extra(reply.result)  # table fingerprints, controller state
        return reply

    # -- the supervisor's controller (maglev/actors/controller.py) ---------------------
    def _controller_message(self, msg: dict[str, Any]) -> bool:
        """A ``controller.*`` mailbox message from the supervisor; True when it was one."""
        t = msg.get("type")
        if not isinstance(t, str) or not t.startswith("controller."):
            return False
        if t == "controller.publish":
            topic, body = msg.get("topic"), msg.get("body")
            if isinstance(topic, str) and isinstance(body, dict):
                self._emit(topic, body)
        elif t == "controller.query":
            state = msg.get("state")
            if isinstance(state, dict):
                # The supervisor pushes its state periodically; a push sent before it applied
                # our last drain command must not undo what that command's reply promised.
                seen = state.get("drain_seq")
                if not isinstance(seen, int) or seen < self.drain_seq:
                    state = {**state, "drained": self.drain_intent if self.drain_seq else state.get("drained")}
                self.controller_state = state
            m = self.manager
            if m is not None:
                self.send("controller.vips", serving=serving_addresses(m.config, m.down_set()),
                          generation=m.generation)
        return True

    def _drain_op(self, req: Request) -> Reply:
        """``drain-instance`` / ``resume-instance``: persist, then tell the controller."""
        drained = req.op == "drain-instance"
        state = self.controller_state
        if state is None:
            return Reply.failure(req.id, ProtocolError(
                NOT_FOUND, "no controller in this process tree (not started by `maglev run`?)"))
        try:  # persisted first: the reply promises that a restart keeps it
            save_drained(self.spec.instance, drained)
        except OSError as exc:
            return Reply.failure(req.id, ProtocolError(
                PERSIST_FAILED, f"cannot persist the drained state in {drain_path(self.spec.instance)}: "
                                f"{exc.strerror or exc}; nothing changed"))
        self.drain_seq += 1
        self.drain_intent = drained
        self.send("controller.drain", drained=drained, seq=self.drain_seq)
        state = self.controller_state = {**state, "drained": drained}
        return Reply(req.id, True, result={"drained": drained, "announced": state.get("announced", []),
                                           "note": "VIPs are withdrawn within a second" if drained
                                           else "VIPs are announced again while the instance is healthy"})

    def _status_extra(self, result: dict[str, Any]) -> None:
        """Add table fingerprints, warnings and the controller's state to a ``status`` result."""
        m = self.manager
        assert m is not None
        # A fingerprint hashes the whole table (256 KiB for 65537 slots): keep them per
        # generation so a status poll over many VIPs costs nothing after the first.
        if self._fingerprints is None or self._fingerprints[0] != m.generation:
            self._fingerprints = (m.generation, {})
        cache = self._fingerprints[1]
        tables = []
        for v in m.config.vips:
            row = cache.get(v.key)
            if row is None:
                try:
                    t = m.table_for(v.key)
                    fp = vip_fingerprint(v, t, m.config.instance.flow_hash_secret)
                    row = {"vip": v.key, "size": t.size, "backends": len(t.names), "fingerprint": fp}
                except Exception as exc:  # never fail status for one table
                    row = {"vip": v.key, "error": str(exc)}
                cache[v.key] = row
            tables.append(dict(row))
        result["tables"] = tables
        w = flow_secret_warning(m.config, m.source_path)
        result["warnings"] = [w] if w else []
        result["controller"] = self.controller_state

    def _backend_packets(self) -> dict[tuple[str, str], int]:
        """(vip key, backend address) -> packets the workers forwarded to it (the
        traffic weights of ``preview-config``'s flows estimate)."""
        if self.region is None:
            return {}
        from maglev.observability.metrics import collect

        snap = collect(self.region, self.spec.run_dir, instance=self.spec.instance)
        return {(v["vip"], b["backend"]): b["packets"] for v in snap["vips"] for b in v["backends"]}

    def _flow_census(self, ids: list[int], published: bytes) -> tuple[dict[int, int] | None, dict[str, Any]]:
        """Live connection-table entries per backend id over every worker's shared table
        (``preview-config``'s exact flow count; maglev/control/preview.py), read-only.
        (None, why) when the tables are worker-private or any of them cannot be read: the
        preview then estimates."""
        cfg = self.manager.config
        if not cfg.conntrack.shared:
            return None, {"used": False, "why": "conntrack.shared = false: the tables are worker-private"}
        if self.region is None:
            return None, {"used": False, "why": "no shared region attached"}
        from maglev.datapath.tables import read_tables
        from maglev.rings.conntrack_shm import census_instance, identity_tag

        h = read_tables(published).header
        inst = cfg.instance.name
        tag = identity_tag(str(endpoints.state_dir(inst)), self.params.get("ct_config", ""))
        n = int(self.region.n_workers)
        live = census_instance(inst, tag, n, (int(h["hash_k0"]), int(h["hash_k1"])),
                               int(h["tcp_timeout_ms"]), int(h["udp_timeout_ms"]), ids)
        c = live.census
        info: dict[str, Any] = {"used": live.tables == n, "tables": live.tables, "workers": n,
                                "live": c.live, "expired": c.expired, "torn": c.torn,
                                "unknown": c.unknown, "changed_during_scan": c.changed,
                                "scan_ms": live.scan_ms, "problems": live.problems}
        if live.tables < n:
            info["why"] = f"{n - live.tables} of {n} worker tables unreadable: " + "; ".join(live.problems)
            return None, info
        return c.counts, info

    def _add_backend_packets(self, result: dict[str, Any]) -> None:
        """Fill ``packets``/``bytes`` of a ``backends`` reply from the workers' counters
        (the same snapshot ``stats`` serves); left null when no region is attached."""
        if self.region is None:
            return
        from maglev.observability.metrics import collect

        snap = collect(self.region, self.spec.run_dir, instance=self.spec.instance)
        by_vip = {v["vip"]: v for v in snap["vips"]}
        vip = by_vip.get(result["vip"])
        if vip is None:
            return
        counted = {b["backend"]: b for b in vip["backends"]}
        for row in result["backends"]:
            b = counted.get(row["address"])
            if b is not None:
                row["packets"], row["bytes"] = b["packets"], b["bytes"]

    def _emit(self, topic: str, body: dict[str, Any]) -> None:
        for s in self.servers:
            s.publish(topic, body)

    def step(self) -> int:
        return sum(s.serve_ready() for s in self.servers)

    def wait(self, timeout_s: float) -> None:
        """Block until a request arrives on any control socket or a message in the mailbox,
        at most ``timeout_s``: one ``zmq.Poller`` over every ROUTER and the mailbox, so a
        request on any socket is served at once (no sleep slice) and a ``stop`` or
        ``actor_down`` from the supervisor is handled at once too."""
        import zmq

        if self._poller is None:
            self._poller = zmq.Poller()
            for s in self.servers:
                self._poller.register(s.router, zmq.POLLIN)
            if self.mailbox is not None:
                self._poller.register(self.mailbox, zmq.POLLIN)
        ready = dict(self._poller.poll(max(0, int(timeout_s * 1000))))
        if self.mailbox is not None and self.mailbox in ready:
            self.tick(time.monotonic())  # the mailbox (stop, actor_up/down), heartbeat, parent

    def handle(self, msg: dict[str, Any]) -> None:
        """Supervisor events: keep the set of workers the publisher waits for."""
        if self._busy and msg.get("type") not in ("actor_down", "actor_up"):
            self._deferred.append(msg)  # after the request (see _beating)
            return
        if self._controller_message(msg):  # the supervisor's controller (events, VIP health)
            return
        actor = str(msg.get("actor", ""))
        if not actor.startswith("worker-") or not (actor[7:].isascii() and actor[7:].isdigit()):
            return
        i = int(actor[7:])
        # A new set each time (never changed in place): a request on the helper thread may
        # be reading it (``sorted(self.live)``) while this thread handles the mailbox.
        if msg.get("type") == "actor_down":
            self.live = self.live - {i}
        elif msg.get("type") == "actor_up" and (self.region is None or i < self.region.n_workers):
            self.live = self.live | {i}

    def _beating(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """``fn(*args, **kw)`` on a helper thread while this thread keeps the heartbeats
        going; the result or the exception comes back as if called here.

        Every request and the start-up run this way (session 8).  Before, only the table
        build did: a change of big tables still went 4 s and more without a heartbeat in
        what followed the build on the actor thread -- the publication waits up to 2 s for
        the workers to leave the idle copy, copies the blob, then waits up to
        ``confirm_timeout`` (2 s) for every worker to switch -- and the supervisor kills
        after 3 s.  Under load the gaps grew (measured: 0.29 s quiet, in single C copies of
        the 128 MiB blob that hold the GIL; docs/operations.md).

        Meanwhile this thread handles the mailbox only for what cannot wait or cannot
        interleave with the change: ``stop`` (acted on after it), ``actor_down`` /
        ``actor_up`` (the set of workers the publication waits for is replaced, never
        changed in place).  Anything else is kept for after the request, so nothing else
        touches the sockets or the manager while it runs.  A request that runs longer than
        ``max_busy_s`` (a bug: a valid change of the largest tables takes well under it)
        stops the heartbeats, and the supervisor restarts the actor.  Called from the
        helper thread itself (nested), ``fn`` simply runs."""
        if threading.current_thread() is not threading.main_thread() or self._busy:
            return fn(*args, **kw)
        out: dict[str, Any] = {}
        ctx = contextvars.copy_context()  # the request's span is the parent of its children

        def run() -> None:
            try:
                out["value"] = ctx.run(fn, *args, **kw)
            except BaseException as exc:  # handed to the caller below, as if called here
                out["error"] = exc

        t = threading.Thread(target=run, name="config-request", daemon=True)
        self._busy = True
        t0 = time.monotonic()
        try:
            t.start()
            t.join(0.05)  # most requests are done by then: no beat, no mailbox look
            warned = False
            while t.is_alive():
                now = time.monotonic()
                if now - t0 < self.max_busy_s:
                    # Half the period: a beat delayed by a GIL-holding copy on the helper
                    # thread still reaches the supervisor long before its limit.
                    if now - self._last_hb >= self.heartbeat_s / 2:
                        self._last_hb = now
                        self.send("hb", stats=self.stats())
                    if self.mailbox is not None:
                        self._poll_mailbox()
                elif not warned:
                    warned = True
                    log.error("a request has run for %.0f s: heart-beats stopped, the supervisor "
                              "restarts this actor", now - t0)
                t.join(0.1)
        finally:
            self._busy = False
        outbox, self._outbox = self._outbox, []
        for type_, body in outbox:
            self.send(type_, **body)
        deferred, self._deferred = self._deferred, []
        for msg in deferred:
            self.handle(msg)
        if "error" in out:
            raise out["error"]
        return out["value"]

    def send(self, type_: str, **body: Any) -> None:
        """A mailbox message; from the request's helper thread it is sent by the actor
        thread once the request is done (a ZeroMQ socket belongs to one thread)."""
        if threading.current_thread() is not threading.main_thread():
            self._outbox.append((type_, body))
            return
        super().send(type_, **body)

    def stats(self) -> dict[str, Any]:
        if self.manager is None:
            return {}
        c = self.manager.counters
        return {
            "generation": self.manager.generation,
            "changes_applied": c.changes_applied,
            "changes_rejected": c.changes_rejected,
            "health_transitions": c.health_transitions,
            "vip_all_down": c.vip_all_down,
            "unconfirmed": c.unconfirmed,
            "malformed": sum(s.stats.malformed + s.stats.dropped_frames for s in self.servers),
            "apply_latency": self.manager.apply_latency.to_dict(),
        }

    def teardown(self) -> None:
        self._poller = None
        for s in self.servers:
            s.close()
        self.servers = []
        if self.region is not None:
            self.region.close()
            self.region = None


def actor_def(opts: Any, region_name: str) -> Any:
    """The ActorDef ``maglev run`` adds for this actor (``maglev.actors.extra``)."""
    from maglev.actors.supervisor import ActorDef
    from maglev.config import SAMPLE_CONFIG

    extra = getattr(opts, "extra", {}) or {}
    return ActorDef(
        "config",
        "maglev.actors.config_manager:ConfigManagerActor",
        {
            "region": region_name,
            "config": str(Path(opts.config_path or SAMPLE_CONFIG).resolve()),
            "ct_config": opts.config_path or "",  # as the workers name their tables (conntrack_shm)
            "control": opts.control,
            "state": extra.get("state", ""),
        },
        stop_group=4,
    )
