"""The tunnel probes' raw sockets are opened once, while CAP_NET_RAW is held, and keep
working after the process has given up every capability (the health prober's set-up,
maglev/actors/health_prober.py; docs/service.md).

In a namespace of its own, a child process plays prober *and* backend on ``lo``: the
backend part (a raw GRE socket, the lab agent's ``decapsulate``, the inner SYN sent again
through IPPROTO_RAW) unwraps the probe and hands it to the kernel, which answers from the
VIP (a listener on one port; a RST on the other).  The prober part opens the shared
sockets, drops to an empty capability set, checks its own CapEff, then runs concurrent
probes through them, and finally shows that a socket opened *now* is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from maglev.testing.netns import NetnsSet, why_no_netns

pytestmark = pytest.mark.root

VIP, SRC, BACKEND = "203.0.113.77", "198.18.7.2", "198.18.7.11"

CHILD = textwrap.dedent('''
    import asyncio, json, socket, threading
    from maglev.config import Config
    from maglev.health import tunnel
    from maglev.health.checks import CheckSpec, run_check
    from maglev.lab.agent import IPPROTO_GRE, decapsulate
    from maglev.service import privileges as pv

    VIP, SRC, BACKEND = {vip!r}, {src!r}, {backend!r}
    listener = socket.socket()
    listener.bind((VIP, 8080))
    listener.listen(64)

    gre = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
    inject = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    gre.settimeout(0.2)
    unwrapped = [0]
    stop = threading.Event()

    def backend():  # what a backend's decapsulation agent does, on lo
        while not stop.is_set():
            try:
                pkt = gre.recv(65535)
            except TimeoutError:
                continue
            inner = decapsulate(pkt, socket.AF_INET, IPPROTO_GRE, frozenset({{socket.inet_aton(VIP)}}))
            inject.sendto(inner, (VIP, 0))
            unwrapped[0] += 1

    t = threading.Thread(target=backend, daemon=True)
    t.start()

    raw = tunnel.open_shared()
    before = pv.cap_sets()["CapEff"]
    pv.drop_to(set())
    after = pv.cap_sets()["CapEff"]

    def spec(port):
        c = Config.from_dict({{"instance": {{"source_ipv4": SRC}},
             "vip": [{{"address": VIP, "port": port, "encap": "gre", "table_size": 13,
                      "health": {{"type": "tcp", "through_tunnel": True, "timeout_ms": 2000}},
                      "backend": [{{"address": BACKEND}}]}}]}})
        v = c.vips[0]
        return CheckSpec.for_backend(v, v.backends[0], None, c.instance)

    async def main():
        specs = [spec(8080)] * 12 + [spec(8081)] * 12  # 24 at once through the two sockets
        return await asyncio.gather(*(run_check(s) for s in specs))

    results = asyncio.run(main())
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        late = "opened"
    except PermissionError as exc:
        late = "EPERM"
    stop.set()
    t.join()
    print(json.dumps({{"opened": raw is not None, "before": before, "after": after, "late": late,
                      "unwrapped": unwrapped[0], "waiting_left": len(raw.waiting),
                      "results": [[r.ok, r.detail, r.local] for r in results]}}))
''')


def test_shared_raw_sockets_probe_after_every_capability_is_dropped():
    if reason := why_no_netns():
        pytest.skip(reason)
    with NetnsSet("tunraw") as nss:
        ns = nss.add("p")
        for a in (VIP, SRC, BACKEND):
            ns.addr("lo", f"{a}/32")
        code = CHILD.format(vip=VIP, src=SRC, backend=BACKEND)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        r = subprocess.run(ns.argv([sys.executable, "-c", code]), capture_output=True, text=True,
                           timeout=60, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["opened"] and out["before"] >> 13 & 1  # root: CAP_NET_RAW held at set-up
    assert out["after"] == 0  # CapEff of the prober after set-up: nothing
    assert out["late"] == "EPERM"  # a raw socket cannot be opened any more...
    res = out["results"]  # ...yet every probe went through the sockets opened before
    assert out["unwrapped"] == 24
    assert all(up and "SYN-ACK from 203.0.113.77:8080 through gre" in d and not loc for up, d, loc in res[:12]), res
    assert all(not up and "RST from 203.0.113.77:8081" in d and not loc for up, d, loc in res[12:]), res
    assert out["waiting_left"] == 0


def test_without_shared_sockets_and_without_the_capability_a_probe_is_a_local_error():
    if os.geteuid() != 0:
        pytest.skip("needs root: drops CAP_NET_RAW in a child process to show the refusal")
    code = textwrap.dedent('''
        import asyncio, json
        from maglev.health.checks import CheckSpec, run_check
        from maglev.service import privileges as pv
        pv.drop_to(set())
        s = CheckSpec(type="tcp", address="198.18.7.11", port=80, tunnel="gre", vip="203.0.113.77",
                      source="198.18.7.2")
        r = asyncio.run(run_check(s))
        print(json.dumps([r.ok, r.detail, r.local]))
    ''')
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr[-3000:]
    up, detail, local = json.loads(r.stdout.strip().splitlines()[-1])
    assert not up and local and "CAP_NET_RAW" in detail and "at its start" in detail
