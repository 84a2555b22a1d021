"""QUIC connection-ID routing in the namespace lab with a real QUIC stack (aioquic):
`maglev run --nic afpacket:eth0` in front of three aioquic servers whose connection IDs
carry their server IDs (maglev.lab.quicpeer).  A client downloads 2 MB and, a third of the
way in, migrates to a new UDP port (and a new connection ID) that Maglev hashing would
send to *another* server; the transfer completes from the server it started on, whose
log shows both client ports, and the forwarder counts packets routed by connection ID."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("aioquic", reason="aioquic is a test dependency (docs/development.md); pip install aioquic")

from maglev import config as cfg
from maglev.actors.launch import python_argv
from maglev.control.client import ControlClient
from maglev.lab.quicpeer import make_cert
from maglev.lab.topology import CLIENT_V4, MAGLEV_V4, MAGLEV_V6, VIP_V4
from maglev.observability.whereis import parse_flow, whereis_config
from maglev.testing.wait import wait_until

PORT = 4433
CID_LENGTH, SID_OFFSET = 9, 1
BYTES = 2_000_000


def _config(lab) -> str:
    lines = ["[instance]", 'name = "quiclab"', 'flow_hash_secret = "0123456789abcdef0123456789abcdef"',
             f'source_ipv4 = "{MAGLEV_V4}"', f'source_ipv6 = "{MAGLEV_V6}"', "",
             "[[vip]]", f'address = "{VIP_V4}"', f"port = {PORT}", 'protocol = "udp"', 'encap = "gre"',
             f"quic = {{ server_id_offset = {SID_OFFSET}, server_id_length = 2, cid_length = {CID_LENGTH} }}"]
    for i, b in enumerate(lab.state["backends"], start=1):
        lines += ["[[vip.backend]]", f'address = "{b["ipv4"]}"', f'name = "{b["name"]}"',
                  f'quic_server_id = "0a{i:02x}"']
    return "\n".join(lines) + "\n"


def _wait(pred, what: str, lab, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not pred():
        lab._check_processes()
        assert time.monotonic() < deadline, f"{what} (logs in {lab.state_dir}/logs)"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_quic_connection_migrates_to_a_new_port_mid_transfer_and_completes(make_lab, tmp_path: Path):
    lab = make_lab(encap="gre", backends=3, forwarder=False)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_cert(cert, key)
    conf_path = tmp_path / "maglev.toml"
    conf_path.write_text(_config(lab))
    conf = cfg.load(conf_path)
    stats = {}
    for i, b in enumerate(lab.state["backends"], start=1):
        stats[b["name"]] = tmp_path / f"quic-{b['name']}.json"
        lab.spawn(f"quic-{b['name']}", b["ns"],
                  [*python_argv(), "-m", "maglev.lab.quicpeer", "server", "--host", VIP_V4, "--port", str(PORT),
                   "--name", b["name"], "--server-id", f"0a{i:02x}", "--sid-offset", str(SID_OFFSET),
                   "--cid-length", str(CID_LENGTH), "--cert", str(cert), "--key", str(key),
                   "--stats", str(stats[b["name"]])])
    ctl = f"ipc://{tmp_path}/ctl.sock"
    lab.spawn("maglev", lab.state["maglev"]["ns"],
              [*python_argv(), "-c", "from maglev_cli.main import main; main()", "run", "--config", str(conf_path),
               "--nic", "afpacket:eth0", "--workers", "1", "--control", ctl],
              env={"MAGLEV_STATE_DIR": str(tmp_path / "state"), "MAGLEV_RUN_DIR": str(tmp_path / "run")})
    _wait(lambda: all(p.exists() for p in stats.values()), "the QUIC servers did not start", lab)

    def forwarder_ready() -> bool:
        try:
            with ControlClient(ctl, timeout=2) as c:
                return c.call("status", {})["generation"] > 0
        except Exception:
            return False

    _wait(forwarder_ready, "the forwarder did not start", lab, 60)

    # The Initial goes by hashing from port 40000; pick a new port that hashing would send
    # to another server: only the connection ID can keep the client on its server.
    first = whereis_config(conf, parse_flow(f"{CLIENT_V4}:40000", f"{VIP_V4}:{PORT}/udp"))["backend"]
    new_port = next(p for p in range(40001, 41000)
                    if whereis_config(conf, parse_flow(f"{CLIENT_V4}:{p}", f"{VIP_V4}:{PORT}/udp"))["backend"] != first)
    name = {b["ipv4"]: b["name"] for b in lab.state["backends"]}[first]

    r = subprocess.run(["ip", "netns", "exec", lab.state["client"]["ns"], *python_argv(), "-m", "maglev.lab.quicpeer",
                        "client", "--host", VIP_V4, "--port", str(PORT), "--bytes", str(BYTES), "--local-port", "40000",
                        "--migrate-port", str(new_port), "--migrate-at", "0.3", "--timeout", "60"],
                       capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}
    print(f"\nclient: {out} (new port {new_port}; hashing would pick another server)")
    assert r.returncode == 0 and out.get("ok"), (r.stdout, r.stderr[-2000:])
    assert out["migrated"] and out["server"] == name and out["bytes"] == BYTES
    sid = bytes([0x0A, int(name[2:])])
    assert all(bytes.fromhex(c)[SID_OFFSET:SID_OFFSET + 2] == sid for c in out["dcids"]), out["dcids"]

    # Each server rewrites its stats file every 0.2 s (atomically), on its own loop: read
    # until the client's server has recorded the migrated path, not a fixed time after
    # the transfer (a starved server writes late).  What the files say is judged below.
    def read_all() -> dict:
        return {n: json.loads(p.read_text()) for n, p in stats.items()}

    def migrated_seen() -> dict | None:
        seen = read_all()
        addrs = {a for c in seen[name]["connections"] for a in c}
        return seen if any(a.endswith(f":{new_port}") for a in addrs) else None

    try:
        seen = wait_until(migrated_seen, 10, f"{name}'s stats showing the client's new port {new_port}")
    except AssertionError:
        raise AssertionError(f"servers' stats: {read_all()}") from None
    conns = seen[name]["connections"]
    assert len(conns) == 1, conns
    ports = {int(a.rsplit(":", 1)[1]) for a in conns[0]}
    assert ports == {40000, new_port}, conns  # the migrated path reached the same server
    assert all(not s["connections"] for n, s in seen.items() if n != name), seen
    assert all(bytes.fromhex(c)[SID_OFFSET:SID_OFFSET + 2] == sid for c in seen[name]["cids"])

    # How many packets the client sends after the handshake depends on its ACK pacing (95
    # in one CI run, against the old bound of 100; 110-157 here): judge a share, not a
    # count.  Read until two reads 0.6 s apart agree, so the last ACKs are in.
    def counts() -> tuple[int, int]:
        with ControlClient(ctl, timeout=5) as c:
            st = c.call("stats", {})
        return (sum(w["quic_cid_routed"] for w in st["workers"]), sum(w["quic_hashed"] for w in st["workers"]))

    last, deadline = counts(), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.6)
        now = counts()
        if now == last:
            break
        last = now
    routed, hashed = last
    print(f"forwarder: {routed} packets routed by connection ID, {hashed} hashed (Initial/Handshake)")
    # the client's packets of a 2 MB download after the handshake (its ACKs: ~100-300 here)
    assert routed >= 50 and hashed >= 1 and routed > 10 * hashed
