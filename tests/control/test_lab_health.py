"""In the namespace lab, through the real forwarder (AF_PACKET) with the health prober:
stop one backend's HTTP server -> it leaves the table within interval x fall + 1 s and
requests through the VIP keep succeeding; start it again -> it returns and gets requests."""

from __future__ import annotations

import sys
import time

import pytest

from tests.lab.lab_helpers import backend_rows, lab_config, spawn_run, wait_all_up, write_config

pytestmark = pytest.mark.root

INTERVAL_MS, FALL, RISE = 200, 2, 2


@pytest.mark.slow
def test_dead_backend_leaves_the_table_and_returns(shortdir, make_lab):  # shortdir outlives the lab
    from maglev.control.client import ControlClient
    from maglev.lab import topology as topo
    from maglev.lab.client import http_load

    lab = make_lab(backends=3, encap="gre", forwarder=False)
    st = lab.state
    data = lab_config(lab)
    for v in data["vip"]:
        if v["protocol"] == "tcp":
            v["health"] = {"type": "http", "port": topo.HTTP_PORT, "path": "/", "interval_ms": INTERVAL_MS,
                           "timeout_ms": 150, "rise": RISE, "fall": FALL}
    data["instance"]["name"] = "labhc"
    write_config(shortdir / "maglev.toml", data)
    ep = spawn_run(lab, shortdir, 1, ("config", "health"))
    vip = f"{topo.VIP_V4}:0/tcp"
    wait_all_up(lab, ep, vip, "backends never all up")
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
            rows = backend_rows(c, vip)
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
