"""Interop lab for the BGP tests: a router namespace (BIRD 2 or GoBGP) and a speaker
namespace running ``python -m maglev.bgp`` as its own process, joined by one veth pair.

    router ns  r0 198.18.0.1/30  2001:db8:18::1/64  <-veth->  s0 198.18.0.2/30  2001:db8:18::2/64  speaker ns

Everything lives in a per-test temp dir (configs, BIRD control socket, logs); the
``netns`` fixture removes the namespaces and the processes it started, also on failure.
Waits poll with a deadline; none is unbounded.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from maglev.testing.wait import wait_until

ROUTER_V4, SPEAKER_V4 = "198.18.0.1", "198.18.0.2"
ROUTER_V6, SPEAKER_V6 = "2001:db8:18::1", "2001:db8:18::2"
ROUTER_ASN = 64512
# The routers run at nice -10, like the speaker: in production a router is another machine
# with CPUs of its own; here it shares two with the load the tests make (CpuLoad).  Seen
# once at load 15 before this: BIRD declared "Hold timer expired" 9.3 s after the session
# came up, at the very moment our speaker resumed from a 7 s SIGSTOP, although the speaker
# sends a KEEPALIVE every second -- most likely BIRD itself starved (not proven: BIRD's
# packet log was off then; with it on, 8 runs at load 15 showed every KEEPALIVE arriving).
ROUTER_NICE = ("nice", "-n", "-10")


class SpeakerProc:
    """``python -m maglev.bgp`` in the speaker namespace, driven over stdin/stdout."""

    def __init__(self, proc: subprocess.Popen, log_path: Path):
        self.proc = proc
        self.log_path = log_path
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"garbage": line})

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        for ev in self.seen:
            if pred(ev):
                return ev
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(ev)
            if pred(ev):
                return ev
        raise AssertionError(f"speaker: no {what} within {timeout:g} s; events: {self.seen[-8:]}; log: {self.log()}")

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def state(self, timeout: float = 5) -> dict[str, Any]:
        self.seen = [e for e in self.seen if e.get("reply") != "state"]
        self.command("state")
        return self.wait_for(lambda e: e.get("reply") == "state", timeout, "state reply")

    def wait_established(self, timeout: float = 20) -> None:
        self.wait_for(lambda e: e.get("event") == "bgp.state" and e.get("new") == "Established", timeout, "Established")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-2000:]
        except OSError:
            return ""


class BgpLab:
    wait_until = staticmethod(wait_until)

    @staticmethod
    def wait_text(fn: Callable[[], str], needle: str, timeout: float, what: str) -> str:
        """Poll ``fn`` until its text contains ``needle``; return that text."""
        return wait_until(lambda: (lambda t: t if needle in t else "")(fn()), timeout, what)

    def __init__(self, netns: Any, tmp: Path):
        self.netns = netns
        self.tmp = tmp
        self.router = netns.add("r")
        self.speaker_ns = netns.add("s")
        netns.veth(self.router, "r0", self.speaker_ns, "s0")
        self.router.addr("r0", f"{ROUTER_V4}/30")
        self.speaker_ns.addr("s0", f"{SPEAKER_V4}/30")
        self.router.addr("r0", f"{ROUTER_V6}/64")
        self.speaker_ns.addr("s0", f"{SPEAKER_V6}/64")
        self.bird_proc: subprocess.Popen | None = None
        self.gobgp_proc: subprocess.Popen | None = None
        self.bird_sock = tmp / "bird.ctl"
        self.speakers: list[SpeakerProc] = []
        self.files: list[Any] = []  # log files handed to child processes; closed at teardown

    def logfile(self, name: str) -> Any:
        f = (self.tmp / name).open("w")
        self.files.append(f)
        return f

    def diagnosis(self) -> list[tuple[str, str]]:
        """What a failure needs to be understood, as report sections: every log's tail
        (the speakers', BIRD's -- with its packets when MAGLEV_TEST_BIRD_PACKETS=1 --,
        GoBGP's), the routers' view now, and where the whole logs stay."""
        out = [("bgp lab dir", f"{self.tmp} (pytest keeps it; MAGLEV_TEST_BIRD_PACKETS=1 puts BIRD's packets in bird.log)")]
        for name in ("bird.log", "bird.stderr", "gobgpd.log", *(sp.log_path.name for sp in self.speakers)):
            try:
                lines = (self.tmp / name).read_text(errors="replace").splitlines()
            except OSError:
                continue
            if lines:
                out.append((f"{name}, last {min(len(lines), 80)} of {len(lines)} lines", "\n".join(lines[-80:])))
        try:
            if self.bird_proc is not None and self.bird_proc.poll() is None:
                out.append(("birdc show protocols all maglev", self.birdc("show", "protocols", "all", "maglev").stdout))
            if self.gobgp_proc is not None and self.gobgp_proc.poll() is None:
                out.append(("gobgp neighbor", self.gobgp("neighbor").stdout))
        except (OSError, subprocess.SubprocessError) as exc:
            out.append(("router state", f"not read: {exc}"))
        return out

    def close(self) -> None:
        for f in self.files:
            f.close()
        for sp in self.speakers:
            for pipe in (sp.proc.stdin, sp.proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass

    # ------------------------------------------------------------------ maglev speaker
    def start_speaker(
        self, *, asn: int = 64513, peer: str = ROUTER_V4, peer_asn: int = ROUTER_ASN, announce: tuple[str, ...] = (),
        next_hop_ipv6: str = "", passive: bool = False, graceful_restart_time: int = 0, restarting: bool = False,
        bfd: bool = False, hold_time: int = 9, wait_ready: bool = False,
    ) -> SpeakerProc:
        nh6 = f'next_hop_ipv6 = "{next_hop_ipv6}"\n' if next_hop_ipv6 else ""
        nh6 += f"graceful_restart_time = {graceful_restart_time}\nbfd_interval_ms = 100\n"
        conf = self.tmp / "maglev.toml"
        conf.write_text(
            f"""[bgp]
local_asn = {asn}
router_id = "{SPEAKER_V4}"
listen_port = 179
connect_retry_time = 1
{nh6}
[[bgp.peer]]
address = "{peer}"
asn = {peer_asn}
hold_time = {hold_time}
passive = {"true" if passive else "false"}
bfd = {"true" if bfd else "false"}
"""
        )
        log_path = self.tmp / f"speaker{len(self.speakers) or ''}.log"
        argv = [sys.executable, "-m", "maglev.bgp", "--config", str(conf), "--log-level", "info"]
        for p in announce:
            argv += ["--announce", p]
        if restarting:
            argv.append("--restarting")
        if wait_ready:
            argv.append("--wait-ready")
        proc = self.speaker_ns.popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logfile(log_path.name), text=True, bufsize=1
        )
        sp = SpeakerProc(proc, log_path)
        self.speakers.append(sp)
        sp.wait_for(lambda e: e.get("event") == "ready", 20, "ready")
        return sp

    # ------------------------------------------------------------------ BIRD
    def start_bird(
        self, *, peer: str = SPEAKER_V4, peer_asn: int = 64513, graceful_restart: bool = False, bfd: bool = False,
        hold_time: int = 9, keepalive_time: int = 0,
    ) -> None:
        gr = "    graceful restart on;\n" if graceful_restart else ""
        gr += "    bfd on;\n" if bfd else ""
        bfd_proto = 'protocol bfd {\n    interface "r0" { interval 100 ms; multiplier 3; };\n}\n' if bfd else ""
        # (0: a third of the hold time; hold 0: none.)  BIRD puts RFC 4271 jitter on all its
        # timers, the hold timer too: a 9 s hold time expires after 6.75-9 s.
        keepalive = f"    keepalive time {keepalive_time or hold_time // 3};\n" if hold_time else ""
        conf = self.tmp / "bird.conf"
        conf.write_text(
            f"""log "{self.tmp}/bird.log" all;
router id {ROUTER_V4};
protocol device {{ scan time 10; }}
protocol kernel kernel4 {{ ipv4 {{ import none; export all; }}; }}
protocol kernel kernel6 {{ ipv6 {{ import none; export all; }}; }}
{bfd_proto}protocol bgp maglev {{
    local as {ROUTER_ASN};
    neighbor {peer} as {peer_asn};
    hold time {hold_time};
{keepalive}    connect delay time 1;
    connect retry time 1;
    error wait time 1, 3;
    debug {{ states, events{", packets" if os.environ.get("MAGLEV_TEST_BIRD_PACKETS") else ""} }};
{gr}    ipv4 {{ import all; export none; }};
    ipv6 {{ import all; export none; }};
}}
"""
        )
        self.bird_proc = self.router.popen(
            [*ROUTER_NICE, "bird", "-f", "-c", str(conf), "-s", str(self.bird_sock), "-P", str(self.tmp / "bird.pid")],
            stderr=self.logfile("bird.stderr"),
        )
        wait_until(lambda: self.bird_sock.exists() and self.birdc("show status").returncode == 0, 10, "BIRD control socket")

    def stop_bird(self) -> None:
        assert self.bird_proc is not None
        self.bird_proc.terminate()
        self.bird_proc.wait(timeout=10)
        self.bird_proc = None
        wait_until(lambda: not self.bird_sock.exists() or self.birdc("show status").returncode != 0, 5, "BIRD gone")

    def kill_bird(self) -> None:
        """SIGKILL BIRD (no CEASE; its kernel still closes the TCP connection)."""
        assert self.bird_proc is not None
        self.bird_proc.kill()
        self.bird_proc.wait(timeout=10)
        self.bird_proc = None

    def bird_sessions(self) -> int:
        """How many BGP sessions BIRD has established so far, from its log (`debug { states
        }`; the log is appended to across BIRD restarts in one test)."""
        try:
            return (self.tmp / "bird.log").read_text().count("maglev: BGP session established")
        except OSError:
            return 0

    def bird_gr_restarts_by_a_new_connection(self) -> int:
        """Sessions BIRD restarted itself because a new TCP connection from us arrived
        while it was Established with graceful restart negotiated.  BIRD does that on the
        bare TCP connection, before any OPEN (RFC 4724 4.2 read as "a new connection is a
        restart"): its log says "Neighbor graceful restart detected", then in the same
        breath "Incoming connection from ... accepted".  A crossed dial does it: both
        sides dial after a restart, BIRD goes Established on its own connection and only
        then accepts ours from its backlog.  That is one session more in BIRD's count
        with no flap (BIRD keeps the routes).  The same words after "Connection closed"
        or "lost" are the ordinary graceful restart of a session that ended, not counted."""
        try:
            lines = [ln for ln in (self.tmp / "bird.log").read_text().splitlines() if " maglev: " in ln]
        except OSError:
            return 0
        n = 0
        for i, line in enumerate(lines):
            if "Neighbor graceful restart detected" in line:
                # Between them BIRD logs at most "State changed to start" and "BGP session closed".
                n += any("Incoming connection from" in ln for ln in lines[i + 1:i + 4])
        return n

    def bird_notifications_in(self, but_collisions: bool = False) -> int:
        """NOTIFICATIONs BIRD received from us (its log's "Received: ..." lines); with
        ``but_collisions``, not counting CEASE "Connection collision resolution" (RFC 4271
        6.8: when both sides dial at the same moment, one of the two connections is closed
        that way before either is Established -- no session is reset)."""
        try:
            lines = [ln for ln in (self.tmp / "bird.log").read_text().splitlines() if "maglev: Received: " in ln]
        except OSError:
            return 0
        return sum(1 for ln in lines if not (but_collisions and "Connection collision resolution" in ln))

    def birdc(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["birdc", "-s", str(self.bird_sock), *cmd], capture_output=True, text=True, timeout=10)

    def bird_routes(self, family: str = "ipv4") -> str:
        table = "master4" if family == "ipv4" else "master6"
        return self.birdc("show", "route", "table", table, "protocol", "maglev", "all").stdout

    def bird_state(self) -> str:
        return self.birdc("show", "protocols", "maglev").stdout

    def bird_since(self) -> str:
        """BIRD's own record of the session: state and the time it entered it (``show
        protocols``: "maglev BGP --- up 14:40:31.601 Established"), which changes on every
        reset.  "" when BIRD does not answer."""
        for line in self.bird_state().splitlines():
            words = line.split()
            if words and words[0] == "maglev" and len(words) >= 5:
                # The clock to the second: BIRD prints the same instant 1 ms apart now and then.
                return " ".join([words[3], words[4].split(".")[0], *words[5:]])
        return ""

    def kernel_routes(self, family: str = "-4") -> str:
        return self.router.exec("ip", family, "route", "show", "proto", "bird").stdout

    # ------------------------------------------------------------------ GoBGP
    def start_gobgp(
        self, *, peer: str = SPEAKER_V4, peer_asn: int = 64513, asn: int = ROUTER_ASN, graceful_restart: bool = False,
        hold_time: int = 9,
    ) -> None:
        gr = "  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = 30\n" if graceful_restart else ""
        mp_gr = "    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n" if graceful_restart else ""
        conf = self.tmp / "gobgpd.toml"
        conf.write_text(
            f"""[global.config]
  as = {asn}
  router-id = "{ROUTER_V4}"
  port = 179
  local-address-list = ["{ROUTER_V4}", "{ROUTER_V6}"]

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{peer}"
    peer-as = {peer_asn}
  [neighbors.timers.config]
    connect-retry = 1
    idle-hold-time-after-reset = 1
    hold-time = {hold_time}
    keepalive-interval = {max(1, hold_time // 3)}
{gr}  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
{mp_gr}  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
{mp_gr}"""
        )
        self.gobgp_proc = self.router.popen(
            [*ROUTER_NICE, "gobgpd", "-f", str(conf), "-t", "toml", "--api-hosts", "127.0.0.1:50051", "--pprof-disable", "-p", "-l", "info"],
            stdout=self.logfile("gobgpd.log"),
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self.gobgp("global").returncode == 0, 15, "gobgpd API")

    def stop_gobgp(self) -> None:
        assert self.gobgp_proc is not None
        self.gobgp_proc.terminate()
        self.gobgp_proc.wait(timeout=10)
        self.gobgp_proc = None

    def gobgp_sessions(self) -> int:
        """How many times GoBGP brought the session up, from its log ("Peer Up")."""
        try:
            return (self.tmp / "gobgpd.log").read_text().count('msg="Peer Up"')
        except OSError:
            return 0

    def gobgp(self, *cmd: str) -> subprocess.CompletedProcess:
        return self.router.exec("gobgp", "-u", "127.0.0.1", "-p", "50051", *cmd, check=False, timeout=10)

    def gobgp_rib(self, family: str = "ipv4") -> dict[str, Any]:
        r = self.gobgp("global", "rib", "-a", family, "-j")
        if r.returncode != 0 or not r.stdout.strip():
            return {}
        try:
            data = json.loads(r.stdout)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def gobgp_neighbor_state(self, peer: str) -> str:
        r = self.gobgp("neighbor", peer, "-j")
        if r.returncode != 0:
            return ""
        try:
            raw = json.loads(r.stdout)["state"]["session_state"]
        except (ValueError, KeyError, TypeError):
            return ""
        # The JSON carries GoBGP's protobuf enum number (6 = established) or its name.
        names = {1: "idle", 2: "connect", 3: "active", 4: "opensent", 5: "openconfirm", 6: "established"}
        return names.get(raw, str(raw).lower()) if isinstance(raw, int) else str(raw).lower()


class CpuLoad:
    """``n`` busy processes (default two per CPU), each ending by itself after ``seconds``
    and killed by PID when the block ends (also on failure): load as CI sees it."""

    def __init__(self, seconds: float, n: int = 0):
        self.seconds = seconds
        self.n = n or 2 * (os.cpu_count() or 1)
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> CpuLoad:
        code = f"import time\nend = time.monotonic() + {self.seconds}\nwhile time.monotonic() < end: pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.n)]
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait(timeout=10)


def _lab(request: pytest.FixtureRequest, tmp_path: Path, binaries: tuple[str, ...], package: str):
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH (apt-get install {package})")
    netns = request.getfixturevalue("netns")  # skips with the reason when not root
    lab = BgpLab(netns, tmp_path)
    request.node._bgp_lab = lab  # for pytest_runtest_makereport: the logs of a failure
    try:
        yield lab
    finally:
        netns.close()  # processes first, so their log files can be closed after
        lab.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed BGP lab test shows its logs' tails (speaker, BIRD, GoBGP) beside the
    assertion: a timing failure in CI is diagnosed from that report alone."""
    outcome = yield
    rep = outcome.get_result()
    lab = getattr(item, "_bgp_lab", None)
    if lab is not None and rep.failed and call.when in ("setup", "call"):
        for title, text in lab.diagnosis():
            rep.sections.append((title, text))


@pytest.fixture
def bird_lab(request, tmp_path):
    yield from _lab(request, tmp_path, ("bird", "birdc"), "bird2")


@pytest.fixture
def gobgp_lab(request, tmp_path):
    yield from _lab(request, tmp_path, ("gobgpd", "gobgp"), "gobgpd")
