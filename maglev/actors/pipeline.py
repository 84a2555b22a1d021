"""One forwarder instance as a list of actors over one shared-memory region.

``Pipeline`` is what ``maglev run`` drives: it creates the region (frame pool, rings,
tables), publishes the first tables built from the config, describes every actor as an
``ActorDef`` (steering, N workers, muxer, then any control-plane actors registered in
``maglev.actors.extra``), runs the :class:`~maglev.actors.supervisor.Supervisor`, reads the
counters straight from the region's stats blocks (single writer each, so reading them
from here is safe at any time), and at the end checks the frame accounting and removes
the region and the run directory.

CPU placement and the idle policy per CPU: ``maglev.actors.placement`` (re-exported here).  Which worker gets a flow: ``maglev.actors.dispatch`` (plain
by default; weighted by the placement with ``PipelineOptions.steer_cost``).  Actors never spin while idle, so more actors than cores is fine.

Tables: the first generation is published here, before any worker starts; afterwards the
config manager (a control-plane actor, when registered) is the only writer.

This module is a leaf: ``maglev run``, the benchmarks and the tests use it; no module of
``maglev/`` imports it (the counters it reports are decoded by ``maglev.rings.stats``, the
same code ``maglev ctl stats`` and Prometheus use).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maglev.actors.dispatch import DEFAULT_STEER_COST, dispatch_map
from maglev.actors.extra import EXTRA_ACTORS
from maglev.actors.leftovers import remove_dead_runs
from maglev.actors.placement import (  # also imported from here by tests and benches
    IDLE_POLL_US_DEFAULT,
    NAP_US_DEFAULT,
    doorbell_spin,
    idle_params,
    parse_cpus,
    plan_cpus,
)
from maglev.actors.sched import RT_PRIO_DEFAULT
from maglev.actors.supervisor import ActorDef, Supervisor
from maglev.config import load_config
from maglev.rings import forwarder_counters
from maglev.rings.worker_page import read_worker_page

log = logging.getLogger("maglev.pipeline")

# Control-plane actors added to every run (the config manager, health prober and BGP
# speaker register there): maglev.actors.extra.


def latency_us(hist: list[int], quantiles: tuple[float, ...] = (0.5, 0.99, 0.999)) -> dict[str, float]:
    """Quantiles of the muxer's latency histogram (``MG_MS_LAT_N`` words from
    ``MG_MS_LAT0``, ``PipelineOptions(latency=True)``) in microseconds: each quantile is
    the upper edge of the bucket it falls in (buckets are a quarter octave wide), so the
    answer errs high by at most ~19%.  Keys p50, p99, p999; plus ``packets``."""
    from maglev.native import lib

    total = sum(hist)
    out: dict[str, float] = {"packets": total}
    for q in quantiles:
        key = "p" + f"{q * 100:g}".replace(".", "")
        if not total:
            out[key] = 0.0
            continue
        need, run, b = q * total, 0, 0
        for b, c in enumerate(hist):  # noqa: B007 -- b is the answer after the break
            run += c
            if run >= need:
                break
        out[key] = round(int(lib.mg_lat_floor_ns(b + 1)) / 1000, 2) if b + 1 < len(hist) else float("inf")
    return out


def min_frames(workers: int, burst: int) -> int:
    """The smallest pool a run moves packets with: steering keeps a reserve of
    MG_SPARE_RESERVE frames on each worker's spare ring before it gives the NIC any, so with
    fewer frames than the reserves plus a burst it received nothing, ever (a run that hung)."""
    from maglev.native import lib

    return workers * int(lib.MG_SPARE_RESERVE) + burst


def _check_sizes(opts: PipelineOptions) -> None:
    """``--ring-size`` and ``--frames`` checked before anything starts (ConfigError, exit 2)."""
    from maglev.errors import ConfigError
    from maglev.native import lib

    rs, low, top = opts.ring_size, int(lib.MG_RING_MIN), int(lib.MG_RING_MAX)
    if not (low <= rs <= top and rs & (rs - 1) == 0):
        raise ConfigError([f"--ring-size {rs}: must be a power of two from {low} to {top}"])
    need = min_frames(opts.workers, opts.burst)
    if opts.n_frames and opts.n_frames < need:
        raise ConfigError([f"--frames {opts.n_frames}: too few for {opts.workers} worker(s) and --burst "
                           f"{opts.burst}: at least {need} (each worker's spare reserve of "
                           f"{int(lib.MG_SPARE_RESERVE)} frames, plus a burst)"])


def _folder_problem(path: Path) -> str:
    """Why folders cannot be made at ``path`` ('' when they can): its nearest existing
    ancestor is a file, or the process may not write there."""
    for q in (path, *path.parents):
        if not os.path.lexists(q):
            continue
        if not q.is_dir():
            return f"{q} is not a folder" if q.exists() else f"{q} is a dangling symbolic link"
        if not os.access(q, os.W_OK | os.X_OK):
            return f"{q}: permission denied"
        return ""
    return ""


def _check_folders(instance: str) -> None:
    """The run, control-socket and state folders checked before anything starts
    (ConfigError, exit 2): ``MAGLEV_STATE_DIR``, ``MAGLEV_RUN_DIR`` or ``XDG_RUNTIME_DIR``
    naming a file stopped the run only after every process had started (the config
    manager's fatal ``NotADirectoryError``), or with a traceback (``mkdtemp``)."""
    from maglev.actors.leftovers import run_base
    from maglev.control.endpoints import run_dir, state_dir
    from maglev.errors import ConfigError

    base = Path(run_base())  # mkdtemp makes the run folder here: it must exist
    if not base.is_dir():
        why = "no such folder" if not os.path.lexists(base) else _folder_problem(base)
        raise ConfigError([f"run folders go to {base}{_env_hint('XDG_RUNTIME_DIR')}: {why}"])
    for what, env, path in (("control socket folder", "MAGLEV_RUN_DIR", run_dir(instance)),
                            ("state folder", "MAGLEV_STATE_DIR", state_dir(instance)), ("", "", base)):
        why = _folder_problem(path)
        if why:
            where = f"{what} {path}" if what else f"run folders go to {path}"
            raise ConfigError([f"{where}{_env_hint(env or 'XDG_RUNTIME_DIR')}: {why}"])


def _env_hint(env: str) -> str:
    return f" (from ${env})" if os.environ.get(env) else ""


def _check_endpoints(opts: PipelineOptions, config: Any) -> None:
    """``--control`` and ``--out FILE`` checked before anything starts (ConfigError, exit 2):
    found by the config manager or the muxer at their setup, they stopped the run only
    after every process had started, with a traceback in the log for the first."""
    from maglev.control.endpoints import events_for
    from maglev.errors import ConfigError

    ctl = opts.control
    if ctl:
        if not ctl.startswith(("ipc://", "tcp://")) or ctl in ("ipc://", "tcp://"):
            raise ConfigError([f"--control {ctl!r}: expected ipc://PATH or tcp://HOST:PORT"])
        if ctl.startswith("tcp://") and not config.control.events_endpoint:
            try:
                events_for(ctl)
            except ValueError:
                raise ConfigError([f"--control {ctl!r}: expected tcp://HOST:PORT (the events socket "
                                   "takes PORT+1), or set [control] events_endpoint"]) from None
    if opts.out and opts.out not in ("null",) and not opts.out.startswith("afpacket:"):
        path = opts.out.removeprefix("pcap:")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ConfigError([f"--out {opts.out}: no such folder {folder}"])
        if os.path.isdir(path):
            raise ConfigError([f"--out {opts.out}: is a folder, not a capture file"])


@dataclass
class PipelineOptions:
    workers: int = 2
    config_path: str = ""
    nic: str = "gen"
    out: str = ""
    cpus: str = ""
    # Where workers run (placement.plan_cpus): "apart" keeps them off steering's CPU,
    # "spread" also uses it once every other CPU has a worker.
    placement: str = "apart"
    burst: int = 256
    n_frames: int = 0  # 0 = sized from workers and ring size
    # Slots per rx/tx/ret ring.  Deep rings let each actor do more per scheduling quantum
    # when the cores are shared (measured: 2048-4096 doubles throughput over 512 on a
    # loaded 2-vCPU machine); the pool grows with them.  4096 since 2026-12-08: on the quiet
    # 2-vCPU machine one worker forwarded 9.7-10.4 Mpps with 4096 or 8192 slots against
    # 4.9-6.0 with 2048 (the nap under load empties a 2048-slot ring before its consumer
    # wakes); docs/benchmarks.md, session 10.
    ring_size: int = 4096
    otlp_endpoint: str = ""
    control: str = ""
    log_level: str = "WARNING"
    seed: int = 1
    # The muxer records each packet's receive-to-transmit latency (null sink only; a cache
    # miss per frame, for benchmarks): muxer stats words MG_MS_LAT0.., see latency_us().
    latency: bool = False
    # Steering + muxer CPU per packet relative to a worker's (maglev/actors/dispatch.py):
    # weights the flow -> worker map so every core carries the same load (dispatch.STEER_COST
    # = 0.7 measured); 0 = equal shares, the default until fallback tells slow from stuck.
    steer_cost: float = DEFAULT_STEER_COST
    # Adaptive idle window in microseconds (IDLE_POLL_US_DEFAULT; 0 = sleep at once).
    idle_poll_us: int = IDLE_POLL_US_DEFAULT
    # Nap under load in microseconds (placement.NAP_US_DEFAULT, mg_loop.h; 0 = off).
    nap_us: int = NAP_US_DEFAULT
    # SCHED_FIFO base priority of steering (workers +1, muxer +2) while lightly loaded, when
    # the process may (maglev/actors/sched.py); 0 = SCHED_OTHER throughout.
    rt_prio: int = RT_PRIO_DEFAULT
    # A worker that has not consumed from its full rx ring for this long is dead or frozen:
    # steering drops its packets (counted: owner_stalled) instead of moving them to a worker
    # without their flows' entries (mg_steer.h MG_STEER_STALL_NS; 0 = off, always fall back).
    stall_ms: float = 50.0
    # Which packets steering may hand to another worker when their own worker's ring is
    # full (mg_steer.h MG_STEER_FB_*): "new-flows" (TCP SYNs and flowless packets: no
    # established flow moves backend), "any" (the paper's fallback: after a backend change a
    # fallen-back packet of an established flow may reach another backend) or "never".
    fallback: str = "new-flows"
    extra: dict[str, Any] = field(default_factory=dict)


FALLBACK_MODES = ("new-flows", "any", "never")  # mg_steer.h MG_STEER_FB_*: steering maps the name (FALLBACK)


class Pipeline:
    def __init__(self, opts: PipelineOptions, on_message: Callable[[str, dict], None] | None = None):
        from maglev.datapath.tables import build_tables
        from maglev.errors import ConfigError
        from maglev.nic import check_interface, parse_nic, parse_out
        from maglev.rings import Region

        if not 1 <= opts.workers <= 64:
            raise ConfigError([f"--workers: {opts.workers} must be 1..64"])
        if not 1 <= opts.burst <= 256:
            raise ConfigError([f"burst: {opts.burst} must be 1..256"])
        if not 0 <= opts.idle_poll_us <= 100_000:
            raise ConfigError([f"--idle-poll-us: {opts.idle_poll_us} must be 0..100000"])
        if not 0 <= opts.nap_us <= 10_000:
            raise ConfigError([f"--nap-us: {opts.nap_us} must be 0..10000"])
        if not 0 <= opts.rt_prio <= 97:
            raise ConfigError([f"--rt-prio: {opts.rt_prio} must be 0..97 (0 = SCHED_OTHER)"])
        self.opts = opts
        self.config = load_config(opts.config_path)
        from maglev.datapath.ctmem import check_memory

        self.cpus = parse_cpus(opts.cpus)
        if opts.steer_cost < 0:
            raise ConfigError([f"steer_cost: {opts.steer_cost} must be >= 0"])
        if not 0 <= opts.stall_ms <= 60_000:
            raise ConfigError([f"stall_ms: {opts.stall_ms} must be 0..60000"])
        if opts.fallback not in FALLBACK_MODES:
            raise ConfigError([f"--fallback: {opts.fallback!r} must be one of {', '.join(FALLBACK_MODES)}"])
        _check_folders(self.config.instance.name)
        # steering's flow -> worker map: fixed for the run, recorded in every table it makes
        self.plan = plan_cpus(opts.workers, self.cpus, opts.placement)  # where each actor runs (actor_defs)
        self.dispatch = dispatch_map(opts.workers, self.plan, opts.steer_cost)
        ctc = self.config.conntrack  # every worker's table must fit: a clear error, nothing started
        if ctc.shared:  # tables in /dev/shm: the ones adopted from the previous run are paid for
            from maglev.control.endpoints import state_dir
            from maglev.rings.conntrack_shm import SHM_DIR, plan_run, shm_pages

            inst = self.config.instance.name
            # another worker count, map, capacity or secret: the old entries placed by flow
            # into fresh tables the workers then adopt (connections keep their backend)
            from maglev.rings.conntrack_shm import rehome_run

            moved = rehome_run(inst, str(state_dir(inst)), opts.config_path, ctc.capacity,
                               self.config.flow_hash_key, opts.workers, self.dispatch.fp, self.dispatch.reta,
                               ctc.tcp_timeout_s * 1000, ctc.udp_timeout_s * 1000)
            if moved:
                logging.getLogger("maglev.conntrack").warning(moved)
            adopt, line = plan_run(inst, str(state_dir(inst)), opts.config_path, ctc.capacity,
                                   self.config.flow_hash_key, opts.workers, self.dispatch.fp)
            if adopt < opts.workers:
                check_memory(ctc.capacity, "off", copies=opts.workers - adopt)
                from maglev.rings.conntrack_shm import check_shm_space

                check_shm_space(ctc.capacity, opts.workers - adopt)  # the tmpfs has a limit of its own
            # shown without -v when a previous run's tables exist (adopted or refused)
            level = logging.INFO if line.startswith("connection tables: none") else logging.WARNING
            pages, pages_why = shm_pages(SHM_DIR)  # huge pages or not: ~2x at 1M flows
            logging.getLogger("maglev.conntrack").log(level, line, extra={"kv": {
                "pages": pages, "pages_why": pages_why}})
        else:
            check_memory(ctc.capacity, ctc.huge_pages, copies=opts.workers)
        self.nic_spec = parse_nic(opts.nic)
        self.out_spec = parse_out(opts.out or None, self.nic_spec)
        _check_endpoints(opts, self.config)  # before any process starts: one line, not an actor's failure
        _check_sizes(opts)
        if self.nic_spec.kind == "gen":
            from maglev.nic.gen import GenNic, validate_options, vip_targets

            o = validate_options(self.nic_spec.option_dict())
            if o["ipv6"] > 0 and not any(v.ip.version == 6 for v in self.config.vips):
                # Same check the generator makes, but here, before any process starts.
                GenNic(vip_targets(self.config), ipv6=o["ipv6"], flows=1)
            if o["flood"] > 0:  # flood mode needs an IPv4 TCP VIP: say so before any process starts
                GenNic(vip_targets(self.config), flood=o["flood"], flows=1)
        if self.nic_spec.kind == "pcap":
            if not os.path.isfile(self.nic_spec.arg):
                why = "not a regular file" if os.path.exists(self.nic_spec.arg) else "no such file"
                raise ConfigError([f"--nic pcap:{self.nic_spec.arg}: {why}"])
            from maglev.nic.pcapfile import PcapReader

            PcapReader(self.nic_spec.arg).close()  # not a capture (empty, bad magic): PacketError, nothing started
        if self.nic_spec.kind in ("afpacket", "afxdp"):
            check_interface(self.nic_spec)  # exists; AF_XDP possible here
        blob = build_tables(self.config)
        remove_dead_runs()  # run folders and regions of runs proven dead (maglev/actors/leftovers.py)
        n_frames = opts.n_frames or max(4096, (opts.workers + 2) * opts.ring_size)
        self.region_name = f"{self.config.instance.name}-{os.getpid()}-{secrets.token_hex(3)}"
        from maglev.control.endpoints import state_dir
        from maglev.control.tables import tables_area

        state = opts.extra.get("state") or str(state_dir(self.config.instance.name) / "state.json")
        self.region = Region.create(
            self.region_name, opts.workers, n_frames, opts.ring_size, tables_area(len(blob), state)
        )
        try:
            self.region.tables.publish(blob, [], 1.0)
            self.supervisor = Supervisor(
                self.actor_defs(),
                instance=self.config.instance.name,
                otlp_endpoint=opts.otlp_endpoint,
                log_level=opts.log_level,
                on_message=self._on_message,
                wake=self._wake,
                region=self.region_name,
                may_hold_packets=self._received_any,
            )
            # The run's accepted config, what every actor (re)start reads (never the file
            # on disk, which may be broken or not yet reloaded by then); the config manager
            # replaces it with what it resumes and with every change it accepts.
            from maglev.control.persist import (
                RUN_START_CONFIG,
                atomic_write,
                encode_state,
                source_id,
                write_run_config,
            )

            data = encode_state(self.config.to_dict(), source_id(opts.config_path) if opts.config_path else "")
            atomic_write(os.path.join(self.supervisor.run_dir, RUN_START_CONFIG), data)
            write_run_config(self.supervisor.run_dir, data)
        except BaseException:
            if getattr(self, "supervisor", None) is not None:
                self.supervisor.close()
            self.region.close()
            self.region.unlink()
            raise
        self._user_on_message = on_message
        self.eof = False
        self.t0 = 0.0
        self.t_end = 0.0
        self.account_report: Any = None

    def actor_defs(self) -> list[ActorDef]:
        o = self.opts
        plan = self.plan
        common = {"region": self.region_name, "config": o.config_path, "burst": o.burst}

        def spin(name: str) -> dict[str, int]:
            return {"spin": doorbell_spin(plan, name), **idle_params(plan, name, o.idle_poll_us, o.rt_prio, o.nap_us)}
        defs = [
            ActorDef(
                "steering",
                "maglev.actors.steering:Steering",
                {**common, "nic": str(self.nic_spec) if self.nic_spec.kind == "gen" else o.nic, "seed": o.seed,
                 "reta": list(self.dispatch.reta or b""), "stall_ns": round(o.stall_ms * 1e6),
                 "fallback": o.fallback,
                 **spin("steering")},
                cpus=plan["steering"],
                stop_group=0,
                drain_after_death=True,
            )
        ]
        for i in range(o.workers):
            defs.append(
                ActorDef(f"worker-{i}", "maglev.actors.worker:Worker", {**common, "index": i, "map_fp": self.dispatch.fp,
                                                                        **spin(f"worker-{i}")},
                         cpus=plan[f"worker-{i}"], stop_group=1, drain_after_death=True)
            )
        defs.append(
            ActorDef("muxer", "maglev.actors.muxer:Muxer", {**common, "nic": o.nic, "out": o.out, "latency": o.latency, **spin("muxer")},
                     cpus=plan["muxer"], stop_group=2, drain_after_death=True)
        )
        for factory in EXTRA_ACTORS:
            d = factory(o, self.region_name)
            if d is not None:
                defs.append(d)
        return defs

    def _on_message(self, name: str, msg: dict[str, Any]) -> None:
        if msg.get("type") == "eof" and name == "steering":
            self.eof = True
        if self._user_on_message is not None:
            self._user_on_message(name, msg)

    def _received_any(self, _name: str) -> bool:
        """Whether steering ever received a packet (before that no actor holds one: the
        supervisor starts no drain replacement for an actor killed while starting up)."""
        from maglev.native import lib
        from maglev.rings import SLOT_STEERING

        return int(self.region.stats(SLOT_STEERING)[lib.MG_SS_RX_PACKETS]) > 0

    def _wake(self, name: str) -> None:
        """A data-path actor sleeps on its doorbell, not its mailbox: raise the stop alert
        there so it stops now rather than at its next wake-up (up to 0.5 s)."""
        from maglev.rings import BELL_MUXER, BELL_STEERING, worker_bell

        if name == "steering":
            bell = BELL_STEERING
        elif name == "muxer":
            bell = BELL_MUXER
        elif name.startswith("worker-") and name[7:].isdigit() and int(name[7:]) < self.region.n_workers:
            bell = worker_bell(int(name[7:]))
        else:
            return
        self.region.bell(bell).alert()

    # ------------------------------------------------------------------ run
    def start(self, go: bool = True, abort: Callable[[], bool] | None = None) -> bool:
        """Start every actor and wait until all are ready; then (``go``) let steering
        receive.  ``go=False`` leaves that to :meth:`go`.  Returns False, without waiting
        for the rest of the start-up, as soon as ``abort()`` is true (a stop request)."""
        self.supervisor.start()
        if not self.supervisor.wait_ready(abort=abort):
            return False
        if go:
            self.go()
        return True

    def go(self) -> None:
        self.t0 = time.monotonic()
        self.supervisor.send("steering", "go")

    def poll(self, timeout_s: float) -> None:
        self.supervisor.poll(timeout_s)
        if self.supervisor.failed:
            from maglev.actors.supervisor import SupervisorError

            raise SupervisorError(self.supervisor.failed)

    def stop(self) -> None:
        self.t_end = time.monotonic()  # the drain that follows is not part of the rate
        self.supervisor.stop("run finished")
        self.account_report = self.region.account()

    def close(self) -> None:
        try:
            self.supervisor.close()
        finally:
            self.region.close()
            self.region.unlink()

    # ------------------------------------------------------------------ counters
    def counters(self) -> dict[str, Any]:
        c = forwarder_counters(self.region)
        st, mx = c["steering"], c["muxer"]
        per_worker = [{"worker": i, **w} for i, w in enumerate(c["workers"])]
        for row in per_worker:  # what only the worker holds: its metrics page
            page = read_worker_page(self.supervisor.run_dir, row["worker"])
            if page is not None:
                row["conntrack"] = page["conntrack"]
                row["fragment_table"] = page["fragments"]
        end = self.t_end or time.monotonic()
        elapsed = max(1e-9, end - self.t0) if self.t0 else 0.0
        # The rate is over steering's receive window (first to last received burst), not
        # the run's wall time, which includes start-up waits and the stop.
        first, last = st["first_rx_ns"], st["last_rx_ns"]
        window = (last - first) / 1e9 if last > first else 0.0
        return {
            "packets_in": st["packets_in"],
            "forwarded": c["forwarded"],
            "dropped": c["dropped"],
            "tx_packets": mx["tx_packets"],
            "fallback": st["fallback"],
            "backpressure": st["backpressure"],
            "per_worker": per_worker,
            "restarts": self.supervisor.restarts,
            "nic": c["nic"],
            "elapsed_s": round(elapsed, 3),
            "rx_window_s": round(window, 3),
            "mpps": round(st["rx_packets"] / window / 1e6, 3) if window else 0.0,
            **self._shed_by_vip(),
        }

    def _shed_by_vip(self) -> dict[str, Any]:
        """Overload drops by VIP key (VIP priority, steering's shed file), when any."""
        from maglev.rings.shed_file import read_shed

        shed = read_shed(self.supervisor.run_dir)
        return {"shed_by_vip": dict(sorted(shed.items()))} if shed else {}

    def summary(self) -> dict[str, Any]:
        out = self.counters()
        if self.account_report is not None:
            out["pool"] = {"ok": self.account_report.ok, "frames": self.region.n_frames,
                           "detail": str(self.account_report)}
        stats = self.supervisor.stats()
        tx = stats.get("muxer", {}).get("nic", {})
        if "fallback_packets" in tx:  # AF_XDP transmit: TX rings vs the AF_PACKET fallback
            out["afxdp_tx"] = {k: tx.get(k) for k in ("tx_packets", "tx_completed", "tx_ring_full", "tx_kicks",
                                                      "tx_kick_again", "tx_left", "fallback_packets", "attaches",
                                                      "detaches", "why_fallback")}
        nic = stats.get("steering", {}).get("nic", {})
        if "kernel_fill_empty" in nic:  # AF_XDP receive: where the kernel dropped (XDP_STATISTICS)
            out["afxdp_rx"] = {k: nic.get(k) for k in ("rx_packets", "rx_bursts", "fill_wakeups", "kernel_drops",
                                                       "kernel_rx_ring_full", "kernel_fill_empty", "xdp_mode")}
        if nic.get("error"):
            out["input_error"] = nic["error"]  # a damaged capture: replayed up to the damage
        return out
