"""Atomic persistence of the accepted configuration.

The classic sequence (see e.g. the ext4/POSIX rename discussions and SQLite's notes on
atomic commit): write a temporary file *in the same directory* (rename is atomic only
within one file system), ``fsync`` it so its data is on disk before the name points at it,
``rename`` over the old name, then ``fsync`` the directory so the rename itself survives a
power cut.  A crash at any point leaves either the old file or the new one, never a torn
mix; a leftover temporary file (named after its writer's pid) is removed by the next
write once that process is gone.

The state file is JSON: ``{"format": "maglev-state-1", "source_sha256": ..., "config":
{...}}`` where ``config`` is ``Config.to_dict()`` (the TOML file's shape).  JSON rather
than TOML because it is written on every change, in the reply's critical path: for 1000
backends ``json.dumps`` takes about a millisecond, the TOML writer tens.  ``maglev ctl
config`` prints the running config as TOML when an operator wants a file back.

``source_sha256`` identifies the operator's source file the state descends from (SHA-256
of its absolute path and content, :func:`source_id`).
At start the config manager resumes the state file only while the source file is
unchanged; when the operator has edited the source, the edit wins
(docs/control-protocol.md, "Persistence").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from maglev import files
from maglev.config import Config
from maglev.errors import ConfigError

STATE_FORMAT = "maglev-state-1"


def source_id(path: str | Path) -> str:
    """SHA-256 of a source file's absolute path and content: a state file is resumed only
    for the same file, unchanged.  (With the content alone, two runs from equal copies of a
    config -- tests, labs -- would resume each other's live changes.)"""
    p = Path(path).resolve()
    try:
        data = p.read_bytes()
    except OSError:
        return ""
    return hashlib.sha256(str(p).encode() + b"\0" + data).hexdigest()


def atomic_write(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content."""
    atomic_write_all([Path(path)], data, mode)


def atomic_write_all(paths: list[Path], data: bytes, mode: int = 0o600) -> None:
    """Replace every file of ``paths`` with ``data``, all or none as far as an error goes:
    every temporary file is written and fsynced first, and only when all of them are
    does any rename happen (a rename needs no space).  So a full or read-only disk under
    the second file never leaves the first one renamed to the new content while the
    caller reports that nothing changed (session 8: the state file moved on, the run's
    config did not, the reply said ``persist-failed``).  A crash still leaves each file
    old or new."""
    tmps: list[tuple[Path, Path]] = []
    try:
        for p in paths:
            tmps.append((_write_tmp(p, data, mode), p))
    except BaseException:
        for tmp, _ in tmps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for i, (tmp, p) in enumerate(tmps):
        try:
            os.replace(tmp, p)
        except BaseException:
            for t, _ in tmps[i:]:
                with contextlib.suppress(OSError):
                    os.unlink(t)
            raise
    for d in dict.fromkeys(p.parent for p in paths):
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _write_tmp(p: Path, data: bytes, mode: int) -> Path:
    # private like the file: the state folder is the service user's (0700), whichever of
    # the config manager and the connection tables' records creates it first
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _remove_stale_tmps(p)
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
    return tmp


def _remove_stale_tmps(p: Path) -> None:
    """Temporary files of ``p`` left by a writer killed mid-write (kill -9 of the config
    manager while it persists): named after the dead process, so the next writer (a new
    pid) never overwrote them and they piled up, each as big as the state."""
    prefix = f".{p.name}.tmp-"
    try:
        names = [n for n in os.listdir(p.parent) if n.startswith(prefix)]
    except OSError:
        return
    for n in names:
        pid = n[len(prefix):]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(p.parent / n)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def encode_state(config_dict: dict, source_sha256: str = "") -> bytes:
    """The state file's bytes (cheap; done before the write, which may run in a thread)."""
    doc = {"format": STATE_FORMAT, "source_sha256": source_sha256, "config": config_dict}
    # No indent: only the compact form uses json's C encoder (10x faster for big configs).
    return json.dumps(doc, separators=(",", ":")).encode("utf-8") + b"\n"


def save_state(path: str | Path, config: Config, source_sha256: str = "") -> None:
    atomic_write(path, encode_state(config.to_dict(), source_sha256))


def load_state(path: str | Path) -> tuple[Config, str] | None:
    """(config, source sha256) from a state file, or None when there is none.  A state file
    that does not parse or validate raises ConfigError: never silently start from older
    state."""
    p = Path(path)
    try:  # a regular file of bounded size: a FIFO hung the start, /dev/zero ran out of memory
        raw = files.read_regular(p, files.JSON_LIMIT)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    except ValueError as exc:  # not a regular file, too large
        raise ConfigError([f"{p}: cannot read: {exc}"]) from None
    try:
        doc = files.loads_json(raw)
    except ValueError as exc:  # also nesting too deep, a 5000-digit number (maglev/files.py)
        raise ConfigError([f"{p}: not a maglev state file: {exc}"]) from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise ConfigError([f"{p}: not a maglev state file (format {STATE_FORMAT!r} expected)"])
    src = doc.get("source_sha256", "")
    return Config.from_dict(doc.get("config")), src if isinstance(src, str) else ""


# ---------------------------------------------------------------------- the run's config
#
# The configuration a *run* has accepted, as a file in its private run folder: what every
# actor (re)start reads instead of the operator's config file.  The supervisor writes it
# before any actor starts (the file it validated), the config manager rewrites it with the
# config it resumed or loaded at start and after every accepted change (the same bytes as
# the state file, in the same format).  So an actor killed while the file on disk is broken,
# or edited and not yet reloaded, comes back on the config the run serves, never on one it
# refused or has not seen (tests/hostile/test_accepted_config.py).  The run folder dies
# with the run; the state file is what outlives it.

RUN_CONFIG = "config.json"
# The config the run started with (the supervisor's, never rewritten): the settings the
# data path fixes at start -- the flow hash secret, [conntrack] -- come from it, so a
# restarted worker or steering matches the ones still running and the tables they hold
# (see ``start_only``).
RUN_START_CONFIG = "config-start.json"


def run_config_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RUN_CONFIG


def write_run_config(run_dir: str | Path, data: bytes) -> None:
    """Replace the run's accepted config with ``data`` (``encode_state`` bytes)."""
    atomic_write(run_config_path(run_dir), data)


def load_run_config(run_dir: str | Path | None, start: bool = False) -> tuple[Config, str] | None:
    """(config, source sha256) the run has accepted (``start``: the one it started with), or
    None when the run keeps none (an actor started outside a ``maglev run``).  A file that
    does not load raises ConfigError."""
    if not run_dir:
        return None
    return load_state(Path(run_dir) / (RUN_START_CONFIG if start else RUN_CONFIG))


def start_only(accepted: Config, started: Config) -> Config:
    """``accepted`` with the settings the data path fixes when the run starts taken from
    ``started``: ``[instance] flow_hash_secret`` (steering's worker choice and every
    connection table's hash must agree) and ``[conntrack]`` (the tables are sized and
    adopted with it).  A change of them is accepted by the config manager but takes effect
    only when ``maglev run`` starts again (it logs so)."""
    import dataclasses

    inst = dataclasses.replace(accepted.instance, flow_hash_secret=started.instance.flow_hash_secret)
    return dataclasses.replace(accepted, instance=inst, conntrack=started.conntrack)
