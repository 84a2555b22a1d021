"""Entry point of every actor process.

``python -m maglev.actors.launch SPEC_JSON`` starts the actor described by the spec.

``python -m maglev.actors.launch --standby MOD[,MOD...]`` is a *standby* process: it
imports the listed modules (and the runtime's own: ZeroMQ, msgpack, the C extension,
OpenTelemetry) and then blocks reading one spec line from stdin.  The supervisor keeps
one standby ready, so replacing a crashed actor costs a pipe write instead of an
interpreter start and ~1 s of imports on a loaded two-core machine.  End of input (the
supervisor closed the pipe) makes a standby exit quietly.

A fresh interpreter per actor either way (the supervisor never forks itself): see
:mod:`maglev.actors.base` for why.  :func:`actor_argv` is the command line; it runs the
interpreter with ``-P`` so an actor imports the same ``maglev`` as the supervisor even when
the current folder holds another (unbuilt) copy of the source.
"""

from __future__ import annotations

import importlib
import os
import sys

from maglev.actors.base import ActorSpec, load_target


def python_argv() -> list[str]:
    """This interpreter, with the current folder kept off ``sys.path`` (``-P``).

    ``python -m mod`` puts the current folder first on ``sys.path``; started inside a source
    checkout it would import that checkout (without its C extension) instead of the installed
    package.  ``PYTHONPATH`` still applies (tests and developers rely on it).
    """
    return [sys.executable, "-P"]


def actor_argv(*args: str) -> list[str]:
    """Command line of an actor process: ``python -P -m maglev.actors.launch ARGS``."""
    return [*python_argv(), "-m", "maglev.actors.launch", *args]


def _standby(modules: str) -> int:
    for mod in ["zmq", "msgpack", "maglev.native", "maglev.telemetry", *filter(None, modules.split(","))]:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass  # the real start reports a missing module properly
    line = sys.stdin.readline()  # EOF too when the supervisor dies: the pipe closes
    if not line.strip():
        return 0
    sys.stdin.close()
    return _run(line)


def _run(spec_json: str) -> int:
    spec = ActorSpec.from_json(spec_json)
    cls = load_target(spec.target)
    return cls(spec).main()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--standby":
        return _standby(args[1])
    if len(args) != 1:
        print("usage: python -m maglev.actors.launch SPEC_JSON | --standby MODULES", file=sys.stderr)
        return 2
    return _run(args[0])


def _exit_now(rc: int) -> None:
    """Leave without interpreter finalization.  The actor has already released what it
    holds (teardown, tracing flushed, mailbox closed, ``bye`` sent); tearing down every
    imported module (OpenTelemetry, ZeroMQ, cffi) still took 0.2-0.5 s per process on a
    busy two-core machine, which the supervisor would wait for at every stop."""
    import logging

    logging.shutdown()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


if __name__ == "__main__":
    _exit_now(main())
