"""Watch one file and hand its new bytes to a callback when its content changes.

Used for hot reload (the policy file) and the flags file. It must see every way a file is
replaced in practice:

- in-place writes (most editors): the file's own ``IN_MODIFY``/``IN_CLOSE_WRITE``;
- atomic renames (a temporary file in the same directory, ``os.replace`` over the target): the
  target's inode changes, so a watch on the *file* would go on watching the old, deleted inode;
- Kubernetes ConfigMap volumes: ``policies.yaml -> ..data/policies.yaml``, ``..data ->
  ..2026_11_26_16_00_00.123/``. An update writes a new timestamped directory, points
  ``..data_tmp`` at it and renames ``..data_tmp`` over ``..data``; nothing named
  ``policies.yaml`` is touched at all.

So the watch is on the *directory* of the path as given (symlinks not resolved: the ConfigMap's
``..data`` lives there), non-recursive, and any event in it means "look again": the path is read
(following symlinks) and a SHA-256 of the bytes is compared with the last one delivered. Only a
different hash calls back. Rewriting the same content, unrelated files in the directory, and
the ConfigMap's own bookkeeping (the old directory's deletion) cost a read and call nothing.

Around that core:

- **One worker thread** reads and calls back, so callbacks never run concurrently with each
  other; watchdog's observer thread only signals it. A callback that raises is ignored (the
  watch goes on): the callback is expected to handle its own errors.
- **Debounce.** A burst of events (a rename is three or four of them) is coalesced: the read
  happens ``debounce`` seconds after the last event, and at the latest ``max(1 s, 20 x
  debounce)`` after the first, so a directory that never goes quiet still gets read.
- **Poll.** Every ``poll_every`` seconds without a read, the file is hashed again anyway, and
  the observer is checked and rebuilt if it died (its directory was deleted, it could not be
  set up): inotify drops events when its queue overflows, and network filesystems deliver
  none.
- **Unreadable is not a change.** A file that is briefly missing (a writer that deletes and
  re-creates it) is no change: the last content stays. ``on_error`` hears of it only once it has
  stayed unreadable for a poll round (a failed read at least ``poll_every`` after the first of a
  run of failed reads; without polling, the second one), once per episode. After such a report
  the next successful read is delivered even if the bytes did not change, so a consumer that
  marked its data stale learns that it is current again.
- **Our own reads are not events.** inotify reports opens and closes of files in the directory,
  so reading the file would wake the watch again; those events are filtered out.
- **Fork.** A forked child has no threads but the one that forked. Running watches register
  with :mod:`resilience._fork`, whose ``os.register_at_fork`` handler restarts each one in the
  child with a new observer and a new worker (pre-forking servers keep reloading).
  The parent's observer object is abandoned in the child, untouched: its locks may have been
  held by a thread that no longer exists. Its inotify descriptor stays open in the child.

Cost of a watch: one inotify instance (``fs.inotify.max_user_instances``, 128 by default, bounds
them per user), watchdog's three threads and the worker, all daemon threads; :meth:`stop` ends
them. What the watch cannot do: see, other than by the poll, a change made behind a symlink
that points into another directory (only the path's own directory is watched); or tell a
half-written in-place write from a finished one (the consumer validates what it gets; the
write's last event then delivers the finished file).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import time
from collections.abc import Callable

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from ._fork import follow_forks, forget_forks
from ._yaml import read_limited

__all__ = ["FileWatch"]

#: The events that can mean new content. Opens and closes without a write are left out: our own
#: reads cause them, and they would wake the watch again after every read.
_EVENTS: tuple[type[FileSystemEvent], ...] = (
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
)
#: Ignored even if an observer that does not honour ``event_filter`` reports them.
_QUIET = (FileOpenedEvent, FileClosedNoWriteEvent)

#: How long stop() waits for the threads, in seconds.
_JOIN_TIMEOUT = 1.0


class _Signal(FileSystemEventHandler):
    """Runs on watchdog's observer thread: it only wakes the worker."""

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def dispatch(self, event: FileSystemEvent) -> None:
        if not isinstance(event, _QUIET):
            self._signal()


class FileWatch:
    """Calls back with a file's bytes whenever its content changes.

    Args:
        path: the file to watch. Its directory is watched, as given (a symlink in it is followed
            at each read, never resolved once: see the module docstring).
        on_change: called with the new bytes, from the watch's worker thread (or from the
            thread calling :meth:`check_now`); never twice at the same time. Exceptions it
            raises are ignored.
        on_error: called with the error when the file has stayed unreadable for a poll round,
            or when the directory cannot be watched; once per episode. Exceptions it raises are
            ignored.
        debounce: seconds of quiet after the last event before the file is read.
        poll_every: seconds between reads that no event asked for (and health checks of the
            observer); ``None`` disables them, and with them the rebuilding of a failed
            observer.
        name: the worker thread's name (the observer's is ``<name>-observer``).

    Raises:
        ValueError: a negative ``debounce`` or a non-positive ``poll_every``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_change: Callable[[bytes], None],
        *,
        on_error: Callable[[OSError], None] | None = None,
        debounce: float = 0.05,
        poll_every: float | None = 5.0,
        name: str = "resilience-watch",
    ) -> None:
        if not debounce >= 0:
            raise ValueError(f"debounce must be 0 or more seconds, not {debounce!r}")
        if poll_every is not None and not poll_every > 0:
            raise ValueError(f"poll_every must be more than 0 seconds or None, not {poll_every!r}")
        self._path = os.fspath(path)
        # abspath, not realpath: the directory holding the name as given is where a rename or a
        # ConfigMap's ..data swap happens. Absolute once, so a later chdir changes nothing.
        self._abspath = os.path.abspath(self._path)
        self._dir = os.path.dirname(self._abspath)
        self._on_change = on_change
        self._on_error = on_error
        self._debounce = debounce
        self._max_delay = max(1.0, 20 * debounce)
        self._poll_every = poll_every
        self._name = name
        self._init_locks()
        # Guarded by _cond: the lifecycle and the pending-event state the worker waits on.
        self._started = False
        self._stopping = False
        self._observer: BaseObserver | None = None
        self._worker: threading.Thread | None = None
        self._dirty = False
        self._first_event = 0.0
        self._last_event = 0.0
        # Guarded by _check_lock: what was delivered, and the error bookkeeping.
        self._digest: bytes | None = None  # None: nothing known yet; any readable content is new
        self._failing_since: float | None = None  # monotonic time of the first failed read
        self._failures = 0
        self._reported = False  # on_error heard of the current unreadable episode
        self._observer_reported = False  # on_error heard that the directory is not watched
        self._pending_error: OSError | None = None  # an observer failure the worker must report

    def _init_locks(self) -> None:
        self._cond = threading.Condition()
        # Reentrant: a callback may call check_now() (or stop()) on its own watch.
        self._check_lock = threading.RLock()
        self._owner: int | None = None  # the thread inside _check, so stop() never joins itself

    # --- public -------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The watched path, as given."""
        return self._path

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._started and not self._stopping

    def start(self, initial: bytes | None = None) -> FileWatch:
        """Start watching. The content to compare against is ``initial`` or, without it, the
        file as read now (no callback for it; a file unreadable now makes its first readable
        content a change).

        Args:
            initial: the bytes the caller already loaded and validated. If the file changed
                since, the first check (right after start) calls back with the new bytes.

        Returns:
            The watch itself, started.

        Raises:
            RuntimeError: the watch was started or stopped before (make a new one).
        """
        with self._cond:
            if self._started or self._stopping:
                raise RuntimeError("a FileWatch starts once; make a new one")
            self._started = True
        # The observer first, then the initial read: a change in between is then an event.
        self._install_observer()
        with self._check_lock:
            if initial is not None:
                self._digest = hashlib.sha256(initial).digest()
            else:
                try:
                    self._digest = hashlib.sha256(_read(self._abspath)).digest()
                except OSError:
                    self._failing_since, self._failures = time.monotonic(), 1
        self._launch()
        return self

    def stop(self) -> None:
        """Stop watching: the worker starts no callback after this returns (one running may
        finish). Idempotent, and safe to call from a callback (it then does not wait for the
        worker, which ends when the callback returns). Waits about a second at most for the
        threads. :meth:`check_now` still works after it."""
        forget_forks(self)
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            observer, self._observer = self._observer, None
            worker = self._worker
            self._cond.notify_all()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        if observer is not None:
            _close_observer(observer, _JOIN_TIMEOUT)
        me = threading.get_ident()
        if worker is not None and me not in (worker.ident, self._owner):
            worker.join(max(0.0, deadline - time.monotonic()))

    def check_now(self) -> bool:
        """Read the file now and call back, on this thread, if its content changed.

        Returns:
            Whether ``on_change`` was called.
        """
        return self._check(from_worker=False)

    # --- reading ------------------------------------------------------------------------------

    def _check(self, *, from_worker: bool) -> bool:
        with self._check_lock:
            outer, self._owner = self._owner, threading.get_ident()
            try:
                if from_worker and self._stopping:
                    return False
                try:
                    data = _read(self._abspath)
                except OSError as exc:
                    self._unreadable(exc)
                    return False
                digest = hashlib.sha256(data).digest()
                recovered = self._reported
                self._failing_since, self._failures, self._reported = None, 0, False
                if digest == self._digest and not recovered:
                    return False
                if from_worker and self._stopping:
                    return False  # stop() came during the read
                # Recorded before the call: a callback that raises must not be re-run by every
                # later event for the same content.
                self._digest = digest
                with contextlib.suppress(Exception):
                    self._on_change(data)
                return True
            finally:
                self._owner = outer

    def _unreadable(self, exc: OSError) -> None:
        """Count a failed read; report it once it has lasted a poll round (lock held)."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since, self._failures = now, 1
            return
        self._failures += 1
        if self._reported or self._on_error is None:
            return
        if now - self._failing_since < (self._poll_every or 0.0):
            return
        self._reported = True
        self._report(exc)

    def _report(self, exc: OSError) -> None:
        if self._on_error is not None:
            with contextlib.suppress(Exception):
                self._on_error(exc)

    def _report_pending(self) -> None:
        with self._check_lock:
            pending, self._pending_error = self._pending_error, None
            if pending is not None and not self._stopping:
                self._report(pending)

    # --- the observer -------------------------------------------------------------------------

    def _signal(self) -> None:
        """An event: (re)start the debounce and wake the worker."""
        now = time.monotonic()
        with self._cond:
            if not self._dirty:
                self._dirty, self._first_event = True, now
            self._last_event = now
            self._cond.notify()

    def _open_observer(self) -> BaseObserver:
        observer = Observer()
        try:
            observer.name = f"{self._name}-observer"
            observer.schedule(
                _Signal(self._signal), self._dir, recursive=False, event_filter=list(_EVENTS)
            )
            observer.start()
        except BaseException:
            _close_observer(observer, _JOIN_TIMEOUT)
            raise
        return observer

    def _install_observer(self) -> None:
        """Set up a new observer; a failure is left for the worker to report (once)."""
        try:
            observer = self._open_observer()
        except Exception as exc:
            with self._check_lock:
                if not self._observer_reported:
                    self._observer_reported = True
                    self._pending_error = self._watch_error(exc)
            return
        with self._cond:
            stale = observer if self._stopping else None
            if stale is None:
                self._observer = observer
        if stale is not None:
            _close_observer(stale, _JOIN_TIMEOUT)
            return
        with self._check_lock:
            self._observer_reported = False

    def _watch_error(self, exc: Exception) -> OSError:
        """The error ``on_error`` hears when the directory cannot be watched."""
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or repr(exc)
        then = "polling only" if self._poll_every is not None else "changes are not seen"
        errno = exc.errno if isinstance(exc, OSError) else None
        message = f"cannot watch the directory ({reason}); {then}"
        return OSError(errno, message, self._dir) if errno else OSError(f"{self._dir}: {message}")

    def _ensure_observer(self) -> None:
        """Rebuild the observer if it died (its directory went away) or never started."""
        with self._cond:
            if self._stopping:
                return
            observer = self._observer
            if observer is not None and _healthy(observer):
                return
            self._observer = None
        if observer is not None:
            _close_observer(observer, _JOIN_TIMEOUT)
        self._install_observer()

    # --- the worker ---------------------------------------------------------------------------

    def _launch(self) -> None:
        with self._cond:
            # Check once at once: with ``initial``, the file may have changed since the caller
            # read it; without it, a change during start-up is caught.
            now = time.monotonic()
            self._dirty, self._first_event, self._last_event = True, now, now - self._debounce
            self._worker = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._worker.start()
        follow_forks(self)

    def _run(self) -> None:
        poll = self._poll_every
        next_poll = math.inf if poll is None else time.monotonic() + poll
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    due = math.inf
                    if self._dirty:
                        due = min(
                            self._last_event + self._debounce, self._first_event + self._max_delay
                        )
                    if now >= due or now >= next_poll:
                        break
                    wake = min(due, next_poll)
                    self._cond.wait(None if wake == math.inf else wake - now)
                by_event = now >= due
                if by_event:
                    self._dirty = False
            if not by_event:
                self._ensure_observer()  # before the read: nothing falls between the two
            self._check(from_worker=True)
            self._report_pending()
            if poll is not None:
                next_poll = time.monotonic() + poll

    def _restart_after_fork(self) -> None:
        """In a forked child: the threads are gone, and the locks may be held by them."""
        self._init_locks()
        if not self._started or self._stopping:
            return
        self._observer = None  # the parent's: abandoned, not stopped (see the module docstring)
        self._install_observer()
        self._launch()


def _read(path: str) -> bytes:
    return read_limited(path)  # a file over the size limit is refused whole: no need for more


def _healthy(observer: BaseObserver) -> bool:
    emitters = list(observer.emitters)
    return observer.is_alive() and bool(emitters) and all(e.is_alive() for e in emitters)


def _close_observer(observer: BaseObserver, timeout: float) -> None:
    with contextlib.suppress(Exception):
        observer.stop()
    if observer.is_alive():
        observer.join(timeout)
