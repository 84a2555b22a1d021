"""Lab traffic and observation helpers: HTTP load from the client namespace, and packet
captures with tcpdump.  Used by ``maglev demo``, the lab tests and bench/bench_lab.py.

Every request is a fresh TCP connection (HTTP/1.0), so each one is a new flow that the
forwarder hashes anew -- that is what makes the spread over backends measurable.  The
loop is bounded by a request count and a deadline, never open-ended.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from maglev.lab.topology import HTTP_PORT, http_get


@dataclass
class LoadResult:
    requests: int = 0
    ok: int = 0
    failures: Counter = field(default_factory=Counter)  # error text -> count
    backends: Counter = field(default_factory=Counter)  # backend name -> successful requests
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return 0.0
        xs = sorted(self.latencies_s)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    def to_dict(self) -> dict:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "failed": self.requests - self.ok,
            "failures": dict(self.failures),
            "backends": dict(sorted(self.backends.items())),
            "elapsed_s": round(self.elapsed_s, 3),
            "requests_per_s": round(self.ok / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "latency_ms": {
                "p50": round(self.percentile(0.5) * 1e3, 3),
                "p99": round(self.percentile(0.99) * 1e3, 3),
            },
        }


def http_load(
    ns: str,
    host: str,
    n: int,
    *,
    port: int = HTTP_PORT,
    concurrency: int = 8,
    timeout_s: float = 3.0,
    deadline_s: float = 120.0,
    progress: Callable[[int], None] | None = None,
) -> LoadResult:
    """``n`` GETs from namespace ``ns`` to ``host``, ``concurrency`` at a time."""
    res = LoadResult()
    lock = threading.Lock()
    todo = iter(range(n))
    end = time.monotonic() + deadline_s

    def worker() -> None:
        while True:
            with lock:
                if next(todo, None) is None or time.monotonic() > end:
                    return
            t0 = time.perf_counter()
            try:
                status, body = http_get(ns, host, port, timeout=timeout_s)
                err = "" if status == 200 else f"HTTP {status}"
            except OSError as exc:
                err, body = type(exc).__name__, ""
            dt = time.perf_counter() - t0
            with lock:
                res.requests += 1
                if err:
                    res.failures[err] += 1
                else:
                    res.ok += 1
                    res.latencies_s.append(dt)
                    name = body.strip().removeprefix("backend=")
                    res.backends[name] += 1
            if progress:
                progress(1)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res.elapsed_s = time.monotonic() - t0
    return res


class Capture:
    """``tcpdump -w`` on ``iface`` in namespace ``ns`` while the block runs.

    ``count(filter)`` reads the file back with a BPF filter and returns how many packets
    matched.  The tcpdump process is ours (started here, stopped by PID)."""

    def __init__(self, ns: str, iface: str, path: Path, bpf: str = "", direction: str = "",
                 snaplen: int = 256):
        if shutil.which("tcpdump") is None:
            raise RuntimeError("tcpdump is not installed (apt-get install tcpdump)")
        self.ns, self.iface, self.path, self.bpf = ns, iface, Path(path), bpf
        self.direction = direction  # "" (both), "in" or "out": tcpdump -Q
        self.snaplen = snaplen  # bytes kept per packet; 0 = whole packets
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Capture:
        cmd = ["ip", "netns", "exec", self.ns, "tcpdump", "-i", self.iface, "-U", "--immediate-mode", "-n", "-s", str(self.snaplen), "-B", "16384",
               "-w", str(self.path)]  # fmt: skip
        if self.direction:
            cmd[5:5] = ["-Q", self.direction]
        if self.bpf:
            cmd.append(self.bpf)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # tcpdump says "listening on" once the socket is open; wait for it (bounded).
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if "listening on" in line or not line:
                break
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            time.sleep(0.2)  # let the last packets reach the file (-U: per packet)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def count(self, bpf: str = "") -> int:
        r = subprocess.run(["tcpdump", "-n", "-r", str(self.path), *([bpf] if bpf else [])],
                           capture_output=True, text=True, timeout=60)
        return len([line for line in r.stdout.splitlines() if line.strip()])
