"""Hostile checks against real routers: the session must not flap (2026-12-07, session 5).

Each scenario runs BIRD 2 or GoBGP in a router namespace and ``python -m maglev.bgp`` in
a speaker namespace (tests/bgp/conftest.py), does one unfriendly thing, and counts the
session resets on both sides: the speaker's ``established`` counter (sessions that
reached Established), its NOTIFICATIONs, and the router's view (BIRD's protocol state and
the time it entered it, which changes on every reset; GoBGP's neighbor state and its
``established`` count). The number asserted is the one the design promises: zero for
what must not touch a session, exactly one for a real restart.  Short timers keep each
test to a few seconds; every wait is bounded and the fixture removes namespaces and
processes also on failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.bgp.conftest import ROUTER_V4, SPEAKER_V4

pytestmark = [pytest.mark.root, pytest.mark.slow]

VIP4 = "203.0.113.10"


def _peer(sp) -> dict:
    return sp.state()["peers"][0]


def _up(lab, sp, timeout: float = 20) -> None:
    """Both sides Established and the VIP in the router's kernel table."""
    sp.wait_established(timeout)
    lab.wait_until(lambda: "Established" in lab.bird_state(), timeout, "BIRD Established")
    lab.wait_until(lambda: VIP4 in lab.kernel_routes(), timeout, "VIP in the router's kernel")


def _steady(lab, sp, seconds: float) -> None:
    """Watch for ``seconds``: neither BIRD nor the speaker may count a new session, and
    both stay Established."""
    bird, est, refused = lab.bird_sessions(), _peer(sp)["established"], lab.bird_notifications_in()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert lab.bird_sessions() == bird and "Established" in lab.bird_state(), lab.bird_state()
        assert lab.bird_notifications_in() == refused
        time.sleep(0.2)
    p = _peer(sp)
    assert p["established"] == est and p["state"] == "Established", p


# ---------------------------------------------------------------------------- the router


def test_bird_protocol_restart_is_exactly_one_reset(bird_lab):
    """`birdc restart maglev`: BIRD sends CEASE and dials again: one new session, no more."""
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    _up(lab, sp)
    assert lab.birdc("restart", "maglev").returncode == 0
    lab.wait_until(lambda: _peer(sp)["established"] == 2, 10, "session re-established")
    _up(lab, sp)
    _steady(lab, sp, 3.0)
    p = _peer(sp)
    assert p["established"] == 2 and p["notifications_in"] == 1 and p["notifications_out"] == 0
    assert lab.bird_sessions() == 2


def test_bird_killed_and_started_again_is_exactly_one_reset(bird_lab):
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    _up(lab, sp)
    lab.kill_bird()
    sp.wait_for(lambda e: e.get("event") == "bgp.state" and e.get("old") == "Established", 10, "session down")
    lab.start_bird()
    lab.wait_until(lambda: _peer(sp)["established"] == 2, 15, "session re-established")
    _up(lab, sp)
    _steady(lab, sp, 3.0)
    assert _peer(sp)["established"] == 2 and lab.bird_sessions() == 2


@pytest.mark.parametrize("graceful_restart", [False, True], ids=["plain", "graceful-restart"])
def test_router_that_lost_its_tcp_state_is_accepted_at_once(bird_lab, graceful_restart):
    """The stale session: the router loses its TCP state without us hearing about it (its
    process dies while the link is down, its sockets are destroyed, the link comes back:
    a power cut, a reboot).  The new BIRD dials while our old session still looks
    Established.  Before: refused with CEASE "collision" until our keepalive or hold timer
    found the old connection dead (hold 30 s: up to 10 s of refusals).  Now the new
    connection makes us probe the old one at once (a KEEPALIVE, answered by a RST from a
    peer without the connection) and, with graceful restart, RFC 4724 4.2 lets the new
    connection replace the old one outright."""
    lab = bird_lab
    lab.start_bird(hold_time=30, graceful_restart=graceful_restart)
    sp = lab.start_speaker(announce=(f"{VIP4}/32",), hold_time=30, graceful_restart_time=30 if graceful_restart else 0)
    _up(lab, sp)
    lab.router.exec("ip", "link", "set", "r0", "down")
    lab.kill_bird()
    lab.router.exec("ss", "-K", "state", "all", "( sport = :179 or dport = :179 )", check=False)  # the RST is lost: link down
    # Stale, not noticed -- judged while the link is still down: once it is up, our next
    # KEEPALIVE (hold/9 = 3.3 s apart) may meet the router's RST before we look (seen at
    # load 12; the end of the test accepts that outcome too).
    assert _peer(sp)["state"] == "Established" and _peer(sp)["established"] == 1
    lab.router.exec("ip", "link", "set", "r0", "up")
    lab.wait_until(lambda: "UP" in lab.router.exec("ip", "-br", "link", "show", "r0").stdout, 5, "link up")
    t0 = time.monotonic()
    lab.start_bird(hold_time=30, graceful_restart=graceful_restart)
    lab.wait_until(lambda: _peer(sp)["established"] == 2 and _peer(sp)["state"] == "Established", 8, "new session")
    took = time.monotonic() - t0
    _up(lab, sp)
    print(f"\nrouter lost its TCP state ({'GR' if graceful_restart else 'no GR'}): new session {took:.2f} s after BIRD started (keepalive 10 s)")
    assert took < 4.0
    _steady(lab, sp, 2.0)
    assert _peer(sp)["established"] == 2
    # One new session on BIRD's side too -- with one exception that is no flap.  BIRD
    # restarts a graceful-restart session whenever a new TCP connection from the peer
    # arrives while it is Established (bgp_incoming_connection: "Neighbor graceful restart
    # detected"), keeping the routes.  When BIRD's own connection and our dial cross
    # (ours refused until BIRD listens, retried every second), BIRD may accept ours from
    # its backlog after it went Established on its own: seen once in CI at load, BIRD
    # counted 3 sessions to our 2 and no NOTIFICATION.  Then the VIP must have stayed.
    gr_restarts = lab.bird_gr_restarts_by_a_new_connection()
    assert lab.bird_sessions() == 2 + gr_restarts and gr_restarts <= (1 if graceful_restart else 0), (
        lab.bird_sessions(), gr_restarts)
    assert VIP4 in lab.kernel_routes()
    # Before 2026-12-07 BIRD got one CEASE "connection collision" per connect retry here
    # (9 in 8 s): a flapping session from the router's side.
    assert lab.bird_notifications_in() == 0
    # Replaced (the probe or GR) -- or, when our own KEEPALIVE (every 10 s) met the RST
    # before BIRD's new connection came (BIRD's start is slow under load: seen in CI), the
    # old session had already ended and the new connection was simply accepted.  Both are
    # right; what matters is asserted above: at once, and no NOTIFICATION to the router.
    assert _peer(sp)["stale_replaced"] <= 1 and _peer(sp)["collisions_refused"] == 0, _peer(sp)


def test_path_blackholed_shorter_than_the_hold_time_is_no_reset(bird_lab):
    """Every packet between router and speaker dropped for 2 s (blackhole routes on both
    sides, the links stay up): TCP retransmits, the 9 s hold time is not reached."""
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    _up(lab, sp)
    lab.router.exec("ip", "route", "add", "blackhole", f"{SPEAKER_V4}/32")
    lab.speaker_ns.exec("ip", "route", "add", "blackhole", f"{ROUTER_V4}/32")
    time.sleep(2.0)  # the scenario itself: a 2 s outage, well under the 9 s hold time
    lab.router.exec("ip", "route", "del", "blackhole", f"{SPEAKER_V4}/32")
    lab.speaker_ns.exec("ip", "route", "del", "blackhole", f"{ROUTER_V4}/32")
    _steady(lab, sp, 4.0)  # a keepalive (every 3 s) crossed the path in both directions
    assert lab.bird_sessions() == 1 and _peer(sp)["established"] == 1


def test_link_carrier_loss_is_exactly_one_reset(bird_lab):
    """The router's link goes down for 2 s: BIRD drops the session at once ("Neighbor
    lost"; its FIN cannot leave), and dials again when the link is back, while our side
    still holds the old session.  One reset, the new session within a few seconds (not
    after our hold time), and nothing after it."""
    lab = bird_lab
    lab.start_bird(hold_time=30)
    sp = lab.start_speaker(announce=(f"{VIP4}/32",), hold_time=30)
    _up(lab, sp)
    lab.router.exec("ip", "link", "set", "r0", "down")
    lab.wait_until(lambda: "Established" not in lab.bird_state(), 5, "BIRD dropped the session")
    time.sleep(2.0)  # the scenario: the link stays down 2 s
    lab.router.exec("ip", "link", "set", "r0", "up")
    t0 = time.monotonic()
    lab.wait_until(lambda: lab.bird_sessions() == 2 and "Established" in lab.bird_state(), 8, "BIRD's new session")
    took = time.monotonic() - t0
    print(f"\nlink down 2 s: BIRD's new session {took:.2f} s after the link came back (hold time 30 s)")
    _up(lab, sp)
    _steady(lab, sp, 2.0)
    assert lab.bird_sessions() == 2 and _peer(sp)["established"] == 2
    assert lab.bird_notifications_in() == 0  # no CEASE "collision" for BIRD's new connection


def test_route_refresh_storm_is_no_reset(bird_lab):
    """100 ROUTE-REFRESH from BIRD (`birdc reload in`) in a burst: each answered by
    re-sending the VIP, the session never reset."""
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    _up(lab, sp)
    before = _peer(sp)["updates_out"]
    for _ in range(100):
        assert lab.birdc("reload", "in", "maglev").returncode == 0
    lab.wait_until(lambda: _peer(sp)["updates_out"] > before, 5, "UPDATEs re-sent")
    _steady(lab, sp, 1.0)
    assert lab.bird_sessions() == 1 and f"{VIP4}/32" in lab.bird_routes()


# ---------------------------------------------------------------------------- the speaker


def test_speaker_killed_and_started_again_is_exactly_one_reset(bird_lab):
    """SIGKILL of the speaker while it announces 50 VIPs, then a new speaker process: BIRD
    sees one session end and one new session, which carries all 50 VIPs again."""
    lab = bird_lab
    lab.start_bird()
    vips = tuple(f"203.0.113.{100 + i}/32" for i in range(50))
    sp = lab.start_speaker(announce=(f"{VIP4}/32", *vips))
    _up(lab, sp)
    sp.kill()
    lab.wait_until(lambda: "Established" not in lab.bird_state(), 10, "BIRD noticed")
    sp2 = lab.start_speaker(announce=(f"{VIP4}/32", *vips))
    _up(lab, sp2)
    lab.wait_until(lambda: all(v in lab.bird_routes() for v in vips), 10, "all 50 VIPs back in BIRD")
    _steady(lab, sp2, 2.0)
    # the new speaker and BIRD may dial each other at the same moment (seen in CI s10b at load
    # 15: BIRD's connect and ours 1 ms apart): one connection then ends with a CEASE
    # "collision" before either is Established, which resets nothing
    assert lab.bird_sessions() == 2 and _peer(sp2)["established"] == 1
    assert lab.bird_notifications_in(but_collisions=True) == 0


def test_vip_churn_is_no_reset(bird_lab):
    """500 announce/withdraw commands for 20 VIPs in a burst: UPDATEs only, and the
    router ends with exactly the VIPs that were last announced."""
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    _up(lab, sp)
    vips = [f"203.0.113.{100 + i}/32" for i in range(20)]
    for n in range(500):
        sp.command(f"{'announce' if (n // 20) % 2 == 0 else 'withdraw'} {vips[n % 20]}")
    # 500 = 25 rounds of 20: rounds 0, 2, ... 24 announce, so the last round announced all.
    lab.wait_until(lambda: all(v in lab.bird_routes() for v in vips), 10, "all 20 VIPs in BIRD")
    _steady(lab, sp, 1.0)
    assert lab.bird_sessions() == 1 and _peer(sp)["established"] == 1


def test_sighup_to_the_speaker_is_no_reset(bird_lab):
    """SIGHUP (a reload sent to every process of the service, `systemctl kill -s HUP`)
    must not kill the speaker: its default action would, and the routers would withdraw."""
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    _up(lab, sp)
    for _ in range(3):
        os.kill(sp.proc.pid, signal.SIGHUP)
    _steady(lab, sp, 1.5)
    assert sp.proc.poll() is None and lab.bird_sessions() == 1


def test_short_hold_time_under_cpu_load_is_no_reset(bird_lab):
    """Hold time 3 s (KEEPALIVE every second) on both sides while two busy processes per
    core compete with the speaker for 6 s: no KEEPALIVE is late enough to reset the session."""
    lab = bird_lab
    lab.start_bird(hold_time=3)
    sp = lab.start_speaker(announce=(f"{VIP4}/32",), hold_time=3)
    _up(lab, sp)
    assert _peer(sp)["hold_time"] == 3
    hogs = [
        subprocess.Popen([sys.executable, "-c", "import time\nend = time.monotonic() + 7\nwhile time.monotonic() < end: pass"])
        for _ in range(2 * (os.cpu_count() or 1))
    ]
    try:
        _steady(lab, sp, 6.0)
    finally:
        for h in hogs:
            h.kill()
            h.wait(timeout=5)
    assert _peer(sp)["established"] == 1


def test_hold_time_zero_is_no_reset(bird_lab):
    """Hold time 0 on both sides (RFC 4271: no KEEPALIVEs, no hold timer): the session
    stays, and a VIP change still flows."""
    lab = bird_lab
    lab.start_bird(hold_time=0)
    sp = lab.start_speaker(announce=(f"{VIP4}/32",), hold_time=0)
    _up(lab, sp)
    assert _peer(sp)["hold_time"] == 0
    _steady(lab, sp, 3.0)
    sp.command("withdraw 203.0.113.10/32")
    lab.wait_until(lambda: VIP4 not in lab.kernel_routes(), 10, "VIP withdrawn")
    assert lab.bird_sessions() == 1


# ---------------------------------------------------------------------------- GoBGP


def test_gobgp_soft_reset_storm_is_no_reset(gobgp_lab):
    """GoBGP: 30 `neighbor softresetin` (ROUTE-REFRESH) in a burst are no reset.  (Its hard
    `neighbor reset` is not tested here: GoBGP then keeps the peer Idle for its own
    idle-hold time, refusing our connections, which says nothing about our side.)"""
    lab = gobgp_lab
    lab.start_gobgp()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    sp.wait_established()
    lab.wait_until(lambda: lab.gobgp_neighbor_state(SPEAKER_V4) == "established", 15, "GoBGP established")
    lab.wait_until(lambda: f"{VIP4}/32" in lab.gobgp_rib(), 10, "VIP in GoBGP")
    for _ in range(30):
        r = lab.gobgp("neighbor", SPEAKER_V4, "softresetin")
        if r.returncode and "deadline exceeded" in r.stdout:  # the gobgp CLI's own gRPC timeout,
            r = lab.gobgp("neighbor", SPEAKER_V4, "softresetin")  # its daemon slow under load (CI)
        assert r.returncode == 0, r
    time.sleep(1.0)  # let a reset the storm caused show up before counting
    p = _peer(sp)
    assert p["established"] == 1 and p["notifications_in"] == 0 and p["state"] == "Established"
    # GoBGP refreshes its RIB from our re-sent UPDATEs after each ROUTE-REFRESH: at load 17
    # in CI its RIB was read empty 1 s after the storm (the session never reset)
    lab.wait_until(lambda: f"{VIP4}/32" in lab.gobgp_rib(), 15, "VIP in GoBGP after the storm")
    assert lab.gobgp_sessions() == 1 and _peer(sp)["established"] == 1


def test_gobgp_killed_and_started_again_is_exactly_one_reset(gobgp_lab):
    lab = gobgp_lab
    lab.start_gobgp()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    sp.wait_established()
    lab.wait_until(lambda: f"{VIP4}/32" in lab.gobgp_rib(), 15, "VIP in GoBGP")
    lab.gobgp_proc.kill()
    lab.gobgp_proc.wait(timeout=10)
    sp.wait_for(lambda e: e.get("event") == "bgp.state" and e.get("old") == "Established", 10, "session down")
    lab.start_gobgp()
    lab.wait_until(lambda: f"{VIP4}/32" in lab.gobgp_rib(), 15, "VIP back in GoBGP")
    time.sleep(2.0)  # a second reset would show within a hold time's third
    assert _peer(sp)["established"] == 2 and _peer(sp)["state"] == "Established"
    assert lab.gobgp_sessions() == 1  # in the new gobgpd's log (it starts a new file)
