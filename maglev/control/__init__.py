"""The control plane: config changes, the ZeroMQ control socket and its protocol.

Public surface:

* :class:`ConfigManager` -- owns the config, applies changes all-or-nothing, publishes
  tables through a :class:`TablePublisher`, persists the accepted config;
* :class:`ControlServer` / :class:`ControlClient` -- the ROUTER/PUB endpoints and a client;
* ``protocol`` -- the versioned msgpack envelope (docs/control-protocol.md).

Submodules import ZeroMQ lazily, so ``maglev.control.ops`` is usable without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from maglev.control.manager import ConfigManager
from maglev.control.protocol import ProtocolError, Reply, Request
from maglev.control.publisher import RegionPublisher, TablePublisher, ThreadedPublisher

if TYPE_CHECKING:
    from maglev.control.client import ControlClient
    from maglev.control.server import ControlServer

__all__ = [
    "ConfigManager",
    "ControlClient",
    "ControlServer",
    "ProtocolError",
    "RegionPublisher",
    "Reply",
    "Request",
    "TablePublisher",
    "ThreadedPublisher",
]


def __getattr__(name: str) -> Any:
    if name == "ControlServer":
        from maglev.control.server import ControlServer

        return ControlServer
    if name == "ControlClient":
        from maglev.control.client import ControlClient

        return ControlClient
    raise AttributeError(name)
