"""Fixtures for the ring tests: regions and child processes that are always cleaned up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maglev.rings import Region
from maglev.testing import unique

CHILD = Path(__file__).resolve().parent / "ringchild.py"


@pytest.fixture
def make_region():
    """make_region(n_workers, **sizes) -> Region; every region is closed and its
    /dev/shm file removed after the test, also when the test fails."""
    made: list[Region] = []

    def make(n_workers: int = 1, **kw) -> Region:
        name = unique.name("test-")
        kw.setdefault("tables_bytes", 1 << 16)
        r = Region.create(name, n_workers, **kw)
        made.append(r)
        return r

    try:
        yield make
    finally:
        for r in made:
            r.close()
            Region.unlink_name(r.name)
            assert not os.path.exists(r.path)


class Child:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def line(self, timeout: float = 10.0) -> dict:
        """The next JSON line the child prints (raises if it died without one)."""
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise TimeoutError(f"child {self.proc.args[2:]} printed nothing in {timeout} s")
        finally:
            sel.close()
        text = self.proc.stdout.readline()
        if not text:
            err = self.proc.stderr.read()
            raise RuntimeError(f"child {self.proc.args[2:]} exited: {err}")
        return json.loads(text)

    def result(self, timeout: float = 30.0) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def spawn():
    """spawn(role, *args) -> Child running tests/rings/ringchild.py; killed by PID after
    the test if still running."""
    procs: list[subprocess.Popen] = []

    def start(*args) -> Child:
        p = subprocess.Popen(
            [sys.executable, str(CHILD), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        return Child(p)

    try:
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=10)
