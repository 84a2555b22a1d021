"""What a killed ``maglev run`` leaves behind, and removing it safely at the next start.

A supervisor killed with -9 cannot clean up: its run folder (``<base>/maglev-<instance>-*``,
base = ``$XDG_RUNTIME_DIR`` or the temp dir: mailbox socket, private control socket, trace
files) and its shared-memory region (``/dev/shm/maglev-<instance>-<pid>-<hex6>``, tens of
MiB) would stay forever.  The next ``maglev run`` (of any instance) removes them -- but only
those of a run it can *prove* dead, never a live one's:

* every run folder holds ``owner.json``: the supervisor's pid, that process's start time
  (psutil, seconds since the epoch) and the region's name, written atomically (rename)
  right after the folder is made;
* a run is dead when no process has that pid, or the process that has it started at
  another time (the pid was reused);
* a region named by a dead run's ``owner.json`` goes with its folder; a region without an
  owner file (the supervisor died between creating the region and writing the file) is
  judged by the pid in its name: dead if no such process exists, or that process started
  after the region file was last changed (so it cannot have created it).

Anything that cannot be judged -- a folder without ``owner.json`` (an older version, or one
being made right now), another user's files, a pid psutil may not inspect -- is kept.
Each removal is logged in one line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from maglev import files
from maglev.rings.conntrack_shm import keep_for_adoption

log = logging.getLogger("maglev.supervisor")

OWNER_FILE = "owner.json"
SHM_DIR = "/dev/shm"
# Process start times are derived from clock ticks (10 ms): equal within this tolerance.
_SAME_START_S = 0.05
_REGION_RE = re.compile(r"^maglev-(?P<instance>.+)-(?P<pid>\d+)-[0-9a-f]{6}$")


def run_base() -> str:
    """Where run folders are made."""
    return os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()


def process_start_time(pid: int) -> float | None:
    """Start time of process ``pid`` (epoch seconds), None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def write_owner(run_dir: str | os.PathLike, instance: str, region: str = "") -> None:
    """Record this process as the owner of ``run_dir`` (atomic: a reader sees the old file,
    the new one or none)."""
    body = {"pid": os.getpid(), "start_time": process_start_time(os.getpid()),
            "instance": instance, "region": region}
    d = Path(run_dir)
    tmp = d / f".{OWNER_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(body))
    os.replace(tmp, d / OWNER_FILE)


def read_owner(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The owner record of a run folder, None when missing or unreadable."""
    try:
        body = files.read_json(Path(run_dir) / OWNER_FILE)
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or type(body.get("pid")) is not int:
        return None
    if not isinstance(body.get("start_time"), (int, float)):
        return None
    return body


def is_dead(pid: int, start_time: float) -> bool:
    """True when the process that started at ``start_time`` as ``pid`` is certainly gone."""
    import psutil

    try:
        now = process_start_time(pid)
    except psutil.Error:  # not ours to inspect: cannot prove anything
        return False
    return now is None or abs(now - start_time) > _SAME_START_S


def _region_owner_dead(pid: int, path: str) -> bool:
    import psutil

    try:
        started = process_start_time(pid)
        changed = os.stat(path).st_ctime
    except (psutil.Error, OSError):
        return False
    # The creator existed before the file did; a process younger than the file's last
    # change is someone else who got the pid later.
    return started is None or started > changed + _SAME_START_S


def _unlink_region(shm: str, name: str, why: str) -> bool:
    try:
        os.unlink(os.path.join(shm, f"maglev-{name}"))
    except FileNotFoundError:  # another starting run was quicker
        return False
    except OSError as exc:
        log.warning("cannot remove a dead run's region", extra={"kv": {"region": name, "error": exc}})
        return False
    log.warning("removed the shared memory of a dead run", extra={"kv": {"region": name, "why": why}})
    return True


def remove_dead_runs(base: str | None = None, shm_dir: str | None = None) -> list[str]:
    """Remove run folders and regions of dead runs (see the module doc); returns what was
    removed (folder paths and region names)."""
    base = base or run_base()
    shm = shm_dir or SHM_DIR
    uid = os.getuid()
    removed: list[str] = []
    owned_regions: set[str] = set()
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError:
        entries = []
    for e in entries:
        if not e.name.startswith("maglev-"):
            continue
        try:
            if not e.is_dir(follow_symlinks=False) or e.stat(follow_symlinks=False).st_uid != uid:
                continue
        except OSError:
            continue
        owner = read_owner(e.path)
        if owner is None:
            continue
        region = str(owner.get("region") or "")
        if region:
            owned_regions.add(region)
        if not is_dead(owner["pid"], float(owner["start_time"])):
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        if not os.path.exists(e.path):
            removed.append(e.path)
            log.warning("removed the run folder of a dead run",
                        extra={"kv": {"path": e.path, "pid": owner["pid"], "instance": owner.get("instance", "")}})
        if region and _unlink_region(shm, region, f"owner pid {owner['pid']} is gone"):
            removed.append(region)
    try:
        names = sorted(os.listdir(shm))
    except OSError:
        names = []
    for fname in names:
        m = _REGION_RE.match(fname)
        if not m or keep_for_adoption(fname):  # connection tables wait for the next run
            continue
        name = fname.removeprefix("maglev-")
        if name in owned_regions:
            continue  # judged with its run folder above (kept: its owner lives)
        path = os.path.join(shm, fname)
        try:
            if os.stat(path).st_uid != uid:
                continue
        except OSError:
            continue
        if _region_owner_dead(int(m["pid"]), path) and _unlink_region(shm, name, f"pid {m['pid']} is gone"):
            removed.append(name)
    return removed
