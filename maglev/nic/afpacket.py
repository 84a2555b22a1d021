"""AF_PACKET NIC (``--nic afpacket:IFACE[,ring=v2|v3,queues=N,fanout=ID]``): a TPACKET_V2
receive ring and a TPACKET_V2 transmit ring with PACKET_QDISC_BYPASS.

The per-packet work is C (``mg_afpacket.c``; its header has the design notes): one call
receives a burst from the mmap'd ring straight into frames of the shared frame pool, one
call transmits a burst of pool frames.  This module only opens and closes the socket,
turns errors into clear sentences, waits for packets without spinning (``poll`` on the
socket), and survives the interface going away:

* link down/up with the same ifindex: the kernel re-hooks the socket by itself; the ring
  is just quiet meanwhile.  A transmit the kernel refuses (ENETDOWN) takes its frames back
  out of the TX ring and rewinds the ring position with them (``mg_afpacket.c``,
  ``tx_kick``), so the first burst after the link returns goes out; the frames are counted
  (``tx_errors``), the outage too (``tx_link_down``; ``rx_link_down`` for the ENETDOWN the
  receive socket reports), and :meth:`AfPacketNic.maintain` logs the outage and the
  recovery;
* the interface deleted and created again (new ifindex): :meth:`AfPacketNic.maintain`
  notices the name now points at another ifindex and reopens the socket.

Two receive ring flavours (``ring="v2"``, the default, or ``"v3"``; or
``MAGLEV_AFPACKET_RING`` in the environment, which reaches the steering process that
``maglev run`` starts): V3 hands over whole blocks and wakes the reader only when a block
is retired, after a timer that counts in jiffies, a latency floor of about a millisecond
at low packet rates that no V3 setting removes; V2 hands over every packet at once (wake-up
p50 ~0.05 ms).  See ``mg_afpacket.h`` and docs/nic.md for the numbers.

Several receive sockets on one interface (``queues=N`` on the command line: steering
opens N) share its packets through PACKET_FANOUT (hash, defragmenting), group ``fanout``
(default: derived from the process id).

The receive ring is created on first use (``rx_burst``, ``wait`` or ``fileno``): the
pipeline opens one object for receiving (steering) and another for transmitting (muxer),
and a transmit-only socket should neither hold a 4 MiB ring nor make the kernel copy
every received packet into it.

Needs CAP_NET_RAW (root): without it the constructor raises :class:`NotRootError`.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import select
import socket
import time
from typing import Any

from maglev.errors import MaglevError, NotRootError
from maglev.native import check, ffi, lib
from maglev.nic.multiqueue import rx_round_robin

log = logging.getLogger("maglev.nic.afpacket")

__all__ = ["RINGS", "AfPacketMulti", "AfPacketNic", "NicError", "open_afpacket_rx"]

# TPACKET_V2 (one frame per packet: no block-retire latency floor; the default) or
# TPACKET_V3 (blocks: fewest wake-ups at high rates).  ``MAGLEV_AFPACKET_RING`` overrides.
RINGS = {"v3": lib.MG_AFP_RING_V3, "v2": lib.MG_AFP_RING_V2}

_STAT_FIELDS = (
    "rx_packets",
    "rx_bytes",
    "rx_outgoing",
    "rx_oversize",
    "rx_truncated",
    "rx_csum_fixed",
    "rx_vlan",
    "rx_blocks",
    "tx_packets",
    "tx_bytes",
    "tx_errors",
    "tx_calls",
    "tx_ring_full",
    "tx_link_down",
)


class NicError(MaglevError, OSError):
    """The NIC could not be opened or used."""


class AfPacketNic:
    """One AF_PACKET socket bound to ``iface`` with a TPACKET_V3 RX ring.

    ``rx_burst(pool, descs, n)`` fills frames ``descs[0..k)`` (cffi ``uint8_t *`` pool of
    ``MG_FRAME_SIZE`` frames, cffi ``uint64_t *`` descriptors) and returns ``k``;
    ``tx_burst(pool, descs, n)`` sends frames and returns how many went out (the caller
    owns every frame again when it returns, sent or not).
    """

    kind = "afpacket"

    def __init__(
        self,
        iface: str,
        *,
        block_size: int = 0,
        block_nr: int = 0,
        tov_ms: int = 0,
        qdisc_bypass: bool = True,
        fix_checksums: bool = True,
        ring: str | None = None,
        fanout: int | None = None,
        tx_frags: bool = False,
    ) -> None:
        self.iface = iface
        ring = ring or os.environ.get("MAGLEV_AFPACKET_RING", "") or "v2"
        if ring not in RINGS:
            raise NicError(errno.EINVAL, f"afpacket: ring {ring!r} is not one of {', '.join(RINGS)}")
        self.ring = ring
        if fanout is not None and not 0 <= fanout <= 0xFFFF:
            raise NicError(errno.EINVAL, f"afpacket: fanout group {fanout} is not within 0..65535")
        self.fanout = fanout
        self._geometry = (block_size, block_nr, tov_ms)
        # tx_frags: TX-ring skbs point at the ring's pages instead of holding a linear
        # copy (mg_afpacket.h, "Linear TX skbs"); veth and bridges copy them again.
        self._flags = (
            (0 if qdisc_bypass else lib.MG_AFP_F_NO_QDISC_BYPASS)
            | (0 if fix_checksums else lib.MG_AFP_F_NO_CSUM_FIX)
            | (lib.MG_AFP_F_TX_FRAGS if tx_frags else 0)
        )
        self._afp = ffi.new("struct mg_afp *")
        self._afp.fd = -1
        self._poll: select.poll | None = None
        self._next_check = 0.0
        self.reopens = 0
        self.rx_link_down = 0  # ENETDOWN reports read from the receive socket
        self._tx_down_since: float | None = None  # the outage maintain() logged
        self._kernel = {"kernel_packets": 0, "kernel_drops": 0, "kernel_freezes": 0}
        self._rx_on = False
        # Other descriptors wait() also returns for (steering's doorbell pipe): a
        # process that receives from the NIC may have other work to wake up for.
        self._also: list[int] = []
        page = mmap.PAGESIZE
        bs = block_size
        if bs and (bs & (bs - 1) or bs % page or bs < lib.MG_FRAME_SIZE) or not 0 <= block_nr <= 4096:
            raise NicError(
                errno.EINVAL,
                f"afpacket: bad ring geometry for {iface} (block size must be a power of two, "
                "a multiple of the page size and at least one frame; at most 4096 blocks)",
            )
        self._prev = {k: 0 for k in _STAT_FIELDS}  # counters of sockets already closed
        self._open()

    # -- lifecycle -------------------------------------------------------------

    def _ifindex(self) -> int:
        try:
            return socket.if_nametoindex(self.iface)
        except OSError:
            raise NicError(
                errno.ENODEV, f"afpacket: no network interface named {self.iface!r} here"
            ) from None

    def _open(self) -> None:
        ifindex = self._ifindex()
        rc = lib.mg_afp_open(self._afp, ifindex, self._flags)
        if rc in (-errno.EPERM, -errno.EACCES):
            raise NotRootError(
                f"the afpacket NIC needs root (CAP_NET_RAW) to open a packet socket on {self.iface}"
            )
        check(rc, f"afpacket: opening {self.iface}")
        if self._rx_on:
            self._rx_on = False
            self._ensure_rx()

    def start_rx(self) -> None:
        """Create the receive ring now (otherwise the first ``rx_burst``/``wait`` does)."""
        self._ensure_rx()

    def _ensure_rx(self) -> None:
        if self._rx_on:
            return
        bs, bn, tov = self._geometry
        check(lib.mg_afp_rx_enable(self._afp, RINGS[self.ring], bs, bn, tov),
              f"afpacket: {self.ring} RX ring on {self.iface}")
        if self.fanout is not None:
            check(lib.mg_afp_fanout(self._afp, self.fanout),
                  f"afpacket: fan-out group {self.fanout} on {self.iface} (another program's group, "
                  "or one with other settings?)")
        self._poll = select.poll()
        self._poll.register(self._afp.fd, select.POLLIN | select.POLLERR)
        for fd in self._also:
            self._poll.register(fd, select.POLLIN)
        self._rx_on = True

    def close(self) -> None:
        if self._afp is not None and self._afp.fd >= 0:
            self._harvest_kernel_stats()
            lib.mg_afp_close(self._afp)
        self._poll = None

    def __enter__(self) -> AfPacketNic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # the socket and the ring must not outlive the object
        try:
            self.close()
        except Exception:
            pass

    def fileno(self) -> int:
        self._ensure_rx()
        return int(self._afp.fd)

    @property
    def ifindex(self) -> int:
        return int(self._afp.ifindex)

    # -- data path -------------------------------------------------------------

    def rx_burst(self, pool: Any, descs: Any, n: int) -> int:
        if not self._rx_on:
            self._ensure_rx()
        return check(lib.mg_afp_rx_burst(self._afp, pool, descs, n), f"afpacket rx on {self.iface}")

    def tx_burst(self, pool: Any, descs: Any, n: int) -> int:
        if n <= 0:
            return 0
        return check(lib.mg_afp_tx_burst(self._afp, pool, descs, n), f"afpacket tx on {self.iface}")

    def nic_loop_rx(self) -> Any:
        """This socket as the source of steering's C loop (``mg_steer_loop_nic``)."""
        self._ensure_rx()
        return loop_nic([self._afp])

    def nic_loop_tx(self) -> Any:
        """This socket as the sink of the muxer's C loop (``mg_mux_loop_nic``)."""
        return loop_nic([self._afp])

    def wake_on(self, fd: int) -> None:
        """Make :meth:`wait` also return when ``fd`` becomes readable (kept across a
        reopen).  Reading it is the caller's business: a readable fd makes every wait
        return at once until it is drained."""
        if fd not in self._also:
            self._also.append(fd)
            if self._poll is not None:
                self._poll.register(fd, select.POLLIN)

    def wait(self, timeout_s: float) -> bool:
        """Sleep until the ring may have packets or an fd given to :meth:`wake_on` is
        readable (True), or the timeout passed (False)."""
        if not self._rx_on:
            self._ensure_rx()
        if self._poll is None:
            time.sleep(timeout_s)
            return False
        try:
            events = self._poll.poll(max(0, int(timeout_s * 1000)))
        except InterruptedError:
            return True
        for fd, ev in events:
            if ev & select.POLLERR and fd == self._afp.fd:
                self._clear_error()
        return bool(events)

    def _clear_error(self) -> None:
        # ENETDOWN is reported once through SO_ERROR after the link went down; reading
        # it clears it, so poll does not keep waking us.
        try:
            s = socket.socket(fileno=os.dup(self._afp.fd))
            try:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            finally:
                s.close()
        except OSError:
            return
        if err == errno.ENETDOWN:
            self.rx_link_down += 1
            log.warning("afpacket: link down; receiving again once it is up",
                        extra={"kv": {"iface": self.iface, "rx_link_down": self.rx_link_down}})

    def _watch_link(self) -> None:
        """Log a transmit outage (a send refused by a down link) once, and its end."""
        down = bool(self._afp.tx_down)
        if down and self._tx_down_since is None:
            self._tx_down_since = time.monotonic()
            err = int(self._afp.last_tx_errno)
            log.warning("afpacket: transmit refused, link down; pending frames dropped and counted",
                        extra={"kv": {"iface": self.iface, "errno": errno.errorcode.get(err, str(err)),
                                      "tx_link_down": int(self._afp.stats.tx_link_down),
                                      "tx_errors": int(self._afp.stats.tx_errors)}})
        elif not down and self._tx_down_since is not None:
            log.warning("afpacket: transmit works again after a link outage",
                        extra={"kv": {"iface": self.iface,
                                      "outage_s": round(time.monotonic() - self._tx_down_since, 3),
                                      "tx_errors": int(self._afp.stats.tx_errors)}})
            self._tx_down_since = None

    def maintain(self) -> None:
        """Call now and then (e.g. when idle): logs a transmit outage and its end, and
        reopens the socket when the interface was deleted and created again under the
        same name (that check at most once a second)."""
        _maintain_sockets(self, [self])

    # -- counters --------------------------------------------------------------

    def _save_counters(self) -> None:
        for k in _STAT_FIELDS:
            self._prev[k] += int(getattr(self._afp.stats, k))

    def _harvest_kernel_stats(self) -> None:
        p = ffi.new("uint64_t[3]")
        if lib.mg_afp_kernel_stats(self._afp, p, p + 1, p + 2) == 0:
            self._kernel["kernel_packets"] += int(p[0])
            self._kernel["kernel_drops"] += int(p[1])
            self._kernel["kernel_freezes"] += int(p[2])

    @property
    def drops(self) -> dict[str, int]:
        """Packets the socket handed over that could not become a frame, by the run's drop
        reason: longer than a pool frame holds (``rx_oversize``) or cut short by the ring,
        whose frames are sized for the pool's (``rx_truncated``): ``frame_overflow``, as for
        a capture record (docs/nic.md).  Steering counts them as received and dropped
        (``maglev.rings.SS_NIC_DROPS``), so a jumbo frame is never an unaccounted packet."""
        return {"frame_overflow": sum(self._prev[k] + int(getattr(self._afp.stats, k))
                                      for k in ("rx_oversize", "rx_truncated"))}

    def stats(self) -> dict[str, int]:
        """Driver counters (see ``struct mg_afp_stats``) plus the kernel's ring counters:
        ``kernel_drops`` are packets lost because the ring was full."""
        if self._afp.fd >= 0:
            self._harvest_kernel_stats()
        out = {k: self._prev[k] + int(getattr(self._afp.stats, k)) for k in _STAT_FIELDS}
        out.update(self._kernel)
        out["reopens"] = self.reopens
        out["rx_link_down"] = self.rx_link_down
        out["ring"] = self.ring  # type: ignore[assignment]
        out["last_tx_errno"] = int(self._afp.last_tx_errno)
        return out


class AfPacketMulti:
    """N receive sockets on one interface in one PACKET_FANOUT group (hash of the flow,
    fragments reassembled for the hash), read round-robin: what ``queues=N`` opens."""

    kind = "afpacket"

    def __init__(self, iface: str, queues: int, *, ring: str | None = None, fanout: int | None = None):
        if fanout is None:
            fanout = os.getpid() & 0xFFFF
        self.iface = iface
        self.eof = False
        self.nics: list[AfPacketNic] = []
        try:
            for _ in range(queues):
                nic = AfPacketNic(iface, ring=ring, fanout=fanout)
                nic.start_rx()
                self.nics.append(nic)
        except BaseException:
            self.close()
            raise
        self.ring = self.nics[0].ring
        self._next = 0
        self._also: list[int] = []
        self._poll = self._make_poll()

    def _make_poll(self) -> select.poll:
        poll = select.poll()
        for nic in self.nics:
            poll.register(nic.fileno(), select.POLLIN | select.POLLERR)
        for fd in self._also:
            poll.register(fd, select.POLLIN)
        return poll

    def rx_burst(self, pool: Any, descs: Any, n: int) -> int:
        got, self._next = rx_round_robin(self.nics, self._next, lambda nic: nic.rx_burst(pool, descs, n))
        return got

    def wake_on(self, fd: int) -> None:
        if fd not in self._also:
            self._also.append(fd)
            self._poll.register(fd, select.POLLIN)

    def nic_loop_rx(self) -> Any:
        """Every fan-out socket, round-robin, as the source of steering's C loop."""
        return loop_nic([nic._afp for nic in self.nics])

    def wait(self, timeout_s: float) -> bool:
        try:
            events = self._poll.poll(max(0, int(timeout_s * 1000)))
        except InterruptedError:
            return True
        for fd, ev in events:
            if ev & select.POLLERR:
                for nic in self.nics:
                    if nic.fileno() == fd:
                        nic._clear_error()
        return bool(events)

    _next_check = 0.0

    def maintain(self) -> None:
        """As :meth:`AfPacketNic.maintain` for the whole group: when the interface was
        created again, every socket is closed before any is reopened (a new socket cannot
        join a fan-out group whose old members are bound to the deleted interface: EINVAL),
        and :meth:`wait` polls the new descriptors."""
        if _maintain_sockets(self, self.nics):
            self._poll = self._make_poll()

    @property
    def reopens(self) -> int:
        return sum(nic.reopens for nic in self.nics)

    @property
    def drops(self) -> dict[str, int]:
        """As :attr:`AfPacketNic.drops`, over every socket of the group."""
        return {"frame_overflow": sum(nic.drops["frame_overflow"] for nic in self.nics)}

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for nic in self.nics:
            for k, v in nic.stats().items():
                out[k] = out.get(k, 0) + v if isinstance(v, int) else v
        out["queues"] = len(self.nics)
        return out

    def close(self) -> None:
        for nic in self.nics:
            nic.close()


def _maintain_sockets(owner: Any, nics: list[AfPacketNic]) -> bool:
    """The sockets' housekeeping (``maintain``): log transmit outages; at most once a
    second (``owner._next_check``) look up the interface's index, and when the interface
    was created again under the same name, close every socket before reopening any (a new
    socket cannot join a fan-out group whose old members are bound to the deleted
    interface: EINVAL).  True when they were reopened (new descriptors)."""
    for nic in nics:
        if nic._afp.fd >= 0:
            nic._watch_link()
    now = time.monotonic()
    if now < owner._next_check:
        return False
    owner._next_check = now + 1.0
    try:
        idx = socket.if_nametoindex(owner.iface)
    except OSError:
        return False  # gone for now; keep the old sockets until it comes back
    if all(nic.ifindex == idx for nic in nics):
        return False
    for nic in nics:
        nic._save_counters()
        nic.close()
    for nic in nics:
        nic._open()
        nic.reopens += 1
    return True


def loop_nic(devs: list[Any], kind: int | None = None) -> Any:
    """A ``struct mg_loop_nic`` over device handles (cffi pointers, kept alive by the
    returned object's ``_keep``): the source or sink of the actors' C loops (mg_loop.h)."""
    ln = ffi.new("struct mg_loop_nic *")
    arr = ffi.new("void *[]", [ffi.cast("void *", d) for d in devs])
    ln.kind = lib.MG_LOOP_NIC_AFP if kind is None else kind
    ln.n = len(devs)
    ln.devs = arr
    return _LoopNic(ln, (arr, list(devs)))


class _LoopNic:
    """A ``struct mg_loop_nic *`` and what it points to (kept alive together)."""

    __slots__ = ("ptr", "_keep")

    def __init__(self, ptr: Any, keep: Any):
        self.ptr = ptr
        self._keep = keep


def open_afpacket_rx(iface: str, options: dict[str, str]) -> AfPacketNic | AfPacketMulti:
    """The receive side ``--nic afpacket:IFACE,...`` asks for (options already checked)."""
    queues = int(options.get("queues", 1))
    ring = options.get("ring") or None
    fanout = int(options["fanout"]) if "fanout" in options else None
    if queues == 1:
        nic = AfPacketNic(iface, ring=ring, fanout=fanout)
        nic.eof = False  # type: ignore[attr-defined]
        return nic
    return AfPacketMulti(iface, queues, ring=ring, fanout=fanout)


def csum_complete(frame: bytearray) -> bool:
    """Complete the TCP/UDP checksum of an Ethernet frame in place (what the driver does
    for CHECKSUM_PARTIAL packets).  True when the frame was TCP/UDP and got fixed."""
    buf = ffi.from_buffer(frame)
    return bool(lib.mg_afp_csum_complete(buf, len(frame)))
