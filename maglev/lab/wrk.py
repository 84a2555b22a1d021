"""``wrk`` (the Debian package) against the lab, beside our own HTTP client
(:func:`maglev.lab.client.http_load`), so the lab's HTTP numbers can be compared with
anyone else's.

``wrk`` keeps its connections open (HTTP/1.1 keep-alive): after the first request of a
connection, every request rides an existing flow, so it measures the forwarder's
steady-state path (connection table hits), where our client opens a fresh connection per
request (a new flow each time: Maglev lookup + insert).  Both are printed; neither is the
other's substitute.  Bounded: ``-d`` seconds, and a subprocess timeout on top.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def why_no_wrk() -> str | None:
    if shutil.which("wrk") is None:
        return "wrk is not installed (apt-get install wrk; `just system-deps` does)"
    return None


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return round(float(m.group(1)) * _UNIT_MS[m.group(2)], 3)


def parse_wrk(out: str) -> dict[str, Any]:
    """wrk's report (run with ``--latency``) -> {"requests", "elapsed_s", "requests_per_s",
    "latency_ms": {"p50", "p75", "p90", "p99"}, "errors": {...}, "non_2xx"}."""
    res: dict[str, Any] = {"latency_ms": {}, "errors": {}, "non_2xx": 0}
    for line in out.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"(\d+)% +(\S+)", line):
            res["latency_ms"][f"p{m.group(1)}"] = _ms(m.group(2))
        elif m := re.match(r"(\d+) requests in ([0-9.]+)(us|ms|s|m),", line):
            res["requests"] = int(m.group(1))
            res["elapsed_s"] = round(_ms(m.group(2) + m.group(3)) / 1e3, 3)
        elif m := re.match(r"Requests/sec: +([0-9.]+)", line):
            res["requests_per_s"] = float(m.group(1))
        elif m := re.match(r"Socket errors: (.*)", line):
            for kind, n in re.findall(r"(\w+) (\d+)", m.group(1)):
                res["errors"][kind] = int(n)
        elif m := re.match(r"Non-2xx or 3xx responses: (\d+)", line):
            res["non_2xx"] = int(m.group(1))
    if "requests_per_s" not in res or "requests" not in res:
        raise ValueError(f"no wrk report in: {out[-400:]!r}")
    return res


def wrk_load(ns: str, host: str, port: int = 80, seconds: float = 3.0, connections: int = 8,
             threads: int = 1, path: str = "/") -> dict[str, Any]:
    """Run wrk from inside network namespace ``ns`` for ``seconds``; its parsed report."""
    h = f"[{host}]" if ":" in host else host
    secs = max(1, round(seconds))
    cmd = ["ip", "netns", "exec", ns, "wrk", f"-t{threads}", f"-c{connections}", f"-d{secs}s",
           "--timeout", "2s", "--latency", f"http://{h}:{port}{path}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 30)
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    out = parse_wrk(r.stdout)
    out.update(tool="wrk", connections=connections, threads=threads, keep_alive=True)
    return out
