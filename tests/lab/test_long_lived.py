"""Long-lived TCP connections keep their backend when another backend is added or
removed (paper section 3.3: connection tracking, then Maglev hashing for new flows).

Through the real forwarder (`maglev run --nic afpacket:eth0` with the config manager) in
the namespace lab; backends are changed with the control protocol, as `maglev ctl` does.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from maglev.lab import topology as topo
from maglev.lab.client import http_load
from maglev.lab.nsenter import netns as in_netns
from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing.wait import wait_until
from tests.lab.lab_helpers import backend_rows, lab_config, spawn_run, write_config

pytestmark = pytest.mark.root

VIP_KEY = f"{topo.VIP_V4}:0/tcp"


class KeepAlive:
    """One HTTP/1.1 connection from the client namespace, reused for several requests."""

    def __init__(self, ns: str):
        with in_netns(ns):
            self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.s.settimeout(3)
        self.s.connect((topo.VIP_V4, topo.HTTP_PORT))
        self.buf = b""

    def get(self) -> str:
        """The backend that answered, or raises OSError/ConnectionError."""
        self.s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
        while b"\r\n\r\n" not in self.buf:
            data = self.s.recv(4096)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            data = self.s.recv(4096)
            if not data:
                raise ConnectionError("closed")
            rest += data
        body, self.buf = rest[:length], rest[length:]
        return body.decode().strip().removeprefix("backend=")

    def close(self) -> None:
        self.s.close()


def _wait_switched(ctl, reply: dict, what: str) -> None:
    """Wait until every worker runs the generation a backend change ``reply`` published.
    The reply says so when the workers switched within the config manager's confirm
    timeout (2 s); on a starved machine that can pass first, and fresh flows would still
    meet the old table: then wait for the workers' own generation, not a fixed time."""
    if not reply["confirmed"]:
        wait_until(lambda: all(w["tables_generation"] >= reply["generation"]
                               for w in ctl.call("stats", {})["workers"]), 20,
                   f"the workers running generation {reply['generation']} ({what})")


def _run(make_lab, remove: bool) -> None:
    from maglev.control.client import ControlClient

    lab = make_lab(encap="gre", backends=4, forwarder=False)
    st = lab.state
    be = {b["name"]: b for b in st["backends"]}
    # The forwarder starts with be1..be3; be4 exists (namespace, HTTP, agent) but is not
    # in the config yet.
    data = lab_config(lab)
    for v in data["vip"]:
        v["backend"] = [b for b in v["backend"] if b["name"] != "be4"]
    data["instance"]["name"] = "labll"
    short = Path(tempfile.mkdtemp(prefix="mgll", dir="/tmp"))  # ipc:// paths must be short
    conns: list[KeepAlive] = []
    try:
        write_config(short / "maglev.toml", data)
        ep = spawn_run(lab, short, 2)
        lab._wait_ready(topo.LabSpec(forwarder=True), 40)

        conns = [KeepAlive(st["client"]["ns"]) for _ in range(48)]
        first = [c.get() for c in conns]
        assert set(first) == {"be1", "be2", "be3"}, first

        with ControlClient(ep, timeout=10) as ctl:
            reply = ctl.call("add-backend", {"vip": VIP_KEY, "backend": {
                "address": be["be4"]["ipv4"], "name": "be4", "mac": be["be4"]["mac"], "weight": 1}})
            _wait_switched(ctl, reply, "with be4")
            deadline = time.monotonic() + 10
            while True:
                rows = backend_rows(ctl, VIP_KEY)
                if rows.get("be4", {}).get("entries", 0) > 0:
                    break
                assert time.monotonic() < deadline, rows
                time.sleep(0.1)
        fresh = http_load(st["client"]["ns"], topo.VIP_V4, 60, concurrency=4, deadline_s=60)
        assert fresh.ok == 60 and fresh.backends["be4"] > 0, fresh.to_dict()  # the table changed
        assert [c.get() for c in conns] == first  # ... and no old connection moved
        if not remove:
            return

        with ControlClient(ep, timeout=10) as ctl:
            reply = ctl.call("remove-backend", {"vip": VIP_KEY, "backend": "be1"})
            _wait_switched(ctl, reply, "without be1")
        fresh = http_load(st["client"]["ns"], topo.VIP_V4, 60, concurrency=4, deadline_s=60)
        assert fresh.ok == 60 and "be1" not in fresh.backends, fresh.to_dict()
        for c, was in zip(conns, first, strict=True):
            if was != "be1":  # be1's own connections cannot survive its removal
                assert c.get() == was
    finally:
        for c in conns:
            c.close()
        lab.stop_process("maglev")
        remove_recorded(str(short))  # the connection tables the forwarder kept for adoption
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.slow
def test_connections_keep_their_backend_when_a_backend_is_added(make_lab):
    _run(make_lab, remove=False)


@pytest.mark.slow
def test_connections_keep_their_backend_when_another_backend_is_removed(make_lab):
    _run(make_lab, remove=True)
