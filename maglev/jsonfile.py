"""The JSON files maglev keeps on disk, read so that damage is one exception type.

maglev writes small JSON files it reads back later: the state file and the run's accepted
config (maglev/control/persist.py), the drained state (maglev/control/instance.py) and the
run folder's records (owner, supervisor view, packet traces, AF_XDP hand-off, shed counts).
They are written atomically, yet a disk, an operator or a hostile checker can still leave
anything in them, and ``json.loads`` fails on damaged input in more ways than
``json.JSONDecodeError``:

* ``RecursionError`` for deep nesting (``[[[[...`` a few thousand levels: the C scanner
  recurses), which is not a ``ValueError`` at all;
* ``ValueError`` "Exceeds the limit (4300 digits) for integer string conversion" for a long
  integer literal (not a ``JSONDecodeError``);
* ``UnicodeDecodeError`` for bytes that are not UTF-8/16/32.

Every reader caught ``ValueError`` (or only ``JSONDecodeError``), so a state file holding
``[[[[...`` or a 5000-digit number made ``maglev run`` die with a traceback at start
instead of setting the file aside (session 10).  :func:`loads` turns each of these into a
``ValueError`` with a one-line reason; callers catch ``ValueError`` (and ``OSError`` for
:func:`read`) and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def loads(raw: bytes | str) -> Any:
    """``json.loads``; every way ``raw`` can be damaged raises ``ValueError``."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the 4300-digit limit
        raise ValueError(" ".join(str(exc).split(";")[0].split())[:200]) from None


def read(path: str | Path) -> Any:
    """The JSON document in ``path``: ``OSError`` when it cannot be read, ``ValueError``
    when it is not JSON (see :func:`loads`)."""
    return loads(Path(path).read_bytes())
