"""Observability operations of the control socket: ``stats``, ``trace``, ``whereis``.

The config manager actor routes these ops here with one line (it owns the attached
shared-memory region, the run directory and the ConfigManager).  They read shared memory
and change no configuration; ``trace`` writes only the packet tracer's request words.

* ``stats`` {} -> :func:`maglev.telemetry.metrics.collect` snapshot.
* ``trace`` {vip?, src?, count?, seconds?, sample_every?} -> arms a request (a filter needs
  ``count``); {} alone returns the tracer's status.  The result carries the packets traced
  so far for the latest request (steering writes them to ``packet-traces.json`` in the run
  directory as they come home).
* ``whereis`` {src, dst} (``dst`` = ``ADDR:PORT/PROTO``) -> :func:`whereis_blob` over the
  tables now published.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

OPS = ("stats", "trace", "whereis")
TRACES_FILE = "packet-traces.json"


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
            cops.check_keys(args, ())
            from maglev.telemetry.metrics import collect

            result: Any = collect(actor.region, actor.spec.run_dir, instance=actor.spec.instance,
                                  manager=actor.manager)
        elif req.op == "trace":
            result = _trace(actor, args)
        else:
            cops.check_keys(args, ("src", "dst"))
            result = _whereis(actor, cops.arg_str(args, "src"), cops.arg_str(args, "dst"))
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
        from maglev.telemetry.tracer import set_sampling

        set_sampling(actor.region, rate)
        actor._obs_sample_rate = rate


def _trace(actor: Any, args: dict[str, Any]) -> dict[str, Any]:
    from maglev.control import ops as cops
    from maglev.control.protocol import BAD_ARGS, ProtocolError
    from maglev.telemetry.tracer import arm_request, request_status

    cops.check_keys(args, (), ("vip", "src", "count", "seconds", "sample_every"))
    for k in ("vip", "src"):
        if k in args and not isinstance(args[k], str):
            raise ProtocolError(BAD_ARGS, f"argument {k!r} must be a string", k)
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
    return {"armed": armed, "status": request_status(actor.region),
            "packets": read_traces(actor.spec.run_dir)}


def read_traces(run_dir: str | Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((Path(run_dir) / TRACES_FILE).read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def write_traces(run_dir: str | Path, records: list[dict[str, Any]]) -> None:
    path = Path(run_dir) / TRACES_FILE
    tmp = path.with_suffix(f".{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(path)


def _whereis(actor: Any, src: str, dst: str) -> dict[str, Any]:
    import ipaddress

    from maglev.telemetry.whereis import parse_flow, whereis_blob

    flow = parse_flow(src, dst)
    gen, blob = actor.region.tables.current()
    if gen == 0:
        raise ValueError("no tables are published yet")
    cfg = actor.manager.config if actor.manager is not None else None
    names = {}
    if cfg is not None:
        names = {(v.key, str(ipaddress.ip_address(b.address))): b.key for v in cfg.vips for b in v.backends}
    r = whereis_blob(blob, flow, workers=actor.region.n_workers, generation=gen, names=names)
    r["source"] = "running instance (tables now published; conntrack not visible from here)"
    return r
