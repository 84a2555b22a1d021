"""maglev's speaker against BIRD 2 in network namespaces (issue 7, interop).

Each test: a router namespace running BIRD (BGP + kernel protocols exporting into the
namespace's routing table) and a speaker namespace running ``python -m maglev.bgp`` as its
own process.  Routes are read back with ``birdc show route`` and ``ip route`` in the
router namespace.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

VIP4 = "203.0.113.10"
VIP6 = "2001:db8:100::10"


def test_announce_reaches_bird_and_kernel_then_withdraw_removes_it(bird_lab):
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    sp.wait_established()
    lab.wait_until(lambda: "Established" in lab.bird_state(), 10, "BIRD session Established")
    routes = lab.wait_text(lab.bird_routes, f"{VIP4}/32", 10, "VIP in BIRD")
    assert "AS64513i" in routes  # AS_PATH [64513], ORIGIN IGP
    assert "198.18.0.2" in routes  # next hop self
    kernel = lab.wait_text(lab.kernel_routes, VIP4, 10, "VIP in the kernel")
    assert f"{VIP4} via 198.18.0.2 dev r0" in kernel

    sp.command(f"withdraw {VIP4}/32")
    sp.wait_for(lambda e: e.get("event") == "bgp.route" and e.get("action") == "withdraw", 5, "withdraw event")
    lab.wait_until(lambda: f"{VIP4}/32" not in lab.bird_routes(), 10, "VIP gone from BIRD")
    lab.wait_until(lambda: VIP4 not in lab.kernel_routes(), 10, "VIP gone from the kernel")
    assert "Established" in lab.bird_state()  # a withdraw is not a session reset

    sp.command(f"announce {VIP4}/32")  # and it can come back on the same session
    lab.wait_until(lambda: VIP4 in lab.kernel_routes(), 10, "VIP back in the kernel")


def test_sigkill_of_the_speaker_removes_the_route(bird_lab):
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    lab.wait_until(lambda: VIP4 in lab.kernel_routes(), 20, "VIP in the kernel")
    sp.kill()  # no CEASE: the kernel closes the TCP connection for the dead process
    lab.wait_until(lambda: f"{VIP4}/32" not in lab.bird_routes(), 10, "VIP gone from BIRD")
    lab.wait_until(lambda: VIP4 not in lab.kernel_routes(), 10, "VIP gone from the kernel")
    assert "Established" not in lab.bird_state()


def test_bird_restart_session_comes_back_and_vip_is_reannounced(bird_lab):
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    lab.wait_until(lambda: VIP4 in lab.kernel_routes(), 20, "VIP in the kernel")
    lab.stop_bird()
    sp.wait_for(lambda e: e.get("event") == "bgp.state" and e.get("old") == "Established", 10, "session down")
    lab.start_bird()
    lab.wait_until(lambda: "Established" in lab.bird_state(), 20, "session back")
    lab.wait_until(lambda: f"{VIP4}/32" in lab.bird_routes(), 10, "VIP re-announced to BIRD")
    lab.wait_until(lambda: VIP4 in lab.kernel_routes(), 10, "VIP back in the kernel")
    peers = sp.state()["peers"]
    assert peers[0]["state"] == "Established" and peers[0]["established"] == 2


def test_ipv6_vip_over_mp_bgp(bird_lab):
    # IPv4 transport session carrying the IPv6 unicast family (RFC 4760); the IPv6 next hop
    # comes from bgp.next_hop_ipv6 because the session's own address is IPv4.
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP6}/128", f"{VIP4}/32"), next_hop_ipv6="2001:db8:18::2")
    sp.wait_established()
    routes = lab.wait_text(lambda: lab.bird_routes("ipv6"), f"{VIP6}/128", 15, "IPv6 VIP in BIRD")
    assert "2001:db8:18::2" in routes
    lab.wait_until(lambda: VIP6 in lab.kernel_routes("-6"), 10, "IPv6 VIP in the kernel")
    assert "via 2001:db8:18::2 dev r0" in lab.kernel_routes("-6")
    sp.command(f"withdraw {VIP6}/128")  # MP_UNREACH_NLRI
    lab.wait_until(lambda: f"{VIP6}/128" not in lab.bird_routes("ipv6"), 10, "IPv6 VIP gone from BIRD")
    lab.wait_until(lambda: VIP6 not in lab.kernel_routes("-6"), 10, "IPv6 VIP gone from the kernel")
    assert f"{VIP4}/32" in lab.bird_routes()  # the IPv4 VIP is untouched


def test_four_octet_asn(bird_lab):
    lab = bird_lab
    lab.start_bird(peer_asn=4200000001)
    sp = lab.start_speaker(asn=4200000001, announce=(f"{VIP4}/32",))
    sp.wait_established()
    routes = lab.wait_text(lab.bird_routes, f"{VIP4}/32", 15, "VIP in BIRD")
    assert "AS4200000001i" in routes
    assert "4200000001" in lab.birdc("show", "protocols", "all", "maglev").stdout


def test_ipv6_transport_session(bird_lab):
    # The whole session over IPv6: next hop self is the session's local IPv6 address.
    lab = bird_lab
    lab.start_bird(peer="2001:db8:18::2")
    sp = lab.start_speaker(peer="2001:db8:18::1", announce=(f"{VIP6}/128",))
    sp.wait_established()
    lab.wait_until(lambda: VIP6 in lab.kernel_routes("-6"), 15, "IPv6 VIP in the kernel")
    assert "via 2001:db8:18::2 dev r0" in lab.kernel_routes("-6")


def test_passive_speaker_is_dialled_by_bird(bird_lab):
    lab = bird_lab
    sp = lab.start_speaker(passive=True, announce=(f"{VIP4}/32",))
    lab.start_bird()  # BIRD connects to us; we never dial
    sp.wait_established()
    lab.wait_until(lambda: VIP4 in lab.kernel_routes(), 15, "VIP in the kernel")
    peers = sp.state()["peers"]
    assert peers[0]["state"] == "Established" and "connect to" not in peers[0]["last_error"]


def test_bird_reload_in_uses_route_refresh(bird_lab):
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    lab.wait_until(lambda: VIP4 in lab.kernel_routes(), 20, "VIP in the kernel")
    before = sp.state()["peers"][0]["updates_out"]
    assert lab.birdc("reload", "in", "maglev").returncode == 0  # BIRD sends ROUTE-REFRESH
    lab.wait_until(lambda: sp.state()["peers"][0]["updates_out"] > before, 10, "UPDATE re-sent on ROUTE-REFRESH")
    assert f"{VIP4}/32" in lab.bird_routes() and "Established" in lab.bird_state()


def _watch_kernel(lab, vip: str, seconds: float) -> list[float]:
    """Poll the router's kernel table for ``seconds``; return the times (s from now) at
    which ``vip`` was missing."""
    import time

    missing = []
    t0 = time.monotonic()
    while (t := time.monotonic() - t0) < seconds:
        if vip not in lab.kernel_routes():
            missing.append(round(t, 2))
        time.sleep(0.1)
    return missing


def test_graceful_restart_keeps_the_route_while_the_speaker_restarts(bird_lab):
    """RFC 4724 with BIRD as the receiving speaker: the speaker dies (SIGKILL, no CEASE),
    BIRD keeps the VIP (stale) and the kernel keeps forwarding; the restarted speaker
    sends OPEN with the Restarting bit, re-announces, sends End-of-RIB, and the route
    never left the kernel."""
    lab = bird_lab
    lab.start_bird(graceful_restart=True)
    sp = lab.start_speaker(announce=(f"{VIP4}/32",), graceful_restart_time=30)
    lab.wait_until(lambda: VIP4 in lab.kernel_routes(), 20, "VIP in the kernel")
    state = sp.state()["peers"][0]
    assert state["graceful_restart"]["peer_supports"] and state["graceful_restart"]["restart_time"] == 30
    sp.kill()
    lab.wait_until(lambda: "Established" not in lab.bird_state(), 10, "BIRD noticed the dead session")
    assert _watch_kernel(lab, VIP4, 3.0) == []  # kept for the restart time
    assert f"{VIP4}/32" in lab.bird_routes()
    sp2 = lab.start_speaker(announce=(f"{VIP4}/32",), graceful_restart_time=30, restarting=True)
    sp2.wait_established()
    lab.wait_until(lambda: "Established" in lab.bird_state(), 20, "session back")
    assert _watch_kernel(lab, VIP4, 2.0) == []
    st2 = sp2.state()["peers"][0]
    assert st2["graceful_restart"]["restarting"] is False  # only the first OPEN after the restart says so
    # And an orderly stop still withdraws at once (CEASE ends graceful restart).
    sp2.command("quit")
    lab.wait_until(lambda: VIP4 not in lab.kernel_routes(), 10, "VIP gone after CEASE")


def test_graceful_restart_route_goes_after_the_restart_time(bird_lab):
    lab = bird_lab
    lab.start_bird(graceful_restart=True)
    sp = lab.start_speaker(announce=(f"{VIP4}/32",), graceful_restart_time=4)
    lab.wait_until(lambda: VIP4 in lab.kernel_routes(), 20, "VIP in the kernel")
    sp.kill()
    lab.wait_until(lambda: "Established" not in lab.bird_state(), 10, "BIRD noticed the dead session")
    assert VIP4 in lab.kernel_routes()  # still there: within the 4 s restart time
    lab.wait_until(lambda: VIP4 not in lab.kernel_routes(), 15, "VIP gone after the restart time")


def test_bfd_lets_bird_drop_a_hung_speaker_in_under_a_second(bird_lab):
    """BFD (RFC 5880/5881) beside the BGP session, 100 ms x 3.  SIGSTOP of the speaker is
    an instance that stopped answering without closing its TCP connections: without BFD
    BIRD would notice after the 9 s hold time; with it, after ~0.3 s."""
    import os
    import signal
    import time

    lab = bird_lab
    lab.start_bird(bfd=True)
    sp = lab.start_speaker(announce=(f"{VIP4}/32",), bfd=True)
    lab.wait_until(lambda: VIP4 in lab.kernel_routes(), 20, "VIP in the kernel")
    lab.wait_text(lambda: lab.birdc("show", "bfd", "sessions").stdout, "Up", 15, "BFD Up in BIRD")
    lab.wait_until(lambda: sp.state()["peers"][0]["bfd"]["state"] == "UP", 10, "BFD Up in the speaker")
    os.kill(sp.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        lab.wait_until(lambda: VIP4 not in lab.kernel_routes(), 5, "VIP gone from the kernel")
        took = time.monotonic() - t0
        print(f"\nhung speaker: VIP gone from the router's kernel {took * 1000:.0f} ms after SIGSTOP (BFD 100 ms x 3; hold time 9 s)")
        assert took < 2.0
    finally:
        os.kill(sp.proc.pid, signal.SIGCONT)
