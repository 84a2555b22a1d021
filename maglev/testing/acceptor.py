"""A TCP listener that accepts and closes every connection, on a thread: a healthy TCP
backend for health-check tests.  A socket that only listens is not one -- once its accept
queue is full the kernel drops new connections and the probes time out (a spurious
down, seen at load)."""

from __future__ import annotations

import socket
import threading


class Acceptor:
    """A TCP listener that accepts and closes every connection, on a thread."""

    def __init__(self, address: str, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
