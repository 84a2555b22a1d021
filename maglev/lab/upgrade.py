"""Rolling upgrade of the scale-out lab (issue 16.6; procedure in docs/operations.md).

``python -m maglev.lab.upgrade [--state-dir DIR] [--connections 200] [--json]`` on a lab
that ``maglev lab up --instances 3 --bgp`` built (root): ``--connections`` long-lived
HTTP/1.1 connections through the VIP each send a request every 100 ms (one selector loop
drives them all: maglev/lab/talkers.py; the backends are asyncio servers) and check that
the same backend answers.  Meanwhile every instance in turn is

1. drained: ``maglev ctl drain-instance`` -- its controller withdraws every VIP over BGP,
   the session stays up; we wait until the router's multipath route has lost it;
2. left alone for ``--settle`` seconds (packets already queued toward it are forwarded);
3. stopped (SIGTERM: a clean stop) and started again with the same command line and
   environment (read from /proc) -- the "newer build"; the new run adopts the connection
   tables its predecessor left in /dev/shm and starts drained (the drained state is
   persisted), so it announces nothing yet;
4. resumed: ``maglev ctl resume-instance``; we wait until the router's route has it again.

A connection *survives* when every one of its requests, until the last instance is back,
was answered by its first backend.  The result gives the exact share.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from maglev.lab import topology as t
from maglev.lab.failover import MAX_CONNECTIONS, KeepAlive
from maglev.lab.talkers import Talkers


def ctl(control: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from maglev_cli.main import main; main()", "ctl", "--control",
                           control, *args], capture_output=True, text=True, timeout=30)


def _wait(pred: Any, timeout_s: float, what: str, lab: Any) -> float:
    t0 = time.monotonic()
    while not pred():
        lab._check_processes()
        if time.monotonic() - t0 > timeout_s:
            raise t.LabError(f"rolling upgrade: {what} not within {timeout_s:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - t0


def _command_of(pid: int) -> tuple[list[str], dict[str, str]]:
    """The argv and the MAGLEV_* environment of a running process (to start it again)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    env = {}
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        k, _, v = item.decode(errors="replace").partition("=")
        if k.startswith("MAGLEV_"):
            env[k] = v
    return [a.decode() for a in argv], env


def upgrade_instance(lab: Any, idx: int, settle_s: float = 0.5, route_timeout_s: float = 20.0,
                     ready_timeout_s: float = 120.0) -> dict[str, Any]:
    """Steps 1-4 of the module docstring for instance ``idx`` (1-based); timings in s."""
    inst = lab.state["instances"][idx - 1]
    role = f"maglev{idx}"
    rec = next(p for p in lab.state["processes"] if p["role"] == role)
    argv, env = _command_of(rec["pid"])
    log = Path(rec["log"])
    adopted_before = log.read_text(errors="replace").count("adopting the previous run's tables")
    out: dict[str, Any] = {"instance": inst["name"]}
    t0 = time.monotonic()
    r = ctl(inst["control"], "drain-instance")
    if r.returncode != 0:
        raise t.LabError(f"drain-instance {inst['name']}: {r.stderr.strip()}")
    out["withdrawn_s"] = round(_wait(lambda: inst["ipv4"] not in lab.vip_nexthops(), route_timeout_s,
                                     f"{inst['name']} out of the router's route", lab), 3)
    time.sleep(settle_s)  # step 2 of the procedure: what was already sent to it drains
    t1 = time.monotonic()
    lab.stop_process(role)
    out["stopped_s"] = round(time.monotonic() - t1, 3)
    t2 = time.monotonic()
    lab.spawn(role, inst["ns"], argv, env=env)

    def controller_up() -> bool:
        s = ctl(inst["control"], "status", "--json")
        if s.returncode != 0:
            return False
        c = json.loads(s.stdout).get("controller") or {}
        return bool(c.get("healthy"))

    out["ready_s"] = round(_wait(controller_up, ready_timeout_s, f"{inst['name']} healthy after its restart", lab), 3)
    out["announced_while_drained"] = inst["ipv4"] in lab.vip_nexthops()
    text = log.read_text(errors="replace")
    out["adopted_tables"] = text.count("adopting the previous run's tables") > adopted_before
    out["started_drained"] = "instance drained (persisted in" in text
    r = ctl(inst["control"], "resume-instance")
    if r.returncode != 0:
        raise t.LabError(f"resume-instance {inst['name']}: {r.stderr.strip()}")
    t3 = time.monotonic()
    out["announced_s"] = round(_wait(lambda: inst["ipv4"] in lab.vip_nexthops(), route_timeout_s,
                                     f"{inst['name']} back in the router's route", lab), 3)
    out["restart_to_announced_s"] = round(time.monotonic() - t2, 3)
    out["out_of_route_s"] = round(t3 - t0 + out["announced_s"], 3)
    return out


def rolling_upgrade(state: dict[str, Any], connections: int = 200, period_s: float = 0.1,
                    settle_s: float = 0.5) -> dict[str, Any]:
    """Upgrade every instance in turn under ``connections`` long-lived connections."""
    from maglev.lab.scaleout import ScaleoutLab

    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"connections must be 1..{MAX_CONNECTIONS}, not {connections}")
    lab = ScaleoutLab(Path(state["config"]).parent)
    lab.state = state
    conns: list[KeepAlive] = []
    talk: Talkers | None = None
    steps = []
    t0 = time.monotonic()
    try:
        for _ in range(connections):
            conns.append(KeepAlive(state["client"]["ns"], timeout=10.0))
        first = [c.get() for c in conns]
        talk = Talkers([c.s for c in conns], first, period_s).start()
        for idx in range(1, len(state["instances"]) + 1):
            steps.append(upgrade_instance(lab, idx, settle_s))
        talk.finish()
        if talk.error is not None:
            raise talk.error
        # one more request on every surviving connection, after the last instance is back
        for i, c in enumerate(conns):
            if i not in talk.lost:
                try:
                    got = c.get()
                except OSError as exc:
                    talk.lost[i] = f"failed: {type(exc).__name__}: {exc}"
                    continue
                if got != first[i]:
                    talk.lost[i] = f"moved {first[i]} -> {got}"
    finally:
        if talk is not None:
            talk.finish()
        for c in conns:
            c.close()
    kept = connections - len(talk.lost)
    elapsed = time.monotonic() - t0
    return {
        "requests_per_connection_per_s_while_talking": round(talk.rate(), 2),
        "late_turns": talk.late,
        "max_rtt_ms": round(talk.max_rtt_s * 1e3, 1),
        "connections": connections,
        "survived": kept,
        "survived_share": round(kept / connections, 4),
        "lost": dict(Counter(v.split(":")[0] for v in talk.lost.values())),
        "requests": talk.requests,
        "requests_per_connection_per_s": round(talk.requests / connections / elapsed, 2),
        "elapsed_s": round(elapsed, 1),
        "backends_first": dict(Counter(first)),
        "instances": steps,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m maglev.lab.upgrade", description=__doc__.split("\n\n")[0])
    ap.add_argument("--state-dir", default=str(t.STATE_DIR))
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--settle", type=float, default=0.5, help="seconds between the withdraw and the stop")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m maglev.lab.upgrade needs root (network namespaces)", file=sys.stderr)
        return 2
    from maglev.lab.scaleout import ScaleoutLab

    lab = ScaleoutLab(Path(a.state_dir))
    state = lab.load()
    if not state or not state.get("instances"):
        print(f"no scale-out lab at {a.state_dir} (maglev lab up --instances 3 --bgp)", file=sys.stderr)
        return 2
    try:
        res = rolling_upgrade(state, a.connections, settle_s=a.settle)
    except (t.LabError, ValueError) as exc:
        print(f"rolling upgrade: {exc}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{res['survived']}/{res['connections']} connections kept their backend = {res['survived_share']:.4f} "
              f"({res['requests']} requests in {res['elapsed_s']} s)")
        for s in res["instances"]:
            print(f"  {s['instance']}: withdrawn {s['withdrawn_s']} s, stopped {s['stopped_s']} s, ready "
                  f"{s['ready_s']} s, announced {s['announced_s']} s; adopted tables {s['adopted_tables']}, "
                  f"started drained {s['started_drained']}")
    return 0 if res["survived_share"] >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
