"""Observability operations of the control socket: ``stats``, ``trace``, ``whereis``.

The config manager actor routes these ops here with one line (it owns the attached
shared-memory region, the run directory and the ConfigManager).  They read shared memory
and change no configuration; ``trace`` writes only the packet tracer's request words.

* ``stats`` {} -> :func:`maglev.observability.metrics.collect` snapshot.
* ``trace`` {vip?, src?, count?, seconds?, sample_every?} -> arms a request (a filter needs
  ``count``); {} alone returns the tracer's status.  The result carries the packets traced
  so far for the latest request (steering writes them to ``packet-traces.json`` in the run
  directory as they come home).
* ``whereis`` {src, dst, quic_cid?} (``dst`` = ``ADDR:PORT/PROTO``; ``quic_cid`` hex: ask about a
  QUIC short-header packet with that destination connection ID) -> :func:`whereis_blob` over the
  tables now published.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from maglev.errors import MaglevError
from maglev.rings import trace_block
from maglev.telemetry.packets import read_traces

OPS = ("stats", "trace", "whereis")
PROTO = {"tcp": 6, "udp": 17}


class TraceRequestError(MaglevError, ValueError):
    """A trace request that cannot be armed (bad VIP, address or count)."""


def handle(actor: Any, req: Any) -> Any:
    """Serve one observability request for the config manager actor; returns a Reply."""
    from maglev.control import ops as cops
    from maglev.control.protocol import BAD_ARGS, INTERNAL, ProtocolError, Reply

    try:
        if actor.region is None:
            raise ProtocolError(INTERNAL, "this config manager has no shared-memory region attached")
        after_request(actor, req, None)  # the configured sampling rate first, then any override
        args = req.args
        if req.op == "stats":
            cops.check_args("stats", args)
            from maglev.observability.metrics import collect

            result: Any = collect(actor.region, actor.spec.run_dir, instance=actor.spec.instance,
                                  manager=actor.manager)
        elif req.op == "trace":
            result = _trace(actor, args)
        else:
            cops.check_args("whereis", args)
            cid = cops.arg_str(args, "quic_cid") if "quic_cid" in args else None
            result = _whereis(actor, cops.arg_str(args, "src"), cops.arg_str(args, "dst"), cid)
    except ProtocolError as exc:
        return Reply.failure(req.id, exc)
    except ValueError as exc:  # TraceRequestError, WhereisError: the caller's input
        return Reply.failure(req.id, ProtocolError(BAD_ARGS, str(exc)))
    return Reply(req.id, True, result=result)


def after_request(actor: Any, req: Any, reply: Any) -> None:
    """After any request the config manager served: keep the packet tracer's sampling rate
    equal to the running config's ``[tracing].packet_sample_rate`` (a change, a reload, or a
    resumed state whose rate differs from the file steering read at start).  A rate set
    with ``maglev ctl trace --sample-every`` holds until the configured rate changes."""
    cfg = getattr(actor.manager, "config", None)
    if cfg is None or actor.region is None:
        return
    rate = int(getattr(getattr(cfg, "tracing", None), "packet_sample_rate", 0) or 0)
    if getattr(actor, "_obs_sample_rate", None) != rate:
        set_sampling(actor.region, rate)
        actor._obs_sample_rate = rate


def _trace(actor: Any, args: dict[str, Any]) -> dict[str, Any]:
    from maglev.control import ops as cops
    from maglev.control.protocol import BAD_ARGS, ProtocolError
    cops.check_args("trace", args)
    for k in ("vip", "src"):
        if k in args and (not isinstance(args[k], str) or not args[k]):
            raise ProtocolError(BAD_ARGS, f"argument {k!r} must be a non-empty string", k)
    for k in ("count", "sample_every"):
        if k in args and (not isinstance(args[k], int) or isinstance(args[k], bool)):
            raise ProtocolError(BAD_ARGS, f"argument {k!r} must be an integer", k)
    if "seconds" in args and (not isinstance(args["seconds"], int | float) or isinstance(args["seconds"], bool)):
        raise ProtocolError(BAD_ARGS, "argument 'seconds' must be a number", "seconds")
    armed = None
    if args:
        actor._trace_req_id = getattr(actor, "_trace_req_id", 0) + 1
        armed = arm_request(actor.region, vip=args.get("vip"), src=args.get("src"),
                            count=int(args.get("count", 0)), seconds=float(args.get("seconds", 0.0)),
                            sample_every=args.get("sample_every"), req_id=actor._trace_req_id)
    return {"armed": armed, "status": trace_block.status(actor.region),
            "packets": read_traces(actor.spec.run_dir)}


def _whereis(actor: Any, src: str, dst: str, quic_cid: str | None = None) -> dict[str, Any]:
    from maglev.observability.whereis import cluster_names, parse_cid, parse_flow, whereis_blob

    flow = parse_flow(src, dst)
    cid = parse_cid(quic_cid) if quic_cid is not None else None
    gen, blob = actor.region.tables.current()
    if gen == 0:
        raise ValueError("no tables are published yet")
    cfg = actor.manager.config if actor.manager is not None else None
    names, pools = {}, {}
    if cfg is not None:
        from maglev.pools import pool_paths

        names = {(v.key, str(ipaddress.ip_address(b.address))): b.key for v in cfg.vips for b in v.backends}
        pools = pool_paths(cfg)
    r = whereis_blob(blob, flow, workers=actor.region.n_workers, generation=gen, names=names, pools=pools,
                     quic_cid=cid, cluster_names=cluster_names(cfg) if cfg is not None else None)
    r["source"] = "running instance (tables now published; conntrack not visible from here)"
    return r


# ---------------------------------------------------------------------- trace requests


def parse_vip(text: str) -> tuple[Any, int, int]:
    """``ADDR[:PORT][/PROTO]`` (IPv6 in brackets when a port is given) -> (ip, port, proto)."""
    s = text.strip()
    proto = 0
    if "/" in s:
        s, _, p = s.rpartition("/")
        if p.lower() not in PROTO:
            raise TraceRequestError(f"--vip {text!r}: protocol must be tcp or udp")
        proto = PROTO[p.lower()]
    host, port = _split_port(s, text, "--vip")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise TraceRequestError(f"--vip {text!r}: {host!r} is not an IP address") from None
    return ip, port, proto


def _split_port(s: str, text: str, option: str) -> tuple[str, int]:
    """``[HOST]:PORT``, ``[HOST]``, ``HOST:PORT`` (one colon: not IPv6) or ``HOST`` ->
    (host, port; 0 when none)."""
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        if not rest:
            return host, 0
        if not rest.startswith(":"):
            raise TraceRequestError(f"{option} {text!r}: expected [ADDR]:PORT")
        return host, _port(rest[1:], text)
    if s.count(":") == 1:
        host, _, p = s.partition(":")
        return host, _port(p, text)
    return s, 0


def _port(p: str, text: str) -> int:
    if not p.isdigit() or not 0 <= int(p) <= 65535:
        raise TraceRequestError(f"{text!r}: port {p!r} must be 0..65535")
    return int(p)


def parse_src(text: str) -> tuple[Any, int, int]:
    """``ADDR[/PLEN][:PORT]`` or ``[V6ADDR]:PORT`` -> (ip, prefix length, port)."""
    s = text.strip()
    s, port = _split_port(s, text, "--src")
    try:
        net = ipaddress.ip_network(s, strict=False)
    except ValueError:
        raise TraceRequestError(f"--src {text!r}: not an address or prefix") from None
    return net.network_address, net.prefixlen, port


def arm_request(region: Any, *, vip: str | None = None, src: str | None = None, count: int = 0,
                seconds: float = 0.0, sample_every: int | None = None, req_id: int = 0) -> dict[str, Any]:
    """Check and publish a trace request (config manager only: the single writer).

    ``count`` packets matching ``vip``/``src`` are marked (within ``seconds`` if > 0);
    ``sample_every`` (when not None) overrides the configured sampling rate (0 = off).
    Returns what was armed."""
    if count < 0 or count > 1_000_000:
        raise TraceRequestError(f"count {count} must be 0..1000000")
    if (vip or src) and count == 0:
        raise TraceRequestError("a filter needs a packet count (--count N)")
    if count and not (vip or src):
        raise TraceRequestError("a packet count needs a filter (--vip and/or --src)")
    if sample_every is not None and not 0 <= sample_every <= 1 << 30:
        raise TraceRequestError(f"sample rate {sample_every} must be 0..2^30")
    if not 0 <= seconds <= 86400:  # (so written, NaN is refused too)
        raise TraceRequestError(f"seconds {seconds} must be 0..86400")
    armed: dict[str, Any] = {"count": count}
    dst = src_t = None
    if vip:
        dst = parse_vip(vip)
        armed["vip"] = {"address": str(dst[0]), "port": dst[1], "proto": dst[2]}
    if src:
        src_t = parse_src(src)
        armed["src"] = {"address": str(src_t[0]), "prefix": src_t[1], "port": src_t[2]}
    if sample_every is not None:
        armed["sample_every"] = sample_every
    deadline = time.monotonic_ns() + int(seconds * 1e9) if seconds and count else 0
    armed["seq"] = trace_block.arm(region, dst=dst, src=src_t, count=count, deadline_ns=deadline,
                                   sample_every=sample_every, req_id=req_id)
    return armed


def set_sampling(region: Any, sample_every: int) -> None:
    """Change only the sampling rate of the current request (config manager only)."""
    if not 0 <= sample_every <= 1 << 30:
        raise TraceRequestError(f"sample rate {sample_every} must be 0..2^30")
    trace_block.set_sampling(region, sample_every)
