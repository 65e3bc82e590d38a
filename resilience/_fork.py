"""Background workers that start again in a forked child.

A forked child has only the thread that forked: every watcher, flag source and fleet exchange
an engine started in the parent is gone there, while the objects still say they run. Pre-forking
servers (gunicorn ``--preload``, ``multiprocessing``) fork after the engine is built, so each
worker registers here while it runs, and one ``os.register_at_fork`` handler asks each to start
again in the child (new locks, new threads, new connections).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Protocol

__all__ = ["follow_forks", "forget_forks", "renew_locks_after_fork"]


class _Restartable(Protocol):
    def _restart_after_fork(self) -> None:
        """Start the worker's threads again; called in the child, once, right after fork."""


class _Relockable(Protocol):
    def _renew_locks_after_fork(self) -> None:
        """Make new locks; called in the child, before any worker starts again."""


_RUNNING: weakref.WeakSet[_Restartable] = weakref.WeakSet()
_LOCKED: weakref.WeakSet[_Relockable] = weakref.WeakSet()
_LOCK = threading.Lock()


def follow_forks(worker: _Restartable) -> None:
    """Restart ``worker`` in every child forked while it runs (until :func:`forget_forks`)."""
    with _LOCK:
        _RUNNING.add(worker)


def forget_forks(worker: _Restartable) -> None:
    """``worker`` stopped: a child forked from now on leaves it stopped."""
    with _LOCK:
        _RUNNING.discard(worker)


def renew_locks_after_fork(owner: _Relockable) -> None:
    """Give ``owner`` new locks in every forked child, before any worker restarts there.

    A lock some parent thread held at the moment of the fork stays held in the child, with no
    thread left to release it: an engine's flag and reload locks, a feed's delivery lock. The
    restarted workers deliver into those, so they are renewed first. ``owner`` is held weakly.
    """
    with _LOCK:
        _LOCKED.add(owner)


def _restart_in_child() -> None:
    global _LOCK  # noqa: PLW0603 - a lock held by a parent thread at fork is never freed
    _LOCK = threading.Lock()
    for owner in list(_LOCKED):
        with contextlib.suppress(Exception):
            owner._renew_locks_after_fork()
    for worker in list(_RUNNING):
        with contextlib.suppress(Exception):
            worker._restart_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_in_child)
