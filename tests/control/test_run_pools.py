"""Nested pools through ``maglev run`` (generator NIC, workers, config manager and health
prober as processes): a dead backend of a pool is found by its pool's own check, the
pool's healthy share falls below the threshold and its backup pool takes traffic; ``ctl
backends`` shows the tree, ``whereis`` and the metrics name the pool path."""

from __future__ import annotations

import socket
import time

import pytest

from maglev.control.client import ControlClient
from maglev.testing import unique
from maglev.testing.acceptor import Acceptor

from .test_run import outer_dsts, run_env  # noqa: F401  (run_env is a fixture)

CONF = """
[instance]
name = "{name}"
source_ipv4 = "198.18.0.1"
allow_loopback_backends = true

[[vip]]
address = "203.0.113.10"
port = 80
table_size = 1009
pool = [{{ name = "web" }}]

[[pool]]
name = "web"
backup = "dr"
backup_below_percent = 60
pool = [{{ name = "a", weight = 1 }}]
backend = [{{ address = "127.0.0.5", weight = 1 }}]
health = {{ type = "tcp", port = {port}, interval_ms = 100, timeout_ms = 80, rise = 1, fall = 1 }}

[[pool]]
name = "a"
backend = [{{ address = "127.0.0.1" }}, {{ address = "127.0.0.2" }}]
health = {{ type = "tcp", port = {port}, interval_ms = 100, timeout_ms = 80, rise = 1, fall = 1 }}

[[pool]]
name = "dr"
backend = [{{ address = "127.0.0.3" }}]
health = {{ type = "tcp", port = {port}, interval_ms = 100, timeout_ms = 80, rise = 1, fall = 1 }}
"""
VIP = "203.0.113.10:80/tcp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_pool_backup_takes_over_in_a_real_run(run_env):  # noqa: F811
    from maglev.actors.pipeline import Pipeline, PipelineOptions
    from maglev.observability import prometheus
    from maglev_cli.top import render_frame

    # 127.0.0.1 and 127.0.0.3 answer on one port; 127.0.0.2 and 127.0.0.5 do not.  The
    # listeners accept and close (a full accept queue would look like a dead backend).
    port = free_port()
    listeners = [Acceptor("127.0.0.1", port), Acceptor("127.0.0.3", port)]

    name = unique.name("pool")
    cfg = run_env / "maglev.toml"
    cfg.write_text(CONF.format(name=name, port=port))
    out = run_env / "out.pcap"
    p = Pipeline(PipelineOptions(workers=1, config_path=str(cfg), nic="gen:rate=3000,seconds=40,flows=300,ipv6=0",
                                 out=str(out)))
    try:
        p.start()
        tree = rows = answer = None
        with ControlClient(f"ipc://{run_env}/run/{name}/control.sock", timeout=5) as c:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                p.poll(0.05)
                try:
                    r = c.call("backends", {"vip": VIP}, timeout=1)
                except Exception:
                    continue
                rows = {x["backend"]: x for x in r["backends"]}
                tree = r["tree"]
                # every verdict the asserts below read: 127.0.0.1 too (its share is in
                # healthy_share; on a loaded machine its first probe may answer last)
                if tree[0]["backup_active"] and rows["127.0.0.2"]["health"] == "down" \
                        and rows["127.0.0.5"]["health"] == "down" and rows["127.0.0.3"]["health"] == "up" \
                        and rows["127.0.0.1"]["health"] == "up":
                    break
            assert tree is not None and tree[0]["backup_active"], (tree, rows)
            answer = c.call("whereis", {"src": "198.51.100.9:4000", "dst": "203.0.113.10:80/tcp"}, timeout=5)
            stats = c.call("stats", {}, timeout=5)  # what the Prometheus endpoint renders
        # web = 1/2 (127.0.0.5, down) + 1/2 pool a (half up): 25% healthy < 60%: dr gets 75%.
        assert tree[0]["healthy_share"] == 0.25
        assert rows["127.0.0.3"]["effective_weight"] == 3 and rows["127.0.0.1"]["effective_weight"] == 1
        assert rows["127.0.0.3"]["pool"] == "web/dr" and rows["127.0.0.1"]["pool"] == "web/a"
        assert rows["127.0.0.2"]["entries"] == 0 and rows["127.0.0.5"]["entries"] == 0
        assert answer["backend"] in ("127.0.0.1", "127.0.0.3")
        assert answer["pool"] == {"127.0.0.1": "web/a", "127.0.0.3": "web/dr"}[answer["backend"]]
        text = prometheus.render(stats)
        frame = render_frame(stats, stats, 1.0, width=200)  # `maglev top`
        assert any("127.0.0.3" in ln and ln.endswith("pool web/dr") for ln in frame), frame
        # prometheus_client sorts the labels and writes sample values as floats ("1.0")
        assert f'maglev_backend_pool_info{{backend="127.0.0.3",pool="web/dr",vip="{VIP}"}} 1.0' in text, text
        # Until the backup has carried traffic (on a loaded machine the probes may need
        # longer than a fixed-length run: the generator runs up to 40 s), then stop.
        with ControlClient(f"ipc://{run_env}/run/{name}/control.sock", timeout=5) as c:
            deadline = time.monotonic() + 30
            while not p.eof:
                assert time.monotonic() < deadline, "the backup carried no traffic in time"
                p.poll(0.05)
                vips = c.call("stats", {}, timeout=5).get("vips", [])
                if any(b["backend"] == "127.0.0.3" and b["packets"] > 0 for v in vips for b in v["backends"]):
                    break
        p.stop()
        s = p.summary()
    finally:
        p.close()
        for ls in listeners:
            ls.close()
    seen = outer_dsts(out)
    assert s["forwarded"] > 0, s
    # The backup served (it gets no slot unless web's healthy share is below 60%), and no
    # packet ever went to a backend outside the tree.
    assert seen.get("127.0.0.3", 0) > 0, seen
    assert set(seen) <= {"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.5"}, seen
