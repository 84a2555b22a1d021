"""Where the control sockets live by default.

``ipc://`` sockets go in a per-instance run directory made with mode 0700 (the socket
files themselves get 0600), so only the owner -- root for a production forwarder -- can
connect.  The directory is, in order: ``$MAGLEV_RUN_DIR/<instance>``; ``/run/maglev/<instance>``
for root; ``$XDG_RUNTIME_DIR/maglev/<instance>`` for other users; else
``/tmp/maglev-<uid>/<instance>``.  The persisted config goes to the state directory:
``$MAGLEV_STATE_DIR/<instance>``, ``/var/lib/maglev/<instance>`` for root, else
``$XDG_STATE_HOME/maglev/<instance>`` (default ``~/.local/state``).
"""

from __future__ import annotations

import os
from pathlib import Path

CONTROL_SOCKET = "control.sock"
EVENTS_SOCKET = "events.sock"


def run_dir(instance: str) -> Path:
    if env := os.environ.get("MAGLEV_RUN_DIR"):
        return Path(env) / instance
    if os.geteuid() == 0:
        return Path("/run/maglev") / instance
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "maglev" / instance
    return Path(f"/tmp/maglev-{os.getuid()}") / instance


def state_dir(instance: str) -> Path:
    if env := os.environ.get("MAGLEV_STATE_DIR"):
        return Path(env) / instance
    if os.geteuid() == 0:
        return Path("/var/lib/maglev") / instance
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "maglev" / instance


def default_control(instance: str = "mg1") -> str:
    return f"ipc://{run_dir(instance) / CONTROL_SOCKET}"


def default_events(instance: str = "mg1") -> str:
    return f"ipc://{run_dir(instance) / EVENTS_SOCKET}"


def events_for(control: str) -> str:
    """The events endpoint paired with a control endpoint: the sibling ``events.sock`` of an
    ipc socket, the next port of a tcp one."""
    if control.startswith("ipc://"):
        p = Path(control[len("ipc://") :])
        return f"ipc://{p.with_name(EVENTS_SOCKET)}"
    if control.startswith("tcp://"):
        host, _, port = control[len("tcp://") :].rpartition(":")
        if port.isdigit():
            return f"tcp://{host}:{int(port) + 1}"
    raise ValueError(f"cannot derive an events endpoint from {control!r}; give it explicitly")
