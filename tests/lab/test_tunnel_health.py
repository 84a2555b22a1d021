"""Health checks through the tunnel in the namespace lab, through the real forwarder
(AF_PACKET) and the health prober: ``through_tunnel = true`` and ``[health] initial =
"unknown"``.  Every backend serves only after its first handshake with the VIP through
GRE; then one backend's decapsulation agent is stopped -- its HTTP server still answers a
direct check, yet clients would be black-holed -- and it leaves the table within
fall x interval (plus the time to publish), while requests through the VIP keep
succeeding; started again, it comes back."""

from __future__ import annotations

import time

import pytest

from tests.lab.lab_helpers import backend_rows, lab_config, spawn_run, wait_all_up, write_config

pytestmark = pytest.mark.root

INTERVAL_MS, FALL, RISE = 200, 2, 2


@pytest.mark.slow
def test_broken_decapsulation_leaves_the_table(shortdir, make_lab):  # shortdir outlives the lab
    from maglev.control.client import ControlClient
    from maglev.lab import topology as topo
    from maglev.lab.client import http_load

    lab = make_lab(backends=3, encap="gre", forwarder=False)
    st = lab.state
    data = lab_config(lab)
    for v in data["vip"]:
        if v["protocol"] == "tcp" and ":" not in v["address"]:
            v["health"] = {"type": "tcp", "port": topo.HTTP_PORT, "through_tunnel": True,
                           "interval_ms": INTERVAL_MS, "timeout_ms": 150, "rise": RISE, "fall": FALL}
    data["health"] = {"initial": "unknown"}
    data["instance"]["name"] = "labtun"
    write_config(shortdir / "maglev.toml", data)
    ep = spawn_run(lab, shortdir, 1, ("config", "health"))
    sup = next(p["pid"] for p in lab.state["processes"] if p["role"] == "maglev")  # the supervisor
    vip = f"{topo.VIP_V4}:0/tcp"

    def no_slot_before_a_probe(r):  # before its first probe a backend has no slot (initial = "unknown")
        for x in r.values():
            if x["health"] == "unknown":
                assert x["entries"] == 0, r

    r = wait_all_up(lab, ep, vip, "backends never all up through the tunnel", check=no_slot_before_a_probe)
    assert all("SYN-ACK from 203.0.113.10:80 through gre" in x["health_detail"] for x in r.values()), r
    # The prober probes through raw sockets it opened at set-up, holding no capability now.
    import psutil

    from maglev.service.privileges import cap_sets

    probers = [p for p in psutil.Process(sup).children(recursive=True) if '"name": "health"' in " ".join(p.cmdline())]
    assert len(probers) == 1, probers
    caps = cap_sets(probers[0].pid)
    assert caps["CapEff"] == 0 and caps["CapPrm"] == 0, {k: hex(v) for k, v in caps.items()}
    client_ns = st["client"]["ns"]
    before = http_load(client_ns, topo.VIP_V4, 60, concurrency=4, deadline_s=60)
    assert before.ok == 60 and len(before.backends) == 3, before

    victim = st["backends"][0]
    name = victim["name"]
    assert lab.stop_process(f"agent-{name}")  # decapsulation gone; its HTTP server still runs
    # Timed from the moment the agent is gone for sure: its own exit (SIGTERM, then the
    # lab polls for it) can take a while on a busy machine and is not the prober's time.
    t0, w0 = time.monotonic(), time.time()
    # A direct check would still pass: the backend's own address answers.
    direct = topo.http_get(st["maglev"]["ns"], victim["ipv4"], topo.HTTP_PORT, timeout=2)
    assert direct[0] == 200, direct
    with ControlClient(ep, timeout=5) as c:
        while backend_rows(c, vip)[name]["health"] != "down":
            assert time.monotonic() - t0 < 10, backend_rows(c, vip)
            time.sleep(0.05)
        r = backend_rows(c, vip)
        last = c.call("status")["last_change"]
    took = last["time"] - w0
    print(f"{name}: decapsulation stopped, table without it confirmed +{took:.2f} s "
          f"({r[name]['health_detail']})")
    assert last["op"] == "health" and last["confirmed"]
    # rise/fall x interval: FALL failed probes (each up to its timeout) + publishing
    assert took <= INTERVAL_MS / 1000 * FALL + 1.0, f"left the table after {took:.2f} s"
    assert r[name]["entries"] == 0 and "timeout" in r[name]["health_detail"]
    during = http_load(client_ns, topo.VIP_V4, 100, concurrency=4, deadline_s=60)
    assert during.ok == 100, during.failures
    assert name not in during.backends

    lab.spawn(f"agent-{name}", victim["ns"],
              [*topo.maglev_argv(), "backend-agent", "--vip", topo.VIP_V4, "--vip", topo.VIP_V6,
               "--encap", "gre"])
    t0 = time.monotonic()
    with ControlClient(ep, timeout=5) as c:
        # up, and in the table the config manager published for it (health first, then
        # the table: fresh flows reach it only once it has slots)
        while not ((row := backend_rows(c, vip)[name])["health"] == "up" and row["entries"] > 0):
            assert time.monotonic() - t0 < 15, f"the backend did not come back: {row}"
            time.sleep(0.05)
    after = http_load(client_ns, topo.VIP_V4, 90, concurrency=4, deadline_s=60)
    assert after.ok == 90 and after.backends[name] > 0, after
