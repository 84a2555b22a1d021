"""AF_PACKET NIC (``--nic afpacket:IFACE``): a TPACKET_V3 receive ring and sendmmsg transmit.

The per-packet work is C (``mg_afpacket.c``; its header has the design notes): one call
receives a burst from the mmap'd ring straight into frames of the shared frame pool, one
call transmits a burst of pool frames.  This module only opens and closes the socket,
turns errors into clear sentences, waits for packets without spinning (``poll`` on the
socket), and survives the interface going away:

* link down/up with the same ifindex: the kernel re-hooks the socket by itself; the ring
  is just quiet meanwhile and transmit errors are counted;
* the interface deleted and created again (new ifindex): :meth:`AfPacketNic.maintain`
  notices the name now points at another ifindex and reopens the socket.

Two ring flavours (``ring="v3"``, the default, or ``"v2"``; or ``MAGLEV_AFPACKET_RING``
in the environment, which reaches the steering process that ``maglev run`` starts): V3
hands over whole blocks and retires a partly filled block only after a timer that counts
in jiffies (4-8 ms at HZ=250), which is a latency floor at low packet rates; V2 hands over
every packet at once.  See the header ``mg_afpacket.h`` for the trade-off.

The receive ring is created on first use (``rx_burst``, ``wait`` or ``fileno``): the
pipeline opens one object for receiving (steering) and another for transmitting (muxer),
and a transmit-only socket should neither hold a 4 MiB ring nor make the kernel copy
every received packet into it.

Needs CAP_NET_RAW (root): without it the constructor raises :class:`NotRootError`.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import socket
import time
from typing import Any

from maglev.errors import MaglevError, NotRootError
from maglev.native import check, ffi, lib

__all__ = ["RINGS", "AfPacketNic", "NicError"]

# TPACKET_V3 (blocks, the default: fewest wake-ups at high rates) or TPACKET_V2 (one frame
# per packet: no block-retire latency floor).  ``MAGLEV_AFPACKET_RING`` picks the default.
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
    ) -> None:
        self.iface = iface
        ring = ring or os.environ.get("MAGLEV_AFPACKET_RING", "") or "v3"
        if ring not in RINGS:
            raise NicError(errno.EINVAL, f"afpacket: ring {ring!r} is not one of {', '.join(RINGS)}")
        self.ring = ring
        self._geometry = (block_size, block_nr, tov_ms)
        self._flags = (0 if qdisc_bypass else lib.MG_AFP_F_NO_QDISC_BYPASS) | (
            0 if fix_checksums else lib.MG_AFP_F_NO_CSUM_FIX
        )
        self._afp = ffi.new("struct mg_afp *")
        self._afp.fd = -1
        self._poll: select.poll | None = None
        self._next_check = 0.0
        self.reopens = 0
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
                s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            finally:
                s.close()
        except OSError:
            pass

    def maintain(self) -> None:
        """Call now and then (e.g. when idle): reopens the socket when the interface was
        deleted and created again under the same name.  At most one check a second."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + 1.0
        try:
            idx = socket.if_nametoindex(self.iface)
        except OSError:
            return  # gone for now; keep the old socket until it comes back
        if idx != self._afp.ifindex:
            self._save_counters()
            self.close()
            self._open()
            self.reopens += 1

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

    def stats(self) -> dict[str, int]:
        """Driver counters (see ``struct mg_afp_stats``) plus the kernel's ring counters:
        ``kernel_drops`` are packets lost because the ring was full."""
        if self._afp.fd >= 0:
            self._harvest_kernel_stats()
        out = {k: self._prev[k] + int(getattr(self._afp.stats, k)) for k in _STAT_FIELDS}
        out.update(self._kernel)
        out["reopens"] = self.reopens
        out["ring"] = self.ring  # type: ignore[assignment]
        out["last_tx_errno"] = int(self._afp.last_tx_errno)
        return out


def csum_complete(frame: bytearray) -> bool:
    """Complete the TCP/UDP checksum of an Ethernet frame in place (what the driver does
    for CHECKSUM_PARTIAL packets).  True when the frame was TCP/UDP and got fixed."""
    buf = ffi.from_buffer(frame)
    return bool(lib.mg_afp_csum_complete(buf, len(frame)))
