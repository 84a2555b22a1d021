"""Test doubles for the actor runtime (usable by anyone's tests, trio.testing-style; in
maglev/testing/ with the other test helpers, so no production package carries one).

``Sleeper`` does no work: it heart-beats, sleeps on its mailbox, counts its ticks, and can
be told to crash (``params["crash_after_s"]``) or to take a while to drain
(``params["drain_s"]``) so the supervisor's restart and stop paths can be tested without a
data path.
"""

from __future__ import annotations

import os
import time
from typing import Any

from maglev.actors.base import Actor


class Sleeper(Actor):
    kind = "sleeper"

    def setup(self) -> None:
        self.ticks = 0
        self.t0 = time.monotonic()
        if self.params.get("fail_setup"):
            raise RuntimeError("setup failure requested by the test")

    def step(self) -> int:
        crash = self.params.get("crash_after_s")
        if crash is not None and time.monotonic() - self.t0 > float(crash):
            os._exit(17)  # an unexpected death, as a crash would be
        return 0

    def tick(self, now: float) -> None:
        self.ticks += 1
        super().tick(now)

    def drain(self) -> None:
        time.sleep(float(self.params.get("drain_s", 0)))

    def handle(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "echo":
            self.send("echo", body=msg.get("body"))

    def stats(self) -> dict[str, Any]:
        return {"ticks": getattr(self, "ticks", 0), "incarnation": self.spec.incarnation}
