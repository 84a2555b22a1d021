"""A free port for a test or a lab run (the one copy of this helper)."""

from __future__ import annotations

import socket


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing is bound to right now (the kernel's pick).  Another
    process may take it before the caller binds it: bind soon, and retry on EADDRINUSE
    where that matters."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
