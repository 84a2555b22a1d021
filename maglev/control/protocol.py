"""The control protocol's wire format: a versioned msgpack envelope over ZeroMQ.

Requests travel DEALER (or REQ) -> ROUTER, one msgpack map per message::

    {"v": 1, "id": <int|str>, "op": "set-weight", "args": {...},
     "traceparent": "00-...", "tracestate": "..."}      # trace fields optional

Replies mirror the request id::

    {"v": 1, "id": ..., "ok": true,  "result": {...}}
    {"v": 1, "id": ..., "ok": false, "error": {"code": "...", "message": "...", "field": "..."}}

Events go out on a PUB socket as two frames, ``[topic, msgpack body]``, so subscribers
filter by topic prefix in ZeroMQ itself (``health``, ``generation``, ``config``, ``alert``,
later ``bgp``).

Design notes
------------
* Decoding is defensive by construction: every field is type-checked here, so the
  dispatcher only ever sees a well-formed :class:`Request`; anything else becomes a
  :class:`ProtocolError` carrying the code the reply should use.  msgpack is unpacked with
  tight limits (no ext types, bounded container/str/bin lengths) so a hostile 1 MiB message
  cannot expand into gigabytes of Python objects.
* The version field lets a client and server of different releases refuse each other
  clearly instead of misreading fields.  Version 1 is the only one; a higher version gets
  ``unsupported-version`` with the versions we speak.
* Error codes are a closed, documented set (docs/control-protocol.md); ``field`` names the
  config path or argument that was wrong so a script can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from maglev.errors import ControlError

VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20  # ZMQ_MAXMSGSIZE on the server: larger frames drop the peer
MAX_ID_LEN = 128
MAX_OP_LEN = 64
# Error replies are bounded whatever the request held (docs/control-protocol.md, "Limits").
MAX_ERROR_MESSAGE = 1000  # characters of "message" (and of each "details" entry)
MAX_ERROR_FIELD = 200
MAX_ERROR_DETAILS = 50  # entries of "details"; then "... and N more"
MESSAGE_PROBLEMS = 5  # config problems named in "message" (all of them, bounded, in "details")

# The closed set of error codes (docs/control-protocol.md lists them with their meaning).
MALFORMED = "malformed"  # not msgpack, not a map, wrong envelope field types
UNSUPPORTED_VERSION = "unsupported-version"
UNKNOWN_OP = "unknown-op"
BAD_ARGS = "bad-args"  # arguments of the wrong type, missing or unknown
INVALID_CONFIG = "invalid-config"  # the resulting config failed validation
NOT_FOUND = "not-found"  # no such VIP or backend
CONFLICT = "conflict"  # already exists
NEEDS_FORCE = "needs-force"  # would remove every VIP or every backend of a VIP; nothing changed
PUBLISH_FAILED = "publish-failed"  # tables could not be published; nothing changed
NEEDS_RESTART = "needs-restart"  # valid, but beyond what this run was sized for; nothing changed
PERSIST_FAILED = "persist-failed"  # the config could not be written; nothing changed
INTERNAL = "internal"  # a bug: logged with a traceback, nothing changed
ERROR_CODES = (
    MALFORMED,
    UNSUPPORTED_VERSION,
    UNKNOWN_OP,
    BAD_ARGS,
    INVALID_CONFIG,
    NOT_FOUND,
    CONFLICT,
    NEEDS_FORCE,
    PUBLISH_FAILED,
    NEEDS_RESTART,
    PERSIST_FAILED,
    INTERNAL,
)

EVENT_TOPICS = ("health", "generation", "config", "alert", "bgp")


class ProtocolError(ControlError):
    """A request that cannot be served.  ``code`` is one of ERROR_CODES; ``field`` names the
    argument or config path at fault ('' when none)."""

    def __init__(self, code: str, message: str, field: str = "", details: Any = None):
        self.code = code
        self.message = message
        self.field = field
        self.details = details
        super().__init__(f"{code}: {message}" + (f" (field {field})" if field else ""))

    def to_wire(self) -> dict[str, Any]:
        """The reply's ``error`` map, bounded: messages quote the caller's input (a 1 MiB VIP
        name, 20,000 config problems), and an error reply must stay small whatever came in."""
        err: dict[str, Any] = {"code": self.code, "message": _clip(self.message, MAX_ERROR_MESSAGE),
                               "field": _clip(self.field, MAX_ERROR_FIELD)}
        if self.details is not None:
            d = self.details
            if isinstance(d, list | tuple):
                d = [_clip(str(x), MAX_ERROR_MESSAGE) for x in d[:MAX_ERROR_DETAILS]]
                if len(self.details) > MAX_ERROR_DETAILS:
                    d.append(f"... and {len(self.details) - MAX_ERROR_DETAILS} more")
            err["details"] = d
        return err


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def invalid_config(problems: list[str], fallback: str = "invalid configuration") -> ProtocolError:
    """``invalid-config`` for a validator's problem list: ``field`` is the first problem's
    path, the message names the first few problems, ``details`` lists them (bounded)."""
    first = problems[0] if problems else ""
    path = first.split(": ", 1)[0] if ": " in first else ""
    message = "; ".join(problems[:MESSAGE_PROBLEMS]) or fallback
    if len(problems) > MESSAGE_PROBLEMS:
        message += f" (and {len(problems) - MESSAGE_PROBLEMS} more problems)"
    return ProtocolError(INVALID_CONFIG, message, path, details=list(problems))


@dataclass(frozen=True)
class Request:
    op: str
    args: dict[str, Any]
    id: int | str = 0
    traceparent: str = ""
    tracestate: str = ""
    v: int = VERSION

    def encode(self) -> bytes:
        msg: dict[str, Any] = {"v": self.v, "id": self.id, "op": self.op, "args": self.args}
        if self.traceparent:
            msg["traceparent"] = self.traceparent
        if self.tracestate:
            msg["tracestate"] = self.tracestate
        return pack(msg)


@dataclass(frozen=True)
class Reply:
    id: int | str | None
    ok: bool
    result: Any = None
    error: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        msg: dict[str, Any] = {"v": VERSION, "id": self.id, "ok": self.ok}
        if self.ok:
            msg["result"] = self.result
        else:
            msg["error"] = self.error
        return pack(msg)

    @classmethod
    def failure(cls, req_id: Any, err: ProtocolError) -> Reply:
        return cls(req_id, False, error=err.to_wire())


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """msgpack with limits sized for control messages (never trust the peer)."""
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=True,
        max_str_len=MAX_MESSAGE_BYTES,
        max_bin_len=MAX_MESSAGE_BYTES,
        max_array_len=200_000,
        max_map_len=200_000,
        max_ext_len=0,
        ext_hook=_no_ext,  # max_ext_len=0 still let an extension of 0 bytes through
    )


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} (extension types are not part of the protocol)")


def _valid_id(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return -(1 << 63) <= v < (1 << 64)
    return isinstance(v, str) and len(v) <= MAX_ID_LEN


def peek_id(data: bytes) -> Any:
    """The request id, if one can be recovered from a bad message (for the error reply)."""
    try:
        msg = unpack(data)
    except Exception:
        return None
    if isinstance(msg, dict) and _valid_id(msg.get("id")):
        return msg["id"]
    return None


def decode_request(data: bytes) -> Request:
    """Parse one request message or raise :class:`ProtocolError`."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(MALFORMED, f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        msg = unpack(data)
    except Exception as exc:  # msgpack raises many types (ExtraData, ValueError, ...)
        raise ProtocolError(MALFORMED, f"not a msgpack message: {type(exc).__name__}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(MALFORMED, f"the envelope must be a map, not {type(msg).__name__}")
    unknown = sorted(str(k) for k in msg if k not in ("v", "id", "op", "args", "traceparent", "tracestate"))
    if unknown:
        raise ProtocolError(MALFORMED, f"unknown envelope keys: {', '.join(unknown)}", unknown[0])
    v = msg.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProtocolError(MALFORMED, "envelope field 'v' (protocol version) must be an integer", "v")
    if v != VERSION:
        raise ProtocolError(
            UNSUPPORTED_VERSION, f"protocol version {v} is not supported (this server speaks {VERSION})", "v"
        )
    req_id = msg.get("id", 0)
    if not _valid_id(req_id):
        raise ProtocolError(MALFORMED, f"'id' must be an integer or a string of at most {MAX_ID_LEN} characters", "id")
    op = msg.get("op")
    if not isinstance(op, str) or not op or len(op) > MAX_OP_LEN:
        raise ProtocolError(MALFORMED, "'op' must be a non-empty string", "op")
    args = msg.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(MALFORMED, f"'args' must be a map, not {type(args).__name__}", "args")
    tp = msg.get("traceparent", "")
    if not isinstance(tp, str) or len(tp) > 256:
        raise ProtocolError(MALFORMED, "'traceparent' must be a W3C traceparent string", "traceparent")
    ts = msg.get("tracestate", "")
    if not isinstance(ts, str) or len(ts) > 1024:
        raise ProtocolError(MALFORMED, "'tracestate' must be a W3C tracestate string", "tracestate")
    return Request(op=op, args=args, id=req_id, traceparent=tp, tracestate=ts, v=v)


def decode_reply(data: bytes) -> Reply:
    """Parse a reply (client side); raises ProtocolError(MALFORMED) on garbage."""
    try:
        msg = unpack(data)
    except Exception as exc:
        raise ProtocolError(MALFORMED, f"reply is not msgpack: {type(exc).__name__}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("ok"), bool):
        raise ProtocolError(MALFORMED, "reply is not a control-protocol envelope")
    if msg.get("v") != VERSION:
        raise ProtocolError(UNSUPPORTED_VERSION, f"reply has protocol version {msg.get('v')!r}")
    if msg["ok"]:
        return Reply(msg.get("id"), True, result=msg.get("result"))
    err = msg.get("error")
    if not isinstance(err, dict):
        raise ProtocolError(MALFORMED, "error reply without an error map")
    return Reply(msg.get("id"), False, error=err)


def encode_event(topic: str, body: dict[str, Any]) -> list[bytes]:
    return [topic.encode(), pack({"v": VERSION, "topic": topic, **body})]


def decode_event(frames: list[bytes]) -> tuple[str, dict[str, Any]]:
    if len(frames) != 2:
        raise ProtocolError(MALFORMED, f"an event has 2 frames, not {len(frames)}")
    body = unpack(frames[1])
    if not isinstance(body, dict):
        raise ProtocolError(MALFORMED, "event body is not a map")
    return frames[0].decode("utf-8", "replace"), body
