"""Property tests of the config loader against hostile input (issue 15, item 1): random
bytes, random TOML documents built from random nested data, and mutations of the sample
configs go to the loader (``parse_document``/``loads``/``Config.from_dict``), to the
client half of ``maglev ctl apply`` (read the file, validate) and to the config manager's
validation of a ``replace-config`` request, in process.  Each must give a valid config or a
clean ``ConfigError`` (an error reply, never ``internal``), nothing else."""

from __future__ import annotations

import datetime
import math
import os
import random
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maglev import config
from maglev.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = [ROOT / "examples" / "sample.toml", ROOT / "maglev" / "data" / "sample.toml"]
SAMPLE_TEXTS = [p.read_text() for p in SAMPLES]
SAMPLE_DATA = [tomllib.loads(t) for t in SAMPLE_TEXTS]

# Keys the validator knows, so random documents reach deep into it, plus anything at all.
KNOWN_KEYS = sorted({
    "instance", "conntrack", "vip", "bgp", "control", "tracing", "name", "source_ipv4", "source_ipv6", "mtu",
    "flow_hash_secret", "pool", "allow_loopback_backends", "capacity", "tcp_timeout_s", "udp_timeout_s",
    "address", "port", "protocol", "encap", "table_size", "allow_fragments", "vxlan_vni", "vxlan_port",
    "health", "backend", "weight", "mac", "type", "path", "expect_status", "send", "expect", "interval_ms",
    "timeout_ms", "rise", "fall", "local_asn", "router_id", "next_hop_ipv4", "next_hop_ipv6", "listen_port",
    "peer", "listen_address", "connect_retry_time", "asn", "hold_time", "passive", "local_address",
    "endpoint", "events_endpoint", "server_secret_key_file", "authorized_keys_file", "otlp_endpoint",
    "packet_sample_rate",
})
ADDRESSES = ["203.0.113.10", "198.18.1.11", "2001:db8::10", "0.0.0.0", "::", "255.255.255.255", "224.0.0.1",
             "127.0.0.1", "::1", "fe80::1%eth0", "169.254.0.1", "::ffff:1.2.3.4", "240.0.0.1", "10.0.0.x", ""]

keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=12)
scalars = (
    st.integers(-(1 << 70), 1 << 70)
    | st.sampled_from([0, 1, 2, 80, 65535, 65537, 1 << 63, -1, 23456])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.text(max_size=20)
    | st.sampled_from(ADDRESSES + ["tcp", "udp", "gre", "ipip", "vxlan", "l2", "http", "/", "02:00:00:00:00:01"])
    | st.dates()
    | st.datetimes()
)
documents = st.dictionaries(
    keys,
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                 max_leaves=25),
    max_size=6,
)


# ------------------------------------------------------------- a TOML writer for any data


def _toml_key(k: str) -> str:
    return _toml_scalar(k)


def _toml_scalar(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        out = []
        for c in v:
            if c in '"\\':
                out.append("\\" + c)
            elif ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF:
                out.append(f"\\u{ord(c):04x}" if not 0xD800 <= ord(c) <= 0xDFFF else "?")
            else:
                out.append(c)
        return '"' + "".join(out) + '"'
    if isinstance(v, datetime.datetime | datetime.date):
        return v.isoformat()
    raise TypeError(type(v))


def _toml_inline(v: object) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_inline(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_inline(x) for x in v) + "]"
    return _toml_scalar(v)


def to_toml(doc: dict, style: int = 0) -> str:
    """Scalars as ``k = v``; tables as ``[k]`` sections (style 1) or inline (style 0);
    arrays of tables as ``[[k]]`` (style 1) -- two shapes of the same data."""
    lines: list[str] = []
    later: list[str] = []
    for k, v in doc.items():
        key = _toml_key(k)
        if style and isinstance(v, dict) and v and all(not isinstance(x, dict | list) for x in v.values()):
            later.append(f"[{key}]")
            later += [f"{_toml_key(kk)} = {_toml_inline(x)}" for kk, x in v.items()]
        elif style and isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                later.append(f"[[{key}]]")
                later += [f"{_toml_key(kk)} = {_toml_inline(x)}" for kk, x in item.items()]
        else:
            lines.append(f"{key} = {_toml_inline(v)}")
    return "\n".join(lines + later) + "\n"


# ------------------------------------------------------------- the oracle


def check(outcome: config.Config | ConfigError) -> None:
    if isinstance(outcome, ConfigError):
        assert outcome.problems, "a ConfigError without problems"
        for p in outcome.problems:
            assert ": " in p and "\n" not in p, p
            assert len(p) < 1000, p[:200]
        return
    assert isinstance(outcome, config.Config)
    assert config.loads(config.dump_toml(outcome)) == outcome  # a valid config persists


def outcome_of(fn, *args) -> config.Config | ConfigError:
    try:
        return fn(*args)
    except ConfigError as exc:
        return exc


def manager_validation(data: object) -> None:
    """The config manager's path for ``replace-config``: the op's validation, in process."""
    from maglev.control import ops
    from maglev.control.protocol import ProtocolError

    try:
        new = ops.replace_config(config.Config(), {"config": data})
    except ProtocolError as exc:
        assert exc.code != "internal", exc.message
    else:
        assert isinstance(new, config.Config)


# MAGLEV_CONFIG_FUZZ_EXAMPLES=5000 for a longer run (docs/config.md).
FUZZ = settings(max_examples=int(os.environ.get("MAGLEV_CONFIG_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(raw):
    check(outcome_of(config.loads, raw))


@FUZZ
@given(documents, st.integers(0, 1))
def test_random_toml_documents(doc, style):
    text = to_toml(doc, style)
    check(outcome_of(config.loads, text))
    data = tomllib.loads(text)
    check(outcome_of(config.Config.from_dict, data))
    manager_validation(data)


@FUZZ
@given(st.recursive(scalars | st.none() | st.binary(max_size=8) | st.text(alphabet=st.characters(), max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
                    | st.dictionaries(keys | st.integers() | st.binary(max_size=4), inner, max_size=4),
                    max_leaves=30))
def test_random_python_data(data):
    """What msgpack or an in-process caller may hand over: None, bytes, tuples, non-string
    keys, lone surrogates."""
    check(outcome_of(config.Config.from_dict, data))
    manager_validation(data)


def _leaves(d: object, path: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            out.append(path + (k,))
            out += _leaves(v, path + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.append(path + (i,))
            out += _leaves(v, path + (i,))
    return out


def mutate(data: dict, rnd: random.Random, value: object, n: int) -> dict:
    import copy

    d = copy.deepcopy(data)
    for _ in range(n):
        paths = _leaves(d)
        if not paths:
            break
        path = rnd.choice(paths)
        parent = d
        for p in path[:-1]:
            parent = parent[p]
        last = path[-1]
        op = rnd.randrange(5)
        if op == 0:
            parent[last] = value  # replace with a random value
        elif op == 1:
            del parent[last]
        elif op == 2 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))  # duplicate an element (duplicate VIP/backend)
        elif op == 3:
            parent[last] = [parent[last]]  # wrap in an array
        elif isinstance(parent, dict):
            parent[f"{last}_"] = value  # an unknown key
    return d


@FUZZ
@given(st.integers(0, len(SAMPLE_DATA) - 1), st.integers(0, 2**32), scalars, st.integers(1, 4), st.integers(0, 1))
def test_mutated_sample_configs(which, seed, value, n, style):
    d = mutate(SAMPLE_DATA[which], random.Random(seed), value, n)
    check(outcome_of(config.Config.from_dict, d))
    manager_validation(d)
    check(outcome_of(config.loads, to_toml(d, style)))


@FUZZ
@given(st.integers(0, len(SAMPLE_TEXTS) - 1), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255),
                                                                 st.integers(0, 2)), min_size=1, max_size=6))
def test_byte_mutations_of_the_sample_files(which, edits):
    raw = bytearray(SAMPLE_TEXTS[which].encode())
    for pos, byte, op in edits:
        pos %= len(raw) + 1
        if op == 0 and pos < len(raw):
            raw[pos] = byte
        elif op == 1:
            raw.insert(pos, byte)
        elif pos < len(raw):
            del raw[pos]
    check(outcome_of(config.loads, bytes(raw)))


def test_the_samples_are_valid():
    for text in SAMPLE_TEXTS:
        check(config.loads(text))


# ------------------------------------------------------------- maglev ctl apply, end to end


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), documents.map(to_toml).map(str.encode),
                 st.integers(0, 2**32).map(lambda s: to_toml(mutate(SAMPLE_DATA[0], random.Random(s),
                                                                    "0.0.0.0", 2), 1).encode())))
def test_ctl_apply_exits_2_or_gets_to_the_socket(tmp_path_factory, raw):
    """The client half of ``maglev ctl apply``: a bad file exits 2 with one error line per
    problem; a valid one gets as far as the (absent) server."""
    path = tmp_path_factory.mktemp("apply") / "c.toml"
    path.write_bytes(raw)
    r = CliRunner().invoke(
        __import__("maglev_cli.main", fromlist=["cli"]).cli,
        ["ctl", "--control", f"ipc://{path.parent}/none.sock", "--timeout", "0.2", "apply", str(path)],
    )
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    try:
        data = config.read_document(path)
        config.Config.from_dict(data)
    except ConfigError as exc:
        assert r.stderr.splitlines() == [f"maglev: error: {p}" for p in exc.problems]
    else:
        # The config was fine: the client went on to the socket, where no server answers.
        assert len(r.stderr.splitlines()) == 1 and f"{path.parent}/none.sock" in r.stderr, r.stderr


def test_manager_replies_to_hostile_replace_config_without_internal_errors():
    """The running config manager's handler, not just the op: every hostile document is
    answered with an error reply (or applied when valid), never ``internal``."""
    from maglev.control.manager import ConfigManager
    from maglev.control.protocol import Request
    from maglev.control.publisher import ThreadedPublisher
    from maglev.testing.tables import fallback_build_tables

    start = config.loads(SAMPLE_TEXTS[0])
    rnd = random.Random(15)
    hostile = [
        {"vip": [{"address": "fe80::1%eth0"}]},
        {"vip": [{"address": "203.0.113.10", "backend": [{"address": "224.0.0.1"}]}]},
        {"instance": {"mtu": 10**5000}},
        {"instance": {"name": "x\ud800"}},
        {"vip": [[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]},
        {"vip": [{"address": "0.0.0.0"}] * 5000},
    ] + [mutate(SAMPLE_DATA[0], rnd, v, 3) for v in ("0.0.0.0", 1e309, True, -1, "", [None])]
    with ThreadedPublisher(workers=1) as pub:
        mgr = ConfigManager(start, pub, build_tables=fallback_build_tables)
        mgr._publish_initial()
        for data in hostile:
            reply = mgr.handle(Request("replace-config", {"config": data}))
            if not reply.ok:
                assert reply.error["code"] != "internal", reply.error
        assert mgr.counters.errors.get("internal", 0) == 0


@pytest.mark.parametrize("n", [10, 1000])
def test_many_problems_stay_bounded(n):
    d = {"vip": [{"address": "0.0.0.0", "port": -1, "colour": 1}] * n}
    with pytest.raises(ConfigError) as exc:
        config.Config.from_dict(d)
    assert len(exc.value.problems) <= 101
