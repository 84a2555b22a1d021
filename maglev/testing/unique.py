"""Names for what a test makes on the shared machine: unique per call, in every copy of
the suite (the one copy of this helper).

Another clone's test session, CI or a colleague may run the same test at the same moment,
on the same kernel: /dev/shm, /run/netns, the root namespace's interface names and
127.0.0.1's ports are shared with them.  A name a test picks must not be one another
session can pick too -- not a fixed ``mg1``, and not ``os.getpid() % 10000`` either (pids
repeat across sessions modulo anything).  Several things in maglev are keyed by the
instance name alone, machine-wide: a run's shared memory ``maglev-<instance>-*`` (found by
``maglev conntrack drop``, which refuses while any run of that instance is up, and by a
test's own clean-up glob), ``conntrack.live_runs``, the shared tables of ``maglev
conntrack list``.  So every test that starts a run names its instance here.

* :func:`name` -- ``prefix`` + 8 random hex digits (32 bits): an instance name, a region
  name, a file name.
* :func:`short` -- ``prefix`` + 4 hex digits, for names with a hard length limit (a lab
  prefix ends up in 15-byte interface names); checked against the live names too.
* Ports: :func:`maglev.testing.ports.free_port` (the kernel picks, never a fixed number).
* Folders: ``tempfile.mkdtemp`` (the ``shortdir`` fixture for ipc:// paths).
* Namespaces: :class:`maglev.testing.netns.NetnsSet` (``mgt-`` + random suffix).
"""

from __future__ import annotations

import os
import re
import secrets

__all__ = ["INSTANCE_RE", "name", "short"]

# What maglev accepts as an instance name (config.md; a shm file name part).
INSTANCE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def name(prefix: str = "t") -> str:
    """``prefix`` + 8 random hex digits: unique for this call in every session."""
    out = f"{prefix}{secrets.token_hex(4)}"
    if not INSTANCE_RE.match(out):
        raise ValueError(f"{out!r}: use 1-64 characters from A-Z a-z 0-9 _ . - (prefix {prefix!r})")
    return out


def short(prefix: str, taken: tuple[str, ...] = ("/run/netns", "/sys/class/net"), digits: int = 4) -> str:
    """``prefix`` + ``digits`` random hex digits (default 4), for a name with a hard length
    limit (a lab prefix, which becomes part of 15-byte interface names).  16 bits alone
    could meet another session's name; a candidate that starts a name already in one of
    the ``taken`` folders (namespaces, interfaces) is drawn again.  Two sessions drawing
    the same free name in the same moment stays possible (about 1 in 65536): the maker
    then fails with "exists", never takes over the other's."""
    present: list[str] = []
    for folder in taken:
        try:
            present += [n for n in os.listdir(folder) if n.startswith(prefix)]
        except OSError:
            pass
    for _ in range(64):
        out = f"{prefix}{secrets.randbelow(16 ** digits):0{digits}x}"
        if not any(n.startswith(out) for n in present):
            return out
    raise RuntimeError(f"no free name {prefix}{'X' * digits} after 64 tries: leftovers in {', '.join(taken)}?")
