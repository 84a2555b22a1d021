"""Standalone speaker: ``python -m maglev.bgp --config FILE [--announce PREFIX ...]``.

Runs the ``[bgp]`` section of a maglev config file as its own process, for the interop
tests (which SIGKILL it) and the lab.  Commands arrive one per line on stdin::

    announce 203.0.113.10/32
    withdraw 203.0.113.10/32
    ready        (with --wait-ready: the initial announcements are in, End-of-RIB may go)
    state
    quit

and everything goes out as JSON lines on stdout: ``{"event": "ready", ...}`` once
listening, every speaker event (``bgp.state``, ``bgp.route``), a reply per command
(``{"reply": ...}`` or ``{"error": ...}``), and ``{"event": "stopped"}`` at the end.
SIGTERM/SIGINT/``quit`` stop gracefully (CEASE to every peer); stdin reaching EOF does
not stop the speaker, nor does SIGHUP (ignored, logged).  Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
from typing import Any

from maglev.actors.sched import BGP_NICE, set_nice
from maglev.bgp.speaker import Speaker
from maglev.config import load
from maglev.errors import MaglevError


def _out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def handle_command(speaker: Speaker, line: str) -> dict[str, Any] | None:
    """One stdin command to its reply; None for ``quit`` (handled by the caller)."""
    words = line.split()
    if not words:
        return {"error": "empty command"}
    cmd, args = words[0].lower(), words[1:]
    try:
        if cmd in ("announce", "withdraw") and len(args) == 1:
            changed = speaker.announce(args[0]) if cmd == "announce" else speaker.withdraw(args[0])
            return {"reply": cmd, "prefix": args[0], "changed": changed}
        if cmd == "ready" and not args:
            return {"reply": "ready", "changed": speaker.initial_complete()}
        if cmd == "state" and not args:
            return {"reply": "state", "announced": speaker.announced(), "peers": speaker.peers_state()}
        if cmd == "quit" and not args:
            return None
    except ValueError as exc:
        return {"error": str(exc)}
    return {"error": f"unknown command {line.strip()!r} (announce P | withdraw P | ready | state | quit)"}


async def _amain(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    speaker = Speaker(cfg.bgp, on_event=_out, restarting=args.restarting, defer_eor=args.wait_ready)
    for p in args.announce:
        speaker.announce(p)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    # SIGHUP (`systemctl kill -s HUP`, a closed terminal) would kill the process by
    # default and every router would drop the session: there is nothing to reload here.
    loop.add_signal_handler(signal.SIGHUP, logging.getLogger("maglev.bgp").warning, "SIGHUP ignored: the speaker has nothing to reload")

    def on_line(line: str | None) -> None:
        if line is None:  # EOF: keep running until a signal
            return
        if not line.strip():
            return
        reply = handle_command(speaker, line)
        if reply is None:
            done.set()
        else:
            _out(reply)

    def post(line: str | None) -> bool:
        # The loop may close (after ``quit`` or a signal) while this thread still reads:
        # posting to a closed loop raises RuntimeError, which means "stop reading".
        try:
            loop.call_soon_threadsafe(on_line, line)
        except RuntimeError:
            return False
        return True

    def reader() -> None:
        # A thread, because stdin may be a file, a pipe or /dev/null.
        for line in sys.stdin:
            if not post(line):
                return
        post(None)

    await speaker.start()
    threading.Thread(target=reader, name="stdin", daemon=True).start()
    _out({"event": "ready", "listen": [list(a) for a in speaker.listen_addresses], "announced": speaker.announced()})
    await done.wait()
    await speaker.stop(args.shutdown_message)
    _out({"event": "stopped"})
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m maglev.bgp") -> int:
    ap = argparse.ArgumentParser(prog=prog, description="Run maglev's BGP speaker on its own.")
    ap.add_argument("--config", required=True, help="maglev TOML config; its [bgp] section is used")
    ap.add_argument("--announce", action="append", default=[], metavar="PREFIX", help="announce at start (repeatable)")
    ap.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    ap.add_argument(
        "--restarting", action="store_true",
        help="a restart of a speaker that died: say so in the OPEN (RFC 4724; needs bgp.graceful_restart_time)",
    )
    ap.add_argument(
        "--wait-ready", action="store_true",
        help="hold End-of-RIB until the stdin command `ready` (at most graceful_restart_time s), "
             "for announcements that come after start",
    )
    ap.add_argument(
        "--nice", type=int, default=BGP_NICE,
        help=f"lower the nice value to this (default {BGP_NICE}: KEEPALIVEs before packet work; docs/bgp.md)",
    )
    ap.add_argument("--shutdown-message", default="maglev BGP speaker stopping", help="CEASE text on stop (RFC 9003)")
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_nice(args.nice)
    try:
        return asyncio.run(_amain(args))
    except (MaglevError, ValueError, OSError) as exc:
        print(f"maglev-bgp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
