"""A test double of the config-manager actor (a module of its own: importing it pulls in
the control plane, which the do-nothing actors of ``maglev.testing.actors`` do not need)."""

from __future__ import annotations

from typing import Any

from maglev.actors.config_manager import ConfigManagerActor


class ThreadedConfigManager(ConfigManagerActor):
    """The config-manager actor over an in-process model of the workers
    (``ThreadedPublisher``) instead of a shared-memory region: its requests, table builds,
    persistence and heartbeats are the real ones, with no data path.  Params besides the
    actor's: ``workers`` (2), ``stall`` (a worker index that never switches: every
    publication waits ``confirm_timeout``), ``lag_s`` (each worker's delay)."""

    kind = "config"

    def make_publisher(self) -> Any:
        from maglev.control.publisher import ThreadedPublisher

        p = self._threaded = ThreadedPublisher(int(self.params.get("workers", 2)), float(self.params.get("lag_s", 0.0)))
        stall = int(self.params.get("stall", -1))
        if stall >= 0:
            p.stall(stall)
        return p

    def teardown(self) -> None:
        super().teardown()
        if getattr(self, "_threaded", None) is not None:
            self._threaded.close()
