"""The AF_XDP NIC over a veth pair between two namespaces: VIP packets reach the sockets,
everything else reaches the kernel, bad input gives one-line errors, and no XDP program
is left on the interface after a close or a SIGKILL."""

from __future__ import annotations

import json
import mmap
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from maglev.lab.nsenter import netns as in_netns
from maglev.native import ffi, lib
from maglev.nic import NicSpecError, parse_nic
from maglev.testing import packets as P

pytestmark = pytest.mark.root

VIP = "203.0.113.10"
A_IP, B_IP = "198.18.9.1", "198.18.9.2"


def _why() -> str:
    try:
        from maglev.nic.afxdp import why_no_afxdp
    except ImportError as e:
        return f"no AF_XDP driver: {e}"
    return why_no_afxdp()


@pytest.fixture
def pair(netns):
    if reason := _why():
        pytest.skip(reason)
    a, b = netns.add("a"), netns.add("b")
    netns.veth(a, "a0", b, "b0")
    for ns, dev, ip in ((a, "a0", A_IP), (b, "b0", B_IP)):
        ns.sysctl(f"net.ipv6.conf.{dev}.disable_ipv6", "1")
        ns.addr(dev, f"{ip}/24")
    return netns, a, b


def xdp_attached(ns, dev: str) -> bool:
    info = json.loads(ns.exec("ip", "-j", "-d", "link", "show", "dev", dev).stdout)[0]
    return "xdp" in info


def mac(ns, dev: str) -> bytes:
    return bytes.fromhex(json.loads(ns.exec("ip", "-j", "link", "show", "dev", dev).stdout)[0]["address"].replace(":", ""))


def open_nic(ns, dev: str = "b0", **kw):
    from maglev.nic.afxdp import AfXdpNic

    with in_netns(ns.name):
        return AfXdpNic(dev, vips=[(VIP, 0, "udp")], **kw)


class Pool:
    def __init__(self, n: int = 256):
        self.mm = mmap.mmap(-1, n * lib.MG_FRAME_SIZE)
        self.ptr = ffi.from_buffer("uint8_t[]", self.mm)
        self.descs = ffi.new("uint64_t[]", list(range(n)))
        self.n = n

    def packet(self, i: int) -> bytes:
        m = ffi.cast("struct mg_frame_meta *", self.ptr + i * lib.MG_FRAME_SIZE)
        start = i * lib.MG_FRAME_SIZE + lib.MG_FRAME_META_SIZE + m.data_off
        return bytes(self.mm[start : start + m.len])


def receive(nic, pool: Pool, want: int, timeout: float = 3.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        k = nic.rx_burst(pool.ptr, pool.descs, pool.n)
        got += [pool.packet(i) for i in range(k)]
        if not k:
            nic.wait(0.05)
    return got


def vip_frames(a, b, n: int) -> list[bytes]:
    dst, src = mac(b, "b0"), mac(a, "a0")
    return [P.eth(P.ipv4(A_IP, VIP, P.UDP, P.udp(2000 + i, 53, b"q" * 20, src=A_IP, dst=VIP)), dst=dst, src=src)
            for i in range(n)]


def send_raw(a, frames: list[bytes]) -> None:
    with in_netns(a.name):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind(("a0", 0))
        for f in frames:
            s.send(f)
    finally:
        s.close()


def test_vip_packets_reach_the_socket_and_the_rest_reaches_the_kernel(pair):
    _, a, b = pair
    nic = open_nic(b)
    try:
        assert xdp_attached(b, "b0")
        frames = vip_frames(a, b, 20)
        send_raw(a, frames)
        pool = Pool()
        got = receive(nic, pool, 20)
        assert got == frames  # whole frames, in order
        # Not for a VIP: the kernel gets it (ARP, then a datagram to a socket of b's).
        with in_netns(b.name):
            srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with in_netns(a.name):
            cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            srv.bind((B_IP, 5353))
            srv.settimeout(3)
            cli.sendto(b"hello kernel", (B_IP, 5353))
            cli.sendto(b"hello again", (B_IP, 5353))
            assert srv.recv(100) == b"hello kernel" and srv.recv(100) == b"hello again"
        finally:
            srv.close()
            cli.close()
        s = nic.stats()
        assert s["rx_packets"] == 20 and s["xdp_redirected"] >= 20 and s["xdp_passed"] >= 2
        assert s["mode"] == "copy"  # veth has no zero-copy
    finally:
        nic.close()
    assert not xdp_attached(b, "b0")


def test_sigkill_leaves_no_xdp_program(pair):
    _, _, b = pair
    code = ("import sys, time\n"
            "from maglev.nic.afxdp import AfXdpNic\n"
            "n = AfXdpNic('b0', vips=[('203.0.113.10', 0, 'udp')])\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    p = b.popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        assert xdp_attached(b, "b0")
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
    deadline = time.monotonic() + 5
    while xdp_attached(b, "b0") and time.monotonic() < deadline:
        time.sleep(0.05)  # the link is released with the process's last file reference
    assert not xdp_attached(b, "b0")
    nic = open_nic(b)  # and the interface is usable again at once
    nic.close()


def test_second_nic_on_the_same_queue_is_a_clear_error(pair):
    from maglev.nic.afpacket import NicError

    _, _, b = pair
    nic = open_nic(b)
    try:
        with pytest.raises(NicError, match="already has an AF_XDP socket"):
            open_nic(b)
        assert xdp_attached(b, "b0")  # the first one is untouched
    finally:
        nic.close()
    assert not xdp_attached(b, "b0")


@pytest.mark.parametrize("kw, match", [
    ({"queues": 2}, "has 1 receive queue"),
    ({"mode": "zerocopy"}, "no AF_XDP zero-copy"),
])
def test_bad_queue_or_mode_is_a_one_line_error(pair, kw, match):
    from maglev.nic.afpacket import NicError

    _, _, b = pair
    with pytest.raises(NicError, match=match) as ei:
        open_nic(b, **kw)
    assert "\n" not in str(ei.value)
    assert not xdp_attached(b, "b0")


def test_missing_interface_is_a_one_line_error(pair):
    from maglev.nic.afpacket import NicError

    _, _, b = pair
    with pytest.raises(NicError, match="no network interface named 'nope0'"):
        open_nic(b, dev="nope0")


def test_link_down_and_up_keeps_receiving(pair):
    _, a, b = pair
    nic = open_nic(b)
    try:
        pool = Pool()
        send_raw(a, vip_frames(a, b, 5))
        assert len(receive(nic, pool, 5)) == 5
        b.exec("ip", "link", "set", "b0", "down")
        time.sleep(0.2)
        b.exec("ip", "link", "set", "b0", "up")
        deadline = time.monotonic() + 5
        got = 0
        while got < 5 and time.monotonic() < deadline:  # the peer needs a moment to carrier up
            send_raw(a, vip_frames(a, b, 5))
            got += len(receive(nic, pool, 5, timeout=0.5))
        assert got >= 5
        assert xdp_attached(b, "b0")
    finally:
        nic.close()


def test_afxdp_spec_options_are_checked():
    assert parse_nic("afxdp:eth0,queues=2,mode=copy,busy_poll=50").option_dict() == {
        "queues": "2", "mode": "copy", "busy_poll": "50"}
    for bad in ("afxdp:eth0,mode=fast", "afxdp:eth0,queues=0", "afxdp:", "afxdp:eth0,ring=v2"):
        with pytest.raises(NicSpecError):
            parse_nic(bad)


def test_maglev_run_on_a_missing_interface_says_so_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-c", "from maglev_cli.main import main; main()", "run",
                        "--nic", "afxdp:nope0", "--workers", "1"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MAGLEV_STATE_DIR": str(tmp_path)})
    assert r.returncode != 0
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert err == ["maglev: error: --nic afxdp:nope0: no network interface named 'nope0' here"], r.stderr
