"""What the engine does around ``os.fork``: consistent locks, and workers that start again.

A forked child has only the thread that forked. Pre-forking servers (gunicorn ``--preload``,
``multiprocessing``) fork after the engine is built, so two things must hold in every child:

- **No lock is left held by a thread that no longer exists, and no state is half-updated.**
  Objects register their locks with :func:`hold_across_forks`. Just before a fork, the forking
  thread takes every registered lock, by rank (a reload's lock before the engine's, the
  engine's before a breaker's), so the fork happens between operations, never inside one: a
  reload or a flag change in progress finishes first. After the fork, the parent releases
  them; the child re-initializes them, unlocked. A lock that could not be taken within
  :data:`FORK_WAIT` seconds (something is stuck) is re-initialized in the child all the same,
  so the child cannot hang on it, and its owner's child hook repairs what it can.
- **Background workers run again.** Watchers, flag sources and the fleet exchange register
  with :func:`follow_forks` while they run; in the child each is asked to start again (new
  threads, new connections), after the locks are sound.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import weakref
from typing import Any, Protocol

__all__ = ["FORK_WAIT", "follow_forks", "forget_forks", "hold_across_forks"]

#: Seconds the forking thread waits for each registered lock before forking without it.
FORK_WAIT = 10.0


class _Restartable(Protocol):
    def _restart_after_fork(self) -> None:
        """Start the worker's threads again; called in the child, once, right after fork."""


class _Held:
    """One owner's locks, by attribute name, and what to do in the child once they are sound."""

    __slots__ = ("names", "owner", "rank", "seq")

    def __init__(self, owner: object, names: tuple[str, ...], rank: int, seq: int) -> None:
        self.owner = weakref.ref(owner)
        self.names = names
        self.rank = rank
        self.seq = seq


_RUNNING: weakref.WeakSet[_Restartable] = weakref.WeakSet()
_HELD: dict[int, _Held] = {}
_SEQ = itertools.count()
_LOCK = threading.Lock()
# Taken by _before_fork, for the two after-fork handlers: (lock, taken within FORK_WAIT).
_taken: list[tuple[Any, bool]] = []
_owners: list[object] = []


def follow_forks(worker: _Restartable) -> None:
    """Restart ``worker`` in every child forked while it runs (until :func:`forget_forks`)."""
    with _LOCK:
        _RUNNING.add(worker)


def forget_forks(worker: _Restartable) -> None:
    """``worker`` stopped: a child forked from now on leaves it stopped."""
    with _LOCK:
        _RUNNING.discard(worker)


def hold_across_forks(owner: object, *names: str, rank: int) -> None:
    """Hold ``owner``'s locks (the attributes ``names``) across every fork, lowest ``rank``
    first; ``owner`` is held weakly. If ``owner`` has a method ``_after_fork_in_child``, it is
    called in the child once every lock is sound, before workers restart."""
    with _LOCK:
        seq = next(_SEQ)
        _HELD[seq] = _Held(owner, names, rank, seq)
        weakref.finalize(owner, _HELD.pop, seq, None)


def _before_fork() -> None:
    _LOCK.acquire()
    _taken.clear()
    _owners.clear()
    for held in sorted(_HELD.values(), key=lambda h: (h.rank, h.seq)):
        owner = held.owner()
        if owner is None:
            continue
        _owners.append(owner)
        for name in held.names:
            lock = getattr(owner, name, None)
            if lock is not None:
                _taken.append((lock, lock.acquire(timeout=FORK_WAIT)))


def _after_fork_in_parent() -> None:
    for lock, taken in reversed(_taken):
        if taken:
            with contextlib.suppress(RuntimeError):
                lock.release()
    _taken.clear()
    _owners.clear()
    _LOCK.release()


def _after_fork_in_child() -> None:
    global _LOCK  # noqa: PLW0603 - renewed, like every lock held across the fork
    for lock, _ in reversed(_taken):
        lock._at_fork_reinit()  # the same object, unlocked: every holder of it sees that
    _taken.clear()
    owners, _owners[:] = list(_owners), []
    _LOCK = threading.Lock()
    for owner in owners:
        repair = getattr(owner, "_after_fork_in_child", None)
        if callable(repair):
            with contextlib.suppress(Exception):
                repair()
    for worker in list(_RUNNING):
        with contextlib.suppress(Exception):
            worker._restart_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
