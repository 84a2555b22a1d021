"""Log lines for people and for machines: one line per event, with level, actor and instance.

Three formats, chosen by ``--log-format`` (``MAGLEV_LOG_FORMAT`` in the actors' environment):

- ``logfmt`` (the default on a terminal): ``ts=... level=... instance=... actor=... pid=...
  msg="..." key=value``;
- ``journal``: the same fields without the timestamp (the journal stamps each line) and with
  a ``<N>`` syslog priority prefix, which systemd-journald turns into the entry's priority
  (``SyslogLevelPrefix=``, on by default).  ``auto`` picks it when stderr *is* the journal
  stream: ``$JOURNAL_STREAM`` holds ``device:inode`` of that stream (``man systemd.exec``);
- ``json``: one JSON object per line (``ts``, ``level``, ``instance``, ``actor``, ``pid``,
  ``msg`` and every key/value).

Warnings and errors that repeat are rate-limited per call site: at most ``burst`` lines per
``window_s``, then silence, then one line saying how many were suppressed.  No log line is
ever written per packet.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

FORMATS = ("auto", "logfmt", "journal", "json")

# syslog priorities (RFC 5424) for the journal's <N> prefix
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def _priority(levelno: int) -> int:
    for lvl in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= lvl:
            return _PRIORITY[lvl]
    return 7


def _val(v: Any) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\n'):
        return json.dumps(s)
    return s


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=... instance=... actor=... pid=... msg="..." key=value``."""

    stamp = True

    def __init__(self, actor: str, instance: str = ""):
        super().__init__()
        self.actor = actor
        self.instance = instance

    def fields(self, record: logging.LogRecord) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        if self.stamp:
            t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            out.append(("ts", f"{t}.{int(record.msecs):03d}Z"))
        out.append(("level", record.levelname.lower()))
        if self.instance:
            out.append(("instance", self.instance))
        out += [("actor", self.actor), ("pid", record.process), ("msg", record.getMessage())]
        base = {k for k, _ in out}
        # A key/value that reuses a line field's name (e.g. the supervisor logging a child's
        # "actor") must not shadow it: it is written as "key_".
        out += [(f"{k}_" if k in base else k, v) for k, v in getattr(record, "kv", {}).items()]
        if record.exc_info:
            out.append(("exc", self.formatException(record.exc_info)))
        return out

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_val(v)}" for k, v in self.fields(record))


class JournalFormatter(LogfmtFormatter):
    """logfmt without the timestamp, prefixed with the syslog priority for journald."""

    stamp = False

    def format(self, record: logging.LogRecord) -> str:
        # One entry per event: a multi-line exception stays inside one quoted field.
        return f"<{_priority(record.levelno)}>" + super().format(record)


class JsonFormatter(LogfmtFormatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({k: v if isinstance(v, int | float | bool) or v is None else str(v)
                           for k, v in self.fields(record)}, sort_keys=False)


class RateLimit(logging.Filter):
    """At most ``burst`` records per call site (logger, file, line) per ``window_s`` at
    WARNING and above; the first record after a suppressed stretch carries
    ``suppressed=N`` (how many were dropped since the last one that went out)."""

    def __init__(self, burst: int = 5, window_s: float = 10.0, clock: Any = time.monotonic):
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._sites: dict[tuple[str, str, int], list[float | int]] = {}  # [window start, sent, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.pathname, record.lineno)
        now = self.clock()
        site = self._sites.get(key)
        if site is None or now - site[0] >= self.window_s:
            suppressed = int(site[2]) if site else 0
            self._sites[key] = [now, 1, 0]
            if suppressed:
                record.kv = {**getattr(record, "kv", {}), "suppressed": suppressed}
            if len(self._sites) > 4096:  # bounded: forget the oldest windows
                for k in sorted(self._sites, key=lambda k: self._sites[k][0])[:1024]:
                    del self._sites[k]
            return True
        if site[1] < self.burst:
            site[1] += 1
            return True
        site[2] += 1
        return False


def journal_stream_is_stderr(env: dict[str, str] | None = None) -> bool:
    """True when stderr is the stream systemd connected to the journal."""
    e = os.environ if env is None else env
    dev_ino = e.get("JOURNAL_STREAM", "")
    if ":" not in dev_ino:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return dev_ino == f"{st.st_dev}:{st.st_ino}"


def make_formatter(actor: str, instance: str = "", fmt: str = "auto") -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = "journal" if journal_stream_is_stderr() else "logfmt"
    return {"logfmt": LogfmtFormatter, "journal": JournalFormatter, "json": JsonFormatter}[fmt](actor, instance)


def set_instance(instance: str) -> None:
    """Name the instance in every line from now on (the supervisor learns it only once it
    has read the config, after its logging is set up)."""
    for h in logging.getLogger().handlers:
        if isinstance(h.formatter, LogfmtFormatter):
            h.formatter.instance = instance


def setup_logging(actor: str, level: str = "WARNING", instance: str = "", fmt: str | None = None) -> None:
    """Route the root logger to stderr in the chosen format (``fmt`` None:
    ``$MAGLEV_LOG_FORMAT`` or ``auto``), with the rate limit on warnings."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    chosen = fmt or os.environ.get("MAGLEV_LOG_FORMAT") or "auto"
    if chosen not in FORMATS:
        chosen = "auto"
    h.setFormatter(make_formatter(actor, instance, chosen))
    h.addFilter(RateLimit())
    root.addHandler(h)
    root.setLevel(getattr(logging, level.upper(), logging.WARNING))
