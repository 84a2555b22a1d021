"""The health prober: schedules deduplicated probes with bounded concurrency.

Design
------
* **Deduplication.**  Every (VIP, backend) pair maps to a :class:`CheckSpec`; equal specs
  (same address, type, port, parameters, interval, timeout, rise, fall) are one probe whose
  verdict fans out to every pair that uses it.  The paper (section 3.3) deduplicates by
  backend IP; we keep the port and parameters in the key because two services on one host
  can fail independently.
* **Bounded everything.**  At most ``max_concurrent`` probes are in flight (an
  ``asyncio.Semaphore``), capped at a quarter of ``RLIMIT_NOFILE``; each probe has a hard
  timeout (maglev/health/checks.py); a check whose previous probe is still running or
  waiting for a slot is skipped, not queued, so a slow network cannot pile up work.  A probe
  that failed because *we* ran out of descriptors does not count against the backend.
* **Fixed-rate schedule with spread.**  A new check's first probe is placed at a random
  point within its first interval (bounded to one second) so a config with a thousand
  backends does not probe them all in the same millisecond; after that every check runs
  once per interval.
* **Verdicts, not samples.**  Only transitions (and the first verdict) are reported, as
  ``{vip, backend, up, detail}``; :meth:`Prober.snapshot` gives the whole view, which the
  actor sends after (re)connecting so a restarted config manager relearns it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from maglev.config import Config
from maglev.health.checks import CheckSpec, Result, run_check
from maglev.health.state import RiseFall
from maglev.pools import backend_checks

log = logging.getLogger("maglev.health")

Report = dict[str, Any]
ReportFn = Callable[[list[Report]], Awaitable[None] | None]
DEFAULT_MAX_CONCURRENT = 128


def fd_budget(requested: int) -> int:
    """Concurrency allowed by the descriptor limit: a quarter of the soft RLIMIT_NOFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, soft // 4))


@dataclass
class Check:
    spec: CheckSpec
    state: RiseFall
    targets: set[tuple[str, str]] = field(default_factory=set)
    next_due: float = 0.0
    busy: bool = False
    last: Result | None = None
    probes: int = 0


@dataclass
class ProberStats:
    probes: int = 0
    ok: int = 0
    failed: int = 0
    local_errors: int = 0
    skipped_busy: int = 0
    transitions: int = 0
    max_in_flight: int = 0
    unprobeable: int = 0


class Prober:
    def __init__(
        self,
        report: ReportFn,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        probe: Callable[[CheckSpec], Awaitable[Result]] = run_check,
        spread: bool = True,
    ):
        self.report = report
        self.max_concurrent = fd_budget(max_concurrent)
        self.probe = probe
        self.spread = spread
        self.checks: dict[CheckSpec, Check] = {}
        self.stats = ProberStats()
        self._sem: asyncio.Semaphore | None = None
        self._in_flight = 0
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: list[Report] = []

    # ------------------------------------------------------------------ config

    def set_config(self, config: Config) -> None:
        """Recompute the checks from a config, keeping the state of checks that stay."""
        wanted: dict[CheckSpec, set[tuple[str, str]]] = {}
        unprobeable = 0
        for vip in config.vips:
            # A flat VIP's check is its own; a pooled VIP's backend has its pool's check, and
            # equal (address, check) pairs of different pools and VIPs are one probe.
            for j, health in backend_checks(vip):
                b = vip.backends[j]
                spec = CheckSpec.for_backend(vip, b, health, config.instance)
                if spec is None:
                    if health.type != "none":
                        unprobeable += 1
                    continue
                wanted.setdefault(spec, set()).add((vip.key, b.key))
        if unprobeable:
            log.warning("%d backends have a health check but no port to probe (VIP port 0 and health.port 0)",
                        unprobeable)
        self.stats.unprobeable = unprobeable
        now = time.monotonic()
        new: dict[CheckSpec, Check] = {}
        for spec, targets in wanted.items():
            old = self.checks.get(spec)
            if old is not None:
                added = targets - old.targets
                old.targets = targets
                new[spec] = old
                if old.state.up is not None:  # tell about pairs that joined a known verdict
                    self._pending.extend(self._reports(old, added, old.state.up))
            else:
                delay = random.uniform(0, min(spec.interval_s, 1.0)) if self.spread else 0.0
                new[spec] = Check(spec, RiseFall(spec.rise, spec.fall), set(targets), next_due=now + delay)
        self.checks = new
        if self._wake is not None:
            self._wake.set()

    def snapshot(self) -> list[Report]:
        """Every known verdict (pairs whose check has not answered yet are left out)."""
        out: list[Report] = []
        for c in self.checks.values():
            if c.state.up is not None:
                out.extend(self._reports(c, c.targets, c.state.up))
        return out

    @staticmethod
    def _reports(c: Check, targets: set[tuple[str, str]], up: bool) -> list[Report]:
        detail = f"{c.spec.describe()}: {c.last.detail}" if c.last else c.spec.describe()
        return [{"vip": v, "backend": b, "up": up, "detail": detail} for v, b in sorted(targets)]

    # ------------------------------------------------------------------ running

    async def _deliver(self, reports: list[Report]) -> None:
        if not reports:
            return
        r = self.report(reports)
        if inspect.isawaitable(r):
            await r

    async def _probe(self, c: Check) -> None:
        assert self._sem is not None
        try:
            async with self._sem:
                self._in_flight += 1
                self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
                try:
                    res = await self.probe(c.spec)
                finally:
                    self._in_flight -= 1
            c.probes += 1
            self.stats.probes += 1
            if res.local:
                self.stats.local_errors += 1
                log.warning("probe %s not counted: %s", c.spec.describe(), res.detail)
                return
            self.stats.ok += res.ok
            self.stats.failed += not res.ok
            c.last = res
            changed = c.state.observe(res.ok)
            if changed is not None and self.checks.get(c.spec) is c:
                self.stats.transitions += 1
                await self._deliver(self._reports(c, c.targets, changed))
        finally:
            c.busy = False

    async def run_once(self) -> float:
        """Start the probes that are due; return seconds until the next one is due."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrent)
        if self._pending:
            pending, self._pending = self._pending, []
            await self._deliver(pending)
        now = time.monotonic()
        nearest = 1.0
        for c in list(self.checks.values()):
            if c.next_due <= now:
                # Fixed rate; if we fell far behind, restart the phase rather than burst.
                c.next_due = max(c.next_due + c.spec.interval_s, now)
                if c.busy:
                    self.stats.skipped_busy += 1
                else:
                    c.busy = True
                    t = asyncio.create_task(self._probe(c))
                    self._tasks.add(t)
                    t.add_done_callback(self._tasks.discard)
            nearest = min(nearest, c.next_due - now)
        return max(nearest, 0.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until ``stop`` is set; in-flight probes are cancelled on the way out."""
        self._wake = asyncio.Event()
        try:
            while not stop.is_set():
                delay = await self.run_once()
                self._wake.clear()
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
                _, pending = await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
        finally:
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
