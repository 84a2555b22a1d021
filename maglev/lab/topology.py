"""The namespace lab: build it, remember what was built, take it all down again.

Topology (``P`` is the lab prefix, ``mglab`` for ``maglev lab``)::

    P-client                 P-router                                   P-maglev
    eth0 198.18.1.2/24 ---- rc 198.18.1.1/24                            eth0 198.18.2.2/24
    2001:db8:1::2/64        2001:db8:1::1/64        +-- pm ----------- (maglev run,
    routes to the lab       br0 198.18.2.1/24 ------+                    --nic afpacket:eth0)
    only (no default)       2001:db8:2::1/64        +-- pb1 ---------- P-be1 eth0 198.18.2.11
                            forwarding on;          +-- pb2 ---------- P-be2 eth0 198.18.2.12
                            VIPs routed to maglev   ...                  VIPs on lo, HTTP :80

* The router routes 203.0.113.0/24 and 2001:db8:f::/64 (the VIPs) to the maglev
  namespace, which forwards them (encapsulated) to a backend over the server bridge.
* Backends answer the client straight through the router (direct server return): the
  reply never enters the maglev namespace.  Their default route does not exist either;
  they have routes to the lab's client network only.
* Every link has MTU 1500 (``LabSpec.mtu`` sets the server side; 9000 gives the jumbo
  fabric of the paper's deployment, where an encapsulated full-size packet fits).  At 1500
  an encapsulated full-size packet does not fit: maglev splits a DF-clear IPv4 packet in
  two and answers a DF one (and every IPv6 one) with ICMP "fragmentation needed"/"packet
  too big", so the client's path MTU discovery shrinks its packets.  The client's TCP segmentation offload is capped at one segment
  (``gso_max_segs 1``): the forwarder must see wire-sized packets, as from a real NIC.
* The maglev namespace keeps IP forwarding off and does not own the VIPs: its kernel
  drops the VIP packets silently, and only maglev's packet socket forwards them.

Decapsulation on the backends, by ``encap``:
  ``gre``/``ipip``: ``maglev backend-agent`` (raw socket -> TUN; this kernel has no GRE
  or IPIP modules); ``vxlan``: a stock ``vxlan`` device in external mode on port 4789;
  ``l2``: nothing -- the VIP on ``lo`` with ``arp_ignore=1``/``arp_announce=2``.

State: every namespace and process is recorded in ``STATE_DIR/state.json`` *as it is
created*, so ``down`` removes exactly what ``up`` made even when ``up`` failed halfway.
Processes are remembered by PID plus their start time (from /proc), so a recycled PID is
never killed.  A lock file serialises concurrent ``up``/``down``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maglev import files
from maglev.actors.launch import python_argv
from maglev.errors import MaglevError, NotRootError
from maglev.lab.nsenter import why_no_netns
from maglev.record import forget, note

STATE_DIR = Path(os.environ.get("MAGLEV_LAB_DIR", "/run/maglev-lab"))
STATE_VERSION = 1
ENCAPS = ("gre", "ipip", "vxlan", "l2")
MAX_BACKENDS = 64

CLIENT_V4, CLIENT_V6 = "198.18.1.2", "2001:db8:1::2"
ROUTER_C_V4, ROUTER_C_V6 = "198.18.1.1", "2001:db8:1::1"
ROUTER_S_V4, ROUTER_S_V6 = "198.18.2.1", "2001:db8:2::1"
MAGLEV_V4, MAGLEV_V6 = "198.18.2.2", "2001:db8:2::2"
VIP_V4, VIP_V6 = "203.0.113.10", "2001:db8:f::10"
VIP_NET_V4, VIP_NET_V6 = "203.0.113.0/24", "2001:db8:f::/64"
HTTP_PORT = 80
SERVER_MTU = 1500  # the default server-side MTU (LabSpec.mtu)

MAC_CLIENT = "02:00:00:01:00:02"
MAC_ROUTER_C = "02:00:00:01:00:01"
MAC_ROUTER_S = "02:00:00:02:00:01"
MAC_MAGLEV = "02:00:00:02:00:02"


class LabError(MaglevError, RuntimeError):
    """The lab could not be built or taken down."""


def _add_addrs(ns: str, dev: str, v4: str, v6: str) -> None:
    """One IPv4 and one IPv6 address (no duplicate address detection) on ``dev`` in ``ns``."""
    ns_exec(ns, "ip", "addr", "add", v4, "dev", dev)
    ns_exec(ns, "ip", "-6", "addr", "add", v6, "dev", dev, "nodad")


def backend_v4(i: int) -> str:
    return f"198.18.2.{10 + i}"


def backend_v6(i: int) -> str:
    return f"2001:db8:2::{10 + i:x}"


def backend_mac(i: int) -> str:
    return f"02:00:00:02:01:{i:02x}"


def backend_vxlan_mac(i: int) -> str:
    return f"02:00:00:03:01:{i:02x}"


def why_no_lab() -> str | None:
    """None when a lab can be built here, else one sentence saying why not."""
    return why_no_netns("maglev lab", "to create network namespaces, veth pairs and a bridge")


def sh(cmd: Sequence[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {r.stderr.strip() or r.stdout.strip()}")
    return r


def ns_exec(ns: str, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return sh(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout)


def _proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw.rsplit(")", 1)[1].split()[19])


@dataclass
class LabSpec:
    backends: int = 3
    encap: str = "gre"
    weights: tuple[int, ...] = ()
    prefix: str = "mglab"
    state_dir: Path = STATE_DIR
    forwarder: bool = True  # start `maglev run` in the maglev namespace
    workers: int = 1
    forwarder_argv: tuple[str, ...] = ()  # override the forwarder command (tests, debugging)
    ring: str = ""  # AF_PACKET ring of the forwarder: "v3", "v2" or "" (the driver's default)
    mtu: int = SERVER_MTU  # server bridge links and the forwarder's [instance] mtu
    nic: str = ""  # the forwarder's --nic ("" = afpacket:eth0; e.g. "afxdp:eth0")
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.encap not in ENCAPS:
            raise LabError(f"--encap must be one of {', '.join(ENCAPS)}, not {self.encap!r}")
        if not 1 <= self.backends <= MAX_BACKENDS:
            raise LabError(f"--backends must be 1..{MAX_BACKENDS}, not {self.backends}")
        if self.weights and len(self.weights) != self.backends:
            raise LabError(f"{len(self.weights)} weights given for {self.backends} backends")
        if any(w < 0 for w in self.weights) or (self.weights and not any(self.weights)):
            raise LabError("weights must be >= 0 and not all 0")
        if self.nic:
            from maglev.nic import NicSpecError, parse_nic

            try:
                kind = parse_nic(self.nic).kind
            except NicSpecError as e:
                raise LabError(str(e)) from None
            if kind not in ("afpacket", "afxdp"):
                raise LabError(f"--nic {self.nic}: the lab forwarder needs an interface NIC (afpacket or afxdp)")
        if not 1280 <= self.mtu <= 9000:
            raise LabError(f"--mtu must be 1280..9000, not {self.mtu}")
        if self.ring not in ("", "v2", "v3"):
            raise LabError(f"--ring must be v2 or v3, not {self.ring!r}")
        if not self.prefix.replace("-", "").isalnum() or len(self.prefix) > 20:
            raise LabError(f"bad lab prefix {self.prefix!r}")


class Lab:
    """A handle on the lab recorded in ``state_dir`` (which may not exist yet)."""

    def __init__(self, state_dir: Path = STATE_DIR):
        self.state_dir = Path(state_dir)
        self.state_path = self.state_dir / "state.json"
        self.state: dict[str, Any] = {}

    # -- state file ------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        with open(self.state_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def load(self) -> dict[str, Any] | None:
        try:
            self.state = files.read_json(self.state_path)
        except FileNotFoundError:
            self.state = {}
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"lab state {self.state_path} is unreadable ({exc}); remove it by hand") from None
        return self.state

    def save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, sort_keys=True))
        os.replace(tmp, self.state_path)

    def is_up(self) -> bool:
        st = self.state
        if not st or not st.get("complete"):
            return False
        existing = set(list_netns())
        return all(ns in existing for ns in st.get("namespaces", []))

    # -- building blocks, each recorded before it can fail half-done --------------

    def _add_ns(self, name: str) -> str:
        if name in list_netns():
            # Not ours (no state recorded it): never adopt it, so `down` never deletes it.
            raise LabError(
                f"network namespace {name} already exists but is not in {self.state_path}; "
                "another lab (other --state-dir?) uses this prefix: pick another --prefix"
            )
        self.state["namespaces"].append(name)
        self.save()
        note("netns", name)  # $MAGLEV_RECORD (test harness)
        r = sh(["ip", "netns", "add", name], check=False)
        if r.returncode != 0:
            if os.path.lexists(f"/run/netns/{name}"):  # made by someone else meanwhile
                forget("netns", name)
                self.state["namespaces"].remove(name)  # `down` must not delete it
                self.save()
            sh(["ip", "netns", "add", name])  # raises, with the reason
        ns_exec(name, "ip", "link", "set", "lo", "up")
        return name

    def _veth(self, a: str, a_dev: str, b: str, b_dev: str, mtu: int = 1500) -> None:
        tag = secrets.token_hex(4)
        tmp_a, tmp_b = f"mgl{tag}a", f"mgl{tag}b"
        note("link", tmp_a)
        note("link", tmp_b)
        r = sh(["ip", "link", "add", tmp_a, "mtu", str(mtu), "type", "veth", "peer", "name", tmp_b, "mtu", str(mtu)],
               check=False)
        if r.returncode != 0:
            for t in (tmp_a, tmp_b):  # a name taken by someone else is not ours to judge
                if os.path.lexists(f"/sys/class/net/{t}"):
                    forget("link", t)
            raise LabError(f"`ip link add {tmp_a} type veth peer name {tmp_b}` failed: {r.stderr.strip()}")
        try:
            sh(["ip", "link", "set", tmp_a, "netns", a, "name", a_dev])
            sh(["ip", "link", "set", tmp_b, "netns", b, "name", b_dev])
        except BaseException:  # an end still here (tmp_b after tmp_a moved): delete the pair
            sh(["ip", "link", "del", tmp_a], check=False)
            sh(["ip", "link", "del", tmp_b], check=False)
            raise

    def spawn(self, role: str, ns: str, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        """Start ``argv`` inside ``ns`` in its own session, detached from us; record it.
        A forwarder (role ``maglev...``) keeps its state (persisted config, connection
        tables kept for adoption) in this lab's folder unless ``env`` says otherwise, so
        ``down`` removes it: a forwarder started later (a benchmark's drivers, a restart)
        never leaves tables in /dev/shm under /var/lib/maglev's identity."""
        if role.startswith("maglev"):
            env = {"MAGLEV_STATE_DIR": str(self.state_dir / "forwarder-state"), **(env or {})}
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        log_path = logs / f"{role}.log"
        # Detached for real: a shell starts the process in the background in its own
        # session (setsid; its pgid is its pid) and exits, so the lab processes are not
        # our children and outlive `maglev lab up`.
        r = subprocess.run(
            ["sh", "-c", 'setsid "$@" </dev/null >>"$MAGLEV_LAB_LOG" 2>&1 & echo $!', "sh",
             "ip", "netns", "exec", ns, *argv],
            env={**os.environ, **(env or {}), "MAGLEV_LAB_LOG": str(log_path)},
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        try:
            pid = int(r.stdout.strip())
        except ValueError:
            raise LabError(f"could not start {role}: {r.stderr.strip()}") from None
        start = _proc_start_time(pid)
        if start is None:  # gone already (a command that fails at once): say so now, not
            # after the readiness wait (a dead pid has no start time to compare later)
            tail = ""
            with contextlib.suppress(OSError):
                tail = log_path.read_text()[-600:].strip()
            raise LabError(f"lab process {role} (pid {pid}) exited: {tail or 'no output'}")
        self.state["processes"].append({"role": role, "ns": ns, "pid": pid, "start": start, "log": str(log_path)})
        self.save()
        return pid

    # -- up ----------------------------------------------------------------------

    def up(self, spec: LabSpec, wait_s: float = 30.0) -> dict[str, Any]:
        """Build the lab (or return the one already up).  Raises LabError/NotRootError."""
        spec.validate()
        if reason := why_no_lab():
            raise NotRootError(reason)
        with self.locked():
            if self.load() is not None:
                if self.is_up():
                    self.state["already_up"] = True
                    return self.state
                self._down_locked()  # a half-built or stale lab: clear it first
            try:
                self._build(spec)
            except BaseException:
                self._down_locked()
                raise
        self._wait_ready(spec, wait_s)
        return self.state

    def _build(self, spec: LabSpec) -> None:
        p = spec.prefix
        weights = list(spec.weights) or [1] * spec.backends
        backends = []
        for i in range(1, spec.backends + 1):
            backends.append(
                {
                    "name": f"be{i}",
                    "ns": f"{p}-be{i}",
                    "ipv4": backend_v4(i),
                    "ipv6": backend_v6(i),
                    "mac": backend_mac(i),
                    "vxlan_mac": backend_vxlan_mac(i) if spec.encap == "vxlan" else "",
                    "weight": weights[i - 1],
                }
            )
        self.state = {
            "version": STATE_VERSION,
            "complete": False,
            "prefix": p,
            "encap": spec.encap,
            "created": time.time(),
            "namespaces": [],
            "processes": [],
            "client": {"ns": f"{p}-client", "iface": "eth0", "ipv4": CLIENT_V4, "ipv6": CLIENT_V6, "mac": MAC_CLIENT},
            "router": {"ns": f"{p}-router", "ipv4": [ROUTER_C_V4, ROUTER_S_V4], "ipv6": [ROUTER_C_V6, ROUTER_S_V6]},
            "maglev": {"ns": f"{p}-maglev", "iface": "eth0", "ipv4": MAGLEV_V4, "ipv6": MAGLEV_V6, "mac": MAC_MAGLEV},
            "backends": backends,
            "vips": {"ipv4": VIP_V4, "ipv6": VIP_V6, "http_port": HTTP_PORT},
            "config": str(self.state_dir / "maglev.toml"),
            "forwarder": spec.forwarder,
        }
        self.save()
        # Fresh logs for a fresh lab (kept after `down`, for a post-mortem).
        shutil.rmtree(self.state_dir / "logs", ignore_errors=True)
        client, router, mg = self.state["client"]["ns"], self.state["router"]["ns"], self.state["maglev"]["ns"]
        for ns in (client, router, mg, *(b["ns"] for b in backends)):
            self._add_ns(ns)

        # Router: client link, server bridge, forwarding, VIP routes toward maglev.
        self._veth(client, "eth0", router, "rc")
        ns_exec(router, "ip", "link", "add", "br0", "mtu", str(spec.mtu), "type", "bridge", "stp_state", "0")
        ns_exec(router, "ip", "link", "set", "br0", "address", MAC_ROUTER_S, "up")
        ns_exec(router, "ip", "link", "set", "rc", "address", MAC_ROUTER_C, "up")
        _add_addrs(router, "rc", f"{ROUTER_C_V4}/24", f"{ROUTER_C_V6}/64")
        _add_addrs(router, "br0", f"{ROUTER_S_V4}/24", f"{ROUTER_S_V6}/64")
        ns_exec(
            router, "sysctl", "-qw",
            "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.br0.send_redirects=0",
            "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
        )  # fmt: skip
        ns_exec(router, "ip", "route", "add", VIP_NET_V4, "via", MAGLEV_V4)
        ns_exec(router, "ip", "-6", "route", "add", VIP_NET_V6, "via", MAGLEV_V6)

        # Client: lab routes only.  One segment per skb (no TSO): wire-sized packets.
        ns_exec(client, "ip", "link", "set", "eth0", "address", MAC_CLIENT, "gso_max_segs", "1", "up")
        if spec.nic.startswith("afxdp"):
            # AF_XDP hands over the bytes as they are, and a veth peer's local stack
            # leaves TCP/UDP checksums to an offload that never happens (the AF_PACKET
            # driver completes them; AF_XDP cannot tell): checksum in software instead.
            tx_checksum_offload(client, "eth0", False)
        _add_addrs(client, "eth0", f"{CLIENT_V4}/24", f"{CLIENT_V6}/64")
        for net in ("198.18.0.0/15", VIP_NET_V4):
            ns_exec(client, "ip", "route", "add", net, "via", ROUTER_C_V4)
        for net in ("2001:db8::/32",):
            ns_exec(client, "ip", "-6", "route", "add", net, "via", ROUTER_C_V6)

        # Maglev: on the server bridge; the kernel neither forwards nor owns the VIPs.
        self._server_port(router, "pm", mg, MAC_MAGLEV, spec.mtu)
        _add_addrs(mg, "eth0", f"{MAGLEV_V4}/24", f"{MAGLEV_V6}/64")
        ns_exec(mg, "ip", "route", "add", "198.18.0.0/15", "via", ROUTER_S_V4)
        ns_exec(mg, "ip", "-6", "route", "add", "2001:db8::/32", "via", ROUTER_S_V6)
        ns_exec(mg, "sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0")

        for i, b in enumerate(backends, start=1):
            self._backend(spec, router, i, b)
        self._write_config(spec)
        self.state["complete"] = True
        self.save()

        # Processes last: HTTP servers, decapsulation agents, the forwarder.
        for b in backends:
            self.spawn(f"httpd-{b['name']}", b["ns"], [*python_argv(), "-m", "maglev.lab.httpd", "--name", b["name"], "--port", str(HTTP_PORT)])
            if spec.encap in ("gre", "ipip"):
                self.spawn(
                    f"agent-{b['name']}", b["ns"],
                    [*maglev_argv(), "backend-agent", "--vip", VIP_V4, "--vip", VIP_V6, "--encap", spec.encap,
                     "--stats", str(self.state_dir / f"agent-{b['name']}.json")],
                )  # fmt: skip
        if spec.forwarder:
            # The forwarder's persisted config and the connection tables it keeps for
            # adoption belong to this lab: `lab down` removes them (remove_recorded below).
            env = {"MAGLEV_STATE_DIR": str(self.state_dir / "forwarder-state"), **forwarder_env(spec)}
            self.spawn("maglev", mg, forwarder_argv(spec, self.state["config"]), env=env)

    def _server_port(self, router: str, port: str, ns: str, mac: str, mtu: int = SERVER_MTU) -> None:
        self._veth(router, port, ns, "eth0", mtu=mtu)
        ns_exec(router, "ip", "link", "set", port, "master", "br0", "up")
        ns_exec(ns, "ip", "link", "set", "eth0", "address", mac, "up")

    def _backend(self, spec: LabSpec, router: str, i: int, b: dict[str, Any]) -> None:
        ns = b["ns"]
        self._server_port(router, f"pb{i}", ns, b["mac"], spec.mtu)
        _add_addrs(ns, "eth0", f"{b['ipv4']}/24", f"{b['ipv6']}/64")
        ns_exec(ns, "ip", "route", "add", "198.18.0.0/15", "via", ROUTER_S_V4)
        ns_exec(ns, "ip", "-6", "route", "add", "2001:db8::/32", "via", ROUTER_S_V6)
        _add_addrs(ns, "lo", f"{VIP_V4}/32", f"{VIP_V6}/128")
        # DSR: never answer ARP for the VIP (it is on lo), never use it as ARP source;
        # decapsulated packets arrive on a device the client is not routed through.
        ns_exec(
            ns, "sysctl", "-qw",
            "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.eth0.rp_filter=0",
        )  # fmt: skip
        if spec.encap == "vxlan":
            ns_exec(ns, "ip", "link", "add", "vx0", "address", b["vxlan_mac"], "type", "vxlan",
                    "external", "dstport", "4789")  # fmt: skip
            ns_exec(ns, "ip", "link", "set", "vx0", "up")
            ns_exec(ns, "sysctl", "-qw", "net.ipv4.conf.vx0.rp_filter=0")

    def _write_config(self, spec: LabSpec) -> None:
        import tomli_w

        from maglev import config as cfg

        data: dict[str, Any] = {
            "instance": {
                "name": "lab",
                "flow_hash_secret": secrets.token_hex(16),
                "source_ipv4": MAGLEV_V4,
                "source_ipv6": MAGLEV_V6,
                "mtu": spec.mtu,
            },
            "vip": [],
        }
        for vip, fam in ((VIP_V4, "ipv4"), (VIP_V6, "ipv6")):
            for proto in ("tcp", "udp"):
                backends = []
                for b in self.state["backends"]:
                    # l2 needs the VIP's family; the tunnels use it too (IPv6 outer for IPv6).
                    mac = b["vxlan_mac"] if spec.encap == "vxlan" else b["mac"]
                    backends.append({"address": b[fam], "name": b["name"], "weight": b["weight"], "mac": mac})
                data["vip"].append({"address": vip, "port": 0, "protocol": proto, "encap": spec.encap,
                                    "backend": backends})
        text = ("# maglev lab configuration (written by `maglev lab up`); the flow hash secret is\n"
                "# the lab's own, never the built-in one\n" + tomli_w.dumps(data))
        cfg.loads(text, source="lab config")  # never start a forwarder on a bad config
        Path(self.state["config"]).write_text(text)

    def _wait_ready(self, spec: LabSpec, wait_s: float) -> None:
        """Wait for every HTTP server, then (with a forwarder) for one request via the VIP."""
        deadline = time.monotonic() + wait_s
        for b in self.state["backends"]:
            while not _tcp_ok(b["ns"], "127.0.0.1", HTTP_PORT):
                self._check_processes()
                if time.monotonic() > deadline:
                    raise LabError(f"the HTTP server of {b['name']} did not start; see {self.state_dir}/logs")
                time.sleep(0.05)
            # The agent writes its counters file once its sockets and TUN device exist.
            agent_stats = self.state_dir / f"agent-{b['name']}.json"
            while spec.encap in ("gre", "ipip") and not agent_stats.exists():
                self._check_processes()
                if time.monotonic() > deadline:
                    raise LabError(f"the backend agent of {b['name']} did not start; see {self.state_dir}/logs")
                time.sleep(0.05)
        if not spec.forwarder:
            return
        while True:
            try:
                http_get(self.state["client"]["ns"], VIP_V4, HTTP_PORT, timeout=1.0)
                return
            except OSError:
                pass
            self._check_processes()
            if time.monotonic() > deadline:
                raise LabError(
                    f"no HTTP reply through the VIP {VIP_V4} after {wait_s:.0f} s; the lab is up "
                    f"for inspection (logs in {self.state_dir}/logs); `maglev lab down` removes it"
                )
            time.sleep(0.2)

    def stop_process(self, role: str) -> bool:
        """Stop the recorded process ``role`` (by PID, checked by start time) and forget it."""
        with self.locked():
            self.load()
            keep, found = [], False
            for p in self.state.get("processes", []):
                if p["role"] != role:
                    keep.append(p)
                    continue
                found = True
                if _proc_start_time(p["pid"]) == p["start"]:
                    _signal_group(p["pid"], signal.SIGTERM)
                    deadline = time.monotonic() + 5
                    while _proc_start_time(p["pid"]) == p["start"] and time.monotonic() < deadline:
                        time.sleep(0.05)
                    if _proc_start_time(p["pid"]) == p["start"]:
                        _signal_group(p["pid"], signal.SIGKILL)
                        _remove_killed_runs([p])
            self.state["processes"] = keep
            self.save()
        return found

    def _check_processes(self) -> None:
        for p in self.state.get("processes", []):
            if _proc_start_time(p["pid"]) != p["start"]:
                tail = ""
                try:
                    tail = Path(p["log"]).read_text()[-600:].strip()
                except OSError:
                    pass
                raise LabError(f"lab process {p['role']} (pid {p['pid']}) exited: {tail or 'no output'}")

    # -- down --------------------------------------------------------------------

    def down(self) -> dict[str, Any]:
        """Remove everything the recorded lab made.  Nothing recorded: nothing to do."""
        if os.geteuid() != 0:
            raise NotRootError("maglev lab down needs root: it deletes network namespaces")
        if not self.state_path.exists():
            return {"removed_namespaces": [], "stopped_processes": 0, "was_up": False}
        with self.locked():
            if self.load() is None:
                return {"removed_namespaces": [], "stopped_processes": 0, "was_up": False}
            return self._down_locked()

    def _down_locked(self) -> dict[str, Any]:
        procs = [p for p in self.state.get("processes", []) if _proc_start_time(p["pid"]) == p.get("start")]
        for p in procs:
            _signal_group(p["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in procs:
            while _proc_start_time(p["pid"]) == p["start"] and time.monotonic() < deadline:
                time.sleep(0.05)
            if _proc_start_time(p["pid"]) == p["start"]:
                _signal_group(p["pid"], signal.SIGKILL)
        if procs:
            _remove_killed_runs(procs)
        existing = set(list_netns())
        removed = []
        for ns in reversed(self.state.get("namespaces", [])):
            if ns in existing:
                sh(["ip", "netns", "del", ns], check=False)
                removed.append(ns)
        for leftover in ("state.json", "maglev.toml"):
            (self.state_dir / leftover).unlink(missing_ok=True)
        # connection tables the lab's forwarders kept in /dev/shm for adoption (their state
        # directories under this one list them: maglev/rings/conntrack_shm.py)
        from maglev.rings.conntrack_shm import remove_recorded

        remove_recorded(str(self.state_dir))
        shutil.rmtree(self.state_dir / "forwarder-state", ignore_errors=True)
        for f in self.state_dir.glob("agent-*.json"):
            f.unlink(missing_ok=True)
        self.state = {}
        return {"removed_namespaces": removed, "stopped_processes": len(procs), "was_up": True}



def _remove_killed_runs(killed: list[dict[str, Any]]) -> None:
    """A forwarder killed with SIGKILL (it did not stop in time) leaves its run folder and
    shared-memory region: remove those of runs proven dead, as the next ``maglev run``
    would (maglev/actors/leftovers.py; a live run's are never touched)."""
    from maglev.actors.leftovers import remove_dead_runs

    deadline = time.monotonic() + 5  # SIGKILL is sent: gone (reaped by init) within moments
    for p in killed:
        while _proc_start_time(p["pid"]) == p["start"] and time.monotonic() < deadline:
            time.sleep(0.02)
    remove_dead_runs()


def _signal_group(pid: int, sig: int) -> None:
    # Each lab process leads its own session (start_new_session), so its group id is its
    # pid: the signal reaches the children it started too (e.g. maglev run's actors).
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def tx_checksum_offload(ns: str, dev: str, on: bool) -> None:
    """``ethtool -K DEV tx on|off`` in namespace ``ns`` (SIOCETHTOOL ETHTOOL_STXCSUM;
    the ethtool program is not needed)."""
    import ctypes
    import fcntl
    import struct

    from maglev.lab.nsenter import netns

    val = ctypes.create_string_buffer(struct.pack("<II", 0x17, int(on)), 8)  # ETHTOOL_STXCSUM
    ifreq = struct.pack("16sQ", dev.encode(), ctypes.addressof(val)).ljust(40, b"\0")
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(s.fileno(), 0x8946, ifreq)  # SIOCETHTOOL
    except OSError as e:
        raise LabError(f"cannot turn {dev}'s TX checksum offload {'on' if on else 'off'} in {ns}: {e.strerror}") from None
    finally:
        s.close()


def forwarder_env(spec: LabSpec) -> dict[str, str]:
    """Environment for the forwarder: the AF_PACKET ring flavour when the spec names one."""
    return {"MAGLEV_AFPACKET_RING": spec.ring} if spec.ring else {}


def forwarder_argv(spec: LabSpec, config: str) -> list[str]:
    """The forwarder command: ``spec.forwarder_argv``, else ``$MAGLEV_LAB_FORWARDER`` (a
    command line where ``{config}``, ``{iface}`` and ``{workers}`` are substituted; for
    debugging another build), else ``maglev run --config ... --nic afpacket:eth0``."""
    if spec.forwarder_argv:
        return list(spec.forwarder_argv)
    if env := os.environ.get("MAGLEV_LAB_FORWARDER"):
        subst = {"config": config, "iface": "eth0", "workers": str(spec.workers)}
        return [part.format(**subst) for part in shlex.split(env)]
    return [*maglev_argv(), "run", "--config", config, "--nic", spec.nic or "afpacket:eth0", "--workers", str(spec.workers),
            "--control", control_endpoint(config)]


def control_endpoint(config: str) -> str:
    """The lab forwarder's control socket: in the lab's own folder, beside its config.
    Every lab's config names the instance ``lab``, so the default socket
    (/run/maglev/lab/control.sock) would be shared by every lab on the machine."""
    return f"ipc://{Path(config).parent / 'control.sock'}"


def list_netns() -> list[str]:
    r = sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def maglev_argv() -> list[str]:
    """How to run the ``maglev`` command from inside a namespace."""
    exe = shutil.which("maglev")
    return [exe] if exe else [*python_argv(), "-c", "from maglev_cli.main import main; main()"]


def _tcp_ok(ns: str, host: str, port: int) -> bool:
    from maglev.lab.nsenter import netns

    with netns(ns):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def http_get(ns: str, host: str, port: int = HTTP_PORT, path: str = "/", timeout: float = 2.0) -> tuple[int, str]:
    """One HTTP/1.0 GET from inside ``ns`` on a fresh connection; (status, body)."""
    from maglev.lab.nsenter import netns

    with netns(ns):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((host, port))
        h = f"[{host}]" if ":" in host else host
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {h}\r\n\r\n".encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        s.close()
    raw = b"".join(chunks).decode("latin-1")
    head, _, body = raw.partition("\r\n\r\n")
    try:
        status = int(head.split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"malformed HTTP reply from {host}: {head[:80]!r}") from None
    return status, body


def summary(state: dict[str, Any]) -> dict[str, Any]:
    """What ``maglev lab up --json`` prints: namespaces, addresses, VIPs."""
    return {
        "prefix": state["prefix"],
        "encap": state["encap"],
        "namespaces": {
            "client": state["client"]["ns"],
            "router": state["router"]["ns"],
            "maglev": state["maglev"]["ns"],
            "backends": [b["ns"] for b in state["backends"]],
        },
        "client": {k: state["client"][k] for k in ("ipv4", "ipv6")},
        "router": {k: state["router"][k] for k in ("ipv4", "ipv6")},
        "maglev": {k: state["maglev"][k] for k in ("ipv4", "ipv6", "iface")},
        "backends": [{k: b[k] for k in ("name", "ns", "ipv4", "ipv6", "weight")} for b in state["backends"]],
        "vips": state["vips"],
        "config": state["config"],
        "forwarder": state.get("forwarder", False),
        "processes": [{k: p[k] for k in ("role", "ns", "pid")} for p in state["processes"]],
        "already_up": bool(state.get("already_up")),
    }
