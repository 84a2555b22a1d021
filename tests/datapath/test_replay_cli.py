"""`maglev replay`: JSON accounting, text summary, pcap out decoded by tshark, and clear
errors for unusable or damaged input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from maglev.nic.pcapfile import PcapReader, PcapWriter
from maglev.testing import packets as P
from maglev_cli.main import cli

from .dp_helpers import CONFIG_TOML

CLIENT = "198.51.100.7"
VIP = "203.0.113.10"


def http_capture(path: Path, flows: int = 20) -> Path:
    """A small HTTP-like capture: SYN, data, FIN per flow, plus two packets for no VIP."""
    with PcapWriter(path) as w:
        t = 1_700_000_000 * 10**9
        for i in range(flows):
            for flags, body in ((0x02, b""), (0x18, b"GET / HTTP/1.1\r\n\r\n"), (0x11, b"")):
                w.write(P.eth(P.ipv4(CLIENT, VIP, P.TCP, P.tcp(40000 + i, 80, body, src=CLIENT, dst=VIP, flags=flags))), t)
                t += 1000
        w.write(P.eth(P.ipv4(CLIENT, "203.0.113.99", P.TCP, P.tcp(1, 80, src=CLIENT, dst="203.0.113.99"))), t)
        w.write(P.eth(bytes(28), ethertype=0x0806), t)
    return path


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "maglev.toml"
    p.write_text(CONFIG_TOML)
    return p


@pytest.mark.parametrize("engine", ["c", "python"])
def test_json_accounts_for_every_packet(tmp_path, conf, engine):
    cap = http_capture(tmp_path / "in.pcap")
    r = CliRunner().invoke(cli, ["replay", str(cap), "--config", str(conf), "--engine", engine, "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["packets_in"] == 62
    assert s["forwarded"] == 60
    assert s["dropped"] == {"no_vip": 1, "unsupported_ethertype": 1}
    assert s["packets_in"] == s["forwarded"] + sum(s["dropped"].values())
    assert s["icmp_sent"] == 0
    assert sum(s["per_backend"].values()) == 60
    assert set(s["per_backend"]) <= {"198.18.1.1", "198.18.1.2", "198.18.1.3"}
    assert s["per_vip"] == {f"{VIP}:80/tcp": 60}
    assert s["conntrack"]["inserts"] == 20 and s["conntrack"]["hits"] == 40


def test_text_summary_and_out_file_decoded_by_tshark(tmp_path, conf):
    cap = http_capture(tmp_path / "in.pcap")
    out = tmp_path / "out.pcap"
    r = CliRunner().invoke(cli, ["replay", str(cap), "--config", str(conf), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "62 packets in, 60 forwarded, 2 dropped, 0 ICMP errors sent" in r.output
    assert "no_vip" in r.output
    with PcapReader(out) as rd:
        frames = [x.data for x in rd]
    assert len(frames) == 60
    if reason := P.why_no_tshark():
        pytest.skip(reason)
    rows = P.tshark_fields(tmp_path, frames, ["ip.proto", "gre.proto", "ip.checksum.status", "tcp.dstport"])
    for row in rows:
        assert row["ip.proto"] == ["47", "6"]
        assert row["gre.proto"] == ["0x0800"]
        assert row["ip.checksum.status"] == ["1", "1"]  # 1 = Good (0 Bad, 2 unverified)
        assert row["tcp.dstport"] == ["80"]


def test_unreadable_file_is_a_clear_error(tmp_path, conf):
    bad = tmp_path / "notes.pcap"
    bad.write_text("not a capture")
    r = CliRunner().invoke(cli, ["replay", str(bad), "--config", str(conf)])
    assert r.exit_code == 2
    assert "maglev: error:" in r.output and "not a pcap or pcapng file" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["replay", str(tmp_path / "missing.pcap"), "--config", str(conf)])
    assert r.exit_code == 2 and "cannot open" in r.output


def test_damaged_file_reports_and_still_counts(tmp_path, conf):
    cap = http_capture(tmp_path / "in.pcap", flows=2)
    raw = cap.read_bytes()
    cap.write_bytes(raw[:-30])  # cut inside the last record
    r = CliRunner().invoke(cli, ["replay", str(cap), "--config", str(conf), "--json"])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    s = json.loads(lines[0])
    assert s["packets_in"] == 7 and s["forwarded"] == 6
    assert "damaged at byte" in s["error"]
    assert "maglev: error:" in r.output


def test_bad_config_is_a_clear_error(tmp_path):
    cap = http_capture(tmp_path / "in.pcap", flows=1)
    bad = tmp_path / "bad.toml"
    bad.write_text("[[vip]]\naddress = 'nope'\n")
    r = CliRunner().invoke(cli, ["replay", str(cap), "--config", str(bad)])
    assert r.exit_code == 2 and "is not an IP address" in r.output
