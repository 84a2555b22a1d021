"""Network namespaces for tests and the lab: create, wire with veth, run, and always clean up.

Every namespace made here gets the prefix ``mgt-`` plus a random suffix, so tests never
touch a namespace they did not create, and a leftover is easy to recognise.  Use
:class:`NetnsSet` as a context manager: its ``__exit__`` kills the processes it started
(by PID) and deletes its namespaces, also when the test failed.

Addresses: tests use 198.18.0.0/15 for links, 203.0.113.0/24 for VIPs and 2001:db8::/32
for IPv6 (docs/config.md, "Address rules"; docs/lab.md).  No namespace gets a route out of the lab.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence

from maglev.errors import NotRootError
from maglev.lab.nsenter import why_no_netns
from maglev.record import forget, note
from maglev.testing import unique

__all__ = ["Netns", "NetnsSet", "run", "why_no_netns"]  # why_no_netns: maglev.lab.nsenter


def run(cmd: Sequence[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Netns:
    """One namespace.  ``exec`` runs a command inside it; ``popen`` starts a process."""

    def __init__(self, owner: NetnsSet, name: str):
        self.owner = owner
        self.name = name

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def exec(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return run(self.argv(cmd), check=check, timeout=timeout)

    def popen(self, cmd: Sequence[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(self.argv(cmd), start_new_session=True, **kw)
        self.owner.procs.append(proc)
        return proc

    def addr(self, dev: str, cidr: str) -> None:
        fam = "-6" if ":" in cidr else "-4"
        extra = ["nodad"] if fam == "-6" else []
        self.exec("ip", fam, "addr", "add", cidr, "dev", dev, *extra)

    def up(self, dev: str) -> None:
        self.exec("ip", "link", "set", dev, "up")

    def sysctl(self, key: str, value: str) -> None:
        self.exec("sysctl", "-qw", f"{key}={value}")


class NetnsSet:
    """A group of namespaces torn down together (context manager)."""

    def __init__(self, tag: str = "t"):
        if reason := why_no_netns():
            raise NotRootError(reason)
        self.tag = unique.short(f"mgt-{tag}-")
        self.namespaces: list[Netns] = []
        self.procs: list[subprocess.Popen] = []

    def add(self, short: str) -> Netns:
        ns = Netns(self, f"{self.tag}-{short}")
        note("netns", ns.name)  # $MAGLEV_RECORD: the test harness checks it is gone
        if run(["ip", "netns", "add", ns.name], check=False).returncode != 0:
            if os.path.lexists(f"/run/netns/{ns.name}"):  # taken (another session's): not ours
                forget("netns", ns.name)
            run(["ip", "netns", "add", ns.name])  # raises, with the reason
        self.namespaces.append(ns)
        ns.exec("ip", "link", "set", "lo", "up")
        return ns

    def veth(self, a: Netns, a_dev: str, b: Netns, b_dev: str) -> None:
        """A veth pair with one end in each namespace, both up."""
        tmp_a, tmp_b = unique.name("mgv"), unique.name("mgv")
        note("link", tmp_a)
        note("link", tmp_b)
        r = run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b], check=False)
        if r.returncode != 0:
            for t in (tmp_a, tmp_b):  # a name taken by someone else is not ours to judge
                if os.path.lexists(f"/sys/class/net/{t}"):
                    forget("link", t)
            raise RuntimeError(f"ip link add {tmp_a} type veth peer name {tmp_b} failed: {r.stderr.strip()}")
        try:
            run(["ip", "link", "set", tmp_a, "netns", a.name, "name", a_dev])
            run(["ip", "link", "set", tmp_b, "netns", b.name, "name", b_dev])
        except BaseException:  # an end still in this namespace: the pair goes with it
            run(["ip", "link", "del", tmp_a], check=False)
            run(["ip", "link", "del", tmp_b], check=False)
            raise
        a.up(a_dev)
        b.up(b_dev)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        for ns in reversed(self.namespaces):
            # Deleting the namespace removes its veth ends (and their peers) too.
            run(["ip", "netns", "del", ns.name], check=False)
        self.namespaces.clear()
        self.procs.clear()

    def __enter__(self) -> NetnsSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
