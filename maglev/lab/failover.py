"""Measurements on the scale-out lab: flow spread over the instances, and failover.

``python -m maglev.lab.failover [--state-dir DIR] [--connections 150] [--victim 2] [--json]``
runs both on a lab that ``maglev lab up --instances 3 --bgp`` built (root), and prints:

* **spread**: ``--requests`` short HTTP connections through the VIP (each one a new flow,
  so the router hashes it anew); the packets each instance received on its interface.
* **fragments**: 4000-byte UDP datagrams (fragmented by the client) must arrive whole,
  once each, at a backend.
* **failover** (paper 3.4): ``--connections`` long-lived HTTP/1.1 connections are opened
  and used once; each is attributed to the instance that forwarded it (the instance whose
  packet counter moved during one request on that connection alone).  Then the victim's
  ``maglev run`` and its actors are killed with SIGKILL -- a machine dying: no CEASE, no
  withdraw; the kernel closes its BGP connection and BIRD removes it from the multipath
  route.  Every connection then sends one more request: it *continues* when the answer
  comes from the same backend as before.  The connections of the dead instance were moved
  by the router to the survivors, which have no connection-table entry for them and find
  the backend through their Maglev table -- identical on every instance.  The router's
  own rehash also moves some flows between survivors (Linux ECMP is hash-threshold, not
  consistent); they continue for the same reason.

The victim is killed: afterwards the lab has one instance fewer until ``lab down`` / ``up``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from maglev.lab import topology as t
from maglev.lab.nsenter import netns

MAX_CONNECTIONS = 1000


class KeepAlive:
    """One HTTP/1.1 connection from the client namespace, reused for several requests."""

    def __init__(self, ns: str, host: str = t.VIP_V4, port: int = t.HTTP_PORT, timeout: float = 3.0):
        with netns(ns):
            self.s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.buf = b""
        try:
            self.s.connect((host, port))
        except OSError:
            self.s.close()
            raise

    def get(self) -> str:
        """One request; the name of the backend that answered.  Raises OSError on failure."""
        self.s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip() or 0)
        if length > 1 << 20:
            raise ConnectionError(f"implausible Content-Length {length}")
        self.buf = rest
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return body.decode(errors="replace").strip().removeprefix("backend=")

    def _more(self) -> None:
        data = self.s.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the peer")
        self.buf += data

    def close(self) -> None:
        self.s.close()


def rx_packets(ns: str, iface: str = "eth0") -> int:
    r = t.ns_exec(ns, "ip", "-s", "-j", "link", "show", iface, check=False)
    try:
        return int(json.loads(r.stdout)[0]["stats64"]["rx"]["packets"])
    except (ValueError, KeyError, IndexError):
        return 0


def instance_counters(state: dict[str, Any]) -> dict[str, int]:
    return {i["name"]: rx_packets(i["ns"]) for i in state["instances"]}


def spread(state: dict[str, Any], requests: int = 300) -> dict[str, Any]:
    """Packets per instance for ``requests`` fresh connections through the VIP."""
    from maglev.lab.client import http_load

    before = instance_counters(state)
    load = http_load(state["client"]["ns"], t.VIP_V4, requests, concurrency=8)
    after = instance_counters(state)
    delta = {k: after[k] - before[k] for k in after}
    total = sum(delta.values()) or 1
    return {"requests": requests, "ok": load.ok, "packets": delta,
            "share": {k: round(v / total, 3) for k, v in delta.items()},
            "backends": dict(sorted(load.backends.items()))}  # fmt: skip


def fragmented_udp(state: dict[str, Any], count: int = 24, size: int = 4000, port: int = 9999) -> dict[str, Any]:
    """``count`` UDP datagrams of ``size`` bytes (fragmented by the client: MTU 1500), each
    from its own socket (source port), to the VIP; which backend received each one whole.
    Returns the datagrams delivered intact, how many reached more than one backend, and the
    packets each instance received meanwhile."""
    if not 1 <= count <= 256 or not 8 <= size <= 65000:
        raise ValueError("count must be 1..256 and size 8..65000")
    socks: dict[str, socket.socket] = {}
    clients: list[socket.socket] = []
    try:
        for b in state["backends"]:
            with netns(b["ns"]):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks[b["name"]] = s
            s.bind(("0.0.0.0", port))
            s.settimeout(0.05)
        before = instance_counters(state)
        sent = []
        for i in range(count):
            with netns(state["client"]["ns"]):
                c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            clients.append(c)
            payload = i.to_bytes(4, "big") + bytes((i * 7 + k) & 0xFF for k in range(size - 4))
            c.sendto(payload, (t.VIP_V4, port))
            sent.append(payload)
            time.sleep(0.01)
        got: dict[bytes, list[str]] = {}
        deadline = time.monotonic() + 5
        while sum(len(v) for v in got.values()) < count and time.monotonic() < deadline:
            for name, s in socks.items():
                try:
                    got.setdefault(s.recv(65535), []).append(name)
                except TimeoutError:
                    continue
        after = instance_counters(state)
    finally:
        for s in [*socks.values(), *clients]:
            s.close()
    return {
        "datagrams": count,
        "size": size,
        "delivered_intact": sum(1 for p in sent if p in got),
        "damaged_or_unknown": sum(1 for p in got if p not in sent),
        "duplicated": sum(1 for v in got.values() if len(v) > 1),
        "per_instance_packets": {k: after[k] - before[k] for k in after},
    }


def _attribute(state: dict[str, Any], conn: KeepAlive) -> tuple[str, str]:
    """(backend, instance) for one request on ``conn``: the instance whose counter moved most."""
    before = instance_counters(state)
    backend = conn.get()
    after = instance_counters(state)
    moved = {k: after[k] - before[k] for k in after}
    return backend, max(moved, key=lambda k: moved[k])


def _kill_instance(state: dict[str, Any], name: str) -> list[Any]:
    """SIGKILL the ``maglev run`` of instance ``name`` and every process it started."""
    import psutil

    idx = next(i for i, x in enumerate(state["instances"], start=1) if x["name"] == name)
    rec = next(p for p in state["processes"] if p["role"] == f"maglev{idx}")
    if t._proc_start_time(rec["pid"]) != rec["start"]:
        raise t.LabError(f"instance {name} (pid {rec['pid']}) is not running")
    root = psutil.Process(rec["pid"])
    procs = [root, *root.children(recursive=True)]
    killed = []
    for p in procs:  # the whole tree at once: a machine dying, nothing gets to say goodbye
        try:
            p.send_signal(signal.SIGKILL)
            killed.append(p)
        except psutil.NoSuchProcess:
            pass
    return killed


def failover(state: dict[str, Any], connections: int = 150, victim: str = "lab2",
             route_timeout_s: float = 15.0) -> dict[str, Any]:
    """Open ``connections`` long-lived connections, kill ``victim``, count who continues."""
    from maglev.lab.scaleout import ScaleoutLab

    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"connections must be 1..{MAX_CONNECTIONS}, not {connections}")
    names = [i["name"] for i in state["instances"]]
    if victim not in names:
        raise ValueError(f"no instance {victim!r} (instances: {', '.join(names)})")
    lab = ScaleoutLab(Path(state["config"]).parent)
    lab.state = state
    client = state["client"]["ns"]
    conns: list[KeepAlive] = []
    try:
        for _ in range(connections):
            conns.append(KeepAlive(client))
        first: list[str] = []
        where: list[str] = []
        for c in conns:
            b, inst = _attribute(state, c)
            first.append(b)
            where.append(inst)
        hops_before = lab.vip_nexthops()
        t0 = time.monotonic()
        killed = _kill_instance(state, victim)
        deadline = t0 + route_timeout_s
        while len(lab.vip_nexthops()) >= len(hops_before) and time.monotonic() < deadline:
            time.sleep(0.02)
        route_s = time.monotonic() - t0
        import psutil

        psutil.wait_procs(killed, timeout=10)  # bounded; they were sent SIGKILL
        # A killed supervisor cannot remove its shared-memory region and run folder; do it
        # for it (only those of runs proven dead: maglev/actors/leftovers.py).
        from maglev.actors.leftovers import remove_dead_runs
        from maglev.rings import remove_stale_regions

        stale = [r for r in remove_dead_runs() if r.startswith(f"{victim}-")]
        stale += remove_stale_regions(victim)
        hops_after = lab.vip_nexthops()
        outcome: Counter = Counter()
        moved_same = moved_total = 0
        for c, b0, inst in zip(conns, first, where, strict=True):
            try:
                b1 = c.get()
                result = "same backend" if b1 == b0 else "other backend"
            except OSError as exc:
                result = f"failed: {type(exc).__name__}"
            outcome[result] += 1
            if inst == victim:
                moved_total += 1
                moved_same += result == "same backend"
    finally:
        for c in conns:
            c.close()
    same = outcome["same backend"]
    return {
        "connections": connections,
        "victim": victim,
        "killed_pids": len(killed),
        "stale_regions_removed": len(stale),
        "per_instance_before": dict(sorted(Counter(where).items())),
        "nexthops_before": hops_before,
        "nexthops_after": hops_after,
        "route_withdrawn_s": round(route_s, 3),
        "outcome": dict(outcome),
        "continued_same_backend": same,
        "continued_fraction": round(same / connections, 4),
        "victim_connections": moved_total,
        "victim_connections_continued": moved_same,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m maglev.lab.failover", description=__doc__.split("\n\n")[0])
    ap.add_argument("--state-dir", default=str(t.STATE_DIR))
    ap.add_argument("--connections", type=int, default=150)
    ap.add_argument("--requests", type=int, default=300, help="fresh connections for the spread measurement")
    ap.add_argument("--victim", default="lab2", help="instance to kill (lab1, lab2, ...)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m maglev.lab.failover needs root (it enters the lab's namespaces)", file=sys.stderr)
        return 2
    lab = t.Lab(Path(a.state_dir))
    if lab.load() is None or not lab.is_up() or "instances" not in lab.state:
        print(f"no scale-out lab is up in {a.state_dir} (maglev lab up --instances 3 --bgp)", file=sys.stderr)
        return 2
    try:
        out = {"spread": spread(lab.state, a.requests), "fragments": fragmented_udp(lab.state),
               "failover": failover(lab.state, a.connections, a.victim)}
    except (ValueError, t.LabError) as exc:
        print(f"python -m maglev.lab.failover: {exc}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        s, f = out["spread"], out["failover"]
        print(f"spread: {s['ok']}/{s['requests']} requests; packets per instance {s['packets']} (share {s['share']})")
        fr = out["fragments"]
        print(f"fragments: {fr['delivered_intact']}/{fr['datagrams']} datagrams of {fr['size']} bytes delivered "
              f"whole ({fr['duplicated']} duplicated); packets per instance {fr['per_instance_packets']}")
        print(f"failover: killed {f['victim']} ({f['killed_pids']} processes); route down to "
              f"{len(f['nexthops_after'])} next hops in {f['route_withdrawn_s']} s")
        print(f"  {f['continued_same_backend']}/{f['connections']} connections continued on the same backend "
              f"({100 * f['continued_fraction']:.2f}%); {f['victim_connections_continued']}/"
              f"{f['victim_connections']} of those the victim carried; outcome {f['outcome']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
