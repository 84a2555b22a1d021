"""``maglev doctor``: check a host before the first run, and say how to fix what is wrong.

Each check is a small function that reads the host (``/proc``, ``/sys``, sockets) and
returns :class:`Finding` rows: ``ok``, ``warn`` (works, but not as well as it could),
``fail`` (``maglev run`` with this config and NIC would not work) or ``skip`` (the check
does not apply, and why).  A finding that is not ``ok`` carries the fix as a command or
a config change.  Checks never change the host.

The file-system reads go through :class:`Host`, whose ``proc``/``sys`` roots tests point
at a fake tree; the lab tests run the real thing inside network namespaces.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from maglev.config import DEFAULT_FLOW_HASH_SECRET, Config

# Capability numbers and what each NIC needs live with the code that drops the rest
# (maglev/service/privileges.py; docs/service.md has the table and the reasons).
from maglev.service.privileges import CAPS, NIC_CAPS, needed_caps, recommended_caps

__all__ = ["CAPS", "NIC_CAPS"]

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

# Bytes an encapsulation adds to an IPv4 packet sent to an IPv4 backend
# (maglev.datapath.encap.overhead gives the exact figure per family; these are for
# reading a config without the C extension).
ENCAP_OVERHEAD_V4 = {"gre": 24, "ipip": 20, "vxlan": 50, "l2": 0}
ENCAP_OVERHEAD_V6 = {"gre": 44, "ipip": 40, "vxlan": 70, "l2": 0}
CLIENT_MTU = 1500  # what clients on the Internet send at most


@dataclass
class Finding:
    check: str
    status: str
    message: str
    fix: str = ""

    def line(self) -> str:
        tail = f"\n      fix: {self.fix}" if self.fix and self.status != OK else ""
        return f"[{self.status:4}] {self.check}: {self.message}{tail}"


@dataclass
class Host:
    """Where the host's state is read from (tests point these at a fake tree)."""

    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    connect_timeout_s: float = 1.0

    def read(self, path: Path) -> str | None:
        try:
            return path.read_text()
        except OSError:
            return None

    def cap_eff(self) -> int | None:
        text = self.read(self.proc / "self" / "status")
        for line in (text or "").splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
        return None

    def meminfo(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in (self.read(self.proc / "meminfo") or "").splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key.strip()] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
        return out

    def iface(self, name: str, attr: str) -> str | None:
        text = self.read(self.sys / "class" / "net" / name / attr)
        return None if text is None else text.strip()

    def ifaces(self) -> list[str]:
        try:
            return sorted(p.name for p in (self.sys / "class" / "net").iterdir())
        except OSError:
            return []

    def sysctl(self, dotted: str) -> str | None:
        text = self.read(self.proc / "sys" / Path(*dotted.split(".")))
        return None if text is None else text.strip()


@dataclass
class Context:
    config: Config
    nic: str = "gen"  # the --nic argument (kind:arg)
    workers: int = 2
    host: Host = field(default_factory=Host)
    lab: bool = False  # the lab's own config: a built-in secret is fine there

    @property
    def nic_kind(self) -> str:
        return self.nic.partition(":")[0]

    @property
    def nic_iface(self) -> str:
        kind, _, rest = self.nic.partition(":")
        return rest.split(",")[0] if kind in ("afpacket", "afxdp") else ""


Check = Callable[[Context], list[Finding]]


def check_extension(ctx: Context) -> list[Finding]:
    try:
        from maglev import native  # noqa: F401  (imports maglev._native)
    except Exception as exc:  # any import problem is the finding
        return [Finding("extension", FAIL, f"the C extension does not load: {exc}",
                        "pip install . (needs gcc and the Python headers: apt-get install gcc python3-dev)")]
    return [Finding("extension", OK, "maglev._native loads")]


def check_capabilities(ctx: Context) -> list[Finding]:
    eff = ctx.host.cap_eff()
    if eff is None:
        return [Finding("capabilities", SKIP, "cannot read CapEff from /proc/self/status")]
    need = needed_caps(ctx.nic_kind, ctx.config)
    out = []
    missing = [n for n in need if not eff >> CAPS[n] & 1]
    # CAP_BPF and CAP_PERFMON arrived in Linux 5.8; CAP_SYS_ADMIN covers both.
    if eff >> CAPS["CAP_SYS_ADMIN"] & 1:
        missing = [m for m in missing if m not in ("CAP_BPF", "CAP_PERFMON")]
    if missing:
        alt = "--nic pcap:FILE or --nic gen" if ctx.nic_kind in ("afpacket", "afxdp") else ""
        out.append(Finding(
            "capabilities", FAIL,
            f"--nic {ctx.nic_kind} needs {', '.join(missing)}, which this process does not hold",
            f"run as root, or grant them (systemd: AmbientCapabilities={' '.join(missing)}; "
            f"or setcap/setpriv --ambient-caps)" + (f"; without them use {alt}" if alt else "")))
    else:
        held = ", ".join(need) if need else "none needed"
        out.append(Finding("capabilities", OK, f"--nic {ctx.nic_kind}: {held}"))
    if "CAP_IPC_LOCK" in recommended_caps(ctx.nic_kind) and not eff >> CAPS["CAP_IPC_LOCK"] & 1:
        out.append(Finding("capabilities", WARN,
                           f"no CAP_IPC_LOCK: the {ctx.nic_kind} rings are mapped locked in RAM, which "
                           "RLIMIT_MEMLOCK may refuse (they may then be swapped out under memory pressure)",
                           "AmbientCapabilities=CAP_IPC_LOCK, or raise `ulimit -l`"))
    return out


def _overheads(c: Config) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in c.vips:
        for b in v.backends:
            v6 = ipaddress.ip_address(b.address).version == 6
            out[v.encap] = max(out.get(v.encap, 0), (ENCAP_OVERHEAD_V6 if v6 else ENCAP_OVERHEAD_V4)[v.encap])
    return out


def check_interface(ctx: Context) -> list[Finding]:
    name = ctx.nic_iface
    if not name:
        return [Finding("interface", SKIP, f"--nic {ctx.nic_kind} uses no network interface")]
    h = ctx.host
    if h.iface(name, "mtu") is None:
        known = ", ".join(h.ifaces()) or "none"
        return [Finding("interface", FAIL, f"no interface {name!r} in this network namespace",
                        f"pick one of: {known}")]
    out = []
    state = h.iface(name, "operstate")
    if state not in ("up", "unknown"):
        out.append(Finding("interface", FAIL, f"{name} is {state}", f"ip link set {name} up"))
    else:
        out.append(Finding("interface", OK, f"{name} is {state}"))
    mtu = int(h.iface(name, "mtu") or 0)
    worst = max(_overheads(ctx.config).items(), key=lambda kv: kv[1], default=None)
    if worst is None or worst[1] == 0:
        out.append(Finding("mtu", OK, f"{name} MTU {mtu}; no encapsulation overhead in this config"))
    elif mtu < CLIENT_MTU + worst[1]:
        out.append(Finding(
            "mtu", WARN,
            f"{name} MTU {mtu} < {CLIENT_MTU} + {worst[1]} ({worst[0]} overhead): full-size client "
            f"packets are split (IPv4 without DF) or answered with ICMP frag-needed / packet-too-big",
            f"ip link set {name} mtu {CLIENT_MTU + worst[1]} (and the same on the path to the backends), "
            f"and [instance] mtu = {CLIENT_MTU + worst[1]}"))
    else:
        out.append(Finding("mtu", OK, f"{name} MTU {mtu} fits {CLIENT_MTU} + {worst[1]} ({worst[0]})"))
    if ctx.config.instance.mtu > mtu:
        out.append(Finding("mtu", FAIL,
                           f"[instance] mtu = {ctx.config.instance.mtu} is above {name}'s MTU {mtu}: "
                           f"encapsulated packets that large would be dropped by the NIC",
                           f"set [instance] mtu = {mtu}, or raise the interface MTU"))
    return out


def check_af_xdp(ctx: Context) -> list[Finding]:
    try:
        s = socket.socket(44, socket.SOCK_RAW, 0)  # AF_XDP
    except OSError as exc:
        if exc.errno in (errno.EAFNOSUPPORT, errno.EINVAL):
            why = "the kernel has no AF_XDP (CONFIG_XDP_SOCKETS)"
            st = FAIL if ctx.nic_kind == "afxdp" else WARN
            return [Finding("af_xdp", st, why, "use --nic afpacket:IFACE, or a kernel with XDP sockets")]
        if exc.errno == errno.EPERM:
            st = FAIL if ctx.nic_kind == "afxdp" else SKIP
            return [Finding("af_xdp", st, "AF_XDP sockets need CAP_NET_RAW (not held)",
                            "run with CAP_NET_RAW, CAP_NET_ADMIN, CAP_BPF and CAP_PERFMON")]
        return [Finding("af_xdp", WARN, f"AF_XDP socket: {exc}")]
    s.close()
    return [Finding("af_xdp", OK, "the kernel has AF_XDP sockets")]


def check_hugepages(ctx: Context) -> list[Finding]:
    m = ctx.host.meminfo()
    total = m.get("HugePages_Total", 0)
    thp = ctx.host.read(ctx.host.sys / "kernel" / "mm" / "transparent_hugepage" / "enabled") or ""
    mode = thp[thp.find("[") + 1:thp.find("]")] if "[" in thp else "unknown"
    if total:
        return [Finding("hugepages", OK, f"{total} reserved huge pages ({m.get('HugePages_Free', 0)} free); "
                                         f"transparent huge pages: {mode}")]
    if mode in ("always", "madvise"):
        return [Finding("hugepages", OK, f"no reserved huge pages; transparent huge pages: {mode} "
                                         f"(the connection table asks for them with madvise)")]
    return [Finding("hugepages", WARN,
                    f"no reserved huge pages and transparent huge pages are {mode}: the connection "
                    f"table pays a TLB miss on most lookups at 1M flows",
                    "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled, or reserve pages: "
                    "sysctl -w vm.nr_hugepages=512")]


def check_memory(ctx: Context) -> list[Finding]:
    m = ctx.host.meminfo()
    avail = m.get("MemAvailable")
    if avail is None:
        return [Finding("memory", SKIP, "cannot read MemAvailable from /proc/meminfo")]
    cap = 1 << max(0, (ctx.config.conntrack.capacity - 1).bit_length())
    need = cap * 64 * ctx.workers
    mib = 1 << 20
    if need > avail:
        return [Finding("memory", FAIL,
                        f"connection tables need {need // mib} MiB ({ctx.workers} workers x {cap} entries "
                        f"x 64 B) but only {avail // mib} MiB are available",
                        "lower [conntrack] capacity or --workers")]
    st = WARN if need > avail // 2 else OK
    return [Finding("memory", st, f"connection tables {need // mib} MiB of {avail // mib} MiB available",
                    "lower [conntrack] capacity or --workers" if st == WARN else "")]


def check_rp_filter(ctx: Context) -> list[Finding]:
    """Strict reverse-path filtering (rp_filter=1) drops packets whose source is not routed
    back through the interface they came in on.  On a backend that decapsulates (a GRE/IPIP
    TUN from ``maglev backend-agent``, a VXLAN device) the inner source is the client, routed
    through the uplink, so strict mode drops every request.  The effective value of an
    interface is max(all, that interface)."""
    h = ctx.host
    all_v = h.sysctl("net.ipv4.conf.all.rp_filter")
    if all_v is None:
        return [Finding("rp_filter", SKIP, "cannot read net.ipv4.conf.all.rp_filter")]
    tunnels = [n for n in h.ifaces() if n.startswith(("tun", "mgb", "vxlan", "gre", "ipip"))]
    names = ([ctx.nic_iface] if ctx.nic_iface else []) + [t for t in tunnels if t != ctx.nic_iface]
    strict = []
    for n in names:
        v = h.sysctl(f"net.ipv4.conf.{n}.rp_filter")
        if v is not None and max(int(all_v), int(v)) == 1:
            strict.append(n)
    if strict:
        fixes = "; ".join(f"sysctl -w net.ipv4.conf.{n}.rp_filter=2" for n in strict)
        if int(all_v) == 1:
            fixes = "sysctl -w net.ipv4.conf.all.rp_filter=2; " + fixes
        return [Finding("rp_filter", WARN,
                        f"strict reverse-path filtering on {', '.join(strict)}: decapsulated or DSR "
                        f"packets from clients are dropped when the route back to the client leaves "
                        f"by another interface", fixes + " (loose mode)")]
    what = ", ".join(names) if names else "no NIC or tunnel interface here"
    return [Finding("rp_filter", OK, f"not strict ({what})")]


def _connect(addr: str, port: int, timeout: float, source: str = "") -> str | None:
    """None when a TCP connection opens, else why not."""
    fam = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            if source:
                s.bind((source, 0))
            s.connect((addr, port))
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def check_bgp_peers(ctx: Context) -> list[Finding]:
    b = ctx.config.bgp
    if not b.local_asn or not b.peers:
        return [Finding("bgp", SKIP, "no [bgp] peers configured")]
    out = []
    for p in b.peers:
        if p.passive:
            out.append(Finding("bgp", SKIP, f"peer {p.address} is passive (it connects to us)"))
            continue
        why = _connect(p.address, p.port, ctx.host.connect_timeout_s, p.local_address)
        if why is None:
            out.append(Finding("bgp", OK, f"peer {p.address}:{p.port} accepts TCP"))
        else:
            out.append(Finding("bgp", FAIL, f"peer {p.address}:{p.port}: {why}",
                               "check the router's neighbor config (our address, AS "
                               f"{b.local_asn}), routes and firewalls toward TCP {p.port}"))
    return out


def check_backends(ctx: Context) -> list[Finding]:
    """One TCP connect per backend that has a TCP or HTTP health check (to its check port).
    This proves the backend is reachable directly, not that it decapsulates: a probe
    through the tunnel is not implemented yet (docs/service.md)."""
    out = []
    seen: set[tuple[str, int]] = set()
    for v in ctx.config.vips:
        if v.health.type not in ("tcp", "http"):
            continue
        port = v.health.port or v.port
        for be in v.backends:
            if (be.address, port) in seen or not port:
                continue
            seen.add((be.address, port))
            why = _connect(be.address, port, ctx.host.connect_timeout_s)
            if why is None:
                out.append(Finding("backends", OK, f"{be.address}:{port} accepts TCP"))
            else:
                out.append(Finding("backends", WARN, f"{be.address}:{port} ({v.key}): {why}; it will be "
                                   f"marked down until it answers",
                                   "start the service on the backend, or fix the route to it"))
    if not out:
        out.append(Finding("backends", SKIP, "no VIP has a tcp or http health check to probe with"))
    return out


def check_secret(ctx: Context) -> list[Finding]:
    if ctx.config.instance.flow_hash_secret.lower() != DEFAULT_FLOW_HASH_SECRET:
        return [Finding("flow_hash_secret", OK, "a deployment secret is set")]
    if ctx.lab:
        return [Finding("flow_hash_secret", OK, "the built-in secret (lab)")]
    return [Finding("flow_hash_secret", WARN,
                    "[instance] flow_hash_secret is the built-in public value: clients can craft "
                    "flows that collide in one connection-table bucket",
                    "python3 -c 'import secrets; print(secrets.token_hex(16))' and set the same value "
                    "as [instance] flow_hash_secret on every instance")]


def check_shm(ctx: Context) -> list[Finding]:
    try:
        st = os.statvfs("/dev/shm")
    except OSError as exc:
        return [Finding("shm", FAIL, f"/dev/shm: {exc.strerror}", "mount -t tmpfs tmpfs /dev/shm")]
    free = st.f_bavail * st.f_frsize
    # The run sizes its frame pool from workers and ring size: ~(3 rings x 2048 + spares)
    # frames of 2 KiB per worker; round up generously.
    need = ctx.workers * 4 * 2048 * 2048 + (64 << 20)
    ctc = ctx.config.conntrack
    if ctc.shared:  # one connection table per worker in /dev/shm (maglev/rings/conntrack_shm.py)
        from maglev.rings.conntrack_shm import SHM_DIR, list_segments, table_bytes

        need += ctx.workers * table_bytes(ctc.capacity)
        for name in list_segments(ctx.config.instance.name):  # a restart reuses these
            try:
                free += os.stat(os.path.join(SHM_DIR, name)).st_size
            except OSError:
                pass
    mib = 1 << 20
    if free < need:
        return [Finding("shm", FAIL, f"/dev/shm has {free // mib} MiB free, the run needs about {need // mib} MiB",
                        "mount -o remount,size=1G /dev/shm (or fewer --workers / a smaller --ring-size / "
                        "conntrack.capacity)")]
    return [Finding("shm", OK, f"/dev/shm has {free // mib} MiB free (about {need // mib} MiB needed)")]


def check_shm_pages(ctx: Context) -> list[Finding]:
    """Shared connection tables live in /dev/shm: huge pages there or not (2x per packet at
    1M flows, docs/datapath.md)."""
    if not ctx.config.conntrack.shared:
        return [Finding("shm_pages", SKIP, "conntrack.shared = false: private tables (see hugepages)")]
    from maglev.rings.conntrack_shm import SHM_DIR, shm_pages

    mountinfo = ctx.host.read(ctx.host.proc / "self" / "mountinfo")
    enabled = ctx.host.read(ctx.host.sys / "kernel" / "mm" / "transparent_hugepage" / "shmem_enabled")
    pages, why = shm_pages(SHM_DIR, mountinfo=mountinfo or "", shmem_enabled=enabled or "")
    if pages == "thp":
        return [Finding("shm_pages", OK, f"connection tables in {SHM_DIR} get transparent huge pages: {why}")]
    return [Finding("shm_pages", WARN,
                    f"connection tables in {SHM_DIR} get 4 KiB pages ({why}): at 1M flows a lookup "
                    "costs about twice what it does on huge pages",
                    f"mount -o remount,huge=within_size {SHM_DIR} before maglev run (or "
                    "conntrack.shared = false, which loses the tables across restarts)")]


CHECKS: tuple[Check, ...] = (
    check_extension, check_capabilities, check_interface, check_af_xdp, check_hugepages,
    check_memory, check_rp_filter, check_bgp_peers, check_backends, check_secret, check_shm,
    check_shm_pages,
)


def run_checks(ctx: Context, checks: tuple[Check, ...] = CHECKS) -> list[Finding]:
    out: list[Finding] = []
    for chk in checks:
        try:
            out += chk(ctx)
        except Exception as exc:  # a check that breaks is itself a finding, never a traceback
            out.append(Finding(chk.__name__.removeprefix("check_"), WARN, f"the check failed: {exc!r}"))
    return out


def summary(findings: list[Finding]) -> dict[str, Any]:
    counts = {s: sum(f.status == s for f in findings) for s in (OK, WARN, FAIL, SKIP)}
    return {"ok": counts[FAIL] == 0, "counts": counts, "findings": [asdict(f) for f in findings]}
