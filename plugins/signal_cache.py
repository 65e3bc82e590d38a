"""The in-process cache of last good signals that ``session`` feeds and ``stale_cache`` serves.

Shared by name through :meth:`resilience.BuildContext.shared`, so one session's last good state
is kept once per engine, whichever policies read it. A bounded LRU (cachetools) keyed by session
id; a successful read writes only when the signals changed, otherwise it refreshes the entry's
timestamp in place.
"""

from __future__ import annotations

import threading

from cachetools import LRUCache

from resilience import Signals

__all__ = ["DEFAULT_MAX_ENTRIES", "SignalCache", "cache_key"]

DEFAULT_MAX_ENTRIES = 100_000


def cache_key(name: str) -> tuple[str, str]:
    """The key under which the cache called ``name`` is shared in an engine."""
    return ("resilience.signal_cache", name)


class _Entry:
    __slots__ = ("fetched_at", "signals")

    def __init__(self, signals: Signals, fetched_at: float) -> None:
        self.signals = signals
        self.fetched_at = fetched_at


class SignalCache:
    """Last good signals per session, with the wall time they were last confirmed.

    Thread-safe: cachetools caches are not, so every access holds a lock for a dict operation.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._entries: LRUCache[str, _Entry] = LRUCache(maxsize=max_entries)
        self._lock = threading.Lock()
        self._sized = False
        #: step ids that write / read this cache, for the build-time wiring check.
        self.writers: list[str] = []
        self.readers: list[str] = []

    @property
    def max_entries(self) -> int:
        return int(self._entries.maxsize)

    def ensure_capacity(self, max_entries: int) -> None:
        """Size the cache for a reader: the first declaration sets it, later ones may only grow
        it (the largest size any reader declares wins)."""
        with self._lock:
            if not self._sized or max_entries > self._entries.maxsize:
                self._sized = True
                bigger: LRUCache[str, _Entry] = LRUCache(maxsize=max_entries)
                bigger.update(self._entries)
                self._entries = bigger

    def remember(self, key: str, signals: Signals, now: float) -> None:
        """Record a successful read at wall time ``now``.

        Writes only when the signals differ from the entry's; otherwise only the entry's
        timestamp moves, in place.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.signals == signals:
                entry.fetched_at = now
            else:
                self._entries[key] = _Entry(signals, now)

    def recall(self, key: str) -> tuple[Signals, float] | None:
        """The last good signals for ``key`` and when they were last confirmed, if any."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        return entry.signals, entry.fetched_at

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
