"""``maglev run`` with [bgp] peers: the controller announces, withdraws and drains through the
real BGP speaker actor, toward a BGP peer on 127.0.0.1 (no root needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from maglev.config import DEFAULT_FLOW_HASH_SECRET
from maglev.control.protocol import decode_event
from maglev.hashing import build_table
from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing.packets import write_pcap
from maglev.testing.ports import free_port
from maglev.testing.wait import wait_until
from tests.run_helpers import ctl_status, maglev_ctl

from .conftest import Listener, RouterThread, bgp_instance_toml

pytestmark = pytest.mark.slow

VIP_A = "203.0.113.10/32"  # health "none": always serving
VIP_B = "203.0.113.20/32"  # one backend, TCP-checked against a listener the test controls


def _config(tmp: Path, router_port: int, check_port: int) -> Path:
    # vip 203.0.113.20's backend is a health-check target on this host
    text = bgp_instance_toml("ctltest", router_port, "allow_loopback_backends = true") + f"""
[[vip]]
address = "203.0.113.10"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.2.11"
name = "be1"
[[vip.backend]]
address = "198.18.2.12"
name = "be2"

[[vip]]
address = "203.0.113.20"
port = 80
protocol = "tcp"
[vip.health]
type = "tcp"
port = {check_port}
interval_ms = 200
timeout_ms = 200
rise = 1
fall = 1
[[vip.backend]]
address = "127.0.0.1"
name = "local"
"""
    p = tmp / "maglev.toml"
    p.write_text(text)
    return p


def test_controller_follows_health_drain_and_shutdown(tmp_path):
    router = RouterThread(free_port()).start()
    listener = Listener().start()
    conf = _config(tmp_path, router.port, listener.port)
    empty = write_pcap(tmp_path / "empty.pcap", [])
    control = f"ipc://{tmp_path}/ctl.sock"
    env = {**os.environ, "MAGLEV_STATE_DIR": str(tmp_path / "state"), "MAGLEV_RUN_DIR": str(tmp_path / "run")}
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--config", str(conf),
         "--nic", f"pcap:{empty}", "--workers", "1", "--control", control, "--json"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"bgp")
    events: list[dict] = []

    def drain_events() -> list[dict]:
        while sub.poll(0):
            topic, body = decode_event(sub.recv_multipart())
            events.append(body)
        return events

    try:
        wait_until(lambda: Path(f"{tmp_path}/events.sock").exists(), 30, "the control sockets")
        sub.connect(f"ipc://{tmp_path}/events.sock")
        # Both VIPs can serve (listener up): both announced once healthy for announce_after_s.
        wait_until(lambda: router.received() == {VIP_A, VIP_B}, 30, "both VIPs announced")
        # The controller pushes its state to the config manager periodically, so `status`
        # may trail the router by one push.
        def settled() -> dict | None:
            c = (s := ctl_status(control))["controller"]
            return s if c["healthy"] and c["bgp"] and sorted(c["announced"]) == [VIP_A, VIP_B] else None

        st = wait_until(settled, 10, "status to show both VIPs announced by a healthy controller")

        # The speaker actor runs above packet work (nice -10, docs/bgp.md), also after
        # `maglev run` dropped its capabilities: RLIMIT_NICE lets it (privileges.allow_nice).
        import psutil

        speakers = [k for k in psutil.Process(proc.pid).children(recursive=True)
                    if '"name": "bgp"' in " ".join(k.cmdline())]  # fmt: skip
        assert len(speakers) == 1 and speakers[0].nice() == -10, [(k.pid, k.nice(), k.cmdline()[-1][:80]) for k in speakers]

        # Fingerprints: what any instance builds from the same backends, destinations and
        # flow-hash secret (this config keeps the built-in one, so status warns about it).
        fps = {t["vip"]: t["fingerprint"] for t in st["tables"]}
        secret = DEFAULT_FLOW_HASH_SECRET
        assert fps["203.0.113.10:80/tcp"] == build_table([("be1", 1), ("be2", 1)]).fingerprint(
            secret, {"be1": "gre 198.18.2.11", "be2": "gre 198.18.2.12"})
        assert fps["203.0.113.20:80/tcp"] == build_table([("local", 1)]).fingerprint(secret, {"local": "gre 127.0.0.1"})
        assert len(st["warnings"]) == 1 and "flow_hash_secret" in st["warnings"][0]
        human = maglev_ctl(control, "status")
        assert f"fingerprint {fps['203.0.113.10:80/tcp']}" in human.stdout and "forwarder     healthy" in human.stdout
        assert human.stdout.count("WARNING") == 1 and secret not in human.stdout

        # Reloads never touch the BGP session: `ctl reload` of an unchanged file, one with
        # only a comment added, and SIGHUP to `maglev run` (the systemd reload).
        sessions = router.sessions()
        assert sessions == 1
        assert maglev_ctl(control, "reload").returncode == 0
        conf.write_text(conf.read_text() + "\n# edited: a comment only\n")
        assert maglev_ctl(control, "reload").returncode == 0
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: "SIGHUP: config reloaded" in (tmp_path / "run.log").read_text(), 15, "the SIGHUP reload")
        assert router.sessions() == sessions and router.state() == "ESTABLISHED"
        # (the routes themselves follow health: under load a slow check may withdraw VIP B
        # for a moment and flap damping holds its return for a second; that is not a reset)
        wait_until(lambda: router.received() == {VIP_A, VIP_B}, 15, "both VIPs announced after the reloads")
        assert router.sessions() == sessions

        # The only backend of VIP B fails its check: B is withdrawn, A stays.
        listener.stop()
        wait_until(lambda: router.received() == {VIP_A}, 15, "VIP B withdrawn after its backend went down")
        listener.start()
        wait_until(lambda: router.received() == {VIP_A, VIP_B}, 15, "VIP B back")

        # Drain: everything withdrawn, the session stays up; resume brings them back.
        r = maglev_ctl(control, "drain-instance")
        assert r.returncode == 0 and "drained" in r.stdout, r.stderr
        wait_until(lambda: router.received() == set(), 10, "every VIP withdrawn on drain-instance")
        assert router.state() == "ESTABLISHED"
        assert "DRAINED" in maglev_ctl(control, "status").stdout
        r = maglev_ctl(control, "resume-instance")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: router.received() == {VIP_A, VIP_B}, 10, "VIPs back after resume-instance")

        # The event stream carried session states and the controller's decisions.
        wait_until(lambda: any(e.get("event") == "controller.announce" for e in drain_events()), 5, "events")
        kinds = {e.get("event") for e in drain_events()}
        assert {"controller.withdraw", "controller.announce", "controller.drain", "bgp.route"} <= kinds, kinds
        withdraws = [e for e in events if e.get("event") == "controller.withdraw"]
        assert {"prefix": VIP_B, "reason": "no healthy backend"} in [
            {k: e[k] for k in ("prefix", "reason")} for e in withdraws]  # fmt: skip

        # Clean stop: withdrawn first (while the session is still up), then CEASE.
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        wait_until(lambda: router.received() == set(), 10, "VIPs withdrawn on shutdown")
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 >= 0.9  # the controller waited for the routers
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        listener.stop(keep_port=False)
        sub.close()
        ctx.term()
        router.close()
        remove_recorded(str(tmp_path))  # the connection tables the run kept for adoption
