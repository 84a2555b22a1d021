"""The BGP speaker: a listener, one :class:`Session` per configured peer, one prefix set.

The speaker holds the set of prefixes this machine wants announced (the VIPs); every
session brings its peer in line with that set whenever it changes or the session comes
up.  It never installs or re-advertises what peers send: a load balancer announces its
VIPs and nothing else.

Events (state changes, prefixes announced to / withdrawn from a peer) go to one
callback as plain dicts, ready for msgpack on the control socket's event stream::

    {"event": "bgp.state", "peer": "198.18.0.1", "asn": 64512, "old": "OpenConfirm",
     "new": "Established", "reason": "hold time 90 s"}
    {"event": "bgp.route", "peer": "198.18.0.1", "action": "announce",
     "prefixes": ["203.0.113.10/32"], "next_hop": "198.18.0.2"}

A callback that raises is logged and otherwise ignored: observers must not break sessions.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import select
import time
from collections.abc import Callable
from typing import Any

from maglev.bgp import bfd
from maglev.bgp.messages import Err, Prefix
from maglev.bgp.session import Connection, Session
from maglev.config import Bgp
from maglev.errors import ConfigError

log = logging.getLogger("maglev.bgp")

REJECT_LOG_INTERVAL_S = 60.0
EventCallback = Callable[[dict[str, Any]], None]


def parse_prefix(prefix: str | Prefix | ipaddress.IPv4Address | ipaddress.IPv6Address) -> Prefix:
    """``203.0.113.10`` (a host), ``203.0.113.10/32`` or ``2001:db8::10/128`` to a network.

    Raises ValueError with the reason for anything else (host bits set included).
    """
    if isinstance(prefix, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return prefix
    if isinstance(prefix, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ipaddress.ip_network(prefix)
    if not isinstance(prefix, str):
        raise ValueError(f"{prefix!r} is not a prefix")
    try:
        return ipaddress.ip_network(prefix.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{prefix!r} is not a prefix: {exc}") from None


def _check(config: Bgp) -> None:
    problems = []
    if not config.local_asn:
        problems.append("bgp.local_asn: is required to run a BGP speaker")
    if not config.router_id:
        problems.append("bgp.router_id: is required to run a BGP speaker")
    if problems:
        raise ConfigError(problems)


class Speaker:
    """``Speaker(config.bgp)``; ``await start()``; ``announce``/``withdraw``; ``await stop()``."""

    def __init__(self, config: Bgp, on_event: EventCallback | None = None, restarting: bool = False,
                 defer_eor: bool = False):
        _check(config)
        self.config = config
        self.on_event = on_event
        # RFC 4724: this speaker has just restarted (its previous incarnation died without
        # a CEASE) and peers may hold its routes; the first OPENs say so.
        self.restarting = restarting and config.graceful_restart_time > 0
        # End-of-RIB tells a router that kept our routes across a restart to drop every
        # one we did not announce again.  When the owner fills the prefix set after start
        # (the controller announces once it has judged health), an End-of-RIB sent as the
        # session comes up would flush the routes the router kept: so with
        # ``defer_eor`` it waits for :meth:`initial_complete` (at most the restart time).
        self.initial_done = not (defer_eor and config.graceful_restart_time > 0)
        self._initial_timer: asyncio.TimerHandle | None = None
        self.prefixes: set[Prefix] = set()
        self.rejected = 0  # incoming connections from addresses that are not peers
        self._rejected_logged_at = -REJECT_LOG_INTERVAL_S
        self._rejected_logged = 0  # self.rejected when last logged
        self._build(config)

    def _build(self, config: Bgp) -> None:
        """Sessions, BFD endpoint and listener state for ``config`` (nothing started)."""
        self.config = config
        self.sessions = [Session(self, p) for p in config.peers]
        self.bfd: bfd.Endpoint | None = None
        if any(p.bfd for p in config.peers):
            self.bfd = bfd.Endpoint(config.listen_address, config.bfd_port)
            for s in self.sessions:
                if s.peer.bfd:
                    s.bfd = bfd.Session(
                        self.bfd, s.address, local_address=s.peer.local_address, interval_ms=config.bfd_interval_ms,
                        multiplier=config.bfd_multiplier, on_change=s.on_bfd,
                    )
                    self.bfd.add(s.bfd)
        self._by_address = {s.address: s for s in self.sessions}
        self._server: asyncio.base_events.Server | None = None
        self.started = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Listen (unless ``listen_port`` is 0) and start every session."""
        if self.started:
            return
        if self.config.listen_port:
            self._server = await asyncio.start_server(
                self._accept,
                host=self.config.listen_address or None,
                port=self.config.listen_port,
                reuse_address=True,
            )
        if self.bfd is not None:
            try:
                self.bfd.start()
            except OSError:
                if self._server is not None:
                    self._server.close()
                    self._server = None
                raise
        self.started = True
        if not self.initial_done and self._initial_timer is None:
            self._initial_timer = asyncio.get_running_loop().call_later(
                self.config.graceful_restart_time, self._initial_timeout)
        for s in self.sessions:
            s.start()

    def initial_complete(self) -> bool:
        """The prefix set now holds everything this speaker means to announce after its
        start: End-of-RIB may follow (see ``defer_eor``).  False when it already had."""
        if self._initial_timer is not None:
            self._initial_timer.cancel()
            self._initial_timer = None
        if self.initial_done:
            return False
        self.initial_done = True
        self._changed()
        return True

    def _initial_timeout(self) -> None:
        self._initial_timer = None
        if not self.initial_done:
            log.warning("bgp: nobody said the initial announcement was complete within %d s "
                        "(graceful_restart_time); sending End-of-RIB with %d prefixes",
                        self.config.graceful_restart_time, len(self.prefixes))
            self.initial_complete()

    async def stop(self, reason: str = "maglev BGP speaker stopping", subcode: int = Err.ADMIN_SHUTDOWN) -> None:
        """CEASE (administrative shutdown, with ``reason`` as RFC 9003 text) to every peer."""
        self._cancel_initial_timer()
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(s.stop(reason, subcode) for s in self.sessions), return_exceptions=True)
        if self.bfd is not None and self.started:
            await self.bfd.stop()  # AdminDown after the CEASEs
        if self._server is not None:
            try:
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            except TimeoutError:
                pass
            self._server = None
        self.started = False

    async def abort(self) -> None:
        """Close every session without a NOTIFICATION (graceful restart: routers that
        support it keep our routes for the restart time; the others withdraw them)."""
        self._cancel_initial_timer()
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(s.abort() for s in self.sessions), return_exceptions=True)
        if self.bfd is not None and self.started:
            await self.bfd.stop(silent=True)
        self._server = None
        self.started = False

    async def reconfigure(self, new: Bgp) -> dict[str, Any]:
        """Apply a changed ``[bgp]`` section, resetting as few sessions as possible.

        Unchanged: nothing happens.  Next hops: every session re-sends its routes with the
        new next hop (an UPDATE replaces a route; no reset).  ``connect_retry_time``: used
        from the next retry on.  A peer added: its session starts; removed: CEASE "peer
        de-configured"; a peer whose own settings changed (ASN, port, hold time, passive,
        local address): that session alone restarts with CEASE "other configuration
        change".  What goes in every OPEN or the listener (local ASN, router id, graceful
        restart time, listen address/port) or BFD: every session restarts.  Returns what
        was done (``changed``, ``restarted``, ``added``, ``removed``, ``resent``)."""
        _check(new)
        old = self.config
        out: dict[str, Any] = {"changed": new != old, "restarted": [], "added": [], "removed": [], "resent": False}
        if new == old:
            return out
        every = ("local_asn", "router_id", "graceful_restart_time", "listen_port", "listen_address",
                 "bfd_interval_ms", "bfd_multiplier", "bfd_port")
        bfd_touched = any(p.bfd for p in old.peers + new.peers if p not in old.peers or p not in new.peers)
        if any(getattr(old, k) != getattr(new, k) for k in every) or bfd_touched:
            out["restarted"] = [s.address for s in self.sessions]
            out["added"] = [str(ipaddress.ip_address(p.address)) for p in new.peers if p.address not in {q.address for q in old.peers}]
            log.warning("bgp: [bgp] changed (%s): restarting every session",
                        ", ".join(k for k in every if getattr(old, k) != getattr(new, k)) or "bfd")
            was_started = self.started
            await self.stop("maglev: BGP configuration changed", subcode=Err.OTHER_CONFIG_CHANGE)
            self.restarting = False  # the routers got our routes again before this change
            self._build(new)
            if was_started:
                await self.start()
            return out
        old_by = {str(ipaddress.ip_address(p.address)): p for p in old.peers}
        new_by = {str(ipaddress.ip_address(p.address)): p for p in new.peers}
        keep: list[Session] = []
        stops = []
        for s in self.sessions:
            p = new_by.get(s.address)
            if p is None:
                out["removed"].append(s.address)
                stops.append(s.stop("maglev: peer removed from the configuration", subcode=Err.PEER_DECONFIGURED))
            elif p != s.peer:
                out["restarted"].append(s.address)
                stops.append(s.stop("maglev: peer configuration changed", subcode=Err.OTHER_CONFIG_CHANGE))
            else:
                keep.append(s)
        await asyncio.gather(*stops, return_exceptions=True)
        self.config = new
        resend = (old.next_hop_ipv4, old.next_hop_ipv6) != (new.next_hop_ipv4, new.next_hop_ipv6)
        for s in keep:
            if resend:
                s.no_next_hop.clear()  # a next hop may exist now: log again what still has none
                s.resend_all()  # the writer re-announces everything with the new next hop
        out["resent"] = resend and bool(keep)
        fresh = [Session(self, new_by[a]) for a in out["restarted"]]
        fresh += [Session(self, p) for a, p in new_by.items() if a not in old_by]
        out["added"] = [a for a in new_by if a not in old_by]
        order = {a: i for i, a in enumerate(new_by)}
        self.sessions = sorted(keep + fresh, key=lambda s: order[s.address])
        self._by_address = {s.address: s for s in self.sessions}
        if self.started:
            for s in fresh:
                s.start()
        log.warning("bgp: [bgp] changed: %s", ", ".join(f"{k} {v}" for k, v in out.items() if k != "changed" and v) or "settings only")
        return out

    def accept_pending(self) -> bool:
        """A connection waits in the kernel's accept queue of one of our listening sockets
        (complete, not yet handed to a session: the event loop accepts it at its next
        turn).  A session about to dial asks first (see Session._acquire)."""
        if self._server is None:
            return False
        fds = [s.fileno() for s in self._server.sockets]
        try:
            return bool(fds) and bool(select.select(fds, [], [], 0)[0])
        except (OSError, ValueError):  # closed meanwhile: nothing to wait for
            return False

    @property
    def listen_addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    # ------------------------------------------------------------------ routes
    def announce(self, prefix: str | Prefix) -> bool:
        """Announce ``prefix`` to every peer (now, and to peers that come up later).

        Returns False when it was already announced."""
        p = parse_prefix(prefix)
        if p in self.prefixes:
            return False
        self.prefixes.add(p)
        self._changed()
        return True

    def withdraw(self, prefix: str | Prefix) -> bool:
        """Withdraw ``prefix`` from every peer; False when it was not announced."""
        p = parse_prefix(prefix)
        if p not in self.prefixes:
            return False
        self.prefixes.discard(p)
        self._changed()
        return True

    def withdraw_all(self) -> None:
        if self.prefixes:
            self.prefixes.clear()
            self._changed()

    def announced(self) -> list[str]:
        return [str(p) for p in sorted(self.prefixes, key=lambda p: (p.version, p))]

    def peers_state(self) -> list[dict[str, Any]]:
        """One dict per peer: state, uptime, negotiated hold time and families, what we
        announced to it, counters and the last error."""
        return [s.snapshot() for s in self.sessions]

    # ------------------------------------------------------------------ internals
    def _cancel_initial_timer(self) -> None:
        if self._initial_timer is not None:
            self._initial_timer.cancel()
            self._initial_timer = None

    def _changed(self) -> None:
        for s in self.sessions:
            s.changed()

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:
            log.exception("BGP event callback failed")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = Connection(reader, writer, outgoing=False)
        except (TypeError, ValueError, OSError):  # reset before we could ask for its address
            writer.transport.abort()
            return
        session = self._by_address.get(conn.remote)
        if session is None or not self.started:
            # Not a configured peer: close without a word (RFC 4271 8.2.1.3 leaves this open).
            self.rejected += 1
            # A scan or a flood of connects must not flood the log: once per
            # REJECT_LOG_INTERVAL_S, with the number refused since.
            now = time.monotonic()
            if now - self._rejected_logged_at >= REJECT_LOG_INTERVAL_S:
                more = self.rejected - self._rejected_logged - 1
                log.warning("bgp: connection from %s refused: not a configured peer%s", conn.remote,
                            f" ({more} more refused since the last report)" if more else "")
                self._rejected_logged_at, self._rejected_logged = now, self.rejected
            await conn.close()
            return
        session.incoming(conn)
