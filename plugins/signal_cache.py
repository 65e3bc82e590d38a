"""The in-process cache of last good signals that ``session`` feeds and ``stale_cache`` serves.

Shared by name through :meth:`resilience.BuildContext.shared`, so one session's last good state
is kept once per engine, whichever policies read it. A cachetools ``TTLCache`` keyed by session
id: bounded (least recently used sessions go first) and with a time to live per entry, so that
sessions that ended stop holding memory.

- **Bound.** ``max_entries``, the largest any reader declares (:meth:`SignalCache.ensure_capacity`).
- **TTL.** ``ttl``, the largest ``max_age`` any reader declares (:meth:`SignalCache.ensure_ttl`):
  no reader serves an entry older than that, counted from its last good read. Time is the
  engine's wall clock (:meth:`SignalCache.bind_clock`), the one ``remember`` is given.
- **Writes.** A successful read writes only when the signals changed; equal signals only move
  the entry's timestamp, in place. cachetools counts an entry's life from its insertion, though,
  so an entry refreshed in place is re-inserted (the same object: no new entry) once its
  insertion is older than half the TTL, and cachetools keeps entries for ``1.5 * ttl`` after
  insertion. Together: an entry stays at least ``ttl`` after its last good read, so it never
  expires under a reader that may still serve it, and at most ``1.5 * ttl`` (an expired entry
  goes at the next insert or access, or at once when a read finds it older than ``ttl``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import suppress

from cachetools import TTLCache

from resilience import Signals, hold_across_forks

__all__ = ["DEFAULT_MAX_ENTRIES", "SignalCache", "cache_key"]

DEFAULT_MAX_ENTRIES = 100_000

#: An entry refreshed in place is re-inserted once its insertion is older than this share of
#: the TTL; cachetools keeps entries that much longer than the TTL to cover the gap.
_REINSERT_SHARE = 0.5


def cache_key(name: str) -> tuple[str, str]:
    """The key under which the cache called ``name`` is shared in an engine."""
    return ("resilience.signal_cache", name)


class _Entry:
    __slots__ = ("fetched_at", "inserted_at", "signals")

    def __init__(self, signals: Signals, fetched_at: float) -> None:
        self.signals = signals
        self.fetched_at = fetched_at  # the last good read
        self.inserted_at = fetched_at  # when cachetools' TTL started counting (at most)


class SignalCache:
    """Last good signals per session, with the wall time they were last confirmed.

    Until a reader declares a TTL (:meth:`ensure_ttl`) entries never expire. Thread-safe:
    cachetools caches are not, so every access holds a lock.

    Args:
        max_entries: sessions kept until a reader declares its size (:meth:`ensure_capacity`).
        timer: the wall clock the TTL counts on, until :meth:`bind_clock` binds the engine's.
    """

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, timer: Callable[[], float] = time.time
    ) -> None:
        self._timer = timer
        self._ttl: float | None = None
        self._reinsert_after = math.inf
        self._entries: TTLCache[str, _Entry] = self._new_cache(max_entries)
        self._lock = threading.Lock()
        hold_across_forks(self, "_lock", rank=2)
        self._sized = False
        # What a build that renewed this cache declared, [size, ttl], applied by settle() once
        # that build runs: a refused build must not resize the cache the running one uses.
        self._staged: list[float | None] | None = None
        # While settle() builds the resized cache: the entries written meanwhile, by key.
        self._written: dict[str, _Entry] | None = None
        #: step ids that write / read this cache, for the build-time wiring check.
        self.writers: list[str] = []
        self.readers: list[str] = []

    @property
    def max_entries(self) -> int:
        return int(self._entries.maxsize)

    @property
    def ttl(self) -> float | None:
        """How long after its last good read an entry is kept at least; ``None``: forever."""
        return self._ttl

    def bind_clock(self, wall: Callable[[], float]) -> None:
        """Count the TTL on ``wall``: the engine's wall clock, which ``remember`` is given."""
        with self._lock:
            if wall != self._timer:
                self._timer = wall
                self._rebuild(self.max_entries)

    def ensure_capacity(self, max_entries: int) -> None:
        """Size the cache for a reader: the first declaration sets it, later ones may only grow
        it (the largest size any reader declares wins)."""
        with self._lock:
            if self._staged is not None:
                self._staged[0] = max(self._staged[0] or 0, max_entries)
                return
            if not self._sized or max_entries > self._entries.maxsize:
                self._sized = True
                self._rebuild(max_entries)

    def ensure_ttl(self, seconds: float) -> None:
        """Expire entries for a reader that serves them up to ``seconds`` after their last good
        read: the largest TTL any reader declares wins."""
        if not seconds > 0:
            raise ValueError(f"a TTL must be positive, not {seconds!r}")
        with self._lock:
            if self._staged is not None:
                self._staged[1] = max(self._staged[1] or 0.0, seconds)
                return
            if self._ttl is None or seconds > self._ttl:
                self._ttl = seconds
                self._reinsert_after = seconds * _REINSERT_SHARE
                self._rebuild(self.max_entries)

    def remember(self, key: str, signals: Signals, now: float) -> None:
        """Record a successful read at wall time ``now``.

        Writes only when the signals differ from the entry's; otherwise only the entry's
        timestamp moves, in place (and the entry is re-inserted when its insertion is older than
        half the TTL, so that it does not expire while it is being refreshed).
        """
        with self._lock:
            entries = self._entries
            entry = entries.get(key)
            if entry is not None and entry.signals == signals:
                entry.fetched_at = now
                if now - entry.inserted_at > self._reinsert_after:
                    entry.inserted_at = now
                    entries[key] = entry  # the same entry: its TTL starts again
                # No expire() here: only inserts add entries, and each insert expires first.
            else:
                fresh = entries[key] = _Entry(signals, now)  # expires what is due first
                if self._written is not None:  # settle() is moving the entries: carry it too
                    self._written[key] = fresh

    def recall(self, key: str) -> tuple[Signals, float] | None:
        """The last good signals for ``key`` and when they were last confirmed, if any."""
        with self._lock:
            entries = self._entries
            entries.expire()
            entry = entries.get(key)
            if entry is None:
                return None
            if self._ttl is not None and self._timer() - entry.fetched_at > self._ttl:
                with suppress(KeyError):  # cachetools raises if it expired meanwhile
                    del entries[key]  # no reader serves it any more
                return None
            return entry.signals, entry.fetched_at

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)  # expires what is due first

    def renew(self) -> None:
        """A reload hands this cache, with its entries, to a new build: forget the old build's
        wiring (the new steps declare themselves again), and hold what the new readers declare
        (size, TTL) until :meth:`settle`, since the running build still serves from it and the
        new one may yet be refused."""
        with self._lock:
            self.writers = []
            self.readers = []
            self._staged = [None, None]

    def settle(self) -> None:
        """The build that renewed this cache is running: take the size and TTL its readers
        declared, smaller ones included. Nothing happens when they are unchanged. Otherwise
        the entries move to a cache of the new shape, built without holding the lock (requests
        keep reading and writing the old one meanwhile; their writes are carried across), the
        most recently confirmed entries kept when the new size is smaller."""
        with self._lock:
            staged, self._staged = self._staged, None
            if staged is None:
                return
            size, ttl = staged
            if size is not None:
                self._sized = True
            new_size = int(size) if size is not None else self.max_entries
            new_ttl = ttl if ttl is not None else self._ttl
            if new_size == self.max_entries and new_ttl == self._ttl:
                return
            entries = list(self._entries.items())
            self._written = {}
        reinsert_after = math.inf if new_ttl is None else new_ttl * _REINSERT_SHARE
        lifetime = math.inf if new_ttl is None else new_ttl + reinsert_after
        fresh: TTLCache[str, _Entry] = TTLCache(maxsize=new_size, ttl=lifetime, timer=self._timer)
        now = self._timer()
        # Oldest confirmation first: when the cache is smaller, the least recent ones go.
        for key, entry in sorted(entries, key=lambda item: item[1].fetched_at):
            entry.inserted_at = min(entry.inserted_at, now)
            fresh[key] = entry
        with self._lock:
            written, self._written = self._written or {}, None
            for key, entry in written.items():
                fresh[key] = entry
            self._entries = fresh
            self._ttl = new_ttl
            self._reinsert_after = reinsert_after

    def close(self) -> None:
        with self._lock:
            self._entries.clear()

    def _new_cache(self, max_entries: int) -> TTLCache[str, _Entry]:
        lifetime = math.inf if self._ttl is None else self._ttl + self._reinsert_after
        return TTLCache(maxsize=max_entries, ttl=lifetime, timer=self._timer)

    def _rebuild(self, max_entries: int) -> None:
        # Build time only (readers declare their needs then), so normally empty: entries kept
        # start a new life in the new cache.
        fresh = self._new_cache(max_entries)
        now = self._timer()
        for key, entry in list(self._entries.items()):
            entry.inserted_at = min(entry.inserted_at, now)
            fresh[key] = entry
        self._entries = fresh
