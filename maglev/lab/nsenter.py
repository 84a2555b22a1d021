"""Enter a named network namespace for a moment, from Python.

A socket belongs to the namespace it was created in, for its whole life.  So a test or
tool can open a packet socket "inside" namespace X without running a child process:
switch the calling thread into X, create the socket, switch back.  Python 3.11 has no
``os.setns``; libc's ``setns(2)`` is called through ctypes.  Only the calling thread
moves (setns acts per thread), and it always moves back, also on error.

:func:`why_no_netns` says whether namespaces can be made here at all (``maglev lab``,
and the tests' namespace helper ``maglev.testing.netns``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from maglev.errors import MaglevError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def netns(name: str) -> Iterator[None]:
    """``with netns("mgt-x-a"): sock = socket.socket(...)`` -- the socket lives in that
    namespace.  Raises :class:`MaglevError` when the namespace does not exist."""
    path = f"/run/netns/{name}"
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MaglevError(f"network namespace {name!r} does not exist") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def why_no_netns(who: str = "this test", why: str = "to create network namespaces") -> str | None:
    """None when namespaces can be made here, else a full sentence saying why not, naming
    ``who`` needs them (a test, ``maglev lab``) and ``why``."""
    if os.geteuid() != 0:
        return f"{who} needs root {why} (run as root, as CI does)"
    if shutil.which("ip") is None:
        return f"{who} needs the `ip` command from iproute2 (apt-get install iproute2)"
    probe = f"mgt-probe-{secrets.token_hex(3)}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"this system cannot create network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None
