"""Hostile config files through ``maglev check`` and through a live reload.

Hypothesis mutates the sample configs (wrong types, deleted keys, duplicated VIPs and
backends, unknown keys, out-of-range and huge numbers, unicode: the generators of
tests/config/test_fuzz.py) and their bytes (TOML syntax errors, stray bytes, not UTF-8).

* ``maglev check FILE``: exit 0 exactly when the loader accepts the file, else exit 2 with
  one ``maglev: error: <path>: <problem>`` line per problem; never a traceback.
* ``reload`` of the same file by a live config-manager actor (its own process, real shared
  memory, tests/control/test_fuzz_wire.py's ``LiveActor``): an invalid file gets an
  ``invalid-config`` reply with the same problems, and nothing changes -- generation, the
  state file and the run's accepted config (``config.json``) keep their bytes; a valid one
  is applied (or refused with ``needs-force`` when it would empty a VIP), never ``internal``.
"""

from __future__ import annotations

import json
import random
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maglev import config
from maglev.control.persist import run_config_path
from maglev.control.protocol import pack
from maglev.errors import ConfigError
from maglev_cli.main import cli
from tests.config.test_fuzz import SAMPLE_TEXTS, mutate, scalars, to_toml
from tests.control.test_fuzz_wire import CONFIG, LiveActor

SAMPLE_DATA = [tomllib.loads(t) for t in SAMPLE_TEXTS]
BASE_TOML = config.dump_toml(config.Config.from_dict(CONFIG))  # the live actor's file
BASE_DATA = tomllib.loads(BASE_TOML)


def byte_mutation(text: str, edits: list[tuple[int, int, int]]) -> bytes:
    raw = bytearray(text.encode())
    for pos, byte, op in edits:
        pos %= len(raw) + 1
        if op == 0 and pos < len(raw):
            raw[pos] = byte
        elif op == 1:
            raw.insert(pos, byte)
        elif pos < len(raw):
            del raw[pos]
    return bytes(raw)


def problems_of(path: Path) -> list[str] | None:
    """The loader's verdict on ``path``: None when valid, else its problem lines."""
    try:
        config.load(path)
    except ConfigError as exc:
        return exc.problems
    return None


def mutated_samples() -> st.SearchStrategy[bytes]:
    structural = st.builds(
        lambda which, seed, value, n, style: to_toml(mutate(SAMPLE_DATA[which], random.Random(seed), value, n),
                                                     style).encode(),
        st.integers(0, len(SAMPLE_DATA) - 1), st.integers(0, 2**32), scalars, st.integers(1, 4), st.integers(0, 1))
    edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.integers(0, 2)), min_size=1, max_size=6)
    raw = st.builds(lambda which, e: byte_mutation(SAMPLE_TEXTS[which], e),
                    st.integers(0, len(SAMPLE_TEXTS) - 1), edits)
    return st.one_of(structural, raw)


def test_check_accepts_the_samples(tmp_path):
    for i, text in enumerate(SAMPLE_TEXTS):
        p = tmp_path / f"s{i}.toml"
        p.write_text(text)
        r = CliRunner().invoke(cli, ["check", str(p)])
        assert r.exit_code == 0 and r.output.startswith(f"{p}: ok: instance "), r.output


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(mutated_samples())
def test_check_exits_2_with_one_line_per_problem_or_0(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("check") / "c.toml"
    path.write_bytes(raw)
    r = CliRunner().invoke(cli, ["check", str(path)])
    assert r.exception is None or isinstance(r.exception, SystemExit), (r.output, r.exc_info)
    assert "Traceback" not in r.output
    want = problems_of(path)
    if want is None:
        assert r.exit_code == 0 and r.output.startswith(f"{path}: ok:"), r.output
    else:
        assert r.exit_code == 2, r.output
        assert r.stderr.splitlines() == [f"maglev: error: {p}" for p in want]
        assert all(": " in p and "\n" not in p for p in want)


def test_check_json_and_unreadable_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[instance]\nname = 5\n[[vip]]\naddress = "x"\n')
    r = CliRunner().invoke(cli, ["check", str(bad), "--json"])
    assert r.exit_code == 2
    assert json.loads(r.stdout) == {"ok": False, "file": str(bad), "problems": [
        "instance.name: 5 is not a string", "vip[0].address: 'x' is not an IP address"]}
    for path, why in ((tmp_path / "missing.toml", "No such file or directory"), (tmp_path, "Is a directory")):
        r = CliRunner().invoke(cli, ["check", str(path)])
        assert r.exit_code == 2 and r.stderr == f"maglev: error: {path}: cannot read: {why}\n", r.output


@pytest.fixture(scope="module")
def actor():
    pytest.importorskip("maglev.rings")
    a = LiveActor()
    try:
        yield a
    finally:
        a.close()


def _reload(actor: LiveActor, force: bool = False) -> dict:
    actor._ids += 1
    r = actor.exchange([pack({"v": 1, "id": f"r{actor._ids}", "op": "reload", "args": {"force": force}})], 30)
    assert r is not None and r["id"] == f"r{actor._ids}"
    return r


def _snapshot(actor: LiveActor) -> tuple[int, bytes, bytes, dict]:
    gen, state = actor.snapshot()
    run = run_config_path(actor.dir / "run").read_bytes()
    return gen, state, run, actor.call("get-config")["config"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.one_of(
    st.builds(lambda seed, value, n, style: to_toml(mutate(BASE_DATA, random.Random(seed), value, n), style).encode(),
              st.integers(0, 2**32), scalars, st.integers(1, 3), st.integers(0, 1)),
    st.builds(lambda e: byte_mutation(BASE_TOML, e),
              st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.integers(0, 2)), min_size=1,
                       max_size=4)),
))  # fmt: skip
def test_live_reload_of_a_hostile_file_is_refused_whole_or_applied(actor, raw):
    src = actor.dir / "maglev.toml"
    before = _snapshot(actor)
    src.write_bytes(raw)
    try:
        want = problems_of(src)
        r = _reload(actor)
        assert actor.proc.poll() is None, actor.log_text()
        if want is not None or not r["ok"]:
            assert not r["ok"]
            code = r["error"]["code"]
            assert code in ("invalid-config", "needs-force"), r["error"]
            if want is not None:
                assert code == "invalid-config" and r["error"]["details"][:50] == want[:50], r["error"]
            assert _snapshot(actor) == before  # nothing changed anywhere
        else:
            after = _snapshot(actor)
            assert after[3] == config.Config.from_dict(config.read_document(src)).to_dict() or \
                r["result"]["changed"] is False
            assert json.loads(after[1]) == json.loads(after[2])  # the state file and the run's config agree
    finally:
        src.write_text(BASE_TOML)
        back = _reload(actor, force=True)
        assert back["ok"], back
    assert "Traceback" not in actor.log_text(100_000)


def test_check_a_sharded_file_whole_or_one_shard(tmp_path, monkeypatch):
    from tests.config.test_shards import BASE

    monkeypatch.delenv(config.SHARD_ENV, raising=False)
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(BASE)
    bad.write_text(BASE.replace('address = "198.18.1.2"', 'address = "nope"'))
    r = CliRunner().invoke(cli, ["check", str(good)])
    assert r.exit_code == 0 and r.output == f"{good}: ok: instance edge, 2 VIP(s), 2 backend(s), shards a, b\n"
    r = CliRunner().invoke(cli, ["check", str(bad)])
    assert r.exit_code == 2 and r.stderr == "maglev: error: shard[1].vip[0].backend[0].address: 'nope' is not an IP address\n"
    r = CliRunner().invoke(cli, ["check", str(bad), "--shard", "a", "--json"])  # only a's section, as `run --shard a`
    assert r.exit_code == 0 and json.loads(r.output)["instance"] == "edge-a"
    r = CliRunner().invoke(cli, ["check", str(good), "--shard", "zz"])
    assert r.exit_code == 2 and r.stderr == "maglev: error: shard: no shard named 'zz' (the file has: 'a', 'b')\n"
