"""One forwarder instance as a list of actors over one shared-memory region.

``Pipeline`` is what ``maglev run`` drives: it creates the region (frame pool, rings,
tables), publishes the first tables built from the config, describes every actor as an
``ActorDef`` (steering, N workers, muxer, then any control-plane actors registered in
``EXTRA_ACTORS``), runs the :class:`~maglev.actors.supervisor.Supervisor`, reads the
counters straight from the region's stats blocks (single writer each, so reading them
from here is safe at any time), and at the end checks the frame accounting and removes
the region and the run directory.

CPU placement (``plan_cpus``): steering and the muxer share the first CPU (both are light
per packet and talk to every worker), workers go round-robin over all CPUs starting with
the second; with one CPU everything shares it.  Actors never spin while idle, so more actors than cores is fine.

Tables: the first generation is published here, before any worker starts; afterwards the
config manager (a control-plane actor, when registered) is the only writer.
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

from maglev.actors.supervisor import ActorDef, Supervisor
from maglev.config import Config, load

log = logging.getLogger("maglev.pipeline")

SAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "data" / "sample.toml"

# Control-plane actors added to every run: (factory(options, region_name) -> ActorDef | None).
# The config manager, health prober and BGP speaker register themselves here.
EXTRA_ACTORS: list[Callable[[PipelineOptions, str], ActorDef | None]] = []


def load_config(path: str | os.PathLike | None) -> Config:
    """The config at ``path``, or the built-in sample when ``path`` is empty."""
    return load(path or SAMPLE_CONFIG)


def open_region(name: str):
    from maglev.rings import Region

    return Region.attach(name)


_DROP_NAMES: list[str] = []


def drop_names() -> list[str]:
    """Drop reason names, read once from C (enum mg_drop order)."""
    if not _DROP_NAMES:
        from maglev.native import ffi, lib

        _DROP_NAMES.extend(ffi.string(lib.mg_drop_name(i)).decode() for i in range(lib.MG_DROP_COUNT))
    return _DROP_NAMES


def worker_stats(s: Any) -> dict[str, Any]:
    """A worker's stats block as a dict (drops by reason name, zeros left out)."""
    from maglev.native import lib

    drops = {}
    for i, name in enumerate(drop_names()):
        v = int(s[lib.MG_WS_DROPS + i])
        if v and i:
            drops[name] = v
    if int(s[lib.MG_WS_RESTART_DROPS]):
        drops["worker_restart"] = int(s[lib.MG_WS_RESTART_DROPS])
    return {
        "packets_in": int(s[lib.MG_WS_PACKETS_IN]),
        "bytes_in": int(s[lib.MG_WS_BYTES_IN]),
        "forwarded": int(s[lib.MG_WS_FORWARDED]),
        "bytes_out": int(s[lib.MG_WS_BYTES_OUT]),
        "icmp_sent": int(s[lib.MG_WS_ICMP_SENT]),
        "held": int(s[lib.MG_WS_HELD]),
        "tables_generation": int(s[lib.MG_WS_GENERATION]),
        "bursts": int(s[lib.MG_WS_BURSTS]),
        "spares_used": int(s[lib.MG_WS_SPARES_USED]),
        "dropped": drops,
    }


def check_interface_nic(spec: Any) -> None:
    """Before any process starts: the interface exists, and for afxdp, AF_XDP can be
    set up here (else one sentence saying why and which --nic to use instead)."""
    import socket

    from maglev.nic import NicSpecError

    try:
        socket.if_nametoindex(spec.arg)
    except OSError:
        raise NicSpecError(f"--nic {spec}: no network interface named {spec.arg!r} here") from None
    if spec.kind == "afxdp":
        from maglev.nic.afxdp import why_no_afxdp

        if reason := why_no_afxdp():
            raise NicSpecError(f"--nic {spec}: {reason}".replace("IFACE", spec.arg))


def remove_stale_regions(instance: str) -> list[str]:
    """Unlink regions this program made for ``instance`` whose supervisor is gone (killed
    with -9: nobody else would ever remove them).  Names are ``<instance>-<pid>-<hex6>``."""
    import re

    import psutil

    removed = []
    pat = re.compile(rf"^maglev-{re.escape(instance)}-(\d+)-[0-9a-f]{{6}}$")
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return removed
    for name in names:
        m = pat.match(name)
        if m and not psutil.pid_exists(int(m.group(1))):
            try:
                os.unlink(os.path.join("/dev/shm", name))
                removed.append(name)
                log.warning("removed a stale region", extra={"kv": {"name": name}})
            except OSError:
                pass
    return removed


def parse_cpus(text: str | None) -> list[int]:
    """``"0,2-3"`` -> [0, 2, 3]; empty -> the CPUs this process may use."""
    from maglev.errors import ConfigError

    if not text:
        return sorted(os.sched_getaffinity(0))
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if lo > hi:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ConfigError([f"--cpus: {part!r} is not a CPU number or range like 0-3"]) from None
    allowed = os.sched_getaffinity(0)
    bad = [c for c in out if c not in allowed]
    if bad:
        raise ConfigError([f"--cpus: CPU(s) {bad} not available here (available: {sorted(allowed)})"])
    return sorted(set(out))


def plan_cpus(n_workers: int, cpus: list[int]) -> dict[str, list[int]]:
    """Steering and muxer on cpus[0]; workers round-robin over all CPUs starting at
    cpus[1], so worker 0 has a core to itself and, with more workers than spare cores,
    the next ones also use what steering and the muxer leave (measured on 2 vCPUs: two
    workers both on cpu 1 ran at half the rate of one on each)."""
    plan = {"steering": [cpus[0]], "muxer": [cpus[0]]}
    for i in range(n_workers):
        plan[f"worker-{i}"] = [cpus[(1 + i) % len(cpus)]]
    return plan


@dataclass
class PipelineOptions:
    workers: int = 2
    config_path: str = ""
    nic: str = "gen"
    out: str = ""
    cpus: str = ""
    burst: int = 256
    n_frames: int = 0  # 0 = sized from workers and ring size
    # Slots per rx/tx/ret ring.  Deep rings let each actor do more per scheduling quantum
    # when the cores are shared (measured: 2048-4096 doubles throughput over 512 on a
    # loaded 2-vCPU machine); the pool grows with them.
    ring_size: int = 2048
    otlp_endpoint: str = ""
    control: str = ""
    log_level: str = "WARNING"
    seed: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    def __init__(self, opts: PipelineOptions, on_message: Callable[[str, dict], None] | None = None):
        from maglev.datapath.tables import build_tables
        from maglev.errors import ConfigError
        from maglev.nic import parse_nic, parse_out
        from maglev.rings import Region

        if not 1 <= opts.workers <= 64:
            raise ConfigError([f"--workers: {opts.workers} must be 1..64"])
        if not 1 <= opts.burst <= 256:
            raise ConfigError([f"burst: {opts.burst} must be 1..256"])
        self.opts = opts
        self.config = load_config(opts.config_path)
        self.nic_spec = parse_nic(opts.nic)
        self.out_spec = parse_out(opts.out or None, self.nic_spec)
        if self.nic_spec.kind == "gen":
            from maglev.nic.gen import GenNic, validate_options, vip_targets

            o = validate_options(self.nic_spec.option_dict())
            if o["ipv6"] > 0 and not any(v.ip.version == 6 for v in self.config.vips):
                # Same check the generator makes, but here, before any process starts.
                GenNic(vip_targets(self.config), ipv6=o["ipv6"], flows=1)
        if self.nic_spec.kind == "pcap" and not os.path.isfile(self.nic_spec.arg):
            raise ConfigError([f"--nic pcap:{self.nic_spec.arg}: no such file"])
        if self.nic_spec.kind in ("afpacket", "afxdp"):
            check_interface_nic(self.nic_spec)
        blob = build_tables(self.config)
        self.cpus = parse_cpus(opts.cpus)
        remove_stale_regions(self.config.instance.name)
        n_frames = opts.n_frames or max(4096, (opts.workers + 2) * opts.ring_size)
        self.region_name = f"{self.config.instance.name}-{os.getpid()}-{secrets.token_hex(3)}"
        self.region = Region.create(
            self.region_name, opts.workers, n_frames, opts.ring_size, max(len(blob) * 2, 1 << 20)
        )
        try:
            self.region.tables.publish(blob, [], 1.0)
            self.supervisor = Supervisor(
                self.actor_defs(),
                instance=self.config.instance.name,
                otlp_endpoint=opts.otlp_endpoint,
                log_level=opts.log_level,
                on_message=self._on_message,
            )
        except BaseException:
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
        plan = plan_cpus(o.workers, self.cpus)
        common = {"region": self.region_name, "config": o.config_path, "burst": o.burst}
        defs = [
            ActorDef(
                "steering",
                "maglev.actors.steering:Steering",
                {**common, "nic": str(self.nic_spec) if self.nic_spec.kind == "gen" else o.nic, "seed": o.seed},
                cpus=plan["steering"],
                stop_group=0,
            )
        ]
        for i in range(o.workers):
            defs.append(
                ActorDef(f"worker-{i}", "maglev.actors.worker:Worker", {**common, "index": i},
                         cpus=plan[f"worker-{i}"], stop_group=1)
            )
        defs.append(
            ActorDef("muxer", "maglev.actors.muxer:Muxer", {**common, "nic": o.nic, "out": o.out},
                     cpus=plan["muxer"], stop_group=2)
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

    # ------------------------------------------------------------------ run
    def start(self, go: bool = True) -> None:
        """Start every actor and wait until all are ready; then (``go``) let steering
        receive.  ``go=False`` leaves that to :meth:`go` (a stop requested meanwhile)."""
        self.supervisor.start()
        self.supervisor.wait_ready()
        if go:
            self.go()

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
        from maglev.native import lib
        from maglev.rings import SLOT_MUXER, SLOT_STEERING, worker_slot

        r = self.region
        st = r.stats(SLOT_STEERING)
        mx = r.stats(SLOT_MUXER)
        per_worker = []
        dropped: dict[str, int] = {}
        forwarded = 0
        for i in range(r.n_workers):
            w = worker_stats(r.stats(worker_slot(i)))
            forwarded += w["forwarded"]
            for k, v in w["dropped"].items():
                dropped[k] = dropped.get(k, 0) + v
            per_worker.append({"worker": i, **w})
        from maglev.actors.steering import SS_NIC_DROPS

        nic_drops = 0
        for reason, word in SS_NIC_DROPS.items():
            if int(st[word]):
                dropped[reason] = dropped.get(reason, 0) + int(st[word])
                nic_drops += int(st[word])
        tx_err = int(mx[lib.MG_MS_TX_ERRORS])
        if tx_err:
            dropped["tx_error"] = tx_err
        end = self.t_end or time.monotonic()
        elapsed = max(1e-9, end - self.t0) if self.t0 else 0.0
        packets_in = int(st[lib.MG_SS_RX_PACKETS]) + nic_drops
        # The rate is over steering's receive window (first to last received burst), not
        # the run's wall time, which includes start-up waits and the stop.
        first, last = int(st[lib.MG_SS_FIRST_RX_NS]), int(st[lib.MG_SS_LAST_RX_NS])
        window = (last - first) / 1e9 if last > first else 0.0
        return {
            "packets_in": packets_in,
            "forwarded": forwarded,
            "dropped": dict(sorted(dropped.items())),
            "tx_packets": int(mx[lib.MG_MS_TX_PACKETS]),
            "fallback": int(st[lib.MG_SS_FALLBACK]),
            "backpressure": int(st[lib.MG_SS_BACKPRESSURE]),
            "per_worker": per_worker,
            "restarts": self.supervisor.restarts,
            "elapsed_s": round(elapsed, 3),
            "rx_window_s": round(window, 3),
            "mpps": round(int(st[lib.MG_SS_RX_PACKETS]) / window / 1e6, 3) if window else 0.0,
        }

    def summary(self) -> dict[str, Any]:
        out = self.counters()
        if self.account_report is not None:
            out["pool"] = {"ok": self.account_report.ok, "frames": self.region.n_frames,
                           "detail": str(self.account_report)}
        nic = self.supervisor.stats().get("steering", {}).get("nic", {})
        if nic.get("error"):
            out["input_error"] = nic["error"]  # a damaged capture: replayed up to the damage
        return out
