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
