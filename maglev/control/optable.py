"""The one table of control operations: name -> arguments -> owner -> persistence -> docs.

Every operation the config-manager actor serves is one :class:`Op` row here.  The row is
the single source for

* **validation of argument names**: :func:`check` refuses an unknown op (``unknown-op``,
  listing the known ones) and unknown or missing arguments (``bad-args``) before any
  handler runs; the handlers then check types and values;
* **routing**: ``owner`` says which code serves it -- ``config`` the
  :class:`~maglev.control.manager.ConfigManager`, ``observability``
  ``maglev/observability/ops.py``, ``scaleout`` the config-manager actor
  (``maglev/actors/config_manager.py``, for the supervisor's controller);
* **persistence**: ``changes_config`` ops go through ``ConfigManager.apply`` (validated,
  persisted to the state file, ``force`` allowed); the others change nothing on disk;
* **the CLI and the docs**: ``ctl`` names the ``maglev`` command that sends it;
  ``python -m maglev.control.optable`` prints the Markdown table that
  docs/control-protocol.md carries ("Operations at a glance"), and a test keeps the two equal.

Adding an operation: add its row here, its handler where ``owner`` says, its section in
docs/control-protocol.md (and paste the regenerated table).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from maglev.control.protocol import BAD_ARGS, UNKNOWN_OP, ProtocolError


@dataclass(frozen=True)
class Op:
    name: str
    owner: str  # "config" | "observability" | "scaleout"
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    changes_config: bool = False  # validated, persisted, may need "force"
    ctl: str = ""  # the command line that sends it
    summary: str = ""


_CHANGE = ("force",)

TABLE: tuple[Op, ...] = (
    Op("replace-config", "config", ("config",), _CHANGE, True, "maglev ctl apply FILE [--force]",
       "replace the whole config"),
    Op("add-vip", "config", ("vip",), _CHANGE, True, "", "add a VIP (a `[[vip]]` table)"),
    Op("remove-vip", "config", ("vip",), _CHANGE, True, "", "remove a VIP"),
    Op("update-vip", "config", ("vip", "set"), _CHANGE, True, "", "change a VIP's settings (not its backends)"),
    Op("add-backend", "config", ("vip", "backend"), _CHANGE, True, "maglev ctl add-backend VIP ADDRESS",
       "add a backend to a VIP"),
    Op("remove-backend", "config", ("vip", "backend"), _CHANGE, True,
       "maglev ctl remove-backend VIP BACKEND [--force]", "remove a backend"),
    Op("set-weight", "config", ("vip", "backend", "weight"), _CHANGE, True,
       "maglev ctl set-weight VIP BACKEND W", "set a backend's weight (0 drains)"),
    Op("drain", "config", ("vip", "backend"), _CHANGE, True, "maglev ctl drain VIP BACKEND", "weight 0"),
    Op("reload", "config", (), _CHANGE, True, "maglev ctl reload [--force]", "re-read the config file"),
    Op("preview-config", "config", ("config",), (), False, "maglev ctl apply --dry-run FILE",
       "validate and build a config's tables, commit nothing; per VIP the share that would move"),
    Op("health-report", "config", ("reports",), ("full",), False, "", "verdicts from the health prober"),
    Op("status", "config", (), (), False, "maglev ctl status", "generation, counts, counters"),
    Op("vips", "config", (), (), False, "maglev ctl vips", "one row per VIP"),
    Op("backends", "config", ("vip",), (), False, "maglev ctl backends VIP", "a VIP's backends and table share"),
    Op("get-config", "config", (), (), False, "maglev ctl config", "the running config"),
    Op("health", "config", (), (), False, "maglev ctl health", "every health verdict"),
    Op("stats", "observability", (), (), False, "maglev ctl stats", "every counter (as Prometheus)"),
    Op("trace", "observability", (), ("vip", "src", "count", "seconds", "sample_every"), False,
       "maglev ctl trace", "arm or read the packet tracer"),
    Op("whereis", "observability", ("src", "dst"), ("quic_cid",), False, "maglev whereis SRC DST",
       "which backend a flow goes to"),
    Op("drain-instance", "scaleout", (), (), False, "maglev ctl drain-instance",
       "withdraw this instance's VIPs from the routers"),
    Op("resume-instance", "scaleout", (), (), False, "maglev ctl resume-instance", "announce them again"),
)

BY_NAME: dict[str, Op] = {op.name: op for op in TABLE}
NAMES: tuple[str, ...] = tuple(BY_NAME)
CHANGE_OPS: tuple[str, ...] = tuple(op.name for op in TABLE if op.changes_config)


def names(owner: str) -> tuple[str, ...]:
    return tuple(op.name for op in TABLE if op.owner == owner)


def check(op_name: str, args: dict[str, Any]) -> Op:
    """The op's row, after checking its argument names; raises ``unknown-op`` / ``bad-args``."""
    op = BY_NAME.get(op_name)
    if op is None:
        raise ProtocolError(UNKNOWN_OP, f"unknown operation {op_name!r} (known: {', '.join(sorted(NAMES))})", "op")
    allowed = op.required + op.optional
    for k in args:
        if not isinstance(k, str) or k not in allowed:
            raise ProtocolError(BAD_ARGS, f"unknown argument {k!r} for {op.name}", str(k))
    for k in op.required:
        if k not in args:
            raise ProtocolError(BAD_ARGS, f"missing argument {k!r} for {op.name}", k)
    return op


def markdown() -> str:
    """The "Operations at a glance" table of docs/control-protocol.md."""
    rows = ["| op | arguments | changes config | served by | command | what |", "|---|---|---|---|---|---|"]
    for op in TABLE:
        args = ", ".join([f"`{a}`" for a in op.required] + [f"`{a}`?" for a in op.optional]) or "—"
        rows.append(f"| `{op.name}` | {args} | {'yes (persisted)' if op.changes_config else 'no'} | {op.owner} | "
                    f"{f'`{op.ctl}`' if op.ctl else '—'} | {op.summary} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
