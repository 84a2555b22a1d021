"""Least privilege: the capability table in docs/service.md is the one the code keeps, and
`maglev run` started as root keeps only that set -- in the supervisor and every actor,
also an actor restarted after a crash (it reopens its AF_PACKET socket with it) -- plus
CAP_SYS_NICE where only it keeps the data path's SCHED_FIFO (no CAP_SYS_RESOURCE to raise
RLIMIT_RTPRIO), and the data path is SCHED_FIFO after the drop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from maglev.config import Config
from maglev.service import privileges as pv
from maglev.testing.netns import NetnsSet, why_no_netns

from .conftest import CLI, NotifySocket

DOC = Path(__file__).resolve().parents[2] / "docs" / "service.md"
NET_RAW, IPC_LOCK = 1 << 13, 1 << 14


def doc_table() -> dict[str, tuple[set[str], set[str]]]:
    """The "Capabilities by NIC" table: --nic kind -> (needed, recommended)."""
    text = DOC.read_text().split("## Capabilities by NIC", 1)[1].split("\n## ", 1)[0]
    out: dict[str, tuple[set[str], set[str]]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        kinds = re.findall(r"`(\w+)", cells[0])
        required, _, recommended = cells[1].partition(";")
        need = set(re.findall(r"CAP_\w+", required.split("(or")[0]))
        rec = set(re.findall(r"CAP_\w+", recommended)) if "recommended" in recommended else set()
        for k in kinds:
            out[k] = (need, rec)
    return out


def cfg(bgp: dict | None = None) -> Config:
    data = {"instance": {"source_ipv4": "198.18.0.10"},
            "vip": [{"address": "203.0.113.10", "port": 80, "backend": [{"address": "198.18.1.11"}]}]}
    if bgp:
        data["bgp"] = bgp
    return Config.from_dict(data)


def test_the_documented_table_is_what_the_code_keeps():
    table = doc_table()
    for kind in ("gen", "pcap", "null", "afpacket", "afxdp"):
        need, rec = table[kind]
        assert set(pv.needed_caps(kind, cfg())) == need, kind
        assert set(pv.recommended_caps(kind)) == rec, kind
    # BGP on a port below 1024 (with peers: only then does a speaker run) adds one
    bgp = {"local_asn": 64512, "router_id": "198.18.0.9", "listen_port": 179,
           "peer": [{"address": "198.18.0.1", "asn": 64513}]}
    assert pv.needed_caps("gen", cfg(bgp)) == ["CAP_NET_BIND_SERVICE"]
    assert pv.needed_caps("gen", cfg({**bgp, "listen_port": 1179})) == []
    # a generator feeding an AF_PACKET transmit side needs the raw socket too
    assert pv.needed_caps("gen", cfg(), out_kind="afpacket") == ["CAP_NET_RAW"]


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping capabilities needs a process that holds them (root)")
def test_drop_to_leaves_exactly_the_kept_set_and_children_inherit_it():
    code = (
        "import subprocess\n"
        "from maglev.service.privileges import drop_to, cap_sets\n"
        "r = drop_to({'CAP_NET_RAW', 'CAP_IPC_LOCK'})\n"
        "s = cap_sets()\n"
        "child = subprocess.run(['grep', '^Cap', '/proc/self/status'], capture_output=True, text=True).stdout\n"
        "print(r['kept'], len(r['dropped']) > 30, r['bounding_dropped'])\n"
        "print(hex(s['CapEff']), hex(s['CapPrm']), hex(s['CapInh']), hex(s['CapBnd']), hex(s['CapAmb']))\n"
        "print(child)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "['CAP_NET_RAW', 'CAP_IPC_LOCK'] True True"
    want = hex(NET_RAW | IPC_LOCK)
    assert lines[1].split() == [want] * 5
    # a program it starts (uid 0 still: execve would refill from the bounding set) holds the same
    child = {k: int(v, 16) for k, v in (ln.split(":\t") for ln in lines[2:] if ln.startswith("Cap"))}
    assert child == {"CapInh": NET_RAW | IPC_LOCK, "CapPrm": NET_RAW | IPC_LOCK, "CapEff": NET_RAW | IPC_LOCK,
                     "CapBnd": NET_RAW | IPC_LOCK, "CapAmb": NET_RAW | IPC_LOCK}, child


def _tree(pid: int) -> dict[int, str]:
    """pid -> actor name ("supervisor" for the run itself) of a run and its actors."""
    out = {pid: "supervisor"}
    for c in psutil.Process(pid).children(recursive=True):
        try:
            cmd = " ".join(c.cmdline())
        except psutil.Error:
            continue
        m = re.search(r'"name": "([\w-]+)"', cmd)
        out[c.pid] = m.group(1) if m else ("standby" if "--standby" in cmd else cmd[:40])
    return out


def _caps_of(pids: dict[int, str]) -> dict[str, tuple[int, int, int]]:
    out = {}
    for pid, name in pids.items():
        try:
            s = pv.cap_sets(pid)
        except OSError:
            continue  # exited meanwhile (a standby taken for a restart)
        out[f"{name}:{pid}"] = (s["CapEff"], s["CapPrm"], s["CapBnd"])
    return out


CONFIG = """
[instance]
name = "privtest"
source_ipv4 = "198.18.4.2"

[[vip]]
address = "203.0.113.40"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.4.11"
"""


def rt_kept() -> set[str]:
    """What `maglev run --rt-prio 1` (the muxer at 3) also keeps so that the data
    path's SCHED_FIFO survives the drop (privileges.allow_rt_priority): nothing when
    RLIMIT_RTPRIO can be raised to 3, else CAP_SYS_NICE when held (a container without
    CAP_SYS_RESOURCE, as this project's CI)."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_RTPRIO)[1]
    eff = pv.cap_sets()["CapEff"]
    if hard == resource.RLIM_INFINITY or hard >= 3 or eff >> pv.CAPS["CAP_SYS_RESOURCE"] & 1:
        return set()
    return {"CAP_SYS_NICE"} if eff >> pv.CAPS["CAP_SYS_NICE"] & 1 else set()


def _why_no_afxdp() -> str:
    try:
        from maglev.nic.afxdp import why_no_afxdp
    except ImportError:
        return "this build has no AF_XDP driver"
    return why_no_afxdp()


@pytest.mark.slow
@pytest.mark.skipif(bool(why_no_netns()), reason=why_no_netns() or "")
@pytest.mark.parametrize("nic", ["afpacket", "afxdp"])
def test_root_run_keeps_only_the_nic_set_in_every_actor_also_after_a_restart(tmp_path, nic):
    """`maglev run --nic afpacket:eth0` (and afxdp) as root: one log line names what it
    kept; the supervisor, steering and the muxer hold the table's set (afpacket:
    CAP_NET_RAW + CAP_IPC_LOCK) and nothing else, bounding set included, the other actors
    nothing; steering killed with SIGKILL comes back and reopens its packet socket (afxdp:
    loads and attaches its XDP program again) with that set."""
    if nic == "afxdp" and (why := _why_no_afxdp()):
        pytest.skip(f"AF_XDP: {why}")
    conf = tmp_path / "maglev.toml"
    conf.write_text(CONFIG)
    ns_path = tmp_path / "notify"
    notify = NotifySocket(ns_path)
    log_path = tmp_path / "run.log"
    names = [*pv.needed_caps(nic, None), *pv.recommended_caps(nic)]
    rt = rt_kept()
    kept = pv.mask([*names, *rt])
    nice = pv.mask(rt)  # a worker keeps only CAP_SYS_NICE, to return to SCHED_FIFO (Actor.sched_setup)
    with NetnsSet("priv") as nets, open(log_path, "w") as log:
        mg, peer = nets.add("mg"), nets.add("peer")
        nets.veth(mg, "eth0", peer, "eth0")
        env = {**os.environ, "NOTIFY_SOCKET": str(ns_path), "MAGLEV_RUN_DIR": str(tmp_path / "run"),
               "MAGLEV_STATE_DIR": str(tmp_path / "state")}
        # --placement spread: no two workers share a CPU, so both may run SCHED_FIFO and keep
        # CAP_SYS_NICE (with the default, apart, two workers on 2 CPUs share CPU 1: crowded,
        # SCHED_OTHER, placement.idle_params)
        proc = mg.popen([*CLI, "run", "--config", str(conf), "--nic", f"{nic}:eth0", "--workers", "2",
                         "--json", "-v", "--rt-prio", "1", "--placement", "spread"],
                        stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            notify.wait_for("READY", "1", 60)
            pids = _tree(proc.pid)
            assert {"supervisor", "steering", "worker-0", "worker-1", "muxer"} <= set(pids.values()), pids
            caps = _caps_of(pids)
            # steering and the muxer keep the run's set (they close the NIC at teardown);
            # workers, the config manager and the health prober (its tunnel checks' raw
            # sockets are opened in its setup) drop it all after setup
            bare = ("config", "health")
            want = {k: (0, 0, kept) if k.startswith(bare) else (nice, nice, kept) if k.startswith("worker-")
                    else (kept, kept, kept) for k in caps}
            assert caps == want, {k: tuple(map(hex, v)) for k, v in caps.items()}
            lines = [ln for ln in log_path.read_text().splitlines() if "capabilities dropped" in ln]
            assert len(lines) == 1 and f"kept={','.join(pv.names(kept))}" in lines[0], lines
            assert "instance=privtest" in lines[0] and f"(--nic {nic}" in lines[0]
            # the data path runs SCHED_FIFO (steering 1, workers 2, muxer 3) after the drop
            fifo = {n: (os.sched_getscheduler(p) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(p).sched_priority)
                    for p, n in pids.items() if n in ("steering", "worker-0", "worker-1", "muxer")}
            f = os.SCHED_FIFO
            assert fifo == {"steering": (f, 1), "worker-0": (f, 2), "worker-1": (f, 2), "muxer": (f, 3)}, fifo

            # A crashed steering actor is restarted and reopens its AF_PACKET socket.
            steering = next(p for p, n in pids.items() if n == "steering")
            os.kill(steering, signal.SIGKILL)
            deadline = time.monotonic() + 30
            pat = re.compile(r"actor=steering .*msg=started .*incarnation=1")
            while not (started := [ln for ln in log_path.read_text().splitlines() if pat.search(ln)]):
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.1)
            # (a restart runs in the standby process, whose command line names no actor)
            again = int(re.search(r" pid=(\d+)", started[0]).group(1))
            assert again != steering and again in _tree(proc.pid)
            assert _caps_of({again: "steering"}) == {f"steering:{again}": (kept, kept, kept)}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        finally:
            notify.close()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to see the drop")
def test_root_run_with_the_generator_keeps_nothing(tmp_path):
    env = {**os.environ, "MAGLEV_RUN_DIR": str(tmp_path / "run"), "MAGLEV_STATE_DIR": str(tmp_path / "state")}
    for extra, rt in (((), set()), (("--rt-prio", "1"), rt_kept())):  # the default keeps SCHED_OTHER
        r = subprocess.run([*CLI, "run", "--nic", "gen:seconds=1", "--json", "-v", *extra],
                           capture_output=True, text=True, timeout=150, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        lines = [ln for ln in r.stderr.splitlines() if "capabilities dropped" in ln]
        want = f"kept={','.join(sorted(rt))}" if rt else "kept=none"
        assert len(lines) == 1 and want in lines[0] and "(--nic gen" in lines[0], (extra, lines)
