"""The config manager's core: one owner of the configuration, all-or-nothing changes.

Every change goes through :meth:`ConfigManager.apply`, in this order:

1. **validate** -- the op builds a whole new ``Config`` through ``Config.from_dict``
   (maglev/control/ops.py); an invalid change raises before step 2;
2. **build** the tables for the new config and the current health ``down`` set;
3. **persist** the new config atomically (maglev/control/persist.py) on a thread, while
4. **publish** the tables (double-buffered shared memory, ``TablePublisher``) and
5. **wait** until every live worker reports the new generation; then join the writer and
   reply with the generation and the time each step took.

Persisting overlaps publication because an fsync costs 5-10 ms on this kind of disk, as
much as everything else together (docs/benchmarks.md).  Either way the reply comes only
after the state file holds the new config, so "accepted" always means "survives a
restart".  Failure handling keeps changes all-or-nothing: if publishing fails, the writer
is joined and the previous state file written back (``publish-failed``); if persisting
fails, the previous tables are published again and the reply is ``persist-failed`` -- the
generation moved on, the content did not.  A crash between rename and reply leaves the new
state, which the restart resumes (the operator saw no reply and re-checks with status).
A timeout in step 5 is not a failure of the change (the tables are live and workers that
restart pick them up); the reply says ``confirmed: false`` and a counter records it.

Health is not config: the prober's verdicts live in ``self.health`` and only shape the
tables (``down`` set), they are never persisted.  A new backend starts as up ("unknown"
counts as up), so a fresh start serves at once -- unless ``[health] initial = "unknown"``,
which keeps a checked backend out of the tables until its first good probe; the prober's first verdict on a check
takes effect immediately, later ones need rise/fall consecutive results
(maglev/health/state.py).

This class is synchronous and single-threaded on purpose: the actor's loop serialises
requests, so two changes can never interleave and no lock is needed (paper section 2.2,
config commits are atomic).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maglev import config as cfg
from maglev.config import Config
from maglev.control import ops, optable, persist
from maglev.control.protocol import (
    BAD_ARGS,
    INTERNAL,
    INVALID_CONFIG,
    NEEDS_FORCE,
    NEEDS_RESTART,
    PERSIST_FAILED,
    PUBLISH_FAILED,
    UNKNOWN_OP,
    ProtocolError,
    Reply,
    Request,
    invalid_config,
)
from maglev.control.publisher import TablePublisher
from maglev.control.tables import blob_size, vip_table
from maglev.control.tables import build_tables as default_build_tables
from maglev.errors import ConfigError, ControlError
from maglev.pools import backend_checks, effective_config

log = logging.getLogger("maglev.control")

Emit = Callable[[str, dict[str, Any]], None]
DownSet = frozenset[tuple[str, str]]


@dataclass
class HealthEntry:
    up: bool
    since: float
    detail: str = ""


@dataclass
class Counters:
    changes_applied: int = 0
    changes_unchanged: int = 0
    changes_rejected: int = 0
    publishes: int = 0
    publish_failures: int = 0
    persist_failures: int = 0
    unconfirmed: int = 0
    health_reports: int = 0
    health_transitions: int = 0
    vip_all_down: int = 0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)


# Upper bounds (seconds) of the apply-latency histogram: a few ms for a small change on an
# idle machine, up to the confirm timeout (2 s) and beyond for a big config under load.
APPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class LatencyHistogram:
    """Cumulative histogram of request-to-applied latencies (Prometheus buckets)."""

    bounds: tuple[float, ...] = APPLY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(APPLY_BUCKETS) + 1))  # last: +Inf
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        for i, b in enumerate(self.bounds):
            if seconds <= b:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += seconds
        self.count += 1

    def to_dict(self) -> dict[str, Any]:
        """{"buckets": [[le, cumulative count], ..., ["+Inf", count]], "sum", "count"}."""
        run, out = 0, []
        for b, n in zip((*self.bounds, "+Inf"), self.counts, strict=True):
            run += n
            out.append([b, run])
        return {"buckets": out, "sum": round(self.total, 6), "count": self.count}


class ConfigManager:
    """Owns the config, the health view and the published generation."""

    def __init__(
        self,
        config: Config,
        publisher: TablePublisher,
        *,
        source_path: str | Path | None = None,
        state_path: str | Path | None = None,
        source_sha256: str = "",
        emit: Emit | None = None,
        build_tables: Callable[..., bytes] | None = None,
        confirm_timeout: float = 2.0,
        run_dir: str | Path | None = None,
    ):
        self.config = config
        # The run folder whose config.json every actor (re)start reads (persist.py, "the
        # run's config"): rewritten with every accepted config.  None outside a run.
        self.run_dir = Path(run_dir) if run_dir else None
        self.publisher = publisher
        self.source_path = Path(source_path) if source_path else None
        self.state_path = Path(state_path) if state_path else None
        self.source_sha256 = source_sha256
        self.emit: Emit = emit or (lambda topic, body: None)
        builder = build_tables or default_build_tables
        # Pooled VIPs' weights follow health (maglev/pools.py): every build sees them.
        self.build_tables = lambda config, down=frozenset(): builder(effective_config(config, down), down=down)
        self.builder_name = "custom" if build_tables else "datapath"
        self.confirm_timeout = confirm_timeout
        self.health: dict[tuple[str, str], HealthEntry] = {}
        self.generation = 0
        self.confirmed = False
        self.started = time.time()
        self.last_change: dict[str, Any] = {}
        self.counters = Counters()
        # request (apply, reload, a backend change...) -> every live worker runs the new
        # tables; health-driven publications are not requests and are not counted
        self.apply_latency = LatencyHistogram()
        self._request_t0: float | None = None
        self._all_down: set[str] = set()
        self._table_cache: dict[tuple[Any, ...], Any] = {}
        self._checked_cache: tuple[Config, set[tuple[str, str]]] | None = None
        self._blob: bytes | None = None  # the tables now published (for a rollback)
        self._plain_cache: list[tuple[Config, dict[str, Any]]] = []
        # (vip key, backend address) -> packets forwarded, for preview's flows estimate
        self.backend_packets: Callable[[], dict[tuple[str, str], int]] | None = None
        # (backend ids, tables published now) -> (backend id -> live connection-table
        # entries over every worker's table, or None when they cannot all be read; what was
        # read): preview's exact flow count (set by the actor when the tables are shared)
        self.flow_census: Callable[[list[int], bytes], tuple[dict[int, int] | None, dict[str, Any]]] | None = None

    # ------------------------------------------------------------------ start-up

    @classmethod
    def open(
        cls,
        publisher: TablePublisher,
        *,
        source_path: str | Path | None,
        state_path: str | Path | None,
        restart: bool = False,
        **kw: Any,
    ) -> ConfigManager:
        """Load the config to start from and publish its tables.

        The state file (the last accepted config) wins while the source file is the one it
        descends from; an edited source file wins over the state file.  A ``restart``
        inside a run (the config manager was killed, ``run_dir`` given) resumes the run's
        accepted config whatever the files say: the operator's file may be broken or
        edited and not yet reloaded, and neither may take effect without a reload."""
        src_sha = persist.source_id(source_path) if source_path else ""
        config: Config | None = None
        resumed = False
        run = None
        if restart:
            try:
                run = persist.load_run_config(kw.get("run_dir"))
            except ConfigError as exc:  # never written torn (atomic); say so and go on as at start
                log.error("the run's accepted config is not usable (%s); starting as a new run would",
                          "; ".join(exc.problems))
        if run is not None:
            config, src_sha = run  # the hash of the file the run accepted: a reload compares with it
            resumed = True
        elif state_path:
            try:
                state = persist.load_state(state_path)
            except ConfigError as exc:
                if not source_path:
                    raise
                # Refusing to start would take the load balancer down over a stale file
                # (e.g. written before a config key was renamed): keep it aside, say so
                # loudly, and start from the operator's file.
                aside = _aside_path(Path(state_path))
                try:
                    os.replace(state_path, aside)
                except OSError as oe:
                    raise ControlError(f"state file {state_path} is not usable ({'; '.join(exc.problems)}) "
                                       f"and cannot be moved aside: {oe.strerror or oe}") from None
                log.error("state file %s is not usable (%s); moved to %s, starting from %s",
                          state_path, "; ".join(exc.problems), aside, source_path)
                state = None
            if state is not None:
                state_cfg, state_src = state
                if not source_path or state_src == src_sha:
                    config, resumed = state_cfg, True
                else:
                    log.warning("%s is not the file the last accepted state came from (edited, or "
                                "another file); starting from it", source_path)
        if config is None:
            config = cfg.load(source_path) if source_path else Config()
        mgr = cls(config, publisher, source_path=source_path, state_path=state_path, source_sha256=src_sha, **kw)
        mgr.resumed = resumed
        targets = [Path(state_path)] if state_path and (not resumed or run is not None) else []
        if mgr.run_dir is not None:
            targets.append(persist.run_config_path(mgr.run_dir))
        try:
            persist.atomic_write_all(targets, persist.encode_state(mgr.plain(config), src_sha))
        except OSError as exc:
            where = exc.filename or ", ".join(map(str, targets))
            if run is None:  # a start: say so in one line (no traceback), nothing runs yet
                raise ControlError(f"cannot write the state file {where}: {exc.strerror or exc}") from None
            # A restart inside a run (after a kill -9) resumes the config the run accepted
            # either way: a full or read-only disk must not take the run down (the supervisor
            # gives up on an actor whose start fails); the next accepted change writes it.
            log.error("cannot write %s (%s); going on with the run's accepted config", where,
                      exc.strerror or exc)
        mgr._publish_initial()
        return mgr

    resumed = False

    def _publish_initial(self) -> None:
        blob = self.build_tables(self.config, down=self.down_set())
        self.generation = self.publisher.publish(blob)
        self._blob = blob
        self.counters.publishes += 1
        self.confirmed = self.publisher.wait_all_seen(self.generation, self.confirm_timeout)
        self.emit("generation", {"generation": self.generation, "op": "start", "confirmed": self.confirmed})

    # ------------------------------------------------------------------ health view

    def down_set(self, config: Config | None = None) -> DownSet:
        """Backends left out of the tables: found dead and, with ``[health] initial =
        "unknown"``, checked ones without a verdict yet (of ``config``, default the current)."""
        config = config or self.config
        down = frozenset(k for k, e in self.health.items() if not e.up)
        if config.health.initial == "unknown":
            down |= frozenset(k for k in self._checked(config) if k not in self.health)
        return down

    def _checked(self, config: Config) -> set[tuple[str, str]]:
        if self._checked_cache is None or self._checked_cache[0] is not config:
            self._checked_cache = (config, _checked_pairs(config))
        return self._checked_cache[1]

    def _prune_health(self, config: Config) -> None:
        """Forget verdicts on backends that left the config or lost their health check."""
        keep = _checked_pairs(config)
        for k in list(self.health):
            if k not in keep:
                del self.health[k]

    def _check_all_down(self) -> None:
        """Loud when a VIP has backends but none of them is up (GLB #77): event, log, counter."""
        now_down = set()
        for v in self.config.vips:
            if not v.backends or not self.health:
                continue
            key = v.key
            entries = [self.health.get((key, b.key)) for b in v.backends]
            if all(e is not None and not e.up for e in entries):
                now_down.add(key)
        for key in sorted(now_down - self._all_down):
            self.counters.vip_all_down += 1
            log.error("VIP %s: every backend is down; its packets are dropped", key)
            self.emit("alert", {"kind": "vip-all-down", "vip": key, "generation": self.generation})
        for key in sorted(self._all_down - now_down):
            log.warning("VIP %s: a backend is up again", key)
            self.emit("alert", {"kind": "vip-recovered", "vip": key, "generation": self.generation})
        self._all_down = now_down

    # ------------------------------------------------------------------ apply

    def _timed_publish(self, new: Config, down: DownSet, op: str, persist_state: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            with _span("config.build_tables", op=op):
                blob = self.build_tables(new, down=down)
        except ConfigError as exc:
            raise invalid_config(exc.problems) from None
        except (ValueError, TypeError, OverflowError, OSError) as exc:
            # The config validated, yet its tables cannot be built (e.g. an address form the
            # validator let through, which inet_pton refuses): a gap in validation, logged
            # as such; for the caller an invalid config like any other, and nothing changed.
            log.error("config passed validation but its tables cannot be built (%s): %s",
                      op, traceback.format_exc())
            raise ProtocolError(INVALID_CONFIG, f"the tables cannot be built for this config: "
                                f"{type(exc).__name__}: {exc}") from None
        t1 = time.perf_counter()
        # What can make the publication fail (a worker still on the idle copy, no room in
        # /dev/shm) is checked now, before the state file moves on: after it, a failure was
        # a state written and written back (or, after a crash, kept).
        prepare = getattr(self.publisher, "prepare", None)
        if prepare is not None:
            try:
                prepare(len(blob))
            except Exception as exc:
                self.counters.publish_failures += 1
                raise ProtocolError(PUBLISH_FAILED, f"tables not published: {exc}; nothing changed") from None
        # The state file's write + fsync (milliseconds on a disk) overlaps publication; the
        # reply waits for both.  fsync releases the GIL, so this is real overlap.
        writer = None
        if persist_state and (self.state_path or self.run_dir):
            targets = [t for t in (self.state_path, self.run_dir and persist.run_config_path(self.run_dir)) if t]
            writer = _Writer(targets, persist.encode_state(self.plain(new), self.source_sha256))
        with _span("config.publish", op=op) as pub_span:  # workers' switch spans are its children
            try:
                gen = self.publisher.publish(blob)
            except Exception as exc:
                self.counters.publish_failures += 1
                if writer is not None:
                    writer.join()
                    self._restore_state()
                raise ProtocolError(PUBLISH_FAILED, f"tables not published: {exc}") from None
            t2 = time.perf_counter()
            confirmed = self.publisher.wait_all_seen(gen, self.confirm_timeout)
            t3 = time.perf_counter()
            pub_span.set_attribute("maglev.generation", gen)
            pub_span.set_attribute("maglev.confirmed", confirmed)
        self.counters.publishes += 1
        self.generation, self.confirmed = gen, confirmed
        if confirmed and self._request_t0 is not None:
            self.apply_latency.observe(t3 - self._request_t0)
        if writer is not None and (err := writer.join()) is not None:
            # Not durable: put the previous tables back so that nothing changed anywhere.
            self.counters.persist_failures += 1
            self._republish_previous()  # (a failed atomic write left the old state file)
            raise ProtocolError(PERSIST_FAILED, f"cannot write {self.state_path}: {err}; the previous "
                                "tables were published again")
        t4 = time.perf_counter()
        self._blob = blob
        if not confirmed:
            self.counters.unconfirmed += 1
            log.warning("generation %d: not every worker reported within %.1fs", gen, self.confirm_timeout)
        result = {
            "generation": gen,
            "confirmed": confirmed,
            "changed": True,
            "apply_ms": round((t4 - t0) * 1e3, 3),
            "build_ms": round((t1 - t0) * 1e3, 3),
            "publish_ms": round((t2 - t1) * 1e3, 3),
            "wait_ms": round((t3 - t2) * 1e3, 3),
            "persist_wait_ms": round((t4 - t3) * 1e3, 3),
        }
        self.last_change = {"op": op, "time": time.time(), **result}
        self.emit("generation", {"generation": gen, "op": op, "confirmed": confirmed, "apply_ms": result["apply_ms"]})
        return result

    def plain(self, config: Config) -> dict[str, Any]:
        """``config`` as plain data, remembered for the current and the last new config
        (each change needs the old one for the op and the new one for the state file)."""
        for c, d in self._plain_cache:
            if c is config:
                return d
        d = ops.plain(config)
        self._plain_cache = [*self._plain_cache[-1:], (config, d)]
        return d

    def _restore_state(self) -> None:
        data = persist.encode_state(ops.plain(self.config), self.source_sha256)
        targets = [p for p in (self.state_path, self.run_dir and persist.run_config_path(self.run_dir)) if p]
        try:
            persist.atomic_write_all(targets, data)
        except OSError as exc:
            log.error("could not restore %s: %s", ", ".join(map(str, targets)), exc.strerror or exc)

    def _save_run_config(self, data: bytes) -> None:
        if self.run_dir is not None:
            persist.write_run_config(self.run_dir, data)

    def _republish_previous(self) -> None:
        try:
            blob = self._blob if self._blob is not None else self.build_tables(self.config, down=self.down_set())
            self.generation = self.publisher.publish(blob)
            self.confirmed = self.publisher.wait_all_seen(self.generation, self.confirm_timeout)
            self.counters.publishes += 1
        except Exception:
            log.exception("could not publish the previous tables again")

    def apply(self, new: Config, op: str, force: bool = False) -> dict[str, Any]:
        """Make ``new`` the config: build, persist, publish, wait.  All or nothing.

        A change that would take every VIP away, or every backend of a VIP that had some, is
        refused with ``needs-force`` unless ``force`` is set: an empty ``[[vip]]`` list in a
        file given to ``maglev ctl apply`` must not black-hole all traffic by accident."""
        if new == self.config:
            self.counters.changes_unchanged += 1
            return {"generation": self.generation, "confirmed": self.confirmed, "changed": False, "apply_ms": 0.0}
        if new.instance.name != self.config.instance.name:
            # The name is the run's identity: its sockets, state folder, shared memory and
            # connection tables are named after it.  Accepted, it only relabelled status and
            # the state file (a half-applied change: `ctl --instance NEW` found nothing).
            raise invalid_config([f"instance.name: {new.instance.name!r} is not this run's name "
                                  f"{self.config.instance.name!r}: the name cannot change while maglev runs "
                                  "(its sockets, state and tables are named after it); restart maglev run "
                                  "to rename it"])
        if new.shards:
            # A reload of a file that gained [[shard]] sections, in a run that is not a shard
            # (a shard's run reads only its own section): ops.validate refuses the same for
            # every op; reload read the file with cfg.load and, forced, took a config of
            # shards and no VIP, persisted it and served nothing (session 10).
            raise invalid_config([ops.NOT_A_SHARD])
        emptied = emptying(self.config, new)
        if emptied:
            if not force:
                raise ProtocolError(NEEDS_FORCE, f"{op} would remove {emptied}; nothing changed. Send it with "
                                    "force=true (maglev ctl ... --force) if that is what you want", "force")
            log.warning("forced change removes %s", emptied, extra={"kv": {"op": op}})
        self.check_room(new, op)
        old_health = dict(self.health)
        self._prune_health(new)
        try:
            result = self._timed_publish(new, self.down_set(new), op, persist_state=True)
        except BaseException:
            self.health = old_health
            raise
        if new.conntrack != self.config.conntrack or \
                new.instance.flow_hash_secret != self.config.instance.flow_hash_secret:
            log.warning("%s changes [conntrack] or [instance] flow_hash_secret: the running data path keeps "
                        "the values it started with until maglev run starts again", op)
        if new.control != self.config.control:
            log.warning("%s changes [control]: the control sockets stay where they were bound until maglev run "
                        "starts again", op)
        self.config = new
        self.counters.changes_applied += 1
        self.emit("config", {"generation": self.generation, "op": op})
        self._check_all_down()
        return result

    def check_room(self, new: Config, op: str) -> None:
        """Refuse (``needs-restart``), before any work, a config whose tables do not fit the
        publisher's area (a run's is sized when it starts): the size comes from the config
        alone.  Before, the change built its tables, wrote the state file, failed to
        publish and wrote the old state back (``publish-failed``)."""
        cap = getattr(self.publisher, "capacity", None)
        if cap is None or self.builder_name != "datapath":
            return
        need = blob_size(new)
        if need > cap:
            raise ProtocolError(
                NEEDS_RESTART,
                f"{op}: the tables of this config need {need} bytes ({_mib(need)}); this run's tables "
                f"area holds {cap} ({_mib(cap)}), sized when maglev run "
                "started (twice its tables then, at least 256 MiB); nothing changed. Restart maglev run "
                "to apply it (the area is sized for the accepted config and the file it starts from)")

    def preview(self, new: Config) -> dict[str, Any]:
        """What applying ``new`` would move (maglev/control/preview.py): its tables are
        built with the current health verdicts and compared with the tables published now;
        nothing is persisted or published.  ``self.backend_packets`` (set by the actor)
        gives the traffic weights of the flows estimate."""
        from maglev.control.preview import backend_ids, diff_tables
        from maglev.datapath.tables import build_tables as data_path_tables

        self.check_room(new, "apply")  # what applying it would answer, before any work
        keys = {(v.key, b.key) for v in new.vips for b in v.backends}
        down = frozenset(k for k in self.down_set(new) if k in keys)
        t0 = time.perf_counter()
        try:  # the data path's format whatever this manager publishes (tests use a stand-in)
            blob = data_path_tables(effective_config(new, down), down=down)
        except ConfigError as exc:
            raise ProtocolError(INVALID_CONFIG, "; ".join(exc.problems), details=exc.problems) from None
        t1 = time.perf_counter()
        published = self._blob if self.builder_name == "datapath" else None
        old = published if published is not None else data_path_tables(
            effective_config(self.config, self.down_set()), down=self.down_set())
        flows, census = None, {"used": False, "why": "no connection-table reader (not in a run)"}
        if self.flow_census is not None:
            flows, census = self.flow_census(backend_ids(old, blob), old)
        packets = None
        if flows is None and self.backend_packets is not None:
            packets = self.backend_packets()
        return {"generation": self.generation, "changed": new != self.config, "committed": False,
                "build_ms": round((t1 - t0) * 1e3, 3), "conntrack": census,
                "vips": diff_tables(old, blob, packets, flows)}

    def report_health(self, reports: list[dict[str, Any]], full: bool = False) -> dict[str, Any]:
        """Verdicts from the prober: ``[{vip, backend, up, detail}]``.  Verdicts on backends
        not in the config are ignored (the prober may lag a config change).  With ``full``
        the list is the prober's whole view and replaces ours."""
        self.counters.health_reports += 1
        valid = _checked_pairs(self.config)
        new = dict(self.health) if not full else {}
        now = time.time()
        ignored = 0
        transitions = []
        for r in reports:
            key = (r["vip"], r["backend"])
            if key not in valid:
                ignored += 1
                continue
            old = self.health.get(key)
            if old is not None and old.up == r["up"]:
                new[key] = old
                continue
            new[key] = HealthEntry(r["up"], now, r.get("detail", ""))
            if (old.up if old else self.config.health.initial == "up") != r["up"]:
                transitions.append((key, r["up"], r.get("detail", "")))
        if full:
            for key, old in self.health.items():
                if key not in new and not old.up and self.config.health.initial == "up":
                    transitions.append((key, True, "no longer reported"))
        old_health, old_down = self.health, self.down_set()
        self.health = new
        result: dict[str, Any] = {"generation": self.generation, "changed": False, "ignored": ignored}
        if self.down_set() != old_down:
            try:
                result = {**self._timed_publish(self.config, self.down_set(), "health", persist_state=False), "ignored": ignored}
            except BaseException:
                self.health = old_health  # nothing changed: the prober will report again
                raise
        for (vip, backend), up, detail in transitions:
            self.counters.health_transitions += 1
            log.info("backend %s of %s is %s (%s)", backend, vip, "up" if up else "down", detail)
            self.emit("health", {"vip": vip, "backend": backend, "up": up, "detail": detail, "generation": self.generation})
            _span_event("health.transition", {"maglev.vip": vip, "maglev.backend": backend, "maglev.up": up,
                                              "maglev.detail": detail, "maglev.generation": self.generation})
        self._check_all_down()
        return result

    # ------------------------------------------------------------------ queries

    def _health_label(self, vip_key: str, backend_key: str, check_type: str = "none") -> str:
        if check_type == "none":
            return "none"
        e = self.health.get((vip_key, backend_key))
        return "unknown" if e is None else ("up" if e.up else "down")

    def table_for(self, vip_key: str) -> Any:
        """The MaglevTable of one VIP as currently published (cached per generation)."""
        i = ops.find_vip(self.config, vip_key)
        vip = self.config.vips[i]
        down = frozenset(k for k in self.down_set() if k[0] == vip.key)
        ck = (vip, down)
        t = self._table_cache.get(ck)
        if t is None:
            if len(self._table_cache) > 64:
                self._table_cache.clear()
            eff = effective_config(dataclasses.replace(self.config, vips=(vip,)), down).vips[0]
            t = self._table_cache[ck] = vip_table(eff, down)
        return t

    def status(self) -> dict[str, Any]:
        c = self.counters
        return {
            "instance": self.config.instance.name,
            "pid": os.getpid(),
            "generation": self.generation,
            "confirmed": self.confirmed,
            "uptime_s": round(time.time() - self.started, 3),
            "vips": len(self.config.vips),
            "backends": sum(len(v.backends) for v in self.config.vips),
            "backends_down": len(self.down_set()),
            "vips_all_down": sorted(self._all_down),
            "source": str(self.source_path or ""),
            "state": str(self.state_path or ""),
            "resumed": self.resumed,
            "table_builder": self.builder_name,
            "last_change": self.last_change,
            "counters": {k: v for k, v in vars(c).items()},
        }

    def vips(self) -> list[dict[str, Any]]:
        out = []
        for v in self.config.vips:
            key, down_set = v.key, self.down_set()
            down = sum(1 for b in v.backends if (key, b.key) in down_set)
            out.append(
                {
                    "vip": v.key,
                    "address": v.address,
                    "port": v.port,
                    "protocol": v.protocol,
                    "encap": v.encap,
                    "table_size": v.table_size,
                    "health_check": "pools" if v.pools else v.health.type,
                    "pools": [r.name for r in v.pools],
                    "backends": len(v.backends),
                    "backends_down": down,
                    "backends_drained": sum(1 for b in v.backends if b.weight == 0),
                    "all_down": v.key in self._all_down,
                }
            )
        return out

    def backends(self, vip_key: str) -> dict[str, Any]:
        i = ops.find_vip(self.config, vip_key)
        vip = self.config.vips[i]
        table = self.table_for(vip.key)
        counts = dict(zip(table.names, table.counts, strict=True))
        weights = dict(zip(table.names, table.weights, strict=True))
        leaves = {leaf.backend: leaf for leaf in vip.leaves}
        rows = []
        for j, check in backend_checks(vip):
            b = vip.backends[j]
            e = self.health.get((vip.key, b.key))
            n = counts.get(b.key, 0)
            leaf = leaves.get(b.key)
            rows.append(
                {
                    "backend": b.key,
                    "address": b.address,
                    "weight": leaf.weight if leaf else b.weight,  # a pooled one's: in its pool
                    "health": self._health_label(vip.key, b.key, check.type),
                    "health_detail": e.detail if e else "",
                    "entries": n,
                    "share": round(n / table.size, 6),
                    "packets": None,  # per-backend packet counters come from the data path's stats
                }
            )
            if leaf is not None:  # a pooled VIP's backend: where it sits, what it gets now
                rows[-1].update({"pool": "/".join(leaf.path), "backup": leaf.backup,
                                 "effective_weight": weights.get(b.key, 0)})
        out = {"vip": vip.key, "table_size": table.size, "generation": self.generation, "backends": rows}
        if vip.pools:
            out["tree"] = self._pool_tree(vip, rows)
        return out

    def _pool_tree(self, vip: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The VIP's pools as nested nodes (``ctl backends`` prints them as a tree): each pool
        with its weight, check, healthy share and whether its backup serves now."""
        from maglev.pools import _Tree

        by_name = {p.name: p for p in self.config.pools}
        down = self.down_set()
        key = vip.key
        tree = _Tree(by_name, lambda b: (key, b) not in down)
        by_backend = {r["backend"]: r for r in rows}

        def node(name: str, weight: int, backup: bool, depth: int) -> dict[str, Any]:
            p = by_name[name]
            kids: list[dict[str, Any]] = [{"backend": b.key, **by_backend[b.key]} for b in p.backends
                                          if b.key in by_backend]
            kids += [node(r.name, r.weight, False, depth + 1) for r in p.pools]
            if p.backup:
                kids.append(node(p.backup, 0, True, depth + 1))
            return {"pool": name, "weight": weight, "backup": backup, "check": p.health.type,
                    "healthy_share": round(float(tree.health(name)), 6),
                    "backup_below_percent": p.backup_below_percent if p.backup else None,
                    "backup_active": tree.backup_active(name), "members": kids}

        return [node(r.name, r.weight, False, 0) for r in vip.pools]

    # ------------------------------------------------------------------ dispatch

    def handle(self, req: Request) -> Reply:
        """Serve one decoded request.  Never raises: every failure becomes an error reply."""
        self.counters.requests += 1
        self._request_t0 = time.perf_counter()
        try:
            result = self._dispatch(req)
        except ProtocolError as exc:
            self.counters.errors[exc.code] = self.counters.errors.get(exc.code, 0) + 1
            if req.op in CHANGE_OPS:
                self.counters.changes_rejected += 1
            return Reply.failure(req.id, exc)
        except RecursionError:  # hostile nesting (msgpack allows ~1000 levels)
            self.counters.errors[BAD_ARGS] = self.counters.errors.get(BAD_ARGS, 0) + 1
            return Reply.failure(req.id, ProtocolError(BAD_ARGS, "arguments are nested too deeply", "args"))
        except Exception as exc:  # a bug: say so, keep serving, nothing was applied
            log.error("internal error serving %r: %s", req.op, traceback.format_exc())
            self.counters.errors[INTERNAL] = self.counters.errors.get(INTERNAL, 0) + 1
            return Reply.failure(req.id, ProtocolError(INTERNAL, f"{type(exc).__name__}: {exc}"))
        finally:
            self._request_t0 = None
        return Reply(req.id, True, result=result)

    def _dispatch(self, req: Request) -> Any:
        op, args = req.op, req.args
        if optable.check(op, args).owner != "config":  # argument names checked from the table
            raise ProtocolError(UNKNOWN_OP, f"{op!r} is not served by a bare config manager (it needs the "
                                "config-manager actor)", "op")
        change = ops.CHANGES.get(op)
        if change is not None:
            force = _bool(args, "force")
            if "force" in args:
                args = {k: v for k, v in args.items() if k != "force"}
            with _span("config.validate", op=op):
                new = change(self.config, args, self.plain(self.config))
            return self.apply(new, op, force=force)
        if op == "preview-config":  # `ctl apply --dry-run`: validate + build, commit nothing
            with _span("config.validate", op=op):
                new = ops.replace_config(self.config, args)
            return self.preview(new)
        if op == "reload":
            return self.reload(force=_bool(args, "force"))
        if op == "health-report":
            return self.report_health(_health_reports(args["reports"]), _bool(args, "full"))
        if op == "status":
            return self.status()
        if op == "vips":
            return self.vips()
        if op == "backends":
            return self.backends(ops.arg_str(args, "vip"))
        if op == "get-config":
            return {"generation": self.generation, "config": self.config.to_dict()}
        if op == "health":
            return [
                {"vip": k[0], "backend": k[1], "up": e.up, "since": e.since, "detail": e.detail}
                for k, e in sorted(self.health.items())
            ]
        raise ProtocolError(UNKNOWN_OP, f"unknown operation {op!r} (known: {', '.join(sorted(OPS))})", "op")

    def reload(self, force: bool = False) -> dict[str, Any]:
        if not self.source_path:
            raise ProtocolError(BAD_ARGS, "this instance was started without a config file to reload")
        try:
            new = cfg.load(self.source_path)
        except ConfigError as exc:
            raise invalid_config(exc.problems) from None
        old_sha = self.source_sha256
        self.source_sha256 = persist.source_id(self.source_path)
        try:
            result = self.apply(new, "reload", force=force)
        except BaseException:
            self.source_sha256 = old_sha
            raise
        if not result["changed"] and self.state_path and self.source_sha256 != old_sha:
            # Same config, edited file (comments...): record the new source hash.
            targets = [self.state_path]
            if self.run_dir is not None:
                targets.append(persist.run_config_path(self.run_dir))
            try:
                persist.atomic_write_all(targets, persist.encode_state(self.plain(self.config), self.source_sha256))
            except OSError as exc:
                self.source_sha256 = old_sha
                raise ProtocolError(PERSIST_FAILED, f"cannot write {self.state_path}: {exc}") from None
        return result


def _span(name: str, op: str) -> Any:
    """A child span of the current one (the control server's span of the request)."""
    from maglev.telemetry import get_tracer

    return get_tracer("maglev.config").start_as_current_span(name, attributes={"maglev.control.op": op})


def _span_event(name: str, attrs: dict[str, Any]) -> None:
    """An event on the current span (the control server's span of the prober's report)."""
    from opentelemetry import trace

    trace.get_current_span().add_event(name, attrs)


class _Writer:
    """Writes the state file (and the run's config) on a thread; ``join()`` returns the
    OSError, if any."""

    def __init__(self, paths: list[Path], data: bytes):
        self.error: OSError | None = None
        self._t = threading.Thread(target=self._run, args=(paths, data), name="maglev-persist", daemon=True)
        self._t.start()

    def _run(self, paths: list[Path], data: bytes) -> None:
        try:  # both files or neither (a full disk under the second one)
            persist.atomic_write_all(paths, data)
        except OSError as exc:
            self.error = exc

    def join(self) -> OSError | None:
        self._t.join()
        return self.error


OPS = optable.names("config")  # the ops this class serves (maglev/control/optable.py)
CHANGE_OPS = optable.CHANGE_OPS


def emptying(old: Config, new: Config) -> str:
    """What ``old`` -> ``new`` would leave empty: '' when nothing, else "every VIP" or
    "every backend of VIP ..." (VIPs that stay, had backends and have none left)."""
    if old.vips and not new.vips:
        return f"every VIP ({len(old.vips)})"
    before = {v.key: len(v.backends) for v in old.vips}
    gone = [v.key for v in new.vips if not v.backends and before.get(v.key)]
    if gone:
        return f"every backend of VIP {', '.join(gone)}"
    return ""


def _checked_pairs(config: Config) -> set[tuple[str, str]]:
    """(vip key, backend key) of every backend that has a health check (the VIP's, or for
    a pooled VIP its pool's)."""
    out = set()
    for v in config.vips:
        key = v.key
        out.update((key, v.backends[j].key) for j, h in backend_checks(v) if h.type != "none")
    return out


ASIDE_KEEP = 10  # unusable state files kept beside the state file (.invalid, .invalid.1 ...)


def _aside_path(state_path: Path) -> Path:
    """Where an unusable state file goes: ``state.json.invalid``, or when an earlier one is
    still there ``state.json.invalid.1`` ... ``.9``, so that a second bad file does not
    replace the first one (the operator's accepted config of an older run, perhaps the one
    to recover by hand).  With all ten taken the last is replaced (the disk stays bounded)."""
    first = Path(f"{state_path}.invalid")
    names = [first, *(Path(f"{first}.{i}") for i in range(1, ASIDE_KEEP))]
    return next((p for p in names if not os.path.lexists(p)), names[-1])


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


def _bool(args: dict[str, Any], key: str) -> bool:
    v = args.get(key, False)
    if not isinstance(v, bool):
        raise ProtocolError(BAD_ARGS, f"argument {key!r} must be true or false", key)
    return v


def _health_reports(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or len(raw) > 100_000:
        raise ProtocolError(BAD_ARGS, "argument 'reports' must be a list", "reports")
    out = []
    for i, r in enumerate(raw):
        f = f"reports[{i}]"
        if not isinstance(r, dict):
            raise ProtocolError(BAD_ARGS, f"{f} must be a map", f)
        ops.check_keys(r, ("vip", "backend", "up"), ("detail",))
        if not isinstance(r["up"], bool):
            raise ProtocolError(BAD_ARGS, f"{f}.up must be true or false", f"{f}.up")
        detail = r.get("detail", "")
        if not isinstance(detail, str):
            raise ProtocolError(BAD_ARGS, f"{f}.detail must be a string", f"{f}.detail")
        out.append({"vip": ops.arg_str(r, "vip"), "backend": ops.arg_str(r, "backend"), "up": r["up"], "detail": detail[:200]})
    return out
