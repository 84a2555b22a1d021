"""The notify protocol for ``maglev run`` of every shard (maglev/shards.py ``launch_all``):
the launcher is the service systemd sees (``Type=notify``, examples/systemd/
maglev-shards.service), each shard is a supervisor that speaks the protocol by itself
(maglev/service/runloop.py), so the launcher stands between them as systemd does.

Each shard gets its own ``$NOTIFY_SOCKET``: an abstract ``AF_UNIX`` datagram socket of the
launcher (``@maglev-shards-<launcher pid>-<random>-<shard>``: no file to clean up),
bound with ``SO_PASSCRED`` so that only datagrams from that shard's own process are taken
(systemd's ``NotifyAccess=main``, per shard; anything else is counted and dropped).  The
launcher then tells systemd:

* ``READY=1`` (``MAINPID`` = the launcher) once **every** shard has sent ``READY=1`` -- a
  shard is ready when its tables are published and confirmed by every worker; a shard
  that exits first keeps the launcher from ever being ready (``STATUS`` says which, and
  systemd's start time-out fails the start);
* on SIGHUP (forwarded to every shard): ``RELOADING=1`` at once, then ``READY=1`` when
  every live shard has answered with its own ``READY=1``; ``STATUS`` is ``reloaded`` or
  names the shards that refused (``a: reload refused: ...``);
* ``WATCHDOG=1`` (when ``$WATCHDOG_USEC`` is set; every shard gets the same interval)
  only while every live shard that has pinged keeps pinging within the interval: one
  hung shard supervisor makes systemd's watchdog act on the whole service;
* ``STATUS`` when a shard exits, and ``STOPPING=1`` when SIGTERM/SIGINT is forwarded.

Outside systemd (no ``$NOTIFY_SOCKET``) nothing is bound and the shards get no socket.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from maglev.service.systemd import Notifier

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass
class ShardState:
    name: str
    address: str = ""                 # abstract name (leading NUL)
    sock: socket.socket | None = None
    proc: Any = None                  # subprocess.Popen once started
    ready: bool = False
    reloaded: bool = True             # answered the last reload (READY=1 after it)
    status: str = ""
    last_wd: float | None = None      # monotonic time of its last WATCHDOG=1
    exited: int | None = None         # exit code once gone
    messages: list[dict[str, str]] = field(default_factory=list)
    foreign: int = 0                  # datagrams from another process: dropped


class ShardNotify:
    """Aggregate the shards' notify messages into the launcher's own (module doc)."""

    def __init__(self, names: list[str], notifier: Notifier | None = None, poll_s: float = 0.05):
        self.n = notifier or Notifier()
        self.enabled = self.n.enabled
        self.poll_s = poll_s
        self.shards = {name: ShardState(name) for name in names}
        self.ready_sent = False
        self.reloading = False
        self._lock = threading.RLock()  # a signal handler may enter while the main thread holds it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.enabled:
            return
        token = secrets.token_hex(4)
        try:
            for s in self.shards.values():
                s.address = f"\0maglev-shards-{os.getpid()}-{token}-{s.name}"
                s.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                s.sock.bind(s.address)
                s.sock.setblocking(False)
        except OSError:
            self.close()
            raise

    # -- the launcher's side -------------------------------------------------------------
    def child_env(self, name: str, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of shard ``name``'s process: its own notify socket (or none) and
        the launcher's watchdog interval; never the launcher's socket or WATCHDOG_PID."""
        env = dict(os.environ if base is None else base)
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(key, None)
        if self.enabled:
            env["NOTIFY_SOCKET"] = "@" + self.shards[name].address[1:]
            if self.n.watchdog_s:
                env["WATCHDOG_USEC"] = str(int(self.n.watchdog_s * 1e6))
        return env

    def started(self, name: str, proc: Any) -> None:
        self.shards[name].proc = proc

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shard-notify", daemon=True)
            self._thread.start()

    def reload_requested(self) -> None:
        """SIGHUP was forwarded to every shard (safe in a signal handler: one datagram)."""
        if not self.enabled:
            return
        with self._lock:
            self.reloading = True
            for s in self.shards.values():
                s.reloaded = s.exited is not None
            self.n.reloading()

    def stopping(self) -> None:
        if self.enabled:
            with self._lock:
                self.n.stopping()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        for s in self.shards.values():
            if s.sock is not None:
                s.sock.close()
                s.sock = None
        self.n.close()

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        socks = {s.sock: s for s in self.shards.values() if s.sock is not None}
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select(list(socks), [], [], self.poll_s)
            except (OSError, ValueError):  # closed under us
                return
            for sock in readable:
                self._drain(socks[sock])
            self.tick()

    def _drain(self, s: ShardState) -> None:
        assert s.sock is not None
        while True:
            try:
                data, anc, _flags, _addr = s.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            pid = None
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(value) >= _UCRED.size:
                    pid = _UCRED.unpack_from(value)[0]
            if s.proc is None or pid != s.proc.pid:
                s.foreign += 1
                continue
            fields = dict(line.split("=", 1) for line in data.decode(errors="replace").splitlines() if "=" in line)
            self.on_message(s.name, fields)

    def on_message(self, name: str, fields: dict[str, str], now: float | None = None) -> None:
        """One datagram of shard ``name`` (already checked to come from it)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            s = self.shards[name]
            s.messages.append(fields)
            if "STATUS" in fields:
                s.status = fields["STATUS"]
            if fields.get("WATCHDOG") == "1":
                s.last_wd = now
            if fields.get("READY") == "1":
                s.ready = True
                s.reloaded = True
            self._maybe_ready()

    def _live(self) -> list[ShardState]:
        return [s for s in self.shards.values() if s.exited is None]

    def _maybe_ready(self) -> None:
        if not self.ready_sent:
            if all(s.ready and s.exited is None for s in self.shards.values()):
                self.ready_sent = True
                names = ", ".join(self.shards)
                self.n.ready(status=f"{len(self.shards)} shards ready: {names}")
            return
        if self.reloading and all(s.reloaded for s in self._live()):
            self.reloading = False
            refused = [f"{s.name}: {s.status}" for s in self._live() if s.status != "reloaded"]
            self.n.ready(status=("; ".join(refused) if refused else "reloaded")[:200])

    def tick(self, now: float | None = None) -> None:
        """Exits of shard processes, the watchdog (called by the loop every poll_s)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for s in self.shards.values():
                if s.exited is None and s.proc is not None and s.proc.poll() is not None:
                    s.exited = s.proc.returncode
                    left = [x.name for x in self._live()]
                    when = "" if self.ready_sent else " before it was ready"
                    self.n.status(f"shard {s.name} exited{when} with code {s.exited}; "
                                  f"running: {', '.join(left) or 'none'}"[:200])
                    self._maybe_ready()  # a reload waits for live shards only
            if self.n.watchdog_s and self._live():
                late = [s for s in self._live() if s.last_wd is not None and now - s.last_wd > self.n.watchdog_s]
                if not late:
                    self.n.watchdog(now)
