"""The null sink (``--out null``): transmit means "count and discard".  Benchmarks use it
so the measured rate is the pipeline's, not a file's or a socket's."""

from __future__ import annotations

from typing import Any


class NullSink:
    kind = "null"

    def __init__(self) -> None:
        self.packets = 0
        self.calls = 0

    def tx_burst(self, pool: Any, descs: Any, n: int) -> int:
        self.packets += n
        self.calls += 1
        return n

    def stats(self) -> dict[str, Any]:
        return {"tx_packets": self.packets, "tx_calls": self.calls}

    def close(self) -> None:
        pass
