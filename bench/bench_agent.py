"""The backend agent alone (``maglev backend-agent``): what it adds to one packet, and what
one packet costs it, per engine and scheduling class, alternated in the same minutes.

Two namespaces joined by a veth pair, no forwarder: a sender and a backend.  The backend
has the VIP on ``lo`` and a UDP socket on it (a socket of this process, created in that
namespace).  Each probe is one UDP datagram to the VIP, sent either

* ``direct``: routed by the sender's kernel to the backend (no agent on the way), or
* ``agent``: wrapped in GRE by this process (a raw socket), unwrapped by the agent
  (raw socket -> checks -> TUN) and delivered by the backend's stack,

one at a time, alternating, with the send -> receive time taken on one clock
(``one_way_us``); ``added_us`` = agent minus direct {p50, p99}.  This process runs
SCHED_FIFO 1 (``bench_sched_fifo``) so that its own wake-up for the agent path's datagram
is not what is measured.  Then a burst of
``--burst`` GRE datagrams as fast as this process can send them: what reached the
backend's UDP layer (``delivered``, from /proc/net/snmp: read by this process, or dropped on
its full receive buffer -- it reads only after the burst), and the agent's CPU time per
packet (schedstat of the agent process), its wake-ups and recvmmsg batches (C engine).

Configurations (``--configs``, default all three, each started afresh in every round and
the rounds alternated): ``python_rt0`` (the reference loop, SCHED_OTHER: the agent as it
was before 2026-12-07), ``c_rt0`` (the C loop, SCHED_OTHER), ``c_rt1`` (the C loop,
SCHED_FIFO while light: the default).  Prints medians over rounds; never asserts.  Needs
root.  Usage: python bench/bench_agent.py [--rounds 3] [--probes 300] [--burst 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

from maglev.lab import topology as topo
from maglev.lab.nsenter import netns
from maglev.testing.netns import NetnsSet, why_no_netns
from maglev.testing.packets import checksum

VIP = "203.0.113.77"
SND, BE = "198.18.200.1", "198.18.200.2"
PORT = 9977
CONFIGS = {"python_rt0": ("python", 0), "c_rt0": ("c", 0), "c_rt1": ("c", 1)}


def inner_udp(tag: int, size: int = 32) -> bytes:
    payload = tag.to_bytes(8, "big") + b"a6" * ((size - 8) // 2)
    udp = struct.pack("!HHHH", 40000, PORT, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), tag & 0xFFFF, 0, 64, 17, 0,
                     socket.inet_aton(SND), socket.inet_aton(VIP))
    return ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:] + udp


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else -1.0


def agent_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants, from schedstat (ns resolution; the
    clock-tick counts of /proc/PID/stat are 10 ms, too coarse for a burst)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    t = 0
    for proc in procs:
        for task in Path(f"/proc/{proc.pid}/task").glob("*/schedstat"):
            try:
                t += int(task.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return t / 1e9


def udp_counts(ns: str) -> tuple[int, int]:
    """(InDatagrams, RcvbufErrors) of UDP in ``ns``: what the backend's stack delivered to
    a socket, and what it had to drop because the socket was full (this process reads the
    burst only after sending it, so a fast agent overruns the receiver's buffer)."""
    lines = [ln.split() for ln in topo.ns_exec(ns, "cat", "/proc/net/snmp").stdout.splitlines()
             if ln.startswith("Udp:")]
    if len(lines) < 2:
        return 0, 0
    row = dict(zip(lines[0][1:], lines[1][1:], strict=False))
    return int(row.get("InDatagrams", 0)), int(row.get("RcvbufErrors", 0))


def read_stats(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def one_config(nss: NetnsSet, snd: str, be: str, name: str, args: argparse.Namespace, rnd: int) -> dict:
    engine, rt = CONFIGS[name]
    stats = Path(f"/tmp/a6-agent-{os.getpid()}-{name}-{rnd}.json")
    stats.unlink(missing_ok=True)
    proc = nss.namespaces[1].popen([*topo.maglev_argv(), "backend-agent", "--vip", VIP, "--encap", "gre",
                                    "--tun", "a6tun0", "--engine", engine, "--rt-prio", str(rt),
                                    "--stats", str(stats)])
    out: dict = {}
    with netns(snd):
        direct = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
    with netns(be):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        rx.bind((VIP, PORT))
        rx.settimeout(0.5)
        direct.connect((VIP, PORT))
        deadline = time.monotonic() + 15
        while not stats.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        gre = b"\x00\x00\x08\x00"

        def probe(path: str, tag: int) -> float | None:
            t0 = time.perf_counter_ns()
            if path == "direct":
                direct.send(inner_udp(tag)[28:])
            else:
                raw.sendto(gre + inner_udp(tag), (BE, 0))
            try:
                while True:
                    data = rx.recv(2048)
                    if int.from_bytes(data[:8], "big") == tag:
                        return (time.perf_counter_ns() - t0) / 1000
            except TimeoutError:
                return None

        for i in range(20):  # warm-up: ARP, the agent's first wake-ups
            probe("agent", 1 << 40 | i)
            probe("direct", 1 << 41 | i)
        times: dict[str, list[float]] = {"direct": [], "agent": []}
        lost = 0
        end = time.monotonic() + args.seconds_max
        for i in range(args.probes):
            if time.monotonic() > end:
                break
            for path in (("agent", "direct") if i % 2 else ("direct", "agent")):
                t = probe(path, (2 if path == "agent" else 3) << 40 | i)
                if t is None:
                    lost += 1
                else:
                    times[path].append(t)
            time.sleep(0.001)
        out["one_way_us"] = {p: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "n": len(v)} for p, v in times.items()}
        out["added_us"] = {q: round(out["one_way_us"]["agent"][q] - out["one_way_us"]["direct"][q], 1)
                           for q in ("p50", "p99")}
        out["lost"] = lost

        # A burst: the agent's CPU per packet and its batching.
        time.sleep(1.1)  # the stats file is written every second
        s0, c0, u0 = read_stats(stats), agent_cpu_s(proc.pid), udp_counts(be)
        rx.setblocking(False)
        pkts = [gre + inner_udp(5 << 40 | i) for i in range(256)]
        t0 = time.perf_counter()
        sent = 0
        for i in range(args.burst):
            try:
                raw.sendto(pkts[i & 255], (BE, 0))
                sent += 1
            except BlockingIOError:
                pass
            if time.perf_counter() - t0 > 5.0:
                break
        send_s = time.perf_counter() - t0
        got = 0
        quiet = time.monotonic() + 0.3
        stop = time.monotonic() + 10
        while time.monotonic() < min(quiet, stop):
            try:
                rx.recv(2048)
                got += 1
                quiet = time.monotonic() + 0.3
            except BlockingIOError:
                time.sleep(0.005)
        time.sleep(1.1)
        s1, c1, u1 = read_stats(stats), agent_cpu_s(proc.pid), udp_counts(be)
        handled = s1.get("received", 0) - s0.get("received", 0)
        out["burst"] = {
            "sent": sent, "offered_pps": round(sent / send_s) if send_s else 0, "read": got,
            # reached the backend's UDP layer: read, or dropped there on a full socket buffer
            "delivered": (u1[0] - u0[0]) + (u1[1] - u0[1]), "rcvbuf_errors": u1[1] - u0[1],
            "agent_received": handled,
            "agent_cpu_ns_per_packet": round((c1 - c0) * 1e9 / handled) if handled else None,
            "wakeups": s1.get("wakeups", 0) - s0.get("wakeups", 0),
            "batches": s1.get("batches", 0) - s0.get("batches", 0),
        }
    finally:
        for s in (direct, raw, rx):
            s.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except Exception:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        final = read_stats(stats)
        out["agent_counters"] = {k: v for k, v in final.items() if k.startswith(("drop", "rt_"))}
        stats.unlink(missing_ok=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--probes", type=int, default=300, help="one-at-a-time probes per path and round")
    ap.add_argument("--burst", type=int, default=20000, help="datagrams in the throughput burst (bounded: 5 s)")
    ap.add_argument("--seconds-max", type=float, default=20.0, help="cap on the probe phase per round")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"any of {','.join(CONFIGS)}")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if reason := why_no_netns("bench_agent"):
        print(f"bench_agent: skipped: {reason}")
        return 0
    names = [c for c in args.configs.split(",") if c]
    if bad := [c for c in names if c not in CONFIGS]:
        print(f"bench_agent: unknown config(s) {bad}; choose from {list(CONFIGS)}", file=sys.stderr)
        return 2
    res: dict = {"loadavg_start": [round(x, 2) for x in os.getloadavg()], "rounds": {n: [] for n in names}}
    # The measuring thread waits in recv() for the agent path (the direct path's send runs
    # the whole receive chain in its own syscall and finds the datagram there): as
    # SCHED_OTHER its own wake-up on a loaded machine would be most of what is measured.
    # SCHED_FIFO 1 (below the agent's 4) makes that wake-up short for every config alike.
    from maglev.actors.sched import set_rt

    res["bench_sched_fifo"] = set_rt(1)
    with NetnsSet("a6") as nss:
        s, b = nss.add("a6s"), nss.add("a6b")
        nss.veth(s, "eth0", b, "eth0")
        s.addr("eth0", f"{SND}/24")
        b.addr("eth0", f"{BE}/24")
        s.exec("ip", "route", "add", f"{VIP}/32", "via", BE)
        b.addr("lo", f"{VIP}/32")
        for key in ("all", "default", "eth0"):
            b.sysctl(f"net.ipv4.conf.{key}.rp_filter", "0")
        for rnd in range(args.rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            for name in order:
                res["rounds"][name].append(one_config(nss, s.name, b.name, name, args, rnd))
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    def med(name: str, *keys: str) -> float | None:
        vals = []
        for r in res["rounds"][name]:
            v = r
            for k in keys:
                v = v.get(k) if isinstance(v, dict) else None
            if isinstance(v, (int, float)):
                vals.append(v)
        return round(statistics.median(vals), 1) if vals else None

    res["median"] = {n: {"added_us_p50": med(n, "added_us", "p50"), "added_us_p99": med(n, "added_us", "p99"),
                         "agent_one_way_us_p50": med(n, "one_way_us", "agent", "p50"),
                         "direct_one_way_us_p50": med(n, "one_way_us", "direct", "p50"),
                         "agent_cpu_ns_per_packet": med(n, "burst", "agent_cpu_ns_per_packet"),
                         "burst_delivered": med(n, "burst", "delivered"),
                         "burst_agent_received": med(n, "burst", "agent_received"),
                         "burst_batches": med(n, "burst", "batches")} for n in names}
    if "python_rt0" in names:
        base = res["median"]["python_rt0"]
        res["ratios_vs_python_rt0"] = {
            n: {k: (round(res["median"][n][k] / base[k], 3) if base[k] and res["median"][n][k] is not None else None)
                for k in ("added_us_p50", "added_us_p99", "agent_cpu_ns_per_packet")} for n in names}
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"load {res['loadavg_start']} -> {res['loadavg_end']}")
        for n, m in res["median"].items():
            print(f"{n:11s} " + " ".join(f"{k}={v}" for k, v in m.items()))
        for n, r in res.get("ratios_vs_python_rt0", {}).items():
            print(f"{n:11s} vs python_rt0: {r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
