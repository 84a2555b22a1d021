"""One-request-at-a-time round trips in the lab: what the forwarder adds to a packet's trip.

* UDP echo: a small datagram from the client, echoed by the backend, one at a time.
  Through the VIP it goes client -> router -> maglev -> backend (decapsulated) and the
  echo returns directly (direct server return); direct, it goes client -> router ->
  backend and back.  The echo servers are threads of the calling process with sockets
  made in the backends' namespaces (bound to the VIP for the VIP path, to the backend's
  own address for the direct path).
* TCP connect: the time ``connect()`` takes (SYN out, SYN-ACK back) to the backends' HTTP
  port, through the VIP and directly.

Probes alternate between the two paths so that both see the same machine load, and the
added latency is the difference of the percentiles (p50 and p99, microseconds).  Every
loop is bounded in count and time.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from maglev.lab import topology as topo
from maglev.lab.nsenter import netns

ECHO_PORT = 7007


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


@contextmanager
def udp_echo(state: dict[str, Any], port: int = ECHO_PORT) -> Iterator[None]:
    """Echo UDP on every backend, on the VIP and on the backend's own IPv4 address."""
    socks: list[socket.socket] = []
    stop = threading.Event()
    try:
        for b in state["backends"]:
            for addr in (topo.VIP_V4, b["ipv4"]):
                with netns(b["ns"]):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((addr, port))
                s.settimeout(0.2)
                socks.append(s)

        def serve(s: socket.socket) -> None:
            while not stop.is_set():
                try:
                    data, peer = s.recvfrom(2048)
                except (TimeoutError, OSError):
                    continue
                try:
                    s.sendto(data, peer)
                except OSError:
                    pass

        threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in socks]
        for t in threads:
            t.start()
        yield
    finally:
        stop.set()
        for t in locals().get("threads", []):
            t.join(1.0)
        for s in socks:
            s.close()


def _udp_rtt(sock: socket.socket, tag: int) -> float | None:
    data = tag.to_bytes(8, "big") + b"maglev-latency"
    t0 = time.perf_counter()
    sock.send(data)
    deadline = t0 + 0.5
    while time.perf_counter() < deadline:
        try:
            if sock.recv(2048) == data:
                return (time.perf_counter() - t0) * 1e6
        except TimeoutError:
            return None
    return None


def _tcp_rtt(ns: str, addr: str, port: int) -> float | None:
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        t0 = time.perf_counter()
        s.connect((addr, port))
        return (time.perf_counter() - t0) * 1e6
    except OSError:
        return None
    finally:
        s.close()


def round_trips(state: dict[str, Any], count: int = 200, port: int = ECHO_PORT) -> dict[str, Any]:
    """``count`` UDP echoes and ``count`` TCP connects, each through the VIP and directly
    to backend 1, alternating.  Returns per path {p50, p99, n, lost} in microseconds and
    ``added`` = VIP minus direct {p50, p99} for each protocol."""
    client = state["client"]["ns"]
    direct = state["backends"][0]["ipv4"]
    rtts: dict[str, dict[str, list[float]]] = {"udp": {"vip": [], "direct": []},
                                               "tcp_connect": {"vip": [], "direct": []}}
    lost = {"udp": {"vip": 0, "direct": 0}, "tcp_connect": {"vip": 0, "direct": 0}}
    socks = {}
    with udp_echo(state, port):
        try:
            for path, addr in (("vip", topo.VIP_V4), ("direct", direct)):
                with netns(client):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.settimeout(0.5)
                s.connect((addr, port))
                socks[path] = s
            # Warm-up (ARP, connection entries, path MTU) is not measured.
            for path in socks:
                _udp_rtt(socks[path], 0)
            deadline = time.monotonic() + max(10.0, count * 0.05)
            for i in range(1, count + 1):
                if time.monotonic() > deadline:
                    break
                for path, addr in (("vip", topo.VIP_V4), ("direct", direct)):
                    r = _udp_rtt(socks[path], i)
                    if r is None:
                        lost["udp"][path] += 1
                    else:
                        rtts["udp"][path].append(r)
                    r = _tcp_rtt(client, addr, topo.HTTP_PORT)
                    if r is None:
                        lost["tcp_connect"][path] += 1
                    else:
                        rtts["tcp_connect"][path].append(r)
        finally:
            for s in socks.values():
                s.close()
    out: dict[str, Any] = {}
    for proto, paths in rtts.items():
        o = {p: {"p50": round(_pct(x, 50), 1), "p99": round(_pct(x, 99), 1), "n": len(x), "lost": lost[proto][p]}
             for p, x in paths.items()}
        o["added"] = {q: round(o["vip"][q] - o["direct"][q], 1) for q in ("p50", "p99")}
        out[proto] = o
    return out
