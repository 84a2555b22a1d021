"""The leak guard of the test suite (tests/conftest.py; docs/development.md, "The leak
guard"): what a test made outside its own process, and whether it is still there.

Ownership is exact, never guessed from names or times (other test sessions run on the same
machine): before each test the harness points ``$MAGLEV_RECORD`` (maglev/record.py) at a
file of that test's own, so every maglev process the test starts, and the helpers it uses,
list there what they make (shm files, run folders, namespaces, root-namespace links), and
every process the test starts carries the file's path in its environment.

After the test's teardown the guard looks at what the file lists:

* a connection table (``maglev-<inst>-ct-<tag>-<i>``) that no live process maps or holds
  open is dropped: a run that stopped cleanly keeps its tables on purpose for the next run
  of its instance to adopt (docs/rings.md), and a test's instance never has a next run;
* anything else still there once the fixtures that may own it are torn down is a leak: a shm
  region, a connection table still mapped (by a process that outlived the test), a run
  folder, a namespace, a link, or a live process with the test's record path in its
  environment.  The guard reports it as an error of the test, then removes it (processes
  killed by pid) so the next test starts clean.

Something still in use after a test's teardown may belong to a fixture of a wider scope
(module, package, class): it is judged again at each later teardown until the scopes that
held fixtures at the test's end are torn down.  A shm file or run folder nobody uses any
more is a leak at once.

**Processes run as another user** (``setpriv --reuid``, tests/lab/test_unprivileged.py)
cannot write the test's record file (the session's folder is private) and often get a
scrubbed environment.  Such a test asks :meth:`Guard.record_for` (the ``leak_record``
fixture of tests/conftest.py) for a record file of its own that the user may write, in a
folder other users can reach, and passes it as ``$MAGLEV_RECORD`` in that process's
environment: the guard reads it with the test's own record and finds the processes that
carry it, as for any other test.  The gap that stays: a process started with an
environment that does not carry ``$MAGLEV_RECORD`` at all (an ``env=`` without it, a
``sudo``/``setpriv`` wrapper that clears it) is invisible to the guard, and so is what it
makes -- such a test must clean up by itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maglev.record import ENV, read

SHM_DIR = "/dev/shm"


@dataclass
class Leak:
    kind: str
    name: str
    origin: str   # the test during which it was made
    detail: str = ""

    def line(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.kind} {self.name}{extra}, made during {self.origin}"


def shm_users(names: set[str]) -> dict[str, list[int]]:
    """name -> pids of live processes that map or hold open /dev/shm/<name>."""
    out: dict[str, list[int]] = {}
    if not names:
        return out
    paths = {os.path.join(SHM_DIR, n): n for n in names}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        found: set[str] = set()
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    i = line.find("/dev/shm/")
                    if i >= 0:
                        p = line[i:].rstrip("\n").removesuffix(" (deleted)")
                        if p in paths:
                            found.add(paths[p])
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target in paths:
                        found.add(paths[target])
        for n in found:
            out.setdefault(n, []).append(pid)
    return out


def processes_with_env(prefix: str) -> dict[int, str]:
    """pid -> the value of ``$MAGLEV_RECORD`` for live processes (not this one) whose
    environment sets it to something starting with ``prefix``."""
    key = f"{ENV}={prefix}".encode()
    out: dict[int, str] = {}
    me = os.getpid()
    _wait_for_exec()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        i = env.find(b"\0" + key) + 1 if not env.startswith(key) else 0
        if env.startswith(key) or i > 0:
            value = env[i:].split(b"\0", 1)[0].decode(errors="replace").split("=", 1)[1]
            out[int(entry.name)] = value
    return out


def _wait_for_exec(timeout_s: float = 2.0) -> None:
    """A child forked by this process shows this process's environment until it execs
    (subprocess sets the new one at exec): wait, bounded, until none is in between."""
    import psutil

    me = psutil.Process()
    try:
        mine = me.cmdline()
    except psutil.Error:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(_between_fork_and_exec(c, mine) for c in me.children(recursive=True)):
            return
        time.sleep(0.01)


def _between_fork_and_exec(child: Any, mine: list[str]) -> bool:
    """True while ``child`` still runs this process's image (forked, not yet exec'd).  A
    zombie or a process gone meanwhile never execs: not waited for (a defunct child that
    nobody reaps made every call wait its whole timeout, i.e. 2 s per test)."""
    import psutil

    try:
        return bool(child.cmdline() == mine)
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return False
    except psutil.Error:
        return True  # could not read it this time: look again


def _run_dir_owner_alive(path: str) -> bool:
    from maglev.actors.leftovers import is_dead, read_owner

    owner = read_owner(path)
    if owner is None:
        return False
    return not is_dead(owner["pid"], float(owner["start_time"]))


def _exists(kind: str, name: str) -> bool:
    if kind == "shm":
        return os.path.lexists(os.path.join(SHM_DIR, name))
    if kind == "dir":
        return os.path.lexists(name)
    if kind == "netns":
        return os.path.lexists(os.path.join("/run/netns", name))
    if kind == "link":
        return os.path.lexists(os.path.join("/sys/class/net", name))
    return False


def _is_ct_table(name: str) -> bool:
    from maglev.rings.conntrack_shm import keep_for_adoption

    return keep_for_adoption(name)


def _remove(kind: str, name: str) -> None:
    if kind == "shm":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, name))
    elif kind == "dir":
        shutil.rmtree(name, ignore_errors=True)
    elif kind == "netns":
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    elif kind == "link":
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)


@dataclass
class Guard:
    """One per test session; ``base`` is a private folder of the session."""

    base: Path
    count: int = 0
    owners: dict[str, str] = field(default_factory=dict)          # record path -> test id
    # kind, name, record path, the fixtures that may hold it (objects with .alive())
    pending: list[tuple[str, str, str, tuple]] = field(default_factory=list)
    proc_holders: dict[str, tuple] = field(default_factory=dict)  # record path -> holders
    dropped_tables: int = 0
    # strict: a kept connection table is an error too (MAGLEV_LEAK_GUARD=strict: find the
    # tests whose runs keep tables, e.g. to check a teardown path that should drop them)
    strict: bool = field(default_factory=lambda: os.environ.get("MAGLEV_LEAK_GUARD") == "strict")

    # record files for processes run as another user (record_for): the test's own record
    # -> those files, and the folder they live in (reachable by other users)
    extra: dict[str, list[str]] = field(default_factory=dict)
    shared: Path | None = None
    current: str = ""

    def __post_init__(self) -> None:
        (self.base / "rec").mkdir(parents=True, exist_ok=True)

    def start(self, test_id: str) -> str:
        """A fresh record file for ``test_id``; put it in ``$MAGLEV_RECORD``."""
        self.count += 1
        path = str(self.base / "rec" / f"{self.count}")
        self.owners[path] = test_id
        self.current = path
        os.environ[ENV] = path
        return path

    def record_for(self, uid: int, gid: int) -> str:
        """A record file of the current test that user ``uid`` may write (mode 0600, theirs),
        in a folder every user can reach: pass it as ``$MAGLEV_RECORD`` to a process run as
        that user; the guard reads it with the test's record and finds the processes that
        carry it."""
        if self.shared is None:
            from maglev.testing.unprivileged import shared_tmpdir

            self.shared = shared_tmpdir("maglev-leakrec-")
        main = self.current or os.environ.get(ENV, "")
        path = str(self.shared / f"{self.count}-{uid}-{len(self.extra.get(main, ()))}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
        self.extra.setdefault(main, []).append(path)
        self.owners[path] = self.owners.get(main, main)
        return path

    def close(self) -> None:
        """The session's end: remove the folder of :meth:`record_for` files."""
        if self.shared is not None:
            shutil.rmtree(self.shared, ignore_errors=True)
            self.shared = None

    def _main_record(self, rec: str) -> str:
        for main, files in self.extra.items():
            if rec in files:
                return main
        return rec

    def check(self, record: str | None, holders: tuple = (), last: bool = False) -> list[Leak]:
        """After a test's teardown: the leaks of this test (and of earlier tests whose
        fixtures are now gone); removes them.  ``holders``: the fixtures of a wider scope
        than the test that it used and that are still set up (objects whose ``alive()``
        says so): anything the test made may belong to one of them until it is torn down;
        ``last``: the session's end, nothing is set up any more."""
        items = [(k, n, record, holders) for k, n in read(record)] if record else []
        for other in self.extra.get(record or "", ()):  # written by processes of another user
            items += [(k, n, record, holders) for k, n in read(other)]
        items += self.pending
        self.pending = []
        items = [(k, n, r, h) for k, n, r, h in items if _exists(k, n)]
        users = shm_users({n for k, n, _, _ in items if k == "shm"})
        if record and any(k == "shm" and not users.get(n) for k, n, _, _ in items):
            # A process of this test may be between unmapping and unlinking its file (a stop
            # the test did not wait for): give it a moment before calling it a leak.
            deadline = time.monotonic() + 3
            mine = {record, *self.extra.get(record, ())}
            while mine & set(self._procs().values()) and time.monotonic() < deadline:
                time.sleep(0.05)
            items = [(k, n, r, h) for k, n, r, h in items if _exists(k, n)]
            users = shm_users({n for k, n, _, _ in items if k == "shm"})
        leaks: list[Leak] = []
        for kind, name, rec, held in items:
            origin = self.owners.get(rec, rec)
            if kind == "shm" and not users.get(name):
                if _is_ct_table(name) and not self.strict:  # kept for adoption by a stopped run
                    _remove(kind, name)
                    self.dropped_tables += 1
                else:
                    leaks.append(Leak(kind, name, origin, "no process uses it"))
                continue
            if kind == "dir" and not _run_dir_owner_alive(name):
                leaks.append(Leak(kind, name, origin, "its run is gone"))
                continue
            if not last and any(h.alive() for h in held):  # may belong to a fixture still set up
                self.pending.append((kind, name, rec, held))
                continue
            detail = f"used by pids {users[name]}" if kind == "shm" else "still there after its fixtures"
            leaks.append(Leak(kind, name, origin, detail))
        # a process a test started may serve a fixture of a wider scope: judged when the
        # scopes alive at the test's end are gone
        self.proc_holders.setdefault(record or "", holders)
        procs = self._procs()
        gone = {pid: rec for pid, rec in procs.items()
                if last or not any(h.alive() for h in self.proc_holders.get(self._main_record(rec), ()))}
        for pid, rec in gone.items():
            leaks.append(Leak("process", _cmdline(pid), self.owners.get(rec, rec), f"pid {pid} still running"))
        _kill(list(gone))
        for leak in leaks:
            if leak.kind != "process":
                _remove(leak.kind, leak.name)
        return leaks


    def _procs(self) -> dict[int, str]:
        """pid -> record path of live processes carrying one of this session's records."""
        procs = processes_with_env(str(self.base / "rec") + "/")
        if self.shared is not None:
            procs.update(processes_with_env(str(self.shared) + "/"))
        return procs

    def summary(self) -> tuple[int, list[str]]:
        """(how many things this session's tests recorded, those of them still there)."""
        seen: set[tuple[str, str]] = set()
        for rec in self.owners:
            seen.update(read(rec))
        return len(seen), sorted(f"{k} {n}" for k, n in seen if _exists(k, n))


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return "?"


def _kill(pids: list[int]) -> None:
    """SIGKILL these pids (ours: their environment names this session's record files),
    then wait until they are gone (their mappings with them)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    for pid in pids:
        while os.path.exists(f"/proc/{pid}/environ") and time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break  # a zombie: its memory is released
            except OSError:
                break
            time.sleep(0.02)


def describe(leaks: list[Leak]) -> str:
    return "left behind after teardown (the guard removed it now):\n  " + "\n  ".join(x.line() for x in leaks)

