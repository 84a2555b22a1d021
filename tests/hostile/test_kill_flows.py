"""kill -9 of every actor under load: established flows keep their backend.

A real ``maglev run`` with the generator NIC (a fixed set of 300 TCP flows, two packet
workers, the control plane).  Once every flow has its connection-table entry, a third
backend is added: Maglev's table now gives it about a third of all slots, so any flow that
lost its entry would move there.  Then steering, the muxer, each packet worker, the config
manager and the health prober are killed with -9 in turn, under load.  The new backend must
get no packet at all (every established flow kept its backend: the workers' replacements
adopt their tables, the other actors hold no flow state), the old ones keep forwarding,
every actor is replaced once and the frame pool is whole at the end.

While a worker is dead its rx ring fills (at 20 kpps a 2048-slot ring in ~0.1 s, before
the replacement is up).  Steering's fallback used to place that worker's packets on another
worker, which has no entry for those flows and picks by the *new* Maglev table (971 and
2673 packets to the new backend in two runs).  Now a full ring that has not been consumed
for the stall time (20 ms, ``MG_STEER_STALL_NS``) has its packets dropped and counted
(``owner_stalled``) instead: ``test_..._while_its_ring_overflows`` checks 0 packets moved
and that the rule was met.  The first test uses rings deep enough (16384 slots at 5 kpps:
~3 s) that the replacement is back first."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys

import psutil
import pytest

from maglev.control.client import ControlClient
from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing import unique
from maglev.testing.wait import wait_until
from tests.hostile.test_accepted_config import _started

pytestmark = pytest.mark.slow

VIP = "203.0.113.10:80/tcp"
CONF = """
[instance]
name = "{name}"
source_ipv4 = "198.18.0.1"
flow_hash_secret = "{secret}"

[[vip]]
address = "203.0.113.10"
port = 80
[[vip.backend]]
address = "198.18.1.11"
[[vip.backend]]
address = "198.18.1.12"
"""
VICTIMS = ("steering", "muxer", "worker-0", "worker-1", "config", "health")


def test_kill_9_of_every_actor_under_load_keeps_every_flow_on_its_backend(shortdir):
    assert kill_in_turn(shortdir, VICTIMS, rate=5000, ring_size=16384) == {}


def test_a_worker_killed_keeps_its_flows_on_their_backend_while_its_ring_overflows(shortdir):
    """Worker 0 is frozen (SIGSTOP) until its ring has overflowed and steering has dropped
    some of its packets as ``owner_stalled`` -- on a quiet machine a replacement is often
    up before a killed worker's ring is full, so the freeze makes the overflow certain --
    then killed with -9.  Not one of its packets went to the other worker (which would
    pick by the new table): the new backend gets none, before and after the kill."""
    dropped: dict[str, int] = {}
    assert kill_in_turn(shortdir, ("worker-0",), rate=20000, ring_size=2048, dropped=dropped,
                        freeze_first=True) == {}
    assert dropped.get("owner_stalled", 0) > 0, dropped  # the ring did overflow: the rule was met


def test_a_worker_killed_at_a_high_rate_loses_no_flow_even_with_the_stall_rule_off(shortdir):
    """Worker 0 killed with -9 at 100 kpps (~half of it worker 0's: its 1024-slot ring
    fills in ~20 ms once it is dead, before its replacement is up), with ``--stall-ms 0``
    so that the stall rule cannot help: only the slot's life lock (mg_shm.h: a robust mutex
    the kernel marks owner-dead as the worker exits) tells steering the worker is dead.  Not
    one packet of its flows goes to the other worker, which would pick by the new table: the
    new backend gets none, and the drops are counted (``owner_stalled``).  Before the lock,
    a ring filling faster than the stall time fell back for up to 50 ms, and with the rule
    off for the whole restart.  The replacement claims the lock at its first burst, not
    before its set-up is done.

    A *live* worker whose ring is full (a loaded machine: it waits for a CPU) used to have
    its packets fall back to the other worker, which moved them to the new backend too (1
    run in 6 at load 9, up to as many packets as there were fallbacks).  Since 2026-12-07
    (session 9, ``--fallback new-flows``, the default) only a TCP SYN may fall back; the
    generator here sends no SYN (``syn=0``: every flow is established), so not one packet
    may move, whatever the load."""
    overflowed = 0
    for _attempt in range(2):  # CI s10f at load ~20: the replacement was up before the ring was full
        dropped: dict[str, int] = {}
        steering: dict[str, int] = {}
        moved = kill_in_turn(shortdir, ("worker-0",), rate=100000, ring_size=1024, dropped=dropped,
                             extra_args=("--stall-ms", "0"), steering=steering, nic_extra=",syn=0")
        assert moved == {}, (moved, steering)
        assert steering["fallback"] == 0, steering  # nothing but SYNs may fall back, and there are none
        overflowed = dropped.get("owner_stalled", 0)
        if overflowed:
            break
    if not overflowed:  # the rule above held, but the case it is about did not happen
        pytest.skip("twice the killed worker's ring did not overflow before its replacement was up "
                    "(the generator was slower than 100 kpps at this load): nothing to judge")


def kill_in_turn(shortdir, victims, rate: int, ring_size: int,
                 dropped: dict[str, int] | None = None, freeze_first: bool = False,
                 extra_args: tuple[str, ...] = (), steering: dict[str, int] | None = None,
                 nic_extra: str = "") -> dict[str, int]:
    """Kill ``victims`` in turn after a backend was added; the packets the new backend
    got after each kill, by actor (empty: none ever).  ``dropped`` gets the run's drops
    by reason.  ``freeze_first``: stop the victim (SIGSTOP) until steering counts packets
    dropped for it (``owner_stalled``: its ring is full and not consumed), then kill it.
    ``steering`` gets steering's counters at the end of the run."""
    name = unique.name("kf")
    conf = shortdir / "maglev.toml"
    conf.write_text(CONF.format(name=name, secret=secrets.token_hex(16)))
    control = f"ipc://{shortdir}/ctl.sock"
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run")}
    out_f, log = shortdir / "out.json", shortdir / "run.log"
    with open(out_f, "w") as out, open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--config", str(conf),
             "--workers", "2", "--control", control, "--json", "-v", "--ring-size", str(ring_size),
             "--nic", f"gen:seconds=120,flows=300,rate={rate},ipv6=0{nic_extra}", *extra_args],
            stdout=out, stderr=err, env=env, start_new_session=True)  # fmt: skip
    try:
        wait_until(lambda: (shortdir / "ctl.sock").exists() or proc.poll() is not None, 60, "the control socket")
        with ControlClient(control, timeout=10) as c:
            def packets() -> dict[str, int]:
                return {b["backend"]: b["packets"] for b in c.call("backends", {"vip": VIP})["backends"]}

            def forwarded() -> int:
                return c.call("stats")["totals"]["forwarded"]

            wait_until(lambda: forwarded() > 30_000, 60, "every flow seen many times")  # 300 flows, ~100 packets each
            r = c.call("add-backend", {"vip": VIP, "backend": {"address": "198.18.1.13"}})
            assert r["changed"] and r["confirmed"], r
            rows = {b["backend"]: b for b in c.call("backends", {"vip": VIP})["backends"]}
            assert rows["198.18.1.13"]["entries"] > 20_000  # ~1/3 of 65537 slots: new flows would go there
            descendants = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            moved: dict[str, int] = {}
            for actor in victims:
                before = _started(log)[actor]
                n, pid = len(before), before[-1]
                assert pid in descendants or pid in {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
                if freeze_first:
                    os.kill(pid, signal.SIGSTOP)
                    wait_until(lambda: c.call("stats")["steering"]["owner_stalled"] > 0, 30,
                               f"steering dropping {actor}'s packets while it is frozen")
                    if packets()["198.18.1.13"]:
                        moved[f"{actor} (frozen)"] = packets()["198.18.1.13"]
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda a=actor, n=n: len(_started(log).get(a, [])) > n, 30, f"{actor} restarted")

                def moving(a: str = actor) -> int:
                    try:
                        return forwarded()
                    except Exception:  # the config manager itself is starting again
                        return 0

                n0 = wait_until(moving, 30, f"stats after {actor} was killed")
                wait_until(lambda n0=n0: moving() > n0 + min(rate, 20000), 30, f"traffic flowing after {actor} was killed")
                if packets()["198.18.1.13"]:
                    moved[actor] = packets()["198.18.1.13"]
                assert proc.poll() is None
            if steering is not None:
                steering.update(c.call("stats")["steering"])
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        s = json.loads(out_f.read_text())
        assert s["pool"]["ok"], s["pool"]
        assert all(s["restarts"][a] == 1 for a in victims), s["restarts"]
        assert s["packets_in"] == s["forwarded"] + sum(s["dropped"].values()), s
        if dropped is not None:
            dropped.update(s["dropped"])
        assert "Traceback" not in log.read_text(errors="replace")
        return moved
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        remove_recorded(str(shortdir / "state"))
