"""Record the lab traces: real traffic captured at the maglev namespace's interface.

    sudo python traces/record.py [--out traces]

Brings up a lab (3 backends, GRE, *no forwarder*: the captures are the forwarder's
input, and the stand-in relay (maglev.lab.relay) forwards meanwhile so that TCP
handshakes complete and the traffic is realistic), and for each trace runs
``tcpdump -i eth0 -Q in -s 0 -w traces/<name>.pcap 'ip or ip6'`` in the maglev namespace while it:

* ``http``     -- 20 HTTP GETs to 203.0.113.10:80, each on a fresh connection;
* ``ipv6``     -- 10 HTTP GETs to [2001:db8:f::10]:80;
* ``frag``     -- 6 UDP datagrams of 4000 bytes to 203.0.113.10:9999 (the client's IP
  layer fragments each into 3);
* ``synburst`` -- 200 TCP SYNs with distinct source ports to 203.0.113.10:80, written by
  a raw socket in the client namespace (nobody answers them: no relay for this one).

The lab's config is copied to ``traces/lab.toml`` (the config the goldens are computed
with).  Then run ``python traces/golden.py --update`` (``just traces-golden``).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import struct
import sys
import time
from pathlib import Path

from maglev.datapath.ref_csum import checksum
from maglev.lab import topology as topo
from maglev.lab.client import Capture, http_load
from maglev.lab.nsenter import netns
from maglev.lab.relay import Relay


def syn_burst(ns: str, n: int) -> None:
    src, dst = socket.inet_aton(topo.CLIENT_V4), socket.inet_aton(topo.VIP_V4)
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        for i in range(n):
            sport = 20000 + i
            tcp = struct.pack("!HHIIBBHHH", sport, 80, 1000 + i, 0, 5 << 4, 0x02, 64240, 0, 0)
            pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
            tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
            s.sendto(tcp, (topo.VIP_V4, 0))
    finally:
        s.close()


def udp_frags(ns: str, count: int, size: int) -> None:
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(count):
            s.sendto(i.to_bytes(4, "big") + bytes((i + k) & 0xFF for k in range(size - 4)), (topo.VIP_V4, 9999))
            time.sleep(0.02)
    finally:
        s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description="record the lab traces")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args()
    out = Path(args.out)
    if reason := topo.why_no_lab():
        print(f"record: {reason}", file=sys.stderr)
        return 2
    state_dir = Path("/run/maglev-lab-traces")
    lab = topo.Lab(state_dir)
    spec = topo.LabSpec(prefix="mgtrace", state_dir=state_dir, backends=3, encap="gre", forwarder=False)
    try:
        st = lab.up(spec)
        shutil.copy(st["config"], out / "lab.toml")
        mg, client = st["maglev"]["ns"], st["client"]["ns"]
        relay = Relay(mg, "eth0", [topo.VIP_V4, topo.VIP_V6], st["backends"], "gre", st["maglev"]["mac"])
        try:
            http_load(client, topo.VIP_V4, 3)  # warm ARP/ND caches: no resolution in the traces
            http_load(client, topo.VIP_V6, 3)
            scenes = {
                "http": lambda: http_load(client, topo.VIP_V4, 20, concurrency=1),
                "ipv6": lambda: http_load(client, topo.VIP_V6, 10, concurrency=1),
                "frag": lambda: udp_frags(client, 6, 4000),
            }
            for name, scene in scenes.items():
                with Capture(mg, "eth0", out / f"{name}.pcap", bpf="ip or ip6", direction="in", snaplen=0) as cap:
                    scene()
                    time.sleep(0.3)
                print(f"{name}: {cap.count()} packets")
        finally:
            relay.stop()
        with Capture(mg, "eth0", out / "synburst.pcap", bpf="ip or ip6", direction="in", snaplen=0) as cap:
            syn_burst(client, 200)
            time.sleep(0.3)
        print(f"synburst: {cap.count()} packets")
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
