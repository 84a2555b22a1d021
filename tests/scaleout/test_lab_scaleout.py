"""The scale-out lab (``maglev lab up --instances 3 --bgp``): three ``maglev run`` on AF_PACKET
behind BIRD 2 with ECMP.  Flows spread over every instance, every instance built the same
tables, drain-instance takes an instance out of the router's multipath route, and when one
instance is killed with SIGKILL its route goes and >= 99% of the long-lived connections
continue on the same backend (paper 3.4).  Root and BIRD needed; skipped otherwise."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from maglev.lab import failover as fo
from maglev.lab.topology import LabSpec, list_netns, why_no_lab
from maglev.testing import unique
from maglev.testing.wait import wait_until
from tests.run_helpers import ctl_status, maglev_ctl

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def scaleout_lab(tmp_path: Path):
    if reason := why_no_lab():
        pytest.skip(reason)
    from maglev.lab.scaleout import ScaleoutLab, why_no_bird

    if reason := why_no_bird():
        pytest.skip(reason)
    state_dir = tmp_path / "lab"
    spec = LabSpec(prefix=unique.short("mgt-so"), state_dir=state_dir, encap="gre", backends=3)
    spec.extra["instances"] = 3
    lab = ScaleoutLab(state_dir)
    try:
        lab.up(spec, wait_s=90)
        yield lab
    finally:
        lab.down()


def _fragment_owner(st: dict) -> str:
    """The instance owning the client's UDP fragments to the VIP (docs/datapath.md,
    "Fragments across instances"), computed from an instance config with the reference
    SipHash, independently of the data path."""
    from maglev import config as cfg
    from maglev.hashing.reference import siphash13

    conf = cfg.load(st["instances"][0]["config"])
    k0, k1 = conf.flow_hash_key
    key = (ipaddress.ip_address(st["client"]["ipv4"]).packed + bytes(12)
           + ipaddress.ip_address(st["vips"]["ipv4"]).packed + bytes(12) + bytes([0, 0, 0, 0, 17, 4, 0, 0]))
    members = sorted(conf.instance.pool, key=lambda a: ipaddress.ip_address(a).packed)
    addr = members[siphash13(k0, k1, key) % len(members)]
    return next(i["name"] for i in st["instances"] if i["ipv4"] == addr)


def test_three_instances_spread_agree_drain_and_fail_over(scaleout_lab):
    lab = scaleout_lab
    st = lab.state
    insts = st["instances"]
    assert lab.vip_nexthops() == ["198.18.2.2", "198.18.2.3", "198.18.2.4"]
    # IPv6 VIP over MP-BGP on the same sessions.  The lab waits for the IPv4 route only;
    # BIRD exports the IPv6 one to the kernel on its own (a moment later on a busy machine).
    wait_until(lambda: len(lab.vip_nexthops("2001:db8:f::10")) == 3, 20, "three next hops for the IPv6 VIP")

    # Every instance: healthy, announcing both VIPs, and the same table fingerprints.
    prints = {}
    for inst in insts:
        s = wait_until(lambda c=inst["control"]: (x := ctl_status(c))["controller"]["announced"] and x, 20,
                       f"{inst['name']} announcing")  # fmt: skip
        assert s["controller"]["healthy"] and s["controller"]["peers"][0]["state"] == "Established"
        prints[inst["name"]] = {t["vip"]: t["fingerprint"] for t in s["tables"]}
    assert len(prints["lab1"]) == 4
    assert prints["lab1"] == prints["lab2"] == prints["lab3"], prints

    # Many client flows spread over every instance.
    sp = fo.spread(st, requests=300)
    assert sp["ok"] == 300, sp
    assert all(share >= 0.15 for share in sp["share"].values()), sp
    assert set(sp["backends"]) == {"be1", "be2", "be3"}

    # Fragmented UDP datagrams (4000 bytes over a 1500 MTU) arrive whole, once each.  The
    # router's multipath hash ignores ports for fragments (3-tuple), so it never splits a
    # datagram; but the instances have an [instance] pool, so the instance the router picks
    # sends every fragment to its owner, pool[3-tuple hash % 3], in marked GRE (unless it
    # is the owner): the owner's interface sees all 3 x 24 fragments either way.
    fr = fo.fragmented_udp(st, count=24, size=4000)
    assert fr["delivered_intact"] == 24 and fr["duplicated"] == 0 and fr["damaged_or_unknown"] == 0, fr
    owner = _fragment_owner(st)
    assert fr["per_instance_packets"][owner] >= 3 * 24, (owner, fr)

    # drain-instance: lab3 leaves the router's route while its session stays up; resume: back.
    r = maglev_ctl(insts[2]["control"], "drain-instance")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: lab.vip_nexthops() == ["198.18.2.2", "198.18.2.3"], 15, "lab3 out of the ECMP route")
    assert "mg3" in lab.birdc("show", "protocols").stdout and "Established" in lab.birdc(
        "show", "protocols", "mg3").stdout  # fmt: skip
    assert maglev_ctl(insts[2]["control"], "resume-instance").returncode == 0
    wait_until(lambda: len(lab.vip_nexthops()) == 3, 15, "lab3 back in the ECMP route")

    # Failover: kill lab2 with SIGKILL while 200 long-lived connections are open.
    f = fo.failover(st, connections=200, victim="lab2")
    print(f"\nfailover figure: {json.dumps(f)}")
    assert f["nexthops_after"] == ["198.18.2.2", "198.18.2.4"], f
    assert f["route_withdrawn_s"] < 10, f
    assert f["victim_connections"] >= 20, f  # ECMP had put a fair share of them on lab2
    assert f["continued_fraction"] >= 0.99, f
    assert f["victim_connections_continued"] >= 0.99 * f["victim_connections"], f

    # down removes every namespace and process, BIRD included.
    pids = [p["pid"] for p in st["processes"]]
    names = list(st["namespaces"])
    lab.down()
    assert not set(names) & set(list_netns())
    import psutil

    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
