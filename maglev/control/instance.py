"""What the config manager keeps for the instance as a whole, not for one VIP.

* The drained state (``maglev ctl drain-instance`` / ``resume-instance``, issue 16.5):
  ``<state dir>/drained.json``, written atomically before the reply
  (:func:`save_drained`) and read by the supervisor's controller when a run starts
  (:func:`load_drained`, ``maglev/actors/controller.py``), so a restart in the middle of a
  rolling upgrade never announces a drained instance.  A file that cannot be read or parsed
  counts as drained (the safe side for one instance of several behind ECMP).
* The warning for a flow hash keyed with the built-in public secret
  (:func:`flow_secret_warning`): ``maglev run`` prints it, ``status`` carries it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from maglev import files
from maglev.config import DEFAULT_FLOW_HASH_SECRET, SAMPLE_CONFIG
from maglev.control.endpoints import state_dir
from maglev.control.persist import atomic_write

DRAIN_FILE = "drained.json"
DRAIN_FORMAT = "maglev-drain-1"


def drain_path(instance: str) -> Path:
    return state_dir(instance) / DRAIN_FILE


def save_drained(instance: str, drained: bool) -> None:
    """Persist the drained state of ``instance`` (atomic; raises OSError)."""
    doc = {"format": DRAIN_FORMAT, "drained": bool(drained), "at": time.time()}
    atomic_write(drain_path(instance), json.dumps(doc).encode() + b"\n")


def load_drained(instance: str) -> tuple[bool, str]:
    """(drained, problem): the persisted state; no file = not drained; a damaged file =
    drained, with the problem in words."""
    # The open / not-found / error ladder has the shape of conntrack_shm.preview's; the two
    # return different things (a verdict with words vs a table's plan): kept apart.
    p = drain_path(instance)
    try:
        raw = files.read_regular(p, files.JSON_LIMIT)  # never blocks on a FIFO, bounded
    except FileNotFoundError:
        return False, ""
    except OSError as exc:
        return True, f"{p}: cannot read ({exc.strerror or exc}); staying drained until resume-instance"
    except ValueError as exc:
        return True, f"{p}: cannot read ({exc}); staying drained until resume-instance"
    try:
        doc = files.loads_json(raw)  # every damage a ValueError (deep nesting too: maglev/files.py)
        if not isinstance(doc, dict) or doc.get("format") != DRAIN_FORMAT or not isinstance(doc.get("drained"), bool):
            raise ValueError(f"not a {DRAIN_FORMAT} file")
    except ValueError as exc:
        return True, f"{p}: damaged ({exc}); staying drained until resume-instance"
    return doc["drained"], ""


def flow_secret_warning(config: Any, source: Any = None) -> str | None:
    """The warning for a config that keys the flow hash with the built-in (public) secret.

    Not for the lab: the namespace labs (``maglev lab up``, ``maglev demo``, the scale-out
    lab) write a random secret of their own, and the built-in sample config (``source``, the
    file the config came from, is ``maglev/data/sample.toml``) is the lab's too, as for
    ``maglev doctor``.  ``maglev run`` prints it once at start; ``status`` carries it in
    ``warnings`` for as long as it holds.
    """
    if config.instance.flow_hash_secret.lower() != DEFAULT_FLOW_HASH_SECRET:
        return None
    if source and Path(source).resolve() == SAMPLE_CONFIG:
        return None
    return ("the flow hash uses the built-in public secret: clients can predict which backend "
            "a flow goes to; set [instance].flow_hash_secret (32 hex digits, the same on every "
            "instance, e.g. from `python3 -c 'import secrets; print(secrets.token_hex(16))'`)")
