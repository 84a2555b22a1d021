"""systemd's notify protocol (``man sd_notify``) without a library.

A service started with ``Type=notify`` gets ``$NOTIFY_SOCKET``: an ``AF_UNIX`` datagram
socket (a path, or an abstract name starting with ``@``).  Each message is one datagram of
``KEY=VALUE`` lines: ``READY=1`` once serving, ``RELOADING=1`` / ``STOPPING=1`` around
those phases, ``STATUS=...`` free text for ``systemctl status``, ``WATCHDOG=1`` at least
every ``$WATCHDOG_USEC`` / 2 when ``WatchdogSec=`` is set (``$WATCHDOG_PID``, when set,
names the process that must send it).  Without ``$NOTIFY_SOCKET`` every call is a no-op,
so the same code runs under systemd, in a terminal and in tests.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Sends notify messages for this process; ``enabled`` is False outside systemd."""

    def __init__(self, env: dict[str, str] | None = None):
        e = os.environ if env is None else env
        addr = e.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = e.get("WATCHDOG_USEC", "")
        pid = e.get("WATCHDOG_PID", "")
        mine = not pid or (pid.isdigit() and int(pid) == os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else 0.0
        self._last_wd = 0.0
        self._sock: socket.socket | None = None
        self.sent: list[str] = []  # what went out (for logs and tests)
        self.dropped = 0  # messages not sent because the receiver's queue stayed full

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    # State changes systemd must see are retried this long when its queue is full; a
    # watchdog ping or a status line is dropped instead (the next one follows soon).
    STATE_KEYS = ("READY", "RELOADING", "STOPPING")
    STATE_RETRY_S = 2.0

    def notify(self, **fields: str | int) -> bool:
        """One datagram of ``KEY=VALUE`` lines; False when not under systemd or on error.

        Never blocks the caller (the supervisor's loop: a blocked send would also hold
        back SIGTERM's stop): the socket is non-blocking, and when the receiver's queue is
        full (``net.unix.max_dgram_qlen``, 10 by default, and a receiver that does not
        read) a ``READY``/``RELOADING``/``STOPPING`` message is retried for up to
        ``STATE_RETRY_S`` seconds, anything else is dropped and counted in ``dropped``."""
        if not self.address:
            return False
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        deadline = None
        while True:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX,
                                               socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
                self._sock.sendto(msg.encode(), self.address)
                break
            except BlockingIOError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.STATE_RETRY_S
                if not any(k.upper() in self.STATE_KEYS for k in fields) or now >= deadline:
                    self.dropped += 1
                    return False
                time.sleep(0.01)
            except OSError:
                return False
        self.sent.append(msg)
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify(READY=1, MAINPID=os.getpid(), **({"STATUS": status} if status else {}))

    def reloading(self) -> bool:
        # systemd 253+ wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload).
        return self.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self, now: float | None = None) -> bool:
        """Ping the watchdog when half its interval has passed (call from the run loop)."""
        if not self.watchdog_s:
            return False
        t = time.monotonic() if now is None else now
        if t - self._last_wd < self.watchdog_s / 2:
            return False
        self._last_wd = t
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
