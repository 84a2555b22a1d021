"""The control socket: a ZeroMQ ROUTER for requests and a PUB for events.

Design
------
* **One thread, one loop.**  :meth:`ControlServer.poll` receives a bounded batch of
  requests and hands each decoded :class:`Request` to the handler (the config manager)
  before reading the next, so changes are serialised by construction.
* **Hostile input is routine.**  ``ZMQ_MAXMSGSIZE`` makes libzmq drop a peer that sends a
  frame over 1 MiB before we ever see it; frame shapes we do not expect (a DEALER sending
  several frames) are dropped and counted; a single body that fails to decode gets an
  error reply naming the problem.  The handler never raises (it turns bugs into
  ``internal`` replies), and the loop also catches anything that slips through, so no
  message can stop the control plane.
* **Never block on a peer.**  Replies go out with ``NOBLOCK``; ROUTER silently drops a
  reply to a peer that vanished and PUB drops events for slow subscribers at the high-water
  mark, so a stuck client cannot stall table publication.
* **Bounded memory.**  Per peer at most ``ROUTER_RCVHWM`` requests wait inbound and
  ``ROUTER_SNDHWM`` replies outbound; error replies are clipped (protocol.py), so neither a
  flood nor a huge request nor a client that never reads grows the process.
* **ipc:// is private, tcp:// is authenticated.**  ipc sockets live in a 0700 directory and
  are chmod 0600 right after bind; a live socket at the path is never stolen (libzmq would
  silently unlink it).  tcp:// binds only with CURVE keys and the ZAP allow list
  (maglev/control/curve.py), else :class:`ControlError` is raised.
* **Tracing.**  The envelope's ``traceparent`` becomes the parent of a server span around
  the handler, so ctl -> config apply -> worker switch is one trace.

Both REQ clients (``[identity, "", body]``) and DEALER clients (``[identity, body]``) are
served; the reply mirrors the shape.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from maglev.config_rules import ipc_path_problem
from maglev.control import curve
from maglev.control.protocol import (
    MALFORMED,
    MAX_MESSAGE_BYTES,
    ProtocolError,
    Reply,
    Request,
    decode_request,
    encode_event,
    peek_id,
)
from maglev.errors import ControlError

log = logging.getLogger("maglev.control")

Handler = Callable[[Request], Reply]
MAX_BATCH = 64
ROUTER_RCVHWM = 16
ROUTER_SNDHWM = 100
ZAP_DOMAIN = "maglev"


@dataclass
class ServerStats:
    requests: int = 0
    replies: int = 0
    malformed: int = 0
    dropped_frames: int = 0
    handler_crashes: int = 0
    events: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)


def _ipc_path(endpoint: str) -> Path:
    path = endpoint[len("ipc://") :]
    why = ipc_path_problem(path)  # the validator's rule too (maglev/config_rules.py)
    if why:
        raise ControlError(f"{endpoint!r}: {why}")
    return Path(path)


def _prepare_ipc(endpoint: str) -> Path:
    """Make the 0700 directory; refuse to replace a socket a live server is using."""
    p = _ipc_path(endpoint)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(PermissionError):  # a shared directory we do not own
        if p.parent.stat().st_uid == os.geteuid():
            p.parent.chmod(0o700)
    if p.exists() or p.is_symlink():
        if not stat.S_ISSOCK(p.lstat().st_mode):
            raise ControlError(f"{p} exists and is not a socket; refusing to replace it")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(0.5)
            s.connect(str(p))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ControlError(f"{p}: cannot tell whether it is in use: {exc}") from None
            p.unlink(missing_ok=True)  # stale: its server is gone
        else:
            raise ControlError(f"{p} is in use by another running maglev (stop it or pick another --control)")
        finally:
            s.close()
    return p


class ControlServer:
    """Serve ``handler`` on ``endpoint`` (ROUTER) and publish events on ``events_endpoint``."""

    def __init__(
        self,
        handler: Handler,
        endpoint: str,
        events_endpoint: str | None = None,
        *,
        server_secret_key_file: str = "",
        authorized_keys_file: str = "",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        context: zmq.Context | None = None,
    ):
        self.handler = handler
        self.endpoint = endpoint
        self.events_endpoint = events_endpoint
        self.stats = ServerStats()
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self._auth: Any = None
        self._ipc_paths: list[Path] = []
        self.router: zmq.Socket | None = None
        self.pub: zmq.Socket | None = None
        self.allow: curve.AllowList | None = None
        try:
            keys = None
            tcp = [ep for ep in (endpoint, events_endpoint) if ep and ep.startswith("tcp://")]
            if tcp:
                if not (server_secret_key_file and authorized_keys_file):
                    raise ControlError(
                        f"refusing to bind {tcp[0]} without CURVE: set control.server_secret_key_file "
                        "and control.authorized_keys_file"
                    )
                keys = curve.load_keypair(server_secret_key_file)
                self.allow = curve.AllowList(curve.load_authorized_keys(authorized_keys_file))
                from zmq.auth.thread import ThreadAuthenticator

                self._auth = ThreadAuthenticator(self.ctx)
                self._auth.start()
                self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self.allow)
            self.router = self._bind(zmq.ROUTER, endpoint, keys, max_message_bytes)
            if events_endpoint:
                self.pub = self._bind(zmq.PUB, events_endpoint, keys, max_message_bytes)
        except BaseException:
            self.close()
            raise
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)

    def _bind(self, kind: int, endpoint: str, keys: curve.KeyPair | None, maxmsg: int) -> zmq.Socket:
        if not endpoint.startswith(("ipc://", "tcp://")):
            raise ControlError(f"{endpoint!r}: the control endpoint must be ipc:// or tcp://")
        path = _prepare_ipc(endpoint) if endpoint.startswith("ipc://") else None
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, maxmsg)
        if kind == zmq.ROUTER:
            # Per peer: at most ROUTER_RCVHWM requests (<= 1 MiB each) wait in this process,
            # a pipelining client is held back in its own queue instead of ours; replies to a
            # peer that does not read are dropped past ROUTER_SNDHWM.
            sock.setsockopt(zmq.RCVHWM, ROUTER_RCVHWM)
            sock.setsockopt(zmq.SNDHWM, ROUTER_SNDHWM)
        else:
            sock.setsockopt(zmq.SNDHWM, 10_000)
        if path is None:
            assert keys is not None
            sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
            sock.curve_server = True
            sock.curve_secretkey = keys.secret
            sock.curve_publickey = keys.public
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise ControlError(f"cannot bind {endpoint}: {exc}") from None
        if path is not None:
            self._ipc_paths.append(path)
            path.chmod(0o600)
        return sock

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (resolves tcp port 0 and wildcard)."""
        assert self.router is not None
        return self.router.getsockopt(zmq.LAST_ENDPOINT).decode()

    @property
    def bound_events_endpoint(self) -> str:
        return self.pub.getsockopt(zmq.LAST_ENDPOINT).decode() if self.pub is not None else ""

    # ------------------------------------------------------------------ serving

    def poll(self, timeout_ms: int = 100) -> int:
        """Serve what arrives within ``timeout_ms`` (at most MAX_BATCH messages); return the
        number of messages read."""
        if not self.poller.poll(timeout_ms):
            return 0
        return self.serve_ready()

    def serve_ready(self) -> int:
        """Serve the messages already queued (at most MAX_BATCH) without waiting; return the
        number read.  For a caller that waits on :attr:`router` itself (the config manager
        actor polls every server's ROUTER and its mailbox together)."""
        n = 0
        assert self.router is not None
        while n < MAX_BATCH:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            n += 1
            self._serve(frames)
        return n

    def _serve(self, frames: list[bytes]) -> None:
        if len(frames) == 2:
            ident, envelope, body = frames[0], [], frames[1]
        elif len(frames) == 3 and frames[1] == b"":
            ident, envelope, body = frames[0], [b""], frames[2]
        else:
            self.stats.dropped_frames += 1
            return
        self.stats.requests += 1
        try:
            req = decode_request(body)
        except ProtocolError as exc:
            self.stats.malformed += 1
            reply = Reply.failure(peek_id(body), exc)
        else:
            reply = self._call(req)
        if not reply.ok:
            code = str(reply.error.get("code", "?"))
            self.stats.errors_by_code[code] = self.stats.errors_by_code.get(code, 0) + 1
        try:
            data = reply.encode()
        except Exception as exc:  # a result that msgpack cannot carry: a bug, still answer
            log.error("cannot encode reply to %r: %s", getattr(reply, "id", None), exc)
            data = Reply.failure(reply.id, ProtocolError(MALFORMED, "reply not encodable")).encode()
        try:
            assert self.router is not None
            self.router.send_multipart([ident, *envelope, data], zmq.NOBLOCK)
            self.stats.replies += 1
        except zmq.ZMQError:
            pass  # the peer is gone or its queue is full: nothing to do

    def _call(self, req: Request) -> Reply:
        try:
            from maglev.telemetry import start_span_from

            carrier = {"traceparent": req.traceparent, "tracestate": req.tracestate}
            from opentelemetry.trace import SpanKind

            with start_span_from(carrier, f"control {req.op}", {"maglev.control.op": req.op}, kind=SpanKind.SERVER) as span:
                reply = self.handler(req)
                span.set_attribute("maglev.control.ok", reply.ok)
                if reply.ok and isinstance(reply.result, dict) and "generation" in reply.result:
                    span.set_attribute("maglev.generation", int(reply.result["generation"]))
                return reply
        except Exception as exc:
            self.stats.handler_crashes += 1
            log.exception("control handler raised on %r", req.op)
            from maglev.control.protocol import INTERNAL

            return Reply.failure(req.id, ProtocolError(INTERNAL, f"{type(exc).__name__}: {exc}"))

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        """Send an event; never blocks (slow subscribers lose events at the HWM)."""
        if self.pub is None:
            return
        try:
            self.pub.send_multipart(encode_event(topic, body), zmq.NOBLOCK)
            self.stats.events += 1
        except zmq.ZMQError:
            pass

    def close(self) -> None:
        for s in (self.router, self.pub):
            if s is not None:
                s.close(0)
        self.router = self.pub = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx:
            self.ctx.term()
        for p in self._ipc_paths:
            with contextlib.suppress(OSError):
                p.unlink()
        self._ipc_paths = []

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
