"""Files maglev reads back: regular files only, bounded, and JSON whose damage is one
exception type.

**Reading.**  A path can name anything: a FIFO (an open blocks until a writer comes, a read
until it closes), ``/dev/zero`` (never ends), a directory, a 10 GiB file.  The config file
and the state file are both things an operator (or a hostile checker) can point elsewhere,
and ``Path.read_bytes`` on a FIFO state file hung ``maglev run`` at start for ever, on
``/dev/zero`` it ran out of memory (session 10).  :func:`read_regular` opens without
blocking, takes only a regular file and reads at most ``limit + 1`` bytes.

**JSON.**  maglev writes small JSON files it reads back later: the state file and the run's
accepted config (maglev/control/persist.py), the drained state (maglev/control/instance.py)
and the run folder's records (owner, supervisor view, packet traces, AF_XDP hand-off, shed
counts).  ``json.loads`` fails on damaged input in more ways than ``JSONDecodeError``:
``RecursionError`` for deep nesting (``[[[[...`` a few thousand levels: not a ValueError at
all), a bare ``ValueError`` for an integer literal of more than 4300 digits, and
``UnicodeDecodeError``.  Every reader caught ``ValueError`` (or only ``JSONDecodeError``), so
a state file holding ``[[[[...`` or a 5000-digit number made ``maglev run`` die with a
traceback at start instead of setting the file aside.  :func:`loads_json` turns each into a
``ValueError`` with a one-line reason; callers of :func:`read_json` catch ``ValueError`` and
``OSError`` and nothing else.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

# What a JSON record of maglev's may weigh: the state file of the largest config the data
# path holds (4096 VIPs, 65536 backends) is under 10 MiB.
JSON_LIMIT = 64 << 20

# What a path that is not a regular file names (``NotRegularFile.what``).
FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
              stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


class NotRegularFile(ValueError):
    """The path names a directory, a FIFO, a device...: ``what`` says which (a noun of
    :data:`FILE_KINDS`, or '' when none fits)."""

    def __init__(self, what: str):
        self.what = what
        super().__init__("Is a directory" if what == "a directory" else f"{what or 'something'}, not a regular file")


class FileTooLarge(ValueError):
    """The file holds more than the reader's limit."""


def read_regular(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit``.  ``OSError`` when it cannot
    be opened or read (``ValueError`` for a NUL in the path), :class:`NotRegularFile`
    for anything else than a regular file (never blocks: O_NONBLOCK), :class:`FileTooLarge`
    past ``limit`` bytes (reads ``limit + 1`` at most)."""
    # O_NONBLOCK: opening a FIFO with no writer must not wait (refused just below); on a
    # regular file it changes nothing.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(FILE_KINDS.get(stat.S_IFMT(mode), ""))
        with open(fd, "rb", closefd=False) as f:  # the fd is closed below
            raw = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise FileTooLarge(f"larger than {limit} bytes")
    return raw


def loads_json(raw: bytes | str) -> Any:
    """``json.loads``; every way ``raw`` can be damaged raises ``ValueError``."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the 4300-digit limit
        raise ValueError(" ".join(str(exc).split(";")[0].split())[:200]) from None


def read_json(path: str | Path, limit: int = JSON_LIMIT) -> Any:
    """The JSON document in the regular file ``path``: ``OSError`` when it cannot be read,
    ``ValueError`` when it is not a regular file of at most ``limit`` bytes holding JSON."""
    return loads_json(read_regular(path, limit))
