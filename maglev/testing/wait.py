"""Bounded polling for tests: every wait has a deadline and says what it waited for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Call ``fn`` until it returns something truthy and return that; after ``timeout``
    seconds raise AssertionError naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
