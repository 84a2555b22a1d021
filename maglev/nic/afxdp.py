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

Transmit (:class:`AfXdpTx`, in the muxer): through the TX rings of the same sockets.  Each
socket's UMEM is a memfd; steering publishes its pid and the socket and memfd numbers in
the run folder (``afxdp-IFACE.json``), the muxer takes duplicates of them with
``pidfd_getfd(2)`` and maps the TX and completion rings, which steering never touches
(``mg_xsk.h``).  While no steering socket is there to take (steering starting or being
restarted; a duplicate is dropped as soon as the steering that made it exits, so its
replacement can bind the queue), the muxer sends through the AF_PACKET TX ring of the
interface, and counts it (``fallback_packets``).

``busy_poll=US`` sets SO_BUSY_POLL (and SO_PREFER_BUSY_POLL) on the sockets: on a real
NIC the driver's NAPI poll then runs in steering's receive call instead of after an
interrupt (docs/nic.md).

The XDP program lives as long as steering's process: stopped or killed, the kernel
detaches it (BPF link).  :func:`why_no_afxdp` says why AF_XDP cannot be used here, and
which ``--nic`` to use instead.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maglev import files
from maglev.errors import NotRootError
from maglev.native import check, ffi, lib
from maglev.nic.afpacket import NicError
from maglev.nic.multiqueue import rx_round_robin

__all__ = ["AfXdpNic", "AfXdpTx", "handoff_path", "read_handoff", "rx_queues", "why_no_afxdp"]

log = logging.getLogger("maglev.nic.afxdp")
_SYS_PIDFD_GETFD = 438  # x86_64 and the generic table
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# How often the muxer checks that the steering whose sockets it holds is alive, and how
# often it retries taking them while it has none.
TX_CHECK_S = 0.01
TX_RETRY_S = 0.05
TX_HANDOFF_S = 0.25  # how often the muxer re-reads steering's hand-off (a re-open publishes a new one)
_TX_STATS = ("tx_packets", "tx_bytes", "tx_completed", "tx_ring_full", "tx_oversize", "tx_kicks",
             "tx_kick_errors", "tx_bursts", "tx_kick_again", "tx_left")

MODES = ("auto", "copy", "zerocopy")
# How long a busy queue is retried (a dead predecessor's socket being freed) before EBUSY.
BUSY_WAIT_S = 2.0
SO_BUSY_POLL, SO_PREFER_BUSY_POLL, SO_BUSY_POLL_BUDGET = 46, 69, 70
_STATS = ("rx_packets", "rx_bytes", "rx_oversize", "fill_wakeups", "rx_bursts")
_KERNEL_STATS = ("kernel_drops", "kernel_invalid", "kernel_rx_ring_full", "kernel_fill_empty")


def why_no_afxdp() -> str:
    """Why ``--nic afxdp`` cannot work on this machine, as a sentence ("" when it can)."""
    from maglev.nic import xdp_loader

    if os.geteuid() != 0:
        return "AF_XDP needs root (CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON, CAP_NET_RAW); use --nic afpacket:IFACE"
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
            raise NotRootError(f"the afxdp NIC needs root (CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON) on {iface}; "
                               f"use --nic afpacket:{iface} with CAP_NET_RAW only")
        have = rx_queues(iface)
        self.n_queues = queues or have
        if self.n_queues > have:
            raise NicError(errno.EINVAL, f"afxdp: {iface} has {have} receive queue(s), not {self.n_queues} "
                           f"(see `ethtool -l {iface}`; `ethtool -L {iface} combined N` changes it)")
        self.mode = mode
        self._busy_poll_us = busy_poll
        self._socks: list[Any] = []
        self._poll = select.poll()
        self._next = 0
        self._gone: dict[str, int] = {}  # counters of sockets closed by a re-open (maintain)
        self._next_check = 0.0
        self.reopens = 0
        self.prog = xdp_loader.load()
        try:
            self._vips: set[str] = set()
            self.set_vips(str(addr) for addr, _port, _proto in vips)
            for q in range(self.n_queues):
                x = self._open_queue(q)
                self._socks.append(x)
                self.prog.set_socket(q, x.fd)
                if busy_poll:
                    self._busy_poll(x.fd, busy_poll)
                self._poll.register(x.fd, select.POLLIN | select.POLLERR)
            self.prog.attach(self.ifindex, iface, os.environ.get("MAGLEV_XDP_ATTACH", "auto"))
        except BaseException:
            self.close()
            raise
        self.bound_mode = "zerocopy" if all(x.mode == lib.MG_XSK_MODE_ZEROCOPY for x in self._socks) else "copy"

    def _open_queue(self, q: int, ifindex: int = 0) -> Any:
        x = ffi.new("struct mg_xsk *")
        ifindex = ifindex or self.ifindex
        tries = {"auto": [lib.MG_XSK_MODE_ZEROCOPY, lib.MG_XSK_MODE_COPY], "copy": [lib.MG_XSK_MODE_COPY],
                 "zerocopy": [lib.MG_XSK_MODE_ZEROCOPY]}[self.mode]
        rc = 0
        # The kernel frees a closed socket's hold on its queue in deferred work, so a
        # replacement started right after a kill -9 may find the queue busy for a moment:
        # EBUSY is retried for up to BUSY_WAIT_S before it is an error.
        deadline = time.monotonic() + BUSY_WAIT_S
        while True:
            for m in tries:
                rc = lib.mg_xsk_open(x, ifindex, q, m)
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
        # setsockopt(2) on the descriptor itself: Python's socket(fileno=...) asks the
        # kernel for the socket's address, which an AF_XDP socket does not have
        # (EOPNOTSUPP), so wrapping the descriptor failed (session 6).
        for opt, val in ((SO_BUSY_POLL, us), (SO_PREFER_BUSY_POLL, 1), (SO_BUSY_POLL_BUDGET, 64)):
            v = ctypes.c_int(val)
            if _libc.setsockopt(fd, socket.SOL_SOCKET, opt, ctypes.byref(v), ctypes.sizeof(v)) < 0:
                e = ctypes.get_errno()
                hint = " (needs CAP_NET_ADMIN)" if e == errno.EPERM else ""
                raise NicError(e, f"afxdp: busy_poll={us}: {os.strerror(e)}{hint}")

    # -- data path ---------------------------------------------------------------------
    def rx_burst(self, pool: Any, descs: Any, n: int) -> int:
        got, self._next = rx_round_robin(
            self._socks, self._next,
            lambda x: check(lib.mg_xsk_rx_burst(x, pool, descs, n), f"afxdp rx on {self.iface}"))
        return got

    def wake_on(self, fd: int) -> None:
        self._poll.register(fd, select.POLLIN)

    def nic_loop_rx(self) -> Any:
        """Every queue's socket, round-robin, as the source of steering's C loop."""
        from maglev.nic.afpacket import loop_nic

        return loop_nic(list(self._socks), lib.MG_LOOP_NIC_XSK)

    def wait(self, timeout_s: float) -> bool:
        try:
            return bool(self._poll.poll(max(0, int(timeout_s * 1000))))
        except InterruptedError:
            return True

    # -- what is redirected ------------------------------------------------------------
    def set_vips(self, addresses: Any) -> tuple[list[str], list[str]]:
        """Redirect exactly ``addresses`` (the configuration's VIP addresses) from now on;
        returns (added, removed).  Additions go first, so a VIP that stays is never
        missing for a moment."""
        import ipaddress

        want = {str(ipaddress.ip_address(a)) for a in addresses}
        have = getattr(self, "_vips", set())
        added, removed = sorted(want - have), sorted(have - want)
        for a in added:
            try:
                self.prog.add_vip(a)
            except OSError as e:
                raise NicError(e.errno, f"afxdp: cannot redirect VIP {a} on {self.iface}: {e.strerror} "
                               "(at most 1024 VIP addresses)") from None
            have.add(a)
        for a in removed:
            self.prog.remove_vip(a)
            have.discard(a)
        self._vips = have
        return added, removed

    # -- the interface created again ----------------------------------------------------
    def maintain(self) -> bool:
        """Call now and then (steering's tick): at most once a second, look the interface
        up by name, and when it was deleted and created again (another ifindex: a driver
        reload, a veth re-made) bind new sockets and a new XDP program to it, as
        :meth:`AfPacketNic.maintain` does for AF_PACKET.  True when they were re-opened.
        Before, the sockets stayed bound to the dead interface and nothing was received
        again for the rest of the run."""
        now = time.monotonic()
        if now < self._next_check or not self._socks:
            return False
        self._next_check = now + 1.0
        try:
            idx = socket.if_nametoindex(self.iface)
        except OSError:
            return False  # gone for now: keep the old sockets until it comes back
        if idx == self.ifindex:
            return False
        try:
            self._reopen(idx)
        except (OSError, NicError) as e:  # e.g. created but not up yet: try again in a second
            log.warning("afxdp: interface created again, cannot bind it yet",
                        extra={"kv": {"iface": self.iface, "ifindex": idx, "error": str(e)}})
            return False
        return True

    def _reopen(self, idx: int) -> None:
        """New sockets and program on interface ``idx`` first (the old ones are bound to a
        deleted interface: no conflict); only when all are there, close the old ones and
        move the new sockets into the old ``struct mg_xsk`` objects, which steering's C loop
        points at (``nic_loop_rx``).  A failure leaves the old ones as they were."""
        from maglev.nic import xdp_loader

        if rx_queues(self.iface) < len(self._socks):
            raise NicError(errno.EINVAL, f"afxdp: {self.iface} now has fewer than {len(self._socks)} receive queues")
        new: list[Any] = []
        prog = xdp_loader.load()
        try:
            for a in sorted(self._vips):
                prog.add_vip(a)
            for q in range(len(self._socks)):
                x = self._open_queue(q, idx)
                new.append(x)
                prog.set_socket(q, x.fd)
                if self._busy_poll_us:
                    self._busy_poll(x.fd, self._busy_poll_us)
            prog.attach(idx, self.iface, os.environ.get("MAGLEV_XDP_ATTACH", "auto"))
        except BaseException:
            prog.close()
            for x in new:
                lib.mg_xsk_close(x)
            raise
        old = self.stats()
        for k in (*_STATS, *_KERNEL_STATS):
            self._gone[k] = int(old.get(k, 0))
        self.prog.close()
        self.prog = prog
        for old_x, new_x in zip(self._socks, new, strict=True):
            self._poll.unregister(old_x.fd)
            lib.mg_xsk_close(old_x)
            ffi.memmove(old_x, new_x, ffi.sizeof("struct mg_xsk"))  # new_x is not closed: old_x owns it now
            self._poll.register(old_x.fd, select.POLLIN | select.POLLERR)
        self.ifindex = idx
        self.reopens += 1
        if getattr(self, "_published", None) is not None:
            self.publish(self._published.parent)  # the muxer takes the new sockets (AfXdpTx.maintain)

    # -- transmit hand-off -----------------------------------------------------------
    def handoff(self) -> dict[str, Any]:
        """What the muxer needs to transmit through these sockets: this process's pid and,
        per queue, the socket's and its UMEM memfd's descriptor numbers."""
        return {"pid": os.getpid(), "iface": self.iface, "ifindex": self.ifindex, "reopens": self.reopens,
                "sockets": [{"queue": int(x.queue), "fd": int(x.fd), "umem_fd": int(lib.mg_xsk_umem_fd(x))}
                            for x in self._socks]}

    def publish(self, run_dir: str | os.PathLike) -> Path:
        """Write :meth:`handoff` to the run folder, atomically (the muxer reads it)."""
        path = handoff_path(run_dir, self.iface)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.handoff()))
        os.replace(tmp, path)
        self._published = path
        return path

    # -- counters and lifecycle ---------------------------------------------------------
    @property
    def drops(self) -> dict[str, int]:
        """Packets a socket handed over that are longer than a pool frame holds
        (``rx_oversize``: an MTU above ~1700 bytes): received and dropped as
        ``frame_overflow`` by steering (``maglev.rings.SS_NIC_DROPS``), as with AF_PACKET."""
        socks = getattr(self, "_socks", None)
        if not socks:
            return {"frame_overflow": int((getattr(self, "_final", None) or {}).get("rx_oversize", 0))}
        return {"frame_overflow": self._gone.get("rx_oversize", 0) + sum(int(x.stats.rx_oversize) for x in socks)}

    def stats(self) -> dict[str, Any]:
        if not getattr(self, "_socks", None) and getattr(self, "_final", None):
            return dict(self._final)  # closed: the counters as they were at the close
        gone = getattr(self, "_gone", {})
        out: dict[str, Any] = {k: gone.get(k, 0) for k in _STATS}
        kern = ffi.new("uint64_t[4]")
        extra = {k: gone.get(k, 0) for k in _KERNEL_STATS}
        for x in self._socks:
            for k in _STATS:
                out[k] += int(getattr(x.stats, k))
            if lib.mg_xsk_kernel_stats(x, kern) == 0:
                for j, k in enumerate(extra):
                    extra[k] += int(kern[j])
        out.update(extra)
        out["queues"] = len(self._socks)
        out["reopens"] = getattr(self, "reopens", 0)
        out["mode"] = getattr(self, "bound_mode", "")
        out["xdp_mode"] = self.prog.mode if getattr(self, "prog", None) else ""
        try:
            out.update({f"xdp_{k}": v for k, v in self.prog.counters().items()})
        except (OSError, KeyError, AttributeError):
            pass
        return out

    def close(self) -> None:
        pub = getattr(self, "_published", None)
        if pub is not None:
            self._published = None
            try:
                doc = files.read_json(pub)
                if isinstance(doc, dict) and doc.get("pid") == os.getpid():
                    pub.unlink()
            except (OSError, ValueError):
                pass
        if getattr(self, "_socks", None):
            try:
                self._final = self.stats()  # the actor's final report comes after the close
            except Exception:
                pass
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


def handoff_path(run_dir: str | os.PathLike, iface: str) -> Path:
    return Path(run_dir) / f"afxdp-{iface}.json"


def read_handoff(run_dir: str | os.PathLike, iface: str) -> dict[str, Any] | None:
    """The hand-off steering published, or None (not yet, or unreadable)."""
    try:
        doc = files.read_json(handoff_path(run_dir, iface))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    r = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


class AfXdpTx:
    """Transmit side of ``--nic afxdp`` (the muxer): the TX rings of steering's sockets.

    ``locate()`` returns steering's hand-off (:meth:`AfXdpNic.handoff`) or None.  Until
    one can be taken, and whenever the steering that made it has exited, frames go out
    through the AF_PACKET TX ring of the interface (counted as ``fallback_packets``).
    """

    kind = "afxdp"

    def __init__(self, iface: str, locate: Callable[[], dict[str, Any] | None]):
        from maglev.nic.afpacket import AfPacketNic

        self.iface = iface
        self._locate = locate
        self._fallback = AfPacketNic(iface)
        self._tx: list[Any] = []
        self._sink: Any = None
        self._pidfd = -1
        self._pid = 0
        self._dead_pid = 0
        self._next = 0
        self._next_check = 0.0
        self._next_try = 0.0
        self._next_handoff = 0.0
        self._taken: tuple[Any, ...] = ()
        self._gone: dict[str, int] = {k: 0 for k in _TX_STATS}  # counters of detached sockets
        self.attaches = 0
        self.detaches = 0
        self.fallback_packets = 0
        self.why_fallback = "steering's AF_XDP sockets not taken yet"
        self.packets = 0
        self.calls = 0

    # -- attach / detach ----------------------------------------------------------------
    def _attach(self) -> bool:
        h = self._locate()
        if not h or not h.get("sockets"):
            self.why_fallback = "steering has published no AF_XDP sockets (yet)"
            return False
        pid = int(h["pid"])
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as e:
            self.why_fallback = f"steering pid {pid}: {e.strerror}"
            return False
        txs: list[Any] = []
        try:
            for s in h["sockets"]:
                fd = _pidfd_getfd(pidfd, int(s["fd"]))
                try:
                    ufd = _pidfd_getfd(pidfd, int(s["umem_fd"]))
                except OSError:
                    os.close(fd)
                    raise
                t = ffi.new("struct mg_xsk_tx *")
                rc = lib.mg_xsk_tx_attach(t, fd, ufd)  # owns both descriptors, also on failure
                if rc < 0:
                    raise OSError(-rc, f"queue {s['queue']}: {os.strerror(-rc)}")
                txs.append(t)
        except OSError as e:
            for t in txs:
                lib.mg_xsk_tx_close(t)
            os.close(pidfd)
            self.why_fallback = f"cannot take steering's AF_XDP sockets: {e.strerror or e}"
            return False
        self._tx, self._pidfd, self._pid = txs, pidfd, pid
        self._taken = (pid, h.get("ifindex"), h.get("reopens", 0))
        self._sink = None
        self.attaches += 1
        self.why_fallback = ""
        log.info("transmitting through steering's AF_XDP sockets",
                 extra={"kv": {"iface": self.iface, "queues": len(txs), "steering_pid": pid}})
        return True

    def _detach(self, why: str) -> None:
        for t in self._tx:
            for k in _TX_STATS:
                self._gone[k] += int(getattr(t.stats, k))
            lib.mg_xsk_tx_close(t)
        self._tx = []
        self._sink = None
        if self._pidfd >= 0:
            os.close(self._pidfd)
        self._pidfd = -1
        self.detaches += 1
        self.why_fallback = why
        log.info("AF_XDP transmit detached", extra={"kv": {"iface": self.iface, "why": why}})

    def maintain(self, now: float | None = None) -> None:
        """Drop the sockets of a steering that exited (its replacement must be able to
        bind the queues); take new ones when there are none.  Called per burst and from
        the muxer's housekeeping."""
        now = time.monotonic() if now is None else now
        if self._tx:
            if now >= self._next_check:
                self._next_check = now + TX_CHECK_S
                if select.select([self._pidfd], [], [], 0)[0]:
                    self._dead_pid = self._pid
                    self._detach(f"steering pid {self._pid} exited")
                    self._next_try = now  # the replacement's hand-off may be there already
            if self._tx and now >= self._next_handoff:
                # steering re-opened its sockets on an interface created again: take those
                self._next_handoff = now + TX_HANDOFF_S
                h = self._locate()
                if h and (int(h.get("pid", 0)), h.get("ifindex"), h.get("reopens", 0)) != self._taken:
                    self._detach("steering re-opened its AF_XDP sockets (interface created again)")
                    self._next_try = now
        self._fallback.maintain()  # the AF_PACKET fallback follows a re-created interface too
        if not self._tx and now >= self._next_try:
            self._next_try = now + TX_RETRY_S
            h = self._locate()
            if h and int(h.get("pid", 0)) != self._dead_pid:
                self._attach()

    @property
    def attached(self) -> bool:
        return bool(self._tx)

    def nic_loop_tx(self) -> Any:
        """The TX rings as the sink of the muxer's C loop, or None while not attached (the
        per-burst :meth:`tx_burst` then sends through the AF_PACKET fallback)."""
        if not self._tx:
            return None
        if self._sink is None:
            from maglev.nic.afpacket import loop_nic

            self._sink = loop_nic(list(self._tx), lib.MG_LOOP_NIC_XSK)
        return self._sink

    def loop_error(self, rc: int) -> None:
        """The C loop's transmit failed with -errno ``rc``: detach (fallback from now on)."""
        self._detach(f"AF_XDP transmit on {self.iface} failed: {os.strerror(-rc)}")

    # -- data path ----------------------------------------------------------------------
    def tx_burst(self, pool: Any, descs: Any, n: int) -> int:
        self.maintain()
        self.calls += 1
        if self._tx:
            t = self._tx[self._next]
            self._next = (self._next + 1) % len(self._tx)
            k = int(lib.mg_xsk_tx_burst(t, pool, descs, n))
            if k >= 0:
                self.packets += k
                return k
            self._detach(f"AF_XDP transmit on {self.iface} failed: {os.strerror(-k)}")
            return 0  # those frames are counted as tx errors; the next burst uses the fallback
        sent = int(self._fallback.tx_burst(pool, descs, n))
        self.fallback_packets += sent
        self.packets += sent
        return sent

    # -- counters and lifecycle ---------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._gone)
        for t in self._tx:
            for k in _TX_STATS:
                out[k] += int(getattr(t.stats, k))
        out["tx_inflight"] = sum(int(lib.mg_xsk_tx_inflight(t)) for t in self._tx)
        out["attached_queues"] = len(self._tx)
        out["attaches"] = self.attaches
        out["detaches"] = self.detaches
        out["fallback_packets"] = self.fallback_packets
        out["why_fallback"] = self.why_fallback
        out["fallback"] = self._fallback.stats()
        return out

    def close(self) -> None:
        if self._tx:
            self._detach("closed")
        fb = getattr(self, "_fallback", None)
        if fb is not None:
            fb.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
