"""Real servers on 127.0.0.1 that tests start and stop: TCP listener, HTTP, UDP echo."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest


class TcpListener:
    def __init__(self, port: int = 0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


class Http:
    """A tiny HTTP server; ``status`` is what GET answers; ``hang`` makes it never answer."""

    def __init__(self, port: int = 0):
        outer = self
        self.status = 200
        self.hang = threading.Event()
        self.hits = 0

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                if outer.hang.is_set():
                    outer.hang_release.wait(5)
                    return
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.hang_release = threading.Event()
        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.hang_release.set()
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join(5)


class UdpEcho:
    def __init__(self, prefix: bytes = b"", silent: bool = False):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.prefix, self.silent = prefix, silent
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.silent:
                self.sock.sendto(self.prefix + data, addr)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()




@pytest.fixture
def servers():
    """``servers.tcp()``, ``servers.http()``, ``servers.udp()``; all closed after the test."""
    made = []

    class S:
        @staticmethod
        def tcp(port=0):
            made.append(TcpListener(port))
            return made[-1]

        @staticmethod
        def http(port=0):
            made.append(Http(port))
            return made[-1]

        @staticmethod
        def udp(**kw):
            made.append(UdpEcho(**kw))
            return made[-1]

    try:
        yield S
    finally:
        for o in reversed(made):
            o.close()


