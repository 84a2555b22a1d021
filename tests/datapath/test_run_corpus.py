"""Every capture of the shared corpus through the real forwarder at default settings:
``maglev run --nic pcap:X --out Y --exit-on-eof`` must give the same packets (and the
same drop counts) as ``maglev replay X``.

The config for a capture is the one tests/datapath/test_corpus.py derives from it (VIPs on
its destinations, GRE to three backends, MTU 1500), so full-size DF-clear IPv4 packets
are split into two pieces: the spare frames the workers need for that come from the
spare rings steering keeps stocked (mg_steer.h), never ``no_spare_frame``.

One ``maglev run`` costs a few seconds of process start-up, so the captures run a few at
a time, each its own process tree with its own state directory and region.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from maglev import config as cfg
from maglev.datapath.replay import replay
from maglev.nic.pcapfile import PcapReader

from .test_corpus import derived_config, manifest

CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]
PARALLEL = 3
RUN_TIMEOUT_S = 120.0


def packets(path: Path) -> Counter:
    if not path.exists():
        return Counter()
    with PcapReader(path) as r:
        return Counter(rec.data for rec in r)


@pytest.mark.slow
def test_run_gives_the_same_packets_as_replay_for_every_capture(corpus_dir: Path, tmp_path: Path):
    rows = manifest(corpus_dir)
    names = sorted(p.name for p in corpus_dir.iterdir() if p.is_file())
    assert names, f"no captures in {corpus_dir}"
    jobs = []
    for name in names:
        work = tmp_path / name.replace(".", "_")
        work.mkdir()
        conf = derived_config(corpus_dir / name, rows.get(name, {}).get("what it exercises", ""))
        (work / "maglev.toml").write_text(cfg.dump_toml(conf))
        jobs.append((name, work, conf))

    results: dict[str, tuple[int, str, str]] = {}
    running: list[tuple[str, Path, subprocess.Popen, float]] = []
    pending = list(jobs)
    try:
        while pending or running:
            while pending and len(running) < PARALLEL:
                name, work, _ = pending.pop(0)
                proc = subprocess.Popen(
                    [*CLI, "run", "--config", str(work / "maglev.toml"), "--nic", f"pcap:{corpus_dir / name}",
                     "--out", str(work / "run.pcap"), "--exit-on-eof", "--json"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    env={**os.environ, "MAGLEV_STATE_DIR": str(work / "state")},
                )
                running.append((name, work, proc, time.monotonic()))
            for item in list(running):
                name, work, proc, t0 = item
                if proc.poll() is None and time.monotonic() - t0 < RUN_TIMEOUT_S:
                    continue
                if proc.poll() is None:
                    proc.kill()
                out, err = proc.communicate()
                results[name] = (proc.returncode, out, err)
                running.remove(item)
            time.sleep(0.05)
    finally:
        for _, _, proc, _ in running:
            proc.kill()
            proc.communicate()

    failures = []
    split = 0  # packets that came out as more frames than went in (split pieces)
    for name, work, conf in jobs:
        rc, out, err = results[name]
        if rc != 0:
            failures.append(f"{name}: maglev run exited {rc}: {err.strip()[-300:]}")
            continue
        s = json.loads(out)
        ref = replay(corpus_dir / name, conf, out=work / "replay.pcap")
        mine, theirs = packets(work / "run.pcap"), packets(work / "replay.pcap")
        if "no_spare_frame" in s["dropped"]:
            failures.append(f"{name}: no_spare_frame drops {s['dropped']}")
        if not s["pool"]["ok"]:
            failures.append(f"{name}: {s['pool']['detail']}")
        if (s["packets_in"], s["forwarded"], s["dropped"]) != (ref["packets_in"], ref["forwarded"], ref["dropped"]):
            failures.append(f"{name}: run {s['packets_in']}/{s['forwarded']}/{s['dropped']} "
                            f"vs replay {ref['packets_in']}/{ref['forwarded']}/{ref['dropped']}")
        if mine != theirs:
            failures.append(f"{name}: {sum(mine.values())} packets out of run, {sum(theirs.values())} out of replay, "
                            f"{sum((mine - theirs).values())} only in run, {sum((theirs - mine).values())} only in replay")
        split += sum(theirs.values()) - ref["forwarded"] - ref["icmp_sent"]
    assert not failures, "\n".join(failures)
    # The corpus has full-size DF-clear IPv4 packets, which MTU 1500 splits in two: the
    # test is only worth its time if some were split (IPv4Frag.pcap alone has two).
    assert split > 0
