"""Long-lived connections that each send a request every ``period_s``, all driven by one
selector loop in one thread (issue 16.6's lab tests: >= 200 connections x 10 requests/s).

A thread per connection, or a few threads each walking their connections with blocking
``get()`` calls, cannot keep that rate on a loaded two-core machine: a round of 200
sequential round trips of ~1-5 ms each takes 0.2-1 s, so every connection talked ~1-2
times a second.  Here every socket is non-blocking; connection *i* is due at
``t0 + i/N x period`` then every ``period``; the loop sends what is due, reads what
arrived and parses whole replies, so the round trips overlap.  A connection never has two
requests in flight: when its reply is late at its next due time that turn is skipped and
counted (``late``), so the achieved rate is honest.  :meth:`finish` stops sending and
waits (bounded) for the replies in flight, so the sockets are clean for a last blocking
request.

A connection is *lost* -- recorded once with the reason and not used again -- when it is
closed by the peer, fails, gets no reply within ``timeout_s``, or is answered by another
backend than its first (``moved A -> B``).
"""

from __future__ import annotations

import heapq
import selectors
import threading
import time
from typing import Any

REQUEST = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n"


def parse_reply(buf: bytes) -> tuple[str, bytes] | None:
    """(backend named in the body, rest of buf) for one whole reply at the start of buf,
    None while incomplete.  Raises ConnectionError on a malformed reply."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 65536:
            raise ConnectionError("reply head over 64 KiB")
        return None
    head = buf[:end]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            try:
                length = int(v.strip() or 0)
            except ValueError:
                raise ConnectionError(f"bad Content-Length {v.strip()[:20]!r}") from None
    if not 0 <= length <= 1 << 20:
        raise ConnectionError(f"implausible Content-Length {length}")
    start = end + 4
    if len(buf) < start + length:
        return None
    body = buf[start:start + length]
    return body.decode(errors="replace").strip().removeprefix("backend="), buf[start + length:]


class Talkers:
    """``socks`` (connected sockets, e.g. ``KeepAlive(...).s``) with the backend each one
    had first (``first``): :meth:`start`, then :meth:`finish`; read ``lost``,
    ``requests``, ``late`` and :meth:`rate`."""

    def __init__(self, socks: list[Any], first: list[str], period_s: float = 0.1, timeout_s: float = 20.0):
        if len(socks) != len(first):
            raise ValueError("one first backend per connection")
        self.socks, self.first = socks, first
        self.period_s, self.timeout_s = period_s, timeout_s
        self.lost: dict[int, str] = {}
        self.requests = 0  # replies received and checked
        self.per_conn = [0] * len(socks)
        self.late = 0  # turns skipped: the previous reply had not come yet
        self.max_rtt_s = 0.0
        self.t_start = self.t_end = 0.0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="talkers", daemon=True)

    def start(self) -> Talkers:
        self._thread.start()
        return self

    def finish(self, join_s: float = 30.0) -> None:
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(join_s)

    @property
    def rounds(self) -> float:
        """Requests answered per connection so far (on average)."""
        return self.requests / max(1, len(self.socks))

    def rate(self) -> float:
        """Replies per connection per second while talking."""
        end = self.t_end or time.monotonic()
        return self.requests / max(1, len(self.socks)) / max(1e-9, end - self.t_start)

    def _lose(self, sel: selectors.BaseSelector, i: int, why: str) -> None:
        if i not in self.lost:
            self.lost[i] = why
            try:
                sel.unregister(self.socks[i])
            except (KeyError, ValueError):
                pass

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the caller, never lost in the thread
            self.error = exc
        finally:
            self.t_end = time.monotonic()

    def _run(self) -> None:
        n = len(self.socks)
        sel = selectors.DefaultSelector()
        bufs = [b""] * n
        sent_at: list[float | None] = [None] * n
        self.t_start = t0 = time.monotonic()
        due = [(t0 + self.period_s * i / max(1, n), i) for i in range(n)]
        heapq.heapify(due)
        timeouts = [s.gettimeout() for s in self.socks]
        for i, s in enumerate(self.socks):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
        next_sweep = t0 + 0.5
        drain_until = None
        while len(self.lost) < n:
            now = time.monotonic()
            if self.stop.is_set():  # no new requests; wait (bounded) for the replies in flight
                drain_until = drain_until or now + min(self.timeout_s, 10.0)
                due.clear()
                if now > drain_until or all(sent_at[i] is None for i in range(n) if i not in self.lost):
                    break
            while due and due[0][0] <= now:
                when, i = heapq.heappop(due)
                if i in self.lost:
                    continue
                heapq.heappush(due, (max(when + self.period_s, now), i))
                if sent_at[i] is not None:
                    self.late += 1
                    continue
                try:
                    if self.socks[i].send(REQUEST) != len(REQUEST):
                        self._lose(sel, i, "failed: partial send (socket buffer full)")
                        continue
                except OSError as exc:
                    self._lose(sel, i, f"failed: {type(exc).__name__}: {exc}")
                    continue
                sent_at[i] = now
            if now >= next_sweep:
                next_sweep = now + 0.5
                for i in range(n):
                    t = sent_at[i]
                    if t is not None and now - t > self.timeout_s and i not in self.lost:
                        self._lose(sel, i, f"failed: no reply within {self.timeout_s:g} s")
            wait = min(max(0.0, due[0][0] - time.monotonic()), 0.05) if due else 0.05
            for key, _ in sel.select(wait):
                i = key.data
                try:
                    data = self.socks[i].recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._lose(sel, i, f"failed: {type(exc).__name__}: {exc}")
                    continue
                if not data:
                    self._lose(sel, i, "failed: connection closed by the peer")
                    continue
                bufs[i] += data
                try:
                    while (got := parse_reply(bufs[i])) is not None:
                        backend, bufs[i] = got
                        t = sent_at[i]
                        if t is not None:
                            self.max_rtt_s = max(self.max_rtt_s, time.monotonic() - t)
                        sent_at[i] = None
                        self.requests += 1
                        self.per_conn[i] += 1
                        if backend != self.first[i]:
                            self._lose(sel, i, f"moved {self.first[i]} -> {backend}")
                            break
                except ConnectionError as exc:
                    self._lose(sel, i, f"failed: {exc}")
        sel.close()
        for s, t in zip(self.socks, timeouts, strict=True):
            s.settimeout(t)  # as the caller had it
