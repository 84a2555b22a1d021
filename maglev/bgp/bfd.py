"""BFD (RFC 5880) for the BGP peers: single hop (RFC 5881), asynchronous mode, no auth.

Why: a router that sees a maglev instance only through BGP notices that it died after
the hold time (9-90 s) when the machine vanishes without closing its TCP connections.
With a BFD session beside each BGP session the router notices in ``interval x
multiplier`` (300 ms x 3 = 0.9 s by default) and drops the BGP session, so ECMP stops
sending flows to the dead instance.  RFC 5882: when our side sees BFD go down, we end the
BGP session too (the router is unreachable; the hold timer would say so much later).

Design
------
- :class:`Packet` is the 24-octet control packet (section 4.1) with its checks
  (section 6.8.6): ``Packet.parse`` raises :class:`BfdError` on anything to discard.
- :class:`Session` is one peer's state machine (section 6.8) on asyncio: a transmit task
  (interval = max(our DesiredMinTx, their RequiredMinRx) with 75-100 % jitter, 1 s while
  not Up), a detection timer (their DetectMult x max(our RequiredMinRx, their
  DesiredMinTx)) rearmed by every valid packet, and a Poll sequence when our timers
  change on the way Up.
- :class:`Endpoint` owns the receive socket(s) on UDP 3784 (one per address family),
  checks TTL/hop limit 255 (RFC 5881 5, GTSM), and hands packets to the session found by
  Your Discriminator, or by source address while that is still zero.  Each session sends
  from its own socket bound to a port in 49152-65535 with TTL 255.

Trade-offs: no authentication, no echo function, no demand mode (we never set D; a peer
in demand mode is served as the RFC says: we stop periodic packets when its
RequiredMinRx is 0).  We are always in the Active role (we send first).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import random
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from maglev.errors import MaglevError

log = logging.getLogger("maglev.bgp")

PORT = 3784  # RFC 5881 4: single-hop control packets
SOURCE_PORTS = (49152, 65535)
VERSION = 1
SLOW_TX_US = 1_000_000  # RFC 5880 6.8.3: DesiredMinTx while not Up
_FMT = "!BBBBIIIII"
# Linux values; the socket module lacks IP_RECVTTL before Python 3.12.
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
LENGTH = struct.calcsize(_FMT)  # 24


class State(enum.IntEnum):
    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3


class Diag(enum.IntEnum):
    NONE = 0
    DETECTION_EXPIRED = 1
    NEIGHBOR_DOWN = 3
    ADMIN_DOWN = 7


class BfdError(MaglevError, ValueError):
    """A control packet to discard (RFC 5880 6.8.6)."""


@dataclass(frozen=True)
class Packet:
    state: State
    my_disc: int
    your_disc: int = 0
    desired_min_tx_us: int = SLOW_TX_US
    required_min_rx_us: int = SLOW_TX_US
    detect_mult: int = 3
    diag: Diag = Diag.NONE
    poll: bool = False
    final: bool = False
    demand: bool = False
    cpi: bool = False  # Control Plane Independent: we run inside the BGP process, so no
    required_min_echo_rx_us: int = 0

    def __bytes__(self) -> bytes:
        flags = (self.poll << 5) | (self.final << 4) | (self.cpi << 3) | (self.demand << 1)
        return struct.pack(
            _FMT,
            (VERSION << 5) | int(self.diag),
            (int(self.state) << 6) | flags,
            self.detect_mult,
            LENGTH,
            self.my_disc,
            self.your_disc,
            self.desired_min_tx_us,
            self.required_min_rx_us,
            self.required_min_echo_rx_us,
        )

    @classmethod
    def parse(cls, data: bytes) -> Packet:
        if len(data) < LENGTH:
            raise BfdError(f"packet of {len(data)} octets is shorter than {LENGTH}")
        b0, b1, mult, length, my, your, tx, rx, echo = struct.unpack_from(_FMT, data)
        if b0 >> 5 != VERSION:
            raise BfdError(f"version {b0 >> 5}")
        if length < LENGTH or length > len(data):
            raise BfdError(f"length field {length} (payload {len(data)})")
        if b1 & 0x04:
            raise BfdError("authentication present (not configured)")
        if mult == 0:
            raise BfdError("detect multiplier 0")
        if b1 & 0x01:
            raise BfdError("multipoint bit set")
        if my == 0:
            raise BfdError("my discriminator 0")
        state = State(b1 >> 6)
        if your == 0 and state not in (State.DOWN, State.ADMIN_DOWN):
            raise BfdError(f"your discriminator 0 in state {state.name}")
        try:
            diag = Diag(b0 & 0x1F)
        except ValueError:
            diag = Diag.NONE  # a diagnostic we do not name; it changes nothing here
        return cls(
            state, my, your, tx, rx, mult, diag, bool(b1 & 0x20), bool(b1 & 0x10), bool(b1 & 0x02), bool(b1 & 0x08), echo
        )


class Session:
    """One peer's BFD session.  ``on_change(old, new)`` is called on every state change."""

    def __init__(
        self,
        endpoint: Endpoint,
        peer: str,
        *,
        local_address: str = "",
        interval_ms: int = 300,
        multiplier: int = 3,
        on_change: Callable[[State, State], None] | None = None,
    ):
        self.endpoint = endpoint
        self.peer = str(ipaddress.ip_address(peer))
        self.local_address = local_address
        self.interval_us = interval_ms * 1000
        self.multiplier = multiplier
        self.on_change = on_change
        self.state = State.DOWN
        self.remote_state = State.DOWN
        self.local_disc = endpoint.new_discriminator()
        self.remote_disc = 0
        self.diag = Diag.NONE
        self.desired_min_tx_us = SLOW_TX_US
        self.remote_min_rx_us = 1  # until we hear from the peer (RFC 5880 6.8.1)
        self.remote_min_tx_us = 0
        self.remote_mult = 0
        self.remote_demand = False
        self.polling = False
        self.counters = {"packets_in": 0, "packets_out": 0, "up": 0, "down": 0, "discarded": 0}
        self.last_change = time.monotonic()
        self._kick = asyncio.Event()
        self._final_pending = False
        self._detect: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._sock: socket.socket | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._sock = self.endpoint.sender(self.peer, self.local_address)
        self._task = asyncio.get_running_loop().create_task(self._tx_loop(), name=f"bfd-{self.peer}")

    async def stop(self, silent: bool = False) -> None:
        """AdminDown to the peer (so it does not take us for failed), then quiet;
        ``silent``: just go quiet, as a crash would (graceful restart)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None
        if self._detect is not None:
            self._detect.cancel()
            self._detect = None
        if not silent:
            self._set_state(State.ADMIN_DOWN, Diag.ADMIN_DOWN)
            self._send()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state.name,
            "remote_state": self.remote_state.name,
            "diag": self.diag.name,
            "local_discriminator": self.local_disc,
            "remote_discriminator": self.remote_disc,
            "tx_interval_ms": round(self._tx_interval_us() / 1000, 1),
            "detection_time_ms": round(self._detection_time_us() / 1000, 1),
            **self.counters,
        }

    # ------------------------------------------------------------------ timers
    def _tx_interval_us(self) -> int:
        return max(self.desired_min_tx_us, self.remote_min_rx_us)

    def _detection_time_us(self) -> int:
        return self.remote_mult * max(self.interval_us, self.remote_min_tx_us)

    async def _tx_loop(self) -> None:
        while True:
            # 75-100 % of the interval, 75-90 % with a multiplier of 1 (RFC 5880 6.8.7).
            jitter = random.uniform(0.75, 0.9 if self.multiplier == 1 else 1.0)
            try:
                async with asyncio.timeout(self._tx_interval_us() * jitter / 1e6):
                    await self._kick.wait()
            except TimeoutError:
                pass
            self._kick.clear()
            # A peer that asked for no periodic packets (RequiredMinRx 0) gets only Finals.
            if self.remote_min_rx_us or self._final_pending:
                self._send()

    def _send(self) -> None:
        final, self._final_pending = self._final_pending, False
        pkt = Packet(
            self.state,
            self.local_disc,
            self.remote_disc,
            self.desired_min_tx_us,
            self.interval_us,
            self.multiplier,
            self.diag,
            poll=self.polling and not final,
            final=final,
        )
        if self._sock is None:
            return
        try:
            self._sock.sendto(bytes(pkt), (self.peer, self.endpoint.port))
            self.counters["packets_out"] += 1
        except OSError as exc:  # no route yet, buffer full: the next interval tries again
            log.debug("bfd %s: send failed: %s", self.peer, exc)

    def _arm_detection(self) -> None:
        if self._detect is not None:
            self._detect.cancel()
        self._detect = asyncio.get_running_loop().call_later(self._detection_time_us() / 1e6, self._expired)

    def _expired(self) -> None:
        self._detect = None
        self.remote_disc = 0
        if self.state in (State.INIT, State.UP):
            self._set_state(State.DOWN, Diag.DETECTION_EXPIRED)

    # ------------------------------------------------------------------ state machine
    def _set_state(self, new: State, diag: Diag = Diag.NONE) -> None:
        old = self.state
        if old == new:
            return
        self.state = new
        self.diag = diag
        self.last_change = time.monotonic()
        if new == State.UP:
            self.counters["up"] += 1
            # Our fast rate applies once Up; announce the change with a Poll sequence.
            self.desired_min_tx_us = self.interval_us
            self.polling = True
        elif old == State.UP:
            self.counters["down"] += 1
        if new != State.UP:
            self.desired_min_tx_us = SLOW_TX_US
        log.info("bfd %s: %s -> %s (%s)", self.peer, old.name, new.name, diag.name)
        self._kick.set()
        if self.on_change is not None:
            try:
                self.on_change(old, new)
            except Exception:
                log.exception("bfd %s: state callback failed", self.peer)

    def receive(self, pkt: Packet) -> None:
        """A valid packet for this session (RFC 5880 6.8.6, after the checks in parse)."""
        self.counters["packets_in"] += 1
        self.remote_disc = pkt.my_disc
        self.remote_state = pkt.state
        self.remote_demand = pkt.demand
        self.remote_min_rx_us = pkt.required_min_rx_us
        self.remote_min_tx_us = pkt.desired_min_tx_us
        self.remote_mult = pkt.detect_mult
        if pkt.final:
            self.polling = False
        if self.state == State.ADMIN_DOWN:
            return
        if pkt.state == State.ADMIN_DOWN:
            if self.state != State.DOWN:
                self._set_state(State.DOWN, Diag.NEIGHBOR_DOWN)
        elif self.state == State.DOWN:
            if pkt.state == State.DOWN:
                self._set_state(State.INIT)
            elif pkt.state == State.INIT:
                self._set_state(State.UP)
        elif self.state == State.INIT:
            if pkt.state in (State.INIT, State.UP):
                self._set_state(State.UP)
        elif pkt.state == State.DOWN:  # we are Up
            self._set_state(State.DOWN, Diag.NEIGHBOR_DOWN)
        if pkt.poll:
            self._final_pending = True
            self._kick.set()
        self._arm_detection()


class Endpoint:
    """Receive sockets on UDP ``port`` and the sessions they feed."""

    def __init__(self, listen_address: str = "", port: int = PORT):
        self.listen_address = listen_address
        self.port = port
        self.sessions: list[Session] = []
        self.discarded = 0
        self._socks: list[socket.socket] = []
        self._discs: set[int] = set()

    def new_discriminator(self) -> int:
        while True:
            d = random.randrange(1, 2**32)
            if d not in self._discs:
                self._discs.add(d)
                return d

    def add(self, session: Session) -> None:
        self.sessions.append(session)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        families = {ipaddress.ip_address(s.peer).version for s in self.sessions}
        if self.listen_address:
            families = {ipaddress.ip_address(self.listen_address).version}
        for version in sorted(families):
            if version == 4:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
                host = self.listen_address or "0.0.0.0"
            else:
                s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
                host = self.listen_address or "::"
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setblocking(False)
            try:
                s.bind((host, self.port))
            except OSError:
                s.close()
                self.close()
                raise
            loop.add_reader(s.fileno(), self._readable, s)
            self._socks.append(s)
        for sess in self.sessions:
            sess.start()

    async def stop(self, silent: bool = False) -> None:
        await asyncio.gather(*(s.stop(silent) for s in self.sessions), return_exceptions=True)
        self.close()

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for s in self._socks:
            loop.remove_reader(s.fileno())
            s.close()
        self._socks.clear()

    def sender(self, peer: str, local_address: str) -> socket.socket:
        """A socket for one session: source port 49152-65535 (RFC 5881 4), TTL 255 (5)."""
        v6 = ipaddress.ip_address(peer).version == 6
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        else:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
        s.setblocking(False)
        lo, hi = SOURCE_PORTS
        for _ in range(64):
            try:
                s.bind((local_address, random.randint(lo, hi)))
                return s
            except OSError:
                continue
        s.close()
        raise OSError(f"bfd {peer}: no free source port in {lo}-{hi}")

    def _readable(self, s: socket.socket) -> None:
        for _ in range(64):  # bounded: other work must run too
            try:
                data, anc, _flags, addr = s.recvmsg(512, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("bfd: receive failed: %s", exc)
                return
            ttl = None
            for level, kind, value in anc:
                if (level, kind) in ((socket.IPPROTO_IP, socket.IP_TTL), (socket.IPPROTO_IPV6, IPV6_HOPLIMIT)):
                    ttl = int.from_bytes(value[:4], sys.byteorder) if len(value) >= 4 else value[0]
            self._dispatch(data, addr[0], ttl)

    def _dispatch(self, data: bytes, source: str, ttl: int | None) -> None:
        if ttl != 255:  # RFC 5881 5: not from a directly connected neighbour
            self.discarded += 1
            return
        try:
            pkt = Packet.parse(data)
        except BfdError as exc:
            self.discarded += 1
            log.debug("bfd: packet from %s discarded: %s", source, exc)
            return
        src = _plain(source)
        if pkt.your_disc:
            sess = next((s for s in self.sessions if s.local_disc == pkt.your_disc), None)
        else:
            sess = next((s for s in self.sessions if s.peer == src), None)
        if sess is None or sess.peer != src:
            self.discarded += 1
            return
        sess.receive(pkt)


def _plain(addr: str) -> str:
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)
