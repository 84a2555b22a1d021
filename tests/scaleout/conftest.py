"""Helpers for the scale-out tests: a BGP "router" on 127.0.0.1 (maglev's own Speaker in a
thread, counting what it receives), and waiting with a deadline."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

from maglev.bgp.speaker import Speaker
from maglev.config import Config


def bgp_instance_toml(name: str, router_port: int, instance_extra: str = "", hold_time: int = 9) -> str:
    """``[instance]`` and ``[bgp]`` of a maglev (AS 64513) that dials a :class:`RouterThread`
    on 127.0.0.1:``router_port``; the VIPs are the test's."""
    return f"""
[instance]
name = "{name}"
source_ipv4 = "198.18.2.2"
{instance_extra}
[bgp]
local_asn = 64513
router_id = "198.18.2.2"
listen_port = 0
connect_retry_time = 1

[[bgp.peer]]
address = "127.0.0.1"
port = {router_port}
asn = 64512
hold_time = {hold_time}
"""


class RouterThread:
    """A passive BGP peer on 127.0.0.1:``port`` (AS 64512) that accepts maglev (AS 64513)
    and records the prefixes maglev announces.  Runs its own event loop in a thread."""

    def __init__(self, port: int, hold_time: int = 9):
        self.port = port
        cfg = Config.from_dict({"bgp": {
            "local_asn": 64512, "router_id": "198.18.0.1", "listen_port": port, "listen_address": "127.0.0.1",
            "peer": [{"address": "127.0.0.1", "asn": 64513, "passive": True, "hold_time": hold_time}],
        }}).bgp  # fmt: skip
        self.loop = asyncio.new_event_loop()
        self.speaker = Speaker(cfg)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> RouterThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.speaker.start(), self.loop).result(10)
        return self

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def received(self) -> set[str]:
        return self._call(lambda: {str(p) for s in self.speaker.sessions for p in s.received_prefixes()})

    def state(self) -> str:
        return self._call(lambda: self.speaker.sessions[0].state.name)

    def sessions(self) -> int:
        """How many times the session with maglev reached Established."""
        return self._call(lambda: self.speaker.sessions[0].counters["established"])

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.speaker.stop("test over"), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class Listener:
    """A TCP listener on 127.0.0.1 that accepts and closes (a health-check target); ``stop``
    and ``start`` again on the same port.

    While stopped, the port stays reserved by a bound, non-listening socket (connections
    are refused, as the check must see): closed outright, the port is free for any other
    process's bind or outgoing connection (127.0.0.1 is shared with other test sessions),
    and ``start`` failed with EADDRINUSE.  Both sockets use SO_REUSEPORT (same user), the
    placeholder not SO_REUSEADDR, so nobody else can bind it meanwhile."""

    def __init__(self):
        self.port = 0
        self.sock: socket.socket | None = None
        self.hold: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def _bound(self, reuseaddr: bool) -> socket.socket:
        s = socket.socket()
        try:
            if reuseaddr:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", self.port))
        except OSError:
            s.close()
            raise
        return s

    def start(self) -> Listener:
        s = self._bound(reuseaddr=True)
        s.listen(64)
        s.settimeout(0.2)
        self.port = s.getsockname()[1]
        if self.hold is not None:
            self.hold.close()
            self.hold = None
        self.sock = s
        self.thread = threading.Thread(target=self._accept, args=(s,), daemon=True)
        self.thread.start()
        return self

    def _accept(self, s: socket.socket) -> None:
        while self.sock is s:
            try:
                conn, _ = s.accept()
                conn.close()
            except TimeoutError:
                continue
            except OSError:
                return

    def stop(self, keep_port: bool = True) -> None:
        """Stop listening; ``keep_port``: hold the port for a later ``start``."""
        s, self.sock = self.sock, None
        if self.thread is not None:
            self.thread.join(5)
        if s is not None:
            if keep_port and self.hold is None:
                self.hold = self._bound(reuseaddr=False)
            s.close()
        if not keep_port and self.hold is not None:
            self.hold.close()
            self.hold = None
