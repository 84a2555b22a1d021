"""What systemd listens on for ``sd_notify``: an AF_UNIX datagram socket that collects
every message, for tests of readiness, reload and stop."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; collects every message.

    Like systemd it reads all the time (a thread): a datagram socket queues only
    ``net.unix.max_dgram_qlen`` (10) messages, and a test that stops reading while it waits
    for the process to exit must not be what holds the process back."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"notify-{path.name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))

    def collect(self, timeout: float) -> None:
        """Let ``timeout`` seconds of messages arrive (the reader thread collects them)."""
        time.sleep(timeout)

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
            time.sleep(min(left, 0.02))

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5)
        self.sock.close()
