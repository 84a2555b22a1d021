"""The shared-memory region of one forwarder instance, as Python objects.

Design (the long version is docs/rings.md and the comments in the C headers):

* One POSIX shared-memory file ``/dev/shm/maglev-<name>`` per instance, mapped by every
  actor.  Its layout is computed in C (``mg_region_layout``) so C and Python can never
  disagree: header, frame pool, rings, doorbells, hands, tables (two copies), stats and
  heartbeats, each part aligned to a page and every single-writer word on its own cache
  line.
* Rings are SPSC.  The producer and consumer of every ring (``ring(kind, i)``):

    ===========  ==========  ==========  ===================================
    ring         producer    consumer    carries
    ===========  ==========  ==========  ===================================
    ``rx(i)``    steering    worker i    received frames to process
    ``tx(i)``    worker i    muxer       frames to transmit
    ``ret(i)``   worker i    steering    dropped frames (back to the pool)
    ``sent``     muxer       steering    transmitted frames (back to the pool)
    ``free``     steering    steering    the free list (steering's alone)
    ``spare(i)`` steering    worker i    empty frames for split pieces
    ===========  ==========  ==========  ===================================

  The free list is a ring in shared memory that only steering touches, so a frame is
  always somewhere the supervisor can see, and a restarted steering finds the pool.
* Doorbells: one per consuming actor (steering, muxer, each worker), shared by all of
  that actor's input rings.  ``Doorbell.wait`` sleeps on a futex; producers kick it
  inside ``submit`` only when the consumer asked (``need_wakeup``).
* Hands: a per-actor journal of the frames it holds between rings, so a killed actor's
  frames are found (``Hand.recover``) and the pool stays whole.
* Python crosses into C once per call and every call is a burst; nothing here is meant
  to be called per packet.

A ``Region`` object is not thread-safe and not fork-safe: attach in each process.
After ``close()`` every object derived from the region raises ``RegionError``.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from maglev.errors import MaglevError, NativeError
from maglev.native import check, ffi, lib
from maglev.rings.stats import StatsBlock

SHM_DIR = "/dev/shm"
SHM_PREFIX = "maglev-"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

RING_RX = int(lib.MG_RING_RX)
RING_TX = int(lib.MG_RING_TX)
RING_RET = int(lib.MG_RING_RET)
RING_SENT = int(lib.MG_RING_SENT)
RING_FREE = int(lib.MG_RING_FREE)
RING_SPARE = int(lib.MG_RING_SPARE)
_KIND_NAMES = {RING_RX: "rx", RING_TX: "tx", RING_RET: "ret", RING_SENT: "sent", RING_FREE: "free",
               RING_SPARE: "spare"}

BELL_STEERING = int(lib.MG_BELL_STEERING)
BELL_MUXER = int(lib.MG_BELL_MUXER)

SLOT_SUPERVISOR = int(lib.MG_SLOT_SUPERVISOR)
SLOT_STEERING = int(lib.MG_SLOT_STEERING)
SLOT_MUXER = int(lib.MG_SLOT_MUXER)
SLOT_CONFIG = int(lib.MG_SLOT_CONFIG)
SLOT_HEALTH = int(lib.MG_SLOT_HEALTH)
SLOT_BGP = int(lib.MG_SLOT_BGP)
SLOT_WORKER0 = int(lib.MG_SLOT_WORKER0)

HAND_MAX = int(lib.MG_HAND_MAX)
HAND_KEEP = int(lib.MG_HAND_KEEP)

DEFAULT_SPIN = int(lib.MG_BELL_SPIN_DEFAULT)
ALERT_STOP = int(lib.MG_BELL_ALERT_STOP)  # Doorbell.alert: "stop now" (the supervisor)


def worker_slot(i: int) -> int:
    """Stats/heartbeat/hand slot of packet worker ``i``."""
    return SLOT_WORKER0 + i


def worker_bell(i: int) -> int:
    """Doorbell index of packet worker ``i`` (rung by steering when rx(i) gets frames)."""
    return int(lib.MG_BELL_WORKER0) + i


class RegionError(MaglevError, ValueError):
    """Bad region name/parameters, a region that is not maglev's, or use after close."""


class TablesBusyError(MaglevError, TimeoutError):
    """A live worker has not seen the current table generation within the timeout, so
    the idle copy cannot be reused yet (quiescent-state reclamation)."""

    def __init__(self, generation: int, laggards: dict[int, int]):
        self.generation = generation
        self.laggards = dict(laggards)
        lag = ", ".join(f"worker {w} at {g}" for w, g in sorted(self.laggards.items()))
        super().__init__(f"table generation {generation} not yet seen by: {lag}")


def remove_stale_regions(instance: str) -> list[str]:
    """Unlink regions this program made for ``instance`` whose supervisor is gone (killed
    with -9: nobody else would ever remove them).  Names are ``<instance>-<pid>-<hex6>``."""
    import logging

    import psutil

    removed = []
    pat = re.compile(rf"^{re.escape(SHM_PREFIX)}{re.escape(instance)}-(\d+)-[0-9a-f]{{6}}$")
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for name in names:
        m = pat.match(name)
        if m and not psutil.pid_exists(int(m.group(1))):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed.append(name)
                logging.getLogger("maglev.pipeline").warning("removed a stale region", extra={"kv": {"name": name}})
            except OSError:
                pass
    return removed


def _shm_path(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegionError(
            f"region name {name!r}: use 1-64 characters from A-Z a-z 0-9 _ . -"
        )
    return os.path.join(SHM_DIR, SHM_PREFIX + name)


_CData = ffi.CData


def _u64_in(descs, n, what: str):
    """The descriptors to copy in: a cffi ``uint64_t`` array holding at least ``n``
    (fast path), a cffi pointer (the caller vouches for ``n``), or any sequence of ints."""
    if type(n) is not int or not 0 <= n <= 0xFFFFFFFF:
        raise RegionError(f"{what}: count {n!r} must be an integer 0..2^32-1")
    if isinstance(descs, _CData):
        try:
            have = len(descs)
        except TypeError:  # a pointer: no length to check
            return descs
        if have < n:
            raise RegionError(f"{what}: {n} descriptors asked, the array holds {have}")
        return descs
    seq = list(descs)
    if len(seq) < n:
        raise RegionError(f"{what}: {n} descriptors asked, {len(seq)} given")
    try:
        return ffi.new("uint64_t[]", seq[:n] or [0])
    except (OverflowError, TypeError) as exc:
        raise RegionError(f"{what}: descriptors must be integers 0..2^64-1 ({exc})") from None


def _u64_out(out, n, what: str):
    """``out`` must be a cffi ``uint64_t`` array with room for ``n`` (or a pointer)."""
    if type(n) is not int or not 0 <= n <= 0xFFFFFFFF:
        raise RegionError(f"{what}: count {n!r} must be an integer 0..2^32-1")
    if not isinstance(out, _CData):
        raise RegionError(f"{what}: out must be a cffi uint64_t array")
    try:
        have = len(out)
    except TypeError:
        return out
    if have < n:
        raise RegionError(f"{what}: room for {n} descriptors asked, the array holds {have}")
    return out


def _check_n(n: int, what: str) -> int:
    if type(n) is not int or not 0 <= n <= 0xFFFFFFFF:
        raise RegionError(f"{what}: count {n!r} must be an integer 0..2^32-1")
    return n


class Ring:
    """One SPSC ring of 64-bit descriptors (low 32 bits = frame index).

    Producer verbs: ``reserve``/``submit`` or ``enqueue``; consumer verbs: ``peek``/
    ``release`` or ``dequeue``.  Only the ring's one producer may call producer verbs and
    only its one consumer the consumer verbs (table in the module docstring).  Empty and
    full are not errors: the verbs return 0.
    """

    __slots__ = ("_region", "_r", "kind", "index", "id", "name", "size")

    def __init__(self, region: Region, kind: int, index: int):
        self._region = region
        self.kind = kind
        self.index = index
        self._r = lib.mg_region_ring(region._base, kind, index)
        if self._r == ffi.NULL:
            raise RegionError(f"no ring kind={kind} index={index} in region {region.name}")
        self.id = int(lib.mg_region_ring_id(region._base, kind, index))
        self.name = _KIND_NAMES[kind] + ("" if kind in (RING_SENT, RING_FREE) else str(index))
        self.size = int(self._r.size)

    def _ptr(self):
        if self._region._closed:
            raise RegionError(f"ring {self.name}: region {self._region.name} is closed")
        return self._r

    @property
    def bell(self) -> Doorbell | None:
        """The doorbell of this ring's consumer (None for the free ring)."""
        bell = {RING_RX: worker_bell(self.index), RING_TX: BELL_MUXER,
                RING_RET: BELL_STEERING, RING_SENT: BELL_STEERING}.get(self.kind)
        return None if bell is None else Doorbell(self._region, bell)

    @property
    def ptr(self):
        """The ``struct mg_ring *`` for C kernels (valid while the region is open)."""
        return self._ptr()

    # -- producer ------------------------------------------------------------------
    def enqueue(self, descs, n: int) -> int:
        """Copy up to ``n`` descriptors in and publish them (kicks the consumer's doorbell
        if it sleeps).  Returns how many went in (0 when full)."""
        if self._region._closed:
            self._ptr()
        return lib.mg_ring_enqueue_burst(self._r, _u64_in(descs, n, "enqueue"), n)

    def reserve(self, n: int) -> int:
        """Reserve up to ``n`` slots; returns how many.  Fill them with ``submit``."""
        r = self._ptr()
        _check_n(n, "reserve")
        return int(lib.mg_ring_reserve_n(r, n))

    def submit(self, descs, n: int) -> None:
        """Write ``n`` descriptors into the oldest reserved slots and publish them."""
        r = self._ptr()
        check(lib.mg_ring_fill_submit(r, _u64_in(descs, n, "submit"), n), f"{self.name} submit")

    def free_count(self) -> int:
        """Slots the producer could fill now (exact for the producer, a lower bound for
        anyone else)."""
        return int(lib.mg_ring_free_count(self._ptr()))

    def reset_producer(self) -> None:
        """Forget reservations of a previous (dead) producer; call once when taking over."""
        lib.mg_ring_reset_producer(self._ptr())

    # -- consumer ------------------------------------------------------------------
    def dequeue(self, out, max_n: int) -> int:
        """Copy up to ``max_n`` descriptors into ``out`` (a cffi ``uint64_t[]``) and
        release them.  Returns how many (0 when empty)."""
        if self._region._closed:
            self._ptr()
        return lib.mg_ring_dequeue_burst(self._r, _u64_out(out, max_n, "dequeue"), max_n)

    def peek(self, out, max_n: int) -> int:
        """Copy up to ``max_n`` not-yet-peeked descriptors into ``out`` without releasing
        them (they stay in the ring until ``release``)."""
        r = self._ptr()
        return lib.mg_ring_peek_copy(r, _u64_out(out, max_n, "peek"), max_n)

    def release(self, n: int) -> None:
        """Give back the ``n`` oldest peeked slots to the producer."""
        r = self._ptr()
        _check_n(n, "release")
        check(lib.mg_ring_release_checked(r, n), f"{self.name} release")

    def reset_consumer(self) -> None:
        """Forget peeks of a previous (dead) consumer (they will be delivered again)."""
        lib.mg_ring_reset_consumer(self._ptr())

    # -- anyone ----------------------------------------------------------------------
    def count(self) -> int:
        """Descriptors published and not yet released."""
        return int(lib.mg_ring_count(self._ptr()))

    def snapshot(self) -> list[int]:
        """The descriptors between the consumer and producer index, oldest first.  Only
        meaningful while neither side moves (tests, accounting after a run)."""
        r = self._ptr()
        out = ffi.new("uint64_t[]", self.size)
        n = int(lib.mg_ring_snapshot(r, out, self.size))
        return ffi.unpack(out, n)

    def __repr__(self) -> str:
        return f"<Ring {self.name} of {self._region.name}>"


class Doorbell:
    """The futex doorbell of one consuming actor, shared by all its input rings."""

    __slots__ = ("_region", "index")

    def __init__(self, region: Region, index: int):
        if type(index) is not int or not 0 <= index < region.n_bells:
            raise RegionError(f"doorbell {index}: region has {region.n_bells}")
        self._region = region
        self.index = index

    def wait(self, timeout_ms: int, spin: int = DEFAULT_SPIN) -> bool:
        """Return True as soon as one of this actor's input rings has work, False after
        ``timeout_ms`` without work (or an interrupting signal).  Spins ``spin`` times,
        then sleeps on the futex; an idle actor uses no CPU.  The GIL is released."""
        if type(timeout_ms) is not int or not 0 <= timeout_ms < 2**31:
            raise RegionError(f"doorbell wait: timeout_ms {timeout_ms!r} must be an int >= 0")
        if type(spin) is not int or not 0 <= spin < 2**32:
            raise RegionError(f"doorbell wait: spin {spin!r} must be an int 0..2^32-1")
        rc = lib.mg_bell_wait(self._region._b(), self.index, spin, timeout_ms)
        return check(rc, "doorbell wait") > 0

    def ring(self) -> None:
        """Wake the actor unconditionally (e.g. to look at its mailbox or stop)."""
        check(lib.mg_bell_ring(self._region._b(), self.index), "doorbell ring")

    def alert(self, bits: int = ALERT_STOP) -> None:
        """Leave ``bits`` for the consumer and wake it; its waits return at once until it
        calls :meth:`take_alert` (so the request cannot be lost to a race with its sleep)."""
        if type(bits) is not int or not 0 < bits < 2**32:
            raise RegionError(f"doorbell alert: bits {bits!r} must be an int 1..2^32-1")
        check(lib.mg_bell_alert(self._region._b(), self.index, bits), "doorbell alert")

    def take_alert(self) -> int:
        """The pending alert bits (cleared), 0 when none."""
        return int(lib.mg_bell_take_alert(self._region._b(), self.index))

    def stats(self) -> dict[str, int]:
        b = lib.mg_region_bell(self._region._b(), self.index)
        return {"sleeps": int(b.sleeps), "wakeups": int(b.wakeups), "word": int(b.word),
                "alert": int(b.alert)}


_BUSY_HINT = (
    "an unfinished move of a dead owner (call recover() first), or outstanding "
    "peeks/reservations on the ring made outside the hand"
)


def _hand_check(rc: int, what: str) -> int:
    if rc == -errno.EBUSY:
        raise NativeError(errno.EBUSY, f"{what}: {_BUSY_HINT}")
    return check(rc, what)


class Hand:
    """The frames one actor holds between rings, journalled in shared memory.

    ``pull(ring, n)`` moves frames from an input ring into the hand; ``push(dest)`` moves
    hand entries to output rings (``dest[j]`` = ring id, or ``HAND_KEEP``); entries that do
    not fit stay, in order.  Each move is a two-step journal so that, if the owner dies at
    any instruction, ``recover()`` (called by its replacement or the supervisor) tells
    exactly which frames were still in the hand.
    """

    __slots__ = ("_region", "slot")

    def __init__(self, region: Region, slot: int):
        if type(slot) is not int or not 0 <= slot < region.n_slots:
            raise RegionError(f"hand slot {slot!r}: region has {region.n_slots} slots")
        self._region = region
        self.slot = slot

    def pull(self, ring: Ring, max_n: int) -> int:
        """Move up to ``max_n`` frames from ``ring`` (this actor is its consumer) into the
        hand, after what it already holds.  Returns how many (0: empty ring or full hand)."""
        if not isinstance(ring, Ring) or ring._region is not self._region:
            raise RegionError(f"hand pull: {ring!r} is not a ring of region {self._region.name}")
        _check_n(max_n, "hand pull")
        return _hand_check(
            lib.mg_hand_pull(self._region._b(), self.slot, ring.id, max_n), "hand pull"
        )

    def descs(self) -> list[int]:
        n = ffi.new("uint32_t *")
        p = lib.mg_hand_descs(self._region._b(), self.slot, n)
        return ffi.unpack(p, n[0])

    def count(self) -> int:
        return check(lib.mg_hand_count(self._region._b(), self.slot), "hand count")

    def push(self, dest: Iterable[int]) -> int:
        """``dest[j]``: ring id (``Ring.id``, this actor its producer) for hand entry j, or
        ``HAND_KEEP``; one entry per frame in the hand.  Returns frames pushed; the rest
        (kept, or no room in their ring) stay in the hand in their order."""
        d = list(dest)
        try:
            arr = ffi.new("uint16_t[]", d if d else [0])
        except (OverflowError, TypeError) as exc:
            raise RegionError(f"hand push: destinations must be ring ids or HAND_KEEP ({exc})") from None
        return _hand_check(
            lib.mg_hand_push(self._region._b(), self.slot, arr, len(d)), "hand push"
        )

    def recover(self) -> list[int]:
        """Settle a dead owner's unfinished move; return the frames now in the hand."""
        check(lib.mg_hand_recover(self._region._b(), self.slot), "hand recover")
        return self.descs()


class Tables:
    """Double-buffered table blobs with quiescent-state reclamation.

    One writer (the config manager) calls ``publish``; workers call the C function
    ``mg_tables_acquire`` once per burst.  The active copy is ``generation & 1``;
    generation 0 means nothing was published yet.
    """

    def __init__(self, region: Region):
        self._region = region
        self.capacity = int(region._hdr.tables_bytes)
        self.n_workers = region.n_workers

    def generation(self) -> int:
        return int(lib.mg_tables_generation(self._region._b()))

    def seen(self, worker: int) -> int:
        """The generation worker ``worker`` last reported (QUIESCENT = 2**64-1 when idle)."""
        self._check_worker(worker)
        return int(lib.mg_tables_seen(self._region._b(), worker))

    def _live(self, live_workers: Iterable[int]) -> list[int]:
        live = list(dict.fromkeys(live_workers))
        for w in live:
            self._check_worker(w)
        return live

    def _check_worker(self, w: int) -> None:
        if type(w) is not int or not 0 <= w < self.n_workers:
            raise RegionError(f"worker {w!r}: region has {self.n_workers} workers")

    def _laggards(self, generation: int, live: list[int]) -> dict[int, int]:
        base = self._region._b()
        out = {}
        for w in live:
            if not lib.mg_tables_has_seen(base, w, generation):
                out[w] = int(lib.mg_tables_seen(base, w))
        return out

    def wait_all_seen(self, generation: int, live_workers: Iterable[int], timeout: float) -> bool:
        """True once every worker in ``live_workers`` has seen ``generation`` (or is idle
        and so holds no copy); False after ``timeout`` seconds."""
        live = self._live(live_workers)
        if type(generation) is not int or not 0 <= generation < 2**64:
            raise RegionError(f"generation {generation!r} must be an integer >= 0")
        deadline = time.monotonic() + max(0.0, timeout)
        pause = 0.0002
        while True:
            lib.mg_tables_fence()
            if not self._laggards(generation, live):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.01)

    def prepare(self, size: int, live_workers: Iterable[int], timeout: float) -> int:
        """Everything of a publication of ``size`` bytes that can fail, done first and
        changing nothing the workers see: the size fits the area, every live worker left
        the idle copy (waits up to ``timeout`` s, else :class:`TablesBusyError`), its pages
        are reserved (a full /dev/shm is an error here, not a SIGBUS later).  Returns the
        generation the publication will get.  The config manager calls it before it
        persists a change, so a publication cannot fail after the state file moved on."""
        if size > self.capacity:
            raise RegionError(
                f"table blob of {size} bytes exceeds the region's {self.capacity} (the tables "
                "area is sized when maglev run starts, twice the tables it started with and at "
                "least 256 MiB: restart maglev run with this config to grow it)"
            )
        live = self._live(live_workers)
        cur = self.generation()
        if not self.wait_all_seen(cur, live, timeout):
            lib.mg_tables_fence()
            laggards = self._laggards(cur, live)
            if laggards:  # (else they all reported just after the deadline: go on)
                raise TablesBusyError(cur, laggards)
        new = cur + 1
        if size:
            try:  # SIGBUS-proof: reserve the pages of the idle copy first (data already there is kept)
                os.posix_fallocate(self._region._fd, int(self._region._hdr.tables_copy_off[new & 1]), size)
            except OSError as exc:
                raise RegionError(f"cannot allocate {size} bytes of table copy in /dev/shm: "
                                  f"{exc.strerror or exc}") from None
        return new

    def publish(self, blob: bytes, live_workers: Iterable[int], timeout: float) -> int:
        """Write ``blob`` into the idle copy and make it active; return the new generation.

        Waits up to ``timeout`` s for every live worker to have seen the current
        generation (else raises :class:`TablesBusyError` and changes nothing)."""
        data = bytes(blob)
        new = self.prepare(len(data), live_workers, timeout)  # at once after a prepare()
        base = self._region._b()
        dst = lib.mg_tables_copy(base, new & 1)
        ffi.memmove(dst, data, len(data))
        lib.mg_tables_commit(base, new, len(data))
        return new

    def current(self) -> tuple[int, bytes]:
        """(generation, blob) of the active copy; (0, b"") before the first publish."""
        base = self._region._b()
        while True:
            gen = int(lib.mg_tables_generation(base))
            if gen == 0:
                return 0, b""
            size = int(lib.mg_tables_size(base, gen))
            data = ffi.buffer(lib.mg_tables_copy(base, gen & 1), size)[:]
            lib.mg_tables_fence()
            # The copy of `gen` is rewritten only by the publication of gen + 2.
            if int(lib.mg_tables_generation(base)) <= gen + 1:
                return gen, data

    def acquire(self, worker: int) -> tuple[int, bytes]:
        """Python version of the worker's per-burst ``mg_tables_acquire`` (tests, tools):
        report the current generation as seen and return (generation, blob)."""
        self._check_worker(worker)
        g = ffi.new("uint64_t *")
        p = lib.mg_tables_acquire(self._region._b(), worker, g)
        if p == ffi.NULL:
            return 0, b""
        size = int(lib.mg_tables_size(self._region._b(), g[0]))
        return int(g[0]), ffi.buffer(p, size)[:]

    def quiesce(self, worker: int) -> None:
        """Worker ``worker`` holds no table copy (idle, or just started)."""
        self._check_worker(worker)
        lib.mg_tables_quiesce(self._region._b(), worker)


@dataclass
class AccountReport:
    """Where every frame of the pool is.  ``ok`` when each frame is in exactly one place."""

    n_frames: int
    places: dict[str, int] = field(default_factory=dict)  # place -> frames there
    missing: list[int] = field(default_factory=list)  # frames found nowhere (leaked)
    duplicates: dict[int, list[str]] = field(default_factory=dict)  # frame -> places
    invalid: dict[str, list[int]] = field(default_factory=dict)  # out-of-range indices

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.invalid)

    @property
    def total(self) -> int:
        return sum(self.places.values())

    def __str__(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.places.items() if v)
        if self.ok:
            return f"all {self.n_frames} frames accounted for ({where})"
        dup = dict(list(self.duplicates.items())[:5])
        return (
            f"frame accounting FAILED: {len(self.missing)} missing "
            f"(first {self.missing[:8]}), {len(self.duplicates)} duplicated (e.g. {dup}), "
            f"invalid {self.invalid}; places: {where}"
        )


class Region:
    """The mapped shared-memory region.  Use ``create`` (once, by the supervisor) or
    ``attach`` (every other process); both return a context manager."""

    def __init__(self, name: str, path: str, fd: int, mm: mmap.mmap, owner: bool):
        self.name = name
        self.path = path
        self._owner = owner
        self._fd = fd
        self._mm = mm
        self._buf = ffi.from_buffer("uint8_t[]", mm)
        self._base = ffi.cast("void *", self._buf)
        self._hdr = ffi.cast("struct mg_region_hdr *", self._base)
        self._closed = False
        h = self._hdr
        self.size = int(h.total_size)
        self.n_workers = int(h.n_workers)
        self.n_frames = int(h.n_frames)
        self.ring_size = int(h.ring_size)
        self.n_bells = int(h.n_bells)
        self.n_slots = int(h.n_slots)
        self.n_rings = int(h.n_rings)
        self.pool_ptr = lib.mg_region_pool(self._base)
        self._rings: dict[tuple[int, int], Ring] = {}
        self.tables = Tables(self)

    # -- life cycle ----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        name: str,
        n_workers: int,
        n_frames: int = 8192,
        ring_size: int = 1024,
        tables_bytes: int = 64 << 20,
    ) -> Region:
        """Create and initialise ``/dev/shm/maglev-<name>``: all frames on the free ring,
        rings empty, no tables published.  Fails if it exists (``FileExistsError`` as a
        RegionError): remove a stale one with ``Region.unlink_name``."""
        path = _shm_path(name)
        limits = (
            f"n_workers 1..{lib.MG_MAX_WORKERS}, n_frames 1..{lib.MG_MAX_FRAMES}, ring_size a "
            f"power of two {lib.MG_RING_MIN}..{lib.MG_RING_MAX}, tables_bytes 0..{lib.MG_TABLES_MAX}"
        )
        values = (n_workers, n_frames, ring_size, tables_bytes)
        layout = ffi.new("struct mg_region_hdr *")
        ok = all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << 32 if i < 3 else 1 << 64)
            for i, v in enumerate(values)
        )
        if not ok or lib.mg_region_layout(*values, layout) < 0:
            raise RegionError(
                f"region {name}: invalid sizes ({limits}): got n_workers={n_workers!r}, "
                f"n_frames={n_frames!r}, ring_size={ring_size!r}, tables_bytes={tables_bytes!r}"
            )
        from maglev.record import forget, note

        note("shm", os.path.basename(path))  # $MAGLEV_RECORD (test harness): before it exists
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            forget("shm", os.path.basename(path))  # not ours: the harness must not touch it
            raise RegionError(f"region {name}: {path} already exists") from exc
        try:
            os.ftruncate(fd, int(layout.total_size))
            # Allocate everything but the table copies now: on a full /dev/shm this is a
            # clean ENOSPC here instead of a SIGBUS at the first touch.  The copies stay
            # sparse until a publication needs them (Tables.publish allocates first).
            try:
                os.posix_fallocate(fd, 0, int(layout.tables_copy_off[0]))
            except OSError as exc:
                raise RegionError(f"region {name}: cannot allocate {path}: {exc}") from None
            mm = mmap.mmap(fd, int(layout.total_size), mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        try:
            base = ffi.from_buffer("uint8_t[]", mm)
            check(lib.mg_region_init(base, layout), f"region {name} init")
            ffi.release(base)
            return cls(name, path, fd, mm, owner=True)
        except BaseException:
            mm.close()
            os.close(fd)
            os.unlink(path)
            raise

    @classmethod
    def attach(cls, name: str) -> Region:
        """Map an existing region (created by another process)."""
        path = _shm_path(name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError as exc:
            raise RegionError(f"region {name}: {path} does not exist") from exc
        try:
            size = os.fstat(fd).st_size
            if size < int(lib.MG_REGION_HDR_SIZE):
                raise RegionError(f"region {name}: {path} is too small to be a maglev region")
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            raise
        base = ffi.from_buffer("uint8_t[]", mm)
        rc = lib.mg_region_check(base, size)
        ffi.release(base)
        if rc < 0:
            mm.close()
            os.close(fd)
            why = {
                -errno.EPROTO: "wrong magic or layout version (not a maglev region, or another version)",
                -errno.EAGAIN: "still being initialised",
            }.get(rc, "inconsistent header")
            raise RegionError(f"region {name}: {path}: {why}")
        return cls(name, path, fd, mm, owner=False)

    def close(self) -> None:
        """Unmap (idempotent).  Objects derived from this region become unusable."""
        if self._closed:
            return
        self._closed = True
        self._rings.clear()
        self.pool_ptr = None
        self._hdr = None
        self._base = None
        ffi.release(self._buf)
        self._buf = None
        self._mm.close()
        os.close(self._fd)

    def __del__(self) -> None:
        # A forgotten Region must not leak its descriptor and mapping.
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    def unlink(self) -> None:
        """Remove the name from /dev/shm (the memory lives until the last unmap)."""
        self.unlink_name(self.name)

    @staticmethod
    def unlink_name(name: str) -> bool:
        """Remove ``/dev/shm/maglev-<name>``; True if it existed."""
        try:
            os.unlink(_shm_path(name))
            return True
        except FileNotFoundError:
            return False

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _b(self):
        if self._closed:
            raise RegionError(f"region {self.name} is closed")
        return self._base

    @property
    def base(self):
        """``void *`` to the start of the region, for C kernels."""
        return self._b()

    # -- rings -----------------------------------------------------------------------
    def ring(self, kind: int, i: int = 0) -> Ring:
        self._b()
        key = (kind, i)
        r = self._rings.get(key)
        if r is None:
            if kind not in _KIND_NAMES:
                raise RegionError(f"ring kind {kind!r} is not one of {sorted(_KIND_NAMES)}")
            r = self._rings[key] = Ring(self, kind, i)
        return r

    def _worker_ring(self, kind: int, i: int) -> Ring:
        if not isinstance(i, int) or not 0 <= i < self.n_workers:
            raise RegionError(f"worker {i!r}: region {self.name} has {self.n_workers} workers")
        return self.ring(kind, i)

    def rx(self, i: int) -> Ring:
        return self._worker_ring(RING_RX, i)

    def tx(self, i: int) -> Ring:
        return self._worker_ring(RING_TX, i)

    def ret(self, i: int) -> Ring:
        return self._worker_ring(RING_RET, i)

    def spare(self, i: int) -> Ring:
        return self._worker_ring(RING_SPARE, i)

    @property
    def sent(self) -> Ring:
        return self.ring(RING_SENT, 0)

    @property
    def free(self) -> Ring:
        return self.ring(RING_FREE, 0)

    def all_rings(self) -> list[Ring]:
        out = [self.free, self.sent]
        for i in range(self.n_workers):
            out += [self.rx(i), self.tx(i), self.ret(i), self.spare(i)]
        return out

    def ring_by_id(self, ring_id: int) -> Ring:
        kind = ffi.new("uint32_t *")
        idx = ffi.new("uint32_t *")
        check(lib.mg_region_ring_kind(self._b(), ring_id, kind, idx), f"ring id {ring_id}")
        return self.ring(int(kind[0]), int(idx[0]))

    # -- doorbells, hands, stats, heartbeats -------------------------------------------
    def bell(self, index: int) -> Doorbell:
        """``BELL_STEERING``, ``BELL_MUXER`` or ``worker_bell(i)``."""
        self._b()
        return Doorbell(self, index)

    def hand(self, slot: int) -> Hand:
        self._b()
        return Hand(self, slot)

    def _check_slot(self, slot: int) -> None:
        if not isinstance(slot, int) or not 0 <= slot < self.n_slots:
            raise RegionError(f"slot {slot!r}: region has {self.n_slots} slots")

    def stats(self, slot: int) -> StatsBlock:
        """The counter block of actor ``slot`` (:class:`~maglev.rings.stats.StatsBlock`:
        words read and written through C): one writer (the actor), read by anyone; values
        may lag a burst behind."""
        self._check_slot(slot)
        self._b()
        return StatsBlock(self, slot)

    def heartbeat(self, slot: int) -> int:
        """Last heartbeat (CLOCK_MONOTONIC ns) of actor ``slot``; 0 if never."""
        self._check_slot(slot)
        return int(lib.mg_heartbeat_get(self._b(), slot))

    def set_heartbeat(self, slot: int, now_ns: int | None = None) -> None:
        self._check_slot(slot)
        lib.mg_heartbeat_set(self._b(), slot, time.monotonic_ns() if now_ns is None else now_ns)

    def slot_pid(self, slot: int) -> int:
        """PID recorded by the process now serving ``slot`` (0 if none)."""
        self._check_slot(slot)
        return int(lib.mg_region_slot(self._b(), slot).pid)

    def set_slot_pid(self, slot: int, pid: int | None = None) -> None:
        """Record the PID serving ``slot`` (an actor calls this once at start)."""
        self._check_slot(slot)
        lib.mg_region_slot(self._b(), slot).pid = os.getpid() if pid is None else pid

    # -- accounting -------------------------------------------------------------------
    def account(self, held: Mapping[str, Iterable[int]] | None = None) -> AccountReport:
        """Prove every frame is in exactly one place: a ring (between its consumer and
        producer index), an actor's hand (after settling its journal, as ``recover``
        would, without changing it), or ``held`` (frames the caller says an actor holds
        outside the hand, e.g. ``{"nic": [...]}``).  Call when the actors are stopped or
        idle; a moving pipeline gives a meaningless answer."""
        base = self._b()
        where: dict[int, list[str]] = {}
        report = AccountReport(self.n_frames)

        def add(place: str, descs: Iterable[int]) -> None:
            cnt = 0
            for d in descs:
                f = int(d) & 0xFFFFFFFF
                cnt += 1
                if f >= self.n_frames:
                    report.invalid.setdefault(place, []).append(f)
                    continue
                where.setdefault(f, []).append(place)
            report.places[place] = report.places.get(place, 0) + cnt

        for r in self.all_rings():
            add(r.name, r.snapshot())
        out = ffi.new("uint64_t[]", HAND_MAX)
        for slot in range(self.n_slots):
            n = check(lib.mg_hand_settled(base, slot, out, HAND_MAX), "hand settle")
            if n:
                add(f"hand{slot}", ffi.unpack(out, n))
        for place, descs in (held or {}).items():
            add(str(place), descs)
        for f in range(self.n_frames):
            places = where.get(f)
            if not places:
                report.missing.append(f)
            elif len(places) > 1:
                report.duplicates[f] = places
        return report

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.size} bytes"
        return f"<Region {self.name} {self.n_workers} workers {self.n_frames} frames {state}>"
