"""Session 8: every packet accounted under floods at the machine's highest rate, kill -9 of
each actor in the middle of them, and NIC events, in every view of the counters.

tests/hostile/test_floods.py replays each flood once (a capture, or ~20 kpps through
AF_PACKET) without killing anything; tests/hostile/test_kill_every_process.py kills every
actor under the generator's clean traffic.  Here the two meet: a real ``maglev run --nic
afpacket:b0`` in its own namespace (prefix ``s8a``) takes every hostile kind of
test_floods.py mixed (SYNs from many sources, fragments never completed or overlapping,
ICMP errors, IPv6 extension-header chains, runts, garbage, non-IP ethertypes, VLAN stacks)
from the AF_PACKET TX ring of the other end of a veth pair, as fast as the kernel takes
them; during each flood one thing happens: kill -9 of steering, a worker, the muxer, the
config manager, the health prober or the BGP speaker (twice in a row), the link going
down and up, an MTU change, the interface deleted and created again, jumbo frames.  After
each, once the traffic stopped, every view must balance:

* ``maglev ctl stats``: ``packets_in == forwarded + dropped + held`` (fragments a worker
  holds waiting for their first are received and not judged yet: ``totals.held``);
* the Prometheus endpoint: ``maglev_received_packets_total`` and the drops are ctl stats',
  ``maglev_forwarded_packets_total + sum(maglev_drops_total) + held`` is the received
  total, and no counter goes backwards from one scrape to the next -- across every
  restart (the per-VIP and per-backend series may when new tables were published
  meanwhile: they restart with a worker's tables, docs/metrics.md);
* the final ``run --json``: exactly ``packets_in == forwarded + sum(dropped)``, the frame
  pool whole, every drop under a data-path reason or one a kill may cost, no traceback.

Findings (each fails on the code before its fix): a jumbo frame (an MTU above the pool
frame) was received by the socket and counted nowhere; the NIC's link-down, kernel-drop
and reopen counters were in no view; a restarted worker's connection-table,
fragment-table, per-VIP and per-backend counters fell back to 0 in Prometheus; AF_XDP
received nothing after its interface was re-created.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from maglev.control.client import ControlClient
from maglev.datapath.engine import DROP_NAMES
from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing import packets as P
from maglev.testing import unique
from maglev.testing.ports import free_port
from maglev.testing.wait import wait_until
from tests.hostile.test_accepted_config import _started
from tests.hostile.test_floods import FLOODS

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]
KILL_REASONS = {"steering_restart", "worker_restart", "muxer_restart", "owner_stalled", "tx_error"}
# Families documented to restart when a worker switches tables (docs/metrics.md).
RESETTING = ("maglev_vip_packets_total", "maglev_vip_bytes_total", "maglev_packets_total{", "maglev_bytes_total{")

CONF = """
[instance]
name = "{name}"
source_ipv4 = "198.18.0.1"
source_ipv6 = "2001:db8::1"
flow_hash_secret = "{secret}"
{bgp}
[[vip]]
address = "203.0.113.10"
port = 80
[[vip.backend]]
address = "198.18.1.1"
[[vip.backend]]
address = "198.18.1.2"

[[vip]]
address = "2001:db8::10"
port = 80
[[vip.backend]]
address = "2001:db8:1::1"
"""

BGP = """
[bgp]
local_asn = 64513
router_id = "198.18.2.2"
listen_port = 0
connect_retry_time = 1

[[bgp.peer]]
address = "127.0.0.1"
port = {port}
asn = 64512
hold_time = 9
"""


def scrape(ns: str, port: int) -> dict[str, float]:
    """Every sample of the Prometheus endpoint (bound in namespace ``ns``): name{labels} -> value."""
    from maglev.lab.nsenter import netns as in_netns

    with in_netns(ns):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def summed(samples: dict[str, float], family: str) -> float:
    return sum(v for k, v in samples.items() if k == family or k.startswith(family + "{"))


class Views:
    """ctl stats and Prometheus of one run, checked against each other and against the
    previous look (nothing goes backwards)."""

    def __init__(self, control: str, ns: str, port: int):
        self.c = ControlClient(control, timeout=10)
        self.ns, self.port = ns, port
        self.prev_prom: dict[str, float] = {}
        self.prev_stats: dict | None = None

    def stats(self) -> dict:
        return self.c.call("stats", timeout=5)

    def settled(self) -> dict | None:
        """ctl stats once nothing is in flight: every ring empty and the identity exact
        (held fragments aside); None while packets are still moving or the config manager
        (which answers) is being replaced."""
        try:
            s = self.stats()
        except Exception:
            return None
        rings = [w[f"{k}_ring"]["count"] for w in s["workers"] for k in ("rx", "tx", "ret")]
        t = s["totals"]
        if any(rings) or t["packets_in"] != t["forwarded"] + t["dropped"] + t["held"]:
            return None
        return s

    def agreed(self) -> tuple[dict, dict] | None:
        """A settled ctl stats and a Prometheus scrape that show the same packets: the two
        reads are moments apart, and a packet still in the socket's backlog when ctl stats
        settled may be counted between them (CI s10f, at load ~20: 56 more drops in the
        scrape after a kill of the config manager).  None until a pair agrees."""
        s = self.settled()
        if s is None:
            return None
        prom = scrape(self.ns, self.port)
        if (prom["maglev_received_packets_total"] != s["totals"]["packets_in"]
                or summed(prom, "maglev_drops_total") != s["totals"]["dropped"]):
            return None
        return s, prom

    def check(self, what: str) -> dict:
        s, prom = wait_until(self.agreed, 60, f"ctl stats to balance and Prometheus to agree after {what}")
        t = s["totals"]
        assert t["held"] == sum(w["held"] for w in s["workers"]), what
        assert t["dropped"] == sum(s["drops"].values()), what
        # The same counters: the endpoint reads the same blocks (nothing moves now).
        assert prom["maglev_received_packets_total"] == t["packets_in"], what
        assert summed(prom, "maglev_drops_total") == t["dropped"], (what, s["drops"])
        # the workers' forward verdicts (never back); the NIC's refusals are drops too
        after = sum(s["drops"].get(k, 0) for k in ("tx_error", "muxer_restart"))
        assert prom["maglev_forwarded_packets_total"] == t["forwarded"] + after == t["forwarded_by_workers"], what
        held = summed(prom, "maglev_worker_held_fragments")
        assert prom["maglev_received_packets_total"] == (
            prom["maglev_forwarded_packets_total"] + summed(prom, "maglev_drops_total") - after + held), what
        # the per-VIP and per-backend series restart with new tables (docs/metrics.md), not
        # with a restarted worker
        switched = prom["maglev_tables_generation"] != self.prev_prom.get("maglev_tables_generation")
        back = [(k, self.prev_prom[k], v) for k, v in prom.items()
                if k in self.prev_prom and v < self.prev_prom[k]
                and ("_total{" in k or k.endswith("_total")) and not (switched and k.startswith(RESETTING))]
        assert not back, (what, back)
        if self.prev_stats is not None:
            p = self.prev_stats
            assert t["packets_in"] >= p["totals"]["packets_in"], what
            for reason, n in p["drops"].items():
                assert s["drops"].get(reason, 0) >= n, (what, reason)
            for k, n in p["nic"].items():
                assert s["nic"][k] >= n, (what, k)
        self.prev_prom, self.prev_stats = prom, s
        return s

    def close(self) -> None:
        self.c.close()


def frames_of_every_kind() -> list[bytes]:
    """Every hostile kind of test_floods.py, mixed; shorter than an Ethernet header left
    out (the TX ring refuses them: the kernel never sends one)."""
    out = [f for kind in sorted(FLOODS) for f in FLOODS[kind](random.Random(kind))]
    random.Random(8).shuffle(out)
    return [f for f in out if 14 <= len(f) <= 1514][:6000]


ALL_ACTORS = ("steering", "worker-0", "worker-1", "muxer", "config", "health", "bgp")
# AF_XDP: the actors whose kill touches the driver (steering's sockets, the muxer's taken
# TX rings) and the NIC events; no jumbo frames (an XDP program caps the MTU of veth).
PLANS = {"afpacket": (ALL_ACTORS, True), "afxdp": (("steering", "muxer"), False)}


@pytest.mark.root
@pytest.mark.parametrize("driver", sorted(PLANS))
def test_floods_with_kill_9_and_nic_events_balance_in_every_view(shortdir, driver):
    from maglev.lab.nsenter import netns as in_netns
    from maglev.lab.sender import offer
    from maglev.testing.netns import NetnsSet, why_no_netns
    from tests.nic_helpers import why_no_afxdp
    from tests.scaleout.conftest import RouterThread

    if reason := why_no_netns():
        pytest.skip(reason)
    if driver == "afxdp" and (reason := why_no_afxdp()):
        pytest.skip(reason)
    victims, jumbo_frames = PLANS[driver]
    router = None
    with NetnsSet("s8a") as netns:
        a, b = netns.add("a"), netns.add("b")
        macs = ("02:00:00:00:00:01", P.mac(P.ROUTER_MAC).hex(":"))

        def link() -> None:
            netns.veth(a, "a0", b, "b0")
            for ns, dev, mac in ((a, "a0", macs[0]), (b, "b0", macs[1])):
                ns.exec("ip", "link", "set", dev, "address", mac)
                ns.sysctl(f"net.ipv6.conf.{dev}.disable_ipv6", "1")

        link()
        rport, mport = free_port(), free_port()
        with in_netns(b.name):  # the router's thread (and socket) live in b, beside the run
            router = RouterThread(rport).start()
        conf = shortdir / "maglev.toml"
        conf.write_text(CONF.format(name=unique.name("fl"), secret=secrets.token_hex(16),
                                    bgp=BGP.format(port=rport)))
        (shortdir / "xdg").mkdir(mode=0o700)
        env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run"),
               "XDG_RUNTIME_DIR": str(shortdir / "xdg")}
        log, out_f = shortdir / "run.log", shortdir / "out.json"
        control = f"ipc://{shortdir}/ctl.sock"
        with open(out_f, "w") as out, open(log, "w") as err:
            proc = b.popen([*CLI, "run", "--config", str(conf), "--nic", f"{driver}:b0", "--workers", "2", "--json",
                            "-v", "--control", control, "--metrics", f"127.0.0.1:{mport}"],
                           stdout=out, stderr=err, env=env)  # fmt: skip
        views = None
        last: dict = {}
        frames = frames_of_every_kind()
        try:
            wait_until(lambda: (shortdir / "ctl.sock").exists() or proc.poll() is not None, 60, "the control socket")
            assert proc.poll() is None, log.read_text()[-3000:]
            views = Views(control, b.name, mport)
            wait_until(lambda: _up(views), 60, "both workers and the BGP speaker up")

            def kill(actor: str) -> None:
                for _ in range(2):  # twice in a row: the second kill hits the replacement
                    n = len(_started(log)[actor])
                    os.kill(_started(log)[actor][-1], signal.SIGKILL)
                    wait_until(lambda n=n: len(_started(log).get(actor, [])) > n, 30, f"{actor} restarted")
                wait_until(lambda: _up(views), 60, f"a healthy run after {actor} was killed twice")

            def link_flap() -> None:
                b.exec("ip", "link", "set", "b0", "down")
                time.sleep(0.2)
                b.exec("ip", "link", "set", "b0", "up")

            def mtu() -> None:
                b.exec("ip", "link", "set", "b0", "mtu", "1280")
                time.sleep(0.2)
                b.exec("ip", "link", "set", "b0", "mtu", "1500")

            def recreate() -> None:
                b.exec("ip", "link", "del", "b0")
                time.sleep(0.2)
                link()

            events = [(f"kill -9 {actor}", lambda actor=actor: kill(actor)) for actor in victims]
            events += [("link down/up", link_flap), ("MTU change", mtu)][:2 if jumbo_frames else 1]
            events += [("interface re-created", recreate)]
            views.check("start")
            for what, event in events:
                offered: dict = {}
                t = threading.Thread(target=lambda o=offered: o.update(offer(a.name, "a0", frames, 1.0)))
                t.start()
                try:
                    time.sleep(0.3)
                    event()
                finally:
                    t.join(60)
                assert not t.is_alive()
                s = views.check(what)
                print(f"\n{what}: offered {offered.get('sent')}, received {s['totals']['packets_in']}, "
                      f"nic {s['nic']}, drops {s['drops']}")
                if what == "link down/up" and driver == "afpacket":  # AF_XDP sockets report none
                    assert s["nic"]["rx_link_down"] >= 1, s["nic"]
                if what == "interface re-created":  # steering looks once a second
                    wait_until(lambda: views.stats()["nic"]["reopens"] >= 1, 30, "the socket re-opened")

            # traffic after the re-creation reaches the run (the socket was reopened)
            def more() -> bool:
                offer(a.name, "a0", frames[:256], 0.2)
                return views.stats()["totals"]["packets_in"] > views.prev_stats["totals"]["packets_in"]

            wait_until(more, 30, "traffic on the re-created interface")
            views.check("after the re-creation")
            if jumbo_frames:
                jumbo(a, b, views)
            last = views.prev_stats or {}
            views.close()
            views = None
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        finally:
            if views is not None:
                views.close()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            if router is not None:
                router.close()
            remove_recorded(str(shortdir / "state"))
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[text.find("Traceback") - 2000:][:6000]
    r = json.loads(out_f.read_text())
    print(f"\nfinal: {r['packets_in']} in, {r['forwarded']} forwarded, dropped {r['dropped']}, nic {r['nic']}, "
          f"restarts {r['restarts']}")
    assert r["packets_in"] == r["forwarded"] + sum(r["dropped"].values()), r
    assert r["pool"]["ok"], r["pool"]
    s = last
    assert r["packets_in"] >= s["totals"]["packets_in"]
    assert set(r["dropped"]) <= set(DROP_NAMES) | KILL_REASONS, r["dropped"]
    assert "bad_frame" not in r["dropped"], r["dropped"]
    assert all(r["restarts"][a] == 2 for a in victims), r["restarts"]
    if not jumbo_frames:
        assert s["nic"]["reopens"] >= 1, s["nic"]


def jumbo(a, b, views: Views) -> None:
    """Jumbo frames (MTU 9000 on both ends): longer than a pool frame holds, received by the
    socket and dropped as ``frame_overflow``, exactly as many as were sent."""
    from maglev.lab.nsenter import netns as in_netns

    for ns, dev in ((a, "a0"), (b, "b0")):
        ns.exec("ip", "link", "set", dev, "mtu", "9000")
    before = views.prev_stats["drops"].get("frame_overflow", 0)
    frames = [P.tcp_packet(4, n, sport=2000 + i) for i, n in enumerate((1800, 2100, 4000, 8900))]
    with in_netns(a.name):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.bind(("a0", 0))
    with sock:
        for i in range(300):
            sock.send(frames[i % len(frames)])
            if i % 20 == 19:
                time.sleep(0.002)
    # steering copies its NIC's drops into its stats block in its tick (~10 times a second)
    wait_until(lambda: views.stats()["drops"].get("frame_overflow", 0) - before >= 300, 30, "the jumbo frames counted")
    s = views.check("jumbo frames")
    assert s["drops"].get("frame_overflow", 0) - before == 300, s["drops"]


def _up(views: Views) -> bool:
    try:
        st = views.c.call("status", timeout=5)
    except Exception:
        return False
    return st.get("live_workers") == [0, 1] and bool((st.get("controller") or {}).get("healthy"))


def test_a_killed_workers_table_counters_never_go_back(shortdir):
    """kill -9 of a worker under the generator's traffic: its connection-table counters
    and, with the same tables, its per-VIP and per-backend counters (the worker's metrics
    page) go on from its predecessor's in ctl stats and Prometheus -- no counter of the
    endpoint goes back -- and the run balances.  Before,
    ``maglev_conntrack_lookups_total{worker="0"}`` fell from 289858 to 159143 at the restart,
    and ``maglev_vip_packets_total`` / ``maglev_packets_total`` with it."""
    conf = shortdir / "maglev.toml"
    conf.write_text(CONF.format(name=unique.name("fl"), secret=secrets.token_hex(16), bgp=""))
    (shortdir / "xdg").mkdir(mode=0o700)
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run"),
           "XDG_RUNTIME_DIR": str(shortdir / "xdg")}
    log, out_f = shortdir / "run.log", shortdir / "out.json"
    control = f"ipc://{shortdir}/ctl.sock"
    port = free_port()
    with open(out_f, "w") as out, open(log, "w") as err:
        proc = subprocess.Popen([*CLI, "run", "--config", str(conf), "--workers", "2", "--json", "-v", "--control",
                                 control, "--metrics", f"127.0.0.1:{port}",
                                 "--nic", "gen:seconds=120,flows=2000,rate=20000,ipv6=0.2"],
                                stdout=out, stderr=err, env=env, start_new_session=True)  # fmt: skip
    c = None
    try:
        wait_until(lambda: (shortdir / "ctl.sock").exists() or proc.poll() is not None, 60, "the control socket")
        assert proc.poll() is None, log.read_text()[-3000:]
        c = ControlClient(control, timeout=10)

        def lookups() -> list[int]:
            s = c.call("stats", timeout=5)
            return [int((w.get("conntrack") or {}).get("lookups", 0)) for w in s["workers"]]

        def prom() -> dict[str, float]:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            return {k: float(v) for k, _, v in (ln.rpartition(" ") for ln in text.splitlines()
                                                 if ln and not ln.startswith("#"))}

        wait_until(lambda: min(lookups()) > 2000, 60, "both workers' pages counting lookups")
        for round_ in range(2):
            seen, p0 = lookups(), prom()
            n = len(_started(log)["worker-0"])
            os.kill(_started(log)["worker-0"][-1], signal.SIGKILL)
            wait_until(lambda n=n: len(_started(log).get("worker-0", [])) > n, 30, "worker-0 restarted")
            # the replacement publishes its page (4 times a second) once it runs
            wait_until(lambda seen=seen: lookups()[0] > seen[0] + 1000, 30, "the replacement counting")
            now, p1 = lookups(), prom()
            assert now[0] >= seen[0], (round_, seen, now)
            back = [(k, p0[k], v) for k, v in p1.items() if k in p0 and v < p0[k] and "_total" in k]
            assert not back, (round_, back)  # the per-VIP and per-backend ones too: same tables
            assert p1["maglev_tables_generation"] == p0["maglev_tables_generation"]
        c.close()
        c = None
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if c is not None:
            c.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        remove_recorded(str(shortdir / "state"))
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[text.find("Traceback") - 2000:][:6000]
    r = json.loads(out_f.read_text())
    assert r["packets_in"] == r["forwarded"] + sum(r["dropped"].values()), r
    assert r["pool"]["ok"], r["pool"]
    assert r["restarts"]["worker-0"] == 2, r["restarts"]
    assert set(r["dropped"]) <= KILL_REASONS, r["dropped"]

