"""Golden outputs of the recorded lab traces.

    python traces/golden.py            # check every trace against its golden (exit 1 on a diff)
    python traces/golden.py --update   # rewrite traces/<name>.golden.json (just traces-golden)

For each ``traces/<name>.pcap`` the golden ``traces/<name>.golden.json`` holds what
``maglev replay --config traces/lab.toml`` reports (packets in, forwarded, drops by
reason, ICMP sent, packets per backend and per VIP) and one SHA-256 prefix per packet it
writes with ``--out``, in order.  ``maglev run --nic pcap:<name>.pcap --out ... --workers
2`` must produce the same packets (as a multiset: several workers may interleave flows).

A golden changes only when the data path's output changes on purpose (a new hash seed,
a new encapsulation detail): regenerate, and review the diff of the summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "lab.toml"
SUMMARY_KEYS = ("packets_in", "forwarded", "dropped", "icmp_sent", "per_backend", "per_vip")
MAGLEV = [sys.executable, "-c", "from maglev_cli.main import main; main()"]


def traces() -> list[Path]:
    return sorted(HERE.glob("*.pcap"))


def pcap_packets(path: Path) -> list[bytes]:
    """The packets of a classic pcap file (either byte order, us or ns timestamps)."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file")
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, off + 8)[0]
        out.append(data[off + 16 : off + 16 + incl])
        off += 16 + incl
    return out


def digests(packets: list[bytes]) -> list[str]:
    return [hashlib.sha256(p).hexdigest()[:16] for p in packets]


def replay(pcap: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.pcap"
        r = subprocess.run([*MAGLEV, "replay", "--config", str(CONFIG), "--out", str(out), "--json", str(pcap)],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"maglev replay {pcap.name} failed ({r.returncode}): {r.stderr.strip()}")
        summary = json.loads(r.stdout)
        return {"summary": {k: summary[k] for k in SUMMARY_KEYS}, "out_packets": digests(pcap_packets(out))}


def run_pipeline(pcap: Path, workers: int = 2) -> dict:
    """``maglev run`` on the capture: its output packets and forwarded count.  The run
    keeps its state (persisted config, connection tables in /dev/shm kept for adoption) in
    a private folder, dropped afterwards: nothing of it outlives the call."""
    from maglev.rings.conntrack_shm import remove_recorded

    with tempfile.TemporaryDirectory(prefix="mgg", dir="/tmp") as tmp:
        out = Path(tmp) / "out.pcap"
        env = {**os.environ, "MAGLEV_STATE_DIR": f"{tmp}/state", "MAGLEV_RUN_DIR": f"{tmp}/run"}
        try:
            r = subprocess.run([*MAGLEV, "run", "--config", str(CONFIG), "--nic", f"pcap:{pcap}", "--out", str(out),
                                "--workers", str(workers), "--exit-on-eof", "--json"],
                               capture_output=True, text=True, timeout=120, env=env)
        finally:
            remove_recorded(tmp)
        if r.returncode != 0:
            raise RuntimeError(f"maglev run {pcap.name} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
        return {"stats": json.loads(r.stdout.strip().splitlines()[-1]), "out_packets": digests(pcap_packets(out))}


def golden_path(pcap: Path) -> Path:
    return pcap.with_suffix(".golden.json")


def main() -> int:
    ap = argparse.ArgumentParser(description="check or update the trace goldens")
    ap.add_argument("--update", action="store_true")
    args = ap.parse_args()
    bad = 0
    for pcap in traces():
        got = replay(pcap)
        gp = golden_path(pcap)
        if args.update:
            gp.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
            print(f"{gp.name}: {got['summary']['packets_in']} in, {got['summary']['forwarded']} forwarded")
            continue
        want = json.loads(gp.read_text()) if gp.exists() else None
        if got != want:
            bad += 1
            print(f"{pcap.name}: differs from {gp.name}")
        else:
            print(f"{pcap.name}: ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
