"""The actors' C loops with a real NIC (mg_steer_loop_nic / mg_mux_loop_nic): `maglev run
--nic afpacket:b0` (and afxdp) forward exactly what the per-burst Python step
(MAGLEV_NIC_LOOP=0) forwards, for the same input over a veth pair."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from maglev.lab.nsenter import netns as in_netns
from maglev.testing import packets as P
from maglev.testing import unique
from tests.nic_helpers import veth_pair, why_no_afxdp

pytestmark = pytest.mark.root

MAC_A = bytes.fromhex("020000000a0a")
MAC_B = bytes.fromhex("020000000b0b")
A_IP, B_IP, VIP = "198.18.9.1", "198.18.9.2", "203.0.113.10"
BACKENDS = [f"198.18.9.{i}" for i in (11, 12, 13)]
N = 600
CONF = """[instance]
name = "{name}"
source_ipv4 = "198.18.9.2"
[[vip]]
address = "203.0.113.10"
port = 53
protocol = "udp"
""" + "".join(f'[[vip.backend]]\naddress = "{b}"\n' for b in BACKENDS)


@pytest.fixture
def pair(netns):
    return veth_pair(netns, (MAC_A, MAC_B), (A_IP, B_IP))


def frames() -> list[bytes]:
    return [P.eth(P.ipv4(A_IP, VIP, P.UDP, P.udp(1024 + i, 53, struct.pack("!I", i) * 8, src=A_IP, dst=VIP)),
                  dst=MAC_B, src=MAC_A) for i in range(N)]


def forward(a, b, tmp_path, nic: str, loop: bool) -> list[bytes]:
    """Run maglev on b0, send the frames from a0, return the GRE packets that came back."""
    name = unique.name(f"nl{int(loop)}")
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(CONF.format(name=name))
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "MAGLEV_RUN_DIR": str(tmp_path / f"run{int(loop)}"),
           "MAGLEV_STATE_DIR": str(tmp_path / f"state{int(loop)}"), "MAGLEV_NIC_LOOP": "1" if loop else "0"}
    with in_netns(a.name):
        sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sniff.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    sniff.bind(("a0", 0))
    sniff.settimeout(0.2)
    tx.bind(("a0", 0))
    p = b.popen([sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--config", str(cfg),
                 "--nic", f"{nic}:b0", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=env)
    got: list[bytes] = []
    try:
        # Ready = a probe VIP packet comes back encapsulated (steering, workers, muxer up).
        probe = P.eth(P.ipv4(A_IP, VIP, P.UDP, P.udp(9, 53, b"probe", src=A_IP, dst=VIP)), dst=MAC_B, src=MAC_A)
        deadline = time.monotonic() + 60
        ready = False
        while not ready and time.monotonic() < deadline and p.poll() is None:
            tx.send(probe)
            t = time.monotonic() + 0.3
            while time.monotonic() < t and not ready:
                try:
                    f = sniff.recv(4096)
                except TimeoutError:
                    continue
                ready = f[23] == 47 and b"probe" in f  # IPv4 protocol GRE
        assert ready, p.stderr.read() if p.poll() is not None else "maglev did not forward within 60 s"
        for i, f in enumerate(frames()):
            tx.send(f)
            if i % 50 == 49:
                time.sleep(0.002)  # bounded pacing: the veth and the rings are not the subject
        deadline = time.monotonic() + 10
        while len(got) < N and time.monotonic() < deadline:
            try:
                f = sniff.recv(4096)
            except TimeoutError:
                continue
            if f[23] == 47 and b"probe" not in f:
                got.append(f)
    finally:
        sniff.close()
        tx.close()
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        p.communicate()
    return got


def _ipid_zeroed(f: bytes) -> bytes:
    return f[:18] + b"\0\0" + f[20:24] + b"\0\0" + f[26:]  # outer IP id and checksum may differ


@pytest.mark.parametrize("nic", [
    "afpacket",
    pytest.param("afxdp", marks=pytest.mark.skipif(bool(why_no_afxdp()), reason=why_no_afxdp() or "available")),
])
def test_the_c_loop_forwards_what_the_python_step_forwards(pair, tmp_path, nic):
    _, a, b = pair
    step = forward(a, b, tmp_path, nic, loop=False)
    loop = forward(a, b, tmp_path, nic, loop=True)
    assert len(step) == N and len(loop) == N, (len(step), len(loop))
    assert sorted(map(_ipid_zeroed, loop)) == sorted(map(_ipid_zeroed, step))
    # and every flow's packet went to one backend of the VIP, encapsulated in GRE
    dsts = {socket.inet_ntoa(f[30:34]) for f in loop}
    assert dsts <= set(BACKENDS) and len(dsts) >= 2


def _actor_pid(root_pid: int, name: str) -> int:
    import psutil

    for c in psutil.Process(root_pid).children(recursive=True):
        try:
            if f'"name": "{name}"' in " ".join(c.cmdline()):
                return c.pid
        except psutil.Error:
            pass
    return 0


@pytest.mark.skipif(bool(why_no_afxdp()), reason=why_no_afxdp() or "available")
def test_afxdp_forwards_again_after_steering_is_killed(pair, tmp_path):
    """kill -9 of steering under `maglev run --nic afxdp`: the muxer lets go of the dead
    steering's sockets (else the replacement could not bind the queue), the replacement
    takes the queue and publishes new sockets, and forwarding resumes."""
    _, a, b = pair
    name = unique.name("nk")
    cfg = tmp_path / "k.toml"
    cfg.write_text(CONF.format(name=name))
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "MAGLEV_RUN_DIR": str(tmp_path / "run"),
           "MAGLEV_STATE_DIR": str(tmp_path / "state")}
    with in_netns(a.name):
        sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sniff.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sniff.bind(("a0", 0))
    sniff.settimeout(0.1)
    tx.bind(("a0", 0))
    p = b.popen([sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--config", str(cfg),
                 "--nic", "afxdp:b0", "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=env)

    def forwarded(tag: bytes, timeout: float) -> bool:
        probe = P.eth(P.ipv4(A_IP, VIP, P.UDP, P.udp(7, 53, tag, src=A_IP, dst=VIP)), dst=MAC_B, src=MAC_A)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and p.poll() is None:
            tx.send(probe)
            t = time.monotonic() + 0.2
            while time.monotonic() < t:
                try:
                    f = sniff.recv(4096)
                except TimeoutError:
                    continue
                if f[23] == 47 and tag in f:
                    return True
        return False

    try:
        assert forwarded(b"before", 60), "maglev did not forward within 60 s"
        old = _actor_pid(p.pid, "steering")
        assert old
        os.kill(old, signal.SIGKILL)
        assert forwarded(b"after", 30), "no forwarding after the steering restart"
        assert old not in {c.pid for c in __import__("psutil").Process(p.pid).children(recursive=True)}
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        sniff.close()
        tx.close()
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err[-2000:]
    line = next(x for x in (out + err).splitlines() if "AF_XDP transmit:" in x)
    assert " 0 through the TX rings" not in line, line  # the rings carried traffic
    # the first steering's sockets, then the replacement's
    assert int(line.split("took steering's sockets ")[1].split()[0]) >= 2, line
    assert "already has an AF_XDP socket" not in err
