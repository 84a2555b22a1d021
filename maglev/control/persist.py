"""Atomic persistence of the accepted configuration.

The classic sequence (see e.g. the ext4/POSIX rename discussions and SQLite's notes on
atomic commit): write a temporary file *in the same directory* (rename is atomic only
within one file system), ``fsync`` it so its data is on disk before the name points at it,
``rename`` over the old name, then ``fsync`` the directory so the rename itself survives a
power cut.  A crash at any point leaves either the old file or the new one, never a torn
mix; a leftover temporary file is harmless and removed on the next write.

The state file is a TOML config (``maglev.config.dump_toml``) with one extra comment line
recording the SHA-256 of the operator's source file it descends from.  At start the
config manager resumes the state file only while the source file is unchanged; when the
operator has edited the source, the edit wins (docs/control-protocol.md, "Persistence").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

from maglev.config import Config, dump_toml, loads

_SOURCE_RE = re.compile(r"^# maglev-source-sha256: ([0-9a-f]{64})$", re.M)


def file_sha256(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def atomic_write(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save_state(path: str | Path, config: Config, source_sha256: str = "") -> None:
    text = dump_toml(config)
    if source_sha256:
        text = f"# maglev-source-sha256: {source_sha256}\n" + text
    atomic_write(path, text.encode("utf-8"))


def load_state(path: str | Path) -> tuple[Config, str] | None:
    """(config, source sha256) from a state file, or None when there is none.  A state file
    that does not validate raises ConfigError: never silently fall back to older state."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    m = _SOURCE_RE.search(text)
    return loads(text, source=str(p)), (m.group(1) if m else "")
