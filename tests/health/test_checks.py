"""Each probe type against real servers on 127.0.0.1, and rise/fall."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from maglev.health.checks import CheckSpec, run_check
from maglev.health.state import RiseFall


def closed_port(kind=socket.SOCK_STREAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def check(**kw):
    kw.setdefault("address", "127.0.0.1")
    # Long enough for a server thread of this process on a loaded 2-CPU machine to answer
    # (0.3 s was not: a good HTTP server read as "timeout").  A test about the timeout
    # passes its own; refused and bad answers come back at once either way.
    kw.setdefault("timeout_s", 2.0)
    return asyncio.run(run_check(CheckSpec(**kw)))


def test_tcp_up_and_refused(servers):
    t = servers.tcp()
    assert check(type="tcp", port=t.port).ok
    r = check(type="tcp", port=closed_port())
    assert not r.ok and not r.local and "refused" in r.detail


def test_http_status(servers):
    h = servers.http()
    r = check(type="http", port=h.port, path="/healthz")
    assert r.ok and r.detail == "HTTP 200"
    h.status = 503
    r = check(type="http", port=h.port)
    assert not r.ok and r.detail == "HTTP 503, expected 200"
    assert check(type="http", port=h.port, expect_status=503).ok


def test_http_hung_server_times_out_on_time(servers):
    h = servers.http()
    h.hang.set()
    t0 = time.monotonic()
    r = check(type="http", port=h.port, timeout_s=0.2)
    assert not r.ok and "timeout" in r.detail
    # On time: the server holds the request for 5 s, so a check that ignored its 0.2 s
    # timeout would take 5 s.  The rest of the bound is slack for a loaded machine
    # (starting an event loop and a thread switch, not the network).
    assert time.monotonic() - t0 < 1.5


def test_http_not_http(servers):
    # A TCP listener that accepts (kernel backlog) and never speaks: times out.
    t = servers.tcp()
    r = check(type="http", port=t.port, timeout_s=0.1)
    assert not r.ok and "timeout" in r.detail


def test_udp_echo_expect_and_refused(servers):
    u = servers.udp(prefix=b"OK ")
    assert check(type="udp", port=u.port, send="ping").ok
    assert check(type="udp", port=u.port, send="ping", expect="OK").ok
    r = check(type="udp", port=u.port, send="ping", expect="PONG")
    assert not r.ok and "does not start with" in r.detail
    r = check(type="udp", port=closed_port(socket.SOCK_DGRAM), send="x")
    assert not r.ok and "refused" in r.detail.lower()
    silent = servers.udp(silent=True)
    r = check(type="udp", port=silent.port, send="x", timeout_s=0.1)
    assert not r.ok and "timeout" in r.detail


def test_descriptor_exhaustion_is_a_local_error(monkeypatch):
    import errno

    async def no_fds(*a, **kw):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(asyncio, "open_connection", no_fds)
    r = check(type="tcp", port=1)
    assert not r.ok and r.local


@pytest.mark.parametrize(
    "rise,fall,seq,expect",
    [
        (2, 3, [True], [True]),  # first verdict at once
        (2, 3, [False], [False]),
        (2, 3, [True, False, False, True, False, False, False], [True, None, None, None, None, None, False]),
        (2, 1, [False, True, True], [False, None, True]),
        (1, 1, [True, False, True], [True, False, True]),
    ],
)
def test_rise_fall(rise, fall, seq, expect):
    rf = RiseFall(rise, fall)
    assert [rf.observe(x) for x in seq] == expect


def test_config_requires_a_probe_port_for_an_all_ports_vip():
    from maglev.config import Config
    from maglev.errors import ConfigError

    base = {"instance": {"source_ipv4": "198.18.0.1"},
            "vip": [{"address": "203.0.113.5", "port": 0, "protocol": "udp", "table_size": 13,
                     "health": {"type": "udp"}, "backend": [{"address": "198.18.1.1"}]}]}
    with pytest.raises(ConfigError) as ei:
        Config.from_dict(base)
    assert ei.value.problems == ["vip[0].health.port: is required when the VIP serves every port (port = 0)"]
    base["vip"][0]["health"]["port"] = 53
    spec = CheckSpec.for_backend(Config.from_dict(base).vips[0], Config.from_dict(base).vips[0].backends[0])
    assert (spec.type, spec.port, spec.address) == ("udp", 53, "198.18.1.1")


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 \xb2\xb2\xb2 OK\r\n", b"HTTP/1.1 2O0 OK\r\n", b"HTTP/1.1\r\n"])
def test_http_odd_status_lines_are_a_failed_check_not_an_exception(status_line):
    # latin-1 superscript digits pass str.isdigit() but not int(): a clean "down" verdict.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def answer():
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(status_line)

    import threading

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        r = check(type="http", port=port, timeout_s=2.0)
    finally:
        t.join(5)
        srv.close()
    assert not r.ok and "not an HTTP status line" in r.detail
