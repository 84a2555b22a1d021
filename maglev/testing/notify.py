"""What systemd listens on for ``sd_notify``: an AF_UNIX datagram socket that collects
every message, for tests of readiness, reload and stop."""

from __future__ import annotations

import socket
import time
from pathlib import Path


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; collects every message."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def collect(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(4096).decode()
                self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))
                self.sock.settimeout(0.001)
        except (TimeoutError, BlockingIOError):
            pass

    def wait_for(self, key: str, value: str, timeout: float, after: int = 0) -> int:
        """Index of the first message at or after ``after`` with key=value."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.messages[after:], after):
                if m.get(key) == value:
                    return i
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}={value} within {timeout} s; got {self.messages}")
            self.collect(min(left, 0.2))

    def close(self) -> None:
        self.sock.close()
