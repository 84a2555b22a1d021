"""A list of what maglev made outside its own processes, for a test harness to check.

With ``$MAGLEV_RECORD`` set to a file path, every maglev process (and the test helpers in
``maglev.testing``, and the lab) appends one line ``<kind>\\t<name>`` to that file *before*
it makes something that can outlive it:

* ``shm``   a file in /dev/shm (a region ``maglev-<instance>-<pid>-<hex6>``, a connection
  table ``maglev-<instance>-ct-<tag>-<i>`` or its temporary ``...new-<pid>``);
* ``dir``   a run folder (``<tmp>/maglev-<instance>-*``, with ``owner.json``);
* ``netns`` a network namespace;
* ``link``  a network device in the namespace of the process that made it (a veth pair's
  end before it is moved into a namespace).

The variable is inherited by every child, so the file names exactly what a test (and the
processes it started) made: tests/conftest.py checks after each test that none of it is
left (docs/development.md, "The leak guard").  Unset (production): nothing is written.
Best effort: a failing write never fails the caller.
"""

from __future__ import annotations

import contextlib
import os

ENV = "MAGLEV_RECORD"
KINDS = ("shm", "dir", "netns", "link")


def note(kind: str, name: str) -> None:
    """Append ``kind name`` to ``$MAGLEV_RECORD`` (when set)."""
    path = os.environ.get(ENV)
    if not path or kind not in KINDS or "\n" in name or "\t" in name:
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{kind}\t{name}\n".encode())  # one small O_APPEND write: atomic
        finally:
            os.close(fd)


def read(path: str) -> list[tuple[str, str]]:
    """The (kind, name) lines of a record file, in order, without repeats."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for line in lines:
        kind, _, name = line.partition("\t")
        if kind in KINDS and name and (kind, name) not in seen:
            seen.add((kind, name))
            out.append((kind, name))
    return out
