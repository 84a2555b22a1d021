"""The scale-out lab: N maglev instances behind a BIRD router doing ECMP (paper 2.1-2.2).

``maglev lab up --instances 3 --bgp`` builds, with ``P`` the lab prefix::

    P-client                P-router (BIRD 2)                     P-mg1  eth0 198.18.2.2  maglev run (AS 64513)
    eth0 198.18.1.2 ------- rc 198.18.1.1                +- pm1 - P-mg2  eth0 198.18.2.3  maglev run
                            br0 198.18.2.1 --------------+- pm2 - P-mg3  eth0 198.18.2.4  maglev run
                            AS 64512, ECMP into the      +- pm3
                            kernel, L4 multipath hash    +- pb1 - P-be1  198.18.2.11 (VIPs on lo, HTTP)
                                                         +- ...

Same backends, client, addresses, encapsulations and VIPs (203.0.113.10, 2001:db8:f::10) as
the one-instance lab (maglev/lab/topology.py), with these differences:

* The router has **no static VIP route**.  BIRD peers with every instance over eBGP
  (``neighbor 198.18.2.(1+i) as 64513``, IPv4 and IPv6 unicast on one IPv4 session) and its
  kernel protocols export with ``merge paths on``, so a VIP announced by several instances
  becomes one multipath route (``nexthop via .2 nexthop via .3 ...``).  With
  ``net.ipv4.fib_multipath_hash_policy=1`` (and the IPv6 one) the router hashes the
  5-tuple, so the flows of one client spread over every instance.
* Every instance runs ``maglev run --nic afpacket:eth0`` with the **same VIPs, backends and
  flow-hash secret** (so the same Maglev tables, paper 3.4); only what must differ does:
  ``[instance] name``/source addresses, ``[bgp] router_id`` and next hops.  Each has its own
  run and state directories under ``STATE_DIR/scaleout/mgN/`` (``MAGLEV_RUN_DIR``,
  ``MAGLEV_STATE_DIR``), so their control sockets do not collide:
  ``maglev ctl --control ipc://STATE_DIR/scaleout/mgN/run/labN/control.sock status``
  (``maglev lab status --json`` lists them).
* What each instance announces is its controller's decision (maglev/actors/controller.py):
  nothing until it is healthy and the VIP has a healthy backend.

``maglev lab down`` removes it like any lab: every process recorded in the state file (BIRD
included) by PID, every namespace.  The per-instance directories are removed by the next
``up``; they are kept after ``down`` next to the logs, for a post-mortem.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from maglev.lab import topology as t
from maglev.lab.topology import Lab, LabError, LabSpec, ns_exec

ROUTER_ASN = 64512
MAGLEV_ASN = 64513
MAX_INSTANCES = 8
BIRD_SOCKET = "bird.ctl"


def instance_v4(i: int) -> str:
    return f"198.18.2.{1 + i}"


def instance_v6(i: int) -> str:
    return f"2001:db8:2::{1 + i:x}"


def instance_mac(i: int) -> str:
    return f"02:00:00:02:00:{1 + i:02x}"


def why_no_bird() -> str | None:
    for exe, pkg in (("bird", "bird2"), ("birdc", "bird2")):
        if shutil.which(exe) is None:
            return f"the scale-out lab needs `{exe}` (Debian package {pkg}: apt-get install {pkg})"
    return None


class ScaleoutLab(Lab):
    """A :class:`Lab` whose ``up`` builds N instances behind BIRD; ``down`` is the base one."""

    @property
    def dir(self) -> Path:
        return self.state_dir / "scaleout"

    # -- build ------------------------------------------------------------------------
    def up(self, spec: LabSpec, wait_s: float = 60.0) -> dict[str, Any]:
        n = int(spec.extra.get("instances", 3))
        if not 1 <= n <= MAX_INSTANCES:
            raise LabError(f"--instances must be 1..{MAX_INSTANCES}, not {n}")
        if not spec.forwarder:
            raise LabError("--bgp needs the forwarders (drop --no-forwarder)")
        if reason := why_no_bird():
            raise LabError(reason)
        # Three forwarders and BIRD starting on a small shared machine: at least 20 s each.
        return super().up(spec, max(wait_s, 20.0 * n))

    def _build(self, spec: LabSpec) -> None:
        n = int(spec.extra.get("instances", 3))
        # The base lab without its forwarder and without the router's static VIP routes.
        base = LabSpec(backends=spec.backends, encap=spec.encap, weights=spec.weights, prefix=spec.prefix,
                       state_dir=spec.state_dir, forwarder=False, workers=spec.workers, ring=spec.ring,
                       mtu=spec.mtu)
        super()._build(base)
        st = self.state
        st["complete"] = False
        st["forwarder"] = True
        self.save()
        router = st["router"]["ns"]
        # The base lab's single forwarder namespace is replaced by the instances (the first
        # one takes its address and MAC).
        single = st["maglev"]["ns"]
        t.sh(["ip", "netns", "del", single], check=False)
        st["namespaces"].remove(single)
        self.save()
        ns_exec(router, "ip", "route", "del", t.VIP_NET_V4, check=False)
        ns_exec(router, "ip", "-6", "route", "del", t.VIP_NET_V6, check=False)
        ns_exec(router, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv6.fib_multipath_hash_policy=1")  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        secret = secrets.token_hex(16)  # one deployment-wide flow secret, the same everywhere
        instances = []
        for i in range(1, n + 1):
            ns = f"{spec.prefix}-mg{i}"
            d = self.dir / f"mg{i}"
            inst = {
                "name": f"lab{i}", "ns": ns, "ipv4": instance_v4(i), "ipv6": instance_v6(i),
                "mac": instance_mac(i), "dir": str(d), "config": str(self.dir / f"mg{i}.toml"),
                "control": f"ipc://{d}/run/lab{i}/control.sock",
            }  # fmt: skip
            instances.append(inst)
        st["instances"] = instances
        st["bgp"] = {"router_asn": ROUTER_ASN, "maglev_asn": MAGLEV_ASN, "bird_socket": str(self.dir / BIRD_SOCKET)}
        self.save()
        for i, inst in enumerate(instances, start=1):
            self._add_ns(inst["ns"])
            self._server_port(router, f"pm{i}", inst["ns"], inst["mac"], spec.mtu)
            ns = inst["ns"]
            ns_exec(ns, "ip", "addr", "add", f"{inst['ipv4']}/24", "dev", "eth0")
            ns_exec(ns, "ip", "-6", "addr", "add", f"{inst['ipv6']}/64", "dev", "eth0", "nodad")
            ns_exec(ns, "ip", "route", "add", "198.18.0.0/15", "via", t.ROUTER_S_V4)
            ns_exec(ns, "ip", "-6", "route", "add", "2001:db8::/32", "via", t.ROUTER_S_V6)
            ns_exec(ns, "sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0")
            pool = tuple(m["ipv4"] for m in instances)
            Path(inst["config"]).write_text(instance_config(Path(st["config"]).read_text(), inst, secret, pool))
        # The first instance stands for "maglev" in the lab summary.
        st["maglev"] = {"ns": instances[0]["ns"], "iface": "eth0", "ipv4": instances[0]["ipv4"],
                        "ipv6": instances[0]["ipv6"], "mac": instances[0]["mac"]}
        (self.dir / "bird.conf").write_text(bird_config(self.dir, [x["ipv4"] for x in instances]))
        st["complete"] = True
        self.save()
        self.spawn("bird", router, ["bird", "-f", "-c", str(self.dir / "bird.conf"), "-s",
                                    str(self.dir / BIRD_SOCKET), "-P", str(self.dir / "bird.pid")])
        for i, inst in enumerate(instances, start=1):
            d = Path(inst["dir"])
            env = {**t.forwarder_env(spec), "MAGLEV_RUN_DIR": str(d / "run"), "MAGLEV_STATE_DIR": str(d / "state")}
            argv = [*t.maglev_argv(), "run", "--config", inst["config"], "--nic", "afpacket:eth0",
                    "--workers", str(spec.workers), "--json"]
            self.spawn(f"maglev{i}", inst["ns"], argv, env=env)

    # -- ready ------------------------------------------------------------------------
    def _wait_ready(self, spec: LabSpec, wait_s: float) -> None:
        """Backends up (base check), then every instance's VIP route in the router's
        kernel table (one multipath route), then one request through the VIP."""
        deadline = time.monotonic() + wait_s
        no_fwd = LabSpec(backends=spec.backends, encap=spec.encap, prefix=spec.prefix, forwarder=False)
        super()._wait_ready(no_fwd, wait_s)
        n = len(self.state["instances"])
        while len(self.vip_nexthops()) < n:
            self._check_processes()
            if time.monotonic() > deadline:
                raise LabError(
                    f"the router has {len(self.vip_nexthops())} of {n} next hops for {t.VIP_V4} after "
                    f"{wait_s:.0f} s (BGP: {self.bird_summary()}); logs in {self.state_dir}/logs")
            time.sleep(0.3)
        while True:
            try:
                t.http_get(self.state["client"]["ns"], t.VIP_V4, t.HTTP_PORT, timeout=1.0)
                return
            except OSError:
                pass
            self._check_processes()
            if time.monotonic() > deadline:
                raise LabError(f"no HTTP reply through {t.VIP_V4}; logs in {self.state_dir}/logs")
            time.sleep(0.2)

    # -- queries ----------------------------------------------------------------------
    def birdc(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["birdc", "-s", self.state["bgp"]["bird_socket"], *cmd],
                              capture_output=True, text=True, timeout=10)  # fmt: skip

    def bird_summary(self) -> str:
        r = self.birdc("show", "protocols")
        rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("mg")]
        return ", ".join(f"{x[0]} {x[-1] if len(x) > 5 else '?'}" for x in rows) or r.stderr.strip() or "no answer"

    def vip_nexthops(self, vip: str = t.VIP_V4) -> list[str]:
        """The next hops of the router's kernel route to ``vip`` (one per announcing instance)."""
        fam = "-6" if ":" in vip else "-4"
        r = ns_exec(self.state["router"]["ns"], "ip", "-j", fam, "route", "show", vip, check=False)
        try:
            routes = json.loads(r.stdout or "[]")
        except ValueError:
            return []
        out = []
        for rt in routes:
            if "nexthops" in rt:
                out += [h["gateway"] for h in rt["nexthops"] if "gateway" in h]
            elif "gateway" in rt:
                out.append(rt["gateway"])
        return sorted(out)


def instance_config(base_text: str, inst: dict[str, Any], secret: str, pool: tuple[str, ...] = ()) -> str:
    """The one-instance lab config with this instance's identity (name, source addresses),
    the shared flow secret, the maglev ``pool`` (every instance's IPv4 address: fragments
    are redirected to their owner instance, docs/datapath.md) and a ``[bgp]`` section
    toward the router; VIPs and backends are untouched, so every instance builds the same
    tables."""
    from maglev import config as cfg

    d = cfg.loads(base_text, source="lab config").to_dict()
    d["instance"].update(name=inst["name"], source_ipv4=inst["ipv4"], source_ipv6=inst["ipv6"],
                         flow_hash_secret=secret, pool=list(pool))
    d["bgp"] = {
        "local_asn": MAGLEV_ASN, "router_id": inst["ipv4"], "listen_address": inst["ipv4"],
        "connect_retry_time": 2, "next_hop_ipv6": inst["ipv6"],
        "peer": [{"address": t.ROUTER_S_V4, "asn": ROUTER_ASN, "hold_time": 9}],
    }  # fmt: skip
    c = cfg.Config.from_dict(d)  # validated: never start a forwarder on a bad config
    return f"# scale-out lab instance {inst['name']} (written by `maglev lab up --bgp`)\n" + cfg.dump_toml(c)


def bird_config(folder: Path, neighbors: list[str]) -> str:
    """BIRD 2: eBGP to every instance, ECMP into the kernel (``merge paths``)."""
    peers = "\n".join(f"protocol bgp mg{i} from maglev {{ neighbor {a} as {MAGLEV_ASN}; }}"
                      for i, a in enumerate(neighbors, start=1))  # fmt: skip
    return f"""# written by `maglev lab up --bgp`
log "{folder}/bird.log" all;
router id {t.ROUTER_S_V4};
protocol device {{ scan time 10; }}
protocol direct {{ ipv4; ipv6; interface "br0"; }}
protocol kernel kernel4 {{ merge paths on limit 16; ipv4 {{ import none; export filter {{ if proto ~ "mg*" then accept; reject; }}; }}; }}
protocol kernel kernel6 {{ merge paths on limit 16; ipv6 {{ import none; export filter {{ if proto ~ "mg*" then accept; reject; }}; }}; }}
template bgp maglev {{
    local {t.ROUTER_S_V4} as {ROUTER_ASN};
    hold time 9;
    keepalive time 3;
    connect delay time 1;
    connect retry time 2;
    error wait time 1, 5;
    ipv4 {{ import all; export none; }};
    ipv6 {{ import all; export none; }};
}}
{peers}
"""


def summary_lines(state: dict[str, Any]) -> list[str]:
    """Human lines for ``maglev lab up --bgp``: the instances and how to reach them."""
    out = []
    for inst in state.get("instances", []):
        out.append(f"  {inst['name']:<8} {inst['ns']:<16} {inst['ipv4']}  {inst['ipv6']}  "
                   f"maglev ctl --control {inst['control']} status")
    if bgp := state.get("bgp"):
        out.append(f"  BGP      router AS {bgp['router_asn']}, instances AS {bgp['maglev_asn']}: "
                   f"birdc -s {bgp['bird_socket']} show route all")
    return out
