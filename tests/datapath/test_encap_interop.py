"""Interop: a stock Linux kernel decapsulates what maglev's encapsulation builds.

Two namespaces joined by a veth pair: "lb" injects encapsulated frames with an AF_PACKET
socket; "be" (the backend) has the VIP on lo, rp_filter off, and the kernel's own tunnel
devices (vxlan; gre / ip6gre / ipip / sit / ip6tnl when this kernel has them).  A UDP
listener on the VIP in "be" must receive the inner datagram.  Cases whose tunnel type the
kernel lacks are skipped with the reason (that is what `maglev backend-agent` is for).
"""

from __future__ import annotations

import json
import select
import subprocess
import sys

import pytest

from maglev.datapath import encap as E
from maglev.datapath import ref_encap as R
from maglev.testing import packets as P

pytestmark = pytest.mark.root

LB4, BE4 = "198.18.1.1", "198.18.1.2"
LB6, BE6 = "2001:db8:ff::1", "2001:db8:ff::2"
VIP = {4: "203.0.113.10", 6: "2001:db8:f::10"}
CLIENT = {4: "198.51.100.7", 6: "2001:db8:c::7"}
PORT = 5555
VX_MAC = "02:00:00:00:dd:04"

# device name -> `ip link add` arguments; the VXLAN ones share one inner MAC
DEVICES = {
    "vx4": ["type", "vxlan", "id", "77", "dstport", "4789", "local", BE4],
    "vx6": ["type", "vxlan", "id", "78", "dstport", "4789", "local", BE6],
    "gre4": ["type", "gre", "local", BE4],
    "gre6": ["type", "ip6gre", "local", BE6],
    "ipip4": ["type", "ipip", "local", BE4],
    "sit4": ["type", "sit", "local", BE4],
    "ip6t": ["type", "ip6tnl", "mode", "any", "local", BE6],
}

LISTEN = f"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", {PORT}))
s.settimeout(60)
print("ready", flush=True)
try:
    while True:
        data, addr = s.recvfrom(4096)
        src = addr[0][7:] if addr[0].startswith("::ffff:") else addr[0]
        print(data.decode(), src, flush=True)
except socket.timeout:
    pass
"""

SEND = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.send(bytes.fromhex(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def lab():
    from maglev.testing.netns import NetnsSet, why_no_netns

    if reason := why_no_netns():
        pytest.skip(reason)
    with NetnsSet("encap") as ns:
        lb, be = ns.add("lb"), ns.add("be")
        ns.veth(lb, "a0", be, "b0")
        for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter", "net.ipv4.conf.b0.rp_filter"):
            be.sysctl(key, "0")
        lb.addr("a0", f"{LB4}/24")
        lb.addr("a0", f"{LB6}/64")
        be.addr("b0", f"{BE4}/24")
        be.addr("b0", f"{BE6}/64")
        be.addr("lo", f"{VIP[4]}/32")
        be.addr("lo", f"{VIP[6]}/128")
        missing = {}
        for dev, args in DEVICES.items():
            r = be.exec("ip", "link", "add", dev, *args, check=False)
            if r.returncode != 0:
                missing[dev] = r.stderr.strip()
                continue
            if dev.startswith("vx"):
                be.exec("ip", "link", "set", dev, "address", VX_MAC)
            be.up(dev)
        macs = {}
        for n, dev in ((lb, "a0"), (be, "b0")):
            info = json.loads(n.exec("ip", "-j", "link", "show", dev).stdout)
            macs[dev] = info[0]["address"]
        listener = be.popen([sys.executable, "-c", LISTEN], stdout=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([listener.stdout], [], [], 20)
            assert ready and listener.stdout.readline().strip() == "ready"
            yield {"lb": lb, "be": be, "missing": missing, "macs": macs, "listener": listener}
        finally:
            ns.close()  # stops the listener (by PID) before its pipe is closed
            listener.stdout.close()


def _received(listener, want: str, timeout: float = 5.0) -> str | None:
    """The source address of the datagram carrying ``want``, or None after ``timeout``."""
    import time

    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([listener.stdout], [], [], left)
        if not ready:
            return None
        line = listener.stdout.readline()
        if not line:
            return None
        payload, src = line.split()
        if payload == want:
            return src
    return None


CASES = [
    # encap, outer family, inner family, device that must exist in the backend
    ("vxlan", 4, 4, "vx4"), ("vxlan", 4, 6, "vx4"), ("vxlan", 6, 4, "vx6"), ("vxlan", 6, 6, "vx6"),
    ("l2", 4, 4, None), ("l2", 6, 6, None),
    ("gre", 4, 4, "gre4"), ("gre", 4, 6, "gre4"), ("gre", 6, 4, "gre6"), ("gre", 6, 6, "gre6"),
    ("ipip", 4, 4, "ipip4"), ("ipip", 4, 6, "sit4"), ("ipip", 6, 4, "ip6t"), ("ipip", 6, 6, "ip6t"),
]


@pytest.mark.parametrize(("encap", "outer", "inner", "dev"), CASES,
                         ids=[f"{c[0]}-outer{c[1]}-inner{c[2]}" for c in CASES])
def test_linux_decapsulates(lab, encap, outer, inner, dev):
    if dev in lab["missing"]:
        pytest.skip(f"this kernel cannot create a {DEVICES[dev][1]} device ({lab['missing'][dev]})")
    tag = f"maglev-{encap}-{outer}-{inner}"
    client, vip = CLIENT[inner], VIP[inner]
    seg = P.udp(40000, PORT, tag.encode(), src=client, dst=vip)
    l3 = P.ipv4(client, vip, P.UDP, seg) if inner == 4 else P.ipv6(client, vip, P.UDP, seg)
    frame = P.eth(l3, dst="02:00:00:00:00:fe", src="02:00:00:00:00:01")
    prm = R.EncapParams(
        type=R.TYPES[encap], outer_family=outer,
        src=P.addr(LB4 if outer == 4 else LB6), dst=P.addr(BE4 if outer == 4 else BE6),
        eth_src=P.mac(lab["macs"]["a0"]), eth_dst=P.mac(lab["macs"]["b0"]),
        inner_eth_src=P.mac("02:00:00:00:cc:03"), inner_eth_dst=P.mac(VX_MAC), vni=77 if outer == 4 else 78,
    )
    out = E.encap(frame, 14, inner, 0x1234567, prm)
    assert out == E.encap(frame, 14, inner, 0x1234567, prm, engine="python")
    lab["lb"].exec(sys.executable, "-c", SEND, "a0", out.hex())
    assert _received(lab["listener"], tag) == client, f"the backend kernel did not deliver {tag}"


def test_negative_control_wrong_vni_or_inner_mac_is_not_delivered(lab):
    """The listener only sees what the kernel decapsulated: a VNI or an inner MAC the
    backend's vxlan device does not have must not arrive."""
    if "vx4" in lab["missing"]:
        pytest.skip(f"this kernel cannot create a vxlan device ({lab['missing']['vx4']})")
    for n, (vni, inner_mac) in enumerate(((999, VX_MAC), (77, "02:00:00:00:ee:ee"))):
        tag = f"maglev-negative-{n}"
        seg = P.udp(40000, PORT, tag.encode(), src=CLIENT[4], dst=VIP[4])
        frame = P.eth(P.ipv4(CLIENT[4], VIP[4], P.UDP, seg))
        prm = R.EncapParams(type=R.VXLAN, outer_family=4, src=P.addr(LB4), dst=P.addr(BE4),
                            eth_src=P.mac(lab["macs"]["a0"]), eth_dst=P.mac(lab["macs"]["b0"]),
                            inner_eth_dst=P.mac(inner_mac), vni=vni)
        lab["lb"].exec(sys.executable, "-c", SEND, "a0", E.encap(frame, 14, 4, 1, prm).hex())
        assert _received(lab["listener"], tag, timeout=1.0) is None
