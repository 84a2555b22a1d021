"""`maglev run`: the forwarder -- steering, N packet workers and a muxer as processes on
shared-memory rings, under a supervisor (this process)."""

from __future__ import annotations

import atexit
import gc
import json
import os
import signal
import sys
import time
from typing import Any

import click

from maglev_cli.params import FiniteFloatRange


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _live_line(c: dict, prev: dict | None, dt: float) -> str:
    rate = (c["packets_in"] - (prev["packets_in"] if prev else 0)) / dt if dt > 0 else 0.0
    dropped = sum(c["dropped"].values())
    restarts = sum(c["restarts"].values())
    workers = " ".join(f"w{w['worker']}={_fmt(w['packets_in'])}" for w in c["per_worker"])
    return (
        f"[{c['elapsed_s']:7.1f}s] in={_fmt(c['packets_in'])} ({rate / 1e6:.2f} Mpps) "
        f"fwd={_fmt(c['forwarded'])} drop={_fmt(dropped)} tx={_fmt(c['tx_packets'])} "
        f"fallback={_fmt(c['fallback'])} restarts={restarts} | {workers}"
    )


def _summary_text(s: dict) -> str:
    lines = [
        f"elapsed {s['elapsed_s']} s: {s['packets_in']} packets in ({s['mpps']} Mpps over "
        f"{s['rx_window_s']} s of receiving), "
        f"{s['forwarded']} forwarded, {sum(s['dropped'].values())} dropped, "
        f"{s['tx_packets']} transmitted, {s['fallback']} steered to a fallback worker",
    ]
    for reason, n in s["dropped"].items():
        lines.append(f"  dropped {reason}: {n}")
    for w in s["per_worker"]:
        lines.append(f"  worker {w['worker']}: in {w['packets_in']} forwarded {w['forwarded']}")
    r = {k: v for k, v in s["restarts"].items() if v}
    lines.append(f"  restarts: {r if r else 'none'}")
    if "pool" in s:
        lines.append(f"  frames: {s['pool']['detail']}")
    if x := s.get("afxdp_tx"):
        why = f" (last: {x['why_fallback']})" if x.get("fallback_packets") and x.get("why_fallback") else ""
        lines.append(f"  AF_XDP transmit: {x['tx_packets']} through the TX rings, {x['fallback_packets']} "
                     f"through the AF_PACKET fallback{why}; took steering's sockets {x['attaches']} time(s); "
                     f"kicks {x.get('tx_kicks')} ({x.get('tx_kick_again')} EAGAIN), bursts leaving frames in the "
                     f"ring {x.get('tx_left')}")
    if x := s.get("afxdp_rx"):
        lines.append(f"  AF_XDP receive: {x['rx_packets']} packets in {x['rx_bursts']} bursts ({x['xdp_mode']} XDP); "
                     f"kernel drops: RX ring full {x['kernel_rx_ring_full']}, fill ring empty "
                     f"{x['kernel_fill_empty']}, other {x['kernel_drops']}; fill kicks {x['fill_wakeups']}")
    return "\n".join(lines)


def _check_config(config_path: str | None, nic: str) -> Any:
    """Validate the config before anything starts (ConfigError: exit 2, one line per
    problem) and refuse what cannot work: the generator NIC sends only to the config's
    VIPs, chosen when it starts, so a config without VIPs gives it nothing to send.  Any
    other NIC may start empty (VIPs come later over the control socket): a warning."""
    from maglev.config import load_config
    from maglev.control.curve import check_key_files
    from maglev.errors import ConfigError

    conf = load_config(config_path)
    check_key_files(conf)  # a tcp:// control endpoint's CURVE keys, as the config manager loads them
    if conf.vips:
        return conf
    src = config_path or "the config"
    if nic.split(":", 1)[0] == "gen":
        raise ConfigError([f"vip: {src} has no VIP, and the traffic generator (--nic gen) sends only to "
                           "the config's VIPs as they are when it starts; add a [[vip]] or use another --nic"])
    click.echo(f"maglev run: warning: {src} has no VIP: every packet is dropped (no_vip) until VIPs "
               "are added over the control socket (maglev ctl apply FILE, or add-vip)", err=True)
    return conf


def _passthrough(workers: int | None, config_path: str, nic: str | None, exit_on_eof: bool, as_json: bool,
                 otlp_endpoint: str, burst: int, ring_size: int, frames: int, verbose: int, log_format: str,
                 control: str, metrics: str, cpus: str, stall_ms: float = 50.0,
                 idle_poll_us: int | None = None, rt_prio: int | None = None,
                 nap_us: int | None = None, fallback: str = "new-flows", placement: str = "apart") -> list[str]:
    """The options of this `maglev run` that each shard's `maglev run --shard` gets too."""
    argv = ["--config", config_path, "--burst", str(burst), "--ring-size", str(ring_size),
            "--log-format", log_format, "--stall-ms", str(stall_ms), "--fallback", fallback,
            "--placement", placement]
    for opt, v in (("--workers", workers), ("--nic", nic), ("--otlp-endpoint", otlp_endpoint),
                   ("--frames", frames), ("--control", control), ("--metrics", metrics), ("--cpus", cpus)):
        if v:
            argv += [opt, str(v)]
    if idle_poll_us is not None:
        argv += ["--idle-poll-us", str(idle_poll_us)]
    if rt_prio is not None:
        argv += ["--rt-prio", str(rt_prio)]
    if nap_us is not None:
        argv += ["--nap-us", str(nap_us)]
    if exit_on_eof:
        argv.append("--exit-on-eof")
    if as_json:
        argv.append("--json")
    if verbose:
        argv.append("-" + "v" * verbose)
    return argv


@click.command("run")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Packet worker processes (default: the shard's workers, else 2).")
@click.option("--config", "config_path", type=click.Path(),
              help="TOML config (default: the built-in sample config).")
@click.option("--nic", default=None,
              help="gen:flows=N,syn=F,size=B,ipv6=F,seconds=S,packets=N,rate=PPS,flood=S (docs/actors.md) | pcap:FILE | afpacket:IFACE "
                   "(default: gen).")
@click.option("--out", default=None, help="Transmit side: null, FILE.pcap or afpacket:IFACE.")
@click.option("--exit-on-eof", is_flag=True,
              help="Stop once a finite input (capture, generator limit) is drained and flushed.")
@click.option("--json", "as_json", is_flag=True, help="Print only a final JSON stats object.")
@click.option("--cpus", default="", help="CPUs to use, e.g. 0-1 or 0,2 (default: the shard's cpus, else all available).")
@click.option("--otlp-endpoint", default="", help="OTLP/HTTP collector, e.g. http://127.0.0.1:4318.")
@click.option("--metrics", default="", metavar="ADDR:PORT",
              help="Serve Prometheus metrics on http://ADDR:PORT/metrics (default: off).")
@click.option("--control", default="", help="Control socket endpoint (ipc://... or tcp://...).")
@click.option("--burst", type=click.IntRange(1, 256), default=256, show_default=True,
              help="Packets per burst.")
@click.option("--placement", type=click.Choice(["apart", "spread"]), default="apart", show_default=True,
              help="Where workers run: apart (on the CPUs after the first; steering and the muxer have the "
                   "first to themselves) or spread (also on the first once every other CPU has a worker); "
                   "docs/actors.md.")
@click.option("--ring-size", type=int, default=4096, show_default=True,
              help="Slots per rx/tx/ret ring (power of two).")
@click.option("--idle-poll-us", type=click.IntRange(0, 100_000), default=None,
              help="After its last packet a data-path actor polls its rings this long before it sleeps "
                   "(PAUSE alone on a CPU, sched_yield when sharing one; default 0 = sleep at once, e.g. 200; "
                   "docs/actors.md).")
@click.option("--rt-prio", type=click.IntRange(0, 97), default=None,
              help="SCHED_FIFO priority of steering (workers +1, muxer +2) while they are lightly loaded, "
                   "when the process may (root or CAP_SYS_NICE); a busy actor drops to SCHED_OTHER "
                   "(default 0 = SCHED_OTHER throughout; 1 on a host whose data-path CPUs run nothing else; docs/actors.md).")
@click.option("--nap-us", type=click.IntRange(0, 10_000), default=None,
              help="Under a heavy stream (>= 64 packets since its rings were last empty) a data-path actor "
                   "sleeps this long on the clock when they run dry, instead of on its doorbell: its "
                   "producers then pay no wake-ups (default 100; 0 = off; docs/actors.md).")
@click.option("--stall-ms", type=FiniteFloatRange(0, 60_000), default=50.0, show_default=True,
              help="A worker whose full rx ring it has not consumed from for this long is dead or frozen: "
                   "steering drops its packets (counted, owner_stalled) instead of moving its flows to "
                   "another worker (0 = off: always fall back).")
@click.option("--fallback", type=click.Choice(["new-flows", "any", "never"]), default="new-flows", show_default=True,
              help="Which packets steering may hand to another worker when their own worker's ring is full: "
                   "new-flows (a TCP SYN: no established connection ever moves backend), any (the paper's "
                   "fallback: after a backend change such a packet may reach another backend) or never; the "
                   "others wait for their worker (back pressure; docs/actors.md).")
@click.option("--frames", type=click.IntRange(0, 1 << 22), default=0,
              help="Frames in the pool (default: sized from workers and ring size).")
@click.option("-v", "--verbose", count=True, help="Actor logs on stderr (-v info, -vv debug).")
@click.option("--log-format", type=click.Choice(["auto", "logfmt", "journal", "json"]), default="auto",
              show_default=True,
              help="Log lines: logfmt, journal (<N> priority prefix; auto when stderr is the journal) or json.")
@click.option("--latency", is_flag=True, hidden=True,
              help="Record each packet's receive-to-transmit latency in the muxer's stats (null sink; tests).")
@click.option("--shard", default="", metavar="NAME",
              help="Run only this [[shard]] of the config (default: every shard, one process each).")
def run(workers, config_path, nic, out, exit_on_eof, as_json, cpus, otlp_endpoint, metrics, control,
        placement, burst, ring_size, stall_ms, fallback, frames, verbose, log_format, latency, shard, idle_poll_us, rt_prio,
        nap_us) -> None:
    """Run the forwarder until Ctrl-C (or the end of a finite input).

    A config with [[shard]] sections runs each shard as its own isolated forwarder
    (docs/operations.md, "Running shards")."""
    from maglev import shards as sh
    from maglev.config import Config, check_rereadable, read_bytes, read_document

    if config_path:
        read_bytes(config_path)  # a file that cannot be read at all: that line first
        check_rereadable(config_path)  # not only with root's DAC override (dropped after the start)
    if shard:
        if not config_path:
            raise click.UsageError("--shard needs --config (the file with the [[shard]] sections)")
        from maglev.config import load_shard

        sh.select(shard)  # before any load: this process and its actors see the shard's config
        _, own = load_shard(config_path, shard)  # shared sections + this shard's section only
        workers = workers or own.workers or None
        cpus = cpus or own.cpus
        metrics = metrics or own.metrics
        nic = nic or own.nic or None
        if cpus:  # the supervisor, its standby processes and the control-plane actors too:
            from maglev.actors.pipeline import (
                parse_cpus,  # a restart in a shard costs only its own cores
            )

            os.sched_setaffinity(0, parse_cpus(cpus))
    elif config_path:
        whole = Config.from_dict(read_document(config_path))  # every section, checked together
        if whole.shards:
            given = {"control": control, "metrics": metrics, "cpus": cpus}
            sh.check_options(whole, given)
            base = _passthrough(workers, config_path, nic, exit_on_eof, as_json, otlp_endpoint, burst, ring_size,
                                frames, verbose, log_format, control, metrics, cpus, stall_ms, idle_poll_us, rt_prio,
                                nap_us, fallback, placement)
            if latency:
                base.append("--latency")
            sys.exit(sh.launch_all(whole, base, out or "", as_json))

    from maglev.actors import pipeline as pl
    from maglev.config import SAMPLE_CONFIG
    from maglev.telemetry.logs import set_instance, setup_logging

    # At exit, move every object out of the collector's reach first: the final garbage
    # collections of interpreter shutdown then skip them (0.3-1 s -> ~0.05 s for this
    # process on a busy two-core machine, most of the time from SIGTERM to exit).
    atexit.register(gc.freeze)
    workers = workers or 2
    level = ("WARNING", "INFO", "DEBUG")[min(verbose, 2)]
    os.environ["MAGLEV_LOG_FORMAT"] = log_format  # the actors inherit it
    setup_logging("supervisor", level, fmt=log_format)
    nic_given = nic is not None
    nic = nic or "gen"
    conf = _check_config(config_path, nic)
    set_instance(conf.instance.name)  # every supervisor line from here on names it
    if not as_json and not (config_path and nic_given):
        what = []
        if not config_path:
            what.append(f"the built-in sample config ({SAMPLE_CONFIG.name}: VIPs in 203.0.113.0/24)")
        if not nic_given:
            what.append("the traffic generator NIC (gen: 10000 flows toward its VIPs, null sink)")
        click.echo(f"maglev run: using {' and '.join(what)}; Ctrl-C to stop.")
    # The control plane: config manager (control socket, table publication), health
    # prober, BGP speaker (only when the config has peers): maglev/actors/extra.py.
    from maglev.actors import extra

    try:
        extra.register()
    except ImportError as exc:  # a partial install still forwards packets
        click.echo(f"maglev run: warning: the control plane is unavailable ({exc})", err=True)
    if control and not pl.EXTRA_ACTORS:
        click.echo("maglev run: warning: no control-plane actor is available; --control ignored", err=True)
    try:
        from maglev.telemetry import setup_tracing

        setup_tracing("supervisor", "maglev", otlp_endpoint or None)
    except ImportError:
        pass
    opts = pl.PipelineOptions(
        workers=workers, config_path=config_path or "", nic=nic, out=out or "", cpus=cpus,
        burst=burst, ring_size=ring_size, n_frames=frames, otlp_endpoint=otlp_endpoint,
        control=control, log_level=level, latency=latency, stall_ms=stall_ms,
        fallback=fallback, placement=placement,
    )
    if idle_poll_us is not None:
        opts.idle_poll_us = idle_poll_us
    if rt_prio is not None:
        opts.rt_prio = rt_prio
    if nap_us is not None:
        opts.nap_us = nap_us
    from maglev.actors.controller import Controller

    ctrl = Controller()  # announces/withdraws the VIPs over BGP (maglev/actors/controller.py)
    from maglev.observability.prometheus import MetricsHost

    obs = MetricsHost(metrics)  # binds --metrics first: a bad address fails before anything starts
    try:
        p = pl.Pipeline(opts, on_message=ctrl.on_message)
    except BaseException:
        obs.close()
        raise
    from maglev.control.instance import flow_secret_warning

    if warning := flow_secret_warning(p.config, config_path or SAMPLE_CONFIG):  # once, loudly; also in ctl status
        click.echo(f"maglev run: WARNING: {warning}", err=True)
    obs.attach(p)  # the endpoint + the supervisor view file (restarts, BGP) for ctl stats
    ctrl.bind(p)
    finite_gen = p.nic_spec.kind == "gen" and any(
        k in ("seconds", "packets") and float(v) > 0 for k, v in p.nic_spec.options
    )
    stop_reason: list[str] = []

    def on_signal(signum, _frame):
        if stop_reason:  # second Ctrl-C: stop hard
            raise KeyboardInterrupt
        stop_reason.append(signal.Signals(signum).name)

    from maglev.service.runloop import ServiceLoop

    svc = ServiceLoop(p)  # systemd readiness/watchdog/status; SIGHUP -> reload (maglev/service)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: svc.request_reload())
    # A signal also writes a byte to this pipe, which the supervisor's poll watches: the
    # stop starts at once, not when the current 50 ms poll times out.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    p.supervisor.wakeup_fds.append(wake_r)
    try:
        # Set-up is done (config read, region and run folder made, --metrics bound): keep
        # only the capabilities the NIC and BGP need, for this process and every actor it
        # starts (they open the NIC sockets and the BGP port, also again after a restart).
        from maglev.actors.sched import BGP_NICE, rt_prio_for
        from maglev.service.privileges import allow_nice, allow_rt_priority, drop_after_setup

        # SCHED_FIFO for the data-path actors must survive the drop: RLIMIT_RTPRIO up to
        # the highest of them (the muxer's), or else CAP_SYS_NICE kept (allow_rt_priority)
        rt_keep = allow_rt_priority(rt_prio_for("muxer", opts.rt_prio))
        # The BGP speaker lowers its nice value after the drop (docs/bgp.md): RLIMIT_NICE,
        # or CAP_SYS_NICE kept when the limit cannot be raised.
        if p.config.bgp.local_asn and p.config.bgp.peers:
            rt_keep = sorted({*rt_keep, *allow_nice(BGP_NICE)})
        drop_after_setup(p.nic_spec.kind, p.out_spec.kind, p.config, rt_keep)
        # Ctrl-C while the actors are starting: stop at once, do not begin.
        if p.start(go=False, abort=lambda: bool(stop_reason)) and not stop_reason:
            p.go()
        prev, prev_t = None, time.monotonic()
        next_print = prev_t + 1.0
        while not stop_reason:
            p.poll(0.05)
            obs.tick()
            ctrl.tick()
            svc.tick()
            if p.eof and (exit_on_eof or finite_gen):
                break
            now = time.monotonic()
            if not as_json and now >= next_print:
                c = p.counters()
                click.echo(_live_line(c, prev, now - prev_t))
                prev, prev_t = c, now
                next_print = now + 1.0
        svc.stopping()
        ctrl.shutdown()  # withdraw every VIP and let the routers move away before stopping
        p.stop()
        s = p.summary()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        signal.set_wakeup_fd(old_wakeup)
        p.supervisor.wakeup_fds.remove(wake_r)
        os.close(wake_r)
        os.close(wake_w)
        obs.close()
        svc.close()
        p.close()
    if as_json:
        click.echo(json.dumps(s))
    else:
        click.echo(_summary_text(s))
    if "pool" in s and not s["pool"]["ok"]:
        click.echo(f"maglev run: error: {s['pool']['detail']}", err=True)
        sys.exit(1)
    # The packet identity (docs/actors.md): a packet received and then neither forwarded
    # nor dropped under a reason is a finding, not a success (a worker killed during the
    # stop once left its ring to nobody and the run still exited 0).
    unaccounted = s["packets_in"] - s["forwarded"] - sum(s["dropped"].values())
    if unaccounted:
        click.echo(f"maglev run: error: {unaccounted} packet(s) received but neither forwarded nor dropped "
                   f"(packets_in {s['packets_in']}, forwarded {s['forwarded']}, dropped "
                   f"{sum(s['dropped'].values())})", err=True)
        sys.exit(1)
