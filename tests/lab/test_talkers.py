"""The lab's event-driven pieces on 127.0.0.1 (no namespaces): the asyncio HTTP backend
(maglev/lab/httpd.py) and the one-loop talkers (maglev/lab/talkers.py) keep 200
connections at ~10 requests/s each, and report moved, closed and silent connections."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maglev.lab.httpd import parse_head
from maglev.lab.talkers import Talkers, parse_reply
from maglev.testing.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def _start_httpd() -> tuple[subprocess.Popen, int]:
    """The lab httpd on a free port, listening.  The port is the kernel's pick, bound by
    the httpd a moment later: another process on this shared machine may take it in
    between, so a start that fails with EADDRINUSE is retried on another port (3 tries)."""
    for _ in range(3):
        port = free_port()
        p = subprocess.Popen([sys.executable, "-m", "maglev.lab.httpd", "--name", "beA", "--port", str(port)],
                             cwd=REPO, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while p.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return p, port
            except OSError:
                if time.monotonic() > deadline:
                    p.kill()
                    p.communicate()
                    raise AssertionError("httpd did not start within 20 s") from None
                time.sleep(0.05)
        err = p.communicate()[1]
        if "Address already in use" not in err:
            raise AssertionError(f"httpd exited {p.returncode}: {err[-2000:]}")
    raise AssertionError(f"httpd found its port taken 3 times: {err[-500:]}")


@pytest.fixture
def httpd():
    p, port = _start_httpd()
    try:
        yield port
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        p.stderr.close()


def _get(port: int, req: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        out = b""
        while data := s.recv(65536):
            out += data
    return out


def test_httpd_replies_keeps_alive_closes_and_refuses_bad_requests(httpd):
    one = _get(httpd, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")  # HTTP/1.0: closed after the reply
    assert one.startswith(b"HTTP/1.1 200 OK\r\n") and b"X-Backend: beA" in one and one.endswith(b"backend=beA\n")
    assert len(_get(httpd, b"GET /size/3000000 HTTP/1.0\r\n\r\n").partition(b"\r\n\r\n")[2]) == 3000000
    assert b"400 Bad Request" in _get(httpd, b"NONSENSE\r\n\r\n")
    assert b"400 Bad Request" in _get(httpd, b"GET /size/xx HTTP/1.0\r\n\r\n")
    with socket.create_connection(("127.0.0.1", httpd), timeout=5) as s:  # HTTP/1.1: stays open
        buf = b""
        for _ in range(3):
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            while (got := parse_reply(buf)) is None:
                buf += s.recv(65536)
            assert got[0] == "beA"
            buf = got[1]
    assert parse_head(b"GET / HTTP/1.1\r\nA: b") == ("GET", "/", "HTTP/1.1", {"a": "b"})
    assert parse_head(b"GET /") is None and parse_head(b"GET / SPDY/3") is None


def test_two_hundred_connections_each_ten_requests_a_second(httpd):
    socks = [socket.create_connection(("127.0.0.1", httpd), timeout=5) for _ in range(200)]
    try:
        t = Talkers(socks, ["beA"] * 200, period_s=0.1).start()
        time.sleep(3.0)
        t.finish()
        assert t.error is None, t.error
        print(f"\n200 connections: {t.rate():.2f} requests/s each, {t.late} late turns, max rtt {t.max_rtt_s * 1e3:.1f} ms")
        assert t.lost == {}
        assert t.rate() <= 10.5  # paced: never more than one request per period
        # No connection starved: the due-time heap gives each its turn, so the least
        # answered one is near the mean whatever the machine's load.
        mean = t.requests / len(socks)
        assert min(t.per_conn) >= max(1.0, mean / 2), (min(t.per_conn), mean)
        # The rate itself is 2000 requests/s through two Python loops (this one and the
        # httpd's): with more runnable tasks than cores it measures the neighbours (5.06/s,
        # 2695 late turns beside two busy loops at load 20; 10.00/s at load 14).  Judged
        # when the machine has the CPU for it, as test_latency_lab does; printed always.
        load, cpus = os.getloadavg()[0], os.cpu_count() or 1
        if load <= 2 * cpus:
            assert min(t.per_conn) >= 20  # each connection really talked (3 s at 10/s = 30)
            assert t.rate() >= 7.0, t.rate()  # ~10/s; slack for a loaded machine
        else:
            print(f"rate floor not judged: load {load:.1f} on {cpus} CPUs")
    finally:
        for s in socks:
            s.close()


def test_moved_closed_and_silent_connections_are_lost_with_the_reason(httpd):
    a = socket.create_connection(("127.0.0.1", httpd), timeout=5)
    b = socket.create_connection(("127.0.0.1", httpd), timeout=5)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    c = socket.create_connection(srv.getsockname(), timeout=5)  # accepted by nobody who answers
    d = socket.create_connection(srv.getsockname(), timeout=5)
    peer_c, _ = srv.accept()  # stays open, never answers
    peer_d, _ = srv.accept()
    peer_d.close()  # the peer closes
    try:
        t = Talkers([a, b, c, d], ["beA", "beB", "beA", "beA"], period_s=0.05, timeout_s=1.0).start()
        deadline = time.monotonic() + 10
        while len(t.lost) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        t.finish()
        assert t.error is None
        assert 0 not in t.lost
        assert t.lost[1] == "moved beB -> beA"
        assert t.lost[2] == "failed: no reply within 1 s"
        assert t.lost[3].startswith("failed:"), t.lost[3]
    finally:
        for s in (a, b, c, d, srv, peer_c):
            s.close()
