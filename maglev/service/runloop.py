"""What ``maglev run``'s supervisor loop does for a service manager, once per tick:
readiness (``READY=1`` only when every actor said hello and every live worker runs the
published tables), the systemd watchdog, a one-line ``STATUS``, and SIGHUP → reload.

The reload goes through the same control request as ``maglev ctl reload`` (all-or-nothing:
the config manager validates the whole file, publishes, waits for every worker, persists,
or changes nothing) on the run's private ``ipc://`` socket, in a thread so the loop keeps
serving heartbeats while the config manager works.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from maglev.service.systemd import Notifier

log = logging.getLogger("maglev.service")

QUIESCENT = (1 << 64) - 1  # a worker's "seen" word while it is idle between bursts


def tables_ready(pipeline: Any) -> bool:
    """Every actor said hello, tables were published, and every worker reports the
    current generation (or is idle, which means it takes it at its next burst)."""
    sup = getattr(pipeline, "supervisor", None)
    region = getattr(pipeline, "region", None)
    if sup is None or region is None:
        return False
    if not all(c.hello for c in sup.children.values()):
        return False
    try:
        t = region.tables
        gen = t.generation()
        if gen == 0:
            return False
        return all(t.seen(w) in (gen, QUIESCENT) for w in range(t.n_workers))
    except Exception:  # a region closing under us: not ready
        return False


class ServiceLoop:
    """Call :meth:`tick` from the run loop; :meth:`request_reload` from a SIGHUP handler
    (it only sets a flag: safe in a signal handler)."""

    def __init__(self, pipeline: Any, notifier: Notifier | None = None, status_every_s: float = 5.0):
        self.p = pipeline
        self.n = notifier or Notifier()
        self.ready = False
        self.ready_at: float | None = None
        self.started = time.monotonic()
        self.status_every_s = status_every_s
        self._next_status = 0.0
        self._reload_wanted = False
        self._reload: threading.Thread | None = None
        self.reloads: list[dict[str, Any]] = []  # results, newest last

    # -- signals -----------------------------------------------------------------------
    def request_reload(self) -> None:
        self._reload_wanted = True

    def _control_endpoint(self) -> str:
        return f"ipc://{Path(self.p.supervisor.run_dir) / 'control.sock'}"

    def _do_reload(self) -> None:
        from maglev.control.client import ControlClient

        t0 = time.monotonic()
        try:
            with ControlClient(self._control_endpoint()) as c:
                r = c.call("reload", {}, timeout=30)
            out = {"ok": True, "result": r, "seconds": round(time.monotonic() - t0, 3)}
            log.warning("SIGHUP: config reloaded", extra={"kv": {"generation": (r or {}).get("generation")}})
        except Exception as exc:  # a refused reload changes nothing: say why, keep running
            out = {"ok": False, "error": str(exc), "seconds": round(time.monotonic() - t0, 3)}
            log.error("SIGHUP: reload refused, nothing changed: %s", exc)
        self.reloads.append(out)
        self.n.ready(status="reloaded" if out["ok"] else f"reload refused: {out['error']}"[:200])

    # -- the tick ----------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not self.ready and tables_ready(self.p):
            self.ready = True
            self.ready_at = now
            n_workers = self.p.region.n_workers if getattr(self.p, "region", None) else 0
            self.n.ready(status=f"forwarding with {n_workers} workers")
            log.info("ready: every actor is up and the tables are published",
                     extra={"kv": {"after_s": round(now - self.started, 3)}})
        self.n.watchdog(now)
        if self._reload_wanted and (self._reload is None or not self._reload.is_alive()):
            self._reload_wanted = False
            self.n.reloading()
            self._reload = threading.Thread(target=self._do_reload, name="sighup-reload", daemon=True)
            self._reload.start()
        if self.ready and self.n.enabled and now >= self._next_status:
            self._next_status = now + self.status_every_s
            try:
                c = self.p.counters()
                self.n.status(f"{c['packets_in']} packets in, {c['forwarded']} forwarded")
            except Exception:
                pass

    def stopping(self) -> None:
        self.n.stopping()

    def close(self, timeout_s: float = 5.0) -> None:
        if self._reload is not None:
            self._reload.join(timeout_s)
        self.n.close()
