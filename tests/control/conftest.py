"""Shared builders for the control-plane tests."""

from __future__ import annotations

from typing import Any

from maglev.config import Config

VIP = "203.0.113.10:80/tcp"


def config_dict(n_backends: int = 3, health: dict[str, Any] | None = None, size: int = 251) -> dict[str, Any]:
    return {
        "instance": {"name": "t1", "source_ipv4": "198.18.0.1"},
        "vip": [
            {
                "address": "203.0.113.10",
                "port": 80,
                "protocol": "tcp",
                "table_size": size,
                "health": health or {"type": "tcp", "interval_ms": 100, "timeout_ms": 50, "rise": 1, "fall": 1},
                "backend": [{"address": f"198.18.1.{i + 1}", "weight": 1} for i in range(n_backends)],
            }
        ],
    }


def make_config(n_backends: int = 3, **kw: Any) -> Config:
    return Config.from_dict(config_dict(n_backends, **kw))


import pytest  # noqa: E402

from maglev.control.publisher import ThreadedPublisher  # noqa: E402


@pytest.fixture
def publisher():
    with ThreadedPublisher(workers=3) as p:
        yield p


@pytest.fixture
def cfgdict():
    return config_dict


@pytest.fixture
def mkconfig():
    return make_config


import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402


class Served:
    """A ConfigManager behind a ControlServer polled by a background thread."""

    def __init__(self, mgr, server):
        self.mgr, self.server = mgr, server
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            self.server.poll(20)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def served(publisher, shortdir):
    from maglev.control.manager import ConfigManager
    from maglev.control.server import ControlServer
    from maglev.testing.tables import fallback_build_tables

    holder = {}
    mgr = ConfigManager(make_config(3), publisher, state_path=shortdir / "state.json",
                        emit=lambda t, b: holder["srv"].publish(t, b), build_tables=fallback_build_tables)
    server = ControlServer(mgr.handle, f"ipc://{shortdir}/control.sock", f"ipc://{shortdir}/events.sock")
    holder["srv"] = server
    mgr._publish_initial()
    s = Served(mgr, server)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def served_module():
    """A client connected to a served manager, shared by a module's hypothesis examples."""
    from maglev.control.client import ControlClient
    from maglev.control.manager import ConfigManager
    from maglev.control.server import ControlServer
    from maglev.testing.tables import fallback_build_tables

    d = Path(tempfile.mkdtemp(prefix="mgc-", dir="/tmp"))
    pub = ThreadedPublisher(workers=1)
    mgr = ConfigManager(make_config(2), pub, build_tables=fallback_build_tables)
    mgr._publish_initial()
    server = ControlServer(mgr.handle, f"ipc://{d}/control.sock")
    s = Served(mgr, server)
    client = ControlClient(server.bound_endpoint)
    try:
        yield client
    finally:
        client.close()
        s.close()
        pub.close()
        shutil.rmtree(d, ignore_errors=True)
