"""The health-prober actor: probes backends and tells the config manager what it found.

It is a client of the local control socket like ``maglev ctl``: ``get-config`` to learn the
backends (again on every ``config`` event), ``health-report`` to send verdicts.  Keeping the
prober outside the config manager means a wedged probe can never delay a config change, and
a prober crash loses nothing but its rise/fall counters.

Delivery: transitions are queued and sent in order; when a send fails (config manager
restarting, timeout) the queue is kept and retried, and after any failure -- and every
``resync_s`` anyway -- the prober re-reads the config and sends its whole view with
``full: true``, so a restarted config manager relearns which backends are down within
seconds, and a missed ``config`` event costs at most ``resync_s``.  A restarted prober
starts with an empty view (every backend "unknown", i.e. in the table) and re-decides each
one at its first probe, spread over at most one second.

The Actor base loop is synchronous; the prober is asyncio.  ``wait()`` runs the event loop
for the idle slice the base loop would sleep, so probes and their timeouts run whenever the
actor is not doing housekeeping (a few microseconds every tick).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from maglev.actors.base import Actor, ActorSpec
from maglev.config import Config
from maglev.control import endpoints
from maglev.control.protocol import ProtocolError, Request, decode_event, decode_reply
from maglev.health.prober import Prober

log = logging.getLogger("maglev.health")


class ProberClient:
    """The asyncio side: control client, event subscription, prober, report queue."""

    def __init__(self, control: str, events: str, max_concurrent: int = 128, resync_s: float = 10.0,
                 request_timeout_s: float = 5.0):
        self.control = control
        self.events = events
        self.resync_s = resync_s
        self.request_timeout_s = request_timeout_s
        self.ctx = zmq.asyncio.Context()
        self.req: zmq.asyncio.Socket | None = None
        self.sub: zmq.asyncio.Socket | None = None
        self.prober = Prober(self._queue, max_concurrent=max_concurrent)
        self.outbox: list[dict[str, Any]] = []
        self.need_full = True
        self.need_config = True
        self.last_full = 0.0
        self.sent = 0
        self.send_failures = 0
        self._ids = 0
        self._kick = asyncio.Event()

    def _queue(self, reports: list[dict[str, Any]]) -> None:
        self.outbox.extend(reports)
        self._kick.set()

    def _socket(self) -> zmq.asyncio.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.control)
        return s

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        if self.req is None:
            self.req = self._socket()
        self._ids += 1
        await self.req.send(Request(op=op, args=args, id=self._ids).encode())
        deadline = time.monotonic() + self.request_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not await self.req.poll(int(left * 1000) + 1):
                # Drop the socket: a late reply must not be read as the next answer.
                self.req.close(0)
                self.req = None
                raise TimeoutError(f"no reply to {op} from {self.control}")
            reply = decode_reply(await self.req.recv())
            if reply.id != self._ids:
                continue
            if not reply.ok:
                e = reply.error
                raise ProtocolError(str(e.get("code")), str(e.get("message")), str(e.get("field", "")))
            return reply.result

    async def refresh_config(self) -> None:
        result = await self.call("get-config", {})
        self.prober.set_config(Config.from_dict(result["config"]))
        self.need_config = False

    async def flush(self) -> None:
        now = time.monotonic()
        if self.need_full or now - self.last_full >= self.resync_s:
            await self.call("health-report", {"reports": self.prober.snapshot(), "full": True})
            self.outbox.clear()  # the snapshot includes them
            self.need_full, self.last_full = False, now
        if self.outbox:
            batch = self.outbox[:1000]
            await self.call("health-report", {"reports": batch})
            del self.outbox[: len(batch)]
            self.sent += len(batch)

    async def run(self, stop: asyncio.Event) -> None:
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"config")
        self.sub.connect(self.events)
        probing = asyncio.create_task(self.prober.run(stop))
        events = asyncio.create_task(self._events(stop))
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() - self.last_full >= self.resync_s:
                        self.need_config = True  # a missed config event heals here too
                    if self.need_config:
                        await self.refresh_config()
                    await self.flush()
                except (TimeoutError, ProtocolError, zmq.ZMQError, KeyError, TypeError, ValueError) as exc:
                    self.send_failures += 1
                    self.need_full = True
                    log.warning("control plane unreachable; will resync", extra={"kv": {"error": exc}})
                    await asyncio.sleep(0.5)
                self._kick.clear()
                if not self.outbox and not self.need_config:
                    try:
                        await asyncio.wait_for(self._kick.wait(), timeout=1.0)
                    except TimeoutError:
                        pass
        finally:
            probing.cancel()
            events.cancel()
            await asyncio.gather(probing, events, return_exceptions=True)

    async def _events(self, stop: asyncio.Event) -> None:
        assert self.sub is not None
        while not stop.is_set():
            frames = await self.sub.recv_multipart()
            try:
                topic, _ = decode_event(frames)
            except Exception:
                continue
            if topic == "config":
                self.need_config = True
                self._kick.set()

    def close(self) -> None:
        for s in (self.req, self.sub):
            if s is not None:
                s.close(0)
        self.ctx.term()


class HealthProberActor(Actor):
    # TCP/HTTP/UDP/DNS checks use ordinary sockets; checks through the tunnel
    # (maglev/health/tunnel.py) send and read raw IP through two raw sockets opened here at
    # set-up while the run holds CAP_NET_RAW (maglev run keeps it when the config has such a
    # check, privileges.needed_caps, or its NIC needs it) and shared by every probe: after
    # set-up the prober keeps no capability at all (docs/service.md).
    caps_after_setup = ()
    kind = "health"
    idle_wait_s = 0.1

    def __init__(self, spec: ActorSpec):
        super().__init__(spec)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.client: ProberClient | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.raw: Any = None  # maglev.health.tunnel.RawSockets, when opened at set-up

    def setup(self) -> None:
        from maglev.health import tunnel

        self.raw = tunnel.open_shared()  # None without CAP_NET_RAW: tunnel checks fail locally
        # The config manager's private socket in the run directory: always this run's.
        private = f"ipc://{Path(self.spec.run_dir) / endpoints.CONTROL_SOCKET}"
        control = self.params.get("control") or private
        events = self.params.get("events") or endpoints.events_for(control)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.client = ProberClient(control, events, int(self.params.get("max_concurrent", 128)))
        self._stop = asyncio.Event()
        self._task = self.loop.create_task(self.client.run(self._stop))

    def step(self) -> int:
        return 0

    def wait(self, timeout_s: float) -> None:
        assert self.loop is not None
        self.run_loop_for(self.loop, timeout_s)  # returns early when mail arrives (stop)
        if self._task is not None and self._task.done():
            self._task.result()  # re-raise a crash so the supervisor restarts us

    def stats(self) -> dict[str, Any]:
        if self.client is None:
            return {}
        s = self.client.prober.stats
        return {"checks": len(self.client.prober.checks), "probes": s.probes, "failed": s.failed,
                "local_errors": s.local_errors, "transitions": s.transitions,
                "reports_sent": self.client.sent, "send_failures": self.client.send_failures}

    def teardown(self) -> None:
        if self.loop is None:
            return
        if self._stop is not None:
            self._stop.set()
        if self._task is not None:
            # Cancel rather than wait: the task may be in a request (up to 5 s), a retry
            # back-off or its 1 s idle wait; what it would still send is moot at a stop.
            self._task.cancel()
            self.loop.run_until_complete(asyncio.gather(self._task, return_exceptions=True))
        if self.client is not None:
            self.client.close()
        from maglev.health import tunnel

        tunnel.close_shared()
        self.loop.close()
        self.loop = None


def actor_def(opts: Any, region_name: str) -> Any:
    """The ActorDef ``maglev run`` adds for this actor (``maglev.actors.extra``)."""
    from maglev.actors.supervisor import ActorDef

    return ActorDef("health", "maglev.actors.health_prober:HealthProberActor", {}, stop_group=3)
