"""Shards: several isolated forwarders on one host from one config file (docs/config.md,
"Shards"; docs/operations.md, "Running shards").

``maglev run`` given a file with ``[[shard]]`` sections starts one ``maglev run --shard
NAME`` process per shard and does nothing else: each is a supervisor of its own with its own
actors, shared-memory region, rings, CPUs, connection tables, control socket and BGP
speaker, so a crash, an overload or a refused reload in one never reaches another.  This
process only relays their output (each line prefixed with ``[NAME]``), forwards SIGINT,
SIGTERM and SIGHUP, and exits when every shard has exited (with the worst exit code).
Under systemd it speaks the notify protocol for all of them: READY=1 once every shard is
ready (maglev/service/shard_notify.py).
A shard that exits does not stop the others.

A shard process sets ``MAGLEV_SHARD`` (maglev.config.SHARD_ENV) for itself and every actor
it starts, so every load of the file -- the actors' start, ``maglev ctl reload``, SIGHUP --
validates the shared sections and that shard's section only and yields that shard's config.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from maglev.config import Config, shard_instance_name
from maglev.errors import MaglevError

_PR_SET_PDEATHSIG = 1


class ShardError(MaglevError):
    """A ``maglev run`` option that cannot apply to several shards at once."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The shard gets SIGTERM when the launcher dies (even by kill -9): no orphan forwarder."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def shard_out(out: str, name: str) -> str:
    """A per-shard transmit target: ``x.pcap`` -> ``x-NAME.pcap``; null / afpacket as is."""
    if not out or out == "null" or ":" in out:
        return out
    p = Path(out)
    return str(p.with_name(f"{p.stem}-{name}{p.suffix}"))


def shard_control(config: Config, name: str) -> str:
    """The control endpoint of shard ``name``: its ``[shard.control] endpoint``, else the
    default ipc socket of its instance name."""
    from maglev.control.endpoints import default_control

    s = config.shard(name)
    return s.control.endpoint or default_control(shard_instance_name(config.instance.name, name))


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None


def shard_argv(base: list[str], name: str) -> list[str]:
    return [sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--shard", name, *base]


def check_options(config: Config, given: dict[str, Any]) -> None:
    """Options of ``maglev run`` that name one thing and so cannot go to every shard."""
    problems = []
    if len(config.shards) > 1:
        for opt, why in (("control", "set [shard.control] endpoint per shard"),
                         ("metrics", "set metrics = \"ADDR:PORT\" per shard"),
                         ("cpus", "set cpus per shard")):
            if given.get(opt):
                problems.append(f"--{opt}: the config has {len(config.shards)} shards; {why}, "
                                f"or start one shard with --shard NAME")
    if problems:
        raise ShardError("\n".join(problems))


def launch_all(config: Config, base_argv: list[str], out: str, as_json: bool, echo: TextIO | None = None) -> int:
    """Run every shard of ``config`` as its own ``maglev run --shard`` process until all have
    exited; returns the worst exit code.  ``base_argv`` are the options passed on to each
    (without --out, which is made per shard)."""
    from maglev.service.shard_notify import ShardNotify

    echo = echo or sys.stdout
    children: list[_Child] = []
    lock = threading.Lock()
    # Under systemd: READY=1 once every shard is ready (maglev/service/shard_notify.py).
    notify = ShardNotify([s.name for s in config.shards])
    for s in config.shards:
        argv = shard_argv(base_argv, s.name)
        if out:
            argv += ["--out", shard_out(out, s.name)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                start_new_session=True, preexec_fn=_die_with_parent,
                                env=notify.child_env(s.name))
        notify.started(s.name, proc)
        children.append(_Child(s.name, proc))
    notify.start()

    def relay(c: _Child) -> None:
        assert c.proc.stdout is not None
        for line in c.proc.stdout:
            if as_json:
                c.lines.append(line)
                continue
            with lock:
                echo.write(f"[{c.name}] {line}")
                echo.flush()

    for c in children:
        c.reader = threading.Thread(target=relay, args=(c,), name=f"shard-{c.name}", daemon=True)
        c.reader.start()

    def forward(signum: int, _frame: Any) -> None:
        sig = signal.SIGTERM if signum == signal.SIGINT else signum
        if sig == signal.SIGHUP:
            notify.reload_requested()
        else:
            notify.stopping()
        for c in children:
            if c.proc.poll() is None:
                try:
                    c.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        rcs = {}
        for c in children:
            rcs[c.name] = c.proc.wait()
            if c.reader is not None:
                c.reader.join(10)
            if c.proc.stdout is not None:
                c.proc.stdout.close()
    finally:
        notify.close()
        for sig, h in old.items():
            signal.signal(sig, h)
        for c in children:  # only when this process is interrupted hard: stop what is left
            if c.proc.poll() is None:
                c.proc.terminate()
                try:
                    c.proc.wait(30)
                except subprocess.TimeoutExpired:
                    c.proc.kill()
                    c.proc.wait()
    if as_json:
        summary: dict[str, Any] = {}
        for c in children:
            try:
                summary[c.name] = json.loads(c.lines[-1]) if c.lines else None
            except json.JSONDecodeError:
                summary[c.name] = None
        echo.write(json.dumps({"shards": summary, "exit_codes": rcs}) + "\n")
        echo.flush()
    for name, rc in rcs.items():
        if rc:
            print(f"maglev run: shard {name} exited with code {rc}", file=sys.stderr)
    return max((rc if rc >= 0 else 128 - rc for rc in rcs.values()), default=0)


def select(name: str) -> None:
    """Make this process (and every actor it starts) shard ``name``."""
    from maglev.config import SHARD_ENV

    os.environ[SHARD_ENV] = name
