"""Least privilege for ``maglev run``: which capabilities a run needs, and dropping the rest.

:func:`needed_caps` is the table in docs/service.md as code (``maglev doctor`` checks
against it, and ``maglev run`` keeps exactly it).  :func:`drop_to` reduces this process to
a set of capabilities with ``prctl``/``capset`` (through ctypes, no new dependency):

1. every other capability leaves the *bounding* set (``PR_CAPBSET_DROP``, when we hold
   CAP_SETPCAP, as root does), so no program we start can get it back -- not even as
   uid 0, whose ``execve`` would otherwise refill the permitted set from the bounding set;
2. effective = permitted = inheritable = the kept set (``capset``);
3. the *ambient* set = the kept set, so the actor processes the supervisor starts (and
   restarts, which reopen the NIC sockets and the BGP port) hold it too, also when the
   run is not uid 0.

The supervisor calls it once its own set-up is done (config read, region and run folder
made, ``--metrics`` bound) and before it starts any actor: from then on the supervisor and
every actor hold only the kept set.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Any

from maglev.errors import MaglevError

log = logging.getLogger("maglev.service")

# Linux capability numbers (include/uapi/linux/capability.h).
CAPS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}
CAP_NAMES = {v: k for k, v in CAPS.items()}

# What each NIC kind needs (docs/service.md, "Capabilities by NIC").
NIC_CAPS: dict[str, tuple[str, ...]] = {
    "gen": (),
    "pcap": (),
    "null": (),
    "afpacket": ("CAP_NET_RAW",),
    # CAP_PERFMON: the verifier refuses our XDP program (EACCES) without it -- pointer
    # arithmetic it allows only to perfmon-capable loaders (measured: Linux 6.18)
    "afxdp": ("CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF", "CAP_PERFMON"),
}
# Kept when held, not required: the AF_PACKET rings are mapped MAP_LOCKED and the AF_XDP
# memory is charged to RLIMIT_MEMLOCK; CAP_IPC_LOCK lifts that limit.  CAP_SYS_PTRACE: the
# AF_XDP muxer takes steering's sockets with pidfd_getfd (a sibling, not a descendant: Yama
# refuses it without the capability) to transmit through their TX rings; without it the
# muxer sends through the AF_PACKET TX ring and says why (docs/nic.md).
NIC_RECOMMENDED: dict[str, tuple[str, ...]] = {
    "afpacket": ("CAP_IPC_LOCK",),
    "afxdp": ("CAP_IPC_LOCK", "CAP_SYS_PTRACE"),
}

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(MaglevError, OSError):
    """A capability could not be dropped or kept (``prctl``/``capset`` refused)."""


def cap_name(n: int) -> str:
    return CAP_NAMES.get(n, f"cap_{n}")


def mask(names: set[str] | list[str] | tuple[str, ...]) -> int:
    return sum(1 << CAPS[n] for n in set(names))


def names(m: int) -> list[str]:
    return [cap_name(i) for i in range(64) if m >> i & 1]


def last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


def cap_sets(pid: int | str = "self") -> dict[str, int]:
    """{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} of a process, as bit masks."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            out[key] = int(value.strip(), 16)
    return out


def needed_caps(nic_kind: str, config: Any, out_kind: str = "") -> list[str]:
    """The capabilities a run with this NIC (and transmit side) and config needs."""
    need = set(NIC_CAPS.get(nic_kind, ()))
    if out_kind:
        need |= set(NIC_CAPS.get(out_kind, ()))
    if "CAP_BPF" in need and last_cap() < CAPS["CAP_BPF"]:  # before Linux 5.8
        need -= {"CAP_BPF", "CAP_PERFMON"}
        need.add("CAP_SYS_ADMIN")
    if _tunnel_checks(config):  # the prober's raw sockets (maglev/health/tunnel.py)
        need.add("CAP_NET_RAW")
    bgp = getattr(config, "bgp", None)
    if bgp is not None and bgp.local_asn and bgp.peers and 0 < bgp.listen_port < 1024:
        need.add("CAP_NET_BIND_SERVICE")
    return sorted(need, key=CAPS.__getitem__)


def _tunnel_checks(config: Any) -> bool:
    """Any health check of the config probes through the tunnel (``through_tunnel``)."""
    checks = [v.health for v in getattr(config, "vips", ())]
    checks += [p.health for p in getattr(config, "pools", ())]
    return any(getattr(h, "through_tunnel", False) for h in checks)


def recommended_caps(nic_kind: str, out_kind: str = "") -> list[str]:
    rec = set(NIC_RECOMMENDED.get(nic_kind, ())) | set(NIC_RECOMMENDED.get(out_kind, ()))
    return sorted(rec, key=CAPS.__getitem__)


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # this process's own libc
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return _libc


def _prctl(op: int, a: int = 0, b: int = 0, what: str = "") -> int:
    r = _lib().prctl(op, a, b, 0, 0)
    if r < 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"prctl({what or op}): {os.strerror(err)}")
    return r


def _capset(eff: int, prm: int, inh: int) -> None:
    hdr = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in range(2):
        data[i].effective = eff >> (32 * i) & 0xFFFFFFFF
        data[i].permitted = prm >> (32 * i) & 0xFFFFFFFF
        data[i].inheritable = inh >> (32 * i) & 0xFFFFFFFF
    if _lib().capset(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"capset: {os.strerror(err)}")


def drop_to(keep: list[str] | set[str]) -> dict[str, Any]:
    """Reduce this process to ``keep`` (those of them it holds); see the module doc.

    Returns {"kept": [...], "dropped": [...], "bounding_dropped": bool}.  Nothing to drop
    (an unprivileged process holding exactly ``keep`` or less): nothing is changed."""
    before = cap_sets()
    held = before.get("CapPrm", 0)
    keep_m = mask(keep) & held
    top = last_cap()
    all_m = (1 << (top + 1)) - 1
    extra_bounding = before.get("CapBnd", 0) & all_m & ~keep_m
    result: dict[str, Any] = {"kept": names(keep_m), "dropped": names(held & ~keep_m), "bounding_dropped": False}
    if held & ~keep_m == 0 and before.get("CapAmb", 0) & ~keep_m == 0 and (
            not extra_bounding or not held >> CAPS["CAP_SETPCAP"] & 1):
        return result
    if extra_bounding and held >> CAPS["CAP_SETPCAP"] & 1:
        for n in range(top + 1):
            if extra_bounding >> n & 1:
                _prctl(PR_CAPBSET_DROP, n, what=f"PR_CAPBSET_DROP {cap_name(n)}")
        result["bounding_dropped"] = True
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="PR_CAP_AMBIENT_CLEAR_ALL")
    _capset(keep_m, keep_m, keep_m)
    for n in range(top + 1):
        if keep_m >> n & 1:
            _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, n, what=f"PR_CAP_AMBIENT_RAISE {cap_name(n)}")
    after = cap_sets()
    if after["CapEff"] != keep_m or after["CapPrm"] != keep_m:
        raise PrivilegeError(0, f"capabilities after the drop are {names(after['CapEff'])}, not {names(keep_m)}")
    return result


# Capabilities that let root read any file; maglev run never keeps them past its start.
DAC_CAPS = ("CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH")


def unreadable_without_dac(path: str | os.PathLike[str]) -> str:
    """Why ``path`` cannot be opened for reading without :data:`DAC_CAPS` (the OS reason,
    e.g. "Permission denied"), or '' when it can -- also when this thread holds neither
    (then its own open says it) or the test itself cannot be made.

    ``maglev run`` reads its config file with every capability, drops these after its
    start, and its config manager reads the file again then (at its start and at every
    reload): a file only root's DAC override can read (mode 0000, 0600 of another user)
    passed ``maglev check`` and failed the run's start ("config failed to start: ...
    Permission denied") or every reload.  Capabilities are per thread: this thread lowers
    its *effective* set (the permitted set is untouched), tries the open and raises it
    again; no other thread and no later code sees the difference."""
    dac = mask(DAC_CAPS)
    try:
        sets = cap_sets("thread-self")
    except (OSError, ValueError):
        return ""
    eff, prm, inh = sets.get("CapEff", 0), sets.get("CapPrm", 0), sets.get("CapInh", 0)
    if not eff & dac:
        return ""
    try:
        _capset(eff & ~dac, prm, inh)
    except PrivilegeError:
        return ""  # cannot lower it: cannot tell
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError as exc:
        return exc.strerror or str(exc)
    except ValueError:  # a NUL in the path: the reader says so
        return ""
    finally:
        _capset(eff, prm, inh)  # back as it was (allowed: they stay in the permitted set)
    return ""


def allow_rt_priority(prio: int) -> list[str]:
    """What keeps SCHED_FIFO up to ``prio`` possible after :func:`drop_after_setup`, for
    this process and every process it starts afterwards.  ``maglev run`` calls it before
    the drop: the data-path actors ask for SCHED_FIFO in their set-up
    (maglev/actors/sched.py), after the supervisor's drop, and until 2026-12-07 (session 6)
    every one of them got EPERM there and stayed SCHED_OTHER under ``maglev run`` (the
    Pipeline tests and benches keep their capabilities, so they did not see it).

    First choice: raise ``RLIMIT_RTPRIO`` (soft and hard) to ``prio`` -- a resource limit
    grants no capability, it only lets a process pick a real-time priority up to ``prio``
    for itself; returns [].  When the hard limit cannot be raised (no CAP_SYS_RESOURCE, as
    in some containers) and CAP_SYS_NICE is held: returns ["CAP_SYS_NICE"], the capability
    the drop must keep for the actors (each actor then keeps it after its own set-up only
    if it needs it: ``Actor.sched_setup``).  [] with a log line when neither is possible
    (the data path stays SCHED_OTHER), or when ``prio`` is 0 (``--rt-prio 0``)."""
    import resource

    if prio <= 0:
        return []
    soft, hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
    if hard >= prio or hard == resource.RLIM_INFINITY:
        if soft != resource.RLIM_INFINITY and soft < prio:
            resource.setrlimit(resource.RLIMIT_RTPRIO, (prio, hard))
        return []
    try:
        resource.setrlimit(resource.RLIMIT_RTPRIO, (prio, prio))
        return []
    except (OSError, ValueError) as exc:
        refused = exc
    if cap_sets().get("CapEff", 0) >> CAPS["CAP_SYS_NICE"] & 1:
        return ["CAP_SYS_NICE"]
    log.info("data path stays SCHED_OTHER: neither RLIMIT_RTPRIO nor CAP_SYS_NICE",
             extra={"kv": {"asked": prio, "error": refused}})
    return []


def allow_nice(nice: int) -> list[str]:
    """What lets a process lower its nice value down to ``nice`` after
    :func:`drop_after_setup`: the BGP speaker actor does (``maglev.actors.sched.BGP_NICE``).
    First choice: ``RLIMIT_NICE`` (soft and hard) raised to ``20 - nice`` (the limit's
    encoding), inherited by every actor ``maglev run`` starts; returns [].  When the hard
    limit cannot be raised (no CAP_SYS_RESOURCE, as in some containers: seen here) and
    CAP_SYS_NICE is held: returns ["CAP_SYS_NICE"], for the drop to keep (as
    :func:`allow_rt_priority` does).  [] with a log line when neither is possible: the
    speaker keeps nice 0."""
    import resource

    want = 20 - nice
    soft, hard = resource.getrlimit(resource.RLIMIT_NICE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return []
    try:
        new_hard = hard if hard == resource.RLIM_INFINITY or hard >= want else want
        resource.setrlimit(resource.RLIMIT_NICE, (want, new_hard))
        return []
    except (OSError, ValueError) as exc:
        refused = exc
    if cap_sets().get("CapEff", 0) >> CAPS["CAP_SYS_NICE"] & 1:
        return ["CAP_SYS_NICE"]
    log.info("the BGP speaker keeps nice 0: neither RLIMIT_NICE nor CAP_SYS_NICE", extra={"kv": {"asked": nice, "error": refused}})
    return []


def drop_after_setup(nic_kind: str, out_kind: str, config: Any, also: tuple[str, ...] | list[str] = ()
                     ) -> dict[str, Any] | None:
    """``maglev run``'s drop: keep what the NIC and BGP need (and CAP_IPC_LOCK for an
    interface NIC, when held), plus ``also`` (CAP_SYS_NICE from :func:`allow_rt_priority`
    when only it keeps the data path's SCHED_FIFO), drop every other capability; one log
    line says what was kept.  None when the process held nothing beyond that (nothing logged)."""
    keep = set(needed_caps(nic_kind, config, out_kind)) | set(recommended_caps(nic_kind, out_kind)) | set(also)
    r = drop_to(keep)
    if not r["dropped"] and not r["bounding_dropped"]:
        return None
    out_adds = set(NIC_CAPS.get(out_kind, ())) - set(NIC_CAPS.get(nic_kind, ()))
    why = f"--nic {nic_kind}" + (f", --out {out_kind}" if out_adds else "") + (
        f", {'+'.join(also)} for SCHED_FIFO or the BGP speaker's nice" if also else "")
    log.warning("capabilities dropped after set-up: kept %s (%s); dropped %d others",
                ",".join(r["kept"]) or "none", why, len(r["dropped"]),
                extra={"kv": {"kept": ",".join(r["kept"]) or "none", "uid": os.geteuid()}})
    return r
