"""End to end: real kernels, real TCP/HTTP, through `maglev run --nic afpacket:eth0`.

Each test builds its own lab (own prefix and state directory) and takes it down after.
The maglev tests skip, saying why, while `maglev run` is not registered; the fragment
test also runs with the lab's stand-in relay, which checks the backends' side alone.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from maglev.lab import topology as topo
from maglev.lab.client import Capture, http_load
from maglev.lab.nsenter import netns as in_netns
from maglev.lab.relay import Relay
from maglev.testing.wait import wait_until

pytestmark = pytest.mark.root


def _have_forwarder() -> bool:
    import os

    from maglev_cli.main import COMMANDS

    return bool(os.environ.get("MAGLEV_LAB_FORWARDER")) or any(attr == "run" for _, attr in COMMANDS)


needs_run = pytest.mark.skipif(
    not _have_forwarder(),
    reason="`maglev run` is not registered in cli/main.py yet (or set MAGLEV_LAB_FORWARDER)",
)


def assert_spread(result, state, tolerance: float = 0.25) -> None:
    """Each backend's share of ``result``'s requests within ``tolerance`` (relative) of its
    weight's share.  Each request is a new flow (a fresh client port) hashed at random:
    with 1000 of them a 1/4 share has a standard deviation of 0.0137, so the old 20 %
    (0.05) was 3.65 sigma: two such backends in each of the four encapsulations failed
    about one suite run in 500.  25 % is 4.56 sigma (one run in 25 000), and still far
    from what a weight bug gives (weights ignored: 1/3 for a 1/4 or 1/2 share, off by a
    third or more)."""
    weights = {b["name"]: b["weight"] for b in state["backends"]}
    total = sum(weights.values())
    for name, w in weights.items():
        expected = w / total
        share = result.backends.get(name, 0) / result.ok
        assert abs(share - expected) <= tolerance * expected, (
            f"{name}: {share:.3f} of requests, expected {expected:.3f} +- {tolerance:.0%}: "
            f"{dict(result.backends)}"
        )


@needs_run
@pytest.mark.slow
@pytest.mark.parametrize("encap", ["gre", "ipip", "vxlan", "l2"])
def test_1000_http_requests_spread_by_weight_and_replies_bypass_maglev(make_lab, tmp_path, encap):
    lab = make_lab(encap=encap, backends=3, weights=(1, 1, 2), forwarder=True)
    st = lab.state
    with Capture(st["maglev"]["ns"], "eth0", tmp_path / "maglev.pcap") as cap, \
         Capture(st["client"]["ns"], "eth0", tmp_path / "client.pcap") as ccap:  # fmt: skip
        result = http_load(st["client"]["ns"], topo.VIP_V4, 1000, concurrency=8, deadline_s=240)
    assert result.ok == 1000, result.to_dict()
    assert_spread(result, st)
    # Requests crossed the maglev namespace; replies reached the client without it.
    # (tcpdump may miss a few packets on a busy machine: the counts allow for that, the
    # zero does not.)
    assert cap.count(f"dst host {topo.VIP_V4} and tcp dst port 80 and tcp[tcpflags] & tcp-syn != 0") >= 900
    assert cap.count(f"src host {topo.VIP_V4}") == 0
    assert ccap.count(f"src host {topo.VIP_V4} and tcp src port 80 and tcp[tcpflags] & tcp-syn != 0") >= 900


@needs_run
@pytest.mark.slow
def test_ipv6_vip_end_to_end(make_lab, tmp_path):
    lab = make_lab(encap="gre", backends=3, forwarder=True)
    st = lab.state
    with Capture(st["maglev"]["ns"], "eth0", tmp_path / "maglev.pcap") as cap:
        result = http_load(st["client"]["ns"], topo.VIP_V6, 300, concurrency=8, deadline_s=120)
    assert result.ok == 300, result.to_dict()
    assert len(result.backends) == 3
    assert cap.count(f"src host {topo.VIP_V6}") == 0


@needs_run
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 is not installed")
def test_iperf3_through_the_vip(make_lab):
    # One backend: iperf3's control and data connections are different flows and must
    # meet the same server.
    lab = make_lab(encap="gre", backends=1, forwarder=True)
    st = lab.state
    be = st["backends"][0]
    server = subprocess.Popen(["ip", "netns", "exec", be["ns"], "iperf3", "-s", "-1", "-p", "5201"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # iperf3 -s -1 serves one client: no probe connection; ask the kernel (ss) until
        # it listens, not a fixed time (a starved machine starts it late: "refused").
        def listening() -> bool:
            assert server.poll() is None, "iperf3 -s exited"
            out = subprocess.run(["ip", "netns", "exec", be["ns"], "ss", "-Hltn", "sport = :5201"],
                                 capture_output=True, text=True, timeout=10).stdout
            return bool(out.strip())

        wait_until(listening, 20, "iperf3 -s listening on port 5201")
        r = subprocess.run(["ip", "netns", "exec", st["client"]["ns"], "iperf3", "-c", topo.VIP_V4,
                            "-p", "5201", "-t", "2", "-J"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr
        out = json.loads(r.stdout)
        bps = out["end"]["sum_received"]["bits_per_second"]
        assert bps > 1e6, f"only {bps:.0f} bit/s through the VIP"
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(timeout=5)


def _fragment_test(lab, count: int = 12, size: int = 4000) -> None:
    """Datagrams bigger than the client's MTU leave it as fragments; each must arrive
    whole at exactly one backend (the backend kernel reassembles after decapsulation)."""
    st = lab.state
    port = 9999
    socks = {}
    for b in st["backends"]:
        with in_netns(b["ns"]):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        s.settimeout(0.05)
        socks[b["name"]] = s
    with in_netns(st["client"]["ns"]):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sent = []
        for i in range(count):
            payload = i.to_bytes(4, "big") + bytes((i * 7 + k) & 0xFF for k in range(size - 4))
            c.sendto(payload, (topo.VIP_V4, port))
            sent.append(payload)
            time.sleep(0.01)
        got: dict[bytes, list[str]] = {}
        deadline = time.monotonic() + 5
        while sum(len(v) for v in got.values()) < count and time.monotonic() < deadline:
            for name, s in socks.items():
                try:
                    data = s.recv(65535)
                except TimeoutError:
                    continue
                got.setdefault(data, []).append(name)
        assert sorted(got) == sorted(sent), "some datagrams were lost or damaged"
        assert all(len(v) == 1 for v in got.values())  # each reached one backend, once
    finally:
        c.close()
        for s in socks.values():
            s.close()


@pytest.mark.slow
def test_fragmented_udp_reaches_one_backend_whole_via_relay(make_lab):
    lab = make_lab(encap="gre", backends=3, forwarder=False)
    st = lab.state
    relay = Relay(st["maglev"]["ns"], "eth0", [topo.VIP_V4, topo.VIP_V6], st["backends"], "gre",
                  st["maglev"]["mac"])
    try:
        _fragment_test(lab)
    finally:
        relay.stop()


@needs_run
@pytest.mark.slow
@pytest.mark.parametrize("encap", ["gre", "vxlan"])
def test_fragmented_udp_reaches_one_backend_whole(make_lab, encap):
    lab = make_lab(encap=encap, backends=3, forwarder=True)
    _fragment_test(lab)


@needs_run
@pytest.mark.slow
def test_forwarder_survives_its_link_going_down_and_up(make_lab):
    """The link goes down while packets stream through the forwarder, so some are still
    in its pipeline and the muxer's send is refused (ENETDOWN): that used to leave the
    AF_PACKET TX ring position ahead of the kernel's, and nothing left after the link came
    back (0 of 50, seen in CI).  Now the outage is counted and transmit resumes."""
    lab = make_lab(encap="gre", backends=2, forwarder=True)
    st = lab.state
    before = http_load(st["client"]["ns"], topo.VIP_V4, 50, concurrency=4, deadline_s=60)
    assert before.ok == 50, before.to_dict()
    with _udp_stream(st["client"]["ns"], topo.VIP_V4) as stream:
        stream.wait_sent(200)
        topo.ns_exec(st["maglev"]["ns"], "ip", "link", "set", "eth0", "down")
        stream.wait_sent(stream.sent + 100)
    failed = http_load(st["client"]["ns"], topo.VIP_V4, 5, concurrency=5, timeout_s=0.5, deadline_s=10)
    assert failed.ok == 0  # really down
    time.sleep(0.5)
    topo.ns_exec(st["maglev"]["ns"], "ip", "link", "set", "eth0", "up")
    lab._check_processes()  # the forwarder did not crash
    deadline = time.monotonic() + 20
    while True:
        after = http_load(st["client"]["ns"], topo.VIP_V4, 50, concurrency=4, deadline_s=60)
        if after.ok == 50 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert after.ok == 50, (after.to_dict(), _forwarder_state(lab))
    lab._check_processes()
    # The outage was logged by the receive side and, when the muxer had frames in flight
    # as the link went down (most runs: the stream), by the transmit side with its end.
    muxer = _forwarder_state(lab)["stats"]["muxer"]
    want = ["afpacket: link down; receiving again once it is up"]
    if muxer["tx_errors"]:
        want += ["afpacket: transmit refused, link down", "afpacket: transmit works again"]
    log_path = next(Path(p["log"]) for p in st["processes"] if p["role"] == "maglev")
    end = time.monotonic() + 10  # the muxer looks at its NIC every housekeeping tick
    while [w for w in want if w not in log_path.read_text()] and time.monotonic() < end:
        time.sleep(0.1)
    text = log_path.read_text()
    assert [w for w in want if w not in text] == [], (muxer, text[-3000:])


class _udp_stream:
    """Datagrams from namespace ``ns`` to ``host`` port 9 every ~0.2 ms on a thread, at most
    ``limit`` of them or ``max_s`` seconds, until the ``with`` block ends."""

    def __init__(self, ns: str, host: str, limit: int = 20000, max_s: float = 10.0):
        import threading

        with in_netns(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.host, self.limit, self.max_s = host, limit, max_s
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + self.max_s
        while not self.stop.is_set() and self.sent < self.limit and time.monotonic() < end:
            try:
                self.sock.sendto(self.sent.to_bytes(4, "big") * 16, (self.host, 9))
            except OSError:
                pass  # an ICMP error reported back, or no route for a moment
            self.sent += 1
            self.stop.wait(0.0002)

    def wait_sent(self, n: int, timeout_s: float = 5.0) -> None:
        end = time.monotonic() + timeout_s
        while self.sent < n and time.monotonic() < end:
            time.sleep(0.01)

    def __enter__(self) -> _udp_stream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def _forwarder_state(lab) -> dict:
    """What the lab's forwarder says about itself (drops by reason, NIC counters, backends'
    health): printed when a test fails, so a failure seen once in CI can be explained."""
    from maglev.control.client import ControlClient
    from maglev.lab.topology import control_endpoint

    out: dict = {}
    try:
        with ControlClient(control_endpoint(lab.state["config"]), timeout=5) as c:
            for what in ("stats", "status", "vips"):
                try:
                    out[what] = c.call(what, None, timeout=5)
                except Exception as exc:  # the diagnosis must not hide the failure
                    out[what] = repr(exc)
            for v in out["vips"] if isinstance(out["vips"], list) else []:
                if v["address"] == topo.VIP_V4 and v["protocol"] == "tcp":
                    try:
                        out["backends"] = c.call("backends", {"vip": v["vip"]}, timeout=5)
                    except Exception as exc:
                        out["backends"] = repr(exc)
    except Exception as exc:
        out["error"] = repr(exc)
    return out
