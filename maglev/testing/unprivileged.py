"""Run maglev as another (unprivileged) user in a test, with only the capabilities given.

The user is ``nobody`` (present on every Debian/Ubuntu system; nothing is added to
``/etc/passwd``).  The catch on a developer machine: the interpreter and its packages may
live where that user cannot read them (pyenv under ``/root``, mode 0700).  So
:func:`make_runtime` copies what a run imports -- this tree's ``maglev`` (with its built C
extension) as ``maglev`` and ``cli`` as ``maglev_cli``, and the third-party packages it
loads, found by importing them and reading their ``__file__`` -- into a folder every user
can read, and :func:`pick_interpreter` finds an interpreter of the same Python version that
the user can execute (this one when it can, else ``/usr/bin/python3.X``).  The extension
modules are built for the version's ABI, which every interpreter of that version shares.

:func:`setpriv_argv` is the command prefix: ``setpriv`` switches uid/gid, clears the
supplementary groups and sets the inheritable, ambient and bounding sets to exactly the
list, as systemd does for ``User=`` + ``AmbientCapabilities=`` + ``CapabilityBoundingSet=``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

# What a run imports: the CLI, every actor, the NIC drivers, telemetry, the metrics endpoint.
RUN_MODULES = (
    "maglev_cli.main", "maglev.actors.launch", "maglev.actors.steering", "maglev.actors.worker",
    "maglev.actors.muxer", "maglev.actors.config_manager", "maglev.actors.health_prober",
    "maglev.actors.bgp_speaker", "maglev.telemetry", "maglev.native", "maglev.nic.afpacket",
    "maglev.observability.prometheus", "maglev.control.client", "zmq", "msgpack", "psutil", "click",
    "sortedcontainers", "cffi", "opentelemetry.sdk.trace", "prometheus_client", "tomli_w",
)
SKIP_TOP = ("__editable__", "_distutils_hack", "__pycache__", "distutils-precedence.pth")


def why_no_unprivileged(user: str = "nobody") -> str | None:
    """None when a test can run maglev as ``user`` with chosen capabilities, else why not."""
    if os.geteuid() != 0:
        return "switching to another user needs root (run as root, as CI does)"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to switch user and set the capabilities"
    try:
        pwd.getpwnam(user)
    except KeyError:
        return f"needs the system user {user!r}"
    return None


def user_ids(user: str = "nobody") -> tuple[int, int]:
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def setpriv_argv(caps: list[str] | set[str] | tuple[str, ...], user: str = "nobody") -> list[str]:
    uid, gid = user_ids(user)
    names = ",".join(f"+{c.lower().removeprefix('cap_')}" for c in sorted(caps))
    sets = f"-all,{names}" if names else "-all"
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", f"--inh-caps={sets}",
            f"--ambient-caps={sets}", f"--bounding-set={sets}"]


def _site_dirs() -> list[str]:
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    out: list[str] = []
    for d in dirs:
        d = os.path.realpath(d)
        if d not in out and os.path.isdir(d):
            out.append(d)
    return out


def third_party_entries(modules: tuple[str, ...] = RUN_MODULES) -> set[Path]:
    """Top-level files/folders of the site-packages that ``modules`` load (in a child
    interpreter, so this process's imports do not count)."""
    code = (
        "import importlib, sys\n"
        f"for m in {list(modules)!r}:\n"
        "    importlib.import_module(m)\n"
        "print('\\n'.join(sorted({getattr(m, '__file__', None) or '' for m in list(sys.modules.values())})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ})
    if r.returncode != 0:
        raise RuntimeError(f"cannot import what a run needs: {r.stderr.strip()[-800:]}")
    out: set[Path] = set()
    sites = _site_dirs()
    for f in r.stdout.splitlines():
        f = os.path.realpath(f) if f else ""
        for sd in sites:
            if f.startswith(sd + os.sep):
                top = f[len(sd) + 1:].split(os.sep)[0]
                if not top.startswith(SKIP_TOP):
                    out.add(Path(sd) / top)
    return out


def _others_can_enter(path: Path) -> bool:
    p = path.resolve()
    return all(os.stat(q).st_mode & 0o001 for q in [p, *p.parents])


def shared_tmpdir(prefix: str = "maglev-unpriv-") -> Path:
    """A fresh folder (mode 0755) another user can reach: ``/tmp`` may be 0700 (it is on
    this machine), so the first of $TMPDIR, /var/tmp, /dev/shm whose every ancestor lets
    others through.  The caller removes it."""
    import tempfile

    for base in (os.environ.get("TMPDIR", ""), "/var/tmp", "/dev/shm", "/tmp"):
        if base and os.path.isdir(base) and _others_can_enter(Path(base)):
            d = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
            os.chmod(d, 0o755)
            return d
    raise RuntimeError("no temporary folder that another user can enter ($TMPDIR, /var/tmp, /dev/shm)")


def make_runtime(dest: Path, tree: Path) -> Path:
    """A copy, readable by every user, of what ``maglev run`` imports; returns the folder
    to put on ``PYTHONPATH``."""
    lib = dest / "lib"
    lib.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(tree / "maglev", lib / "maglev", ignore=ignore)
    shutil.copytree(tree / "cli", lib / "maglev_cli", ignore=ignore)
    for entry in sorted(third_party_entries()):
        target = lib / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, ignore=ignore)
        else:
            shutil.copy2(entry, target)
    # shared libraries vendored beside a package (pyzmq.libs for zmq) and the metadata that
    # importlib.metadata reads (OpenTelemetry finds its context through entry points)
    for sd in _site_dirs():
        for extra in Path(sd).iterdir():
            if (lib / extra.name).exists():
                continue
            stem = extra.name.removesuffix(".libs")
            if extra.name.endswith(".dist-info") or (
                    extra.name.endswith(".libs") and ((lib / stem).exists() or (lib / stem.removeprefix("py")).exists())):
                shutil.copytree(extra, lib / extra.name, ignore=ignore)
    for root, _dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            p = os.path.join(root, f)
            os.chmod(p, os.stat(p).st_mode | 0o444)
    return lib


def pick_interpreter(user: str = "nobody") -> str | None:
    """An interpreter of this Python version that ``user`` can run (no packages needed)."""
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    cands = [sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{ver}",
             f"/usr/local/bin/python{ver}"]
    # Not only the executable: setpriv may still hold CAP_DAC_OVERRIDE when it execs (so
    # an interpreter under /root starts), and the modules Python 3.11 freezes into itself
    # load; the rest of the standard library must be readable too (json, ctypes, asyncio),
    # and the interpreter must start again from a process of that user (an actor).
    probe = ("import json, ctypes, asyncio, socket, subprocess, sys; "
             "r = subprocess.run([sys.executable, '-I', '-c', 'import json'], capture_output=True); "
             "print('%d.%d' % sys.version_info[:2] if r.returncode == 0 else 'no')")
    uid, gid = user_ids(user)
    for c in dict.fromkeys(cands):
        if not os.path.exists(c):
            continue
        r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", c, "-I", "-c", probe],
                           capture_output=True, text=True, timeout=30, cwd="/")
        if r.returncode == 0 and r.stdout.strip() == ver:
            return c
    return None
