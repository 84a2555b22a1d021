"""Hostile peers and races, session 10 (2026-12-08): what test_hostile8.py did not cover.

- Adj-RIB-Out must never forget a route the peer holds: a ROUTE-REFRESH or a next-hop
  change asks for everything to be sent again, and a VIP withdrawn before the re-send
  went out must still be withdrawn at the router (before: it stayed there for good).
- Prefixes whose trailing bits (past the prefix length, in the last octet) are set: RFC
  4271 4.3 calls them irrelevant; they reset the session (3/10, 3/1, 3/9) before.
- The NOTIFICATION must reach a peer that goes on sending (no RST before it), and a
  flood of refused connections must not hold a socket each while they linger.
- A hostile peer (reconnects, UPDATE floods, garbage) does not starve a good one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import struct

import pytest

from maglev.bgp import messages as m
from tests.bgp.test_session import Scripted, established, run, speaker_config, started, wait_state

VIP4 = "203.0.113.10/32"
GONE = "203.0.113.11/32"


class Rib:
    """The routes a scripted peer holds from the speaker, from the UPDATEs it read."""

    def __init__(self) -> None:
        self.routes: dict[m.Prefix, str] = {}  # prefix -> next hop

    def apply(self, u: m.Update) -> None:
        for p in u.withdrawn_all():
            self.routes.pop(p, None)
        nh = u.get(m.A_NEXT_HOP)
        mp = u.get(m.A_MP_REACH)
        for p in u.announced():
            self.routes[p] = nh.address if p.version == 4 and nh else (mp.next_hops[0] if mp else "")

    async def read_until(self, peer: Scripted, pred, timeout: float = 10) -> None:
        """Read UPDATEs until ``pred(self.routes)`` holds (bounded)."""
        async with asyncio.timeout(timeout):
            while not pred(self.routes):
                msg = await peer.recv(timeout)
                if isinstance(msg, m.Update):
                    self.apply(msg)


async def _small_window_peer(port: int) -> Scripted:
    """A scripted peer whose socket has a 4 KiB receive buffer from the start (a small TCP
    window) and whose stream stops reading the socket at 8 KiB: what it does not read
    soon blocks the speaker's writer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        sock.bind(("127.0.0.1", 0))
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    r, w = await asyncio.open_connection(sock=sock, limit=4096)
    return Scripted(r, w)


def _prefix(s: str) -> m.Prefix:
    return ipaddress.ip_network(s)


def test_withdraw_right_after_a_next_hop_change_reaches_the_router():
    """``reconfigure`` with a new next hop re-sends every route; a VIP withdrawn in the same
    breath (before the writer ran) must still be withdrawn.  Before: the re-send began
    from an empty Adj-RIB-Out, so the withdrawn VIP was neither re-sent nor withdrawn and
    stayed at the router for good (checked: fails on the old code)."""
    async def go():
        cfg = speaker_config()
        async with established(cfg) as (sp, peer, _):
            rib = Rib()
            sp.announce(VIP4)
            sp.announce(GONE)
            await rib.read_until(peer, lambda r: len(r) == 2)
            await sp.reconfigure(dataclasses.replace(cfg, next_hop_ipv4="198.18.0.99"))
            sp.withdraw(GONE)  # no await in between: the writer has not run yet
            await rib.read_until(peer, lambda r: r.get(_prefix(VIP4)) == "198.18.0.99")
            sp.announce("203.0.113.12/32")  # a marker: everything before it was sent
            await rib.read_until(peer, lambda r: _prefix("203.0.113.12/32") in r)
            assert _prefix(GONE) not in rib.routes, rib.routes
            assert sp.peers_state()[0]["announced"] == ["203.0.113.10/32", "203.0.113.12/32"]
            await peer.close()

    run(go())


def test_withdraw_during_a_route_refresh_reaches_the_router():
    """The peer asks for a ROUTE-REFRESH while our writer is stuck sending a burst (the
    peer is not reading); a VIP that was at the router is withdrawn meanwhile.  When the
    peer reads again it must end without that VIP.  Before: the ROUTE-REFRESH dropped the
    family from Adj-RIB-Out, so the withdraw found nothing to withdraw and the VIP stayed
    at the router for good (checked: fails on the old code)."""
    async def go():
        cfg = speaker_config()
        async with started(cfg) as sp:
            peer = await _small_window_peer(cfg.listen_port)
            await peer.handshake(64512)
            await wait_state(sp, "Established")
            rib = Rib()
            sp.announce(VIP4)
            sp.announce(GONE)
            await rib.read_until(peer, lambda r: len(r) == 2)
            conn = sp.sessions[0].conn
            assert conn is not None
            # Small buffers on both sides: the burst below blocks the writer in drain().
            conn.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            burst = [f"10.{1 + i // 65536}.{(i // 256) % 256}.{i % 256}/32" for i in range(20_000)]
            for p in burst:
                sp.announce(p)
            s = sp.sessions[0]
            async with asyncio.timeout(10):  # the writer is blocked: bytes wait in its transport
                while conn.writer.transport.get_write_buffer_size() == 0:
                    await asyncio.sleep(0.01)
            before = s.counters["msgs_in"]
            await peer.send(m.RouteRefresh(m.AFI_IPV4, m.SAFI_UNICAST))
            async with asyncio.timeout(10):
                while s.counters["msgs_in"] == before:
                    await asyncio.sleep(0)
            sp.withdraw(GONE)
            sp.announce("203.0.113.12/32")  # a marker: everything before it was sent
            await rib.read_until(peer, lambda r: _prefix("203.0.113.12/32") in r, timeout=30)
            assert _prefix(GONE) not in rib.routes
            await wait_state(sp, "Established")
            assert sp.peers_state()[0]["established"] == 1
            await peer.close()

    run(go(), timeout=90)


# ----------------------------------------------------------------------------- trailing bits

H = b"\xff" * 16
ATTRS = bytes.fromhex("40010100" "400206020100" "00fc00" "400304c6120002")  # ORIGIN, AS_PATH [64512], NEXT_HOP


def _update(withdrawn: bytes = b"", attrs: bytes = b"", nlri: bytes = b"") -> bytes:
    body = struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri
    return H + struct.pack("!HB", 19 + len(body), m.UPDATE) + body


def _mp(code: int, value: bytes) -> bytes:
    return struct.pack("!BBB", 0x80, code, len(value)) + value


# 198.51.100.0/20 sent as c6 33 6f: the last octet's low 4 bits (trailing bits) set.
V4_DIRTY = b"\x14\xc6\x33\x6f"
# 2001:db8:7::/47 sent with its 48th bit set.
V6_DIRTY = b"\x2f\x20\x01\x0d\xb8\x00\x07"
MP_REACH6 = _mp(14, struct.pack("!HBB", 2, 1, 16) + bytes(16) + b"\x00" + V6_DIRTY)
MP_UNREACH6 = _mp(15, struct.pack("!HB", 2, 1) + V6_DIRTY)


def test_prefix_trailing_bits_are_irrelevant():
    """RFC 4271 4.3: a prefix is padded to an octet boundary and "the value of trailing
    bits is irrelevant".  They are cleared: 198.51.100.0/20 sent with the low bits of its
    third octet set is 198.51.96.0/20."""
    u = m.parse_message(_update(nlri=V4_DIRTY, attrs=ATTRS))
    assert u.nlri == (ipaddress.ip_network("198.51.96.0/20"),) and not u.errors
    u = m.parse_message(_update(withdrawn=V4_DIRTY))
    assert u.withdrawn == (ipaddress.ip_network("198.51.96.0/20"),)
    u = m.parse_message(_update(attrs=ATTRS[:13] + MP_REACH6))
    assert u.announced() == (ipaddress.ip_network("2001:db8:6::/47"),)
    u = m.parse_message(_update(attrs=MP_UNREACH6))
    assert u.withdrawn_all() == (ipaddress.ip_network("2001:db8:6::/47"),)


def test_prefixes_with_trailing_bits_from_a_router_keep_the_session():
    """The same UPDATEs from a live peer: the session stays, the routes are counted and
    withdrawn again.  Before: each reset the session with 3/10 (NLRI) or 3/1 (withdrawn)
    or 3/9 (MP_REACH/MP_UNREACH) -- a legal UPDATE made the session flap (checked: fails
    on the old code)."""
    async def go():
        async with established(speaker_config()) as (sp, peer, _):
            s = sp.sessions[0]
            await wait_state(sp, "Established")
            await peer.send(_update(nlri=V4_DIRTY, attrs=ATTRS))
            await peer.send(_update(attrs=ATTRS[:13] + MP_REACH6))
            async with asyncio.timeout(10):
                while len(s.received) < 2 and s.state.value == "Established":
                    await asyncio.sleep(0.01)
            assert [str(p) for p in s.received_prefixes()] == ["198.51.96.0/20", "2001:db8:6::/47"], s.last_error
            await peer.send(_update(withdrawn=V4_DIRTY))
            await peer.send(_update(attrs=MP_UNREACH6))
            async with asyncio.timeout(10):
                while s.received and s.state.value == "Established":
                    await asyncio.sleep(0.01)
            st = sp.peers_state()[0]
            assert st["state"] == "Established" and st["received"] == 0 and st["notifications_out"] == 0, st
            await peer.close()

    run(go())


# ----------------------------------------------------------------------------- the NOTIFICATION reaches the peer


async def _notification_or_reset(peer: Scripted, timeout: float = 5) -> str:
    """"N<code>/<subcode>" for the first NOTIFICATION read, "reset" when the connection
    broke first, "eof" for a close without one."""
    try:
        while True:
            msg = await peer.recv(timeout)
            if isinstance(msg, m.Notification):
                return f"N{msg.code}/{msg.subcode}"
    except asyncio.IncompleteReadError:
        return "eof"
    except ConnectionError:
        return "reset"


@pytest.mark.parametrize(("raw", "expect"), [
    (b"\x00" * 16 + struct.pack("!HB", 29, m.OPEN), "N1/1"),  # bad marker, then the OPEN's body follows
    (H + struct.pack("!HB", 4097, m.OPEN), "N1/2"),  # too long: the body follows
    (H + struct.pack("!HB", 19, 7), "N1/3"),  # unknown type, then more
])
def test_notification_reaches_a_peer_that_goes_on_sending(raw, expect):
    """A peer whose bad header is followed by more bytes (the rest of its message, arriving
    after we decided): the speaker sends the NOTIFICATION, then shuts its side down and
    reads what still comes until the peer closes (at most a second).  Before: it closed
    at once with those bytes unread, the kernel answered them with a RST, and the peer's
    stream reported the reset instead of the NOTIFICATION (checked: "reset" on the old
    code) -- a router's log then says "connection reset", not why."""
    async def go():
        cfg = speaker_config()
        async with started(cfg) as sp:
            peer = await Scripted.connect(cfg.listen_port)
            await peer.expect(m.Open)
            await peer.send(raw)
            async with asyncio.timeout(10):  # the speaker has decided and sent its NOTIFICATION
                while sp.sessions[0].counters["notifications_out"] == 0:
                    await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)  # and closed, on the old code
            try:
                for _ in range(5):
                    await peer.send(b"\x00" * 10)  # the rest of the message, late
                    await asyncio.sleep(0.02)
            except ConnectionError:
                pass
            assert await _notification_or_reset(peer) == expect
            await peer.close()

    run(go())



def test_a_flood_of_refused_connections_lingers_only_a_few():
    """200 connections from the peer's address while Established, none closing: each is
    refused with CEASE (one is examined as a possible restart), and at most MAX_LINGERING
    keep their socket for the linger; the rest close at once.  Without the bound each
    held a socket for LINGER_S: a flood's rate times a second of descriptors (checked:
    201 sockets with the bound lifted)."""
    import psutil

    async def go():
        cfg = speaker_config()
        async with established(cfg) as (sp, peer, _):
            await wait_state(sp, "Established")
            s = sp.sessions[0]
            flood = [await Scripted.connect(cfg.listen_port) for _ in range(200)]
            async with asyncio.timeout(20):
                while s.counters["collisions_refused"] < 199:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # the refusals' closes run (they are tasks)
            ours = [c for c in psutil.Process().net_connections("tcp")
                    if c.laddr and c.laddr.port == cfg.listen_port and c.status != psutil.CONN_LISTEN]
            # MAX_LINGERING (32) + the session + the one examined
            assert len(ours) <= 34, len(ours)
            assert s.state.value == "Established"
            for f in flood:
                await f.close()
            await peer.close()

    run(go())


# ----------------------------------------------------------------------------- other peers unaffected

FLOOD = b"".join(bytes(u) for u in m.build_announce(
    [ipaddress.ip_network(f"10.9.{i // 256}.{i % 256}/32") for i in range(700)],
    local_asn=64512, ebgp=True, asn4=True, next_hop="127.0.0.1"))


def test_a_hostile_peer_does_not_starve_a_good_one(tmp_path):
    """``python -m maglev.bgp`` (its own process, as in production) with two peers, hold
    time 9 s, under CPU load: 127.0.0.1 reconnects again and again, sends 1-30 bursts of
    700 prefixes (5 UPDATEs each) per connection, then garbage (NOTIFICATION 1/1), then a
    RST; 127.0.0.2 is a good router.  The good session never
    resets and never waits longer than its hold time for a message from us (a router
    would reset it).  Session 10: worst gap 1.1-1.3 s at load 17 with hold 3 s, no late
    KEEPALIVE.  Hold 9 s since CI s10g: the good peer is this test process, and with two
    suites and the hogs at once it sent nothing for 3 s (the speaker's kernel buffer was
    empty when it ended the session), so a 3 s hold judged the test, not the speaker;
    passes on the old code too (coverage: other peers' sessions unaffected)."""
    import json
    import queue
    import random
    import signal
    import subprocess
    import sys
    import threading
    import time

    from maglev.testing.ports import free_port
    from tests.bgp.conftest import CpuLoad
    from tests.bgp.test_hostile8 import SAMPLES

    port = free_port()
    conf = tmp_path / "maglev.toml"
    peers = "".join(f'[[bgp.peer]]\naddress = "{a}"\nasn = 64512\nhold_time = 9\npassive = true\n'
                    for a in ("127.0.0.1", "127.0.0.2"))
    conf.write_text(f'[bgp]\nlocal_asn = 64513\nrouter_id = "198.18.0.10"\nlisten_port = {port}\n'
                    f'listen_address = "127.0.0.1"\nconnect_retry_time = 1\n{peers}')
    err = open(tmp_path / "speaker.log", "w")
    # -X faulthandler: a speaker that does not stop is made to print every thread's stack
    # (SIGABRT) into speaker.log before it is killed (CI s10d: no answer, no exit on SIGTERM)
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "maglev.bgp", "--config", str(conf),
                             "--announce", VIP4],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)

    # The speaker prints an event line per session change, and the hostile peer makes
    # hundreds: read them all the time, or the pipe fills and the speaker blocks on its
    # stdout (CI s10d: its loop stopped, then SIGTERM could not end it within 20 s).
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for raw in proc.stdout:
            lines.put(json.loads(raw))

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()

    def state() -> list[dict]:
        proc.stdin.write("state\n")
        proc.stdin.flush()
        while True:
            line = lines.get(timeout=30)
            if line.get("reply") == "state":
                return line["peers"]

    async def go() -> tuple[float, int, list[dict]]:
        good = await Scripted.connect(port, "127.0.0.2")
        await good.handshake(64512, hold=9)
        stop = asyncio.Event()
        bursts = 0

        async def hostile() -> None:
            nonlocal bursts
            rnd = random.Random(10)
            while not stop.is_set():
                p = None
                try:
                    p = await Scripted.connect(port, "127.0.0.1")
                    await p.expect(m.Open, 3)
                    await p.send(SAMPLES["open"][0] + bytes(m.Keepalive()))
                    for _ in range(rnd.randint(1, 30)):
                        p.writer.write(FLOOD)
                        bursts += 1
                    p.writer.write(b"\x00" * 40)
                    await p.writer.drain()
                except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, AssertionError):
                    await asyncio.sleep(0.05)
                finally:
                    if p is not None:
                        p.writer.transport.abort()

        async def keepalives() -> None:
            while not stop.is_set():
                await good.send(m.Keepalive())
                await asyncio.sleep(1)

        tasks = [asyncio.ensure_future(hostile()), asyncio.ensure_future(keepalives())]
        worst, last, end = 0.0, time.monotonic(), time.monotonic() + 12
        try:
            while time.monotonic() < end:
                msg = await good.recv(12)  # our KEEPALIVEs come every 3 s (hold 9)
                assert not isinstance(msg, m.Notification), msg
                worst, last = max(worst, time.monotonic() - last), time.monotonic()
            stop.set()
            await asyncio.wait(tasks, timeout=10)
            peers = await asyncio.to_thread(state)  # while the good peer is still connected
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks)
            await good.close()
        return worst, bursts, peers

    try:
        assert lines.get(timeout=30)["event"] == "ready"
        with CpuLoad(14):
            worst, bursts, (hostile_, good_) = run(go(), 60)
        print(f"\nworst gap to the good peer {worst:.2f} s; {bursts} bursts; good {good_['keepalives_late']} late KEEPALIVEs")
        assert good_["state"] == "Established" and good_["established"] == 1, good_
        assert worst < 9.0 and bursts > 0 and hostile_["established"] >= 1
        assert "Traceback" not in (tmp_path / "speaker.log").read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler: the stacks, into speaker.log
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()  # never leaked into the next test
                proc.wait(timeout=20)
            err.flush()
            raise AssertionError("the speaker did not stop within 20 s of SIGTERM; its log and stacks:\n"
                                 + (tmp_path / "speaker.log").read_text(errors="replace")[-6000:]) from None
        finally:
            err.close()
            proc.stdin.close()
            pumper.join(10)  # the speaker is gone: its stdout ends
            proc.stdout.close()
