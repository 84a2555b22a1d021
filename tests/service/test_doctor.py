"""`maglev doctor`: each check's failing and passing case, on a fake /proc + /sys tree, on
real sockets on 127.0.0.1, under a reduced capability set, and inside a namespace."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from maglev.config import Backend, Config, HealthCheck, Vip
from maglev.service import doctor as d
from maglev.testing.netns import NetnsSet, why_no_netns

CAP_NET_RAW = 1 << 13
CAP_IPC_LOCK = 1 << 14
CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]


def fake_host(tmp: Path, cap_eff: int = 0, ifaces: dict[str, dict[str, str]] | None = None,
              rp_all: str = "0", meminfo: str = "MemAvailable: 8388608 kB\nHugePages_Total: 0\n",
              thp: str = "always [madvise] never\n") -> d.Host:
    proc, sysfs = tmp / "proc", tmp / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "status").write_text(f"Name:\tx\nCapEff:\t{cap_eff:016x}\n")
    (proc / "meminfo").write_text(meminfo)
    conf = proc / "sys" / "net" / "ipv4" / "conf"
    (conf / "all").mkdir(parents=True)
    (conf / "all" / "rp_filter").write_text(rp_all + "\n")
    (sysfs / "class" / "net").mkdir(parents=True)
    for name, attrs in (ifaces or {}).items():
        (sysfs / "class" / "net" / name).mkdir()
        for k, v in attrs.items():
            if k == "rp_filter":
                (conf / name).mkdir(exist_ok=True)
                (conf / name / "rp_filter").write_text(v + "\n")
            else:
                (sysfs / "class" / "net" / name / k).write_text(v + "\n")
    (sysfs / "kernel" / "mm" / "transparent_hugepage").mkdir(parents=True)
    (sysfs / "kernel" / "mm" / "transparent_hugepage" / "enabled").write_text(thp)
    return d.Host(proc=proc, sys=sysfs, connect_timeout_s=0.5)


def cfg(encap: str = "gre", **extra) -> Config:
    inst = {"source_ipv4": "198.18.0.10", **extra.pop("instance", {})}
    backend = {"address": "198.18.1.11", **({"mac": "02:00:00:00:01:11"} if encap == "l2" else {})}
    data = {"instance": inst, "vip": [{"address": "203.0.113.10", "port": 80, "encap": encap,
                                       "backend": [backend]}], **extra}
    return Config.from_dict(data)


def statuses(findings: list[d.Finding], check: str) -> list[str]:
    return [f.status for f in findings if f.check == check]


def test_capabilities_name_what_is_missing_and_what_would_work(tmp_path):
    f = d.check_capabilities(d.Context(cfg(), nic="afpacket:eth0", host=fake_host(tmp_path)))
    fail = [x for x in f if x.status == d.FAIL]
    assert fail and "CAP_NET_RAW" in fail[0].message and "--nic pcap:FILE" in fail[0].fix
    ok = d.check_capabilities(d.Context(cfg(), nic="afpacket:eth0",
                                        host=fake_host(tmp_path / "b", cap_eff=CAP_NET_RAW | CAP_IPC_LOCK)))
    assert statuses(ok, "capabilities") == [d.OK]
    # pcap and gen need nothing at all
    none = d.check_capabilities(d.Context(cfg(), nic="pcap:x.pcap", host=fake_host(tmp_path / "c", cap_eff=CAP_IPC_LOCK)))
    assert statuses(none, "capabilities") == [d.OK] and "none needed" in none[0].message


def test_bgp_below_1024_needs_bind_service(tmp_path):
    c = cfg(bgp={"local_asn": 64512, "router_id": "198.18.0.9", "listen_port": 179,
                 "peer": [{"address": "198.18.0.1", "asn": 64513}]})
    f = d.check_capabilities(d.Context(c, nic="gen", host=fake_host(tmp_path, cap_eff=CAP_IPC_LOCK)))
    assert f[0].status == d.FAIL and "CAP_NET_BIND_SERVICE" in f[0].message
    # without peers no BGP speaker runs, so the port is never bound: nothing needed
    c = cfg(bgp={"local_asn": 64512, "router_id": "198.18.0.9", "listen_port": 179})
    f = d.check_capabilities(d.Context(c, nic="gen", host=fake_host(tmp_path / "np", cap_eff=0)))
    assert statuses(f, "capabilities") == [d.OK]


def test_interface_missing_down_and_mtu(tmp_path):
    h = fake_host(tmp_path, ifaces={"eth0": {"mtu": "1500", "operstate": "up"},
                                    "eth1": {"mtu": "1524", "operstate": "down"}})
    missing = d.check_interface(d.Context(cfg(), nic="afpacket:eth9", host=h))
    assert missing[0].status == d.FAIL and "eth0, eth1" in missing[0].fix
    small = d.check_interface(d.Context(cfg(), nic="afpacket:eth0", host=h))
    mtu = [x for x in small if x.check == "mtu"]
    assert mtu[0].status == d.WARN and "1500 + 24 (gre" in mtu[0].message and "mtu 1524" in mtu[0].fix
    down = d.check_interface(d.Context(cfg(), nic="afpacket:eth1", host=h))
    assert statuses(down, "interface") == [d.FAIL] and statuses(down, "mtu") == [d.OK]
    l2 = d.check_interface(d.Context(cfg("l2"), nic="afpacket:eth0", host=h))
    assert statuses(l2, "mtu") == [d.OK]
    too_big = d.check_interface(d.Context(cfg(instance={"mtu": 9000}), nic="afpacket:eth0", host=h))
    assert d.FAIL in statuses(too_big, "mtu")
    assert d.check_interface(d.Context(cfg(), nic="pcap:x", host=h))[0].status == d.SKIP


def test_rp_filter_strict_is_reported_with_the_loose_fix(tmp_path):
    h = fake_host(tmp_path, rp_all="0", ifaces={"eth0": {"mtu": "1500", "rp_filter": "1"},
                                                 "mgbtun0": {"mtu": "1500", "rp_filter": "0"}})
    f = d.check_rp_filter(d.Context(cfg(), nic="afpacket:eth0", host=h))
    assert f[0].status == d.WARN and "eth0" in f[0].message and "mgbtun0" not in f[0].message
    assert "net.ipv4.conf.eth0.rp_filter=2" in f[0].fix
    # all=1 makes every interface strict (effective value is the max)
    h2 = fake_host(tmp_path / "b", rp_all="1", ifaces={"mgbtun0": {"mtu": "1500", "rp_filter": "0"}})
    f2 = d.check_rp_filter(d.Context(cfg(), nic="gen", host=h2))
    assert f2[0].status == d.WARN and "all.rp_filter=2" in f2[0].fix and "mgbtun0" in f2[0].message
    h3 = fake_host(tmp_path / "c", rp_all="2", ifaces={"eth0": {"mtu": "1500", "rp_filter": "0"}})
    assert d.check_rp_filter(d.Context(cfg(), nic="afpacket:eth0", host=h3))[0].status == d.OK


def test_shm_pages_of_the_shared_connection_tables(tmp_path):
    h = fake_host(tmp_path)
    mm = h.sys / "kernel" / "mm" / "transparent_hugepage" / "shmem_enabled"
    mi = h.proc / "self" / "mountinfo"
    mm.write_text("always within_size advise [never] deny force\n")
    mi.write_text("30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=1024k\n")
    f = d.check_shm_pages(d.Context(cfg(), host=h))[0]
    assert f.status == d.WARN and "huge=never" in f.message and "remount,huge=within_size" in f.fix
    mi.write_text("30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=1024k,huge=within_size\n")
    assert d.check_shm_pages(d.Context(cfg(), host=h))[0].status == d.OK
    mm.write_text("always within_size advise never [deny] force\n")  # the machine-wide override
    assert d.check_shm_pages(d.Context(cfg(), host=h))[0].status == d.WARN
    assert d.check_shm_pages(d.Context(cfg(conntrack={"shared": False}), host=h))[0].status == d.SKIP


def test_hugepages_and_memory(tmp_path):
    never = fake_host(tmp_path, thp="always madvise [never]\n")
    assert d.check_hugepages(d.Context(cfg(), host=never))[0].status == d.WARN
    reserved = fake_host(tmp_path / "b", meminfo="HugePages_Total: 512\nHugePages_Free: 512\nMemAvailable: 1 kB\n",
                         thp="always madvise [never]\n")
    assert d.check_hugepages(d.Context(cfg(), host=reserved))[0].status == d.OK
    big = cfg(conntrack={"capacity": 1 << 24})
    f = d.check_memory(d.Context(big, workers=8, host=fake_host(tmp_path / "c")))  # 8 GiB of tables, 8 GiB free
    assert f[0].status == d.WARN
    tiny = fake_host(tmp_path / "d", meminfo="MemAvailable: 1048576 kB\n")
    f = d.check_memory(d.Context(big, workers=8, host=tiny))
    assert f[0].status == d.FAIL and "8192 MiB" in f[0].message and "1024 MiB" in f[0].message


def test_secret(tmp_path):
    assert d.check_secret(d.Context(cfg()))[0].status == d.WARN
    assert d.check_secret(d.Context(cfg(), lab=True))[0].status == d.OK
    own = cfg(instance={"flow_hash_secret": "0123456789abcdef0123456789abcdef"})
    f = d.check_secret(d.Context(own))
    assert f[0].status == d.OK and "0123456789abcdef" not in f[0].message


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    return s


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bgp_peers_on_loopback(tmp_path):
    with _listener() as up:
        port = up.getsockname()[1]
        closed = _closed_port()
        c = Config.from_dict({"bgp": {"local_asn": 64512, "router_id": "198.18.0.9", "listen_port": 1790, "peer": [
            {"address": "127.0.0.1", "asn": 64513, "port": port},
            {"address": "127.0.0.2", "asn": 64514, "port": closed},
            {"address": "127.0.0.3", "asn": 64515, "passive": True}]}})
        f = d.check_bgp_peers(d.Context(c, host=d.Host(connect_timeout_s=0.5)))
    assert [x.status for x in f] == [d.OK, d.FAIL, d.SKIP]
    assert "refused" in f[1].message.lower()
    assert d.check_bgp_peers(d.Context(cfg()))[0].status == d.SKIP


def test_backends_probe_their_check_port(tmp_path):
    # Built without the validator: backends on 127.0.0.0/8 are a test-only shape.
    with _listener() as up:
        port = up.getsockname()[1]
        closed = _closed_port()
        vips = tuple(
            Vip(address="203.0.113.10", port=p, health=HealthCheck(type="tcp", port=p),
                backends=(Backend(address="127.0.0.1"),))
            for p in (port, closed))
        f = d.check_backends(d.Context(Config(vips=vips), host=d.Host(connect_timeout_s=0.5)))
    assert [x.status for x in f] == [d.OK, d.WARN]
    assert "marked down" in f[1].message
    assert d.check_backends(d.Context(cfg()))[0].status == d.SKIP


def test_a_check_that_breaks_is_a_finding_not_a_traceback():
    def boom(ctx):
        raise RuntimeError("kaput")

    f = d.run_checks(d.Context(cfg()), (boom,))
    assert f[0].status == d.WARN and "kaput" in f[0].message
    s = d.summary(f)
    assert s["ok"] is True and s["counts"]["warn"] == 1


def test_cli_json_and_exit_code(tmp_path):
    conf = tmp_path / "m.toml"
    conf.write_text('[instance]\nsource_ipv4 = "198.18.0.10"\n[[vip]]\naddress = "203.0.113.10"\nport = 80\n[[vip.backend]]\naddress = "198.18.1.11"\n')
    r = subprocess.run([*CLI, "doctor", "--config", str(conf), "--nic", "afpacket:mgt-nonexistent0", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    s = json.loads(r.stdout)
    assert s["ok"] is False
    rows = {(x["check"], x["status"]) for x in s["findings"]}
    assert ("interface", "fail") in rows and ("flow_hash_secret", "warn") in rows
    r = subprocess.run([*CLI, "doctor", "--nic", "gen"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[ok  ] extension" in r.stdout and " failures," in r.stdout


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv (util-linux) to run doctor with a reduced capability set")
def test_cli_under_a_reduced_capability_set_names_the_capability(tmp_path):
    # root's uid but no capabilities at all (empty bounding set): afpacket cannot work and
    # doctor says which capability is missing.
    r = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all",
                        *CLI, "doctor", "--nic", "afpacket:lo", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    fails = [x for x in json.loads(r.stdout)["findings"] if x["status"] == "fail"]
    assert any(x["check"] == "capabilities" and "CAP_NET_RAW" in x["message"] for x in fails), fails


@pytest.mark.root
@pytest.mark.skipif(why_no_netns() is not None, reason=str(why_no_netns()))
def test_lab_namespace_mtu_rp_filter_and_link_state():
    """In a namespace with a veth at MTU 1500 and strict rp_filter, doctor warns about
    both; after the fixes it names, the same checks pass; a link that is down fails."""
    with NetnsSet() as ns:
        a, b = ns.add("doc"), ns.add("peer")
        ns.veth(a, "d0", b, "p0")
        a.exec("ip", "link", "set", "d0", "up")
        a.exec("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
        a.exec("sysctl", "-qw", "net.ipv4.conf.d0.rp_filter=1")

        def doctor() -> dict:
            r = a.exec(*CLI, "doctor", "--nic", "afpacket:d0", "--json", check=False, timeout=60)
            return {(x["check"], x["status"]) for x in json.loads(r.stdout)["findings"]}

        before = doctor()
        assert ("mtu", "warn") in before and ("rp_filter", "warn") in before
        a.exec("ip", "link", "set", "d0", "mtu", "1544")
        a.exec("sysctl", "-qw", "net.ipv4.conf.d0.rp_filter=2")
        after = doctor()
        assert ("mtu", "ok") in after and ("rp_filter", "ok") in after
        a.exec("ip", "link", "set", "d0", "down")
        assert ("interface", "fail") in doctor()
