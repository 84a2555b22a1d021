"""Backend decapsulation agent (``maglev backend-agent``): raw GRE/IPIP socket -> TUN.

Maglev wraps a client's packet in GRE (RFC 2784) or IP-in-IP (RFC 2003 / RFC 2473) with
the backend as outer destination; the backend must unwrap it and hand the inner packet,
whose destination is the VIP, to its own stack, which then answers the client directly
(direct server return).  A kernel with the ``ip_gre``/``ipip``/``ip6_tunnel`` modules does
that with a tunnel device (docs/lab.md shows the commands).  Where those modules are
missing -- as on this project's CI kernel -- this agent does it in user space:

    raw socket (IPPROTO_GRE=47, or IPPROTO_IPIP=4 + IPPROTO_IPV6=41), IPv4 and IPv6
      -> strip the outer IP header (IPv4: the raw socket includes it; IPv6: it does not)
      -> strip GRE (flags, optional checksum/key/sequence; the checksum is verified)
      -> check the inner packet: IP version matches, header sane, destination is a VIP
      -> write() it to a TUN device (IFF_TUN | IFF_NO_PI: the kernel reads the IP version
         nibble), where it is received as if it had arrived on a wire.

Why the destination check: a decapsulator that forwards any inner packet is an open
relay; only packets for this backend's VIPs are accepted, the rest are counted.  Why
``rp_filter`` is relaxed on the TUN device: the inner source (the client) is routed via
the physical interface, so strict reverse-path filtering would drop every packet.

The kernel reassembles outer fragments before a raw socket sees them, so encapsulated
packets that were fragmented on the way arrive whole.  The kernel does not send
"protocol unreachable" for a protocol a raw socket is bound to, so the agent is silent
on the wire.

The loop runs in C (``mg_decap_run``, maglev/_cffi_src/src/mg_decap.c): poll, recvmmsg
batches of up to 32 datagrams, the same checks as :func:`decapsulate` (its pure-Python
reference, kept and run against it by tests/lab/test_agent_native.py) and one write() per
packet to the TUN device; Python only wakes every ``RUN_BUDGET_MS`` for the counters, a
stop request and the scheduling governor.  ``--engine python`` (or
``MAGLEV_AGENT_ENGINE=python``) runs the reference loop instead, one recv + one write per
packet in Python.  Like the forwarder's data-path actors the agent runs SCHED_FIFO while
it is lightly loaded (``--rt-prio``, maglev/actors/sched.py), so a packet does not wait
for a CPU's current task to end its slice, and goes back to SCHED_OTHER when saturated.
A kernel tunnel device remains the production answer where the modules exist.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from maglev.datapath.ref_csum import checksum as inet_checksum
from maglev.errors import MaglevError, NotRootError

IPPROTO_GRE = 47
IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_VIPS = 64  # per family (MG_DECAP_MAX_VIPS)
GRE_PROTO_IPV4 = 0x0800
GRE_PROTO_IPV6 = 0x86DD

ENCAPS = ("gre", "ipip")
AGENT_ENGINES = ("c", "python")
# The refusal reasons in the order of C's enum mg_decap_reason (index 1..): the counter of
# reason R is ``drop_R``.  "truncated" comes only from the C loop (a datagram larger than
# its 64 KiB buffer; the Python loop reads 65535 bytes and would cut it silently).
REASONS = ("outer_short", "gre_short", "gre_version", "gre_flags", "gre_checksum", "gre_ethertype",
           "inner_short", "inner_version", "not_a_vip", "protocol", "truncated")
RUN_BUDGET_MS = 50  # the C loop's time per call: how often Python looks at stop/stats/governor
RT_OFFSET = 3  # SCHED_FIFO priority above --rt-prio: above the lab forwarder's muxer (base + 2)


class DecapError(ValueError):
    """Why one packet was not decapsulated; ``reason`` is the counter name."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def strip_gre(payload: bytes) -> tuple[int, bytes]:
    """(inner ethertype, inner packet) from a GRE header + payload (RFC 2784, with the
    RFC 2890 key and sequence number extensions).  Raises DecapError."""
    if len(payload) < 4:
        raise DecapError("gre_short")
    flags, proto = struct.unpack_from("!HH", payload)
    if flags & 0x0007:
        raise DecapError("gre_version")  # version 1 is PPTP, not ours
    if flags & 0x4000 or flags & 0x0F80:
        raise DecapError("gre_flags")  # routing present or reserved bits (RFC 2784 2.3)
    hlen = 4 + 4 * bool(flags & 0x8000) + 4 * bool(flags & 0x2000) + 4 * bool(flags & 0x1000)
    if len(payload) < hlen:
        raise DecapError("gre_short")
    if flags & 0x8000 and inet_checksum(payload) != 0:
        raise DecapError("gre_checksum")
    return proto, payload[hlen:]


def check_inner(inner: bytes, version: int, vips: frozenset[bytes]) -> None:
    """The inner packet must be a plausible IP packet of ``version`` addressed to a VIP."""
    if not inner:
        raise DecapError("inner_short")
    if inner[0] >> 4 != version:
        raise DecapError("inner_version")
    if version == 4:
        if len(inner) < 20 or (inner[0] & 0x0F) < 5:
            raise DecapError("inner_short")
        if struct.unpack_from("!H", inner, 2)[0] > len(inner):
            raise DecapError("inner_short")
        dst = inner[16:20]
    else:
        if len(inner) < 40 or 40 + struct.unpack_from("!H", inner, 4)[0] > len(inner):
            raise DecapError("inner_short")
        dst = inner[24:40]
    if dst not in vips:
        raise DecapError("not_a_vip")


def decapsulate(packet: bytes, family: int, proto: int, vips: frozenset[bytes]) -> bytes:
    """The inner IP packet of one datagram read from a raw socket of (family, proto).
    IPv4 raw sockets include the outer header; IPv6 ones do not."""
    if family == socket.AF_INET:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            raise DecapError("outer_short")
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl:
            raise DecapError("outer_short")
        payload = packet[ihl:]
    else:
        payload = packet
    if proto == IPPROTO_GRE:
        ethertype, inner = strip_gre(payload)
        if ethertype == GRE_PROTO_IPV4:
            version = 4
        elif ethertype == GRE_PROTO_IPV6:
            version = 6
        else:
            raise DecapError("gre_ethertype")
    elif proto == IPPROTO_IPIP:
        inner, version = payload, 4
    elif proto == IPPROTO_IPV6:
        inner, version = payload, 6
    else:
        raise DecapError("protocol")
    check_inner(inner, version, vips)
    return inner


def open_tun(name: str) -> int:
    """Create (or attach to) TUN device ``name`` without packet-info headers; returns fd."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MaglevError("/dev/net/tun is missing: this kernel has no TUN support") from None
    except PermissionError:
        raise NotRootError("the backend agent needs root to create a TUN device") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        if exc.errno == 1:
            raise NotRootError("the backend agent needs root (CAP_NET_ADMIN) to create a TUN device") from None
        raise MaglevError(f"cannot create TUN device {name!r}: {exc.strerror}") from None
    return fd


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def _sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key.replace(".", "/")
    try:
        path.write_text(value)
    except OSError:
        pass  # e.g. IPv6 disabled: that family then simply is not served


def native_vips(vips: Iterable[bytes]):  # -> cdata "struct mg_decap_vips *"
    """The VIP set (packed addresses) as C's ``struct mg_decap_vips``."""
    from maglev.native import ffi

    out = ffi.new("struct mg_decap_vips *")
    for v in sorted(vips):
        if len(v) == 4:
            if out.n4 >= MAX_VIPS:
                raise MaglevError(f"at most {MAX_VIPS} IPv4 VIPs per agent")
            ffi.memmove(out.v4[out.n4], v, 4)
            out.n4 += 1
        else:
            if out.n6 >= MAX_VIPS:
                raise MaglevError(f"at most {MAX_VIPS} IPv6 VIPs per agent")
            ffi.memmove(out.v6[out.n6], v, 16)
            out.n6 += 1
    return out


def decapsulate_c(packet: bytes, family: int, proto: int, vips) -> bytes:
    """:func:`decapsulate` in C (``mg_decap_parse``): the same inner packet or DecapError.
    ``vips`` is from :func:`native_vips`."""
    from maglev.native import ffi, lib

    off = ffi.new("uint32_t *")
    n = ffi.new("uint32_t *")
    r = lib.mg_decap_parse(packet, len(packet), 4 if family == socket.AF_INET else 6, proto, vips, off, n)
    if r:
        raise DecapError(REASONS[r - 1])
    return packet[off[0]:off[0] + n[0]]


def stats_counters(st) -> dict[str, int]:  # st: cdata "struct mg_decap_stats *"
    """The C loop's counters under the Python loop's names (zero ones left out)."""
    out = {"received": st.received, "decapsulated": st.decapsulated, "wakeups": st.wakeups,
           "batches": st.batches, "max_batch": st.max_batch}
    for i, reason in enumerate(REASONS, start=1):
        out[f"drop_{reason}"] = st.drop[i]
    for e in range(1, len(st.tun_errno)):
        out[f"drop_tun_{e}"] = st.tun_errno[e]
        out[f"drop_recv_{e}"] = st.recv_errno[e]
    return {k: int(v) for k, v in out.items() if v}


class RtGovernor:
    """SCHED_FIFO at ``prio`` while the agent is lightly loaded, SCHED_OTHER while it is
    saturated: the data-path actors' rule (``Actor._rt_govern``, maglev/actors/sched.py)
    judged at every return of the loop (every ``RUN_BUDGET_MS`` at least)."""

    def __init__(self, prio: int):
        from maglev.actors.sched import open_schedstat, set_rt

        self.prio = prio
        self.on = set_rt(prio) if prio > 0 else False
        self.demotions = 0
        self._fd = open_schedstat() if self.on else -1
        self._mark = (0.0, 0)

    def tick(self, now: float) -> None:
        from maglev.actors.sched import (
            RT_BUSY_SLEEP,
            RT_CALM_SLEEP,
            RT_PERIOD_S,
            busy_ns,
            set_other,
            set_rt,
        )

        if self._fd < 0:
            return
        t0, b0 = self._mark
        if now - t0 < RT_PERIOD_S:
            return
        busy = busy_ns(self._fd)
        self._mark = (now, busy)
        if not t0:
            return
        asleep = 1.0 - (busy - b0) / 1e9 / (now - t0)
        if self.on and asleep < RT_BUSY_SLEEP:
            set_other()
            self.on = False
            self.demotions += 1
        elif not self.on and asleep > RT_CALM_SLEEP:
            self.on = set_rt(self.prio)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class Agent:
    """The agent's state: sockets, the TUN fd, the VIPs it serves and its counters."""

    vips: list[str]
    encap: str = "gre"
    tun: str = "mgdecap0"
    stats_path: str = ""
    engine: str = ""
    rt_prio: int = 1
    counters: Counter = field(default_factory=Counter)
    _added_vips: list[str] = field(default_factory=list)
    _socks: list[tuple[socket.socket, int, int]] = field(default_factory=list)
    _tun_fd: int = -1
    _stop: bool = False

    def __post_init__(self) -> None:
        if self.encap not in ENCAPS:
            raise MaglevError(f"--encap must be one of {', '.join(ENCAPS)}, not {self.encap!r}")
        if not self.vips:
            raise MaglevError("give at least one --vip ADDRESS")
        try:
            parsed = [ipaddress.ip_address(v) for v in self.vips]
        except ValueError as exc:
            raise MaglevError(f"--vip: {exc}") from None
        self.vips = [str(v) for v in parsed]
        self._vip_bytes = frozenset(v.packed for v in parsed)
        if not self.engine:
            self.engine = os.environ.get("MAGLEV_AGENT_ENGINE", "c") or "c"
        if self.engine not in AGENT_ENGINES:
            raise MaglevError(f"--engine must be one of {', '.join(AGENT_ENGINES)}, not {self.engine!r}")
        if self.rt_prio < 0 or self.rt_prio > 99 - RT_OFFSET:
            raise MaglevError(f"--rt-prio must be 0..{99 - RT_OFFSET}, not {self.rt_prio}")
        for version in (4, 6):
            if sum(1 for v in parsed if v.version == version) > MAX_VIPS:
                raise MaglevError(f"at most {MAX_VIPS} IPv{version} VIPs per agent")

    # -- setup -----------------------------------------------------------------

    def _protocols(self) -> Iterable[tuple[int, int]]:
        for fam in (socket.AF_INET, socket.AF_INET6):
            if self.encap == "gre":
                yield fam, IPPROTO_GRE
            else:
                yield fam, IPPROTO_IPIP
                yield fam, IPPROTO_IPV6

    def setup(self) -> None:
        if os.geteuid() != 0:
            raise NotRootError("the backend agent needs root (raw sockets, a TUN device, the VIP on lo)")
        for fam, proto in self._protocols():
            try:
                s = socket.socket(fam, socket.SOCK_RAW, proto)
            except PermissionError:
                raise NotRootError("the backend agent needs root (CAP_NET_RAW) for raw sockets") from None
            except OSError as exc:
                if fam == socket.AF_INET6:
                    continue  # no IPv6 on this host: serve IPv4 only
                raise MaglevError(f"cannot open a raw socket for IP protocol {proto}: {exc.strerror}") from None
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._socks.append((s, fam, proto))
        self._tun_fd = open_tun(self.tun)
        r = _ip("link", "set", self.tun, "up")
        if r.returncode:
            raise MaglevError(f"cannot bring {self.tun} up: {r.stderr.strip()}")
        for key in ("all", "default", self.tun):
            _sysctl(f"net.ipv4.conf.{key}.rp_filter", "0")
        for vip in self.vips:
            self._ensure_vip(vip)

    def _ensure_vip(self, vip: str) -> None:
        fam = "-6" if ":" in vip else "-4"
        plen = 128 if fam == "-6" else 32
        shown = _ip(fam, "-o", "addr", "show", "dev", "lo").stdout
        if f" {vip}/" in shown:
            return
        r = _ip(fam, "addr", "add", f"{vip}/{plen}", "dev", "lo", *(["nodad"] if fam == "-6" else []))
        if r.returncode:
            raise MaglevError(f"cannot put VIP {vip} on lo: {r.stderr.strip()}")
        self._added_vips.append(vip)

    def teardown(self) -> None:
        for s, _, _ in self._socks:
            s.close()
        self._socks.clear()
        if self._tun_fd >= 0:
            os.close(self._tun_fd)  # a non-persistent TUN device disappears with its fd
            self._tun_fd = -1
        for vip in self._added_vips:
            fam = "-6" if ":" in vip else "-4"
            _ip(fam, "addr", "del", f"{vip}/{128 if fam == '-6' else 32}", "dev", "lo")
        self._added_vips.clear()
        self.write_stats()

    # -- main loop ---------------------------------------------------------------

    def handle(self, packet: bytes, family: int, proto: int) -> None:
        self.counters["received"] += 1
        try:
            inner = decapsulate(packet, family, proto, self._vip_bytes)
        except DecapError as exc:
            self.counters[f"drop_{exc.reason}"] += 1
            return
        try:
            os.write(self._tun_fd, inner)
        except OSError as exc:
            self.counters[f"drop_tun_{exc.errno}"] += 1
            return
        self.counters["decapsulated"] += 1

    def write_stats(self) -> None:
        if not self.stats_path:
            return
        tmp = f"{self.stats_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(dict(self.counters), f)
        os.replace(tmp, self.stats_path)

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self, duration_s: float = 0.0) -> None:
        """Serve until SIGTERM/SIGINT (or ``duration_s`` seconds when > 0), in the
        engine chosen (C loop, or the pure-Python reference loop), SCHED_FIFO while light."""
        gov = RtGovernor(self.rt_prio + RT_OFFSET if self.rt_prio > 0 else 0)
        try:
            if self.engine == "c":
                self._run_c(duration_s, gov)
            else:
                self._run_python(duration_s, gov)
        finally:
            gov.close()
            self.counters["rt_demotions"] = gov.demotions
            self.counters["rt_fifo"] = int(gov.on)

    def _run_c(self, duration_s: float, gov: RtGovernor) -> None:
        from maglev.native import check, ffi, lib

        socks = ffi.new("struct mg_decap_sock[]", len(self._socks))
        for i, (s, fam, proto) in enumerate(self._socks):
            socks[i].fd, socks[i].family, socks[i].proto = s.fileno(), 4 if fam == socket.AF_INET else 6, proto
        vips = native_vips(self._vip_bytes)
        st = ffi.new("struct mg_decap_stats *")
        bufs = ffi.new("uint8_t[]", lib.MG_DECAP_BATCH * lib.MG_DECAP_BUF)
        end = time.monotonic() + duration_s if duration_s > 0 else None
        next_stats = 0.0
        try:
            while not self._stop:
                now = time.monotonic()
                if end is not None and now >= end:
                    break
                gov.tick(now)
                if now >= next_stats:
                    self._set_counters(stats_counters(st))
                    self.counters["rt_fifo"] = int(gov.on)
                    self.write_stats()
                    next_stats = now + 1.0
                budget = RUN_BUDGET_MS if end is None else max(0, min(RUN_BUDGET_MS, int((end - now) * 1000)))
                check(lib.mg_decap_run(socks, len(self._socks), self._tun_fd, vips, st, bufs, budget),
                      "backend agent loop")
        finally:
            self._set_counters(stats_counters(st))

    def _set_counters(self, values: dict[str, int]) -> None:
        for k, v in values.items():  # the C loop's totals (Counter.update would add)
            self.counters[k] = v

    def _run_python(self, duration_s: float, gov: RtGovernor) -> None:
        poller = select.poll()
        by_fd = {s.fileno(): (s, fam, proto) for s, fam, proto in self._socks}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        end = time.monotonic() + duration_s if duration_s > 0 else None
        next_stats = 0.0
        while not self._stop:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            gov.tick(now)
            if now >= next_stats:
                self.counters["rt_fifo"] = int(gov.on)
                self.write_stats()
                next_stats = now + 1.0
            for fd, _ in poller.poll(RUN_BUDGET_MS):
                s, fam, proto = by_fd[fd]
                for _ in range(64):  # drain a burst, then look at the others
                    try:
                        pkt = s.recv(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    self.handle(pkt, fam, proto)


def serve(vips: list[str], encap: str, tun: str, stats_path: str = "", duration_s: float = 0.0,
          engine: str = "", rt_prio: int = 1) -> Agent:
    agent = Agent(vips=vips, encap=encap, tun=tun, stats_path=stats_path, engine=engine, rt_prio=rt_prio)
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    try:
        agent.setup()
        agent.run(duration_s)
    finally:
        agent.teardown()
    return agent
