"""A local OTLP/HTTP trace receiver for tests (a tiny stand-in for Jaeger/the collector).

It listens on 127.0.0.1 (random port), accepts ``POST /v1/traces`` with a protobuf
``ExportTraceServiceRequest`` (optionally gzip- or deflate-encoded, as the OTLP/HTTP
exporter may send), decodes it with ``opentelemetry-proto`` and keeps every span
together with its resource attributes.  Tests point maglev processes at
``receiver.endpoint`` (or put ``receiver.env()`` into a child's environment) and then
``receiver.wait_for(predicate, timeout)``.

Thread safety: the HTTP server handles each request on its own thread; spans are appended
under a condition variable that ``wait_for`` waits on, so a waiting test wakes as soon as
a batch arrives.

    with OtlpReceiver() as rx:
        setup_tracing("worker-0", "mg1", endpoint=rx.endpoint)
        ...
        spans = rx.wait_for(lambda spans: any(s.name == "apply" for s in spans), 10)
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = ["OtlpReceiver", "ReceivedSpan"]

TRACES_PATH = "/v1/traces"
# Refuse absurd bodies rather than buffering them (the SDK's default cap is 64 MiB).
MAX_BODY = 64 << 20


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector saw it.  Ids are lowercase hex (32 / 16 digits)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    status_code: int
    events: tuple[tuple[str, dict[str, Any]], ...] = field(default=())

    @property
    def actor(self) -> Any:
        return self.resource.get("maglev.actor")


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return _attrs(v.kvlist_value.values)
    return getattr(v, which)


def _attrs(kvs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode_request(body: bytes) -> list[ReceivedSpan]:
    """Decode a serialized ``ExportTraceServiceRequest`` into spans."""
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=sp.trace_id.hex(),
                        span_id=sp.span_id.hex(),
                        parent_span_id=sp.parent_span_id.hex() or None,
                        name=sp.name,
                        kind=sp.kind,
                        start_ns=sp.start_time_unix_nano,
                        end_ns=sp.end_time_unix_nano,
                        attributes=_attrs(sp.attributes),
                        resource=resource,
                        scope=ss.scope.name,
                        status_code=sp.status.code,
                        events=tuple((e.name, _attrs(e.attributes)) for e in sp.events),
                    )
                )
    return out


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def _reply(self, code: int, body: bytes = b"", ctype: str = "text/plain") -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The exporter gave up waiting (its own timeout, a process stopping): the spans
            # are recorded already; a traceback in the test output would only mislead.
            self.close_connection = True

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != TRACES_PATH:
            self._reply(404, b"only POST /v1/traces is served here\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            self._reply(413, b"body too large\n")
            return
        body = self.rfile.read(length)
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                self._reply(415, b"unsupported Content-Encoding\n")
                return
            if ctype != "application/x-protobuf":
                self._reply(415, b"only application/x-protobuf is accepted\n")
                return
            spans = decode_request(body)
        except Exception as exc:  # a bad request is the sender's problem, not ours
            self.server.owner._note_error(f"{type(exc).__name__}: {exc}")
            self._reply(400, b"cannot decode ExportTraceServiceRequest\n")
            return
        self.server.owner._add(spans)
        self._reply(
            200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf"
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: OtlpReceiver


class OtlpReceiver:
    """Collects spans sent by OTLP/HTTP exporters.  Use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._addr = (host, port)
        self._cond = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._requests = 0
        self.errors: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> OtlpReceiver:
        srv = _Server(self._addr, _Handler)
        srv.owner = self
        self._server = srv
        self._thread = threading.Thread(
            target=srv.serve_forever, kwargs={"poll_interval": 0.05}, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """Base URL, as for ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``--otlp-endpoint``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        return self.endpoint + TRACES_PATH

    def env(self) -> dict[str, str]:
        """Environment variables that point a child process's exporter here."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint}

    # -- results ---------------------------------------------------------------------
    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._cond:
            self._spans.extend(spans)
            self._requests += 1
            self._cond.notify_all()

    def _note_error(self, msg: str) -> None:
        with self._cond:
            self.errors.append(msg)

    @property
    def spans(self) -> list[ReceivedSpan]:
        """A snapshot of every span received so far, in arrival order."""
        with self._cond:
            return list(self._spans)

    @property
    def requests(self) -> int:
        with self._cond:
            return self._requests

    def clear(self) -> None:
        with self._cond:
            self._spans.clear()

    def traces(self) -> dict[str, list[ReceivedSpan]]:
        """Spans grouped by trace id."""
        out: dict[str, list[ReceivedSpan]] = {}
        for s in self.spans:
            out.setdefault(s.trace_id, []).append(s)
        return out

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        """Block until ``predicate(spans)`` is true and return the spans; raise
        ``TimeoutError`` (listing what did arrive) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snapshot = list(self._spans)
                if predicate(snapshot):
                    return snapshot
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({f"{s.actor}:{s.name}" for s in snapshot})
                    raise TimeoutError(
                        f"OTLP receiver: condition not met after {timeout}s; "
                        f"{len(snapshot)} spans received ({', '.join(names) or 'none'})"
                    )
                self._cond.wait(min(left, 0.5))
