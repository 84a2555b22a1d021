"""Hostile captures through the two commands that read them: every file of the third-party
corpus, and variants of each that are cut mid-record, garbled, with a bad magic, snaplen 0,
a huge or zero record length, an unknown link type, or nothing at all.

``maglev replay`` (both engines): exit 0 with every packet counted, exit 1 with the counts up
to the damage and one line saying where, or exit 2 with one line when the file is not a
capture; never a traceback.  ``maglev run --nic pcap:`` (a real run, subprocess): a file that
is not a capture is refused before any process starts (exit 2, one line); a damaged one is
forwarded up to the damage, which the summary names, with every frame accounted for.
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
