"""AF_XDP NIC (``--nic afxdp:IFACE[,queues=N,mode=auto|copy|zerocopy,busy_poll=US]``).

Receive: one AF_XDP socket per receive queue (``queues=N``: queues 0..N-1, default every
queue the interface has, at most 64), bound in zero-copy mode where the driver has it and
copy mode otherwise (``mode=auto``; veth has copy mode only).  The XDP program
(``maglev/_cffi_src/bpf/mg_xdp.bpf.c``, loaded by :mod:`maglev.nic.xdp_loader` through a
BPF link) sends the configured VIPs' packets -- by destination address, so their
fragments and the ICMP errors for their flows too -- to the socket of their queue and
passes everything else to the kernel: ARP, BGP, SSH and health probes on the same
interface keep working.  The per-packet work is C (``mg_xsk.c``): packets are copied from
the socket's UMEM into frames of the shared pool (the UMEM is beside the pool, one copy,
as with AF_PACKET; ``mg_xsk.h`` says why the pool is not the UMEM yet).

Transmit: the muxer sends through the AF_PACKET TX ring of the same interface
(:class:`maglev.nic.afpacket.AfPacketNic`, PACKET_QDISC_BYPASS).

``busy_poll=US`` sets SO_BUSY_POLL (and SO_PREFER_BUSY_POLL) on the sockets: on a real
NIC the driver's NAPI poll then runs in steering's receive call instead of after an
interrupt (docs/nic.md).

The XDP program lives as long as steering's process: stopped or killed, the kernel
detaches it (BPF link).  :func:`why_no_afxdp` says why AF_XDP cannot be used here, and
which ``--nic`` to use instead.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from pathlib import Path
from typing import Any

from maglev.errors import NotRootError
from maglev.native import check, ffi, lib
from maglev.nic.afpacket import NicError
from maglev.nic.multiqueue import rx_round_robin

__all__ = ["AfXdpNic", "rx_queues", "why_no_afxdp"]

MODES = ("auto", "copy", "zerocopy")
# How long a busy queue is retried (a dead predecessor's socket being freed) before EBUSY.
BUSY_WAIT_S = 1.0
SO_BUSY_POLL, SO_PREFER_BUSY_POLL, SO_BUSY_POLL_BUDGET = 46, 69, 70
_STATS = ("rx_packets", "rx_bytes", "rx_oversize", "fill_wakeups", "rx_bursts")


def why_no_afxdp() -> str:
    """Why ``--nic afxdp`` cannot work on this machine, as a sentence ("" when it can)."""
    from maglev.nic import xdp_loader

    if os.geteuid() != 0:
        return "AF_XDP needs root (CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW); use --nic afpacket:IFACE"
    if not xdp_loader.OBJ.exists():
        return (f"the XDP program {xdp_loader.OBJ.name} was not built (the build needs clang with the BPF "
                "target: apt-get install clang, then rebuild); use --nic afpacket:IFACE")
    try:
        socket.socket(44, socket.SOCK_RAW, 0).close()
    except OSError as e:
        return f"this kernel has no AF_XDP sockets ({e.strerror}: CONFIG_XDP_SOCKETS); use --nic afpacket:IFACE"
    try:
        xdp_loader.load().close()
    except xdp_loader.XdpError as e:
        return str(e)
    return ""


def rx_queues(iface: str) -> int:
    """Receive queues the interface has (sysfs), at least 1."""
    try:
        return max(1, sum(1 for p in Path(f"/sys/class/net/{iface}/queues").iterdir() if p.name.startswith("rx-")))
    except OSError:
        return 1


class AfXdpNic:
    """Receive side of ``--nic afxdp``: ``rx_burst``, ``wait``, ``stats``, ``close``."""

    kind = "afxdp"

    def __init__(self, iface: str, *, vips: Any = (), queues: int = 0, mode: str = "auto", busy_poll: int = 0):
        from maglev.nic import xdp_loader

        if mode not in MODES:
            raise NicError(errno.EINVAL, f"afxdp: mode {mode!r} is not one of {', '.join(MODES)}")
        self.iface = iface
        self.eof = False
        try:
            self.ifindex = socket.if_nametoindex(iface)
        except OSError:
            raise NicError(errno.ENODEV, f"afxdp: no network interface named {iface!r} here") from None
        if os.geteuid() != 0:
            raise NotRootError(f"the afxdp NIC needs root (CAP_NET_ADMIN, CAP_BPF) on {iface}; "
                               f"use --nic afpacket:{iface} with CAP_NET_RAW only")
        have = rx_queues(iface)
        self.n_queues = queues or have
        if self.n_queues > have:
            raise NicError(errno.EINVAL, f"afxdp: {iface} has {have} receive queue(s), not {self.n_queues} "
                           f"(see `ethtool -l {iface}`; `ethtool -L {iface} combined N` changes it)")
        self.mode = mode
        self._socks: list[Any] = []
        self._poll = select.poll()
        self._next = 0
        self.prog = xdp_loader.load()
        try:
            for addr, _port, _proto in vips:
                self.prog.add_vip(str(addr))
            for q in range(self.n_queues):
                x = self._open_queue(q)
                self._socks.append(x)
                self.prog.set_socket(q, x.fd)
                if busy_poll:
                    self._busy_poll(x.fd, busy_poll)
                self._poll.register(x.fd, select.POLLIN | select.POLLERR)
            self.prog.attach(self.ifindex, iface, "auto")
        except BaseException:
            self.close()
            raise
        self.bound_mode = "zerocopy" if all(x.mode == lib.MG_XSK_MODE_ZEROCOPY for x in self._socks) else "copy"

    def _open_queue(self, q: int) -> Any:
        x = ffi.new("struct mg_xsk *")
        tries = {"auto": [lib.MG_XSK_MODE_ZEROCOPY, lib.MG_XSK_MODE_COPY], "copy": [lib.MG_XSK_MODE_COPY],
                 "zerocopy": [lib.MG_XSK_MODE_ZEROCOPY]}[self.mode]
        rc = 0
        # The kernel frees a closed socket's hold on its queue in deferred work, so a
        # replacement started right after a kill -9 may find the queue busy for a moment:
        # EBUSY is retried for up to BUSY_WAIT_S before it is an error.
        deadline = time.monotonic() + BUSY_WAIT_S
        while True:
            for m in tries:
                rc = lib.mg_xsk_open(x, self.ifindex, q, m)
                if rc == 0:
                    return x
                if rc == -errno.EBUSY:
                    break
            if rc != -errno.EBUSY or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        i = self.iface
        if rc == -errno.EBUSY:
            raise NicError(errno.EBUSY, f"afxdp: queue {q} of {i} already has an AF_XDP socket (a second maglev "
                           "on this interface?)")
        if rc in (-errno.EOPNOTSUPP, -errno.EPROTONOSUPPORT) and self.mode == "zerocopy":
            raise NicError(-rc, f"afxdp: {i}'s driver has no AF_XDP zero-copy (veth has none; i40e, ice, mlx5, "
                           "ixgbe do): use mode=copy or mode=auto")
        if rc == -errno.EINVAL:
            raise NicError(errno.EINVAL, f"afxdp: cannot bind queue {q} of {i} (no such queue, or the interface "
                           f"is down); use --nic afpacket:{i}")
        if rc in (-errno.EPERM, -errno.EACCES):
            raise NotRootError(f"the afxdp NIC needs root (CAP_NET_RAW, CAP_NET_ADMIN) on {i}")
        if rc == -errno.ENOMEM or rc == -errno.ENOBUFS:
            raise NicError(-rc, f"afxdp: no memory for the UMEM of queue {q} (locked memory limit? `ulimit -l`)")
        check(rc, f"afxdp: queue {q} of {i}")
        raise AssertionError("unreachable")

    @staticmethod
    def _busy_poll(fd: int, us: int) -> None:
        s = socket.socket(fileno=os.dup(fd))
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, us)
            s.setsockopt(socket.SOL_SOCKET, SO_PREFER_BUSY_POLL, 1)
            s.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL_BUDGET, 64)
        except OSError as e:
            raise NicError(e.errno, f"afxdp: busy_poll={us}: {e.strerror}") from None
        finally:
            s.close()  # the duplicate only

    # -- data path ---------------------------------------------------------------------
    def rx_burst(self, pool: Any, descs: Any, n: int) -> int:
        got, self._next = rx_round_robin(
            self._socks, self._next,
            lambda x: check(lib.mg_xsk_rx_burst(x, pool, descs, n), f"afxdp rx on {self.iface}"))
        return got

    def wake_on(self, fd: int) -> None:
        self._poll.register(fd, select.POLLIN)

    def wait(self, timeout_s: float) -> bool:
        try:
            return bool(self._poll.poll(max(0, int(timeout_s * 1000))))
        except InterruptedError:
            return True

    # -- counters and lifecycle ---------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: 0 for k in _STATS}
        kern = ffi.new("uint64_t[4]")
        extra = {"kernel_drops": 0, "kernel_invalid": 0, "kernel_rx_ring_full": 0, "kernel_fill_empty": 0}
        for x in self._socks:
            for k in _STATS:
                out[k] += int(getattr(x.stats, k))
            if lib.mg_xsk_kernel_stats(x, kern) == 0:
                for j, k in enumerate(extra):
                    extra[k] += int(kern[j])
        out.update(extra)
        out["queues"] = len(self._socks)
        out["mode"] = getattr(self, "bound_mode", "")
        out["xdp_mode"] = self.prog.mode if getattr(self, "prog", None) else ""
        try:
            out.update({f"xdp_{k}": v for k, v in self.prog.counters().items()})
        except (OSError, KeyError, AttributeError):
            pass
        return out

    def close(self) -> None:
        prog = getattr(self, "prog", None)
        if prog is not None:
            prog.close()  # detaches the program first: nothing is redirected to a closed socket
        for x in getattr(self, "_socks", []):
            lib.mg_xsk_close(x)
        self._socks = []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
