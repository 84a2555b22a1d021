"""maglev's speaker against GoBGP (gobgpd + the gobgp CLI) in network namespaces.

GoBGP keeps routes in its own RIB (no kernel FIB without zebra), so the checks read
``gobgp global rib -j``.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

VIP4 = "203.0.113.20"
VIP6 = "2001:db8:100::20"


def _path(rib: dict, prefix: str) -> dict:
    paths = rib.get(prefix) or []
    return paths[0] if paths else {}


def _attr(path: dict, type_code: int) -> dict:
    return next((a for a in path.get("attrs", []) if a.get("type") == type_code), {})


def test_announce_and_withdraw(gobgp_lab):
    lab = gobgp_lab
    lab.start_gobgp()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    sp.wait_established()
    rib = lab.wait_until(lambda: (lambda r: r if f"{VIP4}/32" in r else {})(lab.gobgp_rib()), 15, "VIP in GoBGP's RIB")
    path = _path(rib, f"{VIP4}/32")
    assert _attr(path, 1).get("value") == 0  # ORIGIN IGP
    assert _attr(path, 2)["as_paths"][0]["asns"] == [64513]
    assert _attr(path, 3).get("nexthop") == "198.18.0.2"
    assert lab.gobgp_neighbor_state("198.18.0.2") == "established"

    sp.command(f"withdraw {VIP4}/32")
    lab.wait_until(lambda: f"{VIP4}/32" not in lab.gobgp_rib(), 10, "VIP gone from GoBGP")
    assert lab.gobgp_neighbor_state("198.18.0.2") == "established"


def test_sigkill_of_the_speaker_removes_the_route(gobgp_lab):
    lab = gobgp_lab
    lab.start_gobgp()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    lab.wait_until(lambda: f"{VIP4}/32" in lab.gobgp_rib(), 20, "VIP in GoBGP's RIB")
    sp.kill()
    lab.wait_until(lambda: f"{VIP4}/32" not in lab.gobgp_rib(), 10, "VIP gone from GoBGP")
    assert lab.gobgp_neighbor_state("198.18.0.2") != "established"


def test_gobgp_restart_session_comes_back_and_vip_is_reannounced(gobgp_lab):
    lab = gobgp_lab
    lab.start_gobgp()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    lab.wait_until(lambda: f"{VIP4}/32" in lab.gobgp_rib(), 20, "VIP in GoBGP's RIB")
    lab.stop_gobgp()
    sp.wait_for(lambda e: e.get("event") == "bgp.state" and e.get("old") == "Established", 10, "session down")
    lab.start_gobgp()
    lab.wait_until(lambda: f"{VIP4}/32" in lab.gobgp_rib(), 20, "VIP re-announced to GoBGP")
    assert sp.state()["peers"][0]["established"] == 2


def test_ipv6_vip_over_ipv6_session(gobgp_lab):
    lab = gobgp_lab
    lab.start_gobgp(peer="2001:db8:18::2")
    sp = lab.start_speaker(peer="2001:db8:18::1", announce=(f"{VIP6}/128",))
    sp.wait_established()
    rib = lab.wait_until(lambda: (lambda r: r if f"{VIP6}/128" in r else {})(lab.gobgp_rib("ipv6")), 15, "IPv6 VIP in GoBGP")
    mp = _attr(_path(rib, f"{VIP6}/128"), 14)  # MP_REACH_NLRI
    assert mp.get("nexthop") == "2001:db8:18::2"
    sp.command(f"withdraw {VIP6}/128")
    lab.wait_until(lambda: f"{VIP6}/128" not in lab.gobgp_rib("ipv6"), 10, "IPv6 VIP gone from GoBGP")


def test_ipv6_vip_over_ipv4_session_and_four_octet_router_asn(gobgp_lab):
    lab = gobgp_lab
    lab.start_gobgp(asn=4200000002)
    sp = lab.start_speaker(peer_asn=4200000002, announce=(f"{VIP6}/128", f"{VIP4}/32"), next_hop_ipv6="2001:db8:18::2")
    sp.wait_established()
    lab.wait_until(lambda: f"{VIP6}/128" in lab.gobgp_rib("ipv6"), 15, "IPv6 VIP in GoBGP")
    lab.wait_until(lambda: f"{VIP4}/32" in lab.gobgp_rib(), 15, "IPv4 VIP in GoBGP")
    assert sp.state()["peers"][0]["asn"] == 4200000002


def test_graceful_restart_keeps_the_route_while_the_speaker_restarts(gobgp_lab):
    """RFC 4724 with GoBGP as the receiving speaker: SIGKILL of the speaker leaves the VIP
    in GoBGP's RIB (stale); the restarted speaker (Restarting bit, re-announcement,
    End-of-RIB) takes it over without it ever leaving."""
    import time

    lab = gobgp_lab
    lab.start_gobgp(graceful_restart=True)
    sp = lab.start_speaker(announce=(f"{VIP4}/32",), graceful_restart_time=30)
    lab.wait_until(lambda: f"{VIP4}/32" in lab.gobgp_rib(), 20, "VIP in GoBGP's RIB")
    assert sp.state()["peers"][0]["graceful_restart"]["peer_supports"]
    sp.kill()
    lab.wait_until(lambda: lab.gobgp_neighbor_state("198.18.0.2") != "established", 10, "GoBGP noticed the dead session")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3:
        assert f"{VIP4}/32" in lab.gobgp_rib(), "VIP withdrawn although GoBGP supports graceful restart"
        time.sleep(0.2)
    sp2 = lab.start_speaker(announce=(f"{VIP4}/32",), graceful_restart_time=30, restarting=True)
    sp2.wait_established()
    lab.wait_until(lambda: lab.gobgp_neighbor_state("198.18.0.2") == "established", 20, "session back")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2:
        assert f"{VIP4}/32" in lab.gobgp_rib()
        time.sleep(0.2)
    path = _path(lab.gobgp_rib(), f"{VIP4}/32")
    assert not path.get("stale", False), path  # refreshed by the new session
