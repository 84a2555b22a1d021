"""The BGP speaker actor: :class:`maglev.bgp.Speaker` in its own process.

The Actor base loop is synchronous and the speaker is asyncio, so ``wait()`` runs the
event loop for the idle slice the base loop would sleep (``idle_wait_s``), and that loop
waits on everything at once: BGP sockets and timers, the mailbox (the ZeroMQ socket's
file descriptor is an asyncio reader, so a command is handled the moment it arrives and
the UPDATE it causes is written in the same loop pass), and SIGTERM/SIGINT (asyncio
signal handlers, so a stop request ends the wait at once and ``drain()`` sends the CEASE).
Nothing sleeps a fixed time: measured command -> UPDATE on the wire at a peer on
127.0.0.1 is about a millisecond (tests/bgp/test_actor.py prints the figures).

ZeroMQ's descriptor is edge-triggered and also consumed by sends, so the mailbox is
drained until ``EVENTS`` shows nothing readable after every wake-up, at the start of
every ``wait()``, and after every message this actor sends.

Graceful restart (RFC 4724): when ``bgp.graceful_restart_time`` is set and the actor is
a restart (``incarnation`` > 0), the speaker's OPENs carry the Restarting bit, so routers
that kept our routes (the process died without a CEASE) keep forwarding to us until the
new session has re-announced them and sent End-of-RIB.  A crash (``teardown`` without
``drain``) closes the sessions without a NOTIFICATION for the same reason; an orderly
stop still sends CEASE, so the routes go at once.

Mailbox commands (msgpack dicts with ``type``; an optional ``id`` is echoed back):

    {"type": "bgp.announce", "prefix": "203.0.113.10/32"}
    {"type": "bgp.withdraw", "prefix": "203.0.113.10/32"}
    {"type": "bgp.withdraw_all"}
    {"type": "bgp.state"}
    {"type": "bgp.reload"}

``bgp.reload`` (sent by the controller when the config generation changes: ``ctl apply``,
``ctl reload``, SIGHUP) re-reads ``[bgp]`` from the run's accepted config and applies the
difference with :meth:`Speaker.reconfigure`: nothing when ``[bgp]`` did not change, else
only the sessions whose settings changed restart.  It replies at once (``scheduled``);
the outcome follows as a ``bgp.event`` ``{"event": "bgp.reconfigured", ...}``.

Each gets one ``bgp.reply`` (``ok``, ``error`` when not ok, ``changed`` for announce and
withdraw, ``announced`` and ``peers`` for state).  Speaker events go out as
``bgp.event`` messages carrying the event dict (``event`` = ``bgp.state`` or
``bgp.route``); the supervisor/controller republishes them on the control socket's
event stream.

Params: ``config_file`` (a maglev TOML file; its ``[bgp]`` section is used) or ``bgp``
(the ``[bgp]`` table as a dict), and optionally ``announce`` (prefixes to announce from
the start).  On stop, ``drain()`` sends every peer a CEASE (administrative shutdown)
before the process exits, so routers withdraw the VIPs at once instead of waiting for a
hold timer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from maglev.actors.base import Actor, ActorSpec
from maglev.actors.sched import BGP_NICE, set_nice
from maglev.bgp.speaker import Speaker
from maglev.config import Bgp, Config, load
from maglev.errors import ConfigError, MaglevError

log = logging.getLogger("maglev.bgp")

PARENT_EXITED = "parent exited"  # maglev.actors.base: the supervisor vanished (kill -9)
# In the instance's state folder while a speaker with graceful restart runs inside
# `maglev run`; removed after its CEASEs went out.  Found at start: the previous run
# crashed, routers may hold our routes, and the OPENs say Restarting (RFC 4724).
RUNNING_MARKER = "bgp-speaker-running.json"


def bgp_config(params: dict[str, Any], run_dir: str = "", at_start: bool = False) -> Bgp:
    """The ``[bgp]`` section named by the actor params (raises ConfigError when invalid).
    Inside a ``maglev run`` a ``config_file`` is read as the run accepted it (``run_dir``'s
    config.json), never as it is on disk now (broken, or edited and not yet reloaded).

    ``at_start`` (the speaker's (re)start): a damaged or missing config.json beside a whole
    ``config-start.json`` gives the start's ``[bgp]``, with an error in the log, instead of
    a failed start that took the whole run down (session 10); the config manager writes
    config.json whole again at its next accepted change, and the ``bgp.reload`` that follows
    brings the accepted ``[bgp]``.  A ``bgp.reload`` (not ``at_start``) keeps raising: the
    speaker keeps the ``[bgp]`` it runs."""
    if params.get("config_file"):
        from maglev.control.persist import load_run_config

        try:
            run, why = load_run_config(run_dir), ""
        except ConfigError as exc:
            if not at_start:
                raise
            run, why = None, "; ".join(exc.problems)
        if run is None and at_start:
            try:
                started = load_run_config(run_dir, start=True)
            except ConfigError:
                started = None
            if started is not None:
                log.error("the run's accepted config is not usable (%s); starting on the [bgp] the run started "
                          "with", why or "config.json is missing")
                return started[0].bgp
            if why:
                raise ConfigError([why])
        return run[0].bgp if run is not None else load(params["config_file"]).bgp
    return Config.from_dict({"bgp": params.get("bgp", {})}).bgp


class BgpSpeakerActor(Actor):
    kind = "bgp"

    def __init__(self, spec: ActorSpec):
        super().__init__(spec)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.speaker: Speaker | None = None
        self.commands = 0
        self.bad_commands = 0
        self._wake: asyncio.Event | None = None
        self._mailbox_fd: int | None = None
        self._old_signals: dict[int, Any] = {}
        self._reconfiguring: asyncio.Task | None = None
        self._reload_again = False
        self.nice = 0

    def setup(self) -> None:
        cfg = bgp_config(self.params, self.spec.run_dir, at_start=True)
        # Above packet work, so KEEPALIVEs are never late behind it (maglev.actors.sched).
        self.nice = set_nice(int(self.params.get("nice", BGP_NICE)))
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._wake = asyncio.Event()
        # A restart: of this actor within the run (incarnation > 0), or of the whole run
        # after a crash (kill -9 of `maglev run`: the previous speaker left its marker).
        crashed = self._mark_running(cfg)
        restarting = (self.spec.incarnation > 0 or crashed) and cfg.graceful_restart_time > 0
        self.speaker = Speaker(cfg, on_event=self._on_event, restarting=restarting,
                               defer_eor=bool(self.params.get("wait_ready")))
        for p in self.params.get("announce", []):
            self.speaker.announce(p)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old_signals[sig] = signal.getsignal(sig)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._on_stop_signal, sig)
        # SIGHUP to every process of the service (`systemctl kill -s HUP`) must not kill
        # the speaker (its default action): that would reset every session.  A reload
        # goes to `maglev run`, which does not restart this actor for it.
        self.loop.add_signal_handler(signal.SIGHUP, log.warning, "SIGHUP ignored: reloads go to maglev run")
        if self.mailbox is not None:
            import zmq

            self._mailbox_fd = self.mailbox.getsockopt(zmq.FD)
            self.loop.add_reader(self._mailbox_fd, self._drain_mailbox)
        self.loop.run_until_complete(self.speaker.start())

    def step(self) -> int:
        return 0

    def wait(self, timeout_s: float) -> None:
        """Run the event loop until ``timeout_s`` passed or a stop was requested; mailbox
        commands are handled inside (see the module docstring)."""
        assert self.loop is not None and self._wake is not None
        self._drain_mailbox()  # anything that came while the loop was not running
        if self.stopping:
            return
        self._wake.clear()
        try:
            self.loop.run_until_complete(asyncio.wait_for(self._wake.wait(), timeout_s))
        except TimeoutError:
            pass

    def _on_stop_signal(self, signum: int) -> None:
        self.request_stop(signal.Signals(signum).name)
        if self._wake is not None:
            self._wake.set()

    def _drain_mailbox(self) -> None:
        if self.mailbox is None:
            return
        import zmq

        # Edge-triggered descriptor: read until ZeroMQ itself says nothing is pending.
        while self.mailbox is not None and self.mailbox.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._poll_mailbox()
        if self.stopping and self._wake is not None:
            self._wake.set()

    def send(self, type_: str, **body: Any) -> None:
        super().send(type_, **body)
        # A send can swallow the descriptor's edge for a message that arrived meanwhile.
        if self.loop is not None and self.loop.is_running() and self.mailbox is not None:
            self.loop.call_soon(self._drain_mailbox)

    def _on_event(self, event: dict[str, Any]) -> None:
        self.send("bgp.event", **event)

    def handle(self, msg: dict[str, Any]) -> None:
        if msg.get("type") in ("actor_up", "actor_down"):
            return  # the supervisor's broadcasts about other actors: nothing to do here
        reply = self.command(msg)
        if "id" in msg:
            reply["id"] = msg["id"]
        self.send("bgp.reply", **reply)

    def command(self, msg: dict[str, Any]) -> dict[str, Any]:
        """One mailbox command to its reply body; bad input gets ``ok: False``, never raises."""
        assert self.speaker is not None
        self.commands += 1
        t = msg.get("type")
        try:
            if t in ("bgp.announce", "bgp.withdraw"):
                prefix = msg.get("prefix")
                if not isinstance(prefix, str):
                    raise ValueError(f"{t} needs a 'prefix' string")
                changed = self.speaker.announce(prefix) if t == "bgp.announce" else self.speaker.withdraw(prefix)
                return {"op": t, "ok": True, "prefix": prefix, "changed": changed}
            if t == "bgp.withdraw_all":
                self.speaker.withdraw_all()
                return {"op": t, "ok": True}
            if t == "bgp.ready":
                return {"op": t, "ok": True, "changed": self.speaker.initial_complete()}
            if t == "bgp.state":
                return {"op": t, "ok": True, "announced": self.speaker.announced(), "peers": self.speaker.peers_state()}
            if t == "bgp.reload":
                if self._reconfiguring is not None and not self._reconfiguring.done():
                    self._reload_again = True  # one more pass after the running one
                else:
                    assert self.loop is not None
                    self._reconfiguring = self.loop.create_task(self._reload())
                return {"op": t, "ok": True, "scheduled": True}
            raise ValueError(f"unknown message type {t!r}")
        except ValueError as exc:
            self.bad_commands += 1
            return {"op": t, "ok": False, "error": str(exc)}

    async def _reload(self) -> None:
        """``bgp.reload``: the run's accepted ``[bgp]`` to the speaker (the least change)."""
        assert self.speaker is not None
        while True:
            self._reload_again = False
            try:
                cfg = bgp_config(self.params, self.spec.run_dir)
                result = await self.speaker.reconfigure(cfg)
            except MaglevError as exc:  # a [bgp] the speaker cannot run: keep the current one
                log.error("bgp.reload: %s; keeping the running [bgp]", exc)
                result = {"changed": False, "error": str(exc)}
            if result.get("changed") or "error" in result:
                self._on_event({"event": "bgp.reconfigured", **result})
            if not self._reload_again or self.stopping:
                return

    def drain(self) -> None:
        if self._reconfiguring is not None and not self._reconfiguring.done() and self.loop is not None:
            self.loop.run_until_complete(asyncio.wait({self._reconfiguring}))
        if self.loop is not None and self.speaker is not None:
            if self.stop_reason == PARENT_EXITED and self.speaker.config.graceful_restart_time:
                # `maglev run` died (kill -9, a crash): not an orderly stop.  Like a crash
                # of this actor, no CEASE, so routers with graceful restart keep our
                # routes until the next run's speaker is back (RFC 4724); the marker stays
                # and tells that speaker it is a restart.
                log.warning("maglev run exited without stopping us: closing the BGP sessions "
                            "without a NOTIFICATION (graceful restart)")
                self.loop.run_until_complete(self.speaker.abort())
                return
            reason = f"maglev stopping ({self.stop_reason})" if self.stop_reason else "maglev stopping"
            self.loop.run_until_complete(self.speaker.stop(reason))
            self._unmark_running()

    def _marker(self) -> Path:
        from maglev.control.endpoints import state_dir

        return state_dir(self.spec.instance) / RUNNING_MARKER

    def _mark_running(self, cfg: Bgp) -> bool:
        """With graceful restart on: True when the previous speaker of this instance did
        not stop in order (its marker is still there), and leave our own marker.  A
        marker that cannot be read or written is logged and costs only the Restarting
        bit (the routers still keep our routes: RFC 4724 4.2)."""
        if not cfg.graceful_restart_time or not self.params.get("wait_ready"):
            return False  # only inside `maglev run`: tests and the lab start fresh speakers
        from maglev.control.persist import atomic_write

        path = self._marker()
        crashed = path.exists()
        try:
            atomic_write(path, json.dumps({"pid": os.getpid(), "at": time.time()}).encode() + b"\n")
        except OSError as exc:
            log.warning("cannot write %s (%s): a crash of this run will not be recognised as a "
                        "restart by the next one", path, exc.strerror or exc)
        return crashed

    def _unmark_running(self) -> None:
        if not self.params.get("wait_ready"):
            return
        try:
            self._marker().unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", self._marker(), exc.strerror or exc)

    def teardown(self) -> None:
        if self.loop is None:
            return
        if self._mailbox_fd is not None:
            self.loop.remove_reader(self._mailbox_fd)
            self._mailbox_fd = None
        if self._reconfiguring is not None and not self._reconfiguring.done():
            self._reconfiguring.cancel()
            self.loop.run_until_complete(asyncio.wait({self._reconfiguring}))
        if self.speaker is not None and self.speaker.started:  # drain() did not run (a crash)
            if self.speaker.config.graceful_restart_time:
                # RFC 4724: no NOTIFICATION, so routers keep our routes until we are back.
                self.loop.run_until_complete(self.speaker.abort())
            else:
                self.loop.run_until_complete(self.speaker.stop("maglev BGP speaker failed"))
        self.loop.close()  # removes its signal handlers (back to SIG_DFL) ...
        self.loop = None
        for sig, handler in self._old_signals.items():  # ... so put the base class's back
            signal.signal(sig, handler)

    def stats(self) -> dict[str, Any]:
        if self.speaker is None:
            return {}
        peers = self.speaker.peers_state()
        return {
            "peers": len(peers),
            "established": sum(p["state"] == "Established" for p in peers),
            "announced": len(self.speaker.prefixes),
            "rejected_connections": self.speaker.rejected,
            "commands": self.commands,
            "bad_commands": self.bad_commands,
            "nice": self.nice,
        }


def actor_def(opts: Any, region_name: str) -> Any:
    """The ActorDef ``maglev run`` adds for this actor (``maglev.actors.extra``), or None
    when the config has no BGP peers.

    It stops first (stop group -1, before steering's 0): the CEASE reaches the routers
    while the data path still forwards, so no packet is sent to an instance that already
    stopped forwarding.  What to announce is the controller's decision (mailbox commands);
    the actor starts with nothing announced.
    """
    from maglev.actors.supervisor import ActorDef
    from maglev.config import load_config

    cfg = load_config(opts.config_path)
    if not cfg.bgp.local_asn or not cfg.bgp.peers:
        return None
    params: dict[str, Any] = {"config_file": opts.config_path} if opts.config_path else {"bgp": cfg.to_dict()["bgp"]}
    # The controller fills the prefix set after start and then sends bgp.ready:
    # End-of-RIB waits for it (Speaker defer_eor), so a restart flushes nothing.
    params["wait_ready"] = True
    return ActorDef("bgp", "maglev.actors.bgp_speaker:BgpSpeakerActor", params, stop_group=-1)
