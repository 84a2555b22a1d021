"""Lab benchmark: maglev on the namespace topology against the kernel, in one run.

1. Forwarding rate, 64-byte UDP frames: a generator in the client namespace (the
   AF_PACKET NIC transmitting bursts of prebuilt frames, bounded in time and count) sends
   toward the VIP; we count what reaches the backends' interfaces per second.
   * baseline: the maglev namespace's *kernel* forwards (ip_forward=1, VIPs routed to
     backend 1), no maglev process;
   * maglev:   `maglev run --nic afpacket:eth0` forwards (GRE to the backends), once
               with each AF_PACKET receive ring (TPACKET_V3 and TPACKET_V2, the default),
               and `--nic afxdp:eth0` where AF_XDP can be set up;
   The sender (maglev.lab.sender) is the AF_PACKET NIC's TX ring (PACKET_TX_RING, qdisc
   bypass) in the client namespace, pinned to one CPU, with RPS on the router's
   client-facing veth sending the receive work to the other CPUs (on veth the sender
   would otherwise run the whole forwarding chain in its own softirq and could never
   outrun it); ``sender_pps`` is what it offered during the kernel baseline, and a ratio
   whose baseline forwarded (nearly) everything offered is listed in
   ``sender_bound_ratios``: the kernel might have done more.  The kernel is measured
   before and after the maglev runs (``pps_kernel``, ``pps_kernel_after``); the pps
   ratios are against their mean (``kernel_baseline_pps``).
   * relay:    the lab's pure-Python stand-in (with --relay), for scale only.
2. HTTP through the VIP vs straight to one backend: requests/s and latency p50/p99 of
   fresh-connection GETs from the client namespace (our client, ``http_*``), and the same
   two paths with ``wrk`` (``wrk_*``: keep-alive connections, the numbers anyone else's
   wrk gives; skipped with a note when wrk is not installed).
3. The driver's wake-up latency alone (one frame over a bare veth pair, send -> wait()
   returns -> rx_burst has it), TPACKET_V3 vs TPACKET_V2.
4. One request at a time (maglev.lab.latency): UDP echo and TCP connect through the VIP
   and directly, alternating; ``added_latency_us[driver]`` = VIP minus direct {p50, p99}
   of the UDP echo (TCP connect in ``round_trips_us``).
5. Where one packet's time goes (maglev.lab.latency.hop_split, ``--hops N``): N UDP
   echoes through the VIP, each marked by the packet tracer, split at steering's NIC read
   (rx_ts), its dispatch, the worker, the muxer's transmit and the backend's receive;
   ``hops_us[driver]`` = per hop {p50, p99} and the direct path's one-way times.

Prints numbers and ratios against the baseline from the same run; never asserts on
speed.  Needs root.  Usage:  python bench/bench_lab.py [--seconds 3] [--requests 500]
[--workers 1] [--relay] [--json]
"""

from __future__ import annotations

import argparse
import json
import mmap
import socket
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from maglev.lab import topology as topo
from maglev.lab.client import http_load
from maglev.lab.nsenter import netns
from maglev.lab.sender import cpu_plan, offer, steer_rx, udp_frame
from maglev.lab.wrk import why_no_wrk, wrk_load
from maglev.native import ffi, lib
from maglev.nic.afpacket import AfPacketNic
from maglev.testing import unique


def rx_packets(ns: str, dev: str = "eth0") -> int:
    out = topo.ns_exec(ns, "ip", "-s", "-j", "link", "show", dev).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


def lab_frames(dst: str, flows: int = 256) -> list[bytes]:
    """64-byte UDP frames from the client toward ``dst``, one per flow (source port)."""
    return [udp_frame(topo.MAC_CLIENT, topo.MAC_ROUTER_C, topo.CLIENT_V4, dst, 10000 + i) for i in range(flows)]


def forwarder_cpu(pid: int | None) -> tuple[float, float]:
    """CPU seconds (user, system) used so far by a forwarder and every process under it."""
    import psutil

    if not pid:
        return 0.0, 0.0
    user = system = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            user += t.user
            system += t.system
        except psutil.Error:
            pass
    return user, system


def forwarder_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by a forwarder and every process under it."""
    return sum(forwarder_cpu(pid))


def link_counts(ns: str, dev: str) -> tuple[int, int]:
    """(rx packets, rx dropped) of ``dev`` in ``ns``."""
    out = topo.ns_exec(ns, "ip", "-s", "-j", "link", "show", dev).stdout
    rx = json.loads(out)[0]["stats64"]["rx"]
    return int(rx["packets"]), int(rx["dropped"])


def measure_pps(state: dict, seconds: float, forwarder_pid: int | None = None, sender_cpu: int | None = None) -> dict:
    """Offer 64-byte frames for ``seconds`` (maglev.lab.sender: the sender pinned to one
    CPU, the router's client-facing veth steered (RPS) to the others, so the sender does
    not pay for the forwarding it offers) and count what reaches the backends."""
    bes = [b["ns"] for b in state["backends"]]
    sender_cpu, rx_cpus = cpu_plan(sender_cpu)
    before = sum(rx_packets(ns) for ns in bes)
    at_nic0 = link_counts(state["maglev"]["ns"], "eth0")
    cpu0 = forwarder_cpu(forwarder_pid)
    with steer_rx(state["router"]["ns"], "rc", rx_cpus) if rx_cpus else nullcontext("0") as mask:
        o = offer(state["client"]["ns"], "eth0", lab_frames(topo.VIP_V4), seconds, cpu=sender_cpu)
        time.sleep(0.3)  # let queues drain
    got = sum(rx_packets(ns) for ns in bes) - before
    elapsed = o["seconds"]
    out = {"sent": o["sent"], "received": got, "seconds": elapsed,
           "sent_pps": o["sent_pps"], "forwarded_pps": round(got / elapsed),
           "sender_cpu": sender_cpu, "rps_cpus": mask, "sender_ns_per_packet": o["sender_ns_per_packet"],
           "tx_ring": o["tx_ring"]}
    # Where the rest went: what reached the forwarder's interface (after the router and
    # the veth backlog) and what that interface dropped (AF_XDP: the XDP redirect found
    # no room in the socket's rings; veth's own backlog for the others).
    at_nic1 = link_counts(state["maglev"]["ns"], "eth0")
    out["at_nic_pps"] = round((at_nic1[0] - at_nic0[0]) / elapsed)
    out["nic_dropped_pps"] = round((at_nic1[1] - at_nic0[1]) / elapsed)
    if forwarder_pid:
        # Every actor's CPU per forwarded packet (steering, workers, muxer, control plane):
        # what the C loops save, less sensitive to the neighbours than the rate.  Split in
        # user and system time: the system part is mostly the kernel's forwarding chain
        # (veth, router, bridge, backend) that the muxer's send() runs in its softirq,
        # and softirq work for other packets charged to whichever actor it interrupted.
        u1, s1 = forwarder_cpu(forwarder_pid)
        du, ds = u1 - cpu0[0], s1 - cpu0[1]
        out["cpu_ns_per_packet"] = round((du + ds) * 1e9 / max(got, 1))
        out["cpu_user_ns_per_packet"] = round(du * 1e9 / max(got, 1))
        out["cpu_sys_ns_per_packet"] = round(ds * 1e9 / max(got, 1))
    return out


def nic_wakeup(ring: str, rounds: int = 40) -> dict:
    """One frame at a time over a bare veth pair: send -> the driver's wait() returns and
    rx_burst has it.  Shows the TPACKET_V3 block-retire floor against V2."""
    import threading

    from maglev.testing.netns import NetnsSet

    with NetnsSet("bench") as nets:
        a, b = nets.add("a"), nets.add("b")
        nets.veth(a, "a0", b, "b0")
        for ns, dev in ((a, "a0"), (b, "b0")):
            ns.sysctl(f"net.ipv6.conf.{dev}.disable_ipv6", "1")  # no chatter in the ring
        with netns(b.name):
            nic = AfPacketNic("b0", ring=ring)
        with netns(a.name):
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        try:
            nic.start_rx()
            tx.bind(("a0", 0))
            mm = mmap.mmap(-1, 256 * lib.MG_FRAME_SIZE)
            pool = ffi.from_buffer("uint8_t[]", mm)
            descs = ffi.new("uint64_t[]", list(range(256)))
            frame = b"\x02" * 6 + b"\x04" * 6 + b"\x88\xb5" + b"x" * 50
            lat = []
            for _ in range(rounds):
                while nic.rx_burst(pool, descs, 256):
                    pass
                sent_at = [0.0]

                def send(at=sent_at) -> None:
                    time.sleep(0.02)
                    at[0] = time.perf_counter()
                    tx.send(frame)

                th = threading.Thread(target=send)
                th.start()
                deadline = time.monotonic() + 2
                while not nic.rx_burst(pool, descs, 256) and time.monotonic() < deadline:
                    nic.wait(1.0)
                lat.append(time.perf_counter() - sent_at[0])
                th.join()
        finally:
            tx.close()
            nic.close()
    lat.sort()
    return {"p50_ms": round(lat[len(lat) // 2] * 1e3, 3), "max_ms": round(lat[-1] * 1e3, 3),
            "p50_us": round(lat[len(lat) // 2] * 1e6, 1)}


def afxdp_unavailable() -> str:
    """Why ``--nic afxdp`` cannot run here ("" when it can)."""
    try:
        from maglev.nic.afxdp import why_no_afxdp
    except ImportError:
        return "this build has no AF_XDP driver"
    return why_no_afxdp()


def driver_key(name: str) -> str:
    return name if name == "afxdp" else f"afpacket_{name}"


def kernel_forwarding(state: dict, on: bool) -> None:
    ns = state["maglev"]["ns"]
    topo.ns_exec(ns, "sysctl", "-qw", f"net.ipv4.ip_forward={int(on)}")
    verb = "replace" if on else "del"
    topo.ns_exec(ns, "ip", "route", verb, topo.VIP_NET_V4, *(["via", state["backends"][0]["ipv4"]] if on else []),
                 check=on)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--relay", action="store_true", help="also measure the Python stand-in relay")
    ap.add_argument("--probes", type=int, default=200, help="one-at-a-time round trips per path")
    ap.add_argument("--sender-cpu", type=int, default=None,
                    help="the CPU the traffic sender runs on (default: the first); the rest take the receive work")
    ap.add_argument("--encap", default="gre", choices=("gre", "ipip", "vxlan", "l2"),
                    help="the lab's encapsulation: gre/ipip backends decapsulate in `maglev backend-agent` "
                         "(user space: raw socket -> TUN, its loop in C), vxlan in the kernel, l2 not at all")
    ap.add_argument("--hops", type=int, default=40,
                    help="traced one-at-a-time UDP echoes per driver for the hop split (0 = off)")
    ap.add_argument("--drivers", default="v3,v2,afxdp",
                    help="comma-separated maglev NIC drivers to measure (v3, v2, afxdp; default all three)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    wanted = [d.strip() for d in args.drivers.split(",") if d.strip()]
    if bad := sorted(set(wanted) - {"v3", "v2", "afxdp"}):
        ap.error(f"--drivers: unknown driver(s) {', '.join(bad)} (known: v3, v2, afxdp)")
    if reason := topo.why_no_lab():
        print(f"bench_lab: skipped: {reason}")
        return
    import os

    from maglev_cli.main import COMMANDS

    have_run = any(a == "run" for _, a in COMMANDS) or bool(os.environ.get("MAGLEV_LAB_FORWARDER"))
    # Own names per run: other benchmark runs on the machine must not meet this one's lab.
    prefix = unique.short("mgb")  # maglev.testing.unique: no other run on the machine has it
    tag = prefix[3:]
    state_dir = Path(f"/run/maglev-lab-bench-{tag}")
    lab = topo.Lab(state_dir)
    spec = topo.LabSpec(prefix=prefix, state_dir=state_dir, backends=3, encap=args.encap, forwarder=False)
    out: dict = {"machine_note": "2 shared vCPUs; repeat runs, compare ratios", "encap": args.encap,
                 "loadavg_start": [round(x, 2) for x in os.getloadavg()],
                 # MAGLEV_NIC_LOOP=0: AF_PACKET/AF_XDP in the per-burst Python step (before the C loops)
                 "nic_loop": os.environ.get("MAGLEV_NIC_LOOP", "1") != "0"}
    from maglev.actors.sched import slice_us_wanted

    out["sched_slice_us"] = slice_us_wanted()  # MAGLEV_SCHED_SLICE_US=0: the kernel's default slice
    out["nic_wakeup_v3"] = nic_wakeup("v3")
    out["nic_wakeup_v2"] = nic_wakeup("v2")
    try:
        state = lab.up(spec)
        be1 = state["backends"][0]["ipv4"]
        # Complete checksums from the client's stack for every driver alike: AF_XDP hands
        # over the bytes as they are and cannot complete a veth peer's partial checksums.
        topo.tx_checksum_offload(state["client"]["ns"], "eth0", False)

        kernel_forwarding(state, True)
        out["pps_kernel"] = measure_pps(state, args.seconds, sender_cpu=args.sender_cpu)
        out["sender_pps"] = out["pps_kernel"]["sent_pps"]
        out["http_direct"] = http_load(state["client"]["ns"], be1, args.requests, concurrency=8).to_dict()
        no_wrk = why_no_wrk()
        if no_wrk:
            out["wrk"] = f"not measured: {no_wrk}"
        else:
            out["wrk_direct"] = wrk_load(state["client"]["ns"], be1, seconds=args.seconds, connections=8)
        kernel_forwarding(state, False)

        if args.relay:
            from maglev.lab.relay import Relay

            relay = Relay(state["maglev"]["ns"], "eth0", [topo.VIP_V4], state["backends"], "gre", state["maglev"]["mac"])
            try:
                out["pps_relay"] = measure_pps(state, args.seconds, sender_cpu=args.sender_cpu)
                out["http_relay"] = http_load(state["client"]["ns"], topo.VIP_V4, args.requests, concurrency=8).to_dict()
            finally:
                relay.stop()

        if have_run:
            from maglev.lab.latency import hop_split, round_trips

            out["added_latency_us"] = {}
            out["hops_us"] = {}
            out["round_trips_us"] = {}
            drivers = [d for d in (("v3", "afpacket:eth0", {"MAGLEV_AFPACKET_RING": "v3"}),
                                   ("v2", "afpacket:eth0", {"MAGLEV_AFPACKET_RING": "v2"})) if d[0] in wanted]
            why_no_xdp = afxdp_unavailable() if "afxdp" in wanted else "not asked for (--drivers)"
            if why_no_xdp:
                out["afxdp"] = f"not measured: {why_no_xdp}"
            else:
                drivers.append(("afxdp", "afxdp:eth0", {}))
            for name, nic, env in drivers:
                fwd = topo.forwarder_argv(topo.LabSpec(workers=args.workers, nic=nic), state["config"])
                control = topo.control_endpoint(state["config"])  # the hop split arms the tracer there
                fpid = lab.spawn("maglev", state["maglev"]["ns"], fwd, env=env)
                try:
                    lab._wait_ready(topo.LabSpec(forwarder=True, encap=args.encap), 60)
                    out[f"pps_maglev_{name}"] = measure_pps(state, args.seconds, fpid, args.sender_cpu)
                    out[f"http_vip_{name}"] = http_load(state["client"]["ns"], topo.VIP_V4, args.requests,
                                                        concurrency=8).to_dict()
                    if not no_wrk:
                        out[f"wrk_vip_{name}"] = wrk_load(state["client"]["ns"], topo.VIP_V4,
                                                          seconds=args.seconds, connections=8)
                    rt = round_trips(state, args.probes)
                    if args.hops:
                        try:
                            out["hops_us"][driver_key(name)] = hop_split(state, control, args.hops)
                        except Exception as exc:  # a bench prints, never fails
                            out["hops_us"][driver_key(name)] = f"not measured: {exc}"
                finally:
                    lab.stop_process("maglev")
                driver = driver_key(name)
                out["round_trips_us"][driver] = rt
                out["added_latency_us"][driver] = rt["udp"]["added"]
        else:
            out["maglev"] = "not measured: `maglev run` is not registered yet"
        # The kernel again, after the forwarders: on a shared machine the neighbours'
        # load moves between the first baseline and the last driver; the ratios use the
        # mean of the two baselines that bracket the maglev runs.
        kernel_forwarding(state, True)
        out["pps_kernel_after"] = measure_pps(state, args.seconds, sender_cpu=args.sender_cpu)
        kernel_forwarding(state, False)
    finally:
        lab.down()
        import shutil

        shutil.rmtree(state_dir, ignore_errors=True)  # this run's own folder

    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    kernels = [out[key] for key in ("pps_kernel", "pps_kernel_after") if key in out]
    k = round(sum(r["forwarded_pps"] for r in kernels) / len(kernels)) or 1
    out["kernel_baseline_pps"] = k
    # A kernel baseline is sender-bound when it forwarded (nearly) all that was offered.
    kernel_sender_bound = any(r["forwarded_pps"] >= 0.9 * r["sent_pps"] for r in kernels)
    out["sender_bound_ratios"] = []
    for name in ("maglev_v3", "maglev_v2", "maglev_afxdp", "relay"):
        if f"pps_{name}" in out:
            out[f"ratio_pps_{name}_vs_kernel"] = round(out[f"pps_{name}"]["forwarded_pps"] / k, 3)
            if kernel_sender_bound:
                out["sender_bound_ratios"].append(f"ratio_pps_{name}_vs_kernel")
    d = out["http_direct"]["requests_per_s"] or 1
    for key in ("http_vip_v3", "http_vip_v2", "http_vip_afxdp", "http_relay"):
        if key in out:
            out[f"ratio_{key}_rps_vs_direct"] = round(out[key]["requests_per_s"] / d, 3)
    if "wrk_direct" in out:
        wd = out["wrk_direct"]["requests_per_s"] or 1
        for key in ("wrk_vip_v3", "wrk_vip_v2", "wrk_vip_afxdp"):
            if key in out:
                out[f"ratio_{key}_rps_vs_direct"] = round(out[key]["requests_per_s"] / wd, 3)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for key, v in out.items():
        if isinstance(v, dict) and v.get("tool") == "wrk":
            errs = sum(v["errors"].values())
            print(f"{key:<14} wrk {v['connections']} keep-alive conns  {v['requests']} req  "
                  f"{v['requests_per_s']:>8} req/s  p50 {v['latency_ms'].get('p50')} ms  "
                  f"p99 {v['latency_ms'].get('p99')} ms  errors {errs}  non-2xx {v['non_2xx']}")
        elif isinstance(v, dict) and "forwarded_pps" in v:
            print(f"{key:<14} sent {v['sent_pps']:>9} pps  forwarded {v['forwarded_pps']:>9} pps  "
                  f"at the NIC {v.get('at_nic_pps')} pps (dropped there {v.get('nic_dropped_pps')})  "
                  f"(sender on cpu {v.get('sender_cpu')}, receive work rps mask {v.get('rps_cpus')})"
                  + (f"  CPU/pkt user {v['cpu_user_ns_per_packet']} + sys {v['cpu_sys_ns_per_packet']} ns"
                     if "cpu_user_ns_per_packet" in v else ""))
        elif isinstance(v, dict) and "requests_per_s" in v:
            print(f"{key:<14} ours {v['ok']}/{v['requests']} ok (fresh conns)  {v['requests_per_s']:>8} req/s  "
                  f"p50 {v['latency_ms']['p50']} ms  p99 {v['latency_ms']['p99']} ms")
        elif isinstance(v, dict) and "p50_ms" in v:
            print(f"{key:<14} one frame, send -> received: p50 {v['p50_ms']} ms, max {v['max_ms']} ms")
        elif key == "hops_us":
            for drv, h in v.items():
                if isinstance(h, str):
                    print(f"hops {drv:<12} {h}")
                    continue
                parts = "  ".join(f"{k} {h[k]['p50']}" for k in h if isinstance(h[k], dict) and "p50" in h[k])
                print(f"hops {drv:<12} p50 us: {parts}  (n={h['n']}; direct one-way there/back "
                      f"{h['direct_one_way_us']['there']}/{h['direct_one_way_us']['back']})")
        elif key == "added_latency_us":
            for drv, a in v.items():
                print(f"added latency {drv:<12} p50 {a['p50']} us  p90 {a.get('p90')} us  p99 {a['p99']} us "
                      "(UDP echo, VIP - direct)")
        elif key == "round_trips_us":
            continue
        else:
            print(f"{key:<14} {v}")


if __name__ == "__main__":
    sys.exit(main())
