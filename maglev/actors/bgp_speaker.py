"""The BGP speaker actor: :class:`maglev.bgp.Speaker` in its own process.

The Actor base loop is synchronous and the speaker is asyncio, so (as in the health
prober) ``wait()`` runs the event loop for the idle slice the base loop would sleep:
BGP I/O and timers run whenever the actor is not doing housekeeping, and mailbox
commands are seen within one tick (0.1 s).  Keepalives need second-scale precision at
worst (hold/3), so the tick never threatens a session.

Mailbox commands (msgpack dicts with ``type``; an optional ``id`` is echoed back):

    {"type": "bgp.announce", "prefix": "203.0.113.10/32"}
    {"type": "bgp.withdraw", "prefix": "203.0.113.10/32"}
    {"type": "bgp.withdraw_all"}
    {"type": "bgp.state"}

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
import logging
from typing import Any

from maglev.actors.base import Actor, ActorSpec
from maglev.bgp.speaker import Speaker
from maglev.config import Bgp, Config, load

log = logging.getLogger("maglev.bgp")


def bgp_config(params: dict[str, Any]) -> Bgp:
    """The ``[bgp]`` section named by the actor params (raises ConfigError when invalid)."""
    if params.get("config_file"):
        return load(params["config_file"]).bgp
    return Config.from_dict({"bgp": params.get("bgp", {})}).bgp


class BgpSpeakerActor(Actor):
    kind = "bgp"

    def __init__(self, spec: ActorSpec):
        super().__init__(spec)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.speaker: Speaker | None = None
        self.commands = 0
        self.bad_commands = 0

    def setup(self) -> None:
        cfg = bgp_config(self.params)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.speaker = Speaker(cfg, on_event=self._on_event)
        for p in self.params.get("announce", []):
            self.speaker.announce(p)
        self.loop.run_until_complete(self.speaker.start())

    def step(self) -> int:
        return 0

    def wait(self, timeout_s: float) -> None:
        assert self.loop is not None
        self.loop.run_until_complete(asyncio.sleep(timeout_s))

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
            if t == "bgp.state":
                return {"op": t, "ok": True, "announced": self.speaker.announced(), "peers": self.speaker.peers_state()}
            raise ValueError(f"unknown message type {t!r}")
        except ValueError as exc:
            self.bad_commands += 1
            return {"op": t, "ok": False, "error": str(exc)}

    def drain(self) -> None:
        if self.loop is not None and self.speaker is not None:
            reason = f"maglev stopping ({self.stop_reason})" if self.stop_reason else "maglev stopping"
            self.loop.run_until_complete(self.speaker.stop(reason))

    def teardown(self) -> None:
        if self.loop is None:
            return
        if self.speaker is not None and self.speaker.started:  # drain() did not run (a crash)
            self.loop.run_until_complete(self.speaker.stop("maglev BGP speaker failed"))
        self.loop.close()
        self.loop = None

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
    return ActorDef("bgp", "maglev.actors.bgp_speaker:BgpSpeakerActor", params, stop_group=-1)


def register() -> None:
    """Add this actor to every ``maglev run`` of this process; explicit, not on import."""
    from maglev.actors import extra

    extra.add(actor_def)


def unregister() -> None:
    from maglev.actors import extra

    extra.remove(actor_def)
