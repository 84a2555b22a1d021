"""Rise/fall hysteresis, as keepalived and HAProxy do it.

A check flips to *down* after ``fall`` consecutive failures and back to *up* after ``rise``
consecutive successes, so one lost probe does not move flows.  The very first verdict is
taken at once (state *unknown* -> up or down after one probe): at start nothing is known,
and waiting ``rise`` probes before serving, or ``fall`` probes before dropping a dead
backend, would both be wrong.  Until that first verdict the config manager treats the
backend as up.
"""

from __future__ import annotations


class RiseFall:
    def __init__(self, rise: int, fall: int):
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be at least 1")
        self.rise = rise
        self.fall = fall
        self.up: bool | None = None
        self.ok_run = 0
        self.fail_run = 0

    def observe(self, ok: bool) -> bool | None:
        """Record one probe result; return the new state when it changed, else None."""
        if ok:
            self.ok_run += 1
            self.fail_run = 0
        else:
            self.fail_run += 1
            self.ok_run = 0
        if self.up is None:
            self.up = ok
            return ok
        if not self.up and self.ok_run >= self.rise:
            self.up = True
            return True
        if self.up and self.fail_run >= self.fall:
            self.up = False
            return False
        return None
