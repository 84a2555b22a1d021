"""A control-socket client (DEALER) and an events subscriber (SUB).

The client numbers its requests and discards replies whose id does not match, so a reply
that arrives after a timeout cannot be mistaken for the answer to the next request.  An
error reply raises :class:`~maglev.control.protocol.ProtocolError` carrying the server's
code, message and field; no reply within the timeout raises :class:`ControlTimeout`.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import zmq

from maglev.control import curve
from maglev.control.optable import CHANGE_OPS
from maglev.control.protocol import (
    MAX_MESSAGE_BYTES,
    ProtocolError,
    Request,
    decode_event,
    decode_reply,
)
from maglev.errors import ControlError, MaglevError


class ControlTimeout(MaglevError, TimeoutError):
    """No reply from the control socket in time (is maglev running? right --control?)."""


def _curve_client(sock: zmq.Socket, endpoint: str, client_key_file: str, server_key: str) -> None:
    if not endpoint.startswith("tcp://"):
        return
    if not (client_key_file and server_key):
        raise MaglevError(
            f"{endpoint} needs CURVE: give --client-key (your .key_secret file) and --server-key "
            "(the server's public key or .key file), or set MAGLEV_CLIENT_KEY / MAGLEV_SERVER_KEY"
        )
    kp = curve.load_keypair(client_key_file)
    sock.curve_secretkey = kp.secret
    sock.curve_publickey = kp.public
    sock.curve_serverkey = curve.load_public_key(server_key)


def _connect(sock: zmq.Socket, endpoint: str, what: str = "control") -> None:
    """``sock.connect`` with a malformed endpoint (``garbage``, ``tcp://host`` without a port,
    a port out of range, an unknown transport) as one MaglevError line, not a ZMQError."""
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        raise MaglevError(f"{what} endpoint {endpoint!r}: {zmq.strerror(exc.errno)} (expected ipc://PATH or "
                          "tcp://HOST:PORT)") from None


def _trace_fields() -> dict[str, str]:
    """W3C trace context of the caller's current span, if the process uses tracing (we do not
    import OpenTelemetry into a plain `maglev ctl` just to find there is no span)."""
    if "maglev.telemetry" not in sys.modules:
        return {}
    from maglev.telemetry import inject_context

    return {k: v for k, v in inject_context({}).items() if k in ("traceparent", "tracestate")}


class ControlClient:
    def __init__(
        self,
        endpoint: str,
        timeout: float = 5.0,
        *,
        client_key_file: str = "",
        server_key: str = "",
        context: zmq.Context | None = None,
    ):
        self.endpoint = endpoint
        self.timeout = timeout
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 64 * MAX_MESSAGE_BYTES)
        try:
            _curve_client(self.sock, endpoint, client_key_file, server_key)
            if endpoint.startswith("ipc://") and not os.path.exists(endpoint[6:]):
                raise ControlTimeout(f"no control socket at {endpoint[6:]} (is maglev running?)")
            _connect(self.sock, endpoint)
        except BaseException:
            self.close()
            raise
        self._ids = itertools.count(1)

    def call(self, op: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Send one request and return its result; raises ProtocolError or ControlTimeout."""
        req_id = next(self._ids)
        tf = _trace_fields()
        req = Request(op=op, args=args or {}, id=req_id, traceparent=tf.get("traceparent", ""),
                      tracestate=tf.get("tracestate", ""))
        try:
            data = req.encode()
        except (OverflowError, ValueError, TypeError) as exc:  # e.g. an integer past 64 bits
            raise ControlError(f"{op}: an argument cannot be sent: {exc}") from None
        if len(data) > MAX_MESSAGE_BYTES:
            # The server drops a peer that sends more (ZMQ_MAXMSGSIZE): the request never
            # arrives and the caller waited out its timeout for a "no reply" (session 8: a
            # valid config of 65536 backends is 1.5 MB as a `ctl apply` request).
            raise ControlError(
                f"{op}: the request is {len(data)} bytes, over the control protocol's limit of "
                f"{MAX_MESSAGE_BYTES} ({MAX_MESSAGE_BYTES >> 20} MiB); nothing was sent. For a config that big, put it "
                "in the file maglev run was started with and use `maglev ctl reload` (the server reads the "
                "file itself)")
        self.sock.send(data)
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                hint = ""
                if op in CHANGE_OPS or op == "reload":  # it was sent: it may be at work (big tables, load)
                    hint = ("; the change may still be applied: see `maglev ctl status` (generation, "
                            "last_change) before sending it again, or give --timeout more")
                raise ControlTimeout(f"no reply to {op!r} from {self.endpoint} within {wait:g}s{hint}")
            reply = decode_reply(self.sock.recv())
            if reply.id != req_id:
                continue  # the late answer to an earlier, timed-out request
            if reply.ok:
                return reply.result
            e = reply.error
            raise ProtocolError(str(e.get("code", "?")), str(e.get("message", "")), str(e.get("field", "") or ""),
                                details=e.get("details"))

    def send_raw(self, frames: list[bytes]) -> None:
        """Send arbitrary frames (tests use it to throw garbage at the server)."""
        self.sock.send_multipart(frames)

    def recv_raw(self, timeout: float) -> list[bytes] | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return self.sock.recv_multipart()

    def close(self) -> None:
        self.sock.close(0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventSubscriber:
    """SUB socket on the events endpoint; ``topics`` are prefixes ('' = everything)."""

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[str] = ("",),
        *,
        client_key_file: str = "",
        server_key: str = "",
        context: zmq.Context | None = None,
    ):
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 4 * MAX_MESSAGE_BYTES)
        try:
            _curve_client(self.sock, endpoint, client_key_file, server_key)
            for t in topics:
                self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
            # The link's ups and downs (a stopped or restarted maglev): ZeroMQ reconnects
            # by itself, but a SUB socket alone cannot tell a quiet publisher from a gone one.
            self._monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            self._poller = zmq.Poller()
            self._poller.register(self.sock, zmq.POLLIN)
            self._poller.register(self._monitor, zmq.POLLIN)
            self._link: list[str] = []
            _connect(self.sock, endpoint, "events")
        except BaseException:
            self.close()
            raise

    def recv(self, timeout: float) -> tuple[str, dict[str, Any]] | None:
        """The next event, or None after ``timeout`` seconds.  Malformed events are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready = dict(self._poller.poll(int(left * 1000) + 1))
            if self._monitor in ready:
                self._read_monitor()
            if self.sock not in ready:
                continue
            frames = self.sock.recv_multipart()
            try:
                return decode_event(frames)
            except Exception:  # a garbled event must not kill a watcher
                continue

    def _read_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            ev = recv_monitor_message(self._monitor)["event"]
            self._link.append("up" if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED else "down")

    def link_changes(self) -> list[str]:
        """``"up"`` (connected to the publisher) / ``"down"`` (the connection closed: maglev
        stopped or is restarting) since the last call, oldest first."""
        out, self._link = self._link, []
        return out

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            ev = self.recv(3600)
            if ev is not None:
                yield ev

    def close(self) -> None:
        monitor = getattr(self, "_monitor", None)
        if monitor is not None:
            self.sock.disable_monitor()
            monitor.close(0)
        self.sock.close(0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> EventSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
