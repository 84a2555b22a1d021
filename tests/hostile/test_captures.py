"""Hostile captures through the two commands that read them: every file of the third-party
corpus, and variants of each that are cut mid-record, garbled, with a bad magic, snaplen 0,
a huge or zero record length, an unknown link type, or nothing at all.

``maglev replay`` (both engines): exit 0 with every packet counted, exit 1 with the counts up
to the damage and one line saying where, or exit 2 with one line when the file is not a
capture; never a traceback.  ``maglev run --nic pcap:`` (a real run, subprocess): a file that
is not a capture is refused before any process starts (exit 2, one line); a damaged one is
forwarded up to the damage, which the summary names, with every frame accounted for.
Odd but valid captures that third-party tools write (BSD loopback, PPP, Cisco HDLC, an FCS
in the link-type field, modified pcap, a multi-interface pcapng with if_fcslen/if_tsoffset
and unpadded block lengths) forward alike through replay (both engines) and run.
(Unit-level reader cases: tests/datapath/test_pcapfile.py, tests/nic/test_pcapnic.py.)"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing import unique
from maglev_cli.main import cli

CONF = """
[instance]
name = "{name}"
source_ipv4 = "198.18.0.1"
source_ipv6 = "2001:db8::1"

[[vip]]
address = "203.0.113.10"
port = 80
[[vip.backend]]
address = "198.18.1.1"
[[vip.backend]]
address = "198.18.1.2"

[[vip]]
address = "2001:db8::10"
port = 80
[[vip.backend]]
address = "2001:db8:1::1"
"""
LE_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
BE_MAGICS = (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")


def variants(raw: bytes, seed: int) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of hostile variants of one capture file."""
    rng = random.Random(seed)
    yield "as-is", raw
    yield "empty", b""
    yield "header-cut", raw[:13]
    yield "bad-magic", b"\xde\xad\xbe\xef" + raw[4:]
    if raw[:4] in LE_MAGICS + BE_MAGICS:
        o = "<" if raw[:4] in LE_MAGICS else ">"
        yield "header-only", raw[:24]
        yield "snaplen-0", raw[:16] + struct.pack(o + "I", 0) + raw[20:]
        yield "snaplen-huge", raw[:16] + struct.pack(o + "I", 0xFFFFFFFF) + raw[20:]
        yield "linktype-unknown", raw[:20] + struct.pack(o + "I", 0xFFFF) + raw[24:]
        if len(raw) >= 40:
            yield "caplen-huge", raw[:32] + struct.pack(o + "I", 0xFFFFFFF0) + raw[36:]
            yield "caplen-0", raw[:32] + struct.pack(o + "II", 0, 0) + raw[40:]
            yield "caplen-over-file", raw[:32] + struct.pack(o + "II", 60000, 10) + raw[40:]
    for i in range(2):
        if len(raw) > 30:
            yield f"cut-{i}", raw[:rng.randrange(25, len(raw))]
    for i in range(2):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 24)):
            if len(b) > 24:
                b[rng.randrange(24, len(b))] = rng.randrange(256)
        yield f"garbled-{i}", bytes(b)


def check_replay(path: Path, conf: Path, engine: str) -> None:
    r = CliRunner().invoke(cli, ["replay", str(path), "--config", str(conf), "--engine", engine, "--json"])
    where = f"{path.name} ({engine}): exit {r.exit_code}: {r.output[-500:]}"
    assert r.exception is None or isinstance(r.exception, SystemExit), (where, r.exc_info)
    assert "Traceback" not in r.output, where
    if r.exit_code == 2:  # not a capture at all: one line
        assert r.output.startswith("maglev: error: ") and len(r.output.strip().splitlines()) == 1, where
        return
    assert r.exit_code in (0, 1), where
    lines = r.output.strip().splitlines()
    s = json.loads(lines[0])
    assert s["packets_in"] == s["forwarded"] + s["redirected"] + sum(s["dropped"].values()), where
    if r.exit_code == 1:  # damaged: counted up to the damage, then one line saying where
        assert "damaged at byte" in s["error"] and lines[1:] == [f"maglev: error: {s['error']}"], where


@pytest.mark.slow
def test_every_corpus_file_and_its_hostile_variants_through_replay(corpus_dir, tmp_path):
    conf = tmp_path / "maglev.toml"
    conf.write_text(CONF.format(name="hostile-replay"))
    files = sorted(p for p in corpus_dir.iterdir() if p.suffix in (".pcap", ".pcapng"))
    assert len(files) >= 40
    n = 0
    for i, f in enumerate(files):
        for name, data in variants(f.read_bytes(), seed=i):
            p = tmp_path / f"{f.stem}.{name}{f.suffix}"
            p.write_bytes(data)
            # the Python engine on every third file: the same accounting, less time
            for engine in ("c", "python") if i % 3 == 0 else ("c",):
                check_replay(p, conf, engine)
                n += 1
            p.unlink()
    assert n > 700


def _run(shortdir: Path, capture: Path) -> subprocess.CompletedProcess:
    conf = shortdir / "maglev.toml"
    conf.write_text(CONF.format(name=unique.name("hostile-cap-")))
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run")}
    try:
        return subprocess.run(
            [sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--config", str(conf),
             "--nic", f"pcap:{capture}", "--workers", "1", "--exit-on-eof", "--json"],
            capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    finally:
        remove_recorded(str(shortdir / "state"))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["empty", "bad-magic", "header-cut"])
def test_run_refuses_what_is_not_a_capture_before_starting(shortdir, corpus_dir, variant):
    raw = dict(variants((corpus_dir / "IPv4Frag.pcap").read_bytes(), 0))[variant]
    cap = shortdir / f"in.{variant}.pcap"
    cap.write_bytes(raw)
    r = _run(shortdir, cap)
    assert r.returncode == 2, (r.stdout, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("maglev: error:")]
    assert len(errors) == 1 and str(cap) in errors[0], r.stderr
    assert "Traceback" not in r.stderr and "actor=" not in r.stderr.replace("actor=supervisor", ""), r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("source, variant", [
    ("IPv4Frag.pcap", "caplen-huge"), ("IPv4Frag.pcap", "cut-0"), ("bro.org-filtered.pcap", "cut-1"),
    ("ipv6-fragmented-dns.pcap", "garbled-0"), ("vlan-pcp-dei.pcapng", "cut-0"),
])  # fmt: skip
def test_run_forwards_a_damaged_capture_up_to_the_damage(shortdir, corpus_dir, source, variant):
    raw = dict(variants((corpus_dir / source).read_bytes(), 0))[variant]
    cap = shortdir / f"in.{variant}{Path(source).suffix}"
    cap.write_bytes(raw)
    r = _run(shortdir, cap)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    s = json.loads(r.stdout)
    assert s["pool"]["ok"], s["pool"]
    assert s["packets_in"] == s["forwarded"] + sum(s["dropped"].values()), s
    assert all(n == 0 for n in s["restarts"].values()), s["restarts"]
    if variant.startswith(("cut", "caplen")):
        assert "damaged at byte" in s["input_error"], s


def _odd_captures(folder: Path) -> dict[str, tuple[Path, int]]:
    """Valid captures in the formats third-party tools write that the corpus lacks (found
    replaying gopacket's, python-pcapng's and editcap's files, session 10): name -> (file,
    how many of its packets go to a VIP of CONF).  Each was refused, or every record an
    ``unsupported_linktype`` drop, before the reader knew it."""
    from maglev.testing import packets as P

    def ip4(i: int) -> bytes:
        return P.ipv4(f"198.51.100.{i}", "203.0.113.10", P.TCP, P.tcp(40000 + i, 80, b"x", src=f"198.51.100.{i}", dst="203.0.113.10"))

    def ip6(i: int) -> bytes:
        return P.ipv6(f"2001:db8:c::{i}", "2001:db8::10", P.TCP, P.tcp(40000 + i, 80, b"x", src=f"2001:db8:c::{i}", dst="2001:db8::10"))

    def classic(lt: int, pkts: list[bytes], magic: int = 0xA1B2C3D4, extra: bytes = b"") -> bytes:
        out = struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 65535, lt)
        for i, p in enumerate(pkts):
            out += struct.pack("<IIII", 1_700_000_000, i, len(p), len(p)) + extra + p
        return out

    def blk(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    fcs = b"\xde\xad\xbe\xef"
    v4 = [ip4(i) for i in range(1, 7)]
    v6 = [ip6(i) for i in range(1, 4)]
    files = {
        "null": (classic(0, [struct.pack("<I", 2) + p for p in v4] + [struct.pack("<I", 30) + p for p in v6]
                         + [struct.pack(">I", 24) + v6[0], struct.pack("<I", 7) + v4[0]]), 10),
        "loop": (classic(108, [struct.pack(">I", 2) + p for p in v4] + [struct.pack(">I", 28) + p for p in v6]), 9),
        "ppp": (classic(9, [b"\xff\x03\x00\x21" + p for p in v4] + [b"\x00\x57" + p for p in v6]
                        + [b"\xff\x03\xc0\x21\x01\x01\x00\x04"]), 9),
        "chdlc": (classic(104, [b"\x0f\x00\x08\x00" + p for p in v4]), 6),
        "fcs": (classic(1 | 0x04000000 | (2 << 28), [P.eth(p) + fcs for p in v4 + v6]), 9),
        "modpcap": (classic(1, [P.eth(p) for p in v4], magic=0xA1B2CD34, extra=bytes(8)), 6),
        "suse63": (classic(1, [P.eth(p) for p in v4], magic=0xA1B2CD34, extra=bytes(12)), 6),
    }
    # pcapng: an Ethernet interface with a 32-bit FCS and a time offset, a NULL one, a PPP
    # one; an enhanced packet block whose length leaves out its padding
    ng = blk(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    ng += blk(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HHB3xHHq", 13, 1, 32, 14, 8, 1_700_000_000) + bytes(4))
    ng += blk(1, struct.pack("<HHI", 0, 0, 0))
    ng += blk(1, struct.pack("<HHI", 9, 0, 0))
    pkts = [(0, P.eth(p) + fcs) for p in v4] + [(1, struct.pack("<I", 2) + p) for p in v4] + [(2, b"\x00\x57" + p) for p in v6]
    for i, (ifid, data) in enumerate(pkts):
        b = bytearray(blk(6, struct.pack("<IIIII", ifid, 0, i, len(data), len(data)) + data))
        if len(data) % 4:  # the unpadded length, as some writers put it
            n = 12 + 20 + len(data)
            struct.pack_into("<I", b, 4, n)
            struct.pack_into("<I", b, len(b) - 4, n)
        ng += bytes(b)
    files["pcapng-mixed"] = (ng, len(pkts))
    out = {}
    for name, (raw, n) in files.items():
        p = folder / f"odd-{name}.{'pcapng' if name.startswith('pcapng') else 'pcap'}"
        p.write_bytes(raw)
        out[name] = (p, n)
    return out


def _summary_and_packets(r_output: str, out: Path) -> tuple[dict, list[bytes]]:
    from maglev.nic.pcapfile import PcapReader

    with PcapReader(out) as rd:
        return json.loads(r_output), sorted(rec.data for rec in rd)


@pytest.mark.slow
def test_odd_but_valid_captures_forward_through_replay_and_run_alike(shortdir):
    conf = shortdir / "replay.toml"
    conf.write_text(CONF.format(name="odd-captures"))
    for name, (cap, to_vip) in _odd_captures(shortdir).items():
        seen = {}
        for engine in ("c", "python"):
            out = shortdir / f"{name}-{engine}.pcap"
            r = CliRunner().invoke(cli, ["replay", str(cap), "--config", str(conf), "--engine", engine, "--json", "--out", str(out)])
            assert r.exit_code == 0 and r.exception is None, (name, engine, r.output, r.exc_info)
            s, pkts = _summary_and_packets(r.output, out)
            assert s["error"] is None and s["forwarded"] == to_vip, (name, s)
            assert s["packets_in"] == s["forwarded"] + sum(s["dropped"].values()), (name, s)
            assert set(s["dropped"]) <= {"unsupported_ethertype"}, (name, s)
            seen[engine] = (s["packets_in"], s["forwarded"], s["dropped"], pkts)
        assert seen["c"] == seen["python"], name
    # one real run over the file with every interface kind: the same packets as replay
    cap = shortdir / "odd-pcapng-mixed.pcapng"
    out = shortdir / "run.pcap"
    conf = shortdir / "maglev.toml"
    conf.write_text(CONF.format(name=unique.name("hostile-odd-")))
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run")}
    try:
        r = subprocess.run(
            [sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--config", str(conf),
             "--nic", f"pcap:{cap}", "--out", str(out), "--workers", "1", "--exit-on-eof", "--json"],
            capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    finally:
        remove_recorded(str(shortdir / "state"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    s, pkts = _summary_and_packets(r.stdout, out)
    assert (s["packets_in"], s["forwarded"], s["dropped"], pkts) == seen_mixed(shortdir, cap), s


def seen_mixed(shortdir: Path, cap: Path) -> tuple[int, int, dict, list[bytes]]:
    out = shortdir / "replay-mixed.pcap"
    r = CliRunner().invoke(cli, ["replay", str(cap), "--config", str(shortdir / "replay.toml"), "--json", "--out", str(out)])
    s, pkts = _summary_and_packets(r.output, out)
    return s["packets_in"], s["forwarded"], s["dropped"], pkts
