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
    from maglev.testing.tables import fallback_build_tables

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
    # (preview-config reports "changed" but commits nothing: "committed" is false)
    if isinstance(reply.result, dict) and reply.result.get("changed") and reply.result.get("committed", True):
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


addresses = st.sampled_from(["198.18.1.1", "198.18.1.2", "198.18.1.3", "198.18.1.9", "2001:db8::5",
                             "10.0.0.x", "", "198.18.1.1 "])
vip_names = st.sampled_from([VIP, "203.0.113.10", "203.0.113.10:80", "203.0.113.11:80/tcp", "[2001:db8::1]:1/tcp"])
weights = st.one_of(st.integers(-2, 70000), st.sampled_from([0, 1, 2, 65535]), st.text(max_size=3))
requests = st.one_of(
    st.builds(lambda v, b, w: ("set-weight", {"vip": v, "backend": b, "weight": w}), vip_names, addresses, weights),
    st.builds(lambda v, b: ("drain", {"vip": v, "backend": b}), vip_names, addresses),
    st.builds(lambda v, a, w: ("add-backend", {"vip": v, "backend": {"address": a, "weight": w}}),
              vip_names, addresses, weights),
    st.builds(lambda v, b: ("remove-backend", {"vip": v, "backend": b}), vip_names, addresses),
    st.builds(lambda v, p: ("update-vip", {"vip": v, "set": {"port": p}}), vip_names, st.integers(-1, 70000)),
    st.builds(lambda a, p: ("add-vip", {"vip": {"address": a, "port": p}}), addresses, st.integers(-1, 70000)),
    st.builds(lambda v: ("remove-vip", {"vip": v}), vip_names),
    st.builds(lambda v, b, up: ("health-report", {"reports": [{"vip": v, "backend": b, "up": up}]}),
              vip_names, addresses, st.booleans()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests, min_size=1, max_size=12))
def test_random_change_sequences_keep_every_invariant(seq):
    """After every request, accepted or not: the config validates, the state file holds
    exactly it, and the published generation is the manager's and every worker's."""
    import tempfile
    from pathlib import Path

    from maglev.control import persist
    from maglev.control.publisher import ThreadedPublisher
    from maglev.testing.tables import fallback_build_tables

    with tempfile.TemporaryDirectory(prefix="mgc-prop-") as d, ThreadedPublisher(workers=2) as pub:
        state = Path(d) / "state.json"
        m = ConfigManager(Config.from_dict(BASE), pub, state_path=state, build_tables=fallback_build_tables)
        persist.save_state(state, m.config)
        m._publish_initial()
        for op, args in seq:
            before, gen = m.config, m.generation
            r = m.handle(Request(op=op, args=args, id=1))
            if not r.ok:
                assert r.error["code"] in ERROR_CODES and r.error["code"] != "internal", r.error
                assert m.config is before and m.generation == gen
            assert Config.from_dict(m.config.to_dict()) == m.config
            assert persist.load_state(state)[0] == m.config
            assert pub.generation == m.generation and pub.seen == [m.generation] * 2
