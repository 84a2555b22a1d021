"""Fleet consistency: the table fingerprint covers everything that decides a flow's backend --
the table (size, backends, weights, entries), where each backend's packets go, and the
flow-hash secret as a keyed digest (never the secret itself) -- and ``maglev run`` warns once
when it keys the flow hash with the built-in secret."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from maglev import config as cfg
from maglev.control.instance import flow_secret_warning
from maglev.control.tables import destinations, vip_fingerprint
from maglev.hashing import build_table, flow_hash_digest
from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing.packets import write_pcap
from maglev.testing.wait import wait_until
from tests.run_helpers import maglev_ctl

SECRET = "0123456789abcdef0f1e2d3c4b5a6978"
OTHER = "fedcba98765432100f1e2d3c4b5a6978"
VIP = "203.0.113.10:80/tcp"


def _toml(name: str, secret: str | None, order: tuple[int, ...] = (1, 2, 3), encap: str = "gre",
          port3: int = 13) -> str:
    lines = ["[instance]", f'name = "{name}"', 'source_ipv4 = "198.18.2.2"']
    if secret is not None:
        lines.append(f'flow_hash_secret = "{secret}"')
    lines += ["[[vip]]", 'address = "203.0.113.10"', "port = 80", f'encap = "{encap}"', "table_size = 251"]
    for i in order:
        last = port3 if i == 3 else 10 + i
        lines += ["[[vip.backend]]", f'address = "198.18.2.{last}"', f'name = "be{i}"', 'mac = "02:00:00:00:00:01"']
    return "\n".join(lines) + "\n"


def _fp(text: str, engine: str = "c") -> str:
    c = cfg.loads(text)
    v = c.vips[0]
    t = build_table(((b.key, b.weight) for b in v.backends), v.table_size, engine)
    return vip_fingerprint(v, t, c.instance.flow_hash_secret)


def test_same_deployment_same_fingerprint_on_independent_builds():
    # Two instances: other names, backends listed in another order, the other engine.
    a = _fp(_toml("mg1", SECRET, (1, 2, 3)), "c")
    b = _fp(_toml("mg2", SECRET, (3, 1, 2)), "python")
    assert a == b
    assert len(a) == 16 and int(a, 16) >= 0


def test_every_input_changes_the_fingerprint():
    base = _fp(_toml("mg1", SECRET))
    variants = {
        "secret": _fp(_toml("mg1", OTHER)),
        "built-in secret": _fp(_toml("mg1", None)),
        "backend set": _fp(_toml("mg1", SECRET, (1, 2))),
        "backend address (same name)": _fp(_toml("mg1", SECRET, port3=99)),
        "encapsulation": _fp(_toml("mg1", SECRET, encap="ipip")),
        "weights": _fp(_toml("mg1", SECRET).replace('name = "be1"', 'name = "be1"\nweight = 3')),
        "table size": _fp(_toml("mg1", SECRET).replace("table_size = 251", "table_size = 257")),
    }
    for what, fp in variants.items():
        assert fp != base, what
    assert len(set(variants.values())) == len(variants)


def test_the_secret_enters_only_as_a_keyed_digest():
    d = flow_hash_digest(SECRET)
    assert d == flow_hash_digest(bytes.fromhex(SECRET)) and len(d) == 16
    assert d != flow_hash_digest(OTHER)
    raw = bytes.fromhex(SECRET)
    assert raw not in d and SECRET not in d.hex()
    t = build_table([("a", 1), ("b", 1)], 13)
    assert t.fingerprint() == t.fingerprint(None, None)  # the table alone: golden vectors hold
    assert t.fingerprint(SECRET) != t.fingerprint()
    for bad in ("00", b"\0" * 15, "zz" * 16):
        with pytest.raises(ValueError):
            flow_hash_digest(bad)


def test_destinations_name_the_delivery():
    c = cfg.loads(_toml("mg1", SECRET, encap="vxlan"))
    d = destinations(c.vips[0])
    assert d["be1"] == "vxlan 198.18.2.11 mac=02:00:00:00:00:01 vni=1 port=4789"
    c = cfg.loads(_toml("mg1", SECRET))
    assert destinations(c.vips[0])["be3"] == "gre 198.18.2.13"


def test_warning_only_for_the_built_in_secret():
    assert flow_secret_warning(cfg.loads(_toml("mg1", SECRET))) is None
    w = flow_secret_warning(cfg.loads(_toml("mg1", None)))
    assert w and "flow_hash_secret" in w and cfg.DEFAULT_FLOW_HASH_SECRET not in w
    # the built-in sample config is the lab's (as for `maglev doctor`): no warning
    sample = cfg.load(cfg.SAMPLE_CONFIG)
    assert sample.instance.flow_hash_secret == cfg.DEFAULT_FLOW_HASH_SECRET
    assert flow_secret_warning(sample, cfg.SAMPLE_CONFIG) is None
    assert flow_secret_warning(sample, "/etc/maglev/maglev.toml") is not None


@contextlib.contextmanager
def _running(tmp: Path, name: str, text: str):
    d = tmp / name
    d.mkdir()
    conf = d / "maglev.toml"
    conf.write_text(text)
    empty = write_pcap(d / "empty.pcap", [])
    control = f"ipc://{d}/ctl.sock"
    env = {**os.environ, "MAGLEV_STATE_DIR": str(d / "state"), "MAGLEV_RUN_DIR": str(d / "run")}
    err = open(d / "stderr.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--config", str(conf),
         "--nic", f"pcap:{empty}", "--workers", "1", "--control", control, "--json"],
        stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        def ready() -> dict | None:
            if proc.poll() is not None:
                raise AssertionError(f"maglev run {name} exited: {(d / 'stderr.log').read_text()[-2000:]}")
            if not Path(f"{d}/ctl.sock").exists():
                return None
            r = maglev_ctl(control, "status", "--json")
            return json.loads(r.stdout) if r.returncode == 0 else None

        status = wait_until(ready, 60, f"status of {name}")
        human = maglev_ctl(control, "status")
        assert human.returncode == 0, human.stderr
        yield status, human.stdout, d / "stderr.log"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        err.close()
        remove_recorded(str(d))  # the connection tables the runs kept for adoption


@pytest.mark.slow
def test_status_fingerprints_across_instances_and_the_secret_warning(tmp_path):
    with (
        _running(tmp_path, "a", _toml("a", SECRET, (1, 2, 3))) as (sa, ha, la),
        _running(tmp_path, "b", _toml("b", SECRET, (2, 3, 1))) as (sb, hb, lb),
        _running(tmp_path, "c", _toml("c", None)) as (sc, hc, lc),
    ):
        fa, fb, fc = ({t["vip"]: t["fingerprint"] for t in s["tables"]}[VIP] for s in (sa, sb, sc))
        assert fa == fb, "same deployment config on two instances: equal fingerprints"
        assert fc != fa, "another flow-hash secret: another fingerprint"
        assert fa == _fp(_toml("x", SECRET))  # what `maglev table --config` computes offline
        for status, human in ((sa, ha), (sb, hb), (sc, hc)):
            text = json.dumps(status) + human
            for secret in (SECRET, cfg.DEFAULT_FLOW_HASH_SECRET):
                assert secret not in text.lower()
        assert sa["warnings"] == [] and "WARNING" not in ha
        assert len(sc["warnings"]) == 1 and "flow_hash_secret" in sc["warnings"][0]
        assert hc.count("WARNING") == 1
        assert "WARNING" not in la.read_text()
        assert [ln for ln in lc.read_text().splitlines() if "WARNING" in ln] == [
            f"maglev run: WARNING: {sc['warnings'][0]}"
        ]
