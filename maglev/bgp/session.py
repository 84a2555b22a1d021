"""One BGP session per configured peer: the RFC 4271 section 8 state machine on asyncio.

Design
------
The RFC draws the FSM as a table of (state, event) cells.  Here each session is one
coroutine (:meth:`Session._run`) whose position in the code *is* the state, and the
timers are deadlines on the awaits that can time out:

- Idle: wait out the idle-hold delay (peer oscillation damping, RFC 4271 8.1.1 option
  ``DampPeerOscillations``): 0 s the first time, then 1, 2, 4 ... s after each failed
  session, capped at the connect-retry time, reset once a session was up for a while.
  An incoming connection ends the wait at once: a router that restarted and connects to
  us should not wait for our damping.
- Connect: a TCP connect bounded by the ConnectRetryTimer, raced against an incoming
  connection (TcpConnectionConfirmed wins the race and the outgoing attempt is dropped).
- Active: TCP failed (or the peer is passive): wait for an incoming connection until
  the ConnectRetryTimer expires, then back to Connect.  A passive peer waits forever.
- OpenSent: our OPEN is out; the HoldTimer is the RFC's "large value" (240 s).
- OpenConfirm: their OPEN checked and our KEEPALIVE sent; the negotiated hold time
  bounds the wait for their KEEPALIVE.
- Established: a reader loop (every message restarts the HoldTimer: the read timeout)
  and a writer task that both sends KEEPALIVE every hold/3 s and brings the peer's
  Adj-RIB-Out in line with the speaker's prefix set.  The writer compares *desired* with
  *sent* each time it wakes, so announce/withdraw/route-refresh/re-establishment are one
  idempotent code path and a burst of changes collapses into few UPDATEs.

Any error in a state leaves through one ``except`` ladder in :meth:`_run`: a
:class:`Notify` is sent as a NOTIFICATION, the connection is closed, the session goes to
Idle (RFC 8: most errors "release all resources ... change state to Idle").

Connection collisions (RFC 4271 6.8): an incoming connection that arrives while the
session is in OpenSent/OpenConfirm becomes a "shadow": we send it an OPEN and read the
peer's OPEN on it.  Then the connection opened by the side with the higher BGP
identifier survives (ties, possible between ASes since RFC 6286, are broken by the
higher ASN); the loser gets a CEASE "connection collision resolution" (RFC 4486 7).  An
incoming connection while Established is refused the same way.  When two connections
were both opened by the peer (it restarted and our old one is stale) the newer wins.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import ipaddress
import logging
import random
import struct
import termios
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from maglev.bgp import bfd as bfd_mod
from maglev.bgp import messages as m
from maglev.bgp.messages import Err, Notify

if TYPE_CHECKING:
    from maglev.config import Bgp, BgpPeer


class Speaker(Protocol):
    """What a session uses of its :class:`maglev.bgp.speaker.Speaker` (a Protocol: the
    speaker module imports this one, so this one does not import it)."""

    config: Bgp
    prefixes: Any
    initial_done: bool

    def _emit(self, event: dict[str, Any]) -> None: ...

    def accept_pending(self) -> bool: ...

log = logging.getLogger("maglev.bgp")

OPEN_HOLD_S = 240.0  # RFC 4271 8.2.2: HoldTimer "large value" while waiting for OPEN
SEND_TIMEOUT_S = 15.0  # a peer that reads nothing for this long (or the hold time, if longer) is gone
# A connection from the peer while Established: how long we wait for its OPEN (a peer
# sends its OPEN as soon as TCP is up), and then for the KEEPALIVE we sent on the old
# connection to be answered with a RST when the peer no longer has that connection.
NEWCOMER_OPEN_S = 5.0
PROBE_WAIT_S = 1.0
# Before a dial, a connection already complete in our listening socket's accept queue
# (the peer dialled first) gets this long to be accepted and handed over (a few turns of
# the event loop; a connection from a non-peer costs the dial no more than this).
ACCEPT_PENDING_WAIT_S = 0.2
# A collision the second connection wins by the identifiers while the first is in
# OpenConfirm: how long we wait for the peer's own verdict (it closes one of the two, or
# its KEEPALIVE arrives on one) before following the identifiers alone.  Under load a
# router takes seconds, not milliseconds (see _shadow_handshake).
COLLISION_WAIT_S = 5.0
# The hold timer passed while the peer's bytes sat unread (this process was late): how
# much longer the read may take before the hold timer is judged again (Connection.read).
HOLD_GRACE_S = 1.0
# After our NOTIFICATION: how long the peer's remaining bytes are read (and dropped) while
# we wait for its close, so that ours is a FIN, not a RST (Connection.close).
LINGER_S = 1.0
# At most this many connections linger at once (per process); past it a close is at once:
# a flood of connections we refuse must not hold a socket each for LINGER_S.
MAX_LINGERING = 32
KEEPALIVE_MIN_S = 1.0  # RFC 4271 4.4: KEEPALIVEs no more often than once a second
STABLE_S = 60.0  # a session up this long resets the damping back-off
# Received prefixes are only counted; past this many we stop remembering them, so a
# router that sends us a full table by mistake costs no more than ~8 MB (_key).
MAX_TRACKED_RECEIVED = 100_000
# RFC 7606 errors are logged once per kind and peer, then at most once per this many
# seconds with the count of the ones not logged (a router repeating one bad UPDATE for
# every route must not flood the log).
ERROR_LOG_INTERVAL_S = 60.0


class State(enum.Enum):
    IDLE = "Idle"
    CONNECT = "Connect"
    ACTIVE = "Active"
    OPENSENT = "OpenSent"
    OPENCONFIRM = "OpenConfirm"
    ESTABLISHED = "Established"


def _jitter(seconds: float) -> float:
    """RFC 4271 10: timers get jitter, a factor drawn from 0.75..1.0 each time they start,
    so two speakers that lost a session together do not dial each other in the same
    millisecond again and again (each such collision closes one connection with a CEASE)
    and KEEPALIVEs of many sessions do not come in step."""
    return seconds * random.uniform(0.75, 1.0)


def _key(p: m.Prefix) -> int:
    """A received prefix as one int (address, length, family): a set of 100 000 costs
    ~8 MB where the ip_network objects cost ~50 MB."""
    return (int(p.network_address) << 9) | (p.prefixlen << 1) | (p.version == 6)


def _unkey(k: int) -> m.Prefix:
    """The prefix a :func:`_key` stands for."""
    length, addr = (k >> 1) & 0xFF, k >> 9
    return ipaddress.IPv6Network((addr, length)) if k & 1 else ipaddress.IPv4Network((addr, length))


def _plain(addr: str) -> str:
    """An IPv4-mapped IPv6 address (dual-stack listener) back to plain IPv4."""
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


class Connection:
    """One TCP connection carrying BGP messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outgoing: bool):
        self.reader = reader
        self.writer = writer
        self.outgoing = outgoing
        self.local = _plain(writer.get_extra_info("sockname")[0])
        self.remote = _plain(writer.get_extra_info("peername")[0])
        self.asn4 = True  # the width of AS numbers in UPDATEs, fixed once OPENs are exchanged
        self.ebgp = True  # the peer is external (RFC 7606 rules that depend on it)
        self.opened_at = time.monotonic()
        self.closed = False
        self.on_message: Callable[[str, Any], None] | None = None
        self.pending: m.Message | None = None  # already read (the OPEN of a connection that waited)
        self._header: bytes | None = None  # a header read whose body is still to come
        self._length = 0
        self._consumed = 0  # octets taken off the stream (see read)
        self.late_reads = 0  # hold timer deadlines passed with the peer's bytes waiting (see read)
        self.on_late: Callable[[], None] | None = None
        self.sent_at = self.opened_at  # the last message written (the KeepaliveTimer's start)
        self.send_timeout = SEND_TIMEOUT_S  # raised to the hold time once negotiated
        self._queued = 0  # bytes written through send() (progress of a slow reader)

    async def read(self, timeout: float | None) -> m.Message:
        """The next message; ``timeout`` is the hold timer (None = no hold timer).

        The hold timer is judged on what the peer sent, not on when we got round to
        reading it: when the deadline passes and bytes from the peer are waiting (in the
        kernel's socket or in the stream's buffer, arrived since the read began), it is
        this process that was late -- descheduled under CPU load, stopped, a long pause
        -- not the peer, and the read goes on for ``HOLD_GRACE_S`` more, counted in
        ``late_reads``.  A partial message that does not grow is no proof of life.  A
        timed-out ``readexactly`` consumes nothing, so the retry loses no bytes."""
        if self.pending is not None:
            msg, self.pending = self.pending, None
            return msg
        # Progress is every octet that arrived: read (a header taken off the buffer) or
        # still buffered.  The buffer alone shrinks when a header is taken, and a late
        # reader whose backlog ended in a partial message was judged dead.
        seen, hold = self._consumed + self.buffered(), timeout
        late_since: float | None = None
        while True:
            try:
                async with asyncio.timeout(timeout):
                    if self._header is None:
                        header = await self.reader.readexactly(m.HEADER_LEN)
                        self._consumed += m.HEADER_LEN
                        self._length = m.check_header(header)[0]
                        self._header = header
                    body = await self.reader.readexactly(self._length - m.HEADER_LEN)
                    self._consumed += len(body)
                break
            except TimeoutError:
                buffered = self._consumed + self.buffered()
                now = time.monotonic()
                late_since = now if late_since is None else late_since
                # A late reader catches up in milliseconds; a peer dribbling a message
                # an octet at a time (never a whole one) is not alive for ever: the grace
                # ends one more hold time after the deadline passed.
                dribble = hold is not None and now - late_since >= hold
                if (self.in_kernel() == 0 and buffered <= seen) or dribble:
                    raise Notify(Err.HOLD_TIMER, 0, b"", f"no message for {hold:g} s") from None
                seen = buffered
                timeout = min(timeout or HOLD_GRACE_S, HOLD_GRACE_S)
                self.late_reads += 1
                if self.on_late is not None:
                    self.on_late()
        header, self._header = self._header, None
        msg = m.parse_message(header + body, self.asn4, self.ebgp)
        if self.on_message:
            self.on_message("in", msg)
        return msg

    def buffered(self) -> int:
        """Bytes from the peer in the stream's buffer, not yet read as a message."""
        return len(getattr(self.reader, "_buffer", b""))

    def in_kernel(self) -> int:
        """Bytes from the peer still in the kernel's socket buffer (FIONREAD); 0 when
        the socket is gone."""
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return 0
        try:
            return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        except (OSError, ValueError):
            return 0

    async def send(self, msg: m.Message) -> None:
        """Write ``msg`` and wait until the transport takes more.  A peer that reads
        nothing for ``send_timeout`` s (at least SEND_TIMEOUT_S, at least the hold time
        once negotiated: before that the peer's own hold timer could not have judged us)
        raises TimeoutError; a slow reader that keeps taking bytes never does."""
        raw = bytes(msg)
        self.writer.write(raw)
        self._queued += len(raw)
        self.sent_at = time.monotonic()
        flushed = self._flushed()
        while True:
            try:
                async with asyncio.timeout(self.send_timeout):
                    await self.writer.drain()
                break
            except TimeoutError:
                if (now := self._flushed()) <= flushed:
                    raise
                flushed = now  # the peer reads, slowly: that is not a dead peer
        if self.on_message:
            self.on_message("out", msg)

    def _flushed(self) -> int:
        """Bytes of ours the kernel took so far (all we wrote minus what still waits)."""
        return self._queued - self.writer.transport.get_write_buffer_size()

    def abort(self) -> None:
        self.closed = True
        self.writer.transport.abort()

    lingering = 0  # connections in _linger now, in this process

    async def _linger(self) -> None:
        """Half-close and drop the peer's bytes until its EOF (``close``); bounded in time
        (LINGER_S) and in number (MAX_LINGERING)."""
        if not self.writer.can_write_eof() or self.writer.transport.is_closing():
            return
        if Connection.lingering >= MAX_LINGERING:
            return
        Connection.lingering += 1
        try:
            self.writer.write_eof()
            async with asyncio.timeout(LINGER_S):
                while await self.reader.read(65536):
                    pass
        except (OSError, TimeoutError, RuntimeError):
            # RuntimeError: a read of the session's is still waiting on the stream (it was
            # cancelled and has not run since); then the close is as before.
            pass
        finally:
            Connection.lingering -= 1

    async def close(self, notification: m.Notification | None = None) -> None:
        """Send ``notification`` (best effort) and close; never raises.

        After a NOTIFICATION our side is shut down (a FIN behind it) and what the peer
        still sends is read and dropped until it closes, for ``LINGER_S`` at most.
        Closing at once with the peer's bytes unread (the rest of a malformed message,
        a KEEPALIVE in flight) makes the kernel answer with a RST, and a peer that meets
        the RST may never read the NOTIFICATION: its log says "connection reset", not
        why (2026-12-08, session 10)."""
        if self.closed:
            return
        self.closed = True
        try:
            if notification is not None:
                self.writer.write(bytes(notification))
                async with asyncio.timeout(2):
                    await self.writer.drain()
                if self.on_message:
                    self.on_message("out", notification)
                await self._linger()
            self.writer.close()
            async with asyncio.timeout(2):
                await self.writer.wait_closed()
        except (OSError, TimeoutError, ConnectionError):
            self.writer.transport.abort()
        except asyncio.CancelledError:  # cancelled while draining or lingering: no leaked socket
            self.writer.transport.abort()
            raise


class PeerNotification(Exception):
    """The peer sent us a NOTIFICATION."""

    def __init__(self, notification: m.Notification):
        self.notification = notification
        super().__init__(f"peer sent NOTIFICATION {notification}")


class _Switched(Exception):
    """Collision resolved in favour of the shadow connection."""

    def __init__(self, conn: Connection, open_msg: m.Open):
        self.conn = conn
        self.open = open_msg
        super().__init__("connection collision: continuing on the peer's connection")


def _shutdown_data(text: str) -> bytes:
    """RFC 9003 shutdown communication: length octet + UTF-8 (at most 255 octets)."""
    raw = text.encode()[:255]
    while raw:
        try:
            raw.decode()
            break
        except UnicodeDecodeError:
            raw = raw[:-1]
    return bytes([len(raw)]) + raw if raw else b""


class Session:
    """The FSM of one peer.  Created and driven by :class:`maglev.bgp.speaker.Speaker`."""

    def __init__(self, speaker: Speaker, peer: BgpPeer):
        self.speaker = speaker
        self.peer = peer
        self.address = str(ipaddress.ip_address(peer.address))
        self.state = State.IDLE
        self.conn: Connection | None = None
        self.peer_open: m.Open | None = None
        self.hold_time = 0.0
        self.families: frozenset[tuple[int, int]] = frozenset()
        self.adj_out: set[m.Prefix] = set()  # what this peer has from us right now
        # Routes in adj_out to send again (ROUTE-REFRESH, a new next hop).  Kept apart from
        # adj_out: taking them out of it instead made a VIP withdrawn before the re-send
        # look never announced, and the router kept it for good.
        self.resend: set[m.Prefix] = set()
        self.received: set[int] = set()  # what the peer announced to us, as _key()s (counted only)
        self.no_next_hop: set[m.Prefix] = set()  # wanted but unannounceable on this session
        self.last_error = ""
        self.established_at: float | None = None
        self.failures = 0  # ConnectRetryCounter (drives the damping delay)
        self.counters = {
            "msgs_in": 0, "msgs_out": 0, "updates_in": 0, "updates_out": 0,
            "notifications_in": 0, "notifications_out": 0, "established": 0,
            "skipped_no_next_hop": 0, "received_untracked": 0,
            "updates_treat_as_withdraw": 0, "attributes_discarded": 0,
            "stale_replaced": 0, "collisions_refused": 0, "hold_timer_late": 0, "keepalives_late": 0,
        }  # fmt: skip
        # RFC 7606 errors by "ATTRIBUTE/kind/action" (kept across sessions, like counters).
        self.update_errors: dict[str, int] = {}
        self._error_log: dict[str, tuple[float, int]] = {}  # key -> (last logged, not logged since)
        self._incoming: asyncio.Queue[Connection] = asyncio.Queue()
        self._dirty = asyncio.Event()
        self._switch: asyncio.Future[tuple[Connection, m.Open]] | None = None
        self._shadow: asyncio.Task | None = None
        self._shadow_conn: Connection | None = None  # the connection _shadow works on
        self._shadow_opened = False  # its OPEN arrived (until then a newer one replaces it)
        self._pending_second: Connection | None = None  # see _offer
        self._late_dial: asyncio.Future | None = None
        self._newcomer: asyncio.Task | None = None  # a connection from the peer while Established
        self._left_established = asyncio.Event()  # set when the state leaves Established
        self._established_evt = asyncio.Event()  # set while Established
        self._primary_failed = asyncio.Event()  # the peer dropped the primary during a collision
        self._primary_confirmed = asyncio.Event()  # the peer's KEEPALIVE came on the primary during one
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._stop_text = ""
        self._stop_subcode = Err.ADMIN_SHUTDOWN
        self._silent = False  # abort(): close without a NOTIFICATION
        self.bfd: bfd_mod.Session | None = None  # set by the speaker when the peer has bfd = true
        # RFC 4724: the Restarting bit goes in the OPENs until the first session after
        # a restart of the speaker is up; End-of-RIB follows each initial announcement.
        self._restarting = speaker.restarting
        self._eor_pending = False
        self._writer_error: BaseException | None = None
        self._bg: set[asyncio.Task] = set()  # fire-and-forget work (closing losers); see _spawn

    # ------------------------------------------------------------------ public
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"bgp-{self.address}")

    async def abort(self) -> None:
        """Stop without a NOTIFICATION: the TCP connection is reset, as if the process had
        died, so a router that supports graceful restart keeps our routes (RFC 4724 4.2)."""
        self._silent = True
        await self.stop()

    async def stop(self, text: str = "", subcode: int = Err.ADMIN_SHUTDOWN) -> None:
        """ManualStop: CEASE (administrative shutdown, or ``subcode``: peer de-configured,
        other configuration change) to the peer, then Idle for good."""
        self._stopping = True
        self._stop_text = text
        self._stop_subcode = subcode
        for t in (self._shadow, self._newcomer):
            if t is not None:
                t.cancel()
        if self._task is not None:
            self._task.cancel()
            # asyncio.wait, not ``await task``: a CancelledError here must be our own, never
            # the session task's (swallowing one would hide a cancellation of stop()).
            await asyncio.wait({self._task})
            self._task = None
        while not self._incoming.empty():
            await self._incoming.get_nowait().close()
        if self._bg:  # closes in flight; each is bounded by Connection.close's timeouts
            await asyncio.wait(set(self._bg), timeout=10)

    def _spawn(self, coro: Any) -> asyncio.Task:
        """A background task we keep a reference to (the loop only holds weak ones) and
        that :meth:`stop` waits for."""
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    def received_prefixes(self) -> list[m.Prefix]:
        """What the peer announced to us and did not withdraw (up to MAX_TRACKED_RECEIVED)."""
        return sorted(map(_unkey, self.received), key=lambda p: (p.version, p))

    def changed(self) -> None:
        """The speaker's prefix set changed: wake the writer."""
        self._dirty.set()

    def resend_all(self, version: int | None = None) -> None:
        """Send every route the peer has from us again (of one IP version, or all): a
        ROUTE-REFRESH, a new next hop.  Routes withdrawn meanwhile are still withdrawn:
        Adj-RIB-Out keeps saying what the peer has until the UPDATEs went out."""
        self.resend |= {p for p in self.adj_out if version is None or p.version == version}
        self._dirty.set()

    def incoming(self, conn: Connection) -> None:
        """An accepted TCP connection from this peer's address."""
        self._hook(conn)
        self._offer(conn)

    def _offer(self, conn: Connection) -> None:
        """A connection (incoming, or our own dial that completed late) to place."""
        if self._stopping:
            self._spawn(conn.close())
        elif self.state == State.ESTABLISHED:
            if conn.outgoing:
                # Our own dial that completed after the session came up on the peer's
                # connection: no OPEN went out on it, so it just closes (a CEASE would
                # be one NOTIFICATION more in the router's log, for nothing).
                self._spawn(conn.close())
            elif self._newcomer is not None:
                self.counters["collisions_refused"] += 1
                self._spawn(conn.close(m.Notification(Err.CEASE, Err.COLLISION)))
            else:
                self._newcomer = self._spawn(self._newcomer_handshake(conn))
        elif self.state in (State.OPENSENT, State.OPENCONFIRM):
            if self._shadow is not None and not self._shadow_opened and not conn.outgoing:
                # The second connection has not sent its OPEN yet: a dead one (a router
                # that died right after connecting, its RST lost) must not keep the
                # router's next attempt out until the OpenSent hold timer (240 s).  The
                # newest connection from the peer takes its place.
                old, self._shadow = self._shadow, None
                old.cancel()
                self._shadow_conn, self._shadow_opened = conn, False
                self._shadow = self._spawn(self._shadow_handshake(conn))
            elif self._shadow is not None:
                self._spawn(conn.close(m.Notification(Err.CEASE, Err.CONNECTION_REJECTED)))
            else:
                self._shadow_conn, self._shadow_opened = conn, False
                self._shadow = self._spawn(self._shadow_handshake(conn))
        elif conn.outgoing:
            if self.state == State.CONNECT and self.conn is not None:
                # The primary is chosen but its OPEN not yet sent: a collision candidate.
                self._pending_second = conn
            else:
                self._spawn(conn.close())
        else:
            while not self._incoming.empty():  # keep only the newest waiting connection
                self._spawn(self._incoming.get_nowait().close())
            self._incoming.put_nowait(conn)

    def snapshot(self) -> dict[str, Any]:
        up = self.established_at
        return {
            "peer": self.address,
            "port": self.peer.port,
            "asn": self.peer.asn,
            "state": self.state.value,
            "uptime_s": round(time.monotonic() - up, 1) if up and self.state == State.ESTABLISHED else 0.0,
            "local_address": self.conn.local if self.conn else "",
            "router_id": self.peer_open.router_id if self.peer_open else "",
            "hold_time": self.hold_time,
            "graceful_restart": self._gr_state(),
            "families": sorted("ipv4-unicast" if f == m.IPV4_UNICAST else "ipv6-unicast" for f in self.families if f in (m.IPV4_UNICAST, m.IPV6_UNICAST)),
            "announced": sorted(str(p) for p in self.adj_out),
            "received": len(self.received),
            "last_error": self.last_error,
            **self.counters,
            "update_errors": dict(sorted(self.update_errors.items())),
            "bfd": self.bfd.snapshot() if self.bfd is not None else None,
        }

    def on_bfd(self, old: bfd_mod.State, new: bfd_mod.State) -> None:
        """BFD went down after being Up: the router is unreachable, so end the BGP
        session now rather than after the hold time (RFC 5882 4.1)."""
        if old == bfd_mod.State.UP and new == bfd_mod.State.DOWN and self.state == State.ESTABLISHED and self.conn:
            self._writer_error = ConnectionError(f"BFD session down ({self.bfd.diag.name if self.bfd else ''})")
            self.conn.abort()

    def _gr_state(self) -> dict[str, Any]:
        """What graceful restart means on this session: ours (restart time, whether the
        next OPEN says Restarting) and whether the peer can keep our routes."""
        peer_gr = self.peer_open.graceful_restart if self.peer_open else None
        return {
            "restart_time": self.speaker.config.graceful_restart_time,
            "restarting": self._restarting,
            "peer_supports": peer_gr is not None,
            "peer_restart_time": peer_gr[1] if peer_gr else 0,
        }

    # ------------------------------------------------------------------ helpers
    @property
    def ebgp(self) -> bool:
        return self.peer.asn != self.speaker.config.local_asn

    def _set_state(self, new: State, reason: str = "") -> None:
        old = self.state
        if old == new:
            return
        self.state = new
        if old == State.ESTABLISHED:
            self._left_established.set()
            self._established_evt.clear()
        elif new == State.ESTABLISHED:
            self._left_established = asyncio.Event()
            self._established_evt.set()
        if new in (State.IDLE, State.CONNECT, State.ACTIVE, State.OPENSENT):
            self._primary_failed.clear()
            self._primary_confirmed.clear()
        log.info("bgp peer %s: %s -> %s %s", self.address, old.value, new.value, reason)
        self.speaker._emit(
            {"event": "bgp.state", "peer": self.address, "asn": self.peer.asn, "old": old.value, "new": new.value, "reason": reason}
        )

    def _hook(self, conn: Connection) -> None:
        def count(direction: str, msg: Any) -> None:
            self.counters["msgs_" + direction] += 1
            if isinstance(msg, m.Update):
                self.counters["updates_" + direction] += 1
            elif isinstance(msg, m.Notification):
                self.counters["notifications_" + direction] += 1

        def late() -> None:
            self.counters["hold_timer_late"] += 1
            log.warning("bgp peer %s: hold timer passed with the peer's messages unread: this process was late, "
                        "not the peer; reading them (%s)", self.address, f"hold time {self.hold_time:g} s")

        conn.on_message = count
        conn.on_late = late

    def _open(self) -> m.Open:
        cfg = self.speaker.config
        return m.Open.build(
            cfg.local_asn,
            self.peer.hold_time,
            cfg.router_id,
            (m.IPV4_UNICAST, m.IPV6_UNICAST),
            restart_time=cfg.graceful_restart_time or None,
            restarting=self._restarting,
        )

    def _check_open(self, o: m.Open) -> None:
        """Session-level OPEN checks (RFC 4271 6.2; RFC 6793 for the ASN)."""
        if o.asn != self.peer.asn:
            data = struct.pack("!H", o.my_as)
            raise Notify(Err.OPEN, Err.BAD_PEER_AS, data, f"peer says AS {o.asn}, configured {self.peer.asn}")
        if not self.ebgp and o.router_id == self.speaker.config.router_id:
            raise Notify(Err.OPEN, Err.BAD_BGP_ID, b"", f"iBGP peer has our BGP identifier {o.router_id}")

    # ------------------------------------------------------------------ main loop
    async def _run(self) -> None:
        delay = 0.0
        while True:
            conn: Connection | None = None
            reason = ""
            try:
                self._set_state(State.IDLE)
                conn = await self._acquire(delay)
                await self._session(conn)
            except asyncio.CancelledError:
                if self._silent:  # abort(): no NOTIFICATION, so GR helpers keep our routes
                    if (c := self.conn or conn) is not None:
                        c.abort()
                    await self._end(None, None)
                else:
                    # RFC 9003: the text goes with administrative shutdown and reset only.
                    data = _shutdown_data(self._stop_text) if self._stop_subcode in (Err.ADMIN_SHUTDOWN, Err.ADMIN_RESET) else b""
                    await self._end(self.conn or conn, m.Notification(Err.CEASE, self._stop_subcode, data))
                self._set_state(State.IDLE, "stopped")
                raise
            except Notify as exc:
                reason = f"sent NOTIFICATION {exc}"
                await self._end(self.conn or conn, exc.notification())
            except PeerNotification as exc:
                reason = str(exc)
                await self._end(self.conn or conn, None)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                reason = self._describe(exc)
                await self._end(self.conn or conn, None)
            except Exception as exc:
                # A bug must cost one session, not the peer: reset it and carry on.
                log.exception("bgp peer %s: internal error", self.address)
                reason = f"internal error: {type(exc).__name__}: {exc}"
                await self._end(self.conn or conn, m.Notification(Err.CEASE, 0))
            self.last_error = reason
            log.warning("bgp peer %s: session ended: %s", self.address, reason)
            stable = self.established_at is not None and time.monotonic() - self.established_at >= STABLE_S
            self.failures = 0 if stable else self.failures + 1
            self.established_at = None
            self._set_state(State.IDLE, reason)
            delay = _jitter(min(float(self.speaker.config.connect_retry_time), 2.0 ** (self.failures - 1))) if self.failures else 0.0

    def _describe(self, exc: BaseException) -> str:
        if self._writer_error is not None:
            exc, self._writer_error = self._writer_error, None
        if isinstance(exc, asyncio.IncompleteReadError):
            return "peer closed the connection"
        if isinstance(exc, TimeoutError):
            return "send timed out"
        return f"{type(exc).__name__}: {exc}"

    async def _end(self, conn: Connection | None, notification: m.Notification | None) -> None:
        """Leave the session: close the connection, forget what the peer had."""
        if conn is not None:
            # A NOTIFICATION only makes sense once our OPEN is out (RFC 4271 4.5).
            opened = self.state in (State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED)
            if notification is not None and opened:
                # In the background: the close lingers for the peer's EOF (Connection.close);
                # the session is over now (state, last_error) and stop() waits for it.
                self._spawn(conn.close(notification))
            else:
                await conn.close()
        self.conn = None
        if self._shadow is not None:
            self._shadow.cancel()
            self._shadow = None
        # Not the newcomer: it is waiting for exactly this end of the old session.
        if self._switch is not None and self._switch.done():
            await self._switch.result()[0].close()  # a collision winner nobody picked up
        self._switch = None
        if self._late_dial is not None:
            self._late_dial.cancel()
            self._late_dial = None
        if self._pending_second is not None:
            await self._pending_second.close()
            self._pending_second = None
        if self.adj_out:
            # Closing the session withdraws everything implicitly (RFC 4271 3).
            self.speaker._emit({"event": "bgp.route", "peer": self.address, "action": "withdraw", "prefixes": sorted(str(p) for p in self.adj_out), "implicit": True})
        self.adj_out.clear()
        self.resend.clear()
        self.received.clear()
        self.no_next_hop.clear()
        self.peer_open = None
        self.families = frozenset()
        self.hold_time = 0.0

    async def _wait_incoming(self, timeout: float | None) -> Connection | None:
        try:
            async with asyncio.timeout(timeout):
                return await self._incoming.get()
        except TimeoutError:
            return None

    async def _acquire(self, delay: float) -> Connection:
        """Idle -> Connect/Active -> a TCP connection (ours or the peer's)."""
        if (newcomer := self._newcomer) is not None:
            # The old session just ended while the peer's new connection waits to take
            # its place (its OPEN read or coming): take that one rather than dial a
            # collision; unless the newcomer gives up first.
            get_in = asyncio.ensure_future(self._incoming.get())
            try:
                await asyncio.wait({get_in, newcomer}, timeout=NEWCOMER_OPEN_S + PROBE_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not get_in.done():
                    get_in.cancel()
            if get_in.done() and not get_in.cancelled():
                conn = get_in.result()
            elif not self._incoming.empty():
                conn = self._incoming.get_nowait()
            else:
                conn = None
            if conn is not None:
                self._set_state(State.ACTIVE, "the peer's new connection")
                return conn
        if delay > 0 and (conn := await self._wait_incoming(delay)) is not None:
            self._set_state(State.ACTIVE, "incoming connection")
            return conn
        retry = _jitter(float(self.speaker.config.connect_retry_time))
        if self.peer.passive:
            self._set_state(State.ACTIVE, "passive: waiting for the peer")
            conn = await self._incoming.get()
            return conn
        while True:
            if self._incoming.empty() and self.speaker.accept_pending():
                # The peer's connection may be complete in the kernel, not yet accepted (the
                # peer dialled while we started or waited).  Dialling now crosses it, and a
                # router with graceful restart that went Established on its own connection
                # takes our late one for a restart of ours: it restarts the session and,
                # with a restart already pending, flushes the routes it kept for us (BIRD;
                # seen 2026-12-07: the VIP left its kernel while our successor came up).
                if (conn := await self._wait_incoming(ACCEPT_PENDING_WAIT_S)) is not None:
                    self._set_state(State.ACTIVE, "incoming connection")
                    return conn
            if not self._incoming.empty():  # the peer's connection is already here: no dial
                self._set_state(State.ACTIVE, "incoming connection")
                return self._incoming.get_nowait()
            self._set_state(State.CONNECT)
            started = time.monotonic()
            get_in = asyncio.ensure_future(self._incoming.get())
            dial = asyncio.ensure_future(self._dial(retry))
            try:
                await asyncio.wait({get_in, dial}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                get_in.cancel()
                dial.cancel()
                raise
            if not get_in.done():
                get_in.cancel()
            if get_in.done() and not get_in.cancelled():
                # The peer's connection came first.  Our own attempt is not thrown away: if it
                # completes it is a collision candidate like any second connection (RFC 4271
                # 6.8), so both sides settle on the same connection.  Dropping it instead
                # makes two speakers that dial each other at once close both connections.
                self.conn = conn = get_in.result()
                if dial.done():
                    if (late := self._dial_result(dial)) is not None:
                        self._offer(late)
                else:
                    self._late_dial = dial
                    dial.add_done_callback(self._on_late_dial)
                return conn
            if (out := self._dial_result(dial)) is not None:
                return out
            self._set_state(State.ACTIVE, self.last_error)
            left = max(0.0, retry - (time.monotonic() - started))
            if (conn := await self._wait_incoming(left)) is not None:
                return conn

    @staticmethod
    def _dial_result(dial: asyncio.Future) -> Connection | None:
        if dial.cancelled() or dial.exception() is not None:
            return None
        return dial.result()

    def _on_late_dial(self, dial: asyncio.Future) -> None:
        if self._late_dial is dial:
            self._late_dial = None
        if (conn := self._dial_result(dial)) is not None:
            self._offer(conn)

    async def _dial(self, timeout: float) -> Connection | None:
        """One outgoing TCP connection attempt bounded by the ConnectRetryTimer."""
        try:
            async with asyncio.timeout(timeout):
                local = (self.peer.local_address, 0) if self.peer.local_address else None
                reader, writer = await asyncio.open_connection(self.address, self.peer.port, local_addr=local)
        except (OSError, TimeoutError) as exc:
            self.last_error = f"connect to {self.address}:{self.peer.port} failed: {getattr(exc, 'strerror', None) or exc or 'timeout'}"
            return None
        conn = Connection(reader, writer, outgoing=True)
        self._hook(conn)
        return conn

    async def _recv_or_switch(self, conn: Connection, timeout: float | None) -> m.Message:
        """Read from ``conn`` unless a shadow connection wins a collision first."""
        loop = asyncio.get_running_loop()
        assert self._switch is not None
        if not self._switch.done():
            read = loop.create_task(conn.read(timeout))
            try:
                await asyncio.wait({read, self._switch}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                read.cancel()
                raise
            if not self._switch.done():
                failed = read.exception() is not None or isinstance(read.result(), m.Notification)
                if not (failed and self._shadow is not None):
                    return read.result()
                # The peer gave up this connection while a second one is in its handshake:
                # it chose the other one (a collision it resolved first).  Wait for ours
                # to be resolved instead of ending the session on both connections.
                self._primary_failed.set()
                try:
                    async with asyncio.timeout(NEWCOMER_OPEN_S):
                        await asyncio.wait({self._switch, self._shadow}, return_when=asyncio.FIRST_COMPLETED)
                except TimeoutError:
                    pass
                if not self._switch.done():
                    return read.result()  # raises the read's error, or the NOTIFICATION
            else:
                read.cancel()
        new_conn, open_msg = self._switch.result()
        self._switch = loop.create_future()
        self._primary_failed.clear()
        self._primary_confirmed.clear()
        # In the background: the close lingers for the peer's EOF, the winner goes on now.
        self._spawn(conn.close(m.Notification(Err.CEASE, Err.COLLISION)))
        raise _Switched(new_conn, open_msg)

    async def _session(self, conn: Connection) -> None:
        self.conn = conn
        self._switch = asyncio.get_running_loop().create_future()
        await conn.send(self._open())
        self._set_state(State.OPENSENT, f"{'connected to' if conn.outgoing else 'accepted'} {conn.remote}")
        if (second := self._pending_second) is not None:
            self._pending_second = None
            self._offer(second)
        open_msg: m.Open | None = None
        while self.state != State.ESTABLISHED:
            if open_msg is None:
                try:
                    msg = await self._recv_or_switch(self.conn, OPEN_HOLD_S)
                except _Switched as sw:
                    self.conn, msg = sw.conn, sw.open
                if isinstance(msg, m.Notification):
                    raise PeerNotification(msg)
                if not isinstance(msg, m.Open):
                    raise Notify(Err.FSM, Err.FSM_IN_OPENSENT, bytes([msg.TYPE]), f"{type(msg).__name__} in OpenSent")
                open_msg = msg
            self._check_open(open_msg)
            self.peer_open = open_msg
            self.conn.asn4 = open_msg.asn4 is not None
            self.conn.ebgp = self.ebgp
            self.hold_time = float(min(self.peer.hold_time, open_msg.hold_time))
            self.conn.send_timeout = max(SEND_TIMEOUT_S, self.hold_time)
            self.families = open_msg.families & {m.IPV4_UNICAST, m.IPV6_UNICAST}
            await self.conn.send(m.Keepalive())
            self._set_state(State.OPENCONFIRM, f"peer {open_msg.router_id} AS {open_msg.asn}")
            # The KeepaliveTimer runs in OpenConfirm too (RFC 4271 8.2.2).
            ka = asyncio.get_running_loop().create_task(self._keepalives(self.conn)) if self.hold_time else None
            try:
                msg = await self._recv_or_switch(self.conn, self.hold_time or None)
                if isinstance(msg, m.Notification):
                    raise PeerNotification(msg)
                if not isinstance(msg, m.Keepalive):
                    raise Notify(Err.FSM, Err.FSM_IN_OPENCONFIRM, bytes([msg.TYPE]), f"{type(msg).__name__} in OpenConfirm")
                await self._settle(self.conn)  # KEEPALIVEs go on meanwhile
            except _Switched as sw:
                self.conn, open_msg = sw.conn, sw.open
                continue  # check the new OPEN, answer it with a KEEPALIVE, stay in OpenConfirm
            finally:
                if ka is not None:
                    ka.cancel()
                    await asyncio.wait({ka})
            self.established_at = time.monotonic()
            self.counters["established"] += 1
            self._restarting = False
            self._set_state(State.ESTABLISHED, f"hold time {self.hold_time:g} s")
        await self._established(self.conn)

    def keepalive_interval(self) -> float:
        """Seconds between KEEPALIVEs (0 = none: hold time 0).

        RFC 4271 suggests a third of the hold time as the most; we send at a ninth, but
        never more often than once a second (RFC 4271 4.4).  The peer's hold timer then
        forgives this process a stall (CPU starvation, a pause, a SIGSTOP) of up to the
        hold time minus that interval -- 8 s of a 9 s hold time instead of 6 s -- for one
        19-octet message a second at most."""
        if not self.hold_time:
            return 0.0
        return min(self.hold_time / 3, max(KEEPALIVE_MIN_S, self.hold_time / 9))

    async def _keepalives(self, conn: Connection) -> None:
        """The KeepaliveTimer (OpenConfirm and Established), a task of its own: nothing
        else the session does (UPDATE building, a burst of prefix changes, a slow peer
        reading UPDATEs) delays it.  It restarts on every message sent (RFC 4271 8.2.2:
        an UPDATE counts).  Woken late (this process was not scheduled), it sends at once
        and counts ``keepalives_late``."""
        interval = self.keepalive_interval()
        if not interval:
            return
        try:
            while True:
                this = max(KEEPALIVE_MIN_S, _jitter(interval))
                while (now := time.monotonic()) < (due := conn.sent_at + this):
                    await asyncio.sleep(due - now)  # again when an UPDATE went out meanwhile
                if now - due >= interval / 2:
                    self.counters["keepalives_late"] += 1
                    log.warning("bgp peer %s: KEEPALIVE %.1f s late (this process was not scheduled)", self.address, now - due)
                await conn.send(m.Keepalive())
        except TimeoutError as exc:  # the peer has not read for SEND_TIMEOUT_S: end it
            self._writer_error = exc
            conn.abort()
        except OSError:
            pass  # the reader sees the broken connection and ends the session

    def _local_key(self) -> tuple[int, int]:
        """Our side in collision resolution: BGP identifier, then ASN (RFC 6286)."""
        return int(ipaddress.IPv4Address(self.speaker.config.router_id)), self.speaker.config.local_asn

    @staticmethod
    def _remote_key(o: m.Open) -> tuple[int, int]:
        return int(ipaddress.IPv4Address(o.router_id)), o.asn

    async def _shadow_handshake(self, conn: Connection) -> None:
        """Second connection during OpenSent/OpenConfirm: OPEN both ways, then resolve."""
        try:
            await conn.send(self._open())
            msg = await conn.read(OPEN_HOLD_S)
            if self._shadow is asyncio.current_task():
                self._shadow_opened = True
            if not isinstance(msg, m.Open):
                await conn.close(m.Notification(Err.FSM, Err.FSM_IN_OPENSENT) if not isinstance(msg, m.Notification) else None)
                return
            self._check_open(msg)
            primary = self.conn
            if self.state not in (State.OPENSENT, State.OPENCONFIRM) or primary is None:
                await conn.close(m.Notification(Err.CEASE, Err.COLLISION))
                return
            local, remote = self._local_key(), self._remote_key(msg)
            # Keep the connection opened by the side with the higher identifier; of two
            # opened by the same side, the newer (the older one is likely stale).
            if primary.outgoing != conn.outgoing:
                keep_shadow = conn.outgoing == (local > remote)
            else:
                keep_shadow = True
            if keep_shadow and self.state == State.OPENCONFIRM and not self._primary_failed.is_set():
                # Our KEEPALIVE is out on the primary, so the peer may be Established on
                # it already and will refuse this connection (RFC 4271 6.8): switching now
                # would close both.  The peer decides, and says so: it closes one of the
                # two (a NOTIFICATION or EOF), or sends its KEEPALIVE on one (on this
                # one: it chose it; on the primary: _settle).  Only a peer that says
                # nothing for COLLISION_WAIT_S leaves it to the identifiers.
                keep_shadow = await self._await_verdict(conn)
            if keep_shadow is None:  # the peer refused this connection
                await conn.close()
                return
            log.info("bgp peer %s: connection collision, keeping the %s one", self.address,
                     "second" if keep_shadow else "first")
            if keep_shadow and self._switch is not None and not self._switch.done():
                self._switch.set_result((conn, msg))
            else:
                await conn.close(m.Notification(Err.CEASE, Err.COLLISION))
        except Notify as exc:
            await conn.close(exc.notification())
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            await conn.close()
        except Exception:
            log.exception("bgp peer %s: internal error on a second connection", self.address)
            await conn.close(m.Notification(Err.CEASE, 0))
        except asyncio.CancelledError:
            if self.conn is not conn:
                await conn.close()
            raise
        finally:
            if self._shadow is asyncio.current_task():
                self._shadow = None

    async def _await_verdict(self, conn: Connection) -> bool | None:
        """The peer's verdict on a collision our second connection ``conn`` wins by the
        identifiers while the primary is in OpenConfirm: True = continue on ``conn`` (the
        peer closed the primary, or sent its KEEPALIVE on ``conn``: it is in OpenConfirm
        there, which it only is when it chose it), False = keep the primary (we went
        Established on it: :meth:`_settle` saw the peer Established there), None = the
        peer refused ``conn``.  Without a word from the peer for COLLISION_WAIT_S: True
        (the identifiers' rule; the primary's KEEPALIVE alone does not decide, see
        :meth:`_settle`)."""
        loop = asyncio.get_running_loop()
        verdict = loop.create_task(conn.read(None))
        events = {loop.create_task(e.wait()) for e in (self._established_evt, self._primary_failed)}
        try:
            deadline = loop.time() + COLLISION_WAIT_S
            while True:
                left = None if self._primary_confirmed.is_set() else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait({verdict, *events}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if verdict.done():
                    if verdict.cancelled() or verdict.exception() is not None or isinstance(verdict.result(), m.Notification):
                        return None
                    if isinstance(verdict.result(), m.Keepalive):
                        conn.pending = verdict.result()  # the OpenConfirm read gets it
                        return True
                    raise Notify(Err.FSM, Err.FSM_IN_OPENCONFIRM, bytes([verdict.result().TYPE]), "before our KEEPALIVE")
                if self.state == State.ESTABLISHED:
                    return False
                if self._primary_failed.is_set():
                    return True
                if done:
                    return None  # woken by the session leaving OpenConfirm: nothing to keep
                if not self._primary_confirmed.is_set():
                    return True  # no verdict: the identifiers decide
        finally:
            for t in (verdict, *events):
                t.cancel()
            await asyncio.wait({verdict, *events})

    async def _settle(self, conn: Connection) -> None:
        """The peer's KEEPALIVE came on the primary ``conn`` while a second connection
        that wins by the identifiers is in its handshake.  The peer is in OpenConfirm or
        Established on ``conn`` -- and if only in OpenConfirm, our OPEN on the second
        connection makes it close ``conn`` (RFC 4271 6.8; BIRD does).  Going Established
        now and refusing the second connection then lost both: under load (our OPEN on
        the second connection crossing the peer's KEEPALIVE) one reset more after a
        router restart, seen in CI.  So wait for the peer's verdict: any further message
        on ``conn`` (it is Established there: the message is kept for the session) or
        the second connection refused -> stay on ``conn``; ``conn`` closed by the peer
        -> the second connection (raises :class:`_Switched`).  Bounded by
        COLLISION_WAIT_S, then ``conn`` stays (we hold the peer's KEEPALIVE on it)."""
        loop = asyncio.get_running_loop()
        shadow, second = self._shadow, self._shadow_conn
        if shadow is None or shadow.done() or second is None or self.peer_open is None:
            return
        if second.outgoing != conn.outgoing and second.outgoing != (self._local_key() > self._remote_key(self.peer_open)):
            return  # the second connection loses by the identifiers: the peer refuses it too
        self._primary_confirmed.set()
        assert self._switch is not None
        read = loop.create_task(conn.read(self.hold_time or None))
        try:
            await asyncio.wait({read, self._switch, shadow}, timeout=COLLISION_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            read.cancel()
            raise
        if self._switch.done() or (read.done() and (read.exception() is not None or isinstance(read.result(), m.Notification))):
            # The peer chose the second connection (it closed this one): wait for the
            # second's handshake, or end the session with this one's error.
            if not self._switch.done():
                self._primary_failed.set()
                try:
                    async with asyncio.timeout(NEWCOMER_OPEN_S):
                        await asyncio.wait({self._switch, shadow}, return_when=asyncio.FIRST_COMPLETED)
                except TimeoutError:
                    pass
            if not self._switch.done():
                raise PeerNotification(read.result())  # read.result() raises the read's error
            if read.done() and not read.cancelled():
                read.exception()  # retrieved: the error is the closed connection we leave
            read.cancel()
            await asyncio.wait({read})
            new_conn, open_msg = self._switch.result()
            self._switch = loop.create_future()
            self._primary_failed.clear()
            self._primary_confirmed.clear()
            self._spawn(conn.close(m.Notification(Err.CEASE, Err.COLLISION)))  # lingers: see above
            raise _Switched(new_conn, open_msg)
        if read.done():
            conn.pending = read.result()  # the peer is Established here: the session reads it first
        else:
            read.cancel()  # a cancelled read loses nothing (Connection.read)
            await asyncio.wait({read})

    async def _newcomer_handshake(self, conn: Connection) -> None:
        """A connection from the peer while our session with it is Established.

        RFC 4271 6.8 refuses it (CEASE, connection collision resolution) and so do we while
        the old session is alive.  But the usual reason for it is a peer that restarted and
        lost the old connection without us hearing (a reboot, a power cut, a FIN lost on a
        dead link); refusing it until our hold timer expires makes the router count one
        failed session per connect retry: a flapping session from its side.  So:

        - the old connection is probed at once with a KEEPALIVE; a peer that no longer has
          that connection answers with a RST, the old session ends, and the new connection
          (its OPEN already read) takes its place;
        - a peer that advertised graceful restart on the old session and does again in
          the new OPEN has restarted (RFC 4724 4.2): the old connection is closed and the
          new one accepted without waiting for the probe.

        We read the peer's OPEN before sending ours (the peer sends its OPEN when TCP is
        up); a peer that sends nothing within ``NEWCOMER_OPEN_S`` is refused as before.
        """
        old = self.conn
        handed = False
        try:
            if old is not None:
                self._spawn(self._probe(old))
            try:
                msg = await conn.read(NEWCOMER_OPEN_S)
            except Notify as exc:
                if exc.code != Err.HOLD_TIMER:
                    raise
                msg = None
            if isinstance(msg, m.Notification):
                await conn.close()
                return
            if msg is not None and not isinstance(msg, m.Open):
                raise Notify(Err.FSM, Err.FSM_IN_OPENSENT, bytes([msg.TYPE]), f"{type(msg).__name__} before OPEN")
            if msg is not None:
                self._check_open(msg)
            if msg is not None and self.state == State.ESTABLISHED and self.conn is old and old is not None:
                left = self._left_established
                if self.peer_open is not None and self.peer_open.graceful_restart is not None and msg.graceful_restart is not None:
                    log.warning("bgp peer %s: new connection from the peer while Established: it restarted "
                                "(graceful restart, RFC 4724 4.2); closing the old session", self.address)
                    self._writer_error = ConnectionError("the peer restarted: its new connection replaces this one (RFC 4724 4.2)")
                    old.abort()
                    timeout = 2.0
                else:
                    timeout = PROBE_WAIT_S
                try:
                    async with asyncio.timeout(timeout):
                        await left.wait()
                except TimeoutError:
                    pass
            if msg is None or self.state == State.ESTABLISHED or self._stopping:
                self.counters["collisions_refused"] += 1
                log.info("bgp peer %s: connection collision with an established session, keeping the existing one", self.address)
                await conn.close(m.Notification(Err.CEASE, Err.COLLISION))
                return
            self.counters["stale_replaced"] += 1
            log.warning("bgp peer %s: the old session is gone; continuing on the peer's new connection", self.address)
            conn.pending = msg
            handed = True
            self._newcomer = None  # _offer must not see this task as still running
            self._offer(conn)
        except Notify as exc:
            await conn.close(exc.notification())
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.info("bgp peer %s: second connection failed: %s", self.address, exc)
            await conn.close()
        except Exception:
            log.exception("bgp peer %s: internal error on a second connection", self.address)
            await conn.close(m.Notification(Err.CEASE, 0))
        except asyncio.CancelledError:
            if not handed:
                await conn.close()
            raise
        finally:
            if self._newcomer is asyncio.current_task():
                self._newcomer = None

    async def _probe(self, conn: Connection) -> None:
        """A KEEPALIVE on ``conn`` now: a live peer ignores an extra one (RFC 4271 4.4
        sets only a maximum rate in practice), a peer without the connection sends a RST."""
        try:
            await conn.send(m.Keepalive())
        except (OSError, TimeoutError):
            pass  # the session's reader sees the broken connection

    # ------------------------------------------------------------------ Established
    async def _established(self, conn: Connection) -> None:
        self.adj_out.clear()
        self.resend.clear()
        self._dirty.set()  # initial announcement of everything we have
        # End-of-RIB after it (RFC 4724 2) to peers that sent the GR capability: a
        # router keeping our routes from before a restart drops the stale ones then.
        self._eor_pending = self.peer_open is not None and self.peer_open.graceful_restart is not None
        self._writer_error = None
        writer = asyncio.get_running_loop().create_task(self._writer(conn))
        keepalives = asyncio.get_running_loop().create_task(self._keepalives(conn))
        try:
            while True:
                # One message per loop pass: a reader with a full buffer returns without
                # yielding, so a flood (a full table, a KEEPALIVE storm) held the event
                # loop for ~0.3 s per 380 KiB read (2.6 s under load): our KEEPALIVEs,
                # other sessions and the mailbox waited behind it.
                await asyncio.sleep(0)
                msg = await conn.read(self.hold_time or None)
                if isinstance(msg, m.Keepalive):
                    continue
                if isinstance(msg, m.Update):
                    self._on_update(msg)
                elif isinstance(msg, m.RouteRefresh):
                    fam = (msg.afi, msg.safi)
                    # Subtype 0 is a request; BoRR/EoRR (RFC 7313: 1, 2) only mark the
                    # peer's own re-advertisement, and other values are to be ignored.
                    if fam in self.families and msg.subtype == 0:
                        version = 4 if msg.afi == m.AFI_IPV4 else 6
                        self.resend_all(version)
                elif isinstance(msg, m.Notification):
                    raise PeerNotification(msg)
                elif isinstance(msg, m.Open):
                    raise Notify(Err.FSM, Err.FSM_IN_ESTABLISHED, bytes([m.OPEN]), "OPEN in Established")
        finally:
            writer.cancel()
            keepalives.cancel()
            # Not ``await writer`` inside try/except: that would also swallow a cancellation
            # of *this* task arriving meanwhile (Session.stop), and the session would go on.
            await asyncio.wait({writer, keepalives})

    def _on_update(self, u: m.Update) -> None:
        if u.errors:
            self._count_errors(u)
        for p in u.withdrawn_all():
            self.received.discard(_key(p))
        for p in u.announced():
            k = _key(p)
            if len(self.received) < MAX_TRACKED_RECEIVED or k in self.received:
                self.received.add(k)
            else:
                self.counters["received_untracked"] += 1

    def _count_errors(self, u: m.Update) -> None:
        """RFC 7606: the session stays up; each error is counted and logged (rate-limited)."""
        if u.treat_as_withdraw:
            self.counters["updates_treat_as_withdraw"] += 1
        now = time.monotonic()
        for e in u.errors:
            if e.action == m.ATTRIBUTE_DISCARD:
                self.counters["attributes_discarded"] += 1
            self.update_errors[e.key] = self.update_errors.get(e.key, 0) + 1
            last, quiet = self._error_log.get(e.key, (-ERROR_LOG_INTERVAL_S, 0))
            if now - last < ERROR_LOG_INTERVAL_S:
                self._error_log[e.key] = (last, quiet + 1)
                continue
            self._error_log[e.key] = (now, 0)
            more = f" ({quiet} more since the last report)" if quiet else ""
            routes = ", ".join(map(str, u.withdrawn_all()[:4])) if e.action == m.TREAT_AS_WITHDRAW else ""
            log.warning(
                "bgp peer %s: UPDATE error, %s: %s%s%s", self.address, e.action, e.reason,
                f" (routes {routes}{' ...' if len(u.withdrawn_all()) > 4 else ''} treated as withdrawn)" if routes else "", more,
            )

    async def _writer(self, conn: Connection) -> None:
        """Adj-RIB-Out synchronisation (RFC 4271 9.2); KEEPALIVEs are :meth:`_keepalives`."""
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                await self._sync(conn)
                if self._eor_pending and self.speaker.initial_done:
                    self._eor_pending = False
                    for fam in sorted(self.families):
                        await conn.send(m.end_of_rib(fam))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # make the reader notice: it owns the session's end
            self._writer_error = exc
            conn.abort()

    def _next_hop(self, version: int, conn: Connection) -> str:
        cfg = self.speaker.config
        configured = cfg.next_hop_ipv4 if version == 4 else cfg.next_hop_ipv6
        if configured:
            return configured
        local = ipaddress.ip_address(conn.local)
        if local.version == version and not (version == 6 and local.is_link_local):
            return str(local)
        return ""

    async def _sync(self, conn: Connection) -> None:
        desired = self.speaker.prefixes
        for version, fam in ((4, m.IPV4_UNICAST), (6, m.IPV6_UNICAST)):
            if fam not in self.families:
                continue
            want = {p for p in desired if p.version == version}
            have = {p for p in self.adj_out if p.version == version}
            # Taken now: a ROUTE-REFRESH while the UPDATEs below go out asks again.
            redo = {p for p in self.resend if p.version == version}
            self.resend -= redo
            hop = self._next_hop(version, conn)
            gone = have - want
            if not hop:
                gone |= have & redo  # announced with a next hop we no longer have
            gone = sorted(gone)
            new = sorted((want - have) | (want & redo))
            for u in m.build_withdraw(gone):
                await conn.send(u)
            if gone:
                self.adj_out -= set(gone)
                self.speaker._emit({"event": "bgp.route", "peer": self.address, "action": "withdraw", "prefixes": [str(p) for p in gone]})
            if not new:
                continue
            if not hop:
                # Counted and logged once per prefix and session, not on every wake-up.
                fresh = set(new) - self.no_next_hop
                if fresh:
                    self.no_next_hop |= fresh
                    self.counters["skipped_no_next_hop"] = len(self.no_next_hop)
                    log.warning("bgp peer %s: no IPv%d next hop on this session (set bgp.next_hop_ipv%d); not announcing %s", self.address, version, version, ", ".join(map(str, sorted(fresh))))
                continue
            for u in m.build_announce(new, local_asn=self.speaker.config.local_asn, ebgp=self.ebgp, asn4=conn.asn4, next_hop=hop):
                await conn.send(u)
            self.adj_out |= set(new)
            self.speaker._emit({"event": "bgp.route", "peer": self.address, "action": "announce", "prefixes": [str(p) for p in new], "next_hop": hop})
