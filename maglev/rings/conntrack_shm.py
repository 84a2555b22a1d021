"""Connection tables in POSIX shared memory: kept across a worker's restart and adopted by
the next ``maglev run`` of the same instance (issue 16.5; docs/rings.md, "Connection
tables").

One file per worker slot, ``/dev/shm/maglev-<instance>-ct-<tag>-<i>``:

* ``<instance>`` is ``[instance] name``; ``<i>`` the worker index;
* ``<tag>`` (8 hex digits) is the *identity* of the instance on this host: SHA-256 of its
  state directory (``maglev.control.endpoints.state_dir``, where the accepted config is
  persisted) and of its config file's path.  Two runs with the same identity are "the same
  instance" (a restart, an upgrade); two test sessions, or two labs, that reuse the name
  ``mg1`` with another state directory never adopt each other's tables.

The file holds exactly the table's one mapping (``mg_conntrack.h``: 256-byte header with
magic, layout version and offsets, then metadata and entries).  Adoption:

1. open the file (never create it), take ``flock(LOCK_EX)`` (one live owner at a time; the
   kernel drops the lock of a killed process), check it is a regular file of ours;
2. read the header with ``pread`` and check it read-only (``mg_ct_check``: magic, layout
   version, geometry, file size) and against this run (capacity, flow-hash secret, number
   of workers, worker index);
3. only then map it (``mg_ct_map_shared``, which checks the mapped header again) and
   recount its occupancy.  The geometry words are never written after the table was
   formatted, so a process killed at any point of an adoption leaves a table the next
   start adopts.

A refused file is replaced, never patched: a fresh table is made under a temporary name
(``...-<i>.new-<pid>``), its memory reserved with ``posix_fallocate`` (a full /dev/shm is a
clear error now, never a SIGBUS later), formatted, then ``rename``-d over the old name
(atomic): a kill during a fresh start leaves the old file or the new one, whole.

Stale clean-up of dead instances (``maglev.rings.region.remove_stale_regions`` and the
supervisor's run-folder clean-up) must keep these files: :func:`keep_for_adoption` says
which names are meant for adoption.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Any

from maglev.errors import MaglevError
from maglev.native import ffi, lib
from maglev.record import note

log = logging.getLogger("maglev.conntrack")

SHM_DIR = "/dev/shm"
HDR_SIZE = 256
PAGE = 4096
_CT_RE = re.compile(r"^maglev-(?P<instance>[A-Za-z0-9_.-]{1,64})-ct-(?P<tag>[0-9a-f]{8})-(?P<index>[0-9]{1,4})$")
_TMP_RE = re.compile(r"^(?P<final>maglev-.+-ct-[0-9a-f]{8}-[0-9]{1,4})\.new-(?P<pid>[0-9]+)$")

_CHECK_REASONS = {
    lib.MG_CT_E_TRUNCATED: "truncated (shorter than the {hdr}-byte header)",
    lib.MG_CT_E_MAGIC: "not a maglev connection table (wrong magic)",
    lib.MG_CT_E_VERSION: "layout version {version}, this build uses {ours}",
    lib.MG_CT_E_GEOMETRY: "corrupt header (ways, buckets, offsets or page mode inconsistent)",
    lib.MG_CT_E_SIZE: "file is {size} bytes, its header says {expected} (truncated or grown)",
}


class ConntrackShmError(MaglevError):
    """A shared connection table could not be made (e.g. /dev/shm too small)."""


def identity_tag(state_dir: str, config_path: str) -> str:
    """8 hex digits naming an instance's identity on this host (module docstring)."""
    sd = os.path.realpath(state_dir) if state_dir else ""
    cp = os.path.realpath(config_path) if config_path else ""
    return hashlib.sha256(f"{sd}\0{cp}".encode()).hexdigest()[:8]


def segment_name(instance: str, tag: str, index: int) -> str:
    name = f"maglev-{instance}-ct-{tag}-{index}"
    if not _CT_RE.match(name):
        raise ConntrackShmError(f"conntrack segment name {name!r}: instance or tag not usable in a shm name")
    return name


RECORD_FILE = "conntrack-segments"
RECORD_ENV = "MAGLEV_CT_RECORD"  # a file that also lists every table made (test harnesses)


def record(state_dir: str, name: str) -> None:
    """Note ``name`` in ``<state_dir>/conntrack-segments`` (one name a line): the state
    directory lists the connection tables of its instance, so they can be found and removed
    with it (:func:`remove_recorded`).  With ``$MAGLEV_CT_RECORD`` set, also in that file
    (a test session lists what its runs made, whatever state directories they used).  Best
    effort: a read-only state dir loses nothing but the list."""
    if extra := os.environ.get(RECORD_ENV):
        _append_once(extra, name)
    _append_once(os.path.join(state_dir, RECORD_FILE), name)


def remove_listed(path: str) -> list[str]:
    """Unlink the tables named in the list file ``path`` (see :func:`record`)."""
    try:
        with open(path, encoding="ascii") as f:
            names = f.read().split()
    except (OSError, UnicodeDecodeError):
        return []
    removed = []
    for n in names:
        if _CT_RE.match(n):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, n))
                removed.append(n)
    return removed


def _append_once(path: str, name: str) -> None:
    state_dir = os.path.dirname(path)
    try:
        with open(path, encoding="ascii") as f:
            if name in f.read().split():
                return
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError):
        return
    with contextlib.suppress(OSError):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (name + "\n").encode())  # one small O_APPEND write: atomic
        finally:
            os.close(fd)


def remove_recorded(root: str) -> list[str]:
    """Unlink the tables listed in every ``conntrack-segments`` file under ``root`` (an
    instance's state directory, or a test session's)."""
    removed = []
    for d, _dirs, files in os.walk(root):
        if RECORD_FILE in files:
            removed += remove_listed(os.path.join(d, RECORD_FILE))
    return removed


def keep_for_adoption(name: str) -> bool:
    """True for a /dev/shm name that is a connection table kept for the next run of its
    instance: a stale-clean-up must not remove it (only an operator does, with
    :func:`remove_segments`, or the next run replaces it).  Temporary files of a fresh start
    (``.new-<pid>``) are not kept: remove them when their pid is dead."""
    return bool(_CT_RE.match(name))


def check_instance_name(instance: str) -> None:
    """Refuse (:class:`ConntrackShmError`) a name no instance can have: it would never match
    a table, and ``/`` or ``..`` in it must not reach a path."""
    if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", instance):
        raise ConntrackShmError(f"instance name {instance!r}: use 1-64 characters from A-Z a-z 0-9 _ . -")


def list_segments(instance: str | None = None, tag: str | None = None) -> list[str]:
    """Connection-table names in /dev/shm (optionally of one instance and identity)."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    out = []
    for n in sorted(names):
        m = _CT_RE.match(n)
        if m and (instance is None or m["instance"] == instance) and (tag is None or m["tag"] == tag):
            out.append(n)
    return out


def remove_segments(instance: str | None = None, tag: str | None = None) -> list[str]:
    """Unlink the connection tables of an instance (and identity), and dead temporaries."""
    removed = []
    for n in list_segments(instance, tag):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, n))
            removed.append(n)
    removed += remove_dead_temporaries()
    return removed


def remove_dead_temporaries() -> list[str]:
    """Unlink ``...ct-<tag>-<i>.new-<pid>`` files whose pid is gone (a killed fresh start)."""
    removed = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    for n in names:
        m = _TMP_RE.match(n)
        if m and not _pid_alive(int(m["pid"])):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, n))
                removed.append(n)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def key_fingerprint(k0: int, k1: int) -> int:
    """64-bit fingerprint of the flow-hash secret (a table is only findable with its key)."""
    d = hashlib.sha256(b"maglev-conntrack-key\0" + k0.to_bytes(8, "little") + k1.to_bytes(8, "little")).digest()
    return int.from_bytes(d[:8], "little") or 1


def table_bytes(capacity: int) -> int:
    n = int(lib.mg_ct_bytes(capacity))
    if n == 0:
        raise ConntrackShmError(f"conntrack.capacity {capacity} is not in 1..{lib.MG_CT_MAX_CAPACITY}")
    return (n + PAGE - 1) // PAGE * PAGE


def check_shm_space(capacity: int, copies: int, shm_dir: str = SHM_DIR) -> int:
    """Before a run makes ``copies`` fresh tables of ``capacity`` entries in /dev/shm: the
    bytes they need, or :class:`~maglev.datapath.ctmem.ConntrackMemoryError` when the
    tmpfs has less room than that (its size limit is separate from MemAvailable; without
    this check the worker would fail at its posix_fallocate after the run started)."""
    from maglev.datapath.ctmem import ConntrackMemoryError

    need = table_bytes(capacity) * max(0, copies)
    try:
        vfs = os.statvfs(shm_dir)
    except OSError as exc:
        raise ConntrackShmError(f"conntrack: cannot look at {shm_dir}: {exc.strerror or exc}") from None
    free = vfs.f_bavail * vfs.f_frsize
    if need > free:
        raise ConntrackMemoryError(
            f"conntrack.capacity = {capacity}: {copies} fresh table(s) of {table_bytes(capacity) / (1 << 30):.2f} GiB "
            f"= {need / (1 << 30):.2f} GiB do not fit in {shm_dir} ({free / (1 << 30):.2f} GiB free): lower "
            "conntrack.capacity or the number of workers, enlarge the tmpfs, remove old tables "
            "(maglev conntrack drop), or set conntrack.shared = false")
    return need


def round_capacity(capacity: int) -> int:
    c = int(lib.MG_CT_WAYS)
    while c < capacity:
        c <<= 1
    return c


@dataclass
class Wanted:
    """What this run needs of a table to adopt it."""

    capacity: int   # configured (rounded up like the table)
    key_fp: int
    n_workers: int
    worker: int
    map_fp: int = 0  # steering's flow -> worker map (maglev/actors/dispatch.py), 0 = plain


def check_header(hdr: bytes, file_size: int, want: Wanted) -> str:
    """'' if a table with this header (the file's first bytes) and size can be adopted by
    this run, else why not (one phrase).  Reads only."""
    rc = int(lib.mg_ct_check(hdr, len(hdr), file_size))
    if rc:
        version = int.from_bytes(hdr[8:12], "little") if len(hdr) >= 12 else 0
        expected = int.from_bytes(hdr[40:48], "little") if len(hdr) >= 48 else 0
        return _CHECK_REASONS.get(rc, f"refused (code {rc})").format(
            hdr=HDR_SIZE, version=version, ours=lib.MG_CT_LAYOUT_VERSION, size=file_size, expected=expected)
    h = ffi.cast("struct mg_ct *", ffi.from_buffer(hdr))
    cap = int(h.n_buckets) * int(lib.MG_CT_WAYS)
    if cap != round_capacity(want.capacity):
        return f"capacity {cap} entries, this run is configured for {round_capacity(want.capacity)}"
    if int(h.key_fp) != want.key_fp:
        return "made with another flow-hash secret (its entries could not be found)"
    if int(h.n_workers) != want.n_workers:
        return f"made by a run of {int(h.n_workers)} workers, this run has {want.n_workers} (flows land on other workers)"
    if int(h.map_fp) != want.map_fp:
        return ("made by a run with another flow -> worker map (CPU placement or weights), "
                "this run's flows would land on other workers")
    if int(h.worker) != want.worker:
        return f"belongs to worker {int(h.worker)}"
    return ""


def preview(name: str, want: Wanted) -> tuple[bool, str]:
    """(adoptable, why not) for /dev/shm/<name>, read-only, without the lock: what the
    worker will find unless the file changes meanwhile.  (False, "") when there is none."""
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False, ""
    except OSError as exc:
        return False, f"cannot open it: {exc.strerror or exc}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False, "not a regular file"
        if st.st_uid != os.geteuid():
            return False, f"owned by uid {st.st_uid}, not {os.geteuid()} (foreign)"
        reason = check_header(os.pread(fd, HDR_SIZE, 0), st.st_size, want)
        if not reason:
            try:  # probe only: a live owner holds LOCK_EX (released at once when we get it)
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return False, "in use by another live process (a second run of this instance?)"
        return not reason, reason
    finally:
        os.close(fd)


def plan_run(instance: str, state_dir: str, config_path: str, capacity: int, key: tuple[int, int],
             n_workers: int, map_fp: int = 0) -> tuple[int, str]:
    """Before a run starts: (how many workers will adopt their table, one log line saying
    what the run will do with the previous run's tables and why)."""
    tag = identity_tag(state_dir, config_path)
    fp = key_fingerprint(*key)
    adopt, why = 0, {}
    for i in range(n_workers):
        ok, reason = preview(segment_name(instance, tag, i), Wanted(capacity, fp, n_workers, i, map_fp))
        adopt += ok
        if reason:
            why.setdefault(reason, []).append(i)
    others = [n for n in list_segments(instance, tag) if int(n.rsplit("-", 1)[1]) >= n_workers]
    if adopt == n_workers:
        line = f"connection tables: adopting the previous run's tables of all {n_workers} workers"
    elif adopt == 0 and not why:
        line = f"connection tables: none from a previous run of this instance; {n_workers} fresh tables"
    else:
        parts = [f"{reason} (worker{'s' if len(ws) > 1 else ''} {', '.join(map(str, ws))})"
                 for reason, ws in why.items()]
        line = (f"connection tables: adopting {adopt} of {n_workers}; the others start fresh: "
                + "; ".join(parts or ["none from a previous run"]))
    if others:
        line += f"; {len(others)} table(s) of workers beyond {n_workers - 1} stay unused"
    return adopt, line


SHMEM_ENABLED = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
MOUNTINFO = "/proc/self/mountinfo"


def _selected(text: str) -> str:
    """The bracketed word of a sysfs choice list ("always [never] deny" -> "never")."""
    m = re.search(r"\[(\w[\w-]*)\]", text)
    return m.group(1) if m else text.strip()


def _read_text(path: str) -> str:
    """The text of a /proc or /sys file, "" when it cannot be read."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def shm_pages(directory: str = SHM_DIR, *, mountinfo: str | None = None,
              shmem_enabled: str | None = None) -> tuple[str, str]:
    """("thp" | "4k", why): the pages a table file in ``directory`` gets.

    A tmpfs file gets transparent huge pages per its mount's ``huge=`` option
    (always / within_size; advise: on madvise, which mg_ct_map_shared does), unless the
    machine-wide ``shmem_enabled`` says deny (never) or force (always).  /dev/shm is usually
    mounted without ``huge=``, i.e. 4 KiB pages: a 1M-flow table then costs ~2x per packet
    in TLB misses (docs/datapath.md).  hugetlbfs is not used (it needs pages reserved by
    the administrator).  ``mountinfo`` / ``shmem_enabled`` (file contents) are for tests."""
    if mountinfo is None:
        mountinfo = _read_text(MOUNTINFO)
    if shmem_enabled is None:
        shmem_enabled = _read_text(SHMEM_ENABLED)
    glob = _selected(shmem_enabled) if shmem_enabled else ""
    if glob == "force":
        return "thp", f"{SHMEM_ENABLED} = force"
    if glob == "deny":
        return "4k", f"{SHMEM_ENABLED} = deny"
    real = os.path.realpath(directory)
    best: tuple[str, str, str] | None = None  # (mount point, fs type, super options)
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        if not sep or len(f) < 5 or len(r) < 3:
            continue
        mp = f[4].replace("\\040", " ")
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and (best is None or len(mp) >= len(best[0])):
            best = (mp, r[0], r[2])
    if best is None:
        return "4k", f"no mount found for {directory}"
    mp, fstype, opts = best
    if fstype != "tmpfs":
        return "4k", f"{mp} is {fstype}, not tmpfs"
    huge = next((o.split("=", 1)[1] for o in opts.split(",") if o.startswith("huge=")), "never")
    if huge in ("always", "within_size", "advise"):
        return "thp", f"{mp} is a tmpfs mounted with huge={huge}"
    return "4k", (f"{mp} is a tmpfs mounted with huge={huge} (remount it with huge=within_size "
                  "for huge pages: docs/datapath.md)")


@dataclass
class Opened:
    """A worker's shared table: ``ct`` (struct mg_ct *, owned by whoever frees it: pass it
    to mg_worker_new_ct), ``fd`` (holds the flock; keep it open for the worker's life)."""

    ct: Any
    fd: int
    path: str
    adopted: bool
    reason: str      # why the previous table was not adopted ("" when adopted or none)
    entries: int     # live entries adopted (0 when fresh)
    adoptions: int   # times this table has been adopted

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _lock(fd: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def _try_adopt(path: str, want: Wanted, lock_timeout_s: float) -> tuple[Opened | None, str, bool]:
    """(opened, reason, busy): the adopted table, or why not; busy = another live process
    holds it."""
    for _ in range(3):  # the name may be replaced (rename) while we wait for its lock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None, "", False
        except OSError as exc:
            return None, f"cannot open it: {exc.strerror or exc}", False
        keep = False
        try:
            if not _lock(fd, lock_timeout_s):
                return None, f"in use by another live process for more than {lock_timeout_s:g} s", True
            st = os.fstat(fd)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                continue  # replaced while we waited: look at the new one
            if not stat.S_ISREG(st.st_mode):
                return None, "not a regular file", False
            if st.st_uid != os.geteuid():
                return None, f"owned by uid {st.st_uid}, not {os.geteuid()} (foreign)", False
            hdr = os.pread(fd, HDR_SIZE, 0)
            reason = check_header(hdr, st.st_size, want)
            if reason:
                return None, reason, False
            ct = lib.mg_ct_map_shared(fd, st.st_size, 0, 1)
            if ct == ffi.NULL:
                e = ffi.errno
                return None, ("changed while being adopted" if e == errno.EPROTO else f"cannot map it: {os.strerror(e)}"), False
            keep = True
            return Opened(ct, fd, path, True, "", int(ct.n_used), int(ct.adoptions)), "", False
        finally:
            if not keep:
                os.close(fd)
    return None, "replaced by another process repeatedly while adopting", True


def _fresh(path: str, want: Wanted) -> Opened:
    size = table_bytes(want.capacity)
    tmp = f"{path}.new-{os.getpid()}"
    note("shm", os.path.basename(tmp))  # $MAGLEV_RECORD (test harness): before they exist
    note("shm", os.path.basename(path))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConntrackShmError(f"conntrack: cannot create {tmp}: {exc.strerror or exc}") from None
    ok = False
    ct = ffi.NULL
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            vfs = os.statvfs(SHM_DIR)
            raise ConntrackShmError(
                f"conntrack: cannot reserve {size / (1 << 20):.1f} MiB for {path} "
                f"({exc.strerror or exc}; {SHM_DIR} has {vfs.f_bavail * vfs.f_frsize / (1 << 20):.1f} MiB free): "
                "lower conntrack.capacity, enlarge /dev/shm, or set conntrack.shared = false") from None
        ct = lib.mg_ct_map_shared(fd, size, want.capacity, 0)
        if ct == ffi.NULL:
            raise ConntrackShmError(f"conntrack: cannot map {tmp}: {os.strerror(ffi.errno)}")
        ct.key_fp = want.key_fp
        ct.n_workers = want.n_workers
        ct.map_fp = want.map_fp
        ct.worker = want.worker
        try:
            os.rename(tmp, path)  # atomic: the old table or this one, whole
        except OSError as exc:
            raise ConntrackShmError(f"conntrack: cannot put a fresh table at {path}: {exc.strerror or exc} "
                                    "(remove what is there, or set conntrack.shared = false)") from None
        ok = True
        return Opened(ct, fd, path, False, "", 0, 0)
    finally:
        if not ok:
            if ct != ffi.NULL:
                lib.mg_ct_free(ct)
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def open_table(name: str, want: Wanted, *, lock_timeout_s: float = 5.0) -> Opened | None:
    """Adopt /dev/shm/<name> if this run can (module docstring), else replace it with a
    fresh table.  None when another live process holds it (the caller falls back to a
    private table and says so).  Logs one line saying what happened and why."""
    path = os.path.join(SHM_DIR, name)
    pages, pages_why = shm_pages(SHM_DIR)
    opened, reason, busy = _try_adopt(path, want, lock_timeout_s)
    if opened is not None:
        log.info("connection table adopted", extra={"kv": {
            "segment": name, "entries": opened.entries, "adoptions": opened.adoptions,
            "pages": pages, "pages_why": pages_why}})
        return opened
    if busy:
        log.warning("connection table not adopted: %s; this worker uses a private table", reason,
                    extra={"kv": {"segment": name}})
        return None
    opened = _fresh(path, want)
    opened.reason = reason
    kv = {"segment": name, "pages": pages, "pages_why": pages_why}
    if reason:
        log.warning("connection table not adopted: %s; starting fresh", reason, extra={"kv": kv})
    else:
        log.info("connection table created (no previous table to adopt)", extra={"kv": kv})
    return opened


class ConntrackInUseError(MaglevError):
    """The connection tables of an instance cannot be dropped: a run of it is up."""


def _held(path: str) -> bool:
    """True while a live process holds the table's lock (a worker of a running instance)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def live_runs(instance: str) -> list[int]:
    """Supervisor pids of runs of ``instance`` that are up (their shared region
    ``/dev/shm/maglev-<instance>-<pid>-<hex6>`` exists and the pid lives)."""
    pat = re.compile(rf"^maglev-{re.escape(instance)}-(\d+)-[0-9a-f]{{6}}$")
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted({int(m[1]) for n in names if (m := pat.match(n)) and _pid_alive(int(m[1]))})


@dataclass
class Dropped:
    """What :func:`drop_instance` removed: table names and the bytes they held."""

    names: list[str]
    bytes: int
    temporaries: list[str]


def drop_instance(instance: str, tag: str | None = None, *, dry_run: bool = False) -> Dropped:
    """Remove the connection tables a ``maglev run`` of ``instance`` left in /dev/shm for
    the next run to adopt (``maglev conntrack drop``), and dead temporaries of fresh starts.
    Refuses, removing nothing, while a run of that instance is up or a live process holds
    one of the tables (:class:`ConntrackInUseError`)."""
    check_instance_name(instance)
    if tag is not None and not re.match(r"^[0-9a-f]{8}$", tag):
        raise ConntrackShmError(f"tag {tag!r}: 8 lower-case hex digits (as in the table's name)")
    names = list_segments(instance, tag)
    runs = live_runs(instance)
    held = [n for n in names if _held(os.path.join(SHM_DIR, n))]
    if runs or held:
        why = []
        if runs:
            why.append(f"a run of instance {instance!r} is up (supervisor pid {', '.join(map(str, runs))})")
        if held:
            why.append(f"{len(held)} table(s) held by a live process ({', '.join(held)})")
        raise ConntrackInUseError("conntrack drop: refused, nothing removed: " + "; ".join(why)
                                  + "; stop the run first")
    size = 0
    removed = []
    for n in names:
        path = os.path.join(SHM_DIR, n)
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if dry_run:
            removed.append(n)
            size += st.st_blocks * 512
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConntrackShmError(f"conntrack drop: cannot remove {path}: {exc.strerror or exc}") from None
        removed.append(n)
        size += st.st_blocks * 512
    temps = [] if dry_run else remove_dead_temporaries()
    return Dropped(removed, size, temps)


def census_table(ct: Any, key: tuple[int, int], now_ns: int, tcp_ms: int, udp_ms: int,
                 ids: list[int]) -> Any:
    """``mg_ct_census`` on one mapped table (``struct mg_ct *``): a
    :class:`maglev.datapath.ref_conntrack.Census` of its live entries per backend id."""
    from maglev.datapath.ref_conntrack import Census

    sids = sorted(set(ids))
    c_ids = ffi.new("uint64_t[]", sids or [0])
    counts = ffi.new("uint64_t[]", max(1, len(sids)))
    out = ffi.new("struct mg_ct_census *")
    before = int(ct.stats.inserts) + int(ct.stats.moved)  # the writer's counters (header)
    rc = lib.mg_ct_census(ct, key[0], key[1], now_ns, tcp_ms, udp_ms, c_ids, len(sids), counts, out)
    if rc < 0:
        raise ConntrackShmError(f"conntrack census: {os.strerror(-rc)}")
    changed = max(0, int(ct.stats.inserts) + int(ct.stats.moved) - before)  # < 0: re-adopted, zeroed
    return Census(counts={i: int(counts[j]) for j, i in enumerate(sids)}, live=int(out.live),
                  expired=int(out.expired), torn=int(out.torn), unknown=int(out.unknown), changed=changed)


@dataclass
class LiveCensus:
    """The live entries of a running instance's shared tables (:func:`census_instance`)."""

    census: Any        # ref_conntrack.Census summed over the tables read
    tables: int        # tables read
    scan_ms: float
    problems: list[str]  # tables that could not be read, and why


def census_instance(instance: str, tag: str, n_workers: int, key: tuple[int, int], tcp_ms: int,
                    udp_ms: int, ids: list[int], *, now_ns: int | None = None) -> LiveCensus:
    """Count, per backend id, the live entries of workers 0..n_workers-1's tables of
    ``instance`` (identity ``tag``) while the workers run: each file is opened O_RDONLY and
    mapped PROT_READ (no lock taken, nothing written: the workers are not disturbed), its
    header checked (``mg_ct_check``) and its flow-hash fingerprint compared with ``key``'s,
    then scanned by ``mg_ct_census``.  Entries change while the scan runs (a few
    milliseconds per million entries): the result is a preview, not a snapshot -- exact up
    to ``census.changed`` entries (inserted or moved by the workers during the scan; each
    slot read is a consistent pair of key and backend, include/mg_ct_census.h).  ``now_ns``
    is CLOCK_MONOTONIC (the workers' clock) unless given."""
    import mmap

    from maglev.datapath.ref_conntrack import Census

    total = Census()
    problems: list[str] = []
    read = 0
    t0 = time.perf_counter()
    now = time.monotonic_ns() if now_ns is None else now_ns
    fp = key_fingerprint(*key)
    for i in range(n_workers):
        name = segment_name(instance, tag, i)
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            problems.append(f"{name}: {exc.strerror or exc}")
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < HDR_SIZE:
                problems.append(f"{name}: not a table file")
                continue
            with mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as mm:
                buf = ffi.from_buffer(mm)
                try:
                    why = _census_one(buf, st.st_size, fp)
                    if why:
                        problems.append(f"{name}: {why}")
                        continue
                    total.add(census_table(ffi.cast("struct mg_ct *", buf), key, now, tcp_ms, udp_ms, ids))
                    read += 1
                finally:
                    ffi.release(buf)  # before the mapping is closed
        except (OSError, ValueError) as exc:
            problems.append(f"{name}: {exc}")
        finally:
            os.close(fd)
    return LiveCensus(total, read, round((time.perf_counter() - t0) * 1e3, 3), problems)


def _census_one(buf: Any, size: int, fp: int) -> str:
    """'' when the mapped file ``buf`` is a table this run's workers use, else why not."""
    rc = int(lib.mg_ct_check(buf, size, size))
    if rc:
        return _CHECK_REASONS.get(rc, f"refused (code {rc})").format(
            hdr=HDR_SIZE, version="another", ours=lib.MG_CT_LAYOUT_VERSION, size=size, expected="another size")
    if int(ffi.cast("struct mg_ct *", buf).key_fp) != fp:
        return "made with another flow-hash secret"
    return ""


def _open_old(path: str) -> tuple[int, int] | str | None:
    """(fd, size) of a previous run's table at ``path``, locked and with a header that
    checks (mg_ct_check); a reason (str) when a live process holds it; None when it is not
    a table to read (gone, foreign, corrupt: the per-worker path deals with it)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size < HDR_SIZE:
            os.close(fd)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return f"{os.path.basename(path)} is in use by a live process"
        hdr = os.pread(fd, HDR_SIZE, 0)
        if int(lib.mg_ct_check(hdr, len(hdr), st.st_size)):
            os.close(fd)
            return None
        return fd, st.st_size
    except OSError:
        os.close(fd)
        return None


def rehome_run(instance: str, state_dir: str, config_path: str, capacity: int, key: tuple[int, int],
               n_workers: int, map_fp: int, reta: bytes | None, tcp_ms: int, udp_ms: int,
               *, now_ns: int | None = None) -> str:
    """Before a run starts, when the previous run's tables of this identity cannot be
    adopted as they are because flows would land on other workers or the table has another
    shape (another worker count, flow -> worker map, capacity or flow-hash secret): make
    this run's tables fresh and place every live entry of the old ones into the table of
    the worker steering will hand its flow to (``mg_ct_rehome``), so the workers adopt them
    and established connections keep their backend.  Returns one log line saying what was
    done, or "" when there was nothing to re-home (no old table, all adoptable as they are,
    or only unreadable ones)."""
    import mmap

    from maglev.datapath.ctmem import check_memory

    tag = identity_tag(state_dir, config_path)
    fp = key_fingerprint(*key)
    names = list_segments(instance, tag)
    if not names:
        return ""
    wants = [Wanted(capacity, fp, n_workers, i, map_fp) for i in range(n_workers)]
    if all(preview(segment_name(instance, tag, i), wants[i])[0] for i in range(n_workers)):
        return ""
    old: list[tuple[str, int, Any, Any]] = []  # name, fd, mmap, struct mg_ct *
    fresh: list[Opened] = []
    try:
        why: set[str] = set()
        for n in names:
            got = _open_old(os.path.join(SHM_DIR, n))
            if isinstance(got, str):
                return f"connection tables: not re-homed: {got}"
            if got is None:
                continue
            fd, size = got
            idx = int(n.rsplit("-", 1)[1])
            reason = check_header(os.pread(fd, HDR_SIZE, 0), size, wants[idx] if idx < n_workers else
                                  Wanted(capacity, fp, n_workers, idx, map_fp))
            if idx >= n_workers and not reason:
                reason = f"made by a run of more workers than {n_workers}"
            if reason:
                why.add(reason)
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            buf = ffi.from_buffer(mm)
            old.append((n, fd, mm, buf))
        if not old or not why:
            return ""
        try:
            check_memory(capacity, "off", copies=n_workers)
            check_shm_space(capacity, n_workers)
        except MaglevError as exc:
            return f"connection tables: not re-homed ({exc}); the per-worker rules below apply"
        for i in range(n_workers):
            fresh.append(_fresh(os.path.join(SHM_DIR, segment_name(instance, tag, i)), wants[i]))
        dst = ffi.new("struct mg_ct *[]", [f.ct for f in fresh])
        c_reta = ffi.new("uint8_t[]", reta) if reta is not None else ffi.NULL
        st = ffi.new("struct mg_ct_rehome_stats *")
        now = time.monotonic_ns() if now_ns is None else now_ns
        t0 = time.perf_counter()
        for _n, _fd, _mm, buf in old:
            rc = lib.mg_ct_rehome(ffi.cast("struct mg_ct *", buf), dst, n_workers, key[0], key[1], c_reta,
                                  now, tcp_ms, udp_ms, st)
            if rc < 0:
                raise ConntrackShmError(f"conntrack: re-homing failed: {os.strerror(-rc)}")
        ms = (time.perf_counter() - t0) * 1e3
        for n, *_ in old:
            if int(n.rsplit("-", 1)[1]) >= n_workers:  # its entries are in this run's tables now
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(SHM_DIR, n))
        return (f"connection tables: re-homed {int(st.placed)} live entries of the previous run's "
                f"{len(old)} table(s) into {n_workers} fresh ones ({'; '.join(sorted(why))}) in {ms:.1f} ms"
                f"{f'; {int(st.no_room)} did not fit' if st.no_room else ''}"
                f"{f'; {int(st.duplicates)} duplicates' if st.duplicates else ''}"
                f"{f'; {int(st.expired)} idle past their timeout dropped' if st.expired else ''}")
    finally:
        for f in fresh:
            lib.mg_ct_free(f.ct)
            f.close()
        for _n, fd, mm, buf in old:
            ffi.release(buf)
            mm.close()
            os.close(fd)
