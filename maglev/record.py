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

A make that fails because the name is taken (someone else's: another test session on the
machine) is taken back with :func:`forget`.  The variable is inherited by every child, so
the file names exactly what a test (and the processes it started) made: tests/conftest.py checks after each test that none of it is
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
    _append(kind, name, f"{kind}\t{name}\n")


def forget(kind: str, name: str) -> None:
    """Take back a :func:`note` whose making failed because ``name`` already existed (a
    line ``forget <kind> <name>``).  The note comes first so that nothing made is ever
    missing from the list, but a name that was taken is *someone else's* -- another test
    session's on the same machine, typically -- and the harness must neither report it as
    this test's leak nor remove it (2026-12-07: a session's guard deleted the live region
    of a concurrent session that way)."""
    _append(kind, name, f"{FORGET}\t{kind}\t{name}\n")


def _append(kind: str, name: str, line: str) -> None:
    """Append ``line`` to ``$MAGLEV_RECORD`` (when set and ``kind name`` is recordable)."""
    path = os.environ.get(ENV)
    if not path or kind not in KINDS or "\n" in name or "\t" in name:
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode())  # one small O_APPEND write: atomic
        finally:
            os.close(fd)


FORGET = "forget"


def read(path: str) -> list[tuple[str, str]]:
    """The (kind, name) lines of a record file, in order, without repeats, without the
    ones taken back by a later ``forget`` line (a later note of the name counts again)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out: dict[tuple[str, str], None] = {}
    for line in lines:
        kind, _, name = line.partition("\t")
        if kind == FORGET:
            kind, _, name = name.partition("\t")
            out.pop((kind, name), None)
        elif kind in KINDS and name:
            out.setdefault((kind, name), None)
    return list(out)
