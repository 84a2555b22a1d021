"""Property tests: random bytes and random well-formed-but-wrong requests never crash the
control plane and never half-apply a change."""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maglev.config import Config, dump_toml, loads
from maglev.control.manager import OPS, ConfigManager
from maglev.control.protocol import ERROR_CODES, ProtocolError, Request, decode_request

VIP = "203.0.113.10:80/tcp"
BASE = {
    "instance": {"name": "p1", "source_ipv4": "198.18.0.1"},
    "vip": [
        {
            "address": "203.0.113.10",
            "port": 80,
            "table_size": 13,
            "health": {"type": "tcp"},
            "backend": [{"address": "198.18.1.1"}, {"address": "198.18.1.2", "name": "b2"}],
        }
    ],
}


class InstantPublisher:
    def __init__(self):
        self.generation = 0

    def publish(self, blob: bytes) -> int:
        self.generation += 1
        return self.generation

    def wait_all_seen(self, generation: int, timeout: float) -> bool:
        return True


def manager() -> ConfigManager:
    from maglev.control.tables import fallback_build_tables

    m = ConfigManager(Config.from_dict(BASE), InstantPublisher(), build_tables=fallback_build_tables)
    m._publish_initial()
    return m


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True),
    st.text(max_size=20), st.binary(max_size=20),
    st.sampled_from([VIP, "203.0.113.10", "198.18.1.1", "b2", "2001:db8::1", "", "x" * 300]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["address", "weight", "name", "port", "vip", "backend", "health",
                                         "type", "table_size", "set", "config", "mac", "up", "reports"]), inner, max_size=4),
    ),
    max_leaves=12,
)
arg_maps = st.dictionaries(
    st.sampled_from(["vip", "backend", "weight", "set", "config", "reports", "full", "junk"]), values, max_size=4
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoder(data):
    try:
        decode_request(data)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(OPS + ("bogus",)), arg_maps)
def test_wrong_requests_error_or_apply_completely(op, args):
    m = manager()
    before, gen = m.config, m.generation
    reply = m.handle(Request(op=op, args=args, id=1))
    msgpack.packb(reply.__dict__ | {"error": reply.error}, use_bin_type=True)  # encodable
    if not reply.ok:
        assert reply.error["code"] in ERROR_CODES and reply.error["code"] != "internal", reply.error
        assert m.config is before and m.generation == gen
        return
    # Accepted: the new config is whole and valid, and survives the file round trip.
    assert loads(dump_toml(m.config)) == m.config
    if isinstance(reply.result, dict) and reply.result.get("changed"):
        assert m.generation == gen + 1


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_over_the_socket(served_module, data):
    from maglev.control.protocol import decode_reply

    c = served_module
    c.send_raw([data])
    frames = c.recv_raw(5)
    assert frames is not None
    r = decode_reply(frames[0])
    if not r.ok:
        assert r.error["code"] in ERROR_CODES
