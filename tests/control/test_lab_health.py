"""In the namespace lab, through the real forwarder (AF_PACKET) with the health prober:
stop one backend's HTTP server -> it leaves the table within interval x fall + 1 s and
requests through the VIP keep succeeding; start it again -> it returns and gets requests."""

from __future__ import annotations

import secrets
import sys
import time
import tomllib
from pathlib import Path

import pytest

from maglev.config import Config, dump_toml

pytestmark = pytest.mark.root

INTERVAL_MS, FALL, RISE = 200, 2, 2
REGISTER = ("from maglev.actors import extra; extra.register('config', 'health'); "
            "from maglev_cli.main import main; main()")


@pytest.mark.slow
def test_dead_backend_leaves_the_table_and_returns(tmp_path, shortdir):
    from maglev.control.client import ControlClient
    from maglev.lab import topology as topo
    from maglev.lab.client import http_load

    if reason := topo.why_no_lab():
        pytest.skip(reason)
    spec = topo.LabSpec(prefix=f"mgt-lab{secrets.token_hex(2)}", state_dir=tmp_path / "lab", backends=3,
                        encap="gre", forwarder=False)
    lab = topo.Lab(spec.state_dir)
    try:
        lab.up(spec, wait_s=30)
        st = lab.state
        data = tomllib.loads(Path(st["config"]).read_text())
        for v in data["vip"]:
            if v["protocol"] == "tcp":
                v["health"] = {"type": "http", "port": topo.HTTP_PORT, "path": "/", "interval_ms": INTERVAL_MS,
                               "timeout_ms": 150, "rise": RISE, "fall": FALL}
        data["instance"]["name"] = "labhc"
        cfg = shortdir / "maglev.toml"
        cfg.write_text(dump_toml(Config.from_dict(data)))
        env = {"MAGLEV_RUN_DIR": str(shortdir / "run"), "MAGLEV_STATE_DIR": str(shortdir / "state")}
        lab.spawn("maglev", st["maglev"]["ns"],
                  [sys.executable, "-c", REGISTER, "run", "--config", str(cfg), "--nic", "afpacket:eth0",
                   "--workers", "1"], env=env)
        vip = f"{topo.VIP_V4}:0/tcp"
        ep = f"ipc://{shortdir}/run/labhc/control.sock"
        deadline = time.monotonic() + 40
        rows = None
        while True:
            lab._check_processes()
            try:
                with ControlClient(ep, timeout=1) as c:
                    rows = {r["backend"]: r for r in c.call("backends", {"vip": vip})["backends"]}
                if all(r["health"] == "up" for r in rows.values()):
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, f"backends never all up: {rows}"
            time.sleep(0.2)
        client_ns = st["client"]["ns"]
        before = http_load(client_ns, topo.VIP_V4, 60, concurrency=4, deadline_s=60)
        assert before.ok == 60 and len(before.backends) == 3, before

        victim = st["backends"][0]
        name = victim["name"]
        t0, w0 = time.monotonic(), time.time()  # includes stopping the server (SIGTERM, exit)
        assert lab.stop_process(f"httpd-{name}")
        stopped = time.monotonic() - t0
        with ControlClient(ep, timeout=5) as c:
            while True:
                rows = {r["backend"]: r for r in c.call("backends", {"vip": vip})["backends"]}
                if rows[name]["health"] == "down":
                    break
                assert time.monotonic() - t0 < 10, rows
                time.sleep(0.05)
        with ControlClient(ep, timeout=5) as c:
            verdict = [h for h in c.call("health") if h["backend"] == name and h["vip"] == vip][0]
            last = c.call("status")["last_change"]
        # When the table without it was confirmed by every worker (the manager's clock),
        # counted from SIGTERM to the server; stop_process itself then waits for the exit.
        took = last["time"] - w0
        print(f"{name}: verdict +{verdict['since'] - w0:.2f} s, table confirmed +{took:.2f} s "
              f"(apply {last['apply_ms']:.0f} ms), stop_process {stopped:.2f} s")
        assert last["op"] == "health" and last["confirmed"]
        assert took <= INTERVAL_MS / 1000 * FALL + 1.0, f"left the table after {took:.2f} s"
        assert rows[name]["entries"] == 0
        during = http_load(client_ns, topo.VIP_V4, 100, concurrency=4, deadline_s=60)
        assert during.ok == 100, during.failures
        assert name not in during.backends

        py = sys.executable
        lab.spawn(f"httpd-{name}", victim["ns"], [py, "-m", "maglev.lab.httpd", "--name", name,
                                                   "--port", str(topo.HTTP_PORT)])
        t0 = time.monotonic()
        with ControlClient(ep, timeout=5) as c:
            while c.call("backends", {"vip": vip})["backends"][0]["health"] != "up":
                assert time.monotonic() - t0 < 10, "the backend did not come back"
                time.sleep(0.05)
        after = http_load(client_ns, topo.VIP_V4, 90, concurrency=4, deadline_s=60)
        assert after.ok == 90 and after.backends[name] > 0, after
    finally:
        lab.down()
