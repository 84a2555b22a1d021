"""Health checks of nested pools against real servers on 127.0.0.0/8: each pool's own check
(TCP, HTTP, DNS), probes deduplicated by (address, check) across pools and VIPs, and the
prober driving the config manager: a dead backend's share moves to its siblings, the
backup pool takes over below its threshold, ``backends`` shows the tree."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from maglev.config import Config
from maglev.health.checks import CheckSpec, dns_query, run_check
from maglev.health.prober import Prober
from maglev.testing.acceptor import Acceptor

from .test_prober import prober_and_manager, run_for


class Dns:
    """A UDP DNS server answering every query with ``rcode`` (0 = NOERROR, one A record);
    ``garbage`` answers with bytes that are not a reply to the query."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.rcode, self.garbage, self.queries = 0, False, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                q, addr = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries.append(q)
            if self.garbage:
                self.sock.sendto(b"\x00\x01hello", addr)
                continue
            answers = 0 if self.rcode else 1
            head = q[:2] + bytes([0x81, 0x80 | self.rcode]) + b"\x00\x01" + answers.to_bytes(2, "big") + b"\0\0\0\0"
            body = q[12:]
            if answers:  # pointer to the question's name, A IN, TTL 60, 192.0.2.1
                body += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([192, 0, 2, 1])
            self.sock.sendto(head + body, addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def dns():
    made: list[Dns] = []

    def make(**kw):
        made.append(Dns(**kw))
        return made[-1]

    try:
        yield make
    finally:
        for d in made:
            d.close()


def test_dns_query_wire_format():
    q = dns_query("www.example.org", 0x1234)
    assert q[:4] == b"\x12\x34\x01\x00" and q[4:6] == b"\x00\x01"
    assert q[12:] == b"\x03www\x07example\x03org\x00\x00\x01\x00\x01"
    assert dns_query(".", 1)[12:] == b"\x00\x00\x01\x00\x01"


def test_dns_check_up_rcode_garbage_and_silence(dns):
    d = dns()
    # 2 s: the server is a thread of this process, slow to answer at load (see pooled()).
    spec = CheckSpec("dns", "127.0.0.1", d.port, send="example.org", timeout_s=2.0)
    r = asyncio.run(run_check(spec))
    assert r.ok and r.detail == "DNS NOERROR, 1 answers", r
    assert d.queries[-1][12:] == b"\x07example\x03org\x00\x00\x01\x00\x01"
    d.rcode = 2  # SERVFAIL
    r = asyncio.run(run_check(spec))
    assert not r.ok and r.detail == "DNS RCODE 2"
    d.garbage = True
    r = asyncio.run(run_check(spec))
    assert not r.ok and "not a DNS reply to our query" in r.detail
    d.close()  # nothing listens: refused (ICMP) or a timeout, never up
    r = asyncio.run(run_check(spec))
    assert not r.ok and not r.local


def pooled(tcp_port: int, http_port: int, dns_port: int) -> Config:
    """VIP 1 -> web {a: tcp [127.0.0.1, 127.0.0.2], b: http [127.0.0.3]} with backup dr
    (dns [127.0.0.4]) below 60%; VIP 2 -> a as well (the same checks: deduplicated)."""
    # timeout 2 s, not 100 ms: the HTTP and DNS servers are threads of the test process,
    # and at load one late answer (rise/fall 1) flipped a healthy backend to down between
    # the wait and the assertions.  The backends meant to be down refuse at once.
    tcp = {"type": "tcp", "port": tcp_port, "interval_ms": 50, "timeout_ms": 2000, "rise": 1, "fall": 1}
    return Config.from_dict({
        "instance": {"source_ipv4": "198.18.0.1", "allow_loopback_backends": True},
        "vip": [{"address": "203.0.113.10", "port": 80, "table_size": 101, "pool": [{"name": "web"}]},
                {"address": "203.0.113.11", "port": 80, "table_size": 101, "pool": [{"name": "a"}]}],
        "pool": [
            {"name": "web", "pool": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}], "backup": "dr",
             "backup_below_percent": 60},
            {"name": "a", "health": tcp, "backend": [{"address": "127.0.0.1"}, {"address": "127.0.0.2"}]},
            {"name": "b", "health": {**tcp, "type": "http", "port": http_port, "path": "/"},
             "backend": [{"address": "127.0.0.3"}]},
            {"name": "dr", "health": {**tcp, "type": "dns", "port": dns_port, "query": "example.org"},
             "backend": [{"address": "127.0.0.4"}]},
        ],
    })


def test_probes_are_deduplicated_by_address_and_check_across_pools_and_vips():
    c = pooled(1, 2, 3)
    p = Prober(lambda r: None, spread=False)
    p.set_config(c)
    # 4 addresses, 1 check each: 127.0.0.1/2 serve both VIPs through pool a, probed once.
    assert len(p.checks) == 4
    by_addr = {spec.address: chk for spec, chk in p.checks.items()}
    v1, v2 = c.vips[0].key, c.vips[1].key
    assert by_addr["127.0.0.1"].targets == {(v1, "127.0.0.1"), (v2, "127.0.0.1")}
    assert {s.type for s in p.checks} == {"tcp", "http", "dns"}
    # the same address in another pool with another check is another probe
    d = c.to_dict()
    d["pool"][2]["backend"].append({"address": "127.0.0.1", "name": "one-by-http"})
    p.set_config(Config.from_dict(d))
    assert sorted(s.type for s in p.checks if s.address == "127.0.0.1") == ["http", "tcp"]


def test_prober_drives_pool_weights_and_the_backup(servers, dns):
    tcp = servers.tcp()  # 127.0.0.1 listens; 127.0.0.2 not yet
    http = servers.http()  # on 127.0.0.1 only: 127.0.0.3 is down at first
    d = dns(address="127.0.0.4")
    config = pooled(tcp.port, http.port, d.port)
    vip = config.vips[0].key
    with prober_and_manager(config) as (p, mgr, _pub, rows):

        def health():
            return {k: r["health"] for k, r in rows().items()}

        want = {"127.0.0.1": "up", "127.0.0.2": "down", "127.0.0.3": "down", "127.0.0.4": "up"}
        asyncio.run(run_for(p, 20, until=lambda: health() == want))
        assert health() == want
        # web is 25% healthy (< 60%): dr takes 75%, 127.0.0.1 the rest.
        r = rows()
        assert r["127.0.0.4"]["effective_weight"] == 3 and r["127.0.0.1"]["effective_weight"] == 1
        assert r["127.0.0.4"]["pool"] == "web/dr" and r["127.0.0.4"]["backup"]
        assert r["127.0.0.4"]["entries"] > 2 * r["127.0.0.1"]["entries"] > 0
        tree = mgr.backends(vip)["tree"][0]
        assert tree["pool"] == "web" and tree["healthy_share"] == 0.25 and tree["backup_active"]
        assert [m["pool"] for m in tree["members"]] == ["a", "b", "dr"]
        assert tree["members"][0]["members"][1]["health"] == "down"
        # VIP 2 sees pool a alone: its live backend gets everything, no backup there.
        r2 = {x["backend"]: x for x in mgr.backends(config.vips[1].key)["backends"]}
        assert r2["127.0.0.1"]["entries"] == 101 and r2["127.0.0.2"]["entries"] == 0

        # 127.0.0.2 and 127.0.0.3 come up: web is 100% healthy, the backup idles again.
        b = Acceptor("127.0.0.2", tcp.port)  # accepts: a full accept queue would look dead
        h3 = servers.http(port=0)
        try:
            d2 = config.to_dict()
            d2["pool"][2]["health"]["port"] = h3.port  # b's check now points at a live server...
            d2["pool"][2]["backend"] = [{"address": "127.0.0.1", "name": "b1"}]  # ...on 127.0.0.1
            new = Config.from_dict(d2)
            assert mgr.apply(new, "test")["changed"]
            p.set_config(new)
            want = {"127.0.0.1": "up", "127.0.0.2": "up", "b1": "up", "127.0.0.4": "up"}
            asyncio.run(run_for(p, 20, until=lambda: health() == want))
        finally:
            b.close()
        assert health() == want
        r = rows()
        assert r["127.0.0.4"]["effective_weight"] == 0 and r["127.0.0.4"]["entries"] == 0
        assert {k: x["effective_weight"] for k, x in r.items() if k != "127.0.0.4"} == \
            {"127.0.0.1": 1, "127.0.0.2": 1, "b1": 2}
        assert not mgr.backends(vip)["tree"][0]["backup_active"]
